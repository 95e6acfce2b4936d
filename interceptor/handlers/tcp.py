"""Plain TCP: the connection-level decision was made at accept; the session relays bytes
both ways, passes each half-close on, and the flow is recorded once, when it ends."""

from __future__ import annotations

import socket
import time

from interceptor.enforcer.driver import Driver
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.commands import Close, Command, HoldOutcome, Open, Record, Send, Shutdown, Side, StreamId
from interceptor.handlers.pipe import Pipe

DONE = "both sides closed"


class TcpSession:
    """Sans-IO relay: one stream per direction of input, so the Open of the upstream holds
    the client's first bytes until the server is there."""

    def __init__(self) -> None:
        self.error: str | None = None  # why the upstream could not be reached
        self._ended: set[Side] = set()

    def start(self) -> list[Command]:
        return [Open(stream=0)]

    def input_stream(self, side: Side) -> StreamId | None:
        return 0 if side is Side.CLIENT else 1

    def receive(self, side: Side, data: bytes) -> list[Command]:
        return [Send(side.other, [data], stream=0 if side is Side.CLIENT else 1)]

    def ended(self, side: Side) -> list[Command]:
        self._ended.add(side)
        if len(self._ended) == 2:
            return [Close(DONE)]
        return [Shutdown(side.other)]

    def opened(self, stream: StreamId, error: str | None) -> list[Command]:
        if error is None:
            return []
        self.error = error
        return [Close(error)]

    def waiting(self, stream: StreamId, request_id: str | None, timeout_seconds: int) -> list[Command]:
        raise TypeError("a tcp session holds no operations")

    def approval(self, stream: StreamId, outcome: HoldOutcome) -> list[Command]:
        raise TypeError("a tcp session holds no operations")

    def abandoned(self, stream: StreamId, request_id: str | None, reason: str) -> Record | None:
        return None


class TcpHandler:
    protocol = "tcp"

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        started = time.monotonic()
        session = TcpSession()
        pipe = await Pipe.accept(client)
        driver = Driver(flow, services, session, pipe)
        try:
            await driver.run(session.start())
        except (ConnectionError, OSError):
            pass
        finally:
            driver.close()
            if session.error is not None:
                pipe.abort()
            else:
                pipe.close()
        traffic = services.traffic
        await services.audit.write(services.event(
            flow, "connection", verdict="allow" if session.error is None else "error", rule=flow.connection_rule,
            operation={"protocol": "tcp", "dst": str(flow.original_dst)},
            outcome={"bytes_up": traffic.up, "bytes_down": traffic.down,
                     "duration_ms": round((time.monotonic() - started) * 1000, 3), "error": session.error}))


HANDLER = TcpHandler()
