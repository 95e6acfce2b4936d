"""Port forwarding through the ssh handler (RFC 4254 section 7), always through the SERVER's
connection: the enforcer host never dials a forwarded destination itself.

- `direct-tcpip` (section 7.2: `ssh -L`, and `ssh -D`, whose SOCKS requests arrive as
  direct-tcpip): judged as SshRequest("forward", forward="local", target="host:port"); when
  allowed, the server opens the same channel and the two are bridged.
- `tcpip-forward` (section 7.1: `ssh -R`): judged as SshRequest("forward", forward="remote",
  target="address:port" where the server is to listen); when allowed the server listens, and
  each connection it accepts becomes a `forwarded-tcpip` channel to the agent, bridged. The
  connection is told when the listener stops (the agent cancelled it, or the connection
  ended), so it can bound how many listen at once.

A refusal answers the channel open (OPEN_ADMINISTRATIVELY_PROHIBITED, the reason as its
description) or the global request (failure); the Gate records it. Each bridged connection
ends with an "ssh-end" record: bytes each way and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from interceptor.errors import InterceptorError
from interceptor.handlers.base import Traffic
from interceptor.handlers.ssh.gate import Authorized, Gate
from interceptor.operations import SshRequest

Spawn = Callable[[Coroutine[Any, Any, None]], None]  # runs a coroutine the connection waits for at its end


def target(host: str, port: int) -> str:
    """"host:port", an IPv6 address in brackets ("[::1]:22")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Half(asyncssh.SSHTCPSession[bytes]):
    """One end of a bridge: what its channel receives is written to the other end's channel
    (kept until that one is open), EOF passes on, and a full window on one side pauses
    reading on the other."""

    def __init__(self, bridge: Bridge, upward: bool) -> None:
        self.bridge = bridge
        self.upward = upward  # True: this end is the agent's, its data goes to the server
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.pending: list[bytes] = []  # received before the other end was open
        self.eof = False

    @property
    def other(self) -> _Half:
        return self.bridge.down_half if self.upward else self.bridge.up_half

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        other = self.other
        for data in other.pending:
            chan.write(data)
        other.pending.clear()
        if other.eof:
            chan.write_eof()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.bridge.count(self.upward, len(data))
        chan = self.other.chan
        if chan is None:
            self.pending.append(data)
        else:
            chan.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        chan = self.other.chan
        if chan is not None:
            chan.write_eof()
        return True  # half-open: the other direction goes on

    def pause_writing(self) -> None:
        if self.other.chan is not None:
            self.other.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.other.chan is not None:
            self.other.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.lost(self, exc)


class Bridge:
    """A forwarded connection between an agent channel and a server channel, recorded once
    when either end closes (the other is closed with it). `on_close` runs then, once."""

    def __init__(self, gate: Gate, operation: SshRequest, authorized: Authorized, traffic: Traffic, spawn: Spawn,
                 on_close: Callable[[], None] = lambda: None) -> None:
        self.gate, self.operation, self.authorized = gate, operation, authorized
        self.traffic, self.spawn, self.on_close = traffic, spawn, on_close
        self.up_half = _Half(self, True)
        self.down_half = _Half(self, False)
        self.bytes_up = self.bytes_down = 0
        self.started = time.monotonic()
        self.error: str | None = None
        self.done = False

    def count(self, upward: bool, size: int) -> None:
        if upward:
            self.bytes_up += size
            self.traffic.up += size
        else:
            self.bytes_down += size
            self.traffic.down += size

    def lost(self, half: _Half, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        other = half.other.chan
        if other is not None:
            other.close()
        self.end()

    def end(self, error: str | None = None) -> None:
        """Record the bridge's end (once): bytes each way, seconds, the error if any."""
        if self.done:
            return
        self.done = True
        self.error = self.error or error
        self.on_close()
        outcome: dict[str, object] = {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                                      "seconds": round(time.monotonic() - self.started, 3)}
        if self.error is not None:
            outcome["error"] = self.error
        self.spawn(self.gate.finished(self.authorized, self.operation, outcome))


async def local(gate: Gate, server: asyncssh.SSHClientConnection, traffic: Traffic, spawn: Spawn,
                on_close: Callable[[], None], dest_host: str, dest_port: int, orig_host: str,
                orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
    """The agent's end of an allowed direct-tcpip channel, its server end already open.
    ChannelOpenError when refused (the reason said) or when the server cannot open it."""
    operation = SshRequest("forward", forward="local", target=target(dest_host, dest_port))
    try:
        authorized = await gate.authorize(operation)
    except InterceptorError as exc:
        on_close()
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"interceptor: {exc}") from None
    bridge = Bridge(gate, operation, authorized, traffic, spawn, on_close)
    try:
        await server.create_connection(lambda: bridge.down_half, dest_host, dest_port, orig_host, orig_port)
    except asyncssh.ChannelOpenError as exc:
        bridge.end(f"the server could not open {operation.target}: {exc.reason}")
        raise asyncssh.ChannelOpenError(exc.code, f"the server could not open {operation.target}: {exc.reason}") \
            from None
    except (asyncssh.Error, OSError) as exc:
        bridge.end(f"the server connection failed: {type(exc).__name__}")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the server connection failed") from None
    return bridge.up_half


class _Listener(asyncssh.SSHListener):
    """The server's listener of a remote forward; `on_close` runs once when it is closed
    (asyncssh closes it on cancel-tcpip-forward and at the connection's end)."""

    def __init__(self, listener: asyncssh.SSHListener, on_close: Callable[[], None]) -> None:
        super().__init__()
        self.listener = listener
        self.on_close: Callable[[], None] | None = on_close

    def get_port(self) -> int:
        return self.listener.get_port()

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        self.listener.close()

    async def wait_closed(self) -> None:
        await self.listener.wait_closed()


async def remote(gate: Gate, server: asyncssh.SSHClientConnection, agent: asyncssh.SSHServerConnection,
                 traffic: Traffic, spawn: Spawn, on_close: Callable[[], None], listen_host: str,
                 listen_port: int) -> asyncssh.SSHListener | bool:
    """The server's listener for an allowed tcpip-forward, False when refused or when the
    server will not listen there (`on_close` runs then, or when the listener closes). Each
    connection it accepts is opened to the agent as a forwarded-tcpip channel and bridged."""
    operation = SshRequest("forward", forward="remote", target=target(listen_host, listen_port))
    try:
        authorized = await gate.authorize(operation)
    except InterceptorError:
        on_close()
        return False

    async def accept(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
        bridge = Bridge(gate, operation, authorized, traffic, spawn)
        try:
            await agent.create_connection(lambda: bridge.up_half, listen_host, listen_port, orig_host, orig_port)
        except (asyncssh.Error, OSError) as exc:
            bridge.end(f"the agent did not take the forwarded connection: {type(exc).__name__}")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the agent did not take the connection") \
                from None
        return bridge.down_half

    try:
        return _Listener(await server.create_server(accept, listen_host, listen_port, encoding=None), on_close)
    except (asyncssh.ChannelListenError, asyncssh.Error, OSError) as exc:
        on_close()
        spawn(gate.finished(authorized, operation, {"error": f"the server would not listen there: "
                                                             f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"}))
        return False

