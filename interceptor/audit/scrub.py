"""Last line of defence before a record is chained: no secret reaches the trail.

Handlers mask result values before they build an event; this catches what slips through
anyway: credentials under telling keys, password literals in SQL, URL passwords,
credentials on a command line (an SSH exec's command, a process's argv) and tokens (API keys,
JWTs) anywhere in a string. A chained record can never be cleaned later, so this runs
before hashing.

Command-line credentials, scrubbed as values with their names kept:

- an option whose name says so (`--password=X`, `--pass X`, `-passin X`, `--api-key X`,
  `--auth-token=X`; not `--password-file F`, `--no-password`, `--password-stdin`);
- `USER:PASSWORD` given to `-u`/`-U`/`--user`/`--proxy-user` (curl, wget);
- `NAME=VALUE` whose name says so (`PGPASSWORD=X psql`, `MYSQL_PWD=X`, `api_token=X`);
- `NAME: VALUE` and `NAME:VALUE` whose name says so: HTTP headers (`Authorization: Bearer X`,
  `X-Api-Key: X`, `Cookie: X`; the scheme word kept) and openssl's `pass:X`;
- the short options of programs that take a password with them: mysql/mariadb `-pX`,
  sshpass `-p X`, redis-cli `-a X`.

A name "says so" when one of its words (split at `-`, `_`, `.`) is pass, passin, passout, pwd,
key, auth, cookie or authorization, or ends in password, passwd, passphrase, token, secret,
apikey, accesskey, secretkey, privatekey or credentials; unless another word says the value is
no secret (file, stdin, env, id, ...).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from interceptor.audit.chain import normalize
from interceptor.audit.event import SharedSummary
from interceptor.masking.classifiers import api_key
from interceptor.textcache import short_text_cache

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token$|authorization|api[_-]?key|private[_-]?key|credential|cookie",
                         re.IGNORECASE)
# Identifiers and digests that look random by design; masking them would only cost the trail its
# joins (a recording's sha256 is what `audit replay` checks the file against).
_IDENTIFIER_KEYS = frozenset({"event_id", "flow_id", "jti", "cgroup", "session", "sha256"})
_SQL_PASSWORD = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")
# A shell word: quoted parts (an unclosed quote runs to the end), escapes and plain characters;
# NUL separates the words of an argv list joined for scrubbing, so no word crosses it.
_WORD = re.compile(r"""(?:'[^'\x00]*'?|"(?:[^"\\\x00]|\\[^\x00])*"?|\\[^\x00]|[^\s\x00'"\\;&|<>])+""")
_START = r"""(?<![^\s\x00'"=;&|(])"""  # a name starts a word (or follows a quote, `=` or an operator)
_VALUE_AFTER = r"(?:=(?=[^\s\x00])|[\s\x00]+(?=[^-\s\x00]))"  # `=VALUE`, or a next word that is no option
_OPTION = re.compile(_START + r"-{1,2}([A-Za-z][\w.-]*)" + _VALUE_AFTER)
_USER_OPTION = re.compile(_START + r"(?:-[uU](?=[^\s\x00=])|(?:-[uU]|--user|--proxy-user)" + _VALUE_AFTER + ")")
_ASSIGNMENT = re.compile(_START + r"([A-Za-z_][\w]*)=(?=[^\s\x00])")
_COLON = re.compile(_START + r"([A-Za-z][\w-]*)(:[ \t]*)(?:(?:Bearer|Basic|Token|Digest|Negotiate|Bot)[ \t]+)?"
                    r"(?=[^\s\x00'\"])", re.IGNORECASE)
_HEADER_VALUE = re.compile(r"""[^'"\r\n\x00]*""")
_PROGRAM = re.compile(_START + r"(?:[\w./-]*/)?(mysql\w*|mariadb[\w-]*|sshpass|redis-cli)(?=[\s\x00])")
_SEGMENT_END = re.compile(r"[;&|\n]")
_PROGRAM_OPTION = {"sshpass": re.compile(r"[\s\x00]-p[\s\x00]*(?=[^-\s\x00])"),
                   "redis-cli": re.compile(r"[\s\x00]-a[\s\x00]*(?=[^-\s\x00])")}
_MYSQL_OPTION = re.compile(r"[\s\x00]-p(?=[^\s\x00])")
_OPENSSL_SOURCE = re.compile(r"['\"]?(?:(?:pass|env|file|fd):|stdin\b)")  # `pass:X` is the colon pass's
_NAME_WORDS = re.compile(r"[-_.]")
_TELLING_WORDS = frozenset({"pass", "passin", "passout", "pwd", "key", "auth", "cookie", "authorization"})
_TELLING_ENDINGS = ("password", "passwd", "passphrase", "token", "secret", "apikey", "accesskey", "secretkey",
                    "privatekey", "credential", "credentials")
_HARMLESS_WORDS = frozenset({"no", "ask", "file", "stdin", "prompt", "env", "path", "dir", "id", "type", "method",
                             "source", "db", "database", "sock", "length", "size", "command", "cmd"})
# No pattern above (nor api_key, whose tokens are 20+ characters) matches fewer characters
# than "key=x": shorter strings (agent names, verdicts, kinds) are kept without a look.
SHORTEST_SECRET = 5


@short_text_cache(maxsize=8192)
def scrub_text(text: str) -> str:
    """`text` with password literals, URL passwords and recognised tokens replaced.

    Cached: a trail repeats the same strings (statement texts, exe paths, agent names) in
    record after record, and a pure function of its input needs running once per string."""
    text = _SQL_PASSWORD.sub(rf"\1'{REDACTED}'", text)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    text = _command_line(text)
    raw = text.encode()
    spans = api_key(raw)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [raw[last:start], REDACTED.encode()]
        last = end
    out.append(raw[last:])
    return b"".join(out).decode("utf-8", "replace")


def _command_line(text: str) -> str:
    """`text` with command-line credentials (module docstring) replaced. Each pass finds
    names and measures their values without consuming them, so a value that is not a secret
    (`sh -c '...'`) is still searched; every pass is one left-to-right scan."""
    spans: list[tuple[int, int]] = []
    for pattern, value in ((_OPTION, _option_value), (_USER_OPTION, _user_value), (_ASSIGNMENT, _assigned_value),
                           (_COLON, _colon_value)):
        reach = 0  # a name inside a value already redacted is not measured again: one scan per pass
        for match in pattern.finditer(text):
            if match.start() >= reach and (span := value(text, match)) is not None:
                spans.append(span)
                reach = span[1]
    spans += _program_options(text)
    return _replaced(text, spans)


def _option_value(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    if not _telling(match.group(1), whole_name_counts=True) or _OPENSSL_SOURCE.match(text, match.end()):
        return None
    return _word_span(text, match.end(), after_colon=False)


def _user_value(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    return _word_span(text, match.end(), after_colon=True)


def _assigned_value(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    return _word_span(text, match.end(), after_colon=False) if _telling(match.group(1), whole_name_counts=False) \
        else None


def _telling(name: str, whole_name_counts: bool) -> bool:
    """Whether the option, variable or header `name` says its value is a credential."""
    words = _NAME_WORDS.split(name.lower())
    if not _HARMLESS_WORDS.isdisjoint(words):
        return False
    if not whole_name_counts and words == ["pwd"]:  # the shell's working directory
        return False
    return any(word in _TELLING_WORDS or word.endswith(_TELLING_ENDINGS) for word in words)


def _word_span(text: str, start: int, after_colon: bool) -> tuple[int, int]:
    """The span of the shell word at `start` to redact, its quotes kept; with `after_colon`,
    only what follows its first `:` (nothing when it has none: `sudo -u root`)."""
    word = _WORD.match(text, start)
    end = word.end() if word else start
    if after_colon:
        colon = text.find(":", start, end)
        start = end if colon < 0 else colon + 1
    if end - start >= 2 and text[start] in "'\"" and text[end - 1] == text[start]:
        return start + 1, end - 1
    if start < end and text[start] in "'\"":
        start += 1
    if start < end and text[end - 1] in "'\"":
        end -= 1
    return start, end


def _colon_value(text: str, match: re.Match[str]) -> tuple[int, int] | None:
    """A header's value (to the end of its quoted string or line, blanks at its end kept)
    when a blank follows the colon; otherwise one word (`pass:X`)."""
    if not _telling(match.group(1), whole_name_counts=True):
        return None
    if match.group(2) == ":":
        return _word_span(text, match.end(), after_colon=False)
    value = _HEADER_VALUE.match(text, match.end())
    end = value.end() if value else match.end()
    return match.end(), len(text[match.end():end].rstrip()) + match.end()


def _program_options(text: str) -> list[tuple[int, int]]:
    """Password options of the programs in _PROGRAM_OPTION and the mysql family, searched up
    to the end of each command (`;`, `&`, `|`, newline)."""
    spans: list[tuple[int, int]] = []
    position = 0
    while program := _PROGRAM.search(text, position):
        name = program.group(1)
        segment = _SEGMENT_END.search(text, program.end())
        position = segment.start() if segment else len(text)
        option = _PROGRAM_OPTION.get(name, _MYSQL_OPTION)
        spans += [_word_span(text, found.end(), after_colon=False)
                  for found in option.finditer(text, program.end(), position)]
    return spans


def _replaced(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each non-empty span (overlapping ones merged) replaced by REDACTED."""
    out: list[str] = []
    last = 0
    for start, end in sorted(span for span in spans if span[0] < span[1]):
        if end <= last:
            continue
        start = max(start, last)
        out += [text[last:start], REDACTED]
        last = end
    out.append(text[last:])
    return "".join(out)


class NotPlain(ValueError):
    """A value that is not plain JSON yet (a tuple, set, enum, non-string key, non-finite float)."""


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _scrub_shared(value: SharedSummary) -> SharedSummary:
    """A read-only per-flow summary comes back with every record of its flow: scrubbed once,
    and the scrubbed copy is shared (and read-only) too, so the chain encodes it once."""
    return value.derived("scrubbed", _scrubbed_copy)


def _scrubbed_copy(summary: SharedSummary) -> SharedSummary:
    return SharedSummary(_scrub_dict(summary))


def _scrub_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise NotPlain(f"key {key!r}")
        kind = type(item)
        if _secret_key(key) and item is not None and item != "":
            out[key] = REDACTED
        elif kind is SharedSummary:
            out[key] = _scrub_shared(item)
        elif kind is str:
            out[key] = item if len(item) < SHORTEST_SECRET or key in _IDENTIFIER_KEYS else scrub_text(item)
        elif kind is int or kind is bool or item is None:
            out[key] = item
        else:
            out[key] = scrub(item)
    return out


def _scrub_list(value: list[Any]) -> list[Any]:
    """Each item scrubbed; a list of strings (an argv: ["mysql", "-p", ...]) is scrubbed as
    one text, its items joined by NUL (which no secret's pattern crosses), so an option and
    its value in two items are seen together."""
    if len(value) > 1 and all(type(item) is str and "\x00" not in item for item in value):
        items = scrub_text("\x00".join(value)).split("\x00")
        if len(items) == len(value):
            return items
    return [scrub(item) for item in value]


def scrub(value: Any) -> Any:
    """A copy of a plain JSON value with secrets masked (see module docstring); NotPlain
    for anything a JSON round trip would change."""
    kind = type(value)
    if kind is dict:
        return _scrub_dict(value)
    if kind is SharedSummary:
        return _scrub_shared(value)
    if kind is str:
        return scrub_text(value)
    if kind is list:
        return _scrub_list(value)
    if kind is int or kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    raise NotPlain(repr(value)[:80])


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as plain JSON with secrets masked. Events nearly always hold plain values,
    so one walk does both; the rest take the JSON round trip of `normalize` first."""
    scrubbed: dict[str, Any]
    try:
        scrubbed = scrub(event)
    except NotPlain:
        scrubbed = scrub(normalize(event))
    return scrubbed
