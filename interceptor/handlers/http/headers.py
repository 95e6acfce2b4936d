"""The request head as the agent sent it, checked byte by byte before h11 reads it, and the
header sets the session forwards each way.

h11 (0.16) tolerates shapes that let two parsers disagree on where a request ends: bare LF
line endings, obs-fold continuation lines (it joins them), `Content-Length: 5, 5` and
repeated equal Content-Lengths, control characters other than NUL in values. A front end
that accepts what its upstream reads differently is the request-smuggling class (RFC 9112
section 11.2), so `read_head` refuses all of them, and more: Content-Length together with
Transfer-Encoding, any Transfer-Encoding but `chunked` (and any from an HTTP/1.0 client), a
missing or repeated Host. The body is re-framed by h11 towards the upstream either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interceptor.errors import ClientProtocolError
from interceptor.operations import Pairs

MAX_REQUEST_LINE = 8 * 1024  # bytes of the request line, CRLF excluded: longer is 414
MAX_HEAD = 64 * 1024  # bytes of the request line and header section: longer is 431

_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/([0-9])\.([0-9])")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Every header line well formed (what _field accepts, each line with its CRLF): one C pass
# for the common head; a head it does not match goes line by line for the exact error.
_LINE = rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)\r\n"  # the value's tail: rstrip
_GOOD_LINE = re.compile(_LINE)
_GOOD_LINES = re.compile(rb"(?:" + _LINE + rb")*")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,=-]*)(:[0-9]*)?")

# Hop-by-hop headers (RFC 9110 section 7.6.1, plus Proxy-Connection and Keep-Alive of old
# clients); the framing headers too: h11 writes each side's framing itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "content-length", "expect"})
# Headers a server may take as the caller's identity, address or credentials: the
# resource's credential replaces them (RFC 9110 section 11.6.2, RFC 7239, Kubernetes
# impersonation and front-proxy authentication X-Remote-*, auth proxies' X-Auth-Request-*);
# and headers that make some servers read another method or path than the one judged
# (X-HTTP-Method-Override and kin, IIS/Symfony X-Original-URL and X-Rewrite-URL).
IDENTITY = frozenset({"authorization", "proxy-authorization", "forwarded", "remote-user", "x-real-ip",
                      "x-client-ip", "true-client-ip", "impersonate-user", "impersonate-group", "impersonate-uid",
                      "x-http-method-override", "x-http-method", "x-method-override", "x-original-url",
                      "x-rewrite-url"})
IDENTITY_PREFIXES = ("impersonate-extra-", "x-remote-", "x-forwarded-", "x-auth-request-", "x-authenticated-")
UPGRADES = frozenset({"websocket", "spdy/3.1"})  # the protocols a request may switch to


class HeadError(ClientProtocolError):
    """A request head refused before it is read: `status` 400, or 414 (request line too
    long), 431 (header section too large), 505 (an HTTP version other than 1.0 and 1.1)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Head:
    """A request head that passed `read_head`: header names lower-cased, values decoded as
    Latin-1 (RFC 9110 section 5.5: obs-text is opaque), in order."""

    method: str
    target: str
    http_version: str  # "1.0" or "1.1"
    headers: Pairs
    chunked: bool
    content_length: int | None

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def head_end(buffer: bytes | bytearray, scanned: int = 0) -> int:
    """The length of the request head at the start of `buffer` (through its blank line), 0
    while it is incomplete; `scanned`: how much of `buffer` an earlier call already checked
    (so a head sent a byte at a time costs linear time). Raises HeadError as soon as the
    bytes so far cannot start a valid head: a bare LF or CR, a request line over
    MAX_REQUEST_LINE (414), a head over MAX_HEAD (431)."""
    start = max(0, scanned - 3)
    end = buffer.find(b"\r\n\r\n", start, MAX_HEAD + 4)
    seen = len(buffer) if end < 0 else end + 2
    lf = buffer.find(b"\n", start, seen)
    while lf >= 0:
        if lf == 0 or buffer[lf - 1] != 0x0D:
            raise HeadError("a line of the request head ends in a bare LF (lines end in CRLF)")
        lf = buffer.find(b"\n", lf + 1, seen)
    cr = buffer.find(b"\r", start, seen)
    while cr >= 0:
        if cr + 1 < len(buffer) and buffer[cr + 1] != 0x0A:
            raise HeadError("the request head holds a bare CR")
        cr = buffer.find(b"\r", cr + 1, seen)
    window = MAX_REQUEST_LINE + 2  # the request line and its CRLF: checked once, by the call that has them all
    if scanned < window <= len(buffer) and buffer.find(b"\r\n", 0, window) < 0:
        raise HeadError(f"the request line is longer than {MAX_REQUEST_LINE} bytes", 414)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HeadError(f"the request head is larger than {MAX_HEAD} bytes", 431)
        return 0
    return end + 4


def read_head(raw: bytes) -> Head:
    """The head `raw` (as `head_end` delimited it, final CRLF CRLF included), refused with
    HeadError for every shape of the module docstring. RFC 9112 sections 2 to 6."""
    first = raw.find(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(raw, 0, first)
    if request_line is None:
        raise HeadError(f"malformed request line {raw[:first][:64]!r}")
    method, target, major, minor = request_line.groups()
    version = f"{major.decode()}.{minor.decode()}"
    if version not in ("1.0", "1.1"):
        raise HeadError(f"HTTP/{version} is not supported (HTTP/1.0 and HTTP/1.1 are)", 505)
    if _GOOD_LINES.fullmatch(raw, first + 2, len(raw) - 2):
        headers = tuple((name.lower().decode(), value.rstrip(b" \t").decode("latin-1"))
                        for name, value in _GOOD_LINE.findall(raw, first + 2, len(raw) - 2))
    else:
        headers = tuple(_field(line) for line in raw[first + 2:-4].split(b"\r\n"))
    return _framed(method.decode(), target.decode("latin-1"), version, headers)


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HeadError("obsolete line folding (a header line starting with a space or tab) is refused")
    field = _FIELD.fullmatch(line)
    if field is None:
        raise HeadError(f"malformed header line {line[:64]!r} (a name is a token, then ':')")
    name, value = field.groups()
    if _BAD_VALUE.search(value):
        raise HeadError(f"the {name.decode()!r} header holds a control character")
    return name.decode().lower(), value.decode("latin-1")


def _framed(method: str, target: str, http_version: str, headers: Pairs) -> Head:
    """The Head of these parts with its body framing read: one Content-Length of digits, or
    Transfer-Encoding exactly `chunked` (HTTP/1.1 only), never both; one Host (required in
    HTTP/1.1)."""
    lengths: list[str] = []
    codings: list[str] = []
    hosts: list[str] = []
    for key, value in headers:
        if key == "content-length":
            lengths.append(value)
        elif key == "transfer-encoding":
            codings.append(value)
        elif key == "host":
            hosts.append(value)
    if len(lengths) > 1:
        raise HeadError("more than one Content-Length")
    if lengths and codings:
        raise HeadError("both Content-Length and Transfer-Encoding")
    if lengths and not _DIGITS.fullmatch(lengths[0]):
        raise HeadError(f"Content-Length {lengths[0][:32]!r} is not a number")
    if codings and (len(codings) > 1 or codings[0].lower() != "chunked"):
        raise HeadError(f"Transfer-Encoding {', '.join(codings)[:64]!r} (only 'chunked' is accepted)")
    if codings and http_version == "1.0":
        raise HeadError("Transfer-Encoding in an HTTP/1.0 request")
    if len(hosts) > 1 or (not hosts and http_version == "1.1"):
        raise HeadError("an HTTP/1.1 request needs exactly one Host header" if hosts or http_version == "1.1"
                        else "more than one Host header")
    if hosts and not _HOST.fullmatch(hosts[0]):
        raise HeadError(f"malformed Host {hosts[0][:64]!r}")
    return Head(method, target, http_version, headers, bool(codings), int(lengths[0]) if lengths else None)


def connection_tokens(headers: Pairs) -> set[str]:
    """The options of the Connection headers, lower-cased (RFC 9110 section 7.6.1)."""
    return {token.strip().lower() for key, value in headers if key == "connection" for token in value.split(",")}


def upgrade_protocol(headers: Pairs) -> str | None:
    """The protocol a request asks to switch to (lower-cased: `websocket`, `spdy/3.1`) when it
    asks for exactly one of UPGRADES with `Connection: upgrade`; else None."""
    offered = [token.strip().lower() for key, value in headers if key == "upgrade" for token in value.split(",")]
    if len(offered) == 1 and offered[0] in UPGRADES and "upgrade" in connection_tokens(headers):
        return offered[0]
    return None


# A WebSocket subprotocol the Kubernetes API server takes as a bearer token
# (k8s.io/apiserver pkg/authentication/request/websocket).
WEBSOCKET_TOKEN = "base64url.bearer.authorization.k8s.io."


def forwarded_request(headers: Pairs, credentials: frozenset[str] = frozenset()) -> Pairs:
    """The request headers an upstream may see: without hop-by-hop headers (and those the
    Connection header names), framing, Expect, credential, identity and override headers,
    the `credentials` the enforcer sends itself, and bearer tokens offered as WebSocket
    subprotocols. Names are compared with `_` read as `-`, as CGI/WSGI servers read them."""
    named = connection_tokens(headers)
    kept: list[tuple[str, str]] = []
    for key, value in headers:
        name = key.replace("_", "-")
        if name in HOP_BY_HOP or name in named or name in IDENTITY or name in credentials \
                or name.startswith(IDENTITY_PREFIXES):
            continue
        if name == "sec-websocket-protocol":
            offered = [token.strip() for token in value.split(",")]
            value = ", ".join(token for token in offered if token and not token.startswith(WEBSOCKET_TOKEN))
            if not value:
                continue
        kept.append((key, value))
    return tuple(kept)


# Headers that describe the body as the upstream sent it: a masked body would carry the
# digest of its unmasked values (a guess of a masked value could be checked against it).
DIGESTS = frozenset({"content-md5", "digest", "content-digest", "repr-digest", "etag"})


def forwarded_response(headers: Pairs, *, keep_length: bool, filtered: bool = False) -> Pairs:
    """The response headers the agent may see: without hop-by-hop and framing headers (h11
    frames the body for the agent); Content-Length kept when `keep_length`; without DIGESTS
    when the body is `filtered`."""
    named = connection_tokens(headers)
    return tuple((key, value) for key, value in headers
                 if (key not in HOP_BY_HOP or (keep_length and key == "content-length")) and key not in named
                 and not (filtered and key in DIGESTS))
