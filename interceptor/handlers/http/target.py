"""The request-target of an HTTP/1.1 request, read once and only when every server reads it
the same way (RFC 9112 section 3.2, RFC 3986 sections 2, 3 and 6).

The policy judges the path percent-decoded once and the query parameters decoded; the
upstream gets the target as sent. So a target is refused (ClientProtocolError, answered 400)
whenever a server could map it to another resource than the one judged:

- dot segments, literal or percent-encoded (`/a/../b`, `/a/%2e%2E/b`): a server that
  normalises (RFC 3986 section 5.2.4) would read another path;
- empty segments (`/a//b`): servers that merge slashes would read `/a/b` (a single trailing
  slash, `/api/`, is kept: it is one path, and rules see it as written);
- `%2F` and `%5C` (an encoded `/` or `\\`) and any backslash: some servers split on them
  after decoding, others do not;
- `%` not followed by two hex digits, `%00` and any encoded control character, and a decoded
  path that still holds an escape (`%252e`: a server that decodes twice reads `.`);
- decoded bytes that are not UTF-8, and raw bytes outside printable ASCII;
- a fragment (`#`), never sent by a conforming client;
- `;` in the path: servlet containers strip `;params` from each segment
  (`/admin;x=/../`), Go servers do not; and `;` in the query: Go (1.17+, so the Kubernetes
  API server) drops such a pair, where the policy would have judged it. An encoded `%3B`
  is plain data for all of them and is accepted;
- the authority-form (CONNECT) and the asterisk-form except for OPTIONS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interceptor.errors import ClientProtocolError
from interceptor.operations import Pairs

_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"(?i)(https?)://")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_REFUSED_ESCAPES = {0x2F: "an encoded '/' (%2F)", 0x5C: "an encoded '\\' (%5C)"}


@dataclass(frozen=True, slots=True)
class Target:
    """A request-target as the policy reads it: `path` percent-decoded once (or `*` for the
    asterisk-form), `query` the decoded parameters in order, `authority` the absolute-form's
    host[:port] (None for the origin-form), `origin` the path and query as sent."""

    path: str
    query: Pairs
    origin: str
    authority: str | None = None


def parse_target(method: str, target: str) -> Target:
    """The request-target `target` of a `method` request. Raises ClientProtocolError (400)
    for every shape the module docstring lists. RFC 9112 section 3.2."""
    if not _PRINTABLE.fullmatch(target):
        raise ClientProtocolError("the request-target holds a control character, a space or a non-ASCII byte")
    if "#" in target:
        raise ClientProtocolError("the request-target holds a fragment ('#'), which clients never send")
    if target == "*":
        if method != "OPTIONS":
            raise ClientProtocolError(f"the asterisk-form target '*' is only for OPTIONS, not {method}")
        return Target("*", (), "*")
    authority = None
    origin = target
    scheme = _SCHEME.match(target)
    if scheme is not None:
        rest = target[scheme.end():]
        end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority = _authority(rest[:end], scheme.group(1).lower())
        origin = rest[end:] or "/"
        if origin.startswith("?"):
            origin = "/" + origin
    elif not target.startswith("/"):
        raise ClientProtocolError(f"the request-target must start with '/' (origin-form), not {target[:64]!r}"
                                  + (" (CONNECT is not supported)" if method == "CONNECT" else ""))
    raw_path, _, raw_query = origin.partition("?")
    return Target(decode_path(raw_path), parse_query(raw_query), origin, authority)


def _authority(authority: str, scheme: str) -> str:
    """The authority of an absolute-form target, without a default port; no userinfo."""
    if not authority:
        raise ClientProtocolError("the absolute-form target has no authority")
    if "@" in authority:
        raise ClientProtocolError("the absolute-form target carries userinfo ('@'), which is refused")
    host, port = split_host(authority)
    if port == _DEFAULT_PORTS[scheme]:
        return host
    return authority


def split_host(authority: str) -> tuple[str, str | None]:
    """`authority` (host[:port], IPv6 in brackets) as its host and port (None when absent)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ClientProtocolError(f"malformed host {authority[:64]!r}")
        host, rest = authority[:end + 1], authority[end + 1:]
        if rest and not rest.startswith(":"):
            raise ClientProtocolError(f"malformed host {authority[:64]!r}")
        return host, rest[1:] if rest else None
    host, colon, port = authority.partition(":")
    return host, port if colon else None


def same_host(one: str, other: str) -> bool:
    """Whether two host[:port] values name the same host: compared case-insensitively,
    without their ports and a trailing dot."""
    return split_host(one)[0].lower().rstrip(".") == split_host(other)[0].lower().rstrip(".")


def decode_path(raw: str) -> str:
    """The path `raw` (as sent) percent-decoded once, refused (ClientProtocolError) when a
    server could read it differently. RFC 3986 sections 2.1, 3.3 and 5.2.4."""
    if "\\" in raw:
        raise ClientProtocolError("the path holds a backslash, which some servers read as '/'")
    if ";" in raw:
        raise ClientProtocolError("the path holds ';' (path parameters), which servers strip or keep differently")
    segments = raw.split("/")[1:]
    for index, segment in enumerate(segments):
        if not segment and index < len(segments) - 1:
            raise ClientProtocolError("the path holds an empty segment ('//'), which some servers merge")
    path = _decode(raw, "path")
    for escape in _ESCAPE.finditer(raw):
        refused = _REFUSED_ESCAPES.get(int(escape.group(1), 16))
        if refused:
            raise ClientProtocolError(f"the path holds {refused}, which servers split on or not")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ClientProtocolError("the path holds a dot segment ('.' or '..', maybe percent-encoded)")
    if _ESCAPE.search(path):
        raise ClientProtocolError("the decoded path still holds a percent escape (double encoding)")
    return path


def parse_query(raw: str) -> Pairs:
    """The query `raw` as (name, value) pairs in order, duplicates kept: split on `&` then on
    the first `=`, `+` read as a space, %XX decoded as UTF-8; empty parts skipped (as Go's
    net/url and Python's urllib do). Raises ClientProtocolError for `;`, a bad escape or
    invalid UTF-8. WHATWG URL application/x-www-form-urlencoded parsing."""
    if ";" in raw:
        raise ClientProtocolError("the query holds ';', which servers split on or drop differently")
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_decode(name.replace("+", " "), "query"), _decode(value.replace("+", " "), "query")))
    return tuple(pairs)


def _decode(raw: str, where: str) -> str:
    """`raw` with its %XX escapes decoded once, as UTF-8; no control characters."""
    text = raw  # without '%', ASCII is its own UTF-8: nothing to decode
    if "%" in raw or not raw.isascii():
        if _BAD_PERCENT.search(raw):
            raise ClientProtocolError(f"the {where} holds '%' not followed by two hex digits")
        data = _ESCAPE.sub(lambda escape: chr(int(escape.group(1), 16)), raw).encode("latin-1")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientProtocolError(f"the {where} decodes to bytes that are not UTF-8") from None
    if _CONTROL.search(text):
        raise ClientProtocolError(f"the {where} holds an encoded control character (such as %00)")
    return text
