"""The Driver, the one I/O loop: a scripted Session over real Pipes on socketpairs and loopback.

The fake session answers what each test scripts and logs every call the driver makes, so a
test reads as: the agent sends X, the session answers with these commands, this is what each
peer then read, and in which order the session was asked."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interceptor.approvals import ApprovalBroker, Approver, SqliteStore
from interceptor.approvals.broker import DISCONNECTED
from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.decision import ApprovalSpec, Decision, Verdict
from interceptor.enforcer.driver import BACKLOG_BYTES, CANCELLED, HOLD_BACK_BYTES, Driver
from interceptor.enforcer.judge import FlowJudge
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.commands import (
    Await, Awaits, Close, Command, Hold, HoldOutcome, Open, Record, Send, Shutdown, Side, StreamId,
)
from interceptor.handlers.pipe import Pipe
from interceptor.operations import SqlQuery
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.model import AddressSpec, ResourceSpec
from test_approvals_support import ListSink

CLIENT, SERVER = Side.CLIENT, Side.SERVER
ROOT = Approver("root", "root@host-1")
HELD = Decision(Verdict.APPROVE, "prod-deletes", "deletes need a DBA", approval=ApprovalSpec(("dba",), timeout_seconds=300))
DELETE = SqlQuery("DELETE FROM t", "app")
Call = tuple[object, ...]  # one call the driver made on the session: its name, then its arguments


def relay(side: Side, data: bytes) -> list[Command]:
    """What a plain relay answers: the bytes to the other side, on the stream of their input."""
    return [Send(side.other, [data], stream=0 if side is CLIENT else 1)]


def record(stream: StreamId = 0, rule: str = "reads") -> Record:
    return Record(Decision(Verdict.ALLOW, rule), {"statement": "SELECT ?"}, {"rows": 1}, stream=stream)


@dataclass
class Scripted:
    """A Session (interceptor.handlers.commands.Session) whose answers the test scripts:
    `receive` answers bytes, `approved` a Hold's outcome, `opens` an Open; every call is
    kept in `calls`, in order."""

    receive_answer: Callable[[Side, bytes], list[Command]] = relay
    approved: Callable[[StreamId, HoldOutcome], list[Command]] = lambda stream, outcome: []
    opens: Callable[[StreamId, str | None], list[Command]] = lambda stream, error: []
    inputs: dict[Side, StreamId | None] = field(default_factory=lambda: {CLIENT: 0, SERVER: 1})
    calls: list[Call] = field(default_factory=list)
    chunks: dict[Side, list[bytes]] = field(default_factory=lambda: {CLIENT: [], SERVER: []})  # as received

    def input_stream(self, side: Side) -> StreamId | None:
        return self.inputs[side]

    def receive(self, side: Side, data: bytes) -> list[Command]:
        self.calls.append(("receive", side, data))
        self.chunks[side].append(data)
        return self.receive_answer(side, data)

    def ended(self, side: Side) -> list[Command]:
        self.calls.append(("ended", side))
        return [Close(f"{side} ended")]

    def opened(self, stream: StreamId, error: str | None) -> list[Command]:
        self.calls.append(("opened", stream, error))
        return self.opens(stream, error)

    def waiting(self, stream: StreamId, request_id: str | None, timeout_seconds: int) -> list[Command]:
        self.calls.append(("waiting", stream, request_id, timeout_seconds))
        return [Send(CLIENT, [f"waiting for {request_id}".encode()], stream=stream)]

    def approval(self, stream: StreamId, outcome: HoldOutcome) -> list[Command]:
        self.calls.append(("approval", stream, outcome))
        return self.approved(stream, outcome)

    def abandoned(self, stream: StreamId, request_id: str | None, reason: str) -> Record | None:
        self.calls.append(("abandoned", stream, request_id, reason))
        return Record(Decision.deny(HELD.rule, reason), {"statement": DELETE.text}, {"error": reason}, stream=stream)

    def received(self, side: Side) -> bytes:
        """Every byte the session was handed from `side`, in order."""
        return b"".join(self.chunks[side])


class WritesPipe(Pipe):
    """A Pipe that keeps what each writelines call wrote (one entry per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def writelines(self, pieces: Sequence[bytes | memoryview]) -> None:
        self.writes.append(b"".join(pieces))
        super().writelines(pieces)


class Sink(ListSink):
    """ListSink, complete as an AuditSink: the flows here capture no session bytes."""

    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        raise AssertionError("no session bytes are captured")


class StrictSink:
    """An AuditSink in strict mode: `submit` returns a future the test completes (the record
    made durable) or fails."""

    capture = False

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.durable: list[asyncio.Future[None]] = []

    async def write(self, event: AuditEvent) -> None:
        self.events.append(event)

    def submit(self, event: AuditEvent) -> asyncio.Future[None]:
        self.events.append(event)
        self.durable.append(asyncio.get_running_loop().create_future())
        return self.durable[-1]

    write_session_bytes = Sink.write_session_bytes

    async def close(self) -> None:
        pass


@dataclass
class Peer:
    """The far end of one of the driver's sockets, as the agent or the server sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self, size: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), 5)

    async def nothing(self) -> None:
        """Nothing arrives for a moment."""
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.reader.read(1), 0.1)

    def send(self, data: bytes) -> None:
        self.writer.write(data)


@dataclass
class Flow:
    """One flow under test: the driver and the peers on its sockets."""

    driver: Driver
    session: Scripted
    agent: Peer
    server: Peer
    client_pipe: WritesPipe
    server_pipe: WritesPipe
    running: asyncio.Task[None]

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait (at most 5 s) until `done()`; raises what ended the flow if it ends first."""
        async with asyncio.timeout(5):
            while not done():
                if self.running.done():
                    self.running.result()
                await asyncio.sleep(0.005)

    def called(self, name: str) -> list[Call]:
        return [call for call in self.session.calls if call[0] == name]

    async def request_id(self) -> str:
        """The id of the request the broker opened for a Hold, once the session was told it waits."""
        await self.until(lambda: bool(self.called("waiting")))
        request_id = self.called("waiting")[0][2]
        assert isinstance(request_id, str)
        return request_id


def flow_context(port: int = 5432) -> FlowContext:
    process = ProcessInfo(os.getpid(), 1, 0, 0, "/usr/bin/agent", ("agent",), "/agents/claude")
    loopback = ipaddress.ip_address("127.0.0.1")
    return FlowContext("flow-1", "claude", process, Endpoint(loopback, port), Endpoint(loopback, 40000), "db")


def no_engine() -> PolicyEngine:
    raise AssertionError("the driver judges nothing: the session does")


def services(flow: FlowContext, sink: AuditSink, broker: ApprovalBroker | None = None) -> Services:
    async def credentials() -> dict[str, str]:
        return {}

    resource = ResourceSpec("db", "tcp", (AddressSpec(ipaddress.ip_network("127.0.0.1/32"), None, 5432),))
    return Services(judge=FlowJudge(flow, no_engine, lambda: None, lambda: False), audit=sink, resource=resource,
                    credentials=credentials, approvals=broker)


async def pair() -> tuple[WritesPipe, Peer]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    pipe = WritesPipe()
    await asyncio.get_running_loop().connect_accepted_socket(lambda: pipe, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    return pipe, Peer(reader, writer)


@asynccontextmanager
async def running(session: Scripted, sink: AuditSink | None = None, broker: ApprovalBroker | None = None,
                  awaits: Awaits | None = None,
                  start: list[Command] | None = None, upstream: bool = True,
                  port: int = 5432) -> AsyncIterator[Flow]:
    """A driver running `session` between an agent and (unless `upstream` is False: an Open
    dials it) a server, each on a socketpair; closed afterwards."""
    client, agent = await pair()
    server, upstream_peer = await pair()
    context = flow_context(port)
    driver = Driver(context, services(context, sink or Sink(), broker), session, client,
                    server if upstream else None, awaits)
    task = asyncio.create_task(driver.run(start))
    try:
        yield Flow(driver, session, agent, upstream_peer, client, server, task)
    finally:
        driver.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for peer in (agent, upstream_peer):
            peer.writer.close()
        client.abort()
        server.abort()


def run(test: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
    asyncio.run(asyncio.wait_for(test(*args), 10))


@asynccontextmanager
async def broker_at(path: Path, sink: AuditSink) -> AsyncIterator[ApprovalBroker]:
    broker = ApprovalBroker(await SqliteStore.open(str(path / "approvals.db")), sink, poll_seconds=0.05)
    try:
        yield broker
    finally:
        await broker.close()
        await broker.store.close()


class Gate:
    """An Awaits whose answer the test gives: `open(commands)` ends the wait with them."""

    def __init__(self) -> None:
        self.waits: list[Await] = []
        self._answer: asyncio.Future[list[Command]] | None = None

    async def __call__(self, command: Await) -> list[Command]:
        self.waits.append(command)
        self._answer = asyncio.get_running_loop().create_future()
        return await self._answer

    def open(self, commands: list[Command] | None = None) -> None:
        assert self._answer is not None, "nothing waits"
        self._answer.set_result(commands or [])


def awaiting(side: Side, data: bytes) -> list[Command]:
    """The session's answer to bytes that start with "wait": its own wait, on the client's input stream."""
    return [Await(stream=0)] if data.startswith(b"wait") else []


@asynccontextmanager
async def agent_waiting(gate: Gate) -> AsyncIterator[Flow]:
    """A running flow whose agent sent "wait": the client's input stream waits on `gate`."""
    async with running(Scripted(receive_answer=awaiting), awaits=gate) as flow:
        flow.agent.send(b"wait")
        await flow.until(lambda: bool(gate.waits))
        yield flow


# ---- commands, in order --------------------------------------------------------------


def test_commands_are_carried_out_in_order() -> None:
    async def scenario() -> None:
        sink = Sink()
        session = Scripted(receive_answer=lambda side, data: [
            Send(SERVER, [b"one "]), Send(CLIENT, [b"answer"]), Send(SERVER, [b"two", memoryview(b" three")]),
            record(), Shutdown(SERVER)])
        async with running(session, sink) as flow:
            flow.agent.send(b"hi")
            assert await flow.server.read(13) == b"one two three"
            assert await flow.server.reader.read() == b""  # the Shutdown came after the Sends
            assert await flow.agent.read(6) == b"answer"
            assert [(e.kind, e.rule, e.operation) for e in sink.events] == [
                ("statement", "reads", {"statement": "SELECT ?"})]
            assert flow.driver.records == 1 and flow.client_pipe.writes == [b"answer"]

    run(scenario)


def test_close_ends_the_flow_and_nothing_after_it_is_carried_out() -> None:
    async def scenario() -> None:
        session = Scripted(receive_answer=lambda side, data: [Send(SERVER, [b"last"]), Close("done"),
                                                                Send(SERVER, [b"never"])])
        async with running(session) as flow:
            flow.agent.send(b"bye")
            await asyncio.wait_for(flow.running, 5)
            assert flow.driver.closed_because == "done"
            assert await flow.server.read(4) == b"last"
            await flow.server.nothing()

    run(scenario)


def test_an_exception_in_the_session_ends_the_flow_with_it() -> None:
    def broken(side: Side, data: bytes) -> list[Command]:
        raise ValueError(f"cannot take {data!r}")

    async def scenario() -> None:
        async with running(Scripted(receive_answer=broken)) as flow:
            flow.agent.send(b"bad")
            with pytest.raises(ValueError, match="cannot take b'bad'"):
                await asyncio.wait_for(flow.running, 5)

    run(scenario)


def test_a_peer_that_closes_is_told_to_the_session() -> None:
    async def scenario() -> None:
        async with running(Scripted()) as flow:
            flow.server.writer.write_eof()
            await asyncio.wait_for(flow.running, 5)
            assert flow.session.calls == [("ended", SERVER)] and flow.driver.closed_because == "server ended"

    run(scenario)


# ---- waits stall their own stream --------------------------------------------------------


def test_a_wait_stalls_only_its_own_stream() -> None:
    gate = Gate()

    async def scenario() -> None:
        session = Scripted(receive_answer=lambda side, data: [
            Await(stream=0), Send(SERVER, [b"after the wait"], stream=0), Send(CLIENT, [b"meanwhile"], stream=2)]
            if data == b"go" else relay(side, data))
        async with running(session, awaits=gate) as flow:
            flow.agent.send(b"go")
            assert await flow.agent.read(9) == b"meanwhile"  # another stream's Send goes through
            flow.server.send(b"server talk")  # the server's input stream does not wait: read on
            assert await flow.agent.read(11) == b"server talk"
            await flow.server.nothing()
            gate.open([Send(SERVER, [b"answer, then "], stream=0)])
            assert await flow.server.read(27) == b"answer, then after the wait"
            assert gate.waits == [Await(stream=0)]

    run(scenario)


def test_input_read_during_a_wait_is_kept_and_replayed_in_order_after_it() -> None:
    gate = Gate()

    async def scenario() -> None:
        async with agent_waiting(gate) as flow:
            for chunk in (b"one", b"two", b"three"):
                flow.agent.send(chunk)
                await asyncio.sleep(0.02)  # each its own read
            assert flow.session.received(CLIENT) == b"wait"
            gate.open()
            await flow.until(lambda: flow.session.received(CLIENT) == b"waitonetwothree")
            assert flow.session.chunks[CLIENT] == [b"wait", b"one", b"two", b"three"]

    run(scenario)


def test_a_wait_that_the_replay_starts_again_keeps_the_rest_for_after_it() -> None:
    gate = Gate()

    async def scenario() -> None:
        async with agent_waiting(gate) as flow:
            for chunk in (b"wait 2", b"after"):
                flow.agent.send(chunk)
                await asyncio.sleep(0.02)
            gate.open()
            await flow.until(lambda: len(gate.waits) == 2)
            assert flow.session.received(CLIENT) == b"waitwait 2"  # "after" waits for the second wait
            gate.open()
            await flow.until(lambda: flow.session.received(CLIENT) == b"waitwait 2after")

    run(scenario)


def test_a_side_that_ends_during_a_wait_is_heard_to_end_after_what_it_sent_before() -> None:
    gate = Gate()

    async def scenario() -> None:
        async with agent_waiting(gate) as flow:
            flow.agent.send(b"last words")
            await asyncio.sleep(0.02)
            flow.agent.writer.write_eof()
            await asyncio.sleep(0.02)
            assert flow.session.calls == [("receive", CLIENT, b"wait")]
            gate.open()
            await asyncio.wait_for(flow.running, 5)
            assert flow.session.calls == [("receive", CLIENT, b"wait"), ("receive", CLIENT, b"last words"),
                                          ("ended", CLIENT)]

    run(scenario)


def test_reading_pauses_once_what_was_read_during_a_wait_passes_the_backlog_limit() -> None:
    gate = Gate()
    sent = os.urandom(BACKLOG_BYTES + 300_000)

    async def scenario() -> None:
        async with agent_waiting(gate) as flow:
            flow.agent.send(sent)
            transport = flow.client_pipe.transport
            assert transport is not None
            await flow.until(lambda: not transport.is_reading())
            assert flow.session.received(CLIENT) == b"wait"
            gate.open()
            await flow.until(lambda: len(flow.session.received(CLIENT)) == 4 + len(sent))
            assert flow.session.received(CLIENT) == b"wait" + sent and transport.is_reading()

    run(scenario)


def test_a_side_is_not_read_while_the_peer_it_is_relayed_to_takes_nothing() -> None:
    async def scenario() -> None:
        async with running(Scripted()) as flow:
            server_transport, client_transport = flow.server_pipe.transport, flow.client_pipe.transport
            assert server_transport is not None and client_transport is not None
            server_transport.set_write_buffer_limits(high=4096)
            flow.agent.send(os.urandom(4 << 20))  # the server peer reads none of it
            await flow.until(lambda: not client_transport.is_reading())
            await flow.server.read(4 << 20)
            await flow.until(client_transport.is_reading)

    run(scenario)


# ---- strict audit ------------------------------------------------------------------------


def test_strict_audit_holds_the_result_back_until_its_record_is_durable_then_writes_it_once() -> None:
    sink = StrictSink()

    async def scenario() -> None:
        session = Scripted(receive_answer=lambda side, data: [
            Send(CLIENT, [b"rows, "], stream=1), Send(CLIENT, [b"complete, "], stream=1), record(stream=1),
            Send(CLIENT, [b"ready"], stream=1)] if side is SERVER else [])
        async with running(session, sink=sink) as flow:
            flow.server.send(b"result")
            await flow.until(lambda: bool(sink.durable))
            await flow.agent.nothing()
            sink.durable[0].set_result(None)
            assert await flow.agent.read(21) == b"rows, complete, ready"
            assert flow.client_pipe.writes == [b"rows, complete, ready"]

    run(scenario)


def test_strict_audit_lets_a_result_larger_than_the_hold_back_go_before_its_record() -> None:
    sink = StrictSink()
    rows = b"r" * (HOLD_BACK_BYTES + 1)

    async def scenario() -> None:
        session = Scripted(receive_answer=lambda side, data: [
            Send(CLIENT, [rows], stream=1), record(stream=1), Send(CLIENT, [b"ready"], stream=1)]
            if side is SERVER else [])
        async with running(session, sink=sink) as flow:
            flow.server.send(b"result")
            assert await flow.agent.read(len(rows)) == rows
            await flow.agent.nothing()  # what follows the record waits for it
            sink.durable[0].set_result(None)
            assert await flow.agent.read(5) == b"ready"

    run(scenario)


def test_a_record_that_cannot_be_made_durable_ends_the_flow() -> None:
    sink = StrictSink()

    async def scenario() -> None:
        session = Scripted(receive_answer=lambda side, data: [record(stream=1), Send(CLIENT, [b"ready"], stream=1)])
        async with running(session, sink=sink) as flow:
            flow.server.send(b"result")
            await flow.until(lambda: bool(sink.durable))
            sink.durable[0].set_exception(OSError("audit disk full"))
            with pytest.raises(OSError, match="audit disk full"):
                await asyncio.wait_for(flow.running, 5)
            await flow.agent.nothing()

    run(scenario)


# ---- holds for approval --------------------------------------------------------------------


def holding(side: Side, data: bytes) -> list[Command]:
    """The session's answer to "delete": hold it; then a Send of its stream, which waits with it."""
    return [Hold(DELETE, HELD, stream=0), Send(SERVER, [b"after the hold"], stream=0)] if data == b"delete" else []


def test_a_held_operation_runs_once_approved_and_what_the_agent_sent_meanwhile_follows(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        session = Scripted(receive_answer=holding, approved=lambda stream, outcome: [Send(SERVER, [b"delete, "])])
        async with broker_at(tmp_path, sink) as broker, running(session, sink, broker) as flow:
            flow.agent.send(b"delete")
            request_id = await flow.request_id()
            assert flow.called("waiting") == [("waiting", 0, request_id, 300)]
            told = f"waiting for {request_id}".encode()  # the session's word to the agent goes out during the hold
            assert await flow.agent.read(len(told)) == told
            flow.agent.send(b"next")
            await flow.server.nothing()
            await broker.approve(request_id, ROOT)
            assert await flow.server.read(22) == b"delete, after the hold"
            await flow.until(lambda: flow.session.received(CLIENT) == b"deletenext")
            assert flow.called("approval") == [
                ("approval", 0, HoldOutcome(True, request_id, "break-glass approval by root", ROOT.subject))]
            assert [call[0] for call in flow.session.calls] == ["receive", "waiting", "approval", "receive"]

    run(scenario)


def test_a_denied_hold_is_answered_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        session = Scripted(receive_answer=holding)
        async with broker_at(tmp_path, sink) as broker, running(session, sink, broker) as flow:
            flow.agent.send(b"delete")
            request_id = await flow.request_id()
            await broker.deny(request_id, ROOT, "not on a Friday")
            await flow.until(lambda: bool(flow.called("approval")))
            assert flow.called("approval") == [("approval", 0, HoldOutcome(False, request_id, "not on a Friday",
                                                                           ROOT.subject))]

    run(scenario)


def test_without_a_broker_a_hold_is_refused() -> None:
    async def scenario() -> None:
        async with running(Scripted(receive_answer=holding)) as flow:
            flow.agent.send(b"delete")
            await flow.until(lambda: bool(flow.called("approval")))
            assert flow.called("approval") == [("approval", 0, HoldOutcome(False, None, "no approval broker is configured"))]
            assert await flow.server.read(14) == b"after the hold"

    run(scenario)


def test_cancel_holds_withdraws_a_held_operation(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        async with broker_at(tmp_path, sink) as broker, running(Scripted(receive_answer=holding), sink, broker) as flow:
            assert await flow.driver.cancel_holds() is False  # nothing held: the caller relays the cancel
            flow.agent.send(b"delete")
            request_id = await flow.request_id()
            assert await flow.driver.cancel_holds() is True
            await flow.until(lambda: bool(flow.called("approval")))
            assert flow.called("approval") == [("approval", 0, HoldOutcome(False, request_id, CANCELLED, cancelled=True))]

    run(scenario)


def test_a_cancel_that_comes_as_the_hold_is_carried_out_still_ends_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        cancels: list[asyncio.Task[bool]] = []

        def hold_and_cancel(side: Side, data: bytes) -> list[Command]:
            # the CancelRequest's connection is served in the same loop turn, just before the Hold starts
            cancels.append(asyncio.ensure_future(flow.driver.cancel_holds()))
            return holding(side, data)

        async with broker_at(tmp_path, sink) as broker, running(Scripted(receive_answer=hold_and_cancel), sink,
                                                                broker) as flow:
            flow.agent.send(b"delete")
            await flow.until(lambda: bool(cancels) and cancels[0].done())
            assert cancels[0].result() is True

    run(scenario)


def test_closing_the_flow_during_a_hold_records_the_operation_as_never_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        async with broker_at(tmp_path, sink) as broker, running(Scripted(receive_answer=holding), sink, broker) as flow:
            flow.agent.send(b"delete")
            request_id = await flow.request_id()
            flow.driver.close()
            await flow.until(lambda: bool(flow.called("abandoned")))
            assert flow.called("abandoned") == [("abandoned", 0, request_id, DISCONNECTED)]
            [never_run] = [e for e in sink.events if e.kind == "statement"]
            assert never_run.decision == "deny" and never_run.reason == DISCONNECTED

    run(scenario)


def test_an_agent_that_leaves_during_a_hold_ends_the_flow_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = Sink()
        async with broker_at(tmp_path, sink) as broker, running(Scripted(receive_answer=holding), sink, broker) as flow:
            flow.agent.send(b"delete")
            request_id = await flow.request_id()
            flow.agent.writer.write_eof()
            await asyncio.wait_for(flow.running, 5)
            assert not flow.called("ended") and not flow.called("approval")
            flow.driver.close()  # as the handler does once the flow ends: the request is withdrawn
            await flow.until(lambda: bool(flow.called("abandoned")))
            assert flow.called("abandoned") == [("abandoned", 0, request_id, DISCONNECTED)]

    run(scenario)


# ---- opening the upstream -----------------------------------------------------------------


def test_the_agent_waits_for_the_open_then_its_bytes_go_upstream() -> None:
    async def scenario() -> None:
        accepted: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
        listener = await asyncio.start_server(lambda r, w: accepted.set_result(Peer(r, w)), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener, running(Scripted(), start=[Open(stream=0)], upstream=False, port=port) as flow:
            flow.agent.send(b"first words")
            upstream = await asyncio.wait_for(accepted, 5)
            assert await upstream.read(11) == b"first words"
            assert flow.called("opened") == [("opened", 0, None)]
            upstream.send(b"welcome")
            assert await flow.agent.read(7) == b"welcome"
            upstream.writer.close()

    run(scenario)


def test_an_upstream_that_cannot_be_reached_is_told_to_the_session() -> None:
    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]  # bound, not listening: refused
            session = Scripted(opens=lambda stream, error: [Close(error or "")])
            async with running(session, start=[Open(stream=0)], upstream=False, port=port) as flow:
                await asyncio.wait_for(flow.running, 5)
                [(_, stream, error)] = flow.called("opened")
                assert stream == 0 and str(error).startswith(f"upstream 127.0.0.1:{port}: ")
                assert flow.driver.closed_because == error

    run(scenario)
