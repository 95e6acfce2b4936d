"""Exec, attach and port-forward over SPDY/3.1, as kubectl up to 1.29 (and Debian's 1.20) speaks
them: an HTTP Upgrade to `SPDY/3.1` naming the stream protocol in `X-Stream-Protocol-Version`
(v4.channel.k8s.io, portforward.k8s.io), then SPDY/3 framing
(draft-mbelshe-httpbis-spdy-00: 8-byte frame headers, SYN_STREAM/SYN_REPLY/RST_STREAM/SETTINGS/
PING/GOAWAY/HEADERS/WINDOW_UPDATE control frames, DATA frames with a FIN flag; name/value header
blocks zlib-compressed with the protocol's fixed dictionary, one zlib stream per direction).

The client opens one stream per channel, named by its `streamtype` header (error, stdin, stdout,
stderr, resize); each gets a SYN_REPLY. Once the streams the query asked for are open the command
runs; stdout and stderr end with FIN, and the error stream carries the v4 exit Status (JSON) then
FIN - what the kubelet's remotecommand server does.

Port-forward: per forwarded connection the client opens an error and a data stream (headers
`streamtype`, `port`, `requestID`); every port of a stand-in pod is an echo service: what arrives
on the data stream goes back on it, and when the client ends it (FIN) both streams are ended.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .errors import JSON, bad_request
from .pods import Command, ExecSession
from .wire import Request, Upgrade

PROTOCOL = "v4.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FIN = 0x01
STREAMS_TIMEOUT = 30.0  # the kubelet's wait for the client's streams

# draft-mbelshe-httpbis-spdy-00 section 2.6.10.1: length-prefixed header words, then raw text.
_WORDS = ("options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
          "age allow authorization cache-control connection content-base content-encoding content-language "
          "content-length content-location content-md5 content-range content-type date etag expect expires from "
          "host if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location "
          "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
          "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status").split()
_WORDS_AFTER_STATUS = ("200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin")
_TAIL = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
         "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
         "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
         "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
         "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
         "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
DICTIONARY = b"".join(struct.pack(">I", len(word)) + word.encode()
                      for word in (*_WORDS, *_WORDS_AFTER_STATUS)) + _TAIL.encode()

def _protocol(request: Request, protocol: str) -> list[tuple[str, str]]:
    """The 101's headers when the client offers `protocol`; ApiError 400 otherwise."""
    offered = [p.strip() for p in (request.header("x-stream-protocol-version") or "").split(",")]
    if protocol not in offered:
        raise bad_request(f"this stand-in speaks only {protocol} here over SPDY; the client offered {offered}")
    return [("connection", "Upgrade"), ("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", protocol)]


def upgrade(request: Request, command: Command, wants_stdin: bool) -> Upgrade:
    """The 101 answer naming the stream protocol, and the session that runs `command`."""
    headers = _protocol(request, PROTOCOL)
    expected = {"error"} | {name for name in ("stdout", "stderr") if request.param(name) in ("true", "1")}
    if wants_stdin:
        expected.add("stdin")
    if request.param("tty") in ("true", "1"):
        expected = (expected - {"stderr"}) | {"resize"}

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
        await Session(Framing(reader, writer), expected).run(command, trailing)
    return Upgrade(headers, run)


def port_forward(request: Request) -> Upgrade:
    """The 101 answer for pods/portforward and the echo service behind every port."""
    headers = _protocol(request, PORT_FORWARD)

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
        await PortForward(Framing(reader, writer)).run(trailing)
    return Upgrade(headers, run)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def _data(stream: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">II", stream & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


def _headers(block: bytes) -> dict[str, str]:
    """A decompressed SPDY/3 name/value block (section 2.6.10): count, then length-prefixed pairs."""
    (count,), offset, headers = struct.unpack_from(">I", block), 4, {}
    for _ in range(count):
        (size,) = struct.unpack_from(">I", block, offset)
        name = block[offset + 4:offset + 4 + size].decode()
        offset += 4 + size
        (size,) = struct.unpack_from(">I", block, offset)
        headers[name] = block[offset + 4:offset + 4 + size].decode()
        offset += 4 + size
    return headers


@dataclass(frozen=True)
class Opened:
    """The client opened `stream` (SYN_STREAM, already answered with SYN_REPLY)."""

    stream: int
    headers: dict[str, str]


@dataclass(frozen=True)
class Data:
    stream: int
    payload: bytes
    fin: bool


@dataclass(frozen=True)
class Reset:
    stream: int


class Framing:
    """SPDY/3 frames of one connection: both zlib header contexts, SYN_REPLY to every new stream,
    PING echoed, HEADERS and WINDOW_UPDATE and SETTINGS absorbed; the rest as events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                        zdict=DICTIONARY)

    async def write(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def data(self, stream: int, payload: bytes, fin: bool = False) -> None:
        await self.write(_data(stream, FIN if fin else 0, payload))

    def _reply(self, stream: int) -> bytes:
        block = self.deflate.compress(struct.pack(">I", 0)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        return _control(SYN_REPLY, 0, struct.pack(">I", stream) + block)

    async def _control_frame(self, kind: int, payload: bytes) -> Opened | Reset | None:
        if kind == SYN_STREAM:
            stream = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = _headers(self.inflate.decompress(payload[10:]))
            await self.write(self._reply(stream))
            return Opened(stream, headers)
        if kind == HEADERS:
            self.inflate.decompress(payload[4:])
        elif kind == PING:
            await self.write(_control(PING, 0, payload))
        elif kind == RST_STREAM:
            return Reset(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
        return None

    async def events(self, trailing: bytes) -> AsyncIterator[Opened | Data | Reset]:
        """The client's streams, data and resets until it closes the connection or sends GOAWAY."""
        buffer = bytearray(trailing)
        while True:
            while len(buffer) >= 8 and len(buffer) >= 8 + (length := int.from_bytes(buffer[5:8], "big")):
                head, payload = bytes(buffer[:8]), bytes(buffer[8:8 + length])
                del buffer[:8 + length]
                if not head[0] & 0x80:
                    yield Data(struct.unpack(">I", head[:4])[0] & 0x7FFFFFFF, payload, bool(head[4] & FIN))
                    continue
                kind = struct.unpack(">H", head[2:4])[0]
                if kind == GOAWAY:
                    return
                if (event := await self._control_frame(kind, payload)) is not None:
                    yield event
            data = await self.reader.read(65536)
            if not data:
                return
            buffer += data


class Session(ExecSession):
    """One exec or attach: the streams the query asked for, then the command."""

    def __init__(self, framing: Framing, expected: set[str]) -> None:
        super().__init__("stdin" in expected)
        self.framing, self.expected = framing, expected
        self.streams: dict[str, int] = {}
        self.ready = asyncio.Event()

    async def send(self, channel: str, data: bytes, fin: bool = False) -> None:
        if channel in self.streams and (data or fin):
            await self.framing.data(self.streams[channel], data, fin)

    async def receive(self, trailing: bytes) -> None:
        async for event in self.framing.events(trailing):
            if isinstance(event, Opened):
                self.streams[event.headers.get("streamtype", "")] = event.stream
                if self.expected <= self.streams.keys():
                    self.ready.set()
            elif event.stream == self.streams.get("stdin"):
                if isinstance(event, Data) and event.payload:
                    self.stdin.put_nowait(event.payload)
                if isinstance(event, Reset) or event.fin:
                    self.stdin.put_nowait(None)
        self.stdin.put_nowait(None)

    async def opened(self) -> None:
        await asyncio.wait_for(self.ready.wait(), STREAMS_TIMEOUT)

    async def finish(self, status: JSON) -> None:
        await self.send("stdout", b"", fin=True)
        await self.send("stderr", b"", fin=True)
        await self.send("error", json.dumps(status).encode(), fin=True)


class PortForward:
    """Every forwarded connection is echoed; its error stream ends, empty, with its data stream."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.errors: dict[str, int] = {}  # requestID -> error stream
        self.data: dict[int, str] = {}  # data stream -> requestID

    async def run(self, trailing: bytes) -> None:
        async for event in self.framing.events(trailing):
            if isinstance(event, Opened):
                request_id = event.headers.get("requestid", "")
                if event.headers.get("streamtype") == "error":
                    self.errors[request_id] = event.stream
                else:
                    self.data[event.stream] = request_id
            elif isinstance(event, Data) and event.stream in self.data:
                if event.payload:
                    await self.framing.data(event.stream, event.payload)
                if event.fin:
                    await self._end(event.stream)

    async def _end(self, stream: int) -> None:
        await self.framing.data(stream, b"", fin=True)
        error = self.errors.pop(self.data.pop(stream), None)
        if error is not None:
            await self.framing.data(error, b"", fin=True)
