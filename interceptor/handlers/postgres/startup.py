"""The StartupMessage: what an agent may ask of a new session (docs, 55.7 "StartupMessage";
20.1.4 and libpq's `options`). Only a documented list of harmless settings reaches the
server, whether sent as parameters or as `options=-c name=value`; a client-only encoding
is refused; replication connections are refused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from interceptor.errors import Refused
from interceptor.handlers.postgres import codec
from interceptor.policy.encodings import EncodingRefused, python_codec
from interceptor.policy.sql_session import SESSION_SETTINGS

PASSED_PARAMETERS = SESSION_SETTINGS


@dataclass(frozen=True, slots=True)
class Startup:
    user: str
    database: str
    params: dict[str, str]  # what is passed upstream besides user and database, names in lower case
    minor: int  # protocol minor version spoken with the client (0 or 2)
    greeting: bytes  # NegotiateProtocolVersion when the client asked for more than 3.2


def accept_startup(packet: codec.StartupPacket) -> Startup:
    """Check a StartupMessage; only harmless session settings reach the server (Refused
    naming what is not allowed)."""
    params = dict(packet.params)
    user = params.pop("user", "")
    if not user:
        raise Refused("28000", "no PostgreSQL user name specified in startup packet")
    database = params.pop("database", "") or user
    if "replication" in params and params["replication"].lower() not in ("0", "off", "false", "no"):
        raise Refused("42501", "replication connections are not allowed through the enforcer")
    params.pop("replication", None)
    unrecognized = sorted(name for name in params if name.startswith("_pq_."))
    settings = [(name, value) for name, value in params.items() if not name.startswith("_pq_.") and name != "options"]
    if "options" in params:
        settings += split_options(params["options"])
    passed = _settings(settings)
    encoding = passed.get("client_encoding")
    if encoding is not None:
        try:
            python_codec(encoding)
        except EncodingRefused as exc:
            raise Refused("0A000", str(exc)) from None
    minor = packet.version & 0xFFFF
    greeting = b""
    if minor > 2 or unrecognized:
        greeting = codec.negotiate_protocol_version(min(minor, 2), unrecognized)
    return Startup(user, database, passed, 2 if minor >= 2 else 0, greeting)


def _settings(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Names are case-insensitive to the server: each may be given once, from the list."""
    passed: dict[str, str] = {}
    refused = sorted({name for name, _ in pairs if name.lower() not in PASSED_PARAMETERS})
    if refused:
        raise Refused("42501", f"startup parameter(s) {', '.join(refused)} are not allowed through the enforcer "
                               f"(allowed: {', '.join(sorted(PASSED_PARAMETERS))})")
    for name, value in pairs:
        if name.lower() in passed:
            raise Refused("42501", f"startup parameter {name} is given more than once")
        passed[name.lower()] = value
    return passed


def split_options(options: str) -> list[tuple[str, str]]:
    """The `options` startup parameter as the server reads it (pg_split_opts: words split at
    whitespace, a backslash keeps the next character), each word pair `-c name=value` or
    word `--name=value` (dashes in the name read as underscores). Any other switch is
    Refused: the server would take it as a command-line option."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
    if word or escaped:
        words.append("".join(word))
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        current = words[index]
        if current == "-c" and index + 1 < len(words):
            setting, index = words[index + 1], index + 2
        elif current.startswith("--"):
            setting, index = current[2:], index + 1
        elif current.startswith("-c") and len(current) > 2:
            setting, index = current[2:], index + 1
        else:
            raise Refused("42501", f"startup option {current!r} is not allowed through the enforcer "
                                   "(only -c name=value for the allowed settings)")
        name, equals, value = setting.partition("=")
        if not equals or not name:
            raise Refused("42501", f"startup option {setting!r} is not of the form name=value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def database_allowed(database: str, patterns: tuple[str, ...] | None, credentials_database: str | None) -> bool:
    """Patterns from the resource when it lists databases; else only the credentials' own
    database when they name one; else any (the server's grants decide)."""
    if patterns:
        return any(fnmatch.fnmatchcase(database, p) for p in patterns)
    return credentials_database is None or database == credentials_database
