"""The audit record and the one interface every sink implements.

Handlers call `await sink.write(event)` and must not release a result to the client
before it returns in strict mode; if it raises AuditUnavailable the operation is
denied (fail closed). Values are masked before an event is built: a sink writes
what it is given.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar, cast

from interceptor.errors import AuditUnavailable

T = TypeVar("T")


class SharedSummary(dict[str, Any]):
    """A summary (process, identity) that every record of a flow carries, built once per
    flow and read-only, so what the audit path makes of it (its scrubbed copy, its JSON
    text) is made once and kept with it rather than per record."""

    __slots__ = ("_derived",)
    _derived: dict[str, Any]

    def derived(self, name: str, make: Callable[[SharedSummary], T]) -> T:
        """`make(self)`, computed on first use under `name` and kept: the summary never changes."""
        try:
            cache = self._derived
        except AttributeError:
            cache = self._derived = {}
        if name not in cache:
            cache[name] = make(self)
        return cast(T, cache[name])  # each name is only ever derived by one `make`

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a SharedSummary is read-only")

    # Each mutator raises, whatever dict's signature for it: hence one ignore for the seven.
    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return SharedSummary, (dict(self),)  # copies and pickles rebuild it whole, not item by item


@dataclass(slots=True)
class AuditEvent:
    """What a handler reports; the sink copies it (scrubbed) when it is submitted, so what
    is done to the object afterwards never reaches the trail. Not frozen: a frozen
    dataclass sets each of its 13 fields through object.__setattr__, twice the cost of
    building one per record."""

    kind: str  # connection | connect_denied | statement | approval | identity | policy | daemon
    agent: str | None = None
    decision: str | None = None  # allow | deny | approve | error
    rule: str | None = None
    reason: str | None = None
    resource: str | None = None
    flow_id: str | None = None
    process: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    operation: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    time: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: new_event_id())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; nested values are shared, not copied (scrub builds new ones)."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(AuditEvent))


_id_prefix: str
_id_counter: itertools.count[int]


def _reseed() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(10), itertools.count()


def new_event_id() -> str:
    """32 hex digits, unique across processes and daemons: 80 random bits drawn once per
    process (again after a fork) and a counter, rather than a getrandom() call per record."""
    return f"{_id_prefix}{next(_id_counter):012x}"


_reseed()
os.register_at_fork(after_in_child=_reseed)


class AuditSink(Protocol):
    @property
    def capture(self) -> bool:
        """Whether the driver hands it each flow's bytes (write_session_bytes)."""

    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        """Queue bytes of a captured session (`direction` up or down), as the client saw them."""

    async def write(self, event: AuditEvent) -> None:
        """Return once the event is as durable as the sink's mode promises."""

    def submit(self, event: AuditEvent) -> Awaitable[None] | None:
        """Queue the event without awaiting (for handlers that run in protocol callbacks): None
        when queued is all the sink's mode promises, else an awaitable done once durable."""

    async def close(self) -> None:
        """Flush what is pending and release the store."""
