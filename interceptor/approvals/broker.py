"""The approval broker: holds risky operations until a person decides, in the daemon.

A hold is first checked against live grants; otherwise it becomes a pending request
(stored, audited, announced) that the handler awaits while its connection stays open.
Approvers act through `approve` / `deny`; a sweeper expires requests and notices
decisions made by another host of a fleet sharing the store. Every failure denies.
A request whose client cancels it or goes away is withdrawn, so nobody approves an
operation that nothing waits for: `withdraw`, and `open` / `wait` cancelled.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from interceptor.approvals.model import (
    AlreadyDecided,
    ApprovalError,
    ApprovalRequest,
    Approver,
    Expired,
    Grant,
    NotAnApprover,
    NotFound,
    Outcome,
    SelfApproval,
    State,
    StoreError,
    grant_key,
    new_request_id,
    normalize_request_id,
    operation_summary,
)
from interceptor.approvals.store import ApprovalStore
from interceptor.approvals.webhook import WebhookNotifier
from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.decision import Decision, Verdict
from interceptor.errors import AuditUnavailable
from interceptor.operations import Request

log = logging.getLogger(__name__)
T = TypeVar("T")

# A waiter gives up this long after its request's expiry even if the store cannot say so.
_LOCAL_GRACE_SECONDS = 5.0
# close() waits this long for withdrawals (and openings) still in flight.
CLOSE_GRACE_SECONDS = 5.0
# Requests of one agent this daemon waits on at once; more are denied at once, so an agent (or
# a flood of its connections) cannot bury approvers in requests or hold unbounded state here.
MAX_PENDING_PER_AGENT = 32
DISCONNECTED = "the client disconnected"  # why a request whose waiter was cancelled is withdrawn
_AUDIT_DECISION = {State.PENDING: "approve", State.APPROVED: "allow", State.DENIED: "deny", State.EXPIRED: "deny",
                   State.WITHDRAWN: "deny"}


@dataclass(frozen=True, slots=True)
class _Waiter:
    """A request opened here and the future its holder waits on (set to the decided request)."""

    request: ApprovalRequest
    future: asyncio.Future[ApprovalRequest]


class PendingRequest:
    """A hold in progress: `request_id` is known before waiting, so the handler can tell
    the client (e.g. a NoticeResponse) which id to have approved."""

    def __init__(self, broker: ApprovalBroker, request: ApprovalRequest | None, outcome: Outcome | None = None) -> None:
        self._broker = broker
        self.request = request
        self._outcome = outcome

    @property
    def request_id(self) -> str | None:
        return self.request.request_id if self.request else (self._outcome.request_id if self._outcome else None)

    @property
    def waiting(self) -> bool:
        """True when a request was opened for a person to decide; False when the outcome was
        known at once (a grant covered the operation, or the hold failed closed)."""
        return self.request is not None

    async def wait(self) -> Outcome:
        """The decision. Cancelled while waiting (the holder's connection closed, the daemon
        stopping), the request is withdrawn with reason DISCONNECTED."""
        if self._outcome is None:
            assert self.request is not None
            try:
                self._outcome = await self._broker._wait(self.request)
            except asyncio.CancelledError:
                self.withdraw(DISCONNECTED)
                raise
        return self._outcome

    def withdraw(self, reason: str) -> asyncio.Future[ApprovalRequest | None]:
        """Withdraw this request (its client cancelled the operation or went away); `wait()`
        then returns an Outcome with `withdrawn` set and this reason. Runs in a task the
        broker tracks: cancelling an await of the returned future does not stop it, and
        `ApprovalBroker.close()` waits for it. The future's result is the withdrawn request,
        or None when nothing waits any more or a decision came first (that decision stands)."""
        if self.request is None or self._outcome is not None:
            settled: asyncio.Future[ApprovalRequest | None] = asyncio.get_running_loop().create_future()
            settled.set_result(None)
            return settled
        return asyncio.shield(self._broker._withdrawal(self.request.request_id, reason))


class ApprovalBroker:
    def __init__(
        self,
        store: ApprovalStore,
        audit: AuditSink,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 1.0,
        max_pending_per_agent: int = MAX_PENDING_PER_AGENT,
    ) -> None:
        self.store = store
        self.max_pending_per_agent = max_pending_per_agent
        self.audit = audit
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.notifier = WebhookNotifier(webhook_url) if webhook_url else None
        self._waiters: dict[str, _Waiter] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tracked: set[asyncio.Task[Any]] = set()  # openings and withdrawals that must finish
        self._withdrawals: dict[str, asyncio.Task[ApprovalRequest | None]] = {}  # by request id, while running

    async def hold(self, request: Request, decision: Decision, flow_summary: dict[str, Any]) -> Outcome:
        """Open and wait: the outcome of a held operation."""
        return await (await self.open(request, decision, flow_summary)).wait()

    async def open(self, request: Request, decision: Decision, flow_summary: dict[str, Any]) -> PendingRequest:
        """Use a live grant, or open a pending request; never raises for store or audit trouble
        (ValueError for a decision that is not `approve`). Cancelled meanwhile, the opening
        still finishes (in a tracked task) and the request it opened is withdrawn
        (DISCONNECTED): a caller that went away leaves nothing pending."""
        if decision.verdict is not Verdict.APPROVE:
            raise ValueError(f"only 'approve' decisions are held, not {decision.verdict.value!r}")
        opening = self._track(self._open(request, decision, flow_summary))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, opening: asyncio.Task[PendingRequest]) -> None:
        """An opening whose caller was cancelled has finished: withdraw what it opened."""
        if opening.cancelled():
            return
        if opening.exception() is not None:
            log.error("an approval request whose holder went away failed to open: %r", opening.exception())
            return
        opened = opening.result().request
        if opened is not None:
            self._waiters.pop(opened.request_id, None)  # nobody will wait on it
            self._withdrawal(opened.request_id, DISCONNECTED)

    async def _open(self, request: Request, decision: Decision, flow_summary: dict[str, Any]) -> PendingRequest:
        spec = decision.approval
        if spec is None:
            return self._settled(None, f"rule {decision.rule!r} asks for approval but names no approvers")
        key = grant_key(request, decision.rule)
        try:
            grant = await self.store.take_grant(key, self.clock())
        except StoreError as exc:
            return self._settled(None, f"approval store unavailable: {exc}")
        if grant is not None:
            return await self._use_grant(request, decision, flow_summary, grant)
        agent = request.subject.agent
        if sum(w.request.agent == agent for w in self._waiters.values()) >= self.max_pending_per_agent:
            return self._settled(None, f"agent {agent} already has {self.max_pending_per_agent} operations waiting "
                                       "for approval; decide or withdraw those first")
        now = self.clock()
        identity = request.subject.identity
        pending = ApprovalRequest(
            request_id=new_request_id(),
            state=State.PENDING,
            agent=request.subject.agent,
            requester=identity.subject if identity else None,
            requester_user=identity.user_id if identity else None,
            identity=identity.summary() if identity else None,
            process=flow_summary.get("process"),
            flow_id=flow_summary.get("flow_id"),
            resource=request.resource,
            operation=operation_summary(request),
            rule=decision.rule,
            reason=decision.reason,
            approver_groups=tuple(spec.approver_groups),
            grant=spec.grant,
            grant_seconds=spec.grant_seconds,
            grant_key=key,
            created_at=now,
            expires_at=now + spec.timeout_seconds,
        )
        try:
            await self.store.create(pending)
        except StoreError as exc:
            return self._settled(None, f"approval store unavailable: {exc}")
        self._waiters[pending.request_id] = _Waiter(pending, asyncio.get_running_loop().create_future())
        try:
            await self._record(pending)
        except AuditUnavailable as exc:
            self._waiters.pop(pending.request_id)
            await self._finish_quietly(pending, State.DENIED, f"audit unavailable: {exc}")
            return self._settled(pending.request_id, f"audit unavailable: {exc}")
        self._announce("approval.opened", pending)
        self._start_sweeper()
        return PendingRequest(self, pending)

    async def approve(self, request_id: str, approver: Approver, for_seconds: int | None = None) -> ApprovalRequest:
        """Approve a pending request; `for_seconds` leaves a time-boxed grant for identical operations."""
        if for_seconds is not None and for_seconds <= 0:
            raise ApprovalError(f"--for must be a positive duration, not {for_seconds} seconds")
        pending = await self._pending(request_id)
        if approver.kind == "okta" and approver.subject in {pending.requester, pending.requester_user}:
            raise SelfApproval(f"{approver.subject} cannot approve their own request {pending.request_id}")
        self._authorize(pending, approver)
        now = self.clock()
        seconds = for_seconds or (pending.grant_seconds if pending.grant == "time-boxed" else 0)
        # A one-shot grant stays usable for one retry within the request's own timeout.
        until = now + (seconds or pending.expires_at - pending.created_at)
        grant = Grant(pending.request_id, pending.grant_key, not seconds, until, approver.subject)
        decided = self._decided(pending, State.APPROVED, approver, None, until if seconds else None)
        return await self._close(decided, grant)

    async def deny(self, request_id: str, approver: Approver, reason: str) -> ApprovalRequest:
        if not reason.strip():
            raise ApprovalError("denying needs a reason")
        pending = await self._pending(request_id)
        self._authorize(pending, approver)
        return await self._close(self._decided(pending, State.DENIED, approver, reason.strip(), None), None)

    async def withdraw(self, request_id: str, reason: str) -> ApprovalRequest | None:
        """Close a pending request as withdrawn (its client cancelled or went away): audited
        like a decision (`approval` event, state withdrawn, this reason), stored, announced,
        and its waiter here wakes with a withdrawn Outcome. Returns the withdrawn request
        (also when it was withdrawn already: the first reason stands); None when a decision
        came first (it stands) or there is no such request. Runs in a tracked task (see
        PendingRequest.withdraw); a withdrawal of the same request already running is joined.
        Never raises: when the store or the audit trail fails, that is logged and a waiter
        here still wakes, withdrawn (the operation is not run); the stored request then expires."""
        return await asyncio.shield(self._withdrawal(request_id, reason))

    def _withdrawal(self, request_id: str, reason: str) -> asyncio.Task[ApprovalRequest | None]:
        """The running withdrawal of this request, started now if there is none."""
        request_id = normalize_request_id(request_id)
        running = self._withdrawals.get(request_id)
        if running is None:
            running = self._withdrawals[request_id] = self._track(self._withdraw(request_id, reason))
            running.add_done_callback(lambda _: self._withdrawals.pop(request_id, None))
        return running

    async def _withdraw(self, request_id: str, reason: str) -> ApprovalRequest | None:
        waiter = self._waiters.get(request_id)
        if waiter is not None and waiter.future.done():
            return None  # decided here first; its waiter has not resumed yet
        try:
            stored = await self.store.get(request_id)
            if stored is None or stored.state is not State.PENDING:
                return stored if stored is not None and stored.state is State.WITHDRAWN else None
            return await self._close(self._decided(stored, State.WITHDRAWN, None, reason, None), None)
        except AlreadyDecided:
            return None
        except (AuditUnavailable, StoreError) as exc:
            log.warning("could not record the withdrawal of approval request %s: %s", request_id, exc)
        if waiter is None or waiter.future.done():
            return None
        withdrawn = self._decided(waiter.request, State.WITHDRAWN, None, reason, None)
        waiter.future.set_result(withdrawn)
        return withdrawn

    async def list(self, pending_only: bool = True) -> builtins.list[ApprovalRequest]:
        """Requests as stored; pending ones past their expiry show (and count) as expired."""
        now = self.clock()
        requests = [
            replace(r, state=State.EXPIRED) if r.state is State.PENDING and r.expires_at <= now else r
            for r in await self.store.list(pending_only)
        ]
        return [r for r in requests if r.state is State.PENDING] if pending_only else requests

    async def sweep(self) -> None:
        """Expire due requests and wake waiters whose request another host decided."""
        now = self.clock()
        pending = await self.store.list(pending_only=True)
        for request in pending:
            if request.expires_at <= now:
                await self._finish_quietly(request, State.EXPIRED, "no decision before the request expired")
        still_pending = {r.request_id for r in pending if r.expires_at > now}
        for request_id, waiter in list(self._waiters.items()):
            if request_id not in still_pending and not waiter.future.done():
                stored = await self.store.get(request_id)
                if stored is not None and stored.state is not State.PENDING and not waiter.future.done():
                    waiter.future.set_result(stored)

    async def close(self) -> None:
        """Withdraw the requests still waited on here (DISCONNECTED: the daemon is stopping),
        wait up to CLOSE_GRACE_SECONDS for withdrawals and openings in flight, stop the
        sweeper and flush webhooks; the store belongs to whoever opened it."""
        for request_id in list(self._waiters):
            self._withdrawal(request_id, DISCONNECTED)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE_SECONDS
        while self._tracked:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("%d approval withdrawals or openings still running at close", len(self._tracked))
                break
            await asyncio.wait(set(self._tracked), timeout=left)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.notifier is not None:
            await self.notifier.close()

    def _settled(self, request_id: str | None, reason: str) -> PendingRequest:
        log.warning("approval hold denied: %s", reason)
        return PendingRequest(self, None, Outcome(False, request_id, None, reason))

    async def _use_grant(self, request: Request, decision: Decision, flow: dict[str, Any], grant: Grant) -> PendingRequest:
        identity = request.subject.identity
        kind = "one-shot" if grant.one_shot else "time-boxed"
        event = AuditEvent(
            kind="approval",
            agent=request.subject.agent,
            decision="allow",
            rule=decision.rule,
            reason=f"covered by {kind} grant from request {grant.grant_id}",
            resource=request.resource,
            flow_id=flow.get("flow_id"),
            process=flow.get("process"),
            identity=identity.summary() if identity else None,
            operation=operation_summary(request),
            outcome={"request_id": grant.grant_id, "state": "granted", "approver": grant.approver, "grant": kind, "granted_until": grant.expires_at},
        )
        try:
            await self.audit.write(event)
        except AuditUnavailable as exc:
            return self._settled(grant.grant_id, f"audit unavailable: {exc}")
        return PendingRequest(self, None, Outcome(True, grant.grant_id, grant.approver, event.reason or ""))

    def _track(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `work` in a task kept until it ends, which close() waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._tracked.add(task)
        task.add_done_callback(self._tracked.discard)
        return task

    async def _wait(self, request: ApprovalRequest) -> Outcome:
        future = self._waiters[request.request_id].future
        deadline = request.expires_at - self.clock() + _LOCAL_GRACE_SECONDS
        try:
            decided = await asyncio.wait_for(future, max(deadline, 0.0))
        except TimeoutError:
            return Outcome(False, request.request_id, None, "no decision could be confirmed before the request expired")
        finally:
            self._waiters.pop(request.request_id, None)
        if decided.state is not State.APPROVED:
            reason = decided.decision_reason or decided.state.value
            return Outcome(False, decided.request_id, decided.approver, reason, decided.break_glass,
                           withdrawn=decided.state is State.WITHDRAWN)
        try:
            grant = await self.store.take_grant(decided.grant_key, self.clock(), decided.request_id)
        except StoreError as exc:
            return Outcome(False, decided.request_id, decided.approver, f"approval store unavailable: {exc}")
        if grant is None:
            return Outcome(False, decided.request_id, decided.approver, "the approval was already used by an identical operation")
        how = "break-glass approval by root" if decided.break_glass else f"approved by {decided.approver}"
        return Outcome(True, decided.request_id, decided.approver, how, decided.break_glass)

    async def _pending(self, request_id: str) -> ApprovalRequest:
        request = await self.store.get(normalize_request_id(request_id))
        if request is None:
            raise NotFound(f"no approval request {request_id!r}")
        if request.state is State.WITHDRAWN:
            raise AlreadyDecided(f"request {request.request_id} was withdrawn ({request.decision_reason}): "
                                 "nothing waits for a decision any more")
        if request.state is not State.PENDING:
            raise AlreadyDecided(f"request {request.request_id} is already {request.state.value}" + (f" by {request.approver}" if request.approver else ""))
        if request.expires_at <= self.clock():
            await self._finish_quietly(request, State.EXPIRED, "no decision before the request expired")
            raise Expired(f"request {request.request_id} expired before it was decided")
        return request

    @staticmethod
    def _authorize(request: ApprovalRequest, approver: Approver) -> None:
        if approver.kind == "root":
            return
        if not approver.groups & set(request.approver_groups):
            groups = ", ".join(request.approver_groups) or "(none: only root may decide)"
            raise NotAnApprover(f"{approver.subject} is not in an approver group of rule {request.rule!r}: {groups}")

    def _decided(self, request: ApprovalRequest, state: State, approver: Approver | None, reason: str | None, until: float | None) -> ApprovalRequest:
        return replace(
            request,
            state=state,
            decided_at=self.clock(),
            approver=approver.subject if approver else None,
            approver_kind=approver.kind if approver else None,
            break_glass=approver is not None and approver.kind == "root",
            decision_reason=reason,
            granted_until=until,
        )

    async def _close(self, decided: ApprovalRequest, grant: Grant | None) -> ApprovalRequest:
        """Record the decision, then apply it: nothing takes effect that the audit log lacks."""
        await self._record(decided)
        if not await self.store.finish(decided, grant):
            current = await self.store.get(decided.request_id)
            state = current.state.value if current else "gone"
            await self._record(replace(decided, state=current.state if current else State.DENIED, decision_reason=f"superseded: request was already {state}"))
            raise AlreadyDecided(f"request {decided.request_id} was decided elsewhere first ({state})")
        waiter = self._waiters.get(decided.request_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(decided)
        self._announce("approval.closed", decided)
        return decided

    async def _finish_quietly(self, request: ApprovalRequest, state: State, reason: str) -> None:
        """Close a request the system decided (expired, failed); trouble is logged, not raised."""
        try:
            await self._close(self._decided(request, state, None, reason, None), None)
        except (ApprovalError, AuditUnavailable, StoreError) as exc:
            log.warning("could not close approval request %s as %s: %s", request.request_id, state.value, exc)

    async def _record(self, request: ApprovalRequest) -> None:
        await self.audit.write(
            AuditEvent(
                kind="approval",
                agent=request.agent,
                decision=_AUDIT_DECISION[request.state],
                rule=request.rule,
                reason=request.decision_reason or request.reason,
                resource=request.resource,
                flow_id=request.flow_id,
                process=request.process,
                identity=request.identity,
                operation=request.operation,
                outcome={
                    "request_id": request.request_id,
                    "state": request.state.value,
                    "approver": request.approver,
                    "approver_kind": request.approver_kind,
                    "break_glass": request.break_glass,
                    "expires_at": request.expires_at,
                    "granted_until": request.granted_until,
                },
            )
        )

    def _announce(self, event: str, request: ApprovalRequest) -> None:
        if self.notifier is not None:
            self.notifier.notify({"event": event, "sent_at": self.clock(), "request": request.to_dict()})

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="approvals-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("approval sweep failed: %s", exc)
