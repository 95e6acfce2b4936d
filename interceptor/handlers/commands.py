"""The sans-IO contract between a protocol session and the driver that does its I/O.

A session (one per flow) is a state machine: the driver hands it the bytes a peer sent
(`Session.receive`), and it answers with commands, in order: bytes to send, audit records,
operations to hold for approval, its own waits (`Await`), half-closes and the close. Only
`interceptor.enforcer.driver` carries them out; a session never touches a socket, a clock it
was not given, the audit sink or the approval broker.

Every command names the stream it belongs to. A command that must wait (a Hold, an Await,
a Record in strict audit) stalls only the commands of its own stream that come after it;
other streams go on. A protocol without multiplexing uses one stream per direction of
input (PostgreSQL: FRONTEND for what the client sent, BACKEND for what the server sent);
HTTP/2 or SSH would use one per stream or channel.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from interceptor.decision import Decision
from interceptor.operations import Operation

StreamId = int


class Side(enum.StrEnum):
    """The two peers of a flow: the agent, and the upstream server the enforcer dials."""

    CLIENT = "client"
    SERVER = "server"

    @property
    def other(self) -> Side:
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


@dataclass(slots=True)
class Send:
    """Write `data` (pieces, written together in one call) to the peer `to`. Not frozen, as
    Record: made for every chunk, and a frozen dataclass sets each field through
    object.__setattr__; no one changes a command once it is made."""

    to: Side
    data: Sequence[bytes | memoryview]
    stream: StreamId = 0


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Half-close towards `to`: no more bytes will be written to it (TCP FIN)."""

    to: Side
    stream: StreamId = 0


@dataclass(slots=True)
class Record:
    """The audit record of one operation. In strict audit, nothing of its stream that comes
    after it leaves before the record is durable (so an operation's result is released only
    once it is recorded). Not frozen (made for every statement): see Send."""

    decision: Decision
    operation: dict[str, object]
    outcome: dict[str, object]
    kind: str = "statement"
    stream: StreamId = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """Ask a person to approve `operation` (the policy said `approve`); the driver answers
    with `Session.approval(stream, outcome)` once it is decided, withdrawn or cancelled."""

    operation: Operation
    decision: Decision
    stream: StreamId = 0


@dataclass(frozen=True, slots=True)
class Open:
    """Dial the flow's upstream (the agent's original destination); the driver answers with
    `Session.opened(stream, error)`."""

    stream: StreamId = 0


@dataclass(frozen=True, slots=True)
class Close:
    """End the flow: what was sent before this leaves (bounded in time), then both sockets
    close. `reason` is recorded as the flow's error unless it is the normal end."""

    reason: str
    stream: StreamId = 0


@dataclass(frozen=True, slots=True)
class Await:
    """A protocol's own wait (PostgreSQL: read the catalog again). The driver passes it to
    the handler's `Awaits` and carries out the commands that come back, in its stream."""

    stream: StreamId = 0


Command = Send | Shutdown | Record | Hold | Open | Close | Await


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """How a Hold ended: `approved` (by `approver`), or not, with the broker's reason;
    `cancelled` when the client withdrew the operation (PostgreSQL CancelRequest)."""

    approved: bool
    request_id: str | None
    reason: str
    approver: str | None = None
    cancelled: bool = False


class Session(Protocol):
    """A protocol session as the driver sees it. Every method returns the commands to carry
    out next; none blocks or does I/O."""

    def input_stream(self, side: Side) -> StreamId | None:
        """The stream whose waits also stop reading from `side` (the session cannot take more
        of that side's bytes until they end); None when the session takes that side's bytes
        at any time and only its streams' commands wait."""

    def receive(self, side: Side, data: bytes) -> list[Command]:
        """Bytes `side` sent, in order."""

    def ended(self, side: Side) -> list[Command]:
        """`side` closed its sending direction (or the connection was lost); heard after the
        bytes it sent before."""

    def opened(self, stream: StreamId, error: str | None) -> list[Command]:
        """The answer to an Open: None on success, else why the upstream could not be reached."""

    def waiting(self, stream: StreamId, request_id: str | None, timeout_seconds: int) -> list[Command]:
        """A Hold's request is open and waits for a person (tell the agent, if the protocol can)."""

    def approval(self, stream: StreamId, outcome: HoldOutcome) -> list[Command]:
        """The answer to a Hold."""

    def abandoned(self, stream: StreamId, request_id: str | None, reason: str) -> Record | None:
        """The flow ends while a Hold waits: the record of the operation that never ran."""


class Awaits(Protocol):
    """The handler's side of `Await` commands: does the protocol's own waiting I/O."""

    async def __call__(self, command: Await) -> list[Command]:
        """Carry out `command`; the commands that follow from its answer."""
