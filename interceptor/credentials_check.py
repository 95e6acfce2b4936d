"""Each resource's credentials resolved and checked against its protocol ahead of any agent:
the daemon at start and after every policy reload (file and env sources; a command, which may
be slow or ask for input, only when an agent needs it), `interceptor doctor` (every source, a
command with a time limit). A failure names the resource, the source and the fix, never a value;
the daemon logs it as a WARNING and keeps running: that resource's flows are refused as before.

What each protocol takes: http, kubernetes and mcp as interceptor.handlers.http.credentials
(token, or user and password; client_certificate and client_key); postgres `user` and
`password` (the upstream login: PostgreSQL documentation, Frontend/Backend Protocol, Message
Flow), `database` optional (the only database agents may ask for when the resource lists none);
ssh as interceptor.handlers.ssh.upstream (`user`, and a private key, with its certificate and
passphrase, or a password; the key is read and decrypted, the certificate checked against it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from interceptor.handlers.base import resource_option
from interceptor.handlers.http.credentials import KEYS as HTTP_KEYS
from interceptor.handlers.http.credentials import CredentialsError, upstream_credentials
from interceptor.handlers.ssh.upstream import KEYS as SSH_KEYS
from interceptor.handlers.ssh.upstream import SshCredentialsError, login
from interceptor.policy.model import Policy, ResourceSpec
from interceptor.secrets import SHAPE_FIX, SecretError, SecretShapeError, describe_source, resolve_credentials

log = logging.getLogger(__name__)

POSTGRES_KEYS = frozenset({"user", "password", "database"})
ACCEPTED_KEYS: Mapping[str, frozenset[str]] = {"http": HTTP_KEYS, "kubernetes": HTTP_KEYS, "mcp": HTTP_KEYS,
                                               "postgres": POSTGRES_KEYS, "ssh": SSH_KEYS}
EXPECTED: Mapping[str, str] = {
    **dict.fromkeys(("http", "kubernetes", "mcp"),
                    "a mapping `token: THE_TOKEN` (or `user:` and `password:`; and/or `client_certificate:` and "
                    "`client_key:`, paths of PEM files)"),
    "postgres": "a mapping `user:` and `password:` (`database:` optional), or one line user:password",
    "ssh": "a mapping `user:` and `private_key_file:` (or `private_key:`; `certificate:` or `certificate_file:` and "
           "`passphrase:` optional), or `user:` and `password:`",
}
COMMAND_TIMEOUT_S = 10.0
_KEY_NAME = re.compile(r"[A-Za-z_]{1,32}")  # a key with digits or symbols, or longer, may be a pasted token


@dataclass(frozen=True, slots=True)
class CredentialsCheck:
    """`resource`: its name; `source`: `file PATH`, `env NAME` or `command ARGV0`; `ok`;
    `detail`: the keys found, or what is wrong; `fix`: what to do ("" when ok or not run)."""

    resource: str
    source: str
    ok: bool
    detail: str
    fix: str = ""


class ShapeError(ValueError):
    """The credentials resolved but `protocol` cannot use them; never quotes a value."""


def _key_names(keys: set[str]) -> str:
    shown = sorted(k for k in keys if _KEY_NAME.fullmatch(k))
    hidden = len(keys) - len(shown)
    return ", ".join(shown + ([f"{hidden} key(s) not shown (they look like values)"] if hidden else []))


def validate_shape(resource: ResourceSpec, credentials: Mapping[str, str]) -> str:
    """The keys `credentials` give when `resource`'s protocol can use them, as one line (no
    values). ShapeError for unknown keys, half pairs, empty values, a token a header cannot
    carry (CR, LF, control characters: RFC 9110 section 5.5), a NUL (PostgreSQL strings are
    NUL-terminated, protocol section 55.7), and a protocol that takes no credentials."""
    accepted = ACCEPTED_KEYS.get(resource.protocol)
    if accepted is None:
        raise ShapeError(f"protocol {resource.protocol} uses no credentials (only "
                         f"{', '.join(sorted(ACCEPTED_KEYS))} do)")
    if not credentials:
        raise ShapeError("no key given")
    unknown = set(credentials) - accepted
    if unknown:
        raise ShapeError(f"key(s) {_key_names(unknown)} are not used by {resource.protocol} resources "
                         f"(expected {', '.join(sorted(accepted))})")
    empty = sorted(k for k, v in credentials.items() if not v)
    if empty:
        raise ShapeError(f"{', '.join(empty)} is empty")
    if resource.protocol == "postgres":
        if "user" not in credentials or "password" not in credentials:
            raise ShapeError("postgres resources need both user and password")
        if any("\0" in v for v in credentials.values()):
            raise ShapeError("a value holds a NUL character, which the PostgreSQL protocol cannot carry")
    elif resource.protocol == "ssh":
        try:
            login(credentials)
        except SshCredentialsError as exc:
            raise ShapeError(str(exc)) from None
    else:
        header = resource_option(resource, "token_header")
        try:
            upstream_credentials(credentials, header if isinstance(header, str) else None)
        except CredentialsError as exc:
            raise ShapeError(str(exc)) from None
        for key in ("client_certificate", "client_key"):
            if key in credentials and not os.access(credentials[key], os.R_OK):
                raise ShapeError(f"{key} names a file that is missing or unreadable")
    return f"{', '.join(sorted(credentials))} for {resource.protocol}"


async def check_resource(resource: ResourceSpec, run_commands: bool) -> CredentialsCheck | None:
    """`resource`'s credentials resolved and validated; None when it has none. A command source
    runs (COMMAND_TIMEOUT_S at most) only when `run_commands`; otherwise it is reported ok,
    not run."""
    source = resource.credentials
    if not source:
        return None
    where = describe_source(source)
    if source.get("from") == "command" and not run_commands:
        return CredentialsCheck(resource.name, where, True, "not run (a command runs when an agent needs it; "
                                                            "`interceptor doctor` runs it)")
    expected = EXPECTED.get(resource.protocol, "no credentials (remove credentials: from the resource)")
    try:
        credentials = await resolve_credentials(source, COMMAND_TIMEOUT_S)
        return CredentialsCheck(resource.name, where, True, validate_shape(resource, credentials))
    except SecretShapeError as exc:
        more = "" if exc.fix == SHAPE_FIX else f"; {exc.fix}"  # the protocol's own shape says it better
        return CredentialsCheck(resource.name, where, False, str(exc),
                                f"{resource.protocol} resources take {expected}{more}")
    except SecretError as exc:
        return CredentialsCheck(resource.name, where, False, str(exc), exc.fix)
    except ShapeError as exc:
        return CredentialsCheck(resource.name, where, False, f"{where}: {exc}",
                                f"{resource.protocol} resources take {expected}")


async def check_policy(policy: Policy, run_commands: bool) -> list[CredentialsCheck]:
    """One CredentialsCheck per resource of `policy` with credentials, in policy order."""
    results = await asyncio.gather(*(check_resource(r, run_commands) for r in policy.resources.values()))
    return [r for r in results if r is not None]


async def warn_failing(policy: Policy) -> None:
    """The daemon's check (no command runs): each failure logged as a WARNING; never raises."""
    try:
        checks = await check_policy(policy, run_commands=False)
    except Exception as exc:  # the check must never stop the daemon; flows still fail closed
        log.warning("credentials check failed: %s", exc)
        return
    for c in checks:
        if not c.ok:
            log.warning("credentials of resource %r (%s) fail, its flows will be refused: %s; fix: %s",
                        c.resource, c.source, c.detail, c.fix)
