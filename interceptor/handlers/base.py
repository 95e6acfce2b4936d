"""The one small interface between the enforcer and a protocol handler.

The enforcer accepts a diverted connection, attributes it (FlowContext), checks that the
agent may open it at all, and hands the connected client socket to the handler of the
resource's protocol. The handler turns bytes into operations, asks `services.decide`,
reports through `services.audit`, and owns both sockets until the flow ends.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from interceptor.audit.event import AuditEvent, AuditSink, SharedSummary
from interceptor.decision import Decision
from interceptor.flow import FlowContext
from interceptor.identity.model import Identity
from interceptor.operations import Operation, Request, Subject


@dataclass(slots=True)
class Traffic:
    """Bytes a flow has carried so far; handlers add as they forward."""

    up: int = 0  # client to server
    down: int = 0  # server to client


@dataclass(slots=True)
class Services:
    """What the daemon lends a handler for one flow."""

    decide: Callable[[Request], Decision]
    audit: AuditSink
    identity: Callable[[], Identity | None]  # the agent's identity now (None: refuse)
    resource: Any  # interceptor.policy ResourceSpec of the flow's resource
    credentials: Callable[[], Awaitable[dict[str, str]]]  # upstream secrets, resolved on demand
    approvals: Any = None  # interceptor.approvals broker, when the daemon has one
    catalogs: Any = None  # interceptor.handlers.postgres.catalog.CatalogStore, when the daemon has one
    scan_errors: bool = True  # run the value classifiers on every error and notice text
    epoch: Callable[[], object] = lambda: None  # changes when the policy or the identity does
    traffic: Traffic = field(default_factory=Traffic)  # bytes so far, for `interceptor sessions`
    _who: tuple = field(default=(None, None, None), repr=False)  # (process, identity, its summary), built once

    def request(self, flow: FlowContext, operation: Operation, **labels: str) -> Request:
        subject = Subject(flow.agent, self.identity(), flow.process.exe, flow.process.uid)
        return Request(subject, flow.resource or "", operation, dict(flow.labels, **labels))

    def event(self, flow: FlowContext, kind: str, decision: Decision | None = None, *,
              verdict: str | None = None, rule: str | None = None, reason: str | None = None,
              **fields: Any) -> AuditEvent:
        """An audit event carrying the flow's who and where, so handlers only add the what.
        The process and identity summaries are built once per flow (and identity) and shared
        by its events; the audit sink copies what it keeps."""
        identity = self.identity()
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
            **fields,
        )


class Handler(Protocol):
    protocol: str

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        """Serve one attributed client connection until it ends; never raise for bad input."""
