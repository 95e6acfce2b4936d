"""Pipe, the Protocol the postgres handler's sockets are, over loopback sockets."""

import asyncio
import socket
import ssl

import pytest

from interceptor.handlers.pipe import Pipe


async def _pair() -> tuple[Pipe, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return await Pipe.accept(ours), theirs


def test_reads_before_attach_then_chunks_go_to_the_callback_in_order():
    async def run():
        pipe, peer = await _pair()
        peer.sendall(b"hello world")
        assert await pipe.read_exactly(5) == b"hello"
        peer.sendall(b"!")
        await asyncio.sleep(0.05)
        seen: list[bytes] = []
        ended: list[bool] = []
        rest = pipe.attach(seen.append, lambda: ended.append(True), lambda: None)
        assert rest == b" world!"
        peer.sendall(b"next")
        peer.shutdown(socket.SHUT_WR)
        for _ in range(100):
            if ended:
                break
            await asyncio.sleep(0.01)
        assert b"".join(seen) == b"next" and ended == [True]
        pipe.write(b"still owed")  # half-closed: the answer can still go out
        await pipe.flush()
        pipe.close()
        peer.settimeout(5)
        assert peer.recv(100) == b"still owed"
        peer.close()

    asyncio.run(run())


def test_a_short_message_at_the_end_is_an_error_not_a_hang():
    async def run():
        pipe, peer = await _pair()
        peer.sendall(b"abc")
        peer.close()
        with pytest.raises(ConnectionError, match="2 bytes short"):
            await pipe.read_exactly(5)
        assert await pipe.read(10) == b"abc"
        assert await pipe.read(10) == b""
        pipe.abort()

    asyncio.run(run())


def test_bytes_sent_before_the_tls_handshake_are_refused():
    """A server (or someone in its path) that sends more than its one-byte TLS answer must
    not get those clear-text bytes read as if they came through TLS."""
    async def run():
        pipe, peer = await _pair()
        peer.sendall(b"S" + b"Zinjected")
        assert await pipe.read_exactly(1) == b"S"
        with pytest.raises(ConnectionError, match="before the TLS handshake"):
            await pipe.start_tls(ssl.create_default_context(), "db.example")
        pipe.abort()
        peer.close()

    asyncio.run(run())
