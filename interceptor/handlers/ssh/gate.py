"""What the parts of the ssh handler that serve one channel (exec, shell, SFTP, forwards) ask
of the connection: a decision for each SshRequest, and a record of how it ended.

asyncssh carries both SSH connections (the agent's, served with a host certificate of the
SSH host CA, and the one to the server, logged in with the resource's credentials), so the
ssh handler does its own I/O in asyncssh's callbacks; the judging, holding and recording go
through this one interface, which the connection implements on FlowJudge, the approval
broker and the audit sink (interceptor.handlers.ssh.connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from interceptor.decision import Decision
from interceptor.operations import SshRequest


@dataclass(frozen=True, slots=True)
class Authorized:
    """An allowed request: the allowing Decision and the event id of its "ssh" record, which
    its "ssh-end" record names (outcome "request_event") so each end is linked to its request."""

    decision: Decision
    event_id: str


class Gate(Protocol):
    async def authorize(self, operation: SshRequest) -> Authorized:
        """Judge `operation`; when the policy says approve, hold it until a person decides
        (telling the agent it waits, where the channel can carry that). The decision is
        recorded (kind "ssh"; durable before this returns in strict audit) whatever it is.
        Returns the allowing Decision with that record's event id; raises
        interceptor.errors.Refused with the reason the agent is shown (it names the rule) when
        the operation may not run, and AuditUnavailable when the record cannot be written (the
        operation must not run)."""

    async def finished(self, authorized: Authorized, operation: SshRequest, outcome: dict[str, object]) -> None:
        """Record how an allowed operation ended (kind "ssh-end", under `authorized`'s
        decision): `outcome` holds what the channel saw, e.g. {"exit_status": 0,
        "bytes_up": 12, "bytes_down": 3400, "seconds": 0.8, "recording": {...}}; the record's
        outcome adds "request_event", the event id of the request's "ssh" record. Never
        raises: a failure is logged."""
