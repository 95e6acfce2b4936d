"""An agent's identity configuration (`agents.<name>.identity` in the policy file), checked
up front so a typo fails the policy load instead of a flow at run time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from interceptor.identity.discovery import check_issuer
from interceptor.identity.errors import IdentityConfigError

SOURCES = ("client_credentials", "token_file", "login", "none")
ON_INVALID = ("deny_next", "close")  # open connections when the identity goes bad
LOGIN_SCOPES = ("openid", "offline_access")


@dataclass(frozen=True, slots=True)
class AgentIdentityConfig:
    agent: str
    source: str = "none"
    issuer: str | None = None
    audience: str | None = None
    client_id: str | None = None
    private_key_file: str | None = None
    client_secret_file: str | None = None
    key_id: str | None = None
    scopes: tuple[str, ...] = ()
    path: str | None = None
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    introspect: bool = False
    on_invalid: str = "deny_next"


FIELDS = {f.name: f for f in fields(AgentIdentityConfig) if f.name != "agent"}
REQUIRED = {
    "client_credentials": ("issuer", "audience", "client_id", "scopes"),
    "token_file": ("issuer", "audience", "path"),
    "login": ("issuer", "audience", "client_id"),
    "none": (),
}


def _typed(agent: str, name: str, value: Any) -> Any:
    where = f"agent {agent!r} identity.{name}"
    if name in ("scopes", "algorithms"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise IdentityConfigError(f"{where} must be a list of strings")
        return tuple(value)
    if name == "leeway":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 300:
            raise IdentityConfigError(f"{where} must be a number of seconds in 0..300")
        return float(value)
    if name == "introspect":
        if not isinstance(value, bool):
            raise IdentityConfigError(f"{where} must be true or false")
        return value
    if not isinstance(value, str) or not value:
        raise IdentityConfigError(f"{where} must be a non-empty string")
    return value


def parse_identity_config(agent: str, raw: Mapping[str, Any] | None) -> AgentIdentityConfig:
    """Check one agent's identity mapping; IdentityConfigError names the agent and field."""
    raw = raw or {"source": "none"}
    if not isinstance(raw, Mapping):
        raise IdentityConfigError(f"agent {agent!r} identity must be a mapping")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise IdentityConfigError(f"agent {agent!r} identity has unknown field(s) {', '.join(unknown)}")
    values = {name: _typed(agent, name, value) for name, value in raw.items()}
    source = values.get("source", "none")
    if source not in SOURCES:
        raise IdentityConfigError(f"agent {agent!r} identity.source {source!r} is not one of {', '.join(SOURCES)}")
    missing = [name for name in REQUIRED[source] if name not in values]
    if missing:
        raise IdentityConfigError(f"agent {agent!r} identity source {source} needs {', '.join(missing)}")
    if values.get("on_invalid", "deny_next") not in ON_INVALID:
        raise IdentityConfigError(f"agent {agent!r} identity.on_invalid must be one of {', '.join(ON_INVALID)}")
    credentials = [name for name in ("private_key_file", "client_secret_file") if name in values]
    if len(credentials) > 1:
        raise IdentityConfigError(f"agent {agent!r} identity: give private_key_file or client_secret_file, not both")
    if source == "client_credentials" and not credentials:
        raise IdentityConfigError(f"agent {agent!r} identity source client_credentials needs private_key_file "
                                  "(preferred) or client_secret_file")
    if source == "token_file" and values.get("introspect") and not ("client_id" in values and credentials):
        raise IdentityConfigError(f"agent {agent!r} identity: introspect with token_file needs client_id and "
                                  "a client credential")
    if "issuer" in values:
        try:
            check_issuer(values["issuer"])
        except IdentityConfigError as exc:
            raise IdentityConfigError(f"agent {agent!r} identity: {exc}") from None
    if source == "login":
        values["scopes"] = tuple(dict.fromkeys(LOGIN_SCOPES + values.get("scopes", ())))
    return AgentIdentityConfig(agent=agent, **values)
