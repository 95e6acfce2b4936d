"""The sink every store shares: one writer thread, group commit, fail closed, never drop.

`write` masks and normalizes the event and queues it. One writer thread drains the queue,
chains a group of events after the store's head and appends them in one transaction; what
is queued while a group commits is the next group, handed to the store as soon as the one
before is durable, so a group is as large as the load makes it and a commit never waits for
the event loop. In `strict` mode `write` returns only after the group holding its event is
committed (the writer tells the loop the moment it is); in
`batched` mode it returns once queued and the group is flushed within `batch_ms` (at once
when `max_batch` records are waiting, so a busy host is not capped at one batch per wait,
and at once on close). When the store fails, strict writers get AuditUnavailable with the
reason, batched records and captured bytes stay queued and are retried, and new writes are
refused until the store works again, so every operation is denied rather than left
unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from interceptor.audit.chain import Head, Record, link
from interceptor.audit.event import AuditEvent
from interceptor.audit.scrub import scrub_event
from interceptor.errors import AuditUnavailable

log = logging.getLogger("interceptor.audit")

DIRECTIONS = ("up", "down")  # up: client to server, down: server to client


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes of one session as the client saw them (after masking), for pcap export."""

    flow_id: str
    direction: str
    ts: float
    data: bytes


class Backend(Protocol):
    """A store the writer appends to; every call comes from the sink's one writer thread, so
    calls (close included) never overlap, and each may block."""

    def recover(self, chain_id: str, event_ids: list[str]) -> tuple[Head, set[str]]:
        """(Re)open the store: the chain's head and which of `event_ids` it already holds
        (a commit whose answer was lost may have landed)."""

    def append(self, records: list[Record], chunks: list[Chunk], head: Head) -> None:
        """Store records, chunks and the new head atomically and durably."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkOptions:
    chain_id: str = field(default_factory=socket.gethostname)
    durability: str = "strict"  # strict | batched
    batch_ms: int = 50
    max_queue: int = 100_000
    max_batch: int = 1000
    retry_ms: int = 1000
    capture: bool = False  # whether handlers should record session bytes (write_session_bytes)

    def __post_init__(self) -> None:
        if self.durability not in ("strict", "batched"):
            raise ValueError(f"audit durability must be strict or batched, not {self.durability!r}")
        if not self.chain_id:
            raise ValueError("audit chain_id must not be empty")
        for name in ("batch_ms", "max_queue", "max_batch", "retry_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "batch_ms" else 1):
                raise ValueError(f"audit {name} must be a positive integer, not {value!r}")
        if not isinstance(self.capture, bool):
            raise ValueError(f"audit capture must be true or false, not {self.capture!r}")


@dataclass(slots=True, eq=False)
class _Item:
    event: dict[str, Any] | None = None
    chunk: Chunk | None = None
    done: asyncio.Future[None] | None = None  # strict writes wait on this


class ChainedSink:
    """An AuditSink over any Backend (see the module docstring for the guarantees)."""

    def __init__(self, backend: Backend, options: SinkOptions) -> None:
        self.backend = backend
        self.options = options
        self._queue: deque[_Item] = deque()  # appended on the loop, taken off by the writer once stored
        self._wake = threading.Condition()
        self._waiting: str | None = None  # what the idle writer waits for: work | batch | retry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._head: Head | None = None
        self._failing: str | None = None
        self._retry_at = 0.0
        self._closing = False
        self._abandoned = False
        self._written = 0
        self._failed = 0
        self._groups = 0
        self._latency_ms = 0.0

    @property
    def capture(self) -> bool:
        """Handlers ask this before calling write_session_bytes (off unless configured)."""
        return self.options.capture

    @property
    def strict(self) -> bool:
        return self.options.durability == "strict"

    def submit(self, event: AuditEvent) -> asyncio.Future[None] | None:
        """Queue `event` now, without awaiting: in strict mode the future it returns completes
        once the record is durable (release nothing that depends on it before), in batched
        mode it returns None. Raises AuditUnavailable when the record cannot be taken."""
        try:
            body = scrub_event(event.to_dict())
        except ValueError as exc:
            raise AuditUnavailable(str(exc)) from exc
        done = asyncio.get_running_loop().create_future() if self.strict else None
        self._enqueue(_Item(event=body, done=done))
        return done

    async def write(self, event: AuditEvent) -> None:
        done = self.submit(event)
        if done is not None:
            await asyncio.shield(done)

    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        """Queue bytes of a captured session, exactly as the client saw them (after masking);
        refused (AuditUnavailable) like a write when the store fails or the queue is full."""
        if direction not in DIRECTIONS:
            raise ValueError(f"session direction must be one of {DIRECTIONS}, not {direction!r}")
        self._enqueue(_Item(chunk=Chunk(flow_id, direction, time.time() if ts is None else ts, bytes(data))))

    def _enqueue(self, item: _Item) -> None:
        if self._closing:
            raise AuditUnavailable("audit sink is closed")
        if self._failing is not None and (not self.strict or self._queue or time.monotonic() < self._retry_at):
            raise AuditUnavailable(f"audit store is failing: {self._failing}")
        if len(self._queue) >= self.options.max_queue:
            raise AuditUnavailable(f"audit queue is full ({len(self._queue)} records not yet written)")
        self._queue.append(item)
        if self._writer is None:
            self._start()
        # The writer sets _waiting before it looks at the queue and sleeps: it either sees this
        # item or is woken here (from a batch's wait only once the batch is full).
        waiting = self._waiting
        if waiting is not None and (waiting != "batch" or len(self._queue) >= self.options.max_batch):
            with self._wake:
                self._wake.notify()

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    def stats(self) -> dict[str, Any]:
        """For metrics: queue_depth is the backlog not yet durable; failed counts records in failed commits."""
        return {"durability": self.options.durability, "chain_id": self.options.chain_id,
                "queue_depth": len(self._queue), "written": self._written, "failed": self._failed,
                "groups": self._groups, "last_write_latency_ms": round(self._latency_ms, 3),
                "failing": self._failing, "head_seq": self._head.seq if self._head else None}

    async def close(self, timeout: float = 10.0) -> None:
        """Flush the queue (for up to `timeout` seconds while the store fails) and close the store."""
        self._closing = True
        if self._stopped is None:
            self.backend.close()  # no writer ever started: nothing is open or in flight
            return
        with self._wake:
            self._wake.notify()
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout)
        except TimeoutError:
            self._abandoned = True  # the writer closes the store once its call in flight returns
            self._abandon()
            with self._wake:
                self._wake.notify()  # a writer waiting to retry stops now

    # ---- on the event loop, called from the writer thread -----------------------------

    def _on_loop(self, function: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            loop.call_soon_threadsafe(function, *args)

    @staticmethod
    def _released(done: list[asyncio.Future[None]]) -> None:
        for future in done:
            if not future.done():
                future.set_result(None)

    @staticmethod
    def _refused(done: list[asyncio.Future[None]], reason: str) -> None:
        for future in done:
            if not future.done():
                future.set_exception(AuditUnavailable(f"audit record not written: {reason}"))

    def _writer_ended(self, error: BaseException | None) -> None:
        """A writer that died of a bug must not leave strict writers waiting forever: fail closed."""
        if error is not None and not self._abandoned:
            self._failing = f"audit writer crashed: {error!r}"
            self._closing = True
            log.error("%s", self._failing, exc_info=error)
            self._abandon()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _abandon(self) -> None:
        """The store stayed down through close: put what is left into the log rather than lose it silently."""
        left = list(self._queue)
        self._queue.clear()
        log.error("audit store failing at shutdown (%s): %d queued records follow in this log", self._failing, len(left))
        for item in left:
            if item.event is not None:
                log.error("unwritten audit record: %s", item.event)
            if item.done is not None and not item.done.done():
                item.done.set_exception(AuditUnavailable("audit sink closed before the record was written"))

    # ---- the writer thread ------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float | None) -> None:
        """Sleep until `ready()` (checked once _waiting is set: see _enqueue) or the timeout."""
        with self._wake:
            self._waiting = what
            try:
                self._wake.wait_for(ready, timeout)
            finally:
                self._waiting = None

    def _run(self) -> None:
        """Group after group: what arrives while one group commits makes the next, handed to
        the store the moment the one before is durable; the store is closed on the way out."""
        error: BaseException | None = None
        options = self.options
        try:
            while (self._queue or not self._closing) and not self._abandoned:
                if not self._queue:
                    self._wait("work", lambda: self._closing or bool(self._queue), None)
                    continue
                if (not self.strict and not self._closing and self._failing is None
                        and len(self._queue) < options.max_batch):
                    self._wait("batch", lambda: self._closing or len(self._queue) >= options.max_batch,
                               options.batch_ms / 1000)
                if not self._commit(list(itertools.islice(self._queue, options.max_batch))):
                    # Retry after retry_ms, or at once when a probe arrives or close begins (once:
                    # a store still failing then is retried at retry_ms until close gives up).
                    queued, closing = len(self._queue), self._closing
                    self._wait("retry", lambda: (self._abandoned or self._closing != closing
                                                 or len(self._queue) > queued), options.retry_ms / 1000)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which fails closed
            error = exc
        finally:
            try:
                self.backend.close()
            except Exception as exc:  # noqa: BLE001 - a store that fails to close has nothing left to lose
                log.warning("audit store did not close cleanly: %s", exc)
            self._on_loop(self._writer_ended, error)

    def _commit(self, group: list[_Item]) -> bool:
        """Append one group; on failure refuse its strict writers and keep the rest queued."""
        started = time.perf_counter()
        chain_id = self.options.chain_id
        try:
            if self._head is None or self._failing is not None:
                ids = [item.event["event_id"] for item in group if item.event is not None]
                self._head, stored = self.backend.recover(chain_id, ids)
                group = self._drop_stored(group, stored)
            records, head = link(self._head, chain_id, [item.event for item in group if item.event is not None])
            self.backend.append(records, [item.chunk for item in group if item.chunk is not None], head)
        except Exception as exc:  # any store error: fail closed, never crash the writer
            self._failed_group(group, f"{type(exc).__name__}: {exc}".strip())
            return False
        if self._abandoned:
            return True  # close gave up waiting and has told this group's writers so
        self._head = head
        if self._failing is not None:
            log.warning("audit store recovered: writing again")
        self._failing = None
        self._latency_ms = (time.perf_counter() - started) * 1000
        self._groups += 1
        self._written += len(records)
        popleft = self._queue.popleft
        done = [item.done for item in [popleft() for _ in group] if item.done is not None]
        if done:
            self._on_loop(self._released, done)
        return True

    def _drop_stored(self, group: list[_Item], stored: set[str]) -> list[_Item]:
        """Items whose record already landed (lost commit answer) are done; return the rest."""
        if not stored:
            return group
        keep, done = [], []
        for item in group:
            if item.event is not None and item.event["event_id"] in stored:
                self._queue.remove(item)
                if item.done is not None:
                    done.append(item.done)
            else:
                keep.append(item)
        if done:
            self._on_loop(self._released, done)
        return keep

    def _failed_group(self, group: list[_Item], reason: str) -> None:
        if reason != self._failing:
            log.error("audit store failing, operations are denied until it recovers: %s", reason)
        self._failing = reason
        self._retry_at = time.monotonic() + self.options.retry_ms / 1000
        self._failed += sum(1 for item in group if item.event is not None)
        done = []
        for item in group:
            if item.done is not None:
                self._queue.remove(item)
                done.append(item.done)
        if done:
            self._on_loop(self._refused, done, reason)
