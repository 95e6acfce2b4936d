"""PostgreSQL wire protocol v3: the few message bodies the enforcer reads, and the
messages it writes. Pure functions over bytes; no I/O. Framing (where a message ends, and
the bounds on its length) is frames.py's; MAX_STARTUP and `split_startup` are re-exported
here for the startup phase.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from interceptor.errors import ProtocolViolation
from interceptor.handlers.postgres.frames import MAX_STARTUP as MAX_STARTUP
from interceptor.handlers.postgres.frames import split_startup as split_startup

T = TypeVar("T")

INT16 = struct.Struct("!h")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_CANCEL_KEY = 256  # protocol 3.2: the secret key is at most 256 bytes

FRONTEND_TYPES = frozenset(b"BCcdDEfFHPpQSX")


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """A StartupMessage: protocol version and its parameters, in the client's order."""

    version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SpecialRequest:
    """SSLRequest or GSSENCRequest: the client asks for an encrypted channel."""

    code: int


@dataclass(frozen=True, slots=True)
class CancelPacket:
    pid: int
    secret: bytes


def parse_startup(body: bytes) -> StartupPacket | SpecialRequest | CancelPacket:
    """Classify a startup-phase packet body (after its length)."""
    (code,) = INT32.unpack_from(body, 0)
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        if len(body) != 4:
            raise ProtocolViolation("SSL/GSSENC request with trailing bytes")
        return SpecialRequest(code)
    if code == CANCEL_REQUEST:
        secret = body[8:]
        if len(body) < 12 or len(secret) > MAX_CANCEL_KEY:
            raise ProtocolViolation(f"cancel request with a {len(secret)}-byte key (4 to {MAX_CANCEL_KEY})")
        (pid,) = INT32.unpack_from(body, 4)
        return CancelPacket(pid, bytes(secret))
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: only 3.x is spoken")
    return StartupPacket(code, _startup_params(body[4:]))


def _startup_params(data: bytes) -> dict[str, str]:
    if not data.endswith(b"\0"):
        raise ProtocolViolation("startup parameters are not NUL-terminated")
    parts = data[:-1].split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolViolation("startup parameter without a value")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        name, value = text(parts[i], "startup parameter name"), text(parts[i + 1], "startup parameter value")
        if not name:
            raise ProtocolViolation("empty startup parameter name")
        params[name] = value
    return params


def text(data: bytes | memoryview, what: str, encoding: str = "utf-8") -> str:
    """Decode (in the client encoding's Python codec) or raise a ProtocolViolation naming
    the field."""
    try:
        return bytes(data).decode(encoding)
    except UnicodeDecodeError as exc:
        name = "UTF-8" if encoding == "utf-8" else encoding
        raise ProtocolViolation(f"{what} is not valid {name} (byte {exc.start})") from None


class Reader:
    """Sequential reads of a message body, failing with ProtocolViolation when it is short."""

    __slots__ = ("data", "pos", "what", "encoding")

    def __init__(self, data: bytes | memoryview, what: str, encoding: str = "utf-8") -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what
        self.encoding = encoding

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation(f"{self.what}: unterminated string")
        value = text(self.data[self.pos:end], self.what, self.encoding)
        self.pos = end + 1
        return value

    def int16(self) -> int:
        return self._unpack(INT16)

    def int32(self) -> int:
        return self._unpack(INT32)

    def uint32(self) -> int:
        return self._unpack(UINT32)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolViolation(f"{self.what}: truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, count: int) -> None:
        if count < 0 or self.pos + count > len(self.data):
            raise ProtocolViolation(f"{self.what}: field of {count} bytes overruns the message")
        self.pos += count

    def _unpack(self, fmt: struct.Struct) -> int:
        if self.pos + fmt.size > len(self.data):
            raise ProtocolViolation(f"{self.what}: truncated")
        value: int = fmt.unpack_from(self.data, self.pos)[0]
        self.pos += fmt.size
        return value


@dataclass(frozen=True, slots=True)
class Parse:
    statement: str
    query: str


@dataclass(slots=True)
class Bind:  # not frozen: read at every execution, and a frozen dataclass sets its fields one call each
    portal: str
    statement: str
    parameters: int
    result_formats: tuple[int, ...]


def read_query(body: bytes | memoryview, encoding: str = "utf-8") -> str:
    """A Query's text, decoded as the server will read it (`encoding`: a Python codec)."""
    data = bytes(body)
    if not data.endswith(b"\0"):
        raise ProtocolViolation("Query: unterminated string")
    return text(data[:-1], "Query", encoding)


def read_parse(body: bytes | memoryview, encoding: str = "utf-8") -> Parse:
    reader = Reader(body, "Parse", encoding)
    return Parse(reader.cstring(), reader.cstring())


def _cstring_at(data: bytes, pos: int, what: str, encoding: str) -> tuple[str, int]:
    """The NUL-terminated string at `pos` of a message body and where the next field starts."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation(f"{what}: unterminated string")
    return (text(data[pos:end], what, encoding) if end > pos else ""), end + 1


def _overruns(count: int) -> ProtocolViolation:
    return ProtocolViolation(f"Bind: field of {count} bytes overruns the message")


def read_bind(body: bytes | memoryview, encoding: str = "utf-8") -> Bind:
    """A Bind's names, parameter count and result formats; the parameters' values are stepped
    over (read in one pass: a Bind comes with every execution of a prepared statement)."""
    data = bytes(body)
    size = len(data)
    portal, pos = _cstring_at(data, 0, "Bind", encoding)
    statement, pos = _cstring_at(data, pos, "Bind", encoding)
    try:
        (count,) = INT16.unpack_from(data, pos)
        if count < 0 or pos + 2 + 2 * count > size:
            raise _overruns(2 * count)
        pos += 2 + 2 * count
        (parameters,) = INT16.unpack_from(data, pos)
        pos += 2
        for _ in range(parameters):
            (length,) = INT32.unpack_from(data, pos)
            pos += 4
            if length > 0:
                if pos + length > size:
                    raise _overruns(length)
                pos += length
        (count,) = INT16.unpack_from(data, pos)
        formats: tuple[int, ...] = struct.unpack_from(f"!{count}h", data, pos + 2) if count > 0 else ()
    except struct.error:
        raise ProtocolViolation("Bind: truncated") from None
    return Bind(portal, statement, parameters, formats)


def read_target(body: bytes | memoryview, what: str, encoding: str = "utf-8") -> tuple[str, str]:
    """Describe / Close: ('S' or 'P', name)."""
    data = bytes(body)
    if not data:
        raise ProtocolViolation(f"{what}: truncated")
    kind = chr(data[0])
    if kind not in "SP":
        raise ProtocolViolation(f"{what}: target type {kind!r} is neither 'S' nor 'P'")
    return kind, _cstring_at(data, 1, what, encoding)[0]


def read_execute(body: bytes | memoryview, encoding: str = "utf-8") -> str:
    """An Execute's portal name (its row limit is the server's business)."""
    return _cstring_at(bytes(body), 0, "Execute", encoding)[0]


def read_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    """ParameterStatus: (name, value); the server sends both in the client encoding, and
    the names and values the enforcer follows are ASCII."""
    reader = Reader(body, "ParameterStatus", "latin-1")
    return reader.cstring(), reader.cstring()


def read_fields(body: bytes | memoryview) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their code letter."""
    fields: dict[str, str] = {}
    for part in bytes(body).split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    format: int


def read_row_description(body: bytes | memoryview) -> tuple[Column, ...]:
    reader = Reader(body, "RowDescription")
    columns = []
    for _ in range(reader.int16()):
        name = reader.cstring()
        table_oid = reader.uint32()
        attnum = reader.int16()
        type_oid = reader.uint32()
        reader.skip(6)  # type size, type modifier
        columns.append(Column(name, table_oid, attnum, type_oid, reader.int16()))
    return tuple(columns)


class BodyMemo(Generic[T]):
    """`read(body)` kept by the body's bytes, for message bodies that repeat (a prepared
    statement's RowDescription and CommandComplete come back with every execution): looked up
    without a copy (a read-only memoryview hashes and compares as its bytes), kept as a copy
    (never a view of a relay's buffer); bodies over `longest` bytes are read every time, and
    what is kept is dropped whole at `limit` entries."""

    __slots__ = ("read", "limit", "longest", "_kept")

    def __init__(self, read: Callable[[bytes | memoryview], T], limit: int, longest: int | None = None) -> None:
        self.read = read
        self.limit = limit
        self.longest = longest
        self._kept: dict[bytes | memoryview, T] = {}

    def __call__(self, body: bytes | memoryview) -> T:
        found = self._kept.get(body)
        if found is None:
            found = self.read(body)
            if self.longest is None or len(body) <= self.longest:
                if len(self._kept) >= self.limit:
                    self._kept.clear()
                self._kept[bytes(body)] = found
        return found


def _command_complete(body: bytes | memoryview) -> tuple[str, int | None]:
    tag = text(body[:-1], "CommandComplete")
    return tag, command_rows(tag)


# A CommandComplete's tag and the rows it reports (`command_rows`), each body read once; a body
# over 64 bytes (no tag the server sends is that long) is read every time, never kept.
read_command_complete = BodyMemo(_command_complete, 1024, longest=64)


def command_rows(tag: str) -> int | None:
    """Rows a CommandComplete tag reports ('SELECT 3', 'INSERT 0 1', 'COPY 7'), None if none."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else None


# ---- building messages -------------------------------------------------------------


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + INT32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\0"


def error_response(code: str, message_text: str, *, severity: str = "ERROR", detail: str = "",
                   hint: str = "", notice: bool = False) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(code), b"M" + cstr(message_text)]
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return message(b"N" if notice else b"E", b"".join(fields) + b"\0")


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def authentication_ok() -> bytes:
    return message(b"R", INT32.pack(0))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(b"K", INT32.pack(pid) + secret)


def negotiate_protocol_version(minor: int, unrecognized: list[str]) -> bytes:
    body = INT32.pack(minor) + INT32.pack(len(unrecognized)) + b"".join(cstr(name) for name in unrecognized)
    return message(b"v", body)


def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = INT32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return INT32.pack(len(body) + 4) + body


def special_request(code: int) -> bytes:
    return INT32.pack(8) + INT32.pack(code)


def cancel_request(pid: int, secret: bytes) -> bytes:
    body = INT32.pack(CANCEL_REQUEST) + INT32.pack(pid) + secret
    return INT32.pack(len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def parse(statement: str, sql: str) -> bytes:
    return message(b"P", cstr(statement) + cstr(sql) + INT16.pack(0))


def terminate() -> bytes:
    return message(b"X")
