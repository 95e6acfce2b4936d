"""The approval broker: holds risky operations until a person decides, in the daemon.

A hold is first checked against live grants; otherwise it becomes a pending request
(stored, audited, announced) that the handler awaits while its connection stays open.
Approvers act through `approve` / `deny`; a sweeper expires requests and notices
decisions made by another host of a fleet sharing the store. Every failure denies.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
from interceptor.audit.event import AuditEvent, AuditSink, AuditUnavailable
from interceptor.decision import Decision, Verdict
from interceptor.operations import Request

log = logging.getLogger(__name__)

# A waiter gives up this long after its request's expiry even if the store cannot say so.
_LOCAL_GRACE_SECONDS = 5.0
_AUDIT_DECISION = {State.PENDING: "approve", State.APPROVED: "allow", State.DENIED: "deny", State.EXPIRED: "deny"}


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
        if self._outcome is None:
            assert self.request is not None
            self._outcome = await self._broker._wait(self.request)
        return self._outcome


class ApprovalBroker:
    def __init__(
        self,
        store: ApprovalStore,
        audit: AuditSink,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.notifier = WebhookNotifier(webhook_url) if webhook_url else None
        self._waiters: dict[str, asyncio.Future[ApprovalRequest]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def hold(self, request: Request, decision: Decision, flow_summary: dict[str, Any]) -> Outcome:
        """Open and wait: the outcome of a held operation."""
        return await (await self.open(request, decision, flow_summary)).wait()

    async def open(self, request: Request, decision: Decision, flow_summary: dict[str, Any]) -> PendingRequest:
        """Use a live grant, or open a pending request; never raises for store or audit trouble."""
        if decision.verdict is not Verdict.APPROVE:
            raise ValueError(f"only 'approve' decisions are held, not {decision.verdict.value!r}")
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
        self._waiters[pending.request_id] = asyncio.get_running_loop().create_future()
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
        for request_id, future in list(self._waiters.items()):
            if request_id not in still_pending and not future.done():
                stored = await self.store.get(request_id)
                if stored is not None and stored.state is not State.PENDING:
                    future.set_result(stored)

    async def close(self) -> None:
        """Stop the sweeper and flush webhooks; the store belongs to whoever opened it."""
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

    async def _wait(self, request: ApprovalRequest) -> Outcome:
        future = self._waiters[request.request_id]
        deadline = request.expires_at - self.clock() + _LOCAL_GRACE_SECONDS
        try:
            decided = await asyncio.wait_for(future, max(deadline, 0.0))
        except TimeoutError:
            return Outcome(False, request.request_id, None, "no decision could be confirmed before the request expired")
        finally:
            self._waiters.pop(request.request_id, None)
        if decided.state is not State.APPROVED:
            reason = decided.decision_reason or decided.state.value
            return Outcome(False, decided.request_id, decided.approver, reason, decided.break_glass)
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
        future = self._waiters.get(decided.request_id)
        if future is not None and not future.done():
            future.set_result(decided)
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
