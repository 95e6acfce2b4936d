"""One socket as an asyncio Protocol: awaitable reads while a handler logs in, then every
received chunk handed straight to a callback.

Streams (StreamReader/StreamWriter) cost a buffer copy, a future and a task switch per
chunk, plus a drain() per write; on a proxy's hot path that overhead is most of the work.
A Pipe gives the handler the chunk uvloop read, in the callback that read it, and
reports write pressure so the handler can stop reading the other side.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Sequence

LINGER_SECONDS = 10.0  # how long a closing pipe may keep flushing to a peer that does not read


class Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.ended = False
        self.writable = True  # False while the transport's write buffer is above its high-water mark
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._feed: Callable[[bytes], None] | None = None
        self._on_end: Callable[[], None] | None = None
        self._on_writable: Callable[[], None] | None = None

    # ---- opening ----------------------------------------------------------------------

    @classmethod
    async def accept(cls, sock: socket.socket) -> Pipe:
        pipe = cls()
        await asyncio.get_running_loop().connect_accepted_socket(lambda: pipe, sock)
        return pipe

    @classmethod
    async def connect(cls, host: str, port: int) -> Pipe:
        pipe = cls()
        await asyncio.get_running_loop().create_connection(lambda: pipe, host, port)
        return pipe

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> None:
        """Upgrade to TLS. Bytes already received would have arrived in clear text before the
        handshake; they are refused rather than taken as part of the protected stream."""
        if self._buffer:
            raise ConnectionError("peer sent data before the TLS handshake")
        assert self.transport is not None
        self.transport = await asyncio.get_running_loop().start_tls(self.transport, self, context,
                                                                    server_hostname=server_name)

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        feed = self._feed
        if feed is not None:
            feed(data)
        else:
            self._buffer += data
            self._wake()

    def eof_received(self) -> bool:
        self._end()
        # Half-closed: what is still owed to the peer (an error, a result) can go out. TLS
        # cannot stay half-open (asyncio closes it whatever we answer, with a warning).
        return self.transport is None or self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.writable = True

    def pause_writing(self) -> None:
        self.writable = False
        if self._on_writable is not None:
            self._on_writable()

    def resume_writing(self) -> None:
        self.writable = True
        if self._on_writable is not None:
            self._on_writable()

    # ---- reading before attach() --------------------------------------------------------

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" once the peer has ended."""
        await self._readable(1)
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data

    async def read_exactly(self, size: int) -> bytes:
        await self._readable(size)
        if len(self._buffer) < size:
            raise ConnectionError(f"connection ended {size - len(self._buffer)} bytes short of a message")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _readable(self, size: int) -> None:
        while len(self._buffer) < size and not self.ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ---- after attach() -----------------------------------------------------------------

    def attach(self, feed: Callable[[bytes], None], on_end: Callable[[], None],
               on_writable: Callable[[], None]) -> bytes:
        """From now on hand every chunk to `feed` and report the end to `on_end`; returns what
        was read but not yet taken (the caller checks `ended` once it has handled that)."""
        self._feed, self._on_end, self._on_writable = feed, on_end, on_writable
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def pause(self) -> None:
        if self.transport is not None and not self.ended and self.transport.is_reading():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.ended and not self.transport.is_reading():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, pieces: Sequence[bytes | memoryview]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(pieces)

    def write_eof(self) -> None:
        """Half-close: the peer reads the end of data, and may go on sending."""
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    async def flush(self, timeout: float = LINGER_SECONDS) -> None:
        """Wait (a bounded time) until what was written has left for the kernel."""
        deadline = time.monotonic() + timeout
        while (self.transport is not None and not self.transport.is_closing()
               and self.transport.get_write_buffer_size() and time.monotonic() < deadline):
            await asyncio.sleep(0.005)

    def close(self) -> None:
        """Flush what is buffered, then close; abort if the peer has not taken it in time."""
        if self.transport is None:
            return
        transport = self.transport
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._wake()
        if self._on_end is not None:
            self._on_end()
