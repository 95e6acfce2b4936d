"""Exec over WebSocket (RFC 6455) with the Kubernetes channel subprotocols v4/v5.channel.k8s.io:
each binary message is one channel byte and data - 0 stdin, 1 stdout, 2 stderr, 3 the error
channel carrying the exit Status (JSON), 4 resize; v5 adds 255, the client's "close channel N".
The server closes the WebSocket after writing the Status (apimachinery's wsstream)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from .errors import JSON, ApiError, bad_request
from .pods import Command, ExecSession
from .wire import Request, Upgrade

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255


def choose_protocol(request: Request) -> str:
    offered = [p.strip() for p in (request.header("sec-websocket-protocol") or "").split(",")]
    chosen = next((p for p in PROTOCOLS if p in offered), None)
    if chosen is None:
        raise bad_request(f"this stand-in speaks only {', '.join(PROTOCOLS)} for exec; the client offered "
                          f"{offered}")
    return chosen


def upgrade(request: Request, command: Command, wants_stdin: bool) -> Upgrade:
    """The 101 answer (RFC 6455 section 4.2.2) and the session that runs `command`."""
    key = request.header("sec-websocket-key")
    if key is None or request.header("sec-websocket-version") != "13":
        raise ApiError(400, "BadRequest", "a WebSocket upgrade needs Sec-WebSocket-Key and version 13")
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    protocol = choose_protocol(request)
    headers = [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept),
               ("sec-websocket-protocol", protocol)]

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trailing: bytes) -> None:
        await Session(reader, writer, wants_stdin).run(command, trailing)
    return Upgrade(headers, run)


class Session(ExecSession):
    CHANNELS = {"stdout": STDOUT, "stderr": STDERR}

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wants_stdin: bool) -> None:
        super().__init__(wants_stdin)
        self.reader, self.writer = reader, writer
        self.protocol = ServerProtocol(state=State.OPEN, max_size=16 * 1024 * 1024)

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.writer.write(data)
        await self.writer.drain()

    async def send(self, channel: str, data: bytes) -> None:
        await self._send(self.CHANNELS[channel], data)

    async def _send(self, channel: int, data: bytes) -> None:
        if data and self.protocol.state is State.OPEN:
            self.protocol.send_binary(bytes([channel]) + data)
            await self.flush()

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.BINARY, Opcode.TEXT) and frame.data:
            channel, data = frame.data[0], bytes(frame.data[1:])
            if channel == STDIN:
                self.stdin.put_nowait(data)
            elif channel == CLOSE and data[:1] == bytes([STDIN]):
                self.stdin.put_nowait(None)
        elif frame.opcode is Opcode.CLOSE:
            self.stdin.put_nowait(None)

    async def receive(self, trailing: bytes) -> None:
        data = trailing
        while True:
            if data:
                self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame):
                    self._frame(event)
            await self.flush()
            if self.protocol.state is State.CLOSED:
                break
            data = await self.reader.read(65536)
            if not data:
                self.protocol.receive_eof()
                self.stdin.put_nowait(None)
                break

    async def finish(self, status: JSON) -> None:
        await self._send(ERROR, json.dumps(status).encode())
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            await self.flush()
