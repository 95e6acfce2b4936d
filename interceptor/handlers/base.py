"""What the enforcer lends a protocol handler for one flow, and the handler interface.

The enforcer accepts a diverted connection, attributes it (FlowContext), checks that the
agent may open it at all, and hands the connected client socket to the handler of the
resource's protocol (`Handler.serve`). The handler logs in upstream where its protocol needs
it, then runs its sans-IO session on the driver (interceptor.enforcer.driver), which asks
`services.judge` about every operation and records each in `services.audit`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from interceptor.audit.event import AuditEvent, AuditSink, SharedSummary
from interceptor.decision import Decision
from interceptor.flow import FlowContext
from interceptor.identity.model import Identity
from interceptor.policy.model import ResourceSpec

if TYPE_CHECKING:  # both import asyncio machinery the policy side does not need
    from interceptor.approvals.broker import ApprovalBroker
    from interceptor.enforcer.judge import FlowJudge
    from interceptor.handlers.postgres.catalog import CatalogStore


@dataclass(slots=True)
class Traffic:
    """Bytes a flow has carried so far; the driver adds as it forwards."""

    up: int = 0  # client to server
    down: int = 0  # server to client


class Certificates(Protocol):
    """Agent-facing TLS: a server context presenting a certificate for `server_name` (the
    SNI the agent asked for), issued by the host CA the agent's system trusts."""

    def server_context(self, server_name: str) -> ssl.SSLContext:
        """The context to accept the agent's TLS with; raises ssl.SSLError when none can be issued."""


Who = tuple[SharedSummary | None, Identity | None, SharedSummary | None]  # process, identity, its summary


@dataclass(slots=True)
class Services:
    """What the daemon lends a handler for one flow."""

    judge: FlowJudge  # the one place an operation of this flow becomes a Decision
    audit: AuditSink
    resource: ResourceSpec  # the flow's resource as the policy defines it
    credentials: Callable[[], Awaitable[dict[str, str]]]  # upstream secrets, resolved on demand
    approvals: ApprovalBroker | None = None
    catalogs: CatalogStore | None = None  # PostgreSQL catalogs the daemon caches
    certificates: Certificates | None = None  # agent-facing TLS, for protocols that terminate it
    scan_errors: bool = True  # run the value classifiers on every error and notice text
    traffic: Traffic = field(default_factory=Traffic)  # bytes so far, for `interceptor sessions`
    _who: Who = field(default=(None, None, None), repr=False)  # built once per flow (and identity)

    def event(self, flow: FlowContext, kind: str, decision: Decision | None = None, *,
              verdict: str | None = None, rule: str | None = None, reason: str | None = None,
              operation: dict[str, object] | None = None, outcome: dict[str, object] | None = None) -> AuditEvent:
        """An audit event carrying the flow's who and where, so handlers only add the what.
        The process and identity summaries are built once per flow (and identity) and shared
        by its events; the audit sink copies what it keeps."""
        identity = self.judge.identity()
        process, known, summary = self._who
        if process is None or known is not identity:
            process = process or SharedSummary(flow.process.summary())
            summary = SharedSummary(identity.summary()) if identity else None
            self._who = (process, identity, summary)
        return AuditEvent(
            kind=kind,
            agent=flow.agent,
            decision=decision.verdict.value if decision else verdict,
            rule=decision.rule if decision else rule,
            reason=decision.reason if decision else reason,
            resource=flow.resource,
            flow_id=flow.flow_id,
            process=process,
            identity=summary,
            operation=operation,
            outcome=outcome,
        )


def resource_option(resource: ResourceSpec, name: str) -> object:
    """A protocol option of the resource (`options:` in the policy), None when absent."""
    return (resource.options or {}).get(name)


class Handler(Protocol):
    protocol: str

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        """Serve one attributed client connection until it ends; never raise for bad input."""

