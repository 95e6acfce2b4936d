"""PostgreSQL's framing, sans-IO: whole messages out of the bytes received so far.

A regular message is a type byte, an Int32 length that counts itself, then the body; a
startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) has no type
byte (docs, 55.7). Lengths are checked from the header, before anything waits for the body,
so a hostile length never makes the enforcer buffer. Where bytes are still missing the answer
is None ("feed more"), never a wait; a malformed or oversized length is a ProtocolViolation
naming whose message it was.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from interceptor.errors import ProtocolViolation

MAX_STARTUP = 10_000  # PostgreSQL's own limit for a startup packet
MAX_MESSAGE = (1 << 30) - 1  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT

HEADER = struct.Struct("!BI")  # message type as a number, length (a negative one reads as too large)
_STARTUP_LENGTH = struct.Struct("!i")

Frame = tuple[int, int, int]  # (message type, start, end): the message is data[start:end], header included


def invalid_length(what: str, length: int) -> ProtocolViolation:
    """The error for a length below 4 (it counts itself) or above PostgreSQL's maximum."""
    return ProtocolViolation(f"{what} has invalid length {length}")


def too_long(what: str, length: int, limit: int) -> ProtocolViolation:
    """The error for a length the receiver's `limit` (bytes) does not admit."""
    return ProtocolViolation(f"{what} of {length} bytes exceeds the limit of {limit}")


def split_startup(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(packet body, rest) once a whole startup-phase packet is buffered, None while it is
    not. ProtocolViolation for a length under 8 (no protocol code) or over MAX_STARTUP."""
    if len(buffer) < 4:
        return None
    (length,) = _STARTUP_LENGTH.unpack_from(buffer, 0)
    if length < 4:
        raise invalid_length("startup packet", length)
    if length > MAX_STARTUP:
        raise too_long("startup packet", length, MAX_STARTUP)
    if length < 8:
        raise ProtocolViolation(f"startup packet of {length} bytes has no protocol code")
    if len(buffer) < length:
        return None
    return buffer[4:length], buffer[length:]


class FrameReader:
    """One direction's regular messages, frame by frame: `feed` the bytes as they arrive,
    then `next` until it answers None.

    `whose` names the sender in errors ("client", "server", "upstream"); `limit` bounds a
    message's length (bytes, counting the length field) unless its type is `streamable`:
    those are stepped over as they arrive, even in pieces, so a huge DataRow or CopyData
    never has to be whole in memory. `data` holds what is not yet consumed, `view` the same
    as a memoryview (slices of it copy nothing).
    """

    __slots__ = ("whose", "limit", "data", "view", "pos", "skip", "start")

    def __init__(self, whose: str, limit: int = MAX_MESSAGE) -> None:
        self.whose = whose
        self.limit = limit
        self.data = b""
        self.view = memoryview(b"")
        self.pos = 0  # where the next frame starts
        self.skip = 0  # bytes of a streamable frame still to come
        self.start = 0  # where the frame last returned by next() begins

    def feed(self, data: bytes) -> None:
        """Add received bytes; what was consumed is dropped (offsets restart at 0)."""
        rest = self.data[self.pos:]
        self.data = rest + data if rest else bytes(data)
        self.view = memoryview(self.data)
        self.pos = 0

    def next(self, streamable: frozenset[int] = frozenset()) -> Frame | None:
        """(type, start, end) of the next whole message that is not `streamable`, or None:
        feed more bytes. ProtocolViolation for a length below 4 or above MAX_MESSAGE, or
        above `limit` for a type that is not streamable."""
        data, pos, skip = self.data, self.pos, self.skip
        size = len(data)
        while True:
            if skip:
                if size - pos < skip:
                    self.pos, self.skip = size, skip - (size - pos)
                    return None
                pos, skip = pos + skip, 0
            if size - pos < 5:
                self.pos, self.skip = pos, 0
                return None
            kind, length = HEADER.unpack_from(data, pos)
            if length < 4 or length > MAX_MESSAGE:
                self.pos, self.skip = pos, 0
                raise invalid_length(f"{self.whose} message {chr(kind)!r}", length)
            end = pos + 1 + length
            if kind in streamable:
                skip = end - pos
                continue
            if length > self.limit:
                self.pos, self.skip = pos, 0
                raise too_long(f"{self.whose} message {chr(kind)!r}", length, self.limit)
            if end > size:
                self.pos, self.skip = pos, 0
                return None
            self.start, self.pos, self.skip = pos, end, 0
            return kind, pos, end

    def at_boundary(self) -> bool:
        """No streamable message is part-way through."""
        return self.skip == 0

    def rest(self) -> bytes:
        """The bytes after the last message returned (a partial one, or more to come)."""
        return self.data[self.pos:]


class FrameRelay(FrameReader):
    """A FrameReader whose bytes are forwarded as they are walked: messages pass unchanged
    unless one is replaced, and the output is slices of the received bytes (joined by the
    transport, never copied here). Forwarding stops where the walk stopped: `take` hands
    over everything up to there, a streamable message's pieces included."""

    __slots__ = ("out", "pieces")

    def __init__(self, whose: str, limit: int = MAX_MESSAGE) -> None:
        super().__init__(whose, limit)
        self.out = 0  # forwarded (or replaced) up to here
        self.pieces: list[bytes | memoryview] = []

    def feed(self, data: bytes) -> None:
        """As FrameReader.feed (written out: a chunk's first call), and forwarding restarts at 0."""
        rest = self.data[self.pos:]
        self.data = rest + data if rest else bytes(data)
        self.view = memoryview(self.data)
        self.pos = self.out = 0

    def replace(self, start: int, end: int, new: Sequence[bytes | memoryview]) -> None:
        """Forward `new` in place of the message at [start, end)."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
        self.pieces.extend(new)
        self.out = end

    def stop(self, start: int) -> None:
        """Forward up to `start` and keep the rest for later (held, or awaiting a lookup)."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
        self.out = self.pos = start

    def cut(self, start: int) -> list[bytes | memoryview]:
        """What is ready before `start` (a message already read), leaving that message for later."""
        if start > self.out:
            self.pieces.append(self.view[self.out:start])
            self.out = start
        pieces, self.pieces = self.pieces, []
        return pieces

    def take(self) -> list[bytes | memoryview]:
        """Everything walked so far that is not yet forwarded."""
        if self.pos > self.out:
            self.pieces.append(self.view[self.out:self.pos])
        self.out = self.pos
        pieces, self.pieces = self.pieces, []
        return pieces
