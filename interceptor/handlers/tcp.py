"""Plain TCP: the connection-level decision was made at accept; forward bytes both ways
with backpressure and report one event per connection."""

from __future__ import annotations

import asyncio
import socket
import time

from interceptor.flow import FlowContext
from interceptor.handlers.base import Services, Traffic

CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, traffic: Traffic, direction: str) -> int:
    """Copy until EOF, then half-close; returns the bytes copied."""
    total = 0
    try:
        while data := await reader.read(CHUNK):
            total += len(data)
            setattr(traffic, direction, total)
            writer.write(data)
            await writer.drain()  # backpressure: stop reading while the peer is slow
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
    return total


class TcpHandler:
    protocol = "tcp"

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        started = time.monotonic()
        up = down = 0
        error = None
        client_reader, client_writer = await asyncio.open_connection(sock=client)
        try:
            dst = flow.original_dst
            server_reader, server_writer = await asyncio.open_connection(str(dst.ip), dst.port)
        except OSError as exc:
            error = f"upstream {flow.original_dst}: {exc.strerror or exc}"
            client_writer.transport.abort()
        else:
            up, down = await asyncio.gather(_pump(client_reader, server_writer, services.traffic, "up"),
                                            _pump(server_reader, client_writer, services.traffic, "down"))
            server_writer.close()
            client_writer.close()
        await services.audit.write(services.event(
            flow, "connection", verdict="allow" if error is None else "error", rule=flow.connection_rule,
            operation={"protocol": "tcp", "dst": str(flow.original_dst)},
            outcome={"bytes_up": up, "bytes_down": down, "duration_ms": round((time.monotonic() - started) * 1000, 3),
                     "error": error}))


HANDLER = TcpHandler()
