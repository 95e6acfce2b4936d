"""Accept diverted connections, attribute them, check the connection-level policy and hand
them to the resource's protocol handler. Anything that cannot be attributed is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import ipaddress
import logging
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable, Callable, Coroutine

from interceptor.approvals.broker import ApprovalBroker
from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.decision import Decision, Verdict
from interceptor.enforcer.attribution import AttributionError, attribute
from interceptor.enforcer.judge import UNKNOWN_REASON, FlowJudge
from interceptor.policy.learn import learning_of
from interceptor.errors import AuditUnavailable
from interceptor.flow import Endpoint, FlowContext
from interceptor.handlers import Services, handler_for
from interceptor.handlers.base import Certificates, SshHostKeys, Traffic
from interceptor.handlers.postgres.catalog import CatalogStore
from interceptor.identity.model import Identity
from interceptor.operations import Request, TcpConnect
from interceptor.redirect import Redirect
from interceptor.runtime import Snapshot

log = logging.getLogger(__name__)
Peer = tuple[str, int]  # an accepted socket's peer address (host, port; IPv6 adds two fields we ignore)
# Refused connects attributed at once (iptables); more are reset and audited unattributed at
# once, so a flood of them neither holds sockets open nor takes the worker threads that
# diverted flows' attribution needs.
REFUSALS_ATTRIBUTED_AT_ONCE = 16


@dataclass(slots=True)
class Session:
    """A live flow, for `interceptor sessions`, and its judge (None: not judged yet)."""

    flow: FlowContext
    client: socket.socket
    traffic: Traffic
    judge: FlowJudge | None = None
    started: float = field(default_factory=time.time)


def _reset(sock: socket.socket) -> None:
    """Close with RST so the client sees the refusal at once, not an orderly EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed by a handler that failed half-way
    sock.close()


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    if backlog:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _unattributed(peer: Peer, why: str) -> AuditEvent:
    """The connect_denied record of a refused connect from `peer` that was not attributed."""
    return AuditEvent(kind="connect_denied", decision="deny", rule="attribution",
                      reason=f"refused connect from {peer[0]}:{peer[1]} not attributed: {why}")


class Enforcer:
    def __init__(self, redirect: Redirect, audit: AuditSink, snapshot: Callable[[], Snapshot],
                 identity: Callable[[str], Identity | None], identity_required: Callable[[str], bool],
                 credentials: Callable[[str], Awaitable[dict[str, str]]], approvals: ApprovalBroker | None = None, *,
                 catalogs: CatalogStore | None = None,
                 certificates: Certificates | None = None,
                 ssh_host_ca: SshHostKeys | None = None,
                 recordings: Path | None = None,
                 scan_errors: bool = True,
                 mask_key: bytes = b"",
                 on_connection: Callable[[str | None, str | None, str], None] = lambda agent, resource, decision: None,
                 on_decision: Callable[[Decision], None] = lambda decision: None,
                 refused: Callable[[socket.socket], AuditEvent] | None = None,
                 identity_reason: Callable[[str], str] = lambda agent: UNKNOWN_REASON) -> None:
        self.redirect = redirect
        self.audit = audit
        self.snapshot = snapshot
        self.identity = identity
        self.identity_required = identity_required
        self.identity_reason = identity_reason  # why an agent has no valid identity, for its refusals
        self.credentials = credentials
        self.approvals = approvals
        self.catalogs = catalogs  # interceptor.handlers.postgres.catalog.CatalogStore
        self.certificates = certificates  # the host CA for agent-facing TLS; None when it could not be loaded
        self.ssh_host_ca = ssh_host_ca  # the SSH host CA for the ssh handler; None when it could not be loaded
        self.recordings = recordings  # the root-only directory of shell recordings; None when it could not be made
        self.scan_errors = scan_errors  # classifiers on every error and notice text
        self.mask_key = mask_key  # HMAC key of mask style hash (interceptor.masking.key)
        self.on_connection = on_connection  # (agent, resource, allow|deny), for metrics
        self.on_decision = on_decision  # every operation's decision, for metrics
        # The connect_denied record of a connection accepted on the refuse port (blocking);
        # None when the redirect reports refused connects itself (BPF) and the port is only bound.
        self.refused = refused
        self.sessions: dict[str, Session] = {}
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusals_attributing = 0

    async def start(self, port: int, refuse_port: int) -> None:
        """Listen on `port` for diverted connections. `refuse_port` is bound so nothing else
        takes it: never listening (connects the kernel refuses there get RST) unless `refused`
        was given (iptables), then each connection there is attributed, reset and audited."""
        refused = self.refused
        for host in ("127.0.0.1", "::1"):
            listener = _listen(host, port, 4096)
            self._sockets.append(listener)
            self._spawn(self._accept_loop(listener, self._serve))
            refuser = _listen(host, refuse_port, 4096 if refused else 0)
            self._sockets.append(refuser)
            if refused is not None:
                self._spawn(self._accept_loop(refuser, functools.partial(self._serve_refused, refused)))

    async def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket,
                           serve: Callable[[socket.socket, Peer], Coroutine[object, object, None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept: %s; backing off", exc)
                    await asyncio.sleep(0.1)
                    continue
                raise
            self._spawn(serve(conn, peer))

    async def _refuse(self, conn: socket.socket, event: AuditEvent) -> None:
        _reset(conn)
        self.on_connection(event.agent, event.resource, "deny")
        try:
            await self.audit.write(event)
        except AuditUnavailable as exc:
            log.error("audit unavailable while refusing a flow: %s", exc)

    async def _serve(self, conn: socket.socket, peer: Peer) -> None:
        """Any failure closes the connection: a flow is never forwarded unjudged."""
        try:
            await self._attribute_and_hand_over(conn, peer)
        except Exception as exc:
            log.exception("flow from %s:%s failed", peer[0], peer[1])
            await self._refuse(conn, AuditEvent(kind="connection", decision="deny", rule="internal-error",
                                                reason=f"{type(exc).__name__}: {exc}"))

    async def _serve_refused(self, refused: Callable[[socket.socket], AuditEvent], conn: socket.socket,
                             peer: Peer) -> None:
        """A connect the kernel refused, accepted on the refuse port: attributed, reset, audited
        as connect_denied. Nothing is read, written or forwarded; a failed or skipped (flood)
        attribution still resets and audits what is known (the peer address)."""
        if self._refusals_attributing >= REFUSALS_ATTRIBUTED_AT_ONCE:
            await self._refuse(conn, _unattributed(peer, f"{REFUSALS_ATTRIBUTED_AT_ONCE} others are being attributed"))
            return
        self._refusals_attributing += 1
        try:
            event = await asyncio.to_thread(refused, conn)
        except Exception as exc:
            log.exception("refused connect from %s:%s could not be attributed", peer[0], peer[1])
            event = _unattributed(peer, f"{type(exc).__name__}: {exc}")
        finally:
            self._refusals_attributing -= 1
        await self._refuse(conn, event)

    async def _attribute_and_hand_over(self, conn: socket.socket, peer: Peer) -> None:
        if self.redirect.slow_origin:
            origin = await asyncio.to_thread(self.redirect.origin, conn)
        else:
            origin = self.redirect.origin(conn)
        if origin is None:
            await self._refuse(conn, AuditEvent(kind="connection", decision="deny", rule="no-origin",
                                                reason=f"no origin record for {peer[0]}:{peer[1]} (not diverted by "
                                                       "the kernel, or dialed directly)"))
            return
        snap = self.snapshot()
        agent = snap.plan.agent_name(origin.agent_index)
        resource = snap.plan.resource_names.get(origin.resource_index)
        try:
            process = attribute(origin)
        except AttributionError as exc:
            await self._refuse(conn, AuditEvent(kind="connection", agent=agent, resource=resource, decision="deny",
                                                rule="attribution", reason=str(exc),
                                                operation={"dst": f"{origin.dst_ip}:{origin.dst_port}"}))
            return
        flow = FlowContext(uuid.uuid4().hex[:16], agent or "", process,
                           Endpoint(origin.dst_ip, origin.dst_port),
                           Endpoint(ipaddress.ip_address(peer[0]), peer[1]), resource)
        judge = FlowJudge(flow, lambda: self.snapshot().engine, lambda: self.identity(flow.agent),
                          lambda: self.identity_required(flow.agent), self.on_decision,
                          identity_reason=lambda: self.identity_reason(flow.agent),
                          learns=lambda agent, resource: learning_of(self.snapshot().modes.learning, agent, resource),
                          shadow=lambda agent: self.snapshot().modes.shadows.get(agent))
        request = judge.request(TcpConnect())
        decision = self._connection_decision(snap, judge, request)
        if isinstance(decision, Decision) and decision.verdict is Verdict.APPROVE:
            decision = await self._hold(flow, request, decision) or decision
        if isinstance(decision, AuditEvent):
            await self._refuse(conn, decision)
            return
        judge.flow = flow = dataclasses.replace(flow, connection_rule=decision.rule)
        spec = snap.policy.resources[flow.resource or ""]
        services = Services(judge=judge, audit=self.audit, resource=spec,
                            credentials=lambda: self.credentials(spec.name), approvals=self.approvals,
                            catalogs=self.catalogs, certificates=self.certificates,
                            scan_errors=self.scan_errors, mask_key=self.mask_key, ssh_host_ca=self.ssh_host_ca,
                            recordings=self.recordings)
        self.on_connection(flow.agent, resource, "allow")
        session = Session(flow, conn, services.traffic, judge)
        self.sessions[flow.flow_id] = session
        try:
            await handler_for(spec.protocol).serve(flow, conn, services)
        finally:
            del self.sessions[flow.flow_id]

    def close_sessions(self, agent: str, reason: str, rule: str | None = None) -> int:
        """Cut an agent's open flows (identity `on_invalid: close`), or only those in which
        `rule` allowed the connection or an operation (a learn run that ended: an upgraded
        HTTP connection, a watch or a command judged once goes on relaying until cut, whatever
        rule let the connection open); returns how many."""
        closed = 0
        for session in list(self.sessions.values()):
            if session.flow.agent == agent and (rule in (None, session.flow.connection_rule) or (
                    session.judge is not None and rule in session.judge.allowed_by)):
                log.info("closing flow %s of agent %s: %s", session.flow.flow_id, agent, reason)
                try:
                    session.client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                closed += 1
        return closed

    async def _hold(self, flow: FlowContext, request: Request, decision: Decision) -> AuditEvent | None:
        """A connection the policy wants a person to approve: it waits, accepted but with no
        bytes forwarded, until approved (None), or denied or expired (the refusal)."""
        if self.approvals is None:
            return AuditEvent(kind="connection", agent=flow.agent, resource=flow.resource, flow_id=flow.flow_id,
                              decision="deny", rule=decision.rule, reason="approval needed but no approval broker")
        pending = await self.approvals.open(request, decision, flow.summary())
        log.info("flow %s of %s held for approval %s", flow.flow_id, flow.agent, pending.request_id)
        outcome = await pending.wait()
        if outcome.approved:
            return None
        return AuditEvent(kind="connection", agent=flow.agent, resource=flow.resource, flow_id=flow.flow_id,
                          process=flow.process.summary(), decision="deny", rule=decision.rule,
                          reason=f"approval {outcome.request_id} not granted: {outcome.reason or 'denied'}")

    def _connection_decision(self, snap: Snapshot, judge: FlowJudge, request: Request) -> Decision | AuditEvent:
        """The decision when the flow may proceed (allow or approve); otherwise the audit
        record of why not."""
        flow = judge.flow
        where = {"dst": str(flow.original_dst)}
        if not flow.agent or not flow.resource or flow.resource not in snap.policy.resources:
            return AuditEvent(kind="connection", agent=flow.agent or None, resource=flow.resource,
                              flow_id=flow.flow_id, process=flow.process.summary(), operation=where,
                              decision="deny", rule="stale-plan", reason="agent or resource no longer in the policy")
        identity = request.subject.identity
        decision = judge.judged(request, snap.engine)
        if decision.verdict is Verdict.DENY:
            return AuditEvent(kind="connection", agent=flow.agent, resource=flow.resource, flow_id=flow.flow_id,
                              process=flow.process.summary(), operation=where, decision="deny", rule=decision.rule,
                              reason=decision.reason, identity=identity.summary() if identity else None)
        return decision
