"""What the enforcer lends a protocol handler for one flow, and the handler interface.

The enforcer accepts a diverted connection, attributes it (FlowContext), checks that the
agent may open it at all, and hands the connected client socket to the handler of the
resource's protocol (`Handler.serve`). The handler logs in upstream where its protocol needs
it, then runs its sans-IO session on the driver (interceptor.enforcer.driver), which asks
`services.judge` about every operation and records each in `services.audit`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from interceptor.audit.event import AuditEvent, AuditSink, SharedSummary
from interceptor.decision import Decision
from interceptor.errors import AuditUnavailable, Fault, InterceptorError
from interceptor.flow import FlowContext
from interceptor.identity.model import Identity
from interceptor.policy.model import ResourceSpec
from interceptor.secrets import SecretError

if TYPE_CHECKING:  # asyncio and cryptography machinery the policy side does not need
    from interceptor.approvals.broker import ApprovalBroker
    from interceptor.certificates import AgentTLS
    from interceptor.enforcer.judge import FlowJudge
    from interceptor.handlers.postgres.catalog import CatalogStore
    import asyncssh


@dataclass(slots=True)
class Traffic:
    """Bytes a flow has carried so far; the driver adds as it forwards."""

    up: int = 0  # client to server
    down: int = 0  # server to client


class Certificates(Protocol):
    """Agent-facing TLS: contexts presenting leaf certificates issued by the host CA the
    agent's system trusts (interceptor.certificates.HostCA; docs/architecture.md,
    "Agent-facing TLS")."""

    def agent_context(self, default_name: str) -> AgentTLS:
        """One flow's context to accept the agent's TLS with (server side): it presents the
        certificate for the SNI the agent sends, or for `default_name` (the original
        destination IP) when it sends none; after the handshake `.server_name` is the SNI
        (None without one), and `.refusal` says why a handshake failed for a bad name.
        ClientProtocolError when `default_name` is not a hostname or IP address."""

    def server_context(self, server_name: str) -> ssl.SSLContext:
        """A server-side context presenting a certificate for `server_name` (a hostname or
        IP address); ClientProtocolError when it is neither."""


class SshHostKeys(Protocol):
    """The SSH host CA (interceptor.ssh_certificates.SshHostCA): host certificates the
    enforcer presents to agents, whose known_hosts trust the CA (`interceptor trust install`
    writes an `@cert-authority` line; OpenSSH PROTOCOL.certkeys)."""

    def server_host_key(self, principals: Sequence[str]) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """A host key and its certificate, signed by the CA, valid for `principals` (host
        names and IP addresses)."""


log = logging.getLogger(__name__)
T = TypeVar("T")
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
    mask_key: bytes = b""  # HMAC key of mask style hash (interceptor.masking.key); empty: hash is refused
    ssh_host_ca: SshHostKeys | None = None  # host certificates for the ssh handler; None: not loadable
    recordings: Path | None = None  # the root-only directory interactive sessions are recorded in
    traffic: Traffic = field(default_factory=Traffic)  # bytes so far, for `interceptor sessions`
    _who: Who = field(default=(None, None, None), repr=False)  # built once per flow (and identity)

    def event(self, flow: FlowContext, kind: str, decision: Decision | None = None, *,
              verdict: str | None = None, rule: str | None = None, reason: str | None = None,
              operation: dict[str, object] | None = None, outcome: dict[str, object] | None = None) -> AuditEvent:
        """An audit event carrying the flow's who and where, so handlers only add the what.
        The process and identity summaries are built once per flow (and identity) and shared
        by its events; the audit sink copies what it keeps. While the flow is learned or
        shadowed its operation carries the marks (`marked`); the connection record of a `tcp`
        flow (whose only operation is its connection; every other protocol's operations carry
        their own), what the candidate decides of the connection (FlowJudge.connection_shadow)."""
        learn = self.judge.learning()
        judged = decision
        if decision is None and kind == "connection" and self.resource.protocol == "tcp":
            judged = self.judge.connection_shadow()
        if learn is not None or (judged is not None and judged.shadow is not None):
            operation = marked(operation, judged, learn)
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


def marked(operation: dict[str, object] | None, decision: Decision | None, learn: str | None) -> dict[str, object]:
    """A copy of a record's operation with the learn and shadow marks (docs/guide.md, "Learn
    mode"): `learn`, the learn session id, and for a SQL decision `analysis`, per statement
    its kind, verdict, rule and how each action and function call was judged (what `policy
    suggest` reads); `shadow`, what the candidate policy decided (Shadow.record)."""
    copy = dict(operation or {})
    if learn is not None:
        copy["learn"] = learn
        if decision is not None and decision.details:
            copy["analysis"] = [{key: detail.get(key) for key in ANALYSIS_KEYS} for detail in decision.details]
    if decision is not None and decision.shadow is not None:
        copy["shadow"] = decision.shadow.record(decision.verdict)
    return copy


ANALYSIS_KEYS = ("kind", "verdict", "rule", "judged")


@dataclass(slots=True)
class FlowEnd:
    """How a flow ended, for its connection record: the error that ended it (None: it ended
    normally), whose fault that was, and what the handler adds to the record."""

    error: str | None = None
    fault: Fault | None = None
    details: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)  # when the flow was handed to its handler

    def failed(self, error: InterceptorError) -> None:
        """The flow failed with `error`, unless it had failed already: the first error is
        the cause, what fails after it (a refusal that cannot be sent, a connection closed
        meanwhile) its consequence."""
        if self.error is None:
            self.error, self.fault = str(error), error.fault

    @property
    def verdict(self) -> str:
        """The record's verdict: `allow` without an error, `deny` for the policy's or the
        agent's fault, `error` for any other."""
        if self.error is None:
            return "allow"
        return "deny" if self.fault in (Fault.POLICY, Fault.CLIENT) else "error"

    async def record(self, flow: FlowContext, services: Services, protocol: str, *,
                     operation: dict[str, object] | None = None, outcome: dict[str, object] | None = None) -> None:
        """Write the flow's connection record (kind `connection`, the connection rule, the
        verdict, the error as the reason). Its operation: `protocol`, `dst` (the original
        destination, ip:port) and `operation`; its outcome: `bytes_up` and `bytes_down`
        (services.traffic), `duration_ms` since `started`, `error`, `fault` and `outcome`.
        An audit sink that cannot take it is logged: the flow is over, nothing is left to deny."""
        traffic = services.traffic
        try:
            await services.audit.write(services.event(
                flow, "connection", verdict=self.verdict, rule=flow.connection_rule, reason=self.error,
                operation={"protocol": protocol, "dst": str(flow.original_dst), **(operation or {})},
                outcome={"bytes_up": traffic.up, "bytes_down": traffic.down,
                         "duration_ms": round((time.monotonic() - self.started) * 1000, 3), "error": self.error,
                         "fault": self.fault.value if self.fault else None, **(outcome or {})}))
        except AuditUnavailable as exc:
            log.error("audit unavailable for flow %s: %s", flow.flow_id, exc)


async def resolved_credentials(services: Services, use: Callable[[dict[str, str]], T],
                               error: type[InterceptorError]) -> T | None:
    """The resource's credentials (`services.credentials`, a mapping of key to value) as
    `use` makes them; None when the resource names no credentials. `error` (the handler's
    credentials error) when the source fails, or when `use` raises `error`; its message names
    the resource and never quotes a value (a failure of the source other than SecretError is
    named by its type only)."""
    name = services.resource.name
    if not services.resource.credentials:
        return None
    try:
        secrets = await services.credentials()
    except SecretError as exc:
        raise error(f"credentials for resource {name!r} are unavailable: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the source refuses the flow, never quoting it
        raise error(f"credentials for resource {name!r} are unavailable: {type(exc).__name__}") from None
    try:
        return use(secrets)
    except error as exc:
        raise error(f"credentials for resource {name!r}: {exc}") from None


def resource_option(resource: ResourceSpec, name: str) -> object:
    """A protocol option of the resource (`options:` in the policy), None when absent."""
    return (resource.options or {}).get(name)


class Handler(Protocol):
    protocol: str

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        """Serve one attributed client connection until it ends; never raise for bad input."""

