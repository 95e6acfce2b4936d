"""Tests that read like the conversation: a sans-IO session driven by a script.

    script(session)
      .agent(codec.query("DROP TABLE t"))
      .expect_server(codec.query(SENTINEL))
      .server(error + ready)
      .expect_agent_error("42501", rule="no-ddl")
      .expect_record(rule="no-ddl", verdict="deny")
      .expect_ready(b"I")
      .done()

Each step feeds the session one event (`agent` and `server` bytes, a side's end, the answer
to an Open or a Hold) and queues the commands it emits. Each expectation takes the next of
them off that queue, in the order the session emitted them: bytes are matched across and
within Sends (how the session cut them into pieces does not matter, their order does), any
other command is matched whole. `done()` asserts that nothing unexpected is left. A failure
says what was expected, what the session emitted instead, and the conversation so far.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, Self, TypeVar, overload

from interceptor.decision import Decision
from interceptor.enforcer.driver import CANCELLED
from interceptor.handlers.commands import (
    Close, Command, Hold, HoldOutcome, Open, Record, Send, Session, Side, StreamId,
)
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.session import ProxySession, RefreshCatalog
from interceptor.operations import Operation, SqlQuery

_SHOWN = 72  # bytes of a Send shown in a failure message
C = TypeVar("C", bound=Command)


@dataclass(frozen=True, slots=True)
class Judging:
    """A Judge (interceptor.decision.Judge) from a plain function, for sessions under test."""

    function: Callable[..., Decision]

    def decide(self, operation: Operation) -> Decision:
        return self.function(operation)


class ScriptFailure(AssertionError):
    """The session emitted something other than what the script expected next."""


def describe(command: Command) -> str:
    """One command as a failure message shows it: the bytes of a Send (cut at _SHOWN), a
    Record's rule, verdict and summaries, any other command as its dataclass prints."""
    if isinstance(command, Send):
        return f"Send(to {command.to}, stream {command.stream}: {_bytes(b''.join(bytes(p) for p in command.data))})"
    if isinstance(command, Record):
        return (f"Record(rule={command.decision.rule!r}, verdict={command.decision.verdict.value!r}, "
                f"operation={command.operation!r}, outcome={command.outcome!r}, stream {command.stream})")
    if isinstance(command, Hold):
        return f"Hold(rule={command.decision.rule!r}, operation={command.operation!r}, stream {command.stream})"
    return repr(command)


class Script:
    """A conversation with one session; every step returns the script, so steps chain."""

    def __init__(self, session: Session, start: list[Command] | None = None) -> None:
        self.session = session
        self._emitted: deque[Command] = deque(start or [])  # `start`: the handler's first commands
        self._said: list[str] = ["the handler starts the session"] if start else []  # the steps, for failures
        self._hold: Hold | None = None  # the last Hold expected, which approve/deny/cancel answer
        self._open: Open | None = None  # the last Open expected, which opened() answers

    # ---- the peers and the driver speak ------------------------------------------------

    def agent(self, *data: bytes) -> Self:
        """The agent sends `data` (joined: one chunk, as one read would deliver it)."""
        chunk = b"".join(data)
        return self._step(f"agent sends {_bytes(chunk)}", lambda: self.session.receive(Side.CLIENT, chunk))

    def server(self, *data: bytes) -> Self:
        """The server sends `data` (joined, one chunk)."""
        chunk = b"".join(data)
        return self._step(f"server sends {_bytes(chunk)}", lambda: self.session.receive(Side.SERVER, chunk))

    def ends(self, side: Side) -> Self:
        """`side` closes its sending direction."""
        return self._step(f"{side} ends", lambda: self.session.ended(side))

    def opened(self, error: str | None = None) -> Self:
        """The driver answers the last expected Open: reached (`error` None) or not, and why."""
        stream = self._stream_of(self._open, "an Open")
        return self._step(f"the upstream {'is reached' if error is None else f'fails: {error}'}",
                          lambda: self.session.opened(stream, error))

    def waiting(self, request_id: str, timeout_seconds: int = 300) -> Self:
        """The broker opened request `request_id` for the last expected Hold; a person must decide."""
        stream = self._stream_of(self._hold, "a Hold")
        return self._step(f"request {request_id} waits for a person",
                          lambda: self.session.waiting(stream, request_id, timeout_seconds))

    def approve(self, request_id: str = "R1", approver: str = "bob", reason: str = "") -> Self:
        """`approver` approves the last expected Hold."""
        return self._answer(HoldOutcome(True, request_id, reason, approver), f"{approver} approves {request_id}")

    def deny(self, reason: str, request_id: str = "R1") -> Self:
        """The last expected Hold is not approved, for `reason` (denied, expired)."""
        return self._answer(HoldOutcome(False, request_id, reason), f"{request_id} is not approved: {reason}")

    def cancel(self, request_id: str = "R1") -> Self:
        """The agent withdraws the last expected Hold (a CancelRequest), as the driver reports it."""
        return self._answer(HoldOutcome(False, request_id, CANCELLED, cancelled=True), f"the agent cancels {request_id}")

    def _answer(self, outcome: HoldOutcome, said: str) -> Self:
        stream = self._stream_of(self._hold, "a Hold")
        self._hold = None
        return self._step(said, lambda: self.session.approval(stream, outcome))

    def _stream_of(self, command: Hold | Open | None, what: str) -> StreamId:
        if command is None:
            self._fail(f"{what} to answer (expect one first)")
        return command.stream

    def _step(self, said: str, emit: Callable[[], list[Command]]) -> Self:
        self._said.append(said)
        self._emitted.extend(emit())
        return self

    # ---- what the session emitted --------------------------------------------------------

    def expect_server(self, *data: bytes, stream: StreamId | None = None) -> Self:
        """Next, Sends to the server of exactly `data` (joined), on `stream` when given."""
        return self._expect_bytes(Side.SERVER, b"".join(data), stream)

    def expect_agent(self, *data: bytes, stream: StreamId | None = None) -> Self:
        """Next, Sends to the agent of exactly `data` (joined), on `stream` when given."""
        return self._expect_bytes(Side.CLIENT, b"".join(data), stream)

    def _expect_bytes(self, to: Side, expected: bytes, stream: StreamId | None) -> Self:
        wanted = f"a Send to the {to}{'' if stream is None else f' on stream {stream}'} of {_bytes(expected)}"
        got = self._take(to, len(expected), wanted, stream)
        if got != expected:
            self._fail(wanted, f"Send(to {to}: {_bytes(got)})")
        return self

    def expect_record(self, rule: str | None = None, verdict: str | None = None, *,
                      operation: Mapping[str, object] | None = None, outcome: Mapping[str, object] | None = None,
                      error: str | None = None) -> Self:
        """Next, a Record: of `rule` and `verdict` when given; `operation` is its whole summary;
        `outcome` names some of its outcome's items (the rest may be anything); `error` is a
        part of the outcome's error."""
        wanted = _wanted(rule=rule, verdict=verdict, operation=operation, outcome=outcome, error=error)
        record = self._next(Record, f"Record({wanted})")
        decision = record.decision
        if ((rule is not None and decision.rule != rule) or (verdict is not None and decision.verdict.value != verdict)
                or (operation is not None and dict(record.operation) != dict(operation))
                or (outcome is not None and any(record.outcome.get(k, ...) != v for k, v in outcome.items()))
                or (error is not None and error not in str(record.outcome.get("error")))):
            self._fail(f"Record({wanted})", describe(record))
        return self

    def expect_hold(self, rule: str | None = None, *, text: str | None = None) -> Self:
        """Next, a Hold of an `approve` decision: of `rule`, for the SQL `text`, when given."""
        wanted = _wanted(rule=rule, text=text)
        hold = self._next(Hold, f"Hold({wanted})")
        operation = hold.operation
        if (hold.decision.verdict.value != "approve" or (rule is not None and hold.decision.rule != rule)
                or (text is not None and not (isinstance(operation, SqlQuery) and operation.text == text))):
            self._fail(f"Hold({wanted}) of an approve decision", describe(hold))
        self._hold = hold
        return self

    def expect_open(self, stream: StreamId = 0) -> Self:
        """Next, an Open of the upstream on `stream`."""
        self._open = self._next(Open, "Open")
        return self._same(self._open, Open(stream))

    def expect_close(self, reason: str | None = None, *, says: str | None = None) -> Self:
        """Next, a Close: for exactly `reason`, or for a reason that contains `says`."""
        wanted = _wanted(reason=reason, says=says)
        close = self._next(Close, f"Close({wanted})")
        if (reason is not None and close.reason != reason) or (says is not None and says not in close.reason):
            self._fail(f"Close({wanted})", describe(close))
        return self

    def expect(self, command: Command) -> Self:
        """Next, exactly `command` (not for a Send: see expect_server/expect_agent)."""
        return self._same(self._next(type(command), repr(command)), command)

    def _same(self, got: Command, wanted: Command) -> Self:
        if got != wanted:
            self._fail(repr(wanted), describe(got))
        return self

    def done(self) -> Self:
        """Nothing the session emitted is left unexpected."""
        if self._emitted:
            self._fail("nothing more")
        return self

    # ---- the queue ----------------------------------------------------------------------

    def _next(self, kind: type[C], wanted: str) -> C:
        first = self._emitted[0] if self._emitted else None
        if not isinstance(first, kind):
            self._fail(wanted)
        self._emitted.popleft()
        return first

    def _take(self, to: Side, size: int, wanted: str, stream: StreamId | None = None) -> bytes:
        """`size` bytes off the Sends to `to` (on `stream`, when given) at the front, fewer when
        those run out; what a Send holds beyond them stays at the front, on its own stream."""
        got = b""
        while len(got) < size and self._emitted:
            first = self._emitted[0]
            if not isinstance(first, Send) or first.to is not to or stream not in (None, first.stream):
                break
            self._emitted.popleft()
            got += b"".join(bytes(piece) for piece in first.data)
            if len(got) > size:
                self._emitted.appendleft(Send(to, [got[size:]], first.stream))
                got = got[:size]
        if not got and size:
            self._fail(wanted)
        return got

    def _fail(self, wanted: str, instead: str | None = None) -> NoReturn:
        lines = [f"expected: {wanted}", *([f"got: {instead}"] if instead is not None else []),
                 "then, not yet expected:" if self._emitted else "then, nothing more emitted",
                 *(f"  {describe(command)}" for command in self._emitted),
                 "the conversation so far:", *(f"  {said}" for said in self._said)]
        raise ScriptFailure("\n".join(lines))


class PostgresScript(Script):
    """A conversation with a ProxySession, with steps for its messages and its own wait."""

    def __init__(self, session: ProxySession) -> None:
        super().__init__(session)
        self.proxy = session
        self._refresh: RefreshCatalog | None = None

    def expect_agent_error(self, sqlstate: str, rule: str | None = None, *, says: str | None = None,
                           severity: str | None = None) -> Self:
        """Next, one ErrorResponse to the agent with SQLSTATE `sqlstate`; when given, its
        message names `rule` (as the enforcer's refusals do) and contains `says`, and its
        severity is `severity`."""
        wanted = f"an ErrorResponse to the agent ({_wanted(sqlstate=sqlstate, rule=rule, says=says, severity=severity)})"
        fields = self._message(b"E", wanted)
        message = fields.get("M", "")
        if (fields.get("C") != sqlstate or (rule is not None and f"rule {rule!r}" not in message)
                or (says is not None and says not in message) or (severity is not None and fields.get("S") != severity)):
            self._fail(wanted, f"an ErrorResponse {fields}")
        return self

    def expect_notice(self, says: str) -> Self:
        """Next, one NoticeResponse to the agent whose message contains `says`."""
        fields = self._message(b"N", f"a NoticeResponse to the agent saying {says!r}")
        if says not in fields.get("M", ""):
            self._fail(f"a NoticeResponse to the agent saying {says!r}", f"a NoticeResponse {fields}")
        return self

    def expect_ready(self, status: bytes = b"I") -> Self:
        """Next, a ReadyForQuery to the agent with transaction status `status` (I, T or E)."""
        return self.expect_agent(codec.ready_for_query(status))

    def expect_refresh(self, *, after_ddl: bool = True, for_result: bool = False) -> Self:
        """Next, the session's own wait: read the catalog again (RefreshCatalog)."""
        self._refresh = self._next(RefreshCatalog, "RefreshCatalog")
        return self._same(self._refresh, RefreshCatalog(self._refresh.stream, after_ddl, for_result))

    def refreshed(self) -> Self:
        """The catalog was read again for the last expected RefreshCatalog."""
        refresh = self._refresh
        if refresh is None:
            self._fail("a RefreshCatalog to answer (expect one first)")
        self._refresh = None
        return self._step("the catalog was read again", lambda: self.proxy.catalog_refreshed(refresh))

    def _message(self, kind: bytes, wanted: str) -> dict[str, str]:
        """The fields of the next whole message to the agent, which must be of `kind`."""
        header = self._take(Side.CLIENT, 5, wanted)
        if len(header) < 5 or header[:1] != kind:
            self._fail(wanted, f"Send(to client: {_bytes(header)} ...)")
        body = self._take(Side.CLIENT, codec.INT32.unpack_from(header, 1)[0] - 4, wanted)
        return codec.read_fields(body)


@overload
def script(session: ProxySession) -> PostgresScript: ...
@overload
def script(session: Session, start: list[Command] | None = None) -> Script: ...
def script(session: Session, start: list[Command] | None = None) -> Script:
    """The script of a conversation with `session`, whose handler's first commands are `start`
    (with PostgreSQL's steps for a ProxySession, which the handler starts with none)."""
    return PostgresScript(session) if isinstance(session, ProxySession) else Script(session, start)


def _bytes(data: bytes) -> str:
    return repr(data[:_SHOWN]) + (f" ... ({len(data)} bytes)" if len(data) > _SHOWN else "")


def _wanted(**fields: object) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in fields.items() if value is not None)
