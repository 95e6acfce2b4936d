"""A small HTTP/1.1 server on asyncio and h11 (sans-IO, RFC 9112) for the test stand-ins.

It gives handlers what a Kubernetes API server needs and plain frameworks hide: whole requests
in, three response shapes out - a complete `Response`, a `Streaming` one (chunked, RFC 9112
section 7.1, written as the handler yields, for watch and `logs -f`) and an `Upgrade` (101
Switching Protocols, RFC 9110 section 15.2.2, after which the handler owns the raw stream: WebSocket
or SPDY). Keep-alive is h11's; TLS is asyncio's, with ALPN offering http/1.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from http import HTTPStatus
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """One request: header names lower-cased, the path still percent-encoded as sent."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    peer: str

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Streaming:
    """A chunked response; `chunks` is read until it ends or the client goes away."""

    status: int
    chunks: AsyncGenerator[bytes, None]
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


# Called after the 101 is written with the connection's reader, writer and any bytes the client
# sent after the request (already read from the socket).
UpgradeRunner = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Upgrade:
    headers: list[tuple[str, str]]
    run: UpgradeRunner


Reply = Response | Streaming | Upgrade
Handler = Callable[[Request], Awaitable[Reply]]


class _ClientGone(Exception):
    """The client closed the connection or sent something h11 refuses."""


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _ClientGone(str(exc)) from exc
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(65536)
        if not data:
            raise _ClientGone("eof")
        conn.receive_data(data)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        peer: str) -> Request | None:
    """The next whole request, None when the client closed; answers `Expect: 100-continue` first."""
    event = await _next_event(conn, reader)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise _ClientGone(f"unexpected {type(event).__name__}")
    body = bytearray()
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        await writer.drain()
    while not isinstance(part := await _next_event(conn, reader), h11.EndOfMessage):
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise _ClientGone("body too large")
    target = event.target.decode("latin-1")
    split = urlsplit(target)
    return Request(event.method.decode("ascii"), target, split.path,
                   parse_qs(split.query, keep_blank_values=True),
                   [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in event.headers],
                   bytes(body), peer)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _head(content_type: str, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("content-type", content_type), ("cache-control", "no-cache, private"), *extra]


async def _stream(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  reply: Streaming) -> None:
    writer.write(conn.send(h11.Response(status_code=reply.status, reason=_phrase(reply.status),
                                        headers=_head(reply.content_type, reply.headers))))
    await writer.drain()
    gone = asyncio.ensure_future(reader.read(1))
    try:
        async for chunk in reply.chunks:
            if gone.done():
                raise _ClientGone("client left during a stream")
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
    finally:
        gone.cancel()
        await reply.chunks.aclose()


async def _answer(conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  request: Request, reply: Reply) -> bool:
    """Write `reply`; False when the connection is over (upgraded or closing)."""
    if isinstance(reply, Upgrade):
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=reply.headers)))
        await writer.drain()
        trailing, _ = conn.trailing_data
        await reply.run(reader, writer, bytes(trailing))
        return False
    if isinstance(reply, Streaming):
        await _stream(conn, reader, writer, reply)
    else:
        headers = [*_head(reply.content_type, reply.headers), ("content-length", str(len(reply.body)))]
        head = h11.Response(status_code=reply.status, reason=_phrase(reply.status), headers=headers)
        writer.write(conn.send(head))
        writer.write(conn.send(h11.Data(data=reply.body)) + conn.send(h11.EndOfMessage()))
        await writer.drain()
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Answer requests on one connection until either side closes it."""
    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if peername else "?"
    conn = h11.Connection(h11.SERVER)
    try:
        while (request := await _read_request(conn, reader, writer, peer)) is not None:
            if not await _answer(conn, reader, writer, request, await handler(request)):
                break
    except (_ClientGone, ConnectionError, ssl.SSLError, h11.LocalProtocolError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await writer.wait_closed()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for `cert` (PEM chain) and `key`; ALPN offers http/1.1 only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), IPv6 when `host` is."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


async def serve(sock: socket.socket, handler: Handler, context: ssl.SSLContext | None) -> asyncio.Server:
    """Start serving `handler` on the listening `sock` (TLS when `context` is given)."""
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, handler)
    return await asyncio.start_server(on_connect, sock=sock, ssl=context, limit=1024 * 1024)
