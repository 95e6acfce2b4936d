"""`interceptor policy suggest`: the least-privilege policy for what an agent did while learning
(issue 20). Pure functions: the agent's audit events in, the text of a policy file and of its
`.tests.yaml` out.

An event is a record's `event` dict (interceptor.audit.event.AuditEvent.to_dict()). The ones
used are the agent's records marked `operation["learn"]` (a learn session's id) and the daemon's
`policy` records of kind `learn-start` (which resources a session learned). What was refused
even while learning (a deny rule, a builtin refusal, an approval declined) did not happen: it is
listed in a comment and granted nothing.

The policy written is the base policy whole (resources, agents, every deny and mask rule, every
rule about other agents or other resources) without the allow and approve rules that grant the
agent a learned resource, plus one suggested rule per thing done: SQL kinds per table with the
columns seen, functions that needed a rule, Kubernetes verbs per namespace and resource, HTTP
methods and paths, MCP tools and methods, SSH commands, paths and forwards, TCP connections.
What a base rule allowed on conditions on who (`subjects:`) is suggested with them. What no
rule can name exactly (a name holding a dot, a forward host with a glob character...) is listed
and granted nothing; names the agent chose are glob-escaped. Each suggested rule carries a
comment: how many operations it covers, first and last seen (ISO UTC) and a few examples. The YAML is written here, rule by rule as JSON flow mappings (JSON is
YAML), so it can carry those comments; it is loaded again before it is returned.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interceptor.cli_support import utc
from interceptor.policy.cases import CaseResult, run_cases
from interceptor.policy.http_rules import host_name
from interceptor.policy.loader import PolicyError, compose, load_policy_text
from interceptor.policy.model import Policy
from interceptor.policy.shadow_report import ENDS
from interceptor.policy.sql_rules import UNPARSED_RULE
from interceptor.policy.mcp_rules import in_normal_form
from interceptor.policy.ssh_command import covers, parse_pattern, read_command, read_scp, runs_code
from interceptor.policy.ssh_rules import TREE_SUFFIX
from interceptor.protocols import spec_for_key

PLACEHOLDER_GROUP = "policy-reviewers"  # approvers of suggested approve rules when the base names none
EXAMPLES = 3  # examples per rule comment
EXAMPLE_CHARS = 120  # characters of one example
NAME_CHARS = 80  # characters of a suggested rule's name before its -N (an agent chooses paths and names)
CASES = 40  # most cases drawn from what happened, per resource
UNSEEN_TABLE = "not_learned"  # the table of the "another table" case
NO_TABLE = "pg_catalog.\0"  # a table glob no relation matches (PostgreSQL names hold no NUL)
_NO_RULE_NEEDED = ("builtin-",)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_GLOB = re.compile(r"([*?\[])")
_ESCAPED = re.compile(r"\[([*?\[])\]")
_REDACTED = re.compile(r"\?")
INEXACT = "no rule can allow exactly what it did: never granted"  # a literal of a recorded statement (interceptor.handlers.postgres.record)


class SuggestError(ValueError):
    """The suggestion cannot be made (no learned records, a base policy that does not load) or
    did not hold (the written policy does not load, a case drawn from what happened fails)."""


@dataclass(slots=True)
class Seen:
    """How often something happened: count, first and last time (epoch seconds), examples."""

    count: int = 0
    first: float | None = None
    last: float | None = None
    examples: list[str] = field(default_factory=list)

    def add(self, when: float | None, example: str) -> None:
        self.count += 1
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
        if example and example not in self.examples and len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def comment(self) -> str:
        """`N operations, first ... last ...; e.g. ...` on one line."""
        text = f"{self.count} operation{'s' if self.count != 1 else ''}, first {iso(self.first)}, last {iso(self.last)}"
        if self.examples:
            text += "; e.g. " + " | ".join(_one_line(e) for e in self.examples)
        return text


@dataclass(slots=True)
class Grant:
    """One suggested rule being gathered: its resource, operation key (`sql`, `kubernetes`...),
    a label for its name, the fixed part of its block, the listed values seen per block key,
    the keys left out (a value was unknown: every one is then allowed), what it covers, and
    the base's approve rules that held some of it for approval while learning (`gates`), and
    the conditions on who (`subjects`) of the base rule that allowed it, which it keeps."""

    resource: str
    key: str
    label: str
    fixed: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, set[str]] = field(default_factory=dict)
    unbounded: set[str] = field(default_factory=set)
    seen: Seen = field(default_factory=Seen)
    gates: set[str] = field(default_factory=set)
    subjects: Any = None  # the `subjects:` of the base rule that allowed what it covers (None: none)

    def add(self, name: str, values: Iterable[str] | None) -> None:
        """Values seen for block key `name`; None: unknown, the key is left out of the rule."""
        if values is None:
            self.unbounded.add(name)
        else:
            self.lists.setdefault(name, set()).update(values)

    @property
    def shell(self) -> bool:
        """An ssh rule with `shell: true`: it allows every exec, not only the commands seen."""
        return self.key == "ssh" and self.fixed.get("shell") is True

    def block(self) -> Any:
        """The rule's operation block (`True` for tcp)."""
        if self.key == "tcp":
            return True
        block = dict(self.fixed)
        for name, values in sorted(self.lists.items()):
            if name not in self.unbounded:
                block[name] = sorted(values)
        return block


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The policy file's text, its tests file's text (whose `policy:` is `policy_name`), and
    the number of records used and skipped (reason: count)."""

    policy: str
    tests: str
    used: int
    skipped: Mapping[str, int]


def iso(when: float | None) -> str:
    """Epoch seconds as ISO 8601 UTC (`2026-11-30T14:55:02Z`); `?` for None."""
    return "?" if when is None else utc(when)


def glob_escape(name: str) -> str:
    """`name` as a glob matching only itself: `*`, `?` and `[` as `[*]`, `[?]`, `[[]`."""
    return _GLOB.sub(r"[\1]", name)


def glob_unescape(pattern: str) -> str:
    """The name a pattern spells, glob_escape undone: `[*]`, `[?]` and `[[]` (a class of one
    glob character, which matches only it) as that character; the rest as written."""
    return _ESCAPED.sub(r"\1", pattern)


def _one_line(text: str) -> str:
    """An example fit for a comment: control characters escaped, cut to EXAMPLE_CHARS."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= EXAMPLE_CHARS else shown[:EXAMPLE_CHARS - 3] + "..."


def _flow(value: Any) -> str:
    """A value as YAML flow text (JSON, which YAML reads); a YAML scalar JSON has no form for
    (a timestamp) as its text, and the result is loaded again before it is used."""
    return json.dumps(value, ensure_ascii=True, default=str)


# -- reading the records -------------------------------------------------------------------

_KUBE_CASE = ("verb", "path", "api_group", "api_version", "resource", "subresource", "namespace", "name",
              "label_selector", "field_selector", "dry_run", "command")
_SSH_FORWARDS = {"local": "forward", "remote": "remote_forward"}


@dataclass(slots=True)
class Learned:
    """What an agent's learn records say, gathered per resource: the grants, what was refused
    ((resource, rule, what) -> Seen), the records skipped (reason -> count), the learn sessions,
    the table-less SELECTs per resource, the statement events per resource and the other
    operations per resource (operation key, case operation), from which cases are drawn."""

    agent: str
    protocols: Mapping[str, str]  # resource -> protocol, from the base policy
    conditions: Mapping[str, Any] = field(default_factory=dict)  # base rule -> its `subjects:`
    rule: str = ""  # the rule that decided the record being read
    subject: dict[str, Any] = field(default_factory=dict)  # its identity and process, as a case says them
    grants: dict[tuple[Any, ...], Grant] = field(default_factory=dict)
    refused: dict[tuple[str, str, str], Seen] = field(default_factory=dict)
    inexact: dict[tuple[str, str], Seen] = field(default_factory=dict)  # (resource, why) -> what no rule can say
    skipped: dict[str, int] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    used: int = 0
    window: Seen = field(default_factory=Seen)  # every learn record read
    tableless: dict[str, Seen] = field(default_factory=dict)
    connections: dict[str, Seen] = field(default_factory=dict)  # resource (not tcp) -> its connections
    connected: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # its first one's rule, subject
    statements: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    operations: dict[str, list[tuple[str, Any, dict[str, Any]]]] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def unsaid(self, resource: str, why: str, when: float | None, what: str) -> None:
        """An operation no rule can allow exactly (`why`: which name, and why): granted nothing,
        listed in the header."""
        self.inexact.setdefault((resource, why), Seen()).add(when, what)
        self.skip(INEXACT)

    def grant(self, resource: str, key: str, ident: tuple[Any, ...], label: str, fixed: dict[str, Any] | None = None,
              rule: str | None = None) -> Grant:
        """The grant `ident` of `resource`, made on first use with `label` and `fixed`; what
        the base rule `rule` (default: the record's) allowed on conditions on who is a grant
        of its own, which keeps them."""
        subjects = self.conditions.get(self.rule if rule is None else rule)
        if subjects is not None:
            ident, label = (*ident, _flow(subjects)), f"{label}-subjects"
        return self.grants.setdefault((resource, key, *ident),
                                      Grant(resource, key, label, dict(fixed or {}), subjects=subjects))

    def read(self, event: Mapping[str, Any]) -> None:
        """Take one learn record of the agent."""
        operation = event.get("operation") or {}
        resource = str(event.get("resource"))
        when = event["time"] if isinstance(event.get("time"), (int, float)) else None
        self.rule, self.subject = str(event.get("rule")), case_subject(event)
        self.sessions.add(str(operation.get("learn")))
        self.window.add(when, "")
        approval = (event.get("outcome") or {}).get("approval")
        if event.get("kind") in ENDS:
            self.skip(f"record kind {event.get('kind')!r}: the end of an operation whose own record is read")
        elif event.get("decision") == "deny" or (event.get("decision") == "approve" and not (
                isinstance(approval, dict) and approval.get("approved") is True)):
            what = _what(operation)
            self.refused.setdefault((resource, str(event.get("rule")), what), Seen()).add(when, what)
            self.skip("refused even while learning: never ran")
        elif event.get("decision") not in ("allow", "approve"):
            self.skip(f"decision {event.get('decision')!r}: not a grant")
        elif resource not in self.protocols:
            self.skip("resource not in the base policy")
        elif event.get("kind") == "statement" and operation.get("protocol") == "postgres":
            self._statement(resource, event, operation, when)
        elif event.get("kind") == "connection":
            self._connection(resource, event, operation, when)
        elif _no_rule(event.get("rule")):
            self.skip("allowed without a rule (builtin)")
        elif operation.get("kind") in _READERS:
            unsaid = self.skipped.get(INEXACT, 0)
            grant = _READERS[operation["kind"]](self, resource, operation, when)
            if grant is None:
                if self.skipped.get(INEXACT, 0) == unsaid:
                    self.skip(f"{operation['kind']} operation with no rule form")
                return
            grant.gates.add(str(event.get("rule")))  # an approve rule of the base (kept as the gate) or none
            self.used += 1
        else:
            self.skip(f"record kind {event.get('kind')!r}: nothing to grant")

    def _connection(self, resource: str, event: Mapping[str, Any], operation: Mapping[str, Any],
                    when: float | None) -> None:
        if self.protocols[resource] != "tcp":
            self.connections.setdefault(resource, Seen()).add(when, str(operation.get("dst", "")))
            self.connected.setdefault(resource, (self.rule, self.subject))
            self.skip("connection to a non-tcp resource: the rules of its operations allow it")
            return
        grant = self.grant(resource, "tcp", (), "tcp")
        grant.seen.add(when, str(operation.get("dst", "")))
        grant.gates.add(str(event.get("rule")))  # a connection held for approval is recorded allowed by its rule
        self.operations.setdefault(resource, []).append(("tcp", True, self.subject))
        self.used += 1

    def _statement(self, resource: str, event: Mapping[str, Any], operation: Mapping[str, Any],
                   when: float | None) -> None:
        analysis = operation.get("analysis")
        if not isinstance(analysis, list):
            self.skip("statement without analysis")
            return
        text = str(operation.get("statement", ""))
        why = next((w for statement in analysis for judged in statement.get("judged") or ()
                    if not _no_rule(judged.get("rule")) and (w := _sql_inexact(judged)) is not None), None)
        if why is not None:
            self.unsaid(resource, why, when, text)
            return
        self.used += 1
        self.statements.setdefault(resource, []).append(event)
        for statement in analysis:
            if not statement.get("judged") and not _no_rule(statement.get("rule")):
                kind = str(statement.get("kind"))  # a statement opaque to the analyser: only its kind is judged
                grant = self.grant(resource, "sql", ("kind", kind), f"{kind}-statements", {"kinds": [kind]},
                                   str(statement.get("rule")))
                grant.seen.add(when, text)
                if statement.get("verdict") == "approve":
                    grant.gates.add(str(statement.get("rule")))
            for judged in statement.get("judged") or ():
                if _no_rule(judged.get("rule")):
                    continue
                if "function" in judged:
                    names = tuple(sorted(str(n).lower() for n in judged.get("resolves")
                                         or [judged["function"]]))
                    grant = self.grant(resource, "sql", ("function", names), "call-" + names[0],
                                       rule=str(judged.get("rule")))
                    grant.add("kinds", [str(statement.get("kind"))])
                    grant.add("functions", [glob_escape(n) for n in names])
                elif judged.get("table") is None:
                    self.tableless.setdefault(resource, Seen()).add(when, text)
                    continue
                else:
                    kind, table = str(judged.get("action")), str(judged["table"])
                    grant = self.grant(resource, "sql", ("table", kind, table), f"{kind}-{table}",
                                       {"kinds": [kind], "tables": [glob_escape(table)]}, str(judged.get("rule")))
                    columns = judged.get("columns")
                    grant.add("columns", None if columns is None else [glob_escape(str(c)) for c in columns])
                grant.seen.add(when, text)
                if judged.get("verdict") == "approve":
                    grant.gates.add(str(judged.get("rule")))


def _kubernetes(learned: Learned, resource: str, operation: Mapping[str, Any], when: float | None) -> Grant | None:
    """A resource request's grant is per namespace, API group, resource, verb and whether it
    named an object (its names listed: a delete of one pod and a list of all do not make a
    delete of every pod); a non-resource request's per path (its verbs listed)."""
    verb = str(operation.get("verb", ""))
    if "resource" not in operation:
        path = str(operation.get("path", ""))
        grant = learned.grant(resource, "kubernetes", ("url", path), "url-" + path,
                              {"non_resource_urls": [glob_escape(path)]})
    else:
        namespace, group = str(operation.get("namespace", "")), str(operation.get("api_group", ""))
        kind = str(operation.get("resource", "")) + (f"/{operation['subresource']}"
                                                     if operation.get("subresource") else "")
        name = operation.get("name")
        grant = learned.grant(resource, "kubernetes", ("resource", namespace, group, kind, verb, bool(name)),
                              f"{namespace or 'cluster'}-{kind}-{verb}",
                              {"api_groups": [glob_escape(group)], "resources": [glob_escape(kind)],
                               "namespaces": [glob_escape(namespace)]})
        grant.add("names", [glob_escape(str(name))] if name else None)
    grant.add("verbs", [glob_escape(verb)])
    grant.seen.add(when, f"{verb} {operation.get('target') or operation.get('path') or grant.label}")
    case = {k: operation[k] for k in _KUBE_CASE if operation.get(k) not in ("", None, [], False)}
    if "resource" in operation:
        case["resource"] = operation["resource"]
    learned.operations.setdefault(resource, []).append(("kubernetes", case, learned.subject))
    return grant


def _http(learned: Learned, resource: str, operation: Mapping[str, Any], when: float | None) -> Grant | None:
    """A grant per path and host, its methods listed (a GET on one host and a DELETE on another
    do not make a DELETE on both). A request that named no host has none: only a rule naming
    no hosts allows it, and that allows the path on every host."""
    method, path, host = str(operation.get("method", "")), str(operation.get("path", "")), operation.get("host")
    name = host_name(str(host)) if host else None
    if name is None or ":" in name or not path.startswith("/"):
        why = (f"path {path!r}" if not path.startswith("/") else "no Host: a rule naming no hosts allows every host"
               if name is None else f"host {name}: a hosts pattern holds no ':'")
        learned.unsaid(resource, why, when, f"{method} {host or ''}{path}")
        return None
    grant = learned.grant(resource, "http", ("path", path, name), "path-" + path, {"paths": [glob_escape(path)]})
    grant.add("methods", [glob_escape(method)])
    grant.add("hosts", [glob_escape(name)])
    grant.seen.add(when, f"{method} {host or ''}{path}")
    case: dict[str, Any] = {"method": method, "path": path, **({"host": host} if host else {})}
    learned.operations.setdefault(resource, []).append(("http", case, learned.subject))
    return grant


def _mcp(learned: Learned, resource: str, operation: Mapping[str, Any], when: float | None) -> Grant | None:
    tool = operation.get("tool")
    if tool is not None:
        grant = learned.grant(resource, "mcp", ("tools",), "tools")
        grant.add("tools", [glob_escape(str(tool))])
        grant.seen.add(when, f"{tool} {operation.get('arguments', '')}")
        learned.operations.setdefault(resource, []).append(("mcp", {"tool": tool}, learned.subject))
        return grant
    method = str(operation.get("method", ""))
    grant = learned.grant(resource, "mcp", ("methods",), "methods")
    grant.add("methods", [glob_escape(method)])
    grant.seen.add(when, method)
    learned.operations.setdefault(resource, []).append(("mcp", {"method": method}, learned.subject))
    return grant


def _ssh(learned: Learned, resource: str, operation: Mapping[str, Any], when: float | None) -> Grant | None:
    """An exec's command, a shell, an SFTP or scp path read or written, a local or remote
    forward. What only `shell: true` allows (a shell, an exec of a shell-class command or on
    a terminal, a write of a file that makes the server run code) goes in rules with it."""
    request = operation.get("request")
    shell = False
    if request == "exec" and operation.get("command") and "command_bytes" not in operation:
        key, value = "commands", str(operation["command"])
        case: dict[str, Any] = {"command": value}
        shell = bool(operation.get("pty")) or bool(read_command(value).shell)
    elif request == "shell":
        key, value, case, shell = "shell", "", {"shell": True}, True
    elif request in ("read", "write") and operation.get("path"):
        key, value = str(request), str(operation["path"])
        case = {key: value}
        shell = request == "write" and runs_code(value)
    elif request == "forward" and operation.get("forward") in _SSH_FORWARDS and operation.get("target"):
        key, value = _SSH_FORWARDS[str(operation["forward"])], str(operation["target"])
        case = {key: value}
    else:
        return None
    why = None if shell else _ssh_inexact(key, value, str(operation.get("action") or ""))
    if why is not None:
        learned.unsaid(resource, why, when, value)
        return None
    if shell and key == "commands":
        grant = learned.grant(resource, "ssh", ("shell",), "shell", {"shell": True})
    elif shell:
        grant = learned.grant(resource, "ssh", ("shell", key), f"shell-{key}", {"shell": True})
    else:
        grant = learned.grant(resource, "ssh", (key,), key.replace("_", "-"))
    if key != "shell" and not (shell and key == "commands"):
        grant.add(key, [value if key in _SSH_FORWARDS.values() else glob_escape(value)])
    grant.seen.add(when, value or "shell")
    learned.operations.setdefault(resource, []).append(("ssh", case, learned.subject))
    return grant


def _ssh_inexact(key: str, value: str, action: str) -> str | None:
    """Why no `ssh:` rule without `shell: true` allows exactly this command, path or forward,
    None when one does: a command whose pattern (the command, glob-escaped) does not cover
    it word for word (a path word not in normal form, `/tmp/`: interceptor.policy.ssh_command.
    covers) or that is an scp transfer (judged as the files it moves); a read or write of a
    tree (a directory renamed: only a `/**` glob over it allows that) or of a path not in
    normal form; a forward to a host holding a glob character (its brackets are an IPv6
    address's, so no character is escaped)."""
    if key == "commands":
        argv = read_command(value).argv
        try:
            covered = covers(parse_pattern(glob_escape(value)), argv)
        except ValueError:
            covered = False
        if not covered or read_scp(argv) is not None:
            return f"command {value}: no pattern covers it word for word (a path not in normal form, an scp transfer)"
    elif key in ("read", "write"):
        if action.endswith(TREE_SUFFIX) or not value.startswith("/") or not in_normal_form(value):
            return f"{key} of {value} ({action}): a path glob covers a tree or a path not in normal form only by **"
    elif key in _SSH_FORWARDS.values():
        host = value.rpartition(":")[0]
        if _GLOB.search(host[1:-1] if host.startswith("[") and host.endswith("]") else host):
            return f"forward to {value}: a forward glob cannot escape a glob character (its brackets are an address's)"
    return None


_READERS = {"kubernetes": _kubernetes, "http": _http, "mcp": _mcp, "ssh": _ssh}


def case_subject(event: Mapping[str, Any]) -> dict[str, Any]:
    """A record's identity and process as a test case gives them (`identity: {subject, groups,
    ...}`, `process: {exe, uid}`); {} for what it lacks."""
    out: dict[str, Any] = {}
    identity, process = event.get("identity"), event.get("process")
    if isinstance(identity, dict) and identity.get("subject"):
        out["identity"] = {k: identity[k] for k in ("issuer", "subject", "client_id", "scopes", "groups")
                           if identity.get(k) is not None}
    if isinstance(process, dict):
        known = {k: process[k] for k in ("exe", "uid") if process.get(k) is not None}
        if known:
            out["process"] = known
    return out


def _no_rule(rule: Any) -> bool:
    """A rule name that says no policy rule was needed (builtin, empty query, allowed by default)."""
    return rule in ("", "empty-query", None) or str(rule).startswith(_NO_RULE_NEEDED)


def _sql_inexact(judged: Mapping[str, Any]) -> str | None:
    """Why no `sql:` rule can name exactly what one judged action or call was about, None
    when one can: a table pattern is two dot-separated parts (`schema.table`) and a column
    pattern one or three, so a name holding a dot has no pattern; function patterns are
    lower-cased, and a name without its schema (no catalog resolved it) matches the name
    in every schema."""
    if "function" in judged:
        names = [str(n) for n in judged.get("resolves") or [judged["function"]]]
        odd = [n for n in names if n != n.lower() or "." not in n]
        return f"function {odd[0]}: a functions pattern is lower case and names the schema" if odd else None
    table = judged.get("table")
    if table is None:
        return None
    if str(table).count(".") != 1:
        return f"table {table}: a name holding a dot has no schema.table pattern"
    dotted = [str(c) for c in judged.get("columns") or () if "." in str(c)]
    return f"column {table}.{dotted[0]}: a name holding a dot has no column pattern" if dotted else None


def _what(operation: Mapping[str, Any]) -> str:
    for key in ("statement", "command", "path", "tool", "method", "target", "dst", "verb"):
        if operation.get(key):
            return str(operation[key])
    return _flow({k: v for k, v in operation.items() if k != "learn"})


# -- the policy ----------------------------------------------------------------------------


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def suggest(events: Iterable[Mapping[str, Any]], base_text: str, base_name: str, agent: str, *,
            effect: str = "approve", session: str | None = None, policy_name: str = "suggested.yaml") -> Suggestion:
    """The suggested policy for `agent` from audit `events` (any order; the agent's learn
    records, of every session or of `session`, and the daemon's learn-start records are used,
    the rest ignored), on top of the base policy `base_text` (`base_name` names it in problems).
    `effect`: approve or allow, of the suggested rules. `policy_name`: what the tests file's
    `policy:` names (the policy file's name, beside it). SuggestError when no learn record is
    found, the base does not load or lacks the agent, or what is made does not hold."""
    if effect not in ("approve", "allow"):
        raise SuggestError(f"effect must be approve or allow, not {effect!r}")
    try:
        base = load_policy_text(base_text, base_name)
        data, _ = compose(base_text, base_name)
    except PolicyError as exc:
        raise SuggestError(f"the base policy does not load:\n{exc}") from None
    if agent not in base.agents:
        raise SuggestError(f"agent {agent!r} is not in the base policy {base_name} "
                           f"(agents: {', '.join(sorted(base.agents)) or 'none'})")
    learned = Learned(agent, {name: spec.protocol for name, spec in base.resources.items()},
                      {str(raw["name"]): raw["subjects"] for raw in data["rules"] if "subjects" in raw})
    starts: dict[str, Mapping[str, Any]] = {}
    for event in events:
        operation = event.get("operation") or {}
        if event.get("kind") == "policy" and operation.get("action") == "learn-start" \
                and operation.get("agent") == agent:
            starts[str(operation.get("session"))] = operation
        elif event.get("agent") == agent and operation.get("learn") and session in (None, operation["learn"]):
            learned.read(event)
    if not learned.sessions:
        runs = ", ".join(f"{run} (started {iso(_float(start.get('started')))})" for run, start in sorted(
            starts.items(), key=lambda item: _float(item[1].get("started")) or 0.0))
        raise SuggestError(f"no learn record of agent {agent!r}" + (f" in session {session}" if session else "")
                           + " in the window read: " + (
                               f"the trail has its learn runs {runs}: widen --since/--until or give --session"
                               if runs else f"run `interceptor learn start --agent {agent}` first"))
    scope, scope_note = _scope(learned, starts, base)
    _cover_tableless(learned)
    _cover_connections(learned)
    groups = _approvers(base, agent)
    kept, removed = _kept_rules(data["rules"], agent, scope, base)
    names = {str(rule["name"]) for rule in kept}
    suggested = [(_unique(names, f"suggest-{g.resource}-{g.label}"), g) for g in _ordered(learned.grants.values())]
    text = _render(data, kept, suggested, learned, agent, effect, groups, base_name, base, removed, scope_note)
    try:
        load_policy_text(text, policy_name)  # it must load as written
    except PolicyError as exc:
        raise SuggestError(f"the suggested policy does not load (a bug of policy suggest):\n{exc}\n{text}") from None
    gates = {rule.name for rule in base.rules if rule.effect == "approve"}
    gated = {name: bool(grant.gates & gates) or grant.shell for name, grant in suggested}
    tests = _tests(learned, text, policy_name, effect, gated)
    return Suggestion(text, tests, learned.used, dict(learned.skipped))


def _scope(learned: Learned, starts: Mapping[str, Mapping[str, Any]], base: Policy) -> tuple[set[str], str]:
    """The resources learned by the sessions read (their learn-start records), and a note on
    it; without a learn-start record (before the window read), the resources of the records."""
    scope: set[str] = set()
    missing = sorted(s for s in learned.sessions if s not in starts)
    for name in learned.sessions & set(starts):
        resources = starts[name].get("resources")
        scope.update(base.resources if resources is None else (str(r) for r in resources))
    seen = {g.resource for g in learned.grants.values()} | set(learned.statements) | {r for r, _, _ in learned.refused}
    if missing:
        scope.update(r for r in seen if r in base.resources)
        return scope, (f"no learn-start record of session(s) {', '.join(missing)} was read: their scope is taken "
                       "as the resources their records name")
    return scope, ""


def _cover_tableless(learned: Learned) -> None:
    """A SELECT without a table (`SELECT 1`, a function call alone) that needed a rule is
    covered by any select rule with tables; where no suggested rule is one, a rule naming a
    table no relation can have covers it and nothing else."""
    for resource, seen in learned.tableless.items():
        covered = any(g.resource == resource and g.key == "sql" and g.fixed.get("kinds") == ["select"]
                      and "tables" in g.fixed and g.subjects is None for g in learned.grants.values())
        if not covered:
            grant = learned.grant(resource, "sql", ("select-no-table",), "select-without-table",
                                  {"kinds": ["select"], "tables": [NO_TABLE]}, rule="")
            grant.seen = seen


def _cover_connections(learned: Learned) -> None:
    """A resource the agent connected to without doing anything there that needed a rule (a
    session of bootstrap reads, transaction control) gets `tcp: true`: the connection alone.
    Elsewhere the rules of its operations allow the connection."""
    for resource, seen in learned.connections.items():
        if not any(g.resource == resource for g in learned.grants.values()):
            rule, subject = learned.connected[resource]
            learned.grant(resource, "tcp", (), "connection", rule=rule).seen = seen
            learned.operations.setdefault(resource, []).append(("tcp", True, subject))


def _approvers(base: Policy, agent: str) -> list[str]:
    """The groups of the base's approve rules about the agent; [] when there are none."""
    return sorted({group for rule in base.rules if rule.effect == "approve" and rule.approval is not None
                   and (rule.agents is None or agent in rule.agents) for group in rule.approval.approver_groups})


def _kept_rules(rules: list[dict[str, Any]], agent: str, scope: set[str], base: Policy
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The base's rules without what their allow and approve rules grant `agent` on a learned
    resource: such a rule keeps its other agents (all the base's others when it listed none),
    and the agent keeps it on the resources not learned (a rule that named no resources is
    narrowed to those of its protocol); deny and mask rules are kept whole. Also a line per
    rule changed, saying how."""
    kept: list[dict[str, Any]] = []
    removed: list[str] = []
    names = {str(r["name"]) for r in rules}
    for raw in rules:
        agents = list(raw.get("agents") or base.agents)
        resources = list(raw.get("resources") or base.resources)
        if raw["effect"] not in ("allow", "approve") or agent not in agents or not scope.intersection(resources):
            kept.append(raw)
            continue
        others = [a for a in agents if a != agent]
        spec = next((s for key in raw if (s := spec_for_key(key)) is not None), None)
        rest = [r for r in resources if r not in scope and (
            "resources" in raw or spec is None or spec.every_resource or base.resources[r].protocol == spec.name)]
        changes = []
        if others:
            kept.append({**raw, "agents": others})
            changes.append(f"kept for {', '.join(others)}")
        if rest:
            name = _unique(names, f"{raw['name']}-{agent}") if others else str(raw["name"])
            kept.append({**raw, "name": name, "agents": [agent], "resources": rest})
            changes.append(f"kept for {agent} on {', '.join(rest)} as {name}")
        removed.append(f"{raw['name']} ({raw['effect']}): no longer grants {agent} "
                       f"{', '.join(r for r in resources if r in scope)}" + "".join(f"; {c}" for c in changes))
    return kept, removed


def _unique(names: set[str], wanted: str) -> str:
    """A rule name: `wanted` with what a name may not hold (and runs of `-`) as one `-`, cut to NAME_CHARS,
    made unique among `names` (which it joins)."""
    base = re.sub(r"-{2,}", "-", _NAME_CHARS.sub("-", wanted))[:NAME_CHARS].strip("-.") or "suggested"
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}-{n}"
    names.add(name)
    return name


def _ordered(grants: Iterable[Grant]) -> list[Grant]:
    return sorted(grants, key=lambda g: (g.resource, g.key, g.label))


def _render(data: Mapping[str, Any], kept: list[dict[str, Any]], suggested: list[tuple[str, Grant]],
            learned: Learned, agent: str, effect: str, groups: list[str], base_name: str, base: Policy,
            removed: list[str], scope_note: str) -> str:
    skipped = "; ".join(f"{why}: {n}" for why, n in sorted(learned.skipped.items())) or "none"
    lines = [f"# Suggested by `interceptor policy suggest` for agent {agent}, from what it did while learning.",
             f"# Learn sessions: {', '.join(sorted(learned.sessions))}",
             f"# Window: {iso(learned.window.first)} to {iso(learned.window.last)} "
             f"({learned.window.count} learn records)",
             f"# Records used: {learned.used}; skipped: {sum(learned.skipped.values())} ({_one_line(skipped)})",
             f"# Base: {base_name} (version {base.version}); its deny and mask rules are all kept."]
    if scope_note:
        lines.append(f"# Note: {scope_note}")
    lines += [f"# Changed from the base: {_one_line(line)}" for line in removed]
    if learned.refused:
        lines.append("# Seen but refused even while learning (never ran, not granted):")
        for (resource, rule, _), seen in sorted(learned.refused.items()):
            lines.append(f"#   {resource}, by rule {rule}: {seen.comment()}")
    if learned.inexact:
        lines.append("# Seen but no rule can allow exactly that (not granted; write a rule by hand if it is needed):")
        for (resource, why), seen in sorted(learned.inexact.items()):
            lines.append(f"#   {resource}, {_one_line(why)}: {seen.comment()}")
    lines.append(f"version: {_flow(data.get('version', 1))}")
    for section in ("resources", "agents"):
        lines.append(f"{section}:")
        lines += [f"  {_flow(name)}: {_flow(value)}" for name, value in data[section].items()]
    lines.append("rules:" if kept or suggested else "rules: []")
    lines += [f"  - {_flow(raw)}" for raw in kept]
    if suggested:
        lines.append(f"  # Suggested for {agent}: what it did while learning, and nothing else.")
    if effect == "approve" and not groups:
        lines.append(f"  # Approvers: {PLACEHOLDER_GROUP} is a placeholder (the base has no approve rule for "
                     f"{agent}): change it to the group that approves {agent}'s operations.")
    approvals = {str(raw["name"]): raw["approval"] for raw in data["rules"] if "approval" in raw}
    for name, grant in suggested:
        gates = sorted(gate for gate in grant.gates if gate in approvals)
        suggestion: dict[str, Any] = {"name": name, "effect": "approve" if gates or grant.shell else effect,
                                      "agents": [agent], "resources": [grant.resource], grant.key: grant.block()}
        if grant.subjects is not None:
            suggestion["subjects"] = grant.subjects
        if gates:
            suggestion["approval"] = approvals[gates[0]]
        elif effect == "approve" or grant.shell:
            suggestion["approval"] = {"groups": groups or [PLACEHOLDER_GROUP]}
        lines.append(f"  # {grant.seen.comment()}")
        if gates:
            lines.append(f"  # Approve, with the approval of the base's rule {gates[0]}: "
                         f"{', '.join(gates)} held some of these for approval while learning.")
        if grant.shell and effect == "allow" and not gates:
            lines.append("  # Approve whatever --effect says: shell: true allows every command (and every write "
                         "here), far more than what was seen.")
        if grant.fixed.get("tables") == [NO_TABLE]:
            lines.append("  # SELECTs without a table need a select rule with tables; this one names a table no "
                         "relation can have (its name is a NUL), so it allows nothing else.")
        lines.append(f"  - {_flow(suggestion)}")
    return "\n".join(lines) + "\n"


# -- the tests -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Case:
    name: str
    resource: str
    key: str
    operation: Any
    verdict: str
    search_path: str | None = None
    subject: Mapping[str, Any] = field(default_factory=dict)  # identity and process (case_subject)


def _tests(learned: Learned, text: str, policy_name: str, effect: str, suggested: Mapping[str, bool]) -> str:
    """The tests file: a case per distinct operation observed (at most CASES per resource),
    whose verdict is `effect` or approve by a suggested rule that keeps the base's approval
    (`suggested` maps each rule name to whether it does), and per resource cases that must be
    denied; each expects the verdict, rule and masks the suggested policy gives, all run
    against `text` before the text is returned."""
    unseen = _fresh(UNSEEN_TABLE, _flow(sorted(learned.statements.items())))
    catalog = _catalog(learned, unseen)
    cases: list[_Case] = []
    notes: list[str] = []
    for resource, events in sorted(learned.statements.items()):
        cases += _sql_cases(resource, events, catalog, effect, notes, unseen)
    for resource, operations in sorted(learned.operations.items()):
        distinct: dict[str, tuple[str, Any, dict[str, Any]]] = {}
        for key, operation, subject in operations:
            distinct.setdefault(_flow([operation, subject]), (key, operation, subject))
        for number, (key, operation, subject) in enumerate(list(distinct.values())[:CASES], 1):
            cases.append(_Case(f"{resource}: observed {key} {number}", resource, key, operation, effect,
                               subject=subject))
        denied = _denied(learned.protocols[resource], _fresh("not-learned", _flow(operations)), unseen)
        if denied is None:
            notes.append(f"{resource}: no case that must be denied (a tcp resource: only its connection is judged)")
        else:
            cases.append(_Case(f"{resource}: not learned", resource, denied[0], denied[1], "deny"))
    title = f"# Cases drawn from what {learned.agent} did while learning (written by `interceptor policy suggest`)."
    results = _readable(cases, text, [title], policy_name, catalog, learned.agent, notes)
    wrong = [f"{r.name}: expected {r.expected}, got {r.got}" for r in results if not r.passed and not (
             r.expected["verdict"] == "allow" and r.got["verdict"] == "approve" and suggested.get(r.got["rule"]))]
    wrong += [f"{r.name}: rule {r.got['rule']} is no suggested rule" for r, case in zip(results, cases)
              if case.verdict != "deny" and r.got["rule"] not in suggested and not _no_rule(r.got["rule"])]
    if wrong:
        raise SuggestError("cases drawn from what happened do not hold against the suggested policy (a bug of "
                           "policy suggest):\n" + "\n".join(wrong))
    header = [title, *[f"# {_one_line(note)}" for note in notes]]
    got = {case.name: {"verdict": r.got["verdict"], "rule": r.got["rule"],
                       **({"masks": r.got["masks"]} if r.got["masks"] else {})} for r, case in zip(results, cases)}
    final = _tests_text(header, policy_name, catalog, cases, learned.agent, got)
    failed = [r.name for r in _run(text, final, policy_name) if not r.passed]
    if failed:
        raise SuggestError(f"the tests written do not pass (a bug of policy suggest): {', '.join(failed)}")
    return final


def _readable(cases: list[_Case], text: str, header: list[str], policy_name: str, catalog: Mapping[str, list[str]],
              agent: str, notes: list[str]) -> list[CaseResult]:
    """Run the cases; a statement whose recorded text the analyser cannot read with its
    literals redacted as `?` (`?::int`) is tried again with each `?` as the literal `'0'`,
    and left out, with a note, when it cannot read that either. The cases, results in order."""
    for attempt in ("'0'", None):
        results = _run(text, _tests_text(header, policy_name, catalog, cases, agent, {}), policy_name)
        unread = {case.name for r, case in zip(results, cases)
                  if case.key == "sql" and case.verdict != "deny" and r.got["rule"] == UNPARSED_RULE}
        if not unread:
            return results
        for case in cases:
            if case.name in unread and attempt is not None:
                case.operation = _REDACTED.sub(attempt, str(case.operation))
        if attempt is None:
            notes.append(f"{len(unread)} statement(s) have no case: the analyser cannot read their recorded text "
                         f"(literals redacted) even with literals in place: {', '.join(sorted(unread))}")
            cases[:] = [case for case in cases if case.name not in unread]
    return _run(text, _tests_text(header, policy_name, catalog, cases, agent, {}), policy_name)


def _fresh(name: str, taken: str) -> str:
    """`name`, or `name-N` (`_N` when it holds `_`), whichever first does not occur in
    `taken` (what was seen, as text): the must-deny cases name what the agent never did."""
    sep, n, fresh = "_" if "_" in name else "-", 1, name
    while fresh in taken:
        n += 1
        fresh = f"{name}{sep}{n}"
    return fresh


def _catalog(learned: Learned, unseen_table: str) -> dict[str, list[str]]:
    """The short-form catalog of the SQL cases: every table the analyses name, with every
    column seen (`id` when none was), and the not-learned table of the deny case."""
    tables: dict[str, set[str]] = {}
    for events in learned.statements.values():
        for event in events:
            for statement in event["operation"]["analysis"]:
                for judged in statement.get("judged") or ():
                    if judged.get("table") is not None:
                        table = str(judged["table"])
                        tables.setdefault(table, set()).update(str(c) for c in judged.get("columns") or ())
    for table in list(tables):
        unseen = f"{table.partition('.')[0]}.{unseen_table}"
        tables.setdefault(unseen, {"id"})
    return {table: sorted(columns or {"id"}) for table, columns in sorted(tables.items())}


def _sql_cases(resource: str, events: list[Mapping[str, Any]], catalog: Mapping[str, list[str]], effect: str,
               notes: list[str], unseen_table: str) -> list[_Case]:
    """A case per distinct statement text that needed a rule (at most CASES), and the
    cases that must be denied: a write on a table only read, a read of a table not learned."""
    texts: dict[str, list[Any]] = {}
    subjects: dict[str, dict[str, Any]] = {}
    calls = 0
    for event in events:
        analysis = event["operation"]["analysis"]
        judged = [j for statement in analysis for j in statement.get("judged") or ()]
        if not any(not _no_rule(j.get("rule")) for j in judged):
            continue
        if any("function" in j for j in judged):
            calls += 1
            continue
        text = str(event["operation"].get("statement", ""))
        texts.setdefault(text, judged)
        subjects.setdefault(text, case_subject(event))
    if calls:
        notes.append(f"{resource}: {calls} statement(s) calling functions have no case: the short catalog of "
                     "this file holds no functions")
    schemas = sorted({str(j["table"]).partition(".")[0] for js in texts.values() for j in js if j.get("table")}
                     - {"public", "pg_catalog", "information_schema"})
    search_path = ", ".join(["public", *schemas]) if schemas else None
    cases = [_Case(f"{resource}: observed statement {n}", resource, "sql", text, effect, search_path, subjects[text])
             for n, text in enumerate(list(texts)[:CASES], 1)]
    written = {str(j["table"]) for js in texts.values() for j in js if j.get("table") and j.get("action") != "select"}
    read = sorted({str(j["table"]) for js in texts.values() for j in js if j.get("table")} - written)
    if read:
        cases.append(_Case(f"{resource}: a write on {read[0]}, only read", resource, "sql",
                           f"DELETE FROM {_quoted(read[0])}", "deny"))
    tables = sorted(t for t in catalog if not t.endswith("." + unseen_table))
    if tables:
        unseen = f"{tables[0].partition('.')[0]}.{unseen_table}"
        cases.append(_Case(f"{resource}: a read of {unseen}, not learned", resource, "sql",
                           f"SELECT id FROM {_quoted(unseen)}", "deny"))
    return cases


def _quoted(table: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split(".", 1))


def _denied(protocol: str, name: str, table: str) -> tuple[str, Any] | None:
    """An operation the agent did not do and the suggested policy must deny, per protocol:
    about `name` (a name none of its operations holds), for SQL a read of `table`."""
    if protocol == "kubernetes":
        return "kubernetes", {"verb": "delete", "resource": name, "namespace": "default", "name": "x"}
    if protocol == "http":
        return "http", {"method": "DELETE", "path": f"/{name}"}
    if protocol == "mcp":
        return "mcp", {"tool": name}
    if protocol == "ssh":
        return "ssh", {"read": f"/{name}"}
    if protocol == "postgres":
        return "sql", f"SELECT id FROM {_quoted('public.' + table)}"
    return None


def _tests_text(header: list[str], policy_name: str, catalog: Mapping[str, list[str]], cases: list[_Case],
                agent: str, got: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [*header, f"policy: {_flow(Path(policy_name).name)}"]
    if catalog:
        lines.append(f"catalog: {_flow(catalog)}")
    lines.append("cases:" if cases else "cases: []")
    for case in cases:
        raw: dict[str, Any] = {"name": case.name, "agent": agent, **case.subject, "resource": case.resource,
                               case.key: case.operation}
        if case.search_path is not None:
            raw["search_path"] = case.search_path
        raw["expect"] = {"verdict": case.verdict, **got.get(case.name, {})}
        lines.append(f"  - {_flow(raw)}")
    return "\n".join(lines) + "\n"


def _run(policy_text: str, tests_text: str, policy_name: str) -> list[CaseResult]:
    """Run the tests against the policy, both written to a scratch directory."""
    with tempfile.TemporaryDirectory(prefix="interceptor-suggest-") as scratch:
        (Path(scratch) / Path(policy_name).name).write_text(policy_text, encoding="utf-8")
        tests = Path(scratch) / "suggested.tests.yaml"
        tests.write_text(tests_text, encoding="utf-8")
        try:
            return run_cases(tests)
        except PolicyError as exc:
            raise SuggestError(f"the tests written do not load (a bug of policy suggest):\n{exc}\n{tests_text}") \
                from None
