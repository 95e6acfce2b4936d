"""Last line of defence before a record is chained: no secret reaches the trail.

Handlers mask result values before they build an event; this catches what slips through
anyway: credentials under telling keys, password literals in SQL, URL passwords,
credentials on a command line (an SSH exec's command, a process's argv) and tokens (API keys,
JWTs) anywhere in a string. A chained record can never be cleaned later, so this runs
before hashing.

Command-line credentials, scrubbed as values with their names kept:

- an option whose name says so (`--password=X`, `--pass X`, `-passin X`, `--api-key X`,
  `--auth-token=X`, `--db-password=X`; not `--password-file F`, `--no-password`,
  `--password-stdin`, `--key F`);
- `USER:PASSWORD` given to `-u`/`-U`/`--user`/`--proxy-user` (curl, wget);
- `NAME=VALUE` whose name says so (`PGPASSWORD=X psql`, `DB_PASSWORD=X`, `api_token=X`);
- `NAME: VALUE` and `NAME:VALUE` whose name says so: HTTP headers (`Authorization: Bearer X`,
  `X-Api-Key: X`, `Cookie: X` and its later `; NAME=X` pairs; the scheme word kept) and
  openssl's `pass:X`;
- the password options of programs that take one by a short option or a position
  (_PASSWORD_OPTIONS), searched up to the end of the program's command:

  ==========================================  ==================================================
  program                                     password options
  ==========================================  ==================================================
  mysql, mysqladmin, mysqldump, mariadb*      `-pX` (`-p` alone asks for it)
  sshpass                                     `-p X`, `-pX`
  redis-cli                                   `-a X`
  docker/podman/nerdctl/buildah login         `-p X`
  smbclient, rpcclient, smbcacls, smbget      `-U USER%X`, `--user USER%X`
  ldapsearch, ldapmodify, ldapadd, ldap*      `-w X`; ldappasswd also `-a X` (old), `-s X` (new)
  sqlcmd, bcp, osql, isql                     `-P X`
  mongo, mongosh, mongodump, mongo*           `-p X`
  ssh-keygen                                  `-P X` (old passphrase), `-N X` (new)
  openssl                                     `-k X` (`-pass`, `-passin`: as options above)
  zip, unzip                                  `-P X`
  7z, 7za, 7zr                                `-pX` (`-p` alone asks for it)
  aws configure set NAME VALUE                VALUE, when NAME says so
  htpasswd -b [FILE] USER PASSWORD            PASSWORD (no FILE with `-n`)
  ==========================================  ==================================================

A name "says so" when one of its words (split at `-`, `_`, `.`) is pass, passin, passout, pwd,
auth, cookie or authorization, or it or it joined to the word before ends in password, passwd,
passphrase, token, secret, apikey, accesskey, secretkey, privatekey, credentials (or the like:
_TELLING_ENDINGS); `key` alone does not (`sort --key=2`, `curl --key FILE`). A later word can
say the value is no secret (`password-file`, `token_env`, `access_key_id`: _HARMLESS_WORDS),
and a name beginning with no, ask or prompt is a flag that takes no value (`--no-password`);
a word before a telling one never cancels it (`DB_PASSWORD`).

A value never extends past the end of the shell word it is in (quoting as POSIX sh, XCU
2.2-2.3, with bash's `$'...'`): inside a quoted word it ends at that word's closing quote; a
quote that opens after the value's start and does not close ends the value there; and no
value takes in a `;`, `&`, `|` or newline outside quotes, so a credential cannot hide the
commands after it from the trail.
"""

from __future__ import annotations

import bisect
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
_IDENTIFIER_KEYS = frozenset({"event_id", "flow_id", "jti", "cgroup", "session", "sha256", "request_event"})
_SQL_PASSWORD = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")
# A shell word whose quoted parts all close: the longest a value can be. NUL separates the words
# of an argv list joined for scrubbing, so no word crosses it.
_WORD = re.compile(r"""(?:'[^'\x00]*'|"(?:[^"\\\x00]|\\[^\x00])*"|\\[^\x00]|[^\s\x00'"\\;&|<>])+""")
# The quoting of a whole text, one token at a time: quoted parts (group `close` set when they
# close), comments, separators (outside quotes) and runs of anything else.
_TOKEN = re.compile(r"""\$?'(?:(?<=\$')(?:[^'\\\x00]|\\[^\x00])*|(?<!\$')[^'\x00]*)(?P<single>')?"""
                    r"""|"(?:[^"\\\x00]|\\[^\x00])*(?P<double>")?"""
                    r"""|\\[^\x00]|(?<![^\s;&|(\x00])#[^\n\x00]*|(?P<separator>[;&|\n\x00])|[^'"$\\;&|\n\x00#]+|.""",
                    re.DOTALL)
_START = r"""(?<![^\s\x00'"=;&|(])"""  # a name starts a word (or follows a quote, `=` or an operator)
_VALUE_AFTER = r"(?:=(?=[^\s\x00])|[\s\x00]+(?=[^-\s\x00]))"  # `=VALUE`, or a next word that is no option
_OPTION = re.compile(_START + r"-{1,2}([A-Za-z][\w.-]*)" + _VALUE_AFTER)
_USER_OPTION = re.compile(_START + r"(?:-[uU](?=[^\s\x00=])|(?:-[uU]|--user|--proxy-user)" + _VALUE_AFTER + ")")
_ASSIGNMENT = re.compile(_START + r"([A-Za-z_][\w]*)=(?=[^\s\x00])")
_COLON = re.compile(_START + r"([A-Za-z][\w-]*)(:[ \t]*)(?:(?:Bearer|Basic|Token|Digest|Negotiate|Bot)[ \t]+)?"
                    r"(?=[^\s\x00'\"])", re.IGNORECASE)
_HEADER_VALUE = re.compile(r"""[^'"\r\n\x00]*""")
_COOKIE = re.compile(_START + r"(?:set-)?cookie:[ \t]+", re.IGNORECASE)
_COOKIE_PAIR = re.compile(r"""[ \t]*;[ \t]*[^=\s;\x00'"]+=([^\s;\x00'"]*)""")
_SEGMENT_END = re.compile(r"[;&|\n]")
_OPENSSL_SOURCE = re.compile(r"['\"]?(?:(?:pass|env|file|fd):|stdin\b)")  # `pass:X` is the colon pass's
# How a short option takes its value: "either" the next word or attached (-pX), "attached" only
# (-p alone asks for the password), "next" word only, "user%" the part after `%` of the next
# or attached word.
_TAKES = {"either": r"(?:(?=[^\s\x00])|[\s\x00]+(?=[^-\s\x00]))", "attached": r"(?=[^\s\x00])",
          "next": r"[\s\x00]+(?=[^-\s\x00])"}
_TAKES["user%"] = _TAKES["either"]
# Program (its name, with the words that must follow it) -> its password options; the first
# program that matches counts. "positional" names a function for values given by position.
_PASSWORD_OPTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (r"mysql\w*|mariadb[\w-]*", (("-p", "attached"),)),
    (r"sshpass", (("-p", "either"),)),
    (r"redis-cli", (("-a", "either"),)),
    (r"(?:docker|podman|nerdctl|buildah)[\s\x00]+login", (("-p", "either"),)),
    (r"smbclient|rpcclient|smbcacls|smbget", (("-U", "user%"), ("--user", "user%"))),
    (r"ldappasswd", (("-w", "either"), ("-a", "either"), ("-s", "either"))),
    (r"ldap\w+", (("-w", "either"),)),
    (r"sqlcmd|bcp|osql|isql", (("-P", "either"),)),
    (r"mongo\w*", (("-p", "either"),)),
    (r"ssh-keygen", (("-P", "either"), ("-N", "either"))),
    (r"openssl", (("-k", "next"),)),
    (r"zip|unzip", (("-P", "next"),)),
    (r"7z[ar]?", (("-p", "attached"),)),
    (r"aws[\s\x00]+configure[\s\x00]+set", (("NAME VALUE", "positional"),)),
    (r"htpasswd", (("-b", "positional"),)),
)
_PROGRAM = re.compile(_START + r"(?:[\w./-]*/)?(" + "|".join(name for name, _ in _PASSWORD_OPTIONS)
                      + r")(?=[\s\x00])")
_PROGRAMS = tuple((re.compile(name), tuple((re.compile(r"[\s\x00]" + re.escape(option) + _TAKES[how]), how)
                                           for option, how in options if how != "positional"),
                   any(how == "positional" for _, how in options)) for name, options in _PASSWORD_OPTIONS)
_ARGUMENT = re.compile(r"[\s\x00]+([^\s\x00;&|]+)")
_NAME_WORDS = re.compile(r"[-_.]")
_TELLING_WORDS = frozenset({"pass", "passin", "passout", "pwd", "auth", "cookie", "authorization"})
_TELLING_ENDINGS = ("password", "passwd", "passphrase", "token", "secret", "apikey", "accesskey", "secretkey",
                    "privatekey", "credential", "credentials", "encryptionkey", "signingkey", "masterkey",
                    "clientsecret", "licensekey")
_HARMLESS_WORDS = frozenset({"file", "stdin", "env", "path", "dir", "id", "type", "method", "source", "sock",
                             "length", "size", "command", "cmd", "jar", "prompt"})
_FLAG_WORDS = frozenset({"no", "ask", "prompt"})  # a name beginning so takes no value
# No pattern above (nor api_key, whose tokens are 20+ characters) matches fewer characters
# than "pwd:x": shorter strings (agent names, verdicts, kinds) are kept without a look.
SHORTEST_SECRET = 5


@short_text_cache(maxsize=8192)
def scrub_text(text: str) -> str:
    """`text` with password literals, URL passwords and recognised tokens replaced, and what no
    store can hold as text replaced by U+FFFD (_storable).

    Cached: a trail repeats the same strings (statement texts, exe paths, agent names) in
    record after record, and a pure function of its input needs running once per string."""
    return _storable(_masked(text))


def _masked(text: str) -> str:
    """`text` with password literals, URL passwords and recognised tokens replaced."""
    text = _SQL_PASSWORD.sub(rf"\1'{REDACTED}'", text)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    text = _command_line(text)
    raw = text.encode("utf-8", "surrogatepass")
    spans = api_key(raw)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [raw[last:start], REDACTED.encode()]
        last = end
    out.append(raw[last:])
    return b"".join(out).decode("utf-8", "replace")


class _Words:
    """A command text and its quoting (one left-to-right scan): `limit(position)` is how far a
    value starting at `position` may reach, `span(start)` the value there."""

    def __init__(self, text: str) -> None:
        self.text = text

    @functools.cached_property
    def _quoting(self) -> tuple[list[int], list[int], list[int]]:
        """Where quoted parts open and close, and where separators outside quotes are: scanned
        when a first value is measured (most texts have none)."""
        opens: list[int] = []
        closes: list[int] = []
        separators: list[int] = []
        for token in _TOKEN.finditer(self.text):
            if token.group("separator") is not None:
                separators.append(token.start())
            elif token.group().startswith(("'", '"', "$'")) and token.end() - token.start() > 1:
                closed = token.group("single") is not None or token.group("double") is not None
                opens.append(token.start() + token.group().startswith("$"))
                closes.append(token.end() - 1 if closed else token.end())
        return opens, closes, separators

    def limit(self, position: int) -> int:
        """The closing quote of the quoted part `position` is in (the end of the text, or of
        the argv word, for one that never closes); outside quotes, the next separator."""
        opens, closes, separators = self._quoting
        inner = bisect.bisect_left(opens, position) - 1
        if inner >= 0 and position <= closes[inner]:
            return closes[inner]
        after = bisect.bisect_left(separators, position)
        return separators[after] if after < len(separators) else len(self.text)

    def span(self, start: int, after: str = "") -> tuple[int, int]:
        """The span of the value at `start` to redact: the shell word there, up to limit(start),
        its quotes kept (an unclosed quote at its start is skipped); with `after`, only what
        follows the first `after` in it (nothing when it has none: `sudo -u root`)."""
        text, limit = self.text, self.limit(start)
        if start < limit and text[start] in "'\"" and not _WORD.match(text, start, limit):
            start += 1
        word = _WORD.match(text, start, limit)
        end = word.end() if word else start
        if after:
            found = text.find(after, start, end)
            start = end if found < 0 else found + 1
        if end - start >= 2 and text[start] in "'\"" and text[end - 1] == text[start]:
            return start + 1, end - 1
        if start < end and text[start] in "'\"":
            start += 1
        if start < end and text[end - 1] in "'\"":
            end -= 1
        return start, end


def _command_line(text: str) -> str:
    """`text` with command-line credentials (module docstring) replaced. Each pass finds
    names and measures their values without consuming them, so a value that is not a secret
    (`sh -c '...'`) is still searched; every pass is one left-to-right scan."""
    words = _Words(text)
    spans: list[tuple[int, int]] = []
    for pattern, value in ((_OPTION, _option_value), (_USER_OPTION, _user_value), (_ASSIGNMENT, _assigned_value),
                           (_COLON, _colon_value)):
        reach = 0  # a name inside a value already redacted is not measured again: one scan per pass
        for match in pattern.finditer(text):
            if match.start() >= reach and (span := value(words, match)) is not None:
                spans.append(span)
                reach = span[1]
    spans += _program_options(words)
    spans += _cookie_pairs(words)
    return _replaced(text, spans)


def _option_value(words: _Words, match: re.Match[str]) -> tuple[int, int] | None:
    if not _telling(match.group(1), whole_name_counts=True) or _OPENSSL_SOURCE.match(words.text, match.end()):
        return None
    return words.span(match.end())


def _user_value(words: _Words, match: re.Match[str]) -> tuple[int, int] | None:
    return words.span(match.end(), after=":")


def _assigned_value(words: _Words, match: re.Match[str]) -> tuple[int, int] | None:
    return words.span(match.end()) if _telling(match.group(1), whole_name_counts=False) else None


def _telling(name: str, whole_name_counts: bool) -> bool:
    """Whether the option, variable or header `name` says its value is a credential: a telling
    word no harmless word follows, in a name that does not begin with a flag word."""
    words = _NAME_WORDS.split(name.lower())
    if words[0] in _FLAG_WORDS or (not whole_name_counts and words == ["pwd"]):  # pwd: the working directory
        return False
    telling = False
    for index, word in enumerate(words):
        if word in _HARMLESS_WORDS:
            telling = False
        elif word in _TELLING_WORDS or word.endswith(_TELLING_ENDINGS) \
                or (index > 0 and (words[index - 1] + word).endswith(_TELLING_ENDINGS)):
            telling = True
    return telling


def _colon_value(words: _Words, match: re.Match[str]) -> tuple[int, int] | None:
    """A header's value (to the end of its quoted string or line, blanks at its end kept)
    when a blank follows the colon; otherwise one word (`pass:X`)."""
    if not _telling(match.group(1), whole_name_counts=True):
        return None
    if match.group(2) == ":":
        return words.span(match.end())
    value = _HEADER_VALUE.match(words.text, match.end(), words.limit(match.end()))
    end = value.end() if value else match.end()
    return match.end(), len(words.text[match.end():end].rstrip()) + match.end()


def _cookie_pairs(words: _Words) -> list[tuple[int, int]]:
    """The values of a cookie header's later `; NAME=VALUE` pairs, which its value stopped
    short of at the `;` (an argv item `Cookie: a=b; c=X` is no shell text, but may be): each
    one word, so what a shell would run after the `;` stays in the record."""
    spans: list[tuple[int, int]] = []
    position = 0  # a header inside a value already measured is not measured again
    for header in _COOKIE.finditer(words.text):
        if header.start() < position:
            continue
        value = _HEADER_VALUE.match(words.text, header.end(), words.limit(header.end()))
        position = value.end() if value else header.end()
        while pair := _COOKIE_PAIR.match(words.text, position):
            spans.append(pair.span(1))
            position = pair.end()
    return spans


def _program_options(words: _Words) -> list[tuple[int, int]]:
    """Password options of the programs in _PASSWORD_OPTIONS, searched up to the end of each
    command (`;`, `&`, `|`, newline)."""
    text = words.text
    spans: list[tuple[int, int]] = []
    position = 0
    while program := _PROGRAM.search(text, position):
        segment = _SEGMENT_END.search(text, program.end())
        position = segment.start() if segment else len(text)
        name, options, positional = next(entry for entry in _PROGRAMS if entry[0].fullmatch(program.group(1)))
        for option, how in options:
            spans += [words.span(found.end(), after="%" if how == "user%" else "")
                      for found in option.finditer(text, program.end(), position)]
        if positional:
            spans += _positional(words, name.pattern, program.end(), position)
    return spans


def _positional(words: _Words, program: str, start: int, end: int) -> list[tuple[int, int]]:
    """The password given by position: `aws configure set NAME VALUE` (NAME telling) and
    `htpasswd -b[n...] [FILE] USER PASSWORD` (htpasswd(1): -C and -r take a value)."""
    arguments = list(_ARGUMENT.finditer(words.text, start, end))
    if program.startswith("aws"):
        if len(arguments) >= 2 and _telling(arguments[0].group(1), whole_name_counts=True):
            return [words.span(arguments[1].start(1))]
        return []
    flags, values, takes_value = "", [], False  # -C COST and -r ROUNDS take the next word
    for found in arguments:
        if found.group(1).startswith("-"):
            flags += found.group(1)[1:]
            takes_value = found.group(1)[-1] in "Cr"
        elif takes_value:
            takes_value = False
        else:
            values.append(found)
    place = 1 if "n" in flags else 2
    return [words.span(values[place].start(1))] if "b" in flags and len(values) > place else []


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


_masked_words = short_text_cache(maxsize=1024)(_masked)  # an argv joined by NUL (_scrub_list)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    """`text` with each character no store can hold as text replaced by U+FFFD, as the
    daemon reads bytes that do not decode: NUL (PostgreSQL's text and jsonb refuse it: one
    such record stopped its audit store for good) and a lone surrogate (no UTF-8 for it)."""
    if "\x00" in text or not text.isascii():
        return _UNSTORABLE.sub("\ufffd", text)
    return text


class NotPlain(ValueError):
    """A value that is not plain JSON yet (a tuple, set, enum, non-string key, non-finite float),
    or not one every store can take (a member name _storable would change, _integer)."""


class Unrepresentable(ValueError):
    """An event no JSON round trip can make storable: nested deeper than MAX_DEPTH."""


# Deeper than any value the daemon takes from an agent nests (an MCP request's arguments, which
# handlers/http/mcp.py scrubs too: strict_json refuses past orjson's 253 levels), and well inside
# what json's encoder and decoder take (Python's recursion limit): the writer, the stores and
# `audit verify` all read it back.
MAX_DEPTH = 256
# json writes an int's digits with int.__repr__, which refuses more than 4300 of them
# (sys.int_info.default_max_str_digits); `audit verify` reads them back the same way.
_INT_LIMIT = 10 ** 4300


def _integer(value: int) -> int:
    if -_INT_LIMIT < value < _INT_LIMIT:
        return value
    raise NotPlain(f"an integer of {value.bit_length()} bits (json writes at most 4300 digits)")


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a member's name says its value is a secret; NotPlain for a name no store can
    hold (NUL, a lone surrogate): a name is not rewritten, it could then clash with another."""
    if _UNSTORABLE.search(key) is not None:
        raise NotPlain(f"member name {key!r} holds a character no audit store can hold as text")
    return _SECRET_KEY.search(key) is not None


def _scrub_shared(value: SharedSummary) -> SharedSummary:
    """A read-only per-flow summary comes back with every record of its flow: scrubbed once,
    and the scrubbed copy is shared (and read-only) too, so the chain encodes it once."""
    return value.derived("scrubbed", _scrubbed_copy)


def _scrubbed_copy(summary: SharedSummary) -> SharedSummary:
    return SharedSummary(_scrub_dict(summary, 1))


def _scrub_dict(value: dict[Any, Any], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise Unrepresentable(f"nested deeper than {MAX_DEPTH} levels")
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
            out[key] = _storable(item) if len(item) < SHORTEST_SECRET or key in _IDENTIFIER_KEYS else scrub_text(item)
        elif kind is int:
            out[key] = _integer(item)
        elif kind is bool or item is None:
            out[key] = item
        else:
            out[key] = scrub(item, depth + 1)
    return out


def _scrub_list(value: list[Any], depth: int) -> list[Any]:
    """Each item scrubbed; a list of strings (an argv: ["mysql", "-p", ...]) is scrubbed as
    one text, its items joined by NUL (which no secret's pattern crosses), so an option and
    its value in two items are seen together."""
    if depth > MAX_DEPTH:
        raise Unrepresentable(f"nested deeper than {MAX_DEPTH} levels")
    if len(value) > 1 and all(type(item) is str and "\x00" not in item for item in value):
        items = _masked_words("\x00".join(value)).split("\x00")
        if len(items) == len(value):
            return [_storable(item) for item in items]
    return [scrub(item, depth + 1) for item in value]


def scrub(value: Any, depth: int = 0) -> Any:
    """A copy of a plain JSON value with secrets masked (see module docstring), `depth` levels
    below the top of what is scrubbed, its strings made storable (_storable); NotPlain for
    anything a JSON round trip would change or no store could take (a member name holding NUL
    or a lone surrogate, an integer past json's 4300 digits), Unrepresentable for nesting
    deeper than MAX_DEPTH."""
    kind = type(value)
    if kind is dict:
        return _scrub_dict(value, depth)
    if kind is SharedSummary:
        return _scrub_shared(value)
    if kind is str:
        return scrub_text(value)
    if kind is list:
        return _scrub_list(value, depth)
    if kind is int:
        return _integer(value)
    if kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    raise NotPlain(repr(value)[:80])


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as plain JSON with secrets masked. Events nearly always hold plain values,
    so one walk does both; the rest take the JSON round trip of `normalize` first. ValueError
    for an event no store can take as it is, so that it is refused when submitted rather than
    fail the writer's commit (and every commit after it, for a batched sink)."""
    scrubbed: dict[str, Any]
    try:
        try:
            scrubbed = scrub(event)
        except NotPlain:
            scrubbed = scrub(normalize(event))
    except (NotPlain, Unrepresentable) as exc:
        raise ValueError(f"audit event is not representable as JSON: {exc}") from None
    return scrubbed
