"""Just-in-time approvals: held operations wait for a person in an approver group."""

from interceptor.approvals.broker import ApprovalBroker, PendingRequest
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
)
from interceptor.approvals.store import ApprovalStore, SqliteStore

__all__ = [
    "AlreadyDecided",
    "ApprovalBroker",
    "ApprovalError",
    "ApprovalRequest",
    "ApprovalStore",
    "Approver",
    "Expired",
    "Grant",
    "NotAnApprover",
    "NotFound",
    "Outcome",
    "PendingRequest",
    "SelfApproval",
    "SqliteStore",
    "State",
    "StoreError",
]
