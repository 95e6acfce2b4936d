"""Approval requests, grants, approvers and outcomes, and the errors approvers see."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from interceptor.operations import Request

# Crockford base32: no I, L, O, U, so an id read aloud or retyped is not misread.
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_READS_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


class ApprovalError(Exception):
    """An approver's action was refused; the message says why."""


class NotFound(ApprovalError):
    pass


class AlreadyDecided(ApprovalError):
    pass


class Expired(ApprovalError):
    pass


class NotAnApprover(ApprovalError):
    pass


class SelfApproval(ApprovalError):
    pass


class StoreError(RuntimeError):
    """The approval store failed; holds fail closed (denied)."""


class State(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the client that asked cancelled the operation or went away


def new_request_id() -> str:
    """8 Crockford base32 characters (40 random bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def normalize_request_id(text: str) -> str:
    """Accept ids typed in lower case or with O/I/L for 0/1/1, as Crockford base32 allows."""
    return text.strip().upper().translate(_ID_READS_AS)


def operation_summary(request: Request) -> dict[str, Any]:
    """What the approver sees and a grant covers: the operation's own summary (its protocol
    decides what of the session's state belongs to it)."""
    return dict(request.operation.summary())


def grant_key(request: Request, rule: str) -> str:
    """What a grant covers: this agent and identity, this resource and rule, this exact operation."""
    identity = request.subject.identity
    material = {
        "agent": request.subject.agent,
        "subject": identity.subject if identity else None,
        "resource": request.resource,
        "rule": rule,
        "operation": operation_summary(request),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Approver:
    """A person acting on a request: an Okta identity with its groups, or local root (break-glass)."""

    kind: str  # okta | root
    subject: str
    groups: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in ("okta", "root"):
            raise ValueError(f"approver kind must be 'okta' or 'root', not {self.kind!r}")
        if not self.subject:
            raise ValueError("an approver needs a subject")


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One held operation and, once decided, who decided it and how."""

    request_id: str
    state: State
    agent: str
    requester: str | None  # the identity's subject
    requester_user: str | None  # the person the agent acts for, when the token names one
    identity: dict[str, Any] | None
    process: dict[str, Any] | None
    flow_id: str | None
    resource: str
    operation: dict[str, Any]
    rule: str
    reason: str
    approver_groups: tuple[str, ...]
    grant: str
    grant_seconds: int
    grant_key: str
    created_at: float
    expires_at: float
    decided_at: float | None = None
    approver: str | None = None
    approver_kind: str | None = None
    break_glass: bool = False
    decision_reason: str | None = None
    granted_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["approver_groups"] = list(self.approver_groups)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApprovalRequest:
        return cls(**dict(data, state=State(data["state"]), approver_groups=tuple(data["approver_groups"])))


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission left by an approval: one-shot grants are consumed by one operation,
    time-boxed ones cover every identical operation until `expires_at`."""

    grant_id: str  # the request that made it
    grant_key: str
    one_shot: bool
    expires_at: float
    approver: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the handler acts on: run the operation only when `approved`. `withdrawn`: the
    request was withdrawn (the client cancelled); `reason` says why."""

    approved: bool
    request_id: str | None
    approver: str | None
    reason: str
    break_glass: bool = False
    withdrawn: bool = False
