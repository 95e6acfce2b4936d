"""The one I/O loop of every protocol: carries out the commands a sans-IO session emits.

Each chunk a socket delivers goes through the session in the callback that read it
(`Pipe.data_received`), and the commands that come out are carried out at once, every write
for a peer in one call. A command that must wait — a Hold for approval, a protocol Await
(a catalog read), an Open of the upstream, a Record in strict audit until it is durable —
stalls only the later commands of its own stream; other streams go on. While a stream that is
a side's input stream (`Session.input_stream`) waits, what that side sends is kept in order
for after the wait, and reading from it pauses once that passes BACKLOG_BYTES. A side also
stops being read while the peer it is relayed to does not take bytes (backpressure).

Strict audit: a Record's stream releases nothing after it before the record is durable; the
result bytes queued before it for the client, up to HOLD_BACK_BYTES, wait with it and leave
in one write once it is.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass

from interceptor.approvals.broker import DISCONNECTED, PendingRequest
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.commands import (
    Await, Awaits, Close, Command, Hold, HoldOutcome, Open, Record, Send, Session, Shutdown, Side, StreamId,
)
from interceptor.handlers.pipe import Pipe

HOLD_BACK_BYTES = 64 * 1024  # strict audit: a result up to this size waits whole for its record
BACKLOG_BYTES = 256 * 1024  # read on during a wait up to this much, then pause that side
CANCELLED = "the client cancelled the operation"  # why a held operation's request is withdrawn on a cancel

Wait = asyncio.Future[list[Command] | None]  # a task's follow-up commands, or a record's durability
Pieces = list[bytes | memoryview]


@dataclass(slots=True)
class _Held:
    """An operation waiting on the approval broker."""

    pending: PendingRequest | None = None  # None while its request is being opened
    cancelled: bool = False  # the client cancelled while the request was being opened


class Driver:
    """Runs one flow's session between the agent's socket and the upstream's."""

    def __init__(self, flow: FlowContext, services: Services, session: Session, client: Pipe,
                 server: Pipe | None = None, awaits: Awaits | None = None) -> None:
        self.flow = flow
        self.services = services
        self.session = session
        self.client = client
        self.server = server
        self.awaits = awaits
        self.records = 0  # audit records submitted
        self.closed_because: str | None = None  # the reason of the Close that ended the flow, if one did
        self._capture = services.audit.capture  # session bytes for pcap export
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inputs = {side: session.input_stream(side) for side in Side}
        self._waits: dict[StreamId, Wait] = {}
        self._queued: dict[StreamId, deque[Command]] = {}
        self._backlog: dict[Side, deque[bytes]] = {Side.CLIENT: deque(), Side.SERVER: deque()}
        self._backlog_bytes = {Side.CLIENT: 0, Side.SERVER: 0}
        self._held: dict[StreamId, _Held] = {}

    # ---- running --------------------------------------------------------------------

    async def run(self, start: list[Command] | None = None, client_rest: bytes = b"",
                  server_rest: bytes = b"") -> None:
        """Serve until the flow ends; raises what broke it. `start`: the session's first
        commands; `client_rest`/`server_rest`: bytes read from each side before the driver
        took over (after the startup and the login)."""
        pending = {Side.CLIENT: client_rest + self._attach(Side.CLIENT, self.client)}
        if self.server is not None:
            pending[Side.SERVER] = server_rest + self._attach(Side.SERVER, self.server)
        self._carry(start or [])
        for side, data in pending.items():
            if data:
                self._received(side, data)
        for side, pipe in ((Side.CLIENT, self.client), (Side.SERVER, self.server)):
            if pipe is not None and pipe.ended:
                self._peer_ended(side)
        await self._ended

    def _attach(self, side: Side, pipe: Pipe) -> bytes:
        return pipe.attach(functools.partial(self._received, side), functools.partial(self._peer_ended, side),
                           self._reading)

    def close(self) -> None:
        """Stop every wait of the flow (a held operation is withdrawn and recorded as never run)
        and abort the upstream; the agent's socket is the handler's to close."""
        for wait in self._waits.values():
            if isinstance(wait, asyncio.Task):  # a Record's durability future is the sink's
                wait.cancel()
        if self.server is not None:
            self.server.abort()

    async def cancel_holds(self) -> bool:
        """The client cancelled (PostgreSQL CancelRequest): True when that ends a held
        operation (its request is withdrawn now, or as soon as it is opened); False when
        nothing is held or a decision came first (the caller relays the cancel upstream)."""
        ended = False
        for held in list(self._held.values()):
            if held.pending is None:
                held.cancelled = ended = True
            elif await held.pending.withdraw(CANCELLED) is not None:
                ended = True
        return ended

    # ---- input ----------------------------------------------------------------------

    def _received(self, side: Side, data: bytes, replayed: bool = False) -> None:
        """Hand `data` (b"": the side's end) to the session, or keep it, in order, while the
        side's input stream waits; counted as traffic when it arrives (not when `replayed`).
        The callback every chunk read goes through: kept flat."""
        if not replayed:
            if side is Side.CLIENT:
                self.services.traffic.up += len(data)
            else:
                self.services.traffic.down += len(data)
        if self._ended.done():
            return
        if self._waits and self._inputs[side] in self._waits:
            self._backlog[side].append(data)
            self._backlog_bytes[side] += len(data)
            if self._backlog_bytes[side] > BACKLOG_BYTES:
                self._reading()
            return
        try:
            self._carry(self.session.receive(side, data) if data else self.session.ended(side))
        except Exception as exc:  # noqa: BLE001 - ends this flow with the reason; the daemon goes on
            self._end(exc)

    def _replay(self, stream: StreamId) -> None:
        """A wait is over: what its input side sent meanwhile goes through now."""
        for side, backlog in self._backlog.items():
            if self._inputs[side] != stream:
                continue
            while backlog and stream not in self._waits and not self._ended.done():
                data = backlog.popleft()
                self._backlog_bytes[side] -= len(data)
                self._received(side, data, replayed=True)
        self._reading()

    def _peer_ended(self, side: Side) -> None:
        """A peer closed its sending direction: the session hears it after the bytes it sent
        before. An agent that leaves while an operation of its waits for approval ends the
        flow at once: the request is withdrawn and recorded as never run (close())."""
        if side is Side.CLIENT and self._held and self._inputs[side] in self._waits:
            self._end(None)
            return
        self._received(side, b"")

    # ---- commands -------------------------------------------------------------------

    def _carry(self, commands: list[Command], urgent: bool = False) -> None:
        """Carry out `commands` in order, every write for a peer in one call; one that must
        wait stalls the rest of its stream. The loop every chunk goes through: kept flat."""
        to_client: Pieces = []
        to_server: Pieces = []
        client_stream: StreamId | None = None  # the stream of the client-bound pieces so far
        mixed = False  # they come from more than one stream
        waits = self._waits
        for command in commands:
            stream = command.stream
            if waits and stream in waits and not urgent:
                self._queued.setdefault(stream, deque()).append(command)
                continue
            if isinstance(command, Send):
                if command.to is Side.CLIENT:
                    to_client.extend(command.data)
                    if client_stream is None:
                        client_stream = stream
                    elif client_stream != stream:
                        mixed = True
                else:
                    to_server.extend(command.data)
                if self._capture:
                    self._captured(command)
                continue
            if isinstance(command, Record):
                durable = self._record(command)
                if durable is None:
                    continue
                if client_stream == stream and not mixed and sum(map(len, to_client)) <= HOLD_BACK_BYTES:
                    # the result leaves in one write, once its record is durable
                    self._queued.setdefault(stream, deque()).appendleft(Send(Side.CLIENT, to_client, stream))
                    to_client, client_stream, mixed = [], None, False
                self._write(to_client, to_server)
                to_client, to_server, client_stream, mixed = [], [], None, False
                self._wait(stream, durable)
                continue
            self._write(to_client, to_server)
            to_client, to_server, client_stream, mixed = [], [], None, False
            self._other(command)
            if self._ended.done():  # a Close: nothing after it is carried out
                return
        self._write(to_client, to_server)

    def _captured(self, command: Send) -> None:
        """What the client saw (masked), and what it sent, for pcap export."""
        self.services.audit.write_session_bytes(
            self.flow.flow_id, "down" if command.to is Side.CLIENT else "up", b"".join(command.data))

    def _other(self, command: Command) -> None:
        if isinstance(command, Close):
            self.closed_because = command.reason
            self._end(None)
        elif isinstance(command, Shutdown):
            pipe = self.client if command.to is Side.CLIENT else self.server
            if pipe is not None:
                pipe.write_eof()
        elif isinstance(command, Hold):
            held = self._held[command.stream] = _Held()  # a cancel from now on finds it
            self._wait(command.stream, self._hold(command, held))
        elif isinstance(command, Open):
            self._wait(command.stream, self._open(command))
        elif isinstance(command, Await):
            if self.awaits is None:
                raise TypeError(f"{type(command).__name__}: this handler carries out no awaits")
            self._wait(command.stream, self.awaits(command))

    def _write(self, to_client: Pieces, to_server: Pieces) -> None:
        if to_server and self.server is not None:
            self.server.writelines(to_server)
        if to_client:
            self.client.writelines(to_client)

    def _record(self, command: Record) -> Awaitable[None] | None:
        self.records += 1
        return self.services.audit.submit(self.services.event(
            self.flow, command.kind, command.decision, operation=command.operation, outcome=command.outcome))

    # ---- waits ----------------------------------------------------------------------

    def _wait(self, stream: StreamId, wait: Awaitable[list[Command] | None]) -> None:
        future: Wait = asyncio.ensure_future(wait)
        self._waits[stream] = future
        future.add_done_callback(lambda done: self._resume(stream, done))
        self._reading()

    def _resume(self, stream: StreamId, done: Wait) -> None:
        self._waits.pop(stream, None)
        if done.cancelled() or self._ended.done():
            return
        error = done.exception()
        if error is not None:
            self._end(error)
            return
        queued = self._queued.pop(stream, deque())
        try:
            self._carry([*(done.result() or []), *queued])
        except Exception as exc:  # noqa: BLE001 - as in _received
            self._end(exc)
            return
        self._replay(stream)

    async def _open(self, command: Open) -> list[Command]:
        dst = self.flow.original_dst
        try:
            self.server = await Pipe.connect(str(dst.ip), dst.port)
        except OSError as exc:
            return self.session.opened(command.stream, f"upstream {dst}: {exc.strerror or exc}")
        rest = self._attach(Side.SERVER, self.server)
        commands = self.session.opened(command.stream, None)
        if rest:  # what the server sent before the driver took over (a greeting) is counted too
            self.services.traffic.down += len(rest)
            commands += self.session.receive(Side.SERVER, rest)
        if self.server.ended:
            commands += self.session.ended(Side.SERVER)
        return commands

    async def _hold(self, command: Hold, held: _Held) -> list[Command]:
        """Wait for the broker's outcome, then resume the session. Cancelled (the flow
        closing), the broker withdraws the request itself and the operation is recorded as
        never run."""
        stream, broker = command.stream, self.services.approvals
        try:
            if broker is None:
                return self.session.approval(stream, HoldOutcome(False, None, "no approval broker is configured"))
            pending = held.pending = await broker.open(self.services.judge.request(command.operation), command.decision,
                                                       self.flow.summary())
            if pending.waiting:
                approval = command.decision.approval
                self._carry(self.session.waiting(stream, pending.request_id, approval.timeout_seconds if approval else 0),
                            urgent=True)
                if held.cancelled:
                    await pending.withdraw(CANCELLED)
            outcome = await pending.wait()
        except asyncio.CancelledError:
            record = self.session.abandoned(stream, held.pending.request_id if held.pending else None, DISCONNECTED)
            if record is not None:
                self._record(record)
            raise
        finally:
            self._held.pop(stream, None)
        if held.cancelled or outcome.withdrawn:
            return self.session.approval(stream, HoldOutcome(False, outcome.request_id, CANCELLED, cancelled=True))
        return self.session.approval(stream, HoldOutcome(outcome.approved, outcome.request_id, outcome.reason,
                                                         outcome.approver))

    # ---- flow control and the end -----------------------------------------------------

    def _reading(self) -> None:
        """Read from a side while its peer takes bytes and, while its input stream waits, until
        what was read meanwhile passes BACKLOG_BYTES (a short wait costs no pause and resume)."""
        for side, source, sink in ((Side.CLIENT, self.client, self.server), (Side.SERVER, self.server, self.client)):
            if source is None:
                continue
            waiting = self._inputs[side] in self._waits
            if (sink is None or sink.writable) and (not waiting or self._backlog_bytes[side] <= BACKLOG_BYTES):
                source.resume()
            else:
                source.pause()

    def _end(self, error: BaseException | None) -> None:
        if self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)

