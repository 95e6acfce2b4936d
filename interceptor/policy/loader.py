"""Load a policy file: YAML -> JSON Schema -> semantic checks -> immutable Policy.

Every problem is reported as `file:line:col: what is wrong`, using the YAML node marks,
and all problems of a file are reported together, so one `policy check` run shows them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from interceptor.decision import ApprovalSpec
from interceptor.identity.config import parse_identity_config
from interceptor.identity.errors import IdentityConfigError
from interceptor.masking.json_paths import compile_path
from interceptor.policy.model import (
    AddressSpec, AgentSpec, MaskRule, OperationMatch, Policy, ResourceSpec, Rule, SubjectMatch,
)
from interceptor.policy.schema import composed
from interceptor.protocols import Problem, ProtocolSpec, protocols, spec_for_key

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
Mark = tuple[int, int]  # 1-based line, column
Where = tuple[Any, ...]  # where a value sits in the document: keys and list indexes, "<key>" for a key itself
Marks = dict[Where, Mark]


class PolicyError(ValueError):
    """A policy that must not be used; str() is one `file:line:col: message` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(composed())


def load_policy(path: str | Path) -> Policy:
    """The policy in the file at `path`; PolicyError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}:1:1: cannot read the policy: {exc}"]) from None
    return load_policy_text(text, str(path))


def load_policy_text(text: str, filename: str = "<string>") -> Policy:
    """The policy in `text` (`filename` names it in problems); PolicyError listing every problem."""
    data, marks = compose(text, filename)
    problems = [f"{filename}:{line}:{col}: {message}" for (line, col), message in _validate(data, marks)]
    if problems:
        raise PolicyError(problems)
    builder = _Builder(filename, marks)
    policy = builder.build(data)
    if builder.problems:
        raise PolicyError(builder.problems)
    return policy


def compose(text: str, filename: str) -> tuple[Any, Marks]:
    """YAML to plain data plus the position of every value, keyed by its path; PolicyError
    for text that is not YAML, is empty, or repeats a key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise PolicyError([f"{filename}:{where}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{filename}:1:1: invalid YAML: {exc}"]) from None
    if node is None:
        raise PolicyError([f"{filename}:1:1: empty policy (expected a mapping with version, resources, agents, rules)"])
    marks: Marks = {}
    problems: list[str] = []
    data = _convert(node, (), marks, problems, filename)
    if problems:
        raise PolicyError(problems)
    return data, marks


def _convert(node: yaml.Node, path: Where, marks: Marks, problems: list[str], filename: str) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in result:
                problems.append(f"{filename}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}: "
                                f"duplicate key {key!r}")
                continue
            marks[(*path, key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _convert(value_node, (*path, key), marks, problems, filename)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), marks, problems, filename) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _mark(marks: Marks, path: Where) -> Mark:
    while path not in marks:
        path = path[:-1]
    return marks[path]


def _validate(data: Any, marks: Marks) -> list[tuple[Mark, str]]:
    found = []
    for error in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            for key in error.instance:
                if key not in known:
                    found.append((_mark(marks, (*path, key, "<key>")), _unknown_key(path, key, sorted(known))))
            continue
        found.append((_mark(marks, path), _describe(error, path)))
    return found


def _unknown_key(path: Where, key: Any, allowed: list[str]) -> str:
    where = ", ".join(allowed) if allowed else "none"
    if len(path) == 2 and path[0] == "rules":
        return f"unknown key {key!r} (expected one of: {where}; a rule's operation key names a protocol with a " \
               f"handler: {_operation_keys()})"
    return f"unknown key {key!r} (expected one of: {where})"


def _describe(error: jsonschema.ValidationError, path: Where) -> str:
    where = "/".join(map(str, path)) or "top level"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        return f"{where}: expected one of {{from: file, path: /abs/path}}, {{from: env, name: VAR}}, " \
               f"{{from: command, argv: [...]}}"
    if error.validator in ("if", "then", "else", "not"):
        return f"{where}: 'approval' is required with (and only with) effect approve, 'mask' with effect mask"
    if len(path) == 3 and path[0] == "resources" and path[2] == "protocol" and error.validator == "enum":
        return f"{where}: no handler for protocol {error.instance!r} (protocols with a handler: " \
               f"{', '.join(s.name for s in protocols())})"
    return f"{where}: {error.message}"


def _operation_keys() -> str:
    return ", ".join(f"{s.operation_key} ({s.name})" for s in protocols())


class _Builder:
    def __init__(self, filename: str, marks: Marks) -> None:
        self.filename = filename
        self.marks = marks
        self.problems: list[str] = []

    def problem(self, path: Where, message: str) -> None:
        line, col = _mark(self.marks, path)
        self.problems.append(f"{self.filename}:{line}:{col}: {message}")

    def within(self, block: Where) -> Problem:
        """A reporter of problems at paths within `block`."""
        def problem(where: tuple[str | int, ...], message: str) -> None:
            self.problem((*block, *where), message)
        return problem

    def build(self, data: dict[str, Any]) -> Policy:
        resources = {name: self.resource(name, spec) for name, spec in data["resources"].items()}
        agents = {name: self.agent(name, spec) for name, spec in data["agents"].items()}
        names: set[str] = set()
        rules = []
        for index, raw in enumerate(data["rules"]):
            path = ("rules", index)
            if raw["name"] in names:
                self.problem((*path, "name"), f"duplicate rule name {raw['name']!r}")
            names.add(raw["name"])
            rules.append(self.rule(path, raw, resources, agents))
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        version = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return Policy(version, MappingProxyType(resources), MappingProxyType(agents), tuple(rules), self.filename)

    def resource(self, name: str, spec: dict[str, Any]) -> ResourceSpec:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            self.problem(("resources", name, "<key>"), f"bad resource name {name!r} (letters, digits, _ . -)")
        addresses = []
        for i, text in enumerate(spec["addresses"]):
            try:
                addresses.append(parse_address(text))
            except ValueError as exc:
                self.problem(("resources", name, "addresses", i), str(exc))
        return ResourceSpec(name, spec["protocol"], tuple(addresses), spec.get("credentials"),
                            dict(spec.get("options") or {}))

    def agent(self, name: str, spec: dict[str, Any]) -> AgentSpec:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            self.problem(("agents", name, "<key>"), f"bad agent name {name!r} (letters, digits, _ . -)")
        for i, cgroup in enumerate(spec.get("cgroups", ())):
            if ".." in cgroup.split("/") or "\0" in cgroup:
                self.problem(("agents", name, "cgroups", i), f"bad cgroup path {cgroup!r} (no '..' components)")
        if 0 in spec.get("uids", ()):
            self.problem(("agents", name, "uids"), "uid 0 cannot be an agent: root can remove any enforcement")
        try:
            parse_identity_config(name, spec.get("identity"))
        except IdentityConfigError as exc:
            self.problem(("agents", name, "identity"), str(exc))
        return AgentSpec(name, tuple(c.strip("/") for c in spec.get("cgroups", ())), tuple(spec.get("uids", ())),
                         spec.get("identity"), spec.get("unprotected", "deny"))

    def rule(self, path: Where, raw: dict[str, Any], resources: dict[str, ResourceSpec],
             agents: dict[str, AgentSpec]) -> Rule:
        for key, known in (("agents", agents), ("resources", resources)):
            for i, name in enumerate(raw.get(key, ())):
                if name not in known:
                    self.problem((*path, key, i), f"unknown {key[:-1]} {name!r} (defined: {', '.join(sorted(known)) or 'none'})")
        specs = [spec for key in raw if (spec := spec_for_key(key)) is not None]
        if len(specs) > 1:
            self.problem((*path, specs[1].operation_key, "<key>"), "a rule matches one kind of operation; got "
                         f"{', '.join(s.operation_key for s in specs)}")
        spec = specs[0] if specs else None
        match: OperationMatch | None = None
        if spec is not None:
            self.operation(path, raw, spec, (resources[n] for n in raw.get("resources", ()) if n in resources))
            match = spec.parse_match(raw[spec.operation_key], self.within((*path, spec.operation_key)))
        return Rule(
            name=raw["name"], effect=raw["effect"], reason=raw.get("reason", ""),
            agents=_tuple(raw.get("agents")), resources=_tuple(raw.get("resources")),
            subjects=SubjectMatch(**{k: _tuple(v) for k, v in raw["subjects"].items()}) if "subjects" in raw else None,
            operation=spec.operation_key if spec is not None else None, match=match,
            approval=_approval(raw["approval"]) if "approval" in raw else None,
            mask=self.mask(path, raw["mask"]) if "mask" in raw else None,
        )

    def operation(self, path: Where, raw: dict[str, Any], spec: ProtocolSpec[Any],
                  resources: Iterable[ResourceSpec]) -> None:
        """A rule about one protocol's operations: on resources of that protocol (unless its
        operation is asked of every resource), and a mask rule only where masks apply."""
        where = (*path, spec.operation_key, "<key>")
        if not spec.every_resource:
            for resource in resources:
                if resource.protocol != spec.name:
                    self.problem(where, f"{spec.operation_key} rule on resource {resource.name!r} whose protocol is "
                                 f"{resource.protocol}")
        if raw["effect"] == "mask" and not spec.masks:
            masking = ", ".join(s.operation_key for s in protocols() if s.masks)
            self.problem(where, f"mask rules apply to {masking} operations")

    def mask(self, path: Where, raw: dict[str, Any]) -> MaskRule:
        """A rule's `mask:` block: `columns` (schema.table.column globs, for SQL results),
        `paths` (JSON paths of values in HTTP, Kubernetes and MCP bodies, in the syntax of
        interceptor.masking.json_paths), `classifiers`, `style`."""
        columns = []
        for i, pattern in enumerate(raw.get("columns", ())):
            parts = pattern.split(".")
            if len(parts) != 3 or not all(parts):
                self.problem((*path, "mask", "columns", i), f"mask column {pattern!r}: expected schema.table.column")
                continue
            columns.append((parts[0], parts[1], parts[2]))
        for i, text in enumerate(raw.get("paths", ())):
            try:
                compile_path(text)
            except ValueError as exc:
                self.problem((*path, "mask", "paths", i), str(exc))
        return MaskRule(tuple(columns), tuple(raw.get("classifiers", ())), raw.get("style", "redact"),
                        tuple(raw.get("paths", ())))


def _tuple(values: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def _approval(raw: dict[str, Any]) -> ApprovalSpec:
    grant = raw.get("grant", "one-shot")
    return ApprovalSpec(tuple(raw["groups"]), grant, raw.get("grant_seconds", 3600 if grant == "time-boxed" else 0),
                        raw.get("timeout_seconds", 300))


def parse_address(text: str) -> AddressSpec:
    """`10.0.0.5:5432`, `db.example.com:5432`, `[2001:db8::1]:5432`, `10.1.0.0/16:443`."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"address {text!r}: expected [ipv6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"address {text!r}: expected host:port, ip:port, cidr:port or [ipv6]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"address {text!r}: port {port_text!r} out of range (expected 1-65535)")
    port = int(port_text)
    try:
        return AddressSpec(ipaddress.ip_network(host, strict=True), None, port)
    except ValueError as exc:
        if re.fullmatch(r"[0-9.:/a-fA-F]+", host) and (host[:1].isdigit() or ":" in host or "/" in host):
            raise ValueError(f"address {text!r}: bad IP address or network {host!r} ({exc})") from None
    if not _HOSTNAME.match(host):
        raise ValueError(f"address {text!r}: bad hostname {host!r}")
    return AddressSpec(None, host.lower(), port)
