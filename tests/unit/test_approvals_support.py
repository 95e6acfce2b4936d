"""Shared pieces for the approval tests: requests, decisions, a clock and audit sinks."""

from __future__ import annotations

from interceptor.audit.event import AuditEvent
from interceptor.decision import ApprovalSpec, Decision, Verdict
from interceptor.errors import AuditUnavailable
from interceptor.identity.model import Identity
from interceptor.operations import Request, SqlQuery, Subject

FLOW = {"flow_id": "f-1", "process": {"pid": 4242, "exe": "/usr/bin/python3"}}


def sql_request(text: str = "DELETE FROM orders WHERE id = 7", subject: str = "agent-app", user: str = "alice@example.com") -> Request:
    identity = Identity(issuer="https://okta.example", subject=subject, user_id=user, groups=frozenset({"agents"}))
    return Request(Subject("claude", identity, "/usr/bin/python3", 1000), "orders-db", SqlQuery(text, "orders"))


def approve_decision(timeout: int = 300, grant: str = "one-shot", grant_seconds: int = 0, groups: tuple[str, ...] = ("dba",)) -> Decision:
    spec = ApprovalSpec(groups, grant=grant, grant_seconds=grant_seconds, timeout_seconds=timeout)
    return Decision(Verdict.APPROVE, "prod-writes", "writes to orders need a DBA", approval=spec)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ListSink:
    """An AuditSink that keeps events in memory (a real sink of the protocol, for reading back)."""

    capture = False  # no session bytes are kept

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.down = False

    async def write(self, event: AuditEvent) -> None:
        self.submit(event)

    def submit(self, event: AuditEvent) -> None:
        if self.down:
            raise AuditUnavailable("audit disk full")
        self.events.append(event)

    async def close(self) -> None:
        self.down = True

    def states(self) -> list[str]:
        return [event.outcome["state"] for event in self.events if event.kind == "approval" and event.outcome]
