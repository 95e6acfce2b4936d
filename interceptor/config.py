"""Daemon settings (/etc/interceptor/interceptor.yaml): where things live and how the daemon
runs. Who may do what (agents, resources, rules) is the policy's business, not this file's.

Every problem is reported as `file:line:col: message`; unknown keys are errors, because a
misspelt security setting silently ignored is worse than a daemon that refuses to start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path("/etc/interceptor/interceptor.yaml")
SHIPPED_POLICY = Path(__file__).resolve().parent.parent / "policy" / "default.yaml"
MASK_KEY_NAME = "mask.key"  # in the state directory, unless masking.hash_key_file names another


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    policy: Path = SHIPPED_POLICY
    redirect: str = "auto"  # bpf | iptables | auto (bpf, else iptables with a warning)
    enforcer_port: int = 999  # privileged on purpose: while the daemon is down nobody else can bind it
    refuse_port: int = 998  # denied connects land here: BPF mode never listens (ECONNREFUSED); iptables mode accepts, audits, resets
    state_dir: Path = Path("/var/lib/interceptor")
    control_socket: Path = Path("/run/interceptor/control.sock")
    admin_group: str | None = None
    audit: dict[str, Any] = field(default_factory=lambda: {"store": "sqlite", "durability": "strict"})
    approvals: dict[str, Any] = field(default_factory=dict)
    metrics_listen: str | None = None
    # scan_errors: run the value classifiers on the text of every error and notice the
    # server sends, not only those of statements that read masked columns; hash_key_file: the
    # HMAC key of mask style hash (a Path; absent: <state_dir>/mask.key, made by the daemon)
    masking: dict[str, Any] = field(default_factory=lambda: {"scan_errors": True})
    source: str = "<defaults>"

    @property
    def mask_key_file(self) -> Path:
        """Where the key of mask style `hash` lives: `masking.hash_key_file`, else
        `<state_dir>/mask.key` (interceptor.masking.key)."""
        named = self.masking.get("hash_key_file")
        return Path(named) if named is not None else self.state_dir / MASK_KEY_NAME

    @property
    def mask_key_shared(self) -> bool:
        """Whether the key file is named by the settings (shared by a fleet: never created
        here) rather than the host's own in the state directory."""
        return self.masking.get("hash_key_file") is not None


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "policy": str, "redirect": str, "enforcer_port": int, "refuse_port": int, "state_dir": str,
    "control_socket": str, "admin_group": (str, type(None)), "audit": dict, "approvals": dict,
    "metrics_listen": (str, type(None)), "masking": dict,
}


def _where(path: str, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def load_settings(path: Path | str | None = None) -> Settings:
    """Settings from `path`, or the defaults when no file exists at the default path."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Settings()
        path = DEFAULT_PATH
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if root is None:
        return Settings(source=path)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{_where(path, root)}: expected a mapping of settings")
    values: dict[str, Any] = {}
    errors = []
    for key_node, value_node in root.value:
        key = key_node.value
        if key not in _FIELDS:
            errors.append(f"{_where(path, key_node)}: unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})")
            continue
        value = yaml.safe_load(yaml.serialize(value_node))
        if not isinstance(value, _FIELDS[key]) or isinstance(value, bool) and _FIELDS[key] is int:
            errors.append(f"{_where(path, value_node)}: {key} has the wrong type ({type(value).__name__})")
            continue
        values[key] = (value, value_node)
    errors += _check(path, values)
    if errors:
        raise ConfigError("\n".join(errors))
    plain = {k: v for k, (v, _) in values.items()}
    base = Path(path).parent
    for key in ("policy", "state_dir", "control_socket"):
        if key in plain:
            plain[key] = _resolved(base, plain[key])
    if "hash_key_file" in plain.get("masking", {}):
        plain["masking"] = {**plain["masking"], "hash_key_file": _resolved(base, plain["masking"]["hash_key_file"])}
    return Settings(**plain, source=path)


def _resolved(base: Path, value: str) -> Path:
    """`value` as a path, relative to the settings file's directory `base` unless absolute."""
    return (base / value) if not os.path.isabs(value) else Path(value)


def _check(path: str, values: dict[str, tuple[Any, yaml.Node]]) -> list[str]:
    errors = []
    if "redirect" in values and values["redirect"][0] not in ("bpf", "iptables", "auto"):
        errors.append(f"{_where(path, values['redirect'][1])}: redirect must be bpf, iptables or auto")
    for key in ("enforcer_port", "refuse_port"):
        if key in values and not 1 <= values[key][0] <= 65535:
            errors.append(f"{_where(path, values[key][1])}: {key} must be a port number (1-65535)")
    if "masking" in values:
        masking, node = values["masking"]
        unknown = sorted(set(masking) - {"scan_errors", "hash_key_file"})
        key_file = masking.get("hash_key_file")
        bad_key_file = "hash_key_file" in masking and not (isinstance(key_file, str) and key_file)
        if unknown or bad_key_file or not isinstance(masking.get("scan_errors", True), bool):
            errors.append(f"{_where(path, node)}: masking takes only scan_errors: true|false and "
                          "hash_key_file: a path (the HMAC key of mask style hash)")
    return errors
