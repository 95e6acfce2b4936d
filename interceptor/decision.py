"""What the policy answers. Every decision names the rule that made it, for audit."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # operations imports the policy's catalog types, which import this module
    from interceptor.operations import Operation


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"  # hold for just-in-time human approval


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """Mask these result columns (qualified `schema.table.column`: those the statement's
    analysis found in its results) and/or any value the named classifiers recognise, in the
    given style. `patterns`: the rule's column patterns (globs), which the server's own
    description of a result (the table and column each comes from) is matched against too."""

    columns: tuple[str, ...] = ()
    classifiers: tuple[str, ...] = ()
    style: str = "redact"  # redact | partial | hash | null
    rule: str = ""
    patterns: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # JSON paths of values to mask in a JSON body (interceptor.masking.json_paths)


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    approver_groups: tuple[str, ...]
    grant: str = "one-shot"  # one-shot | time-boxed
    grant_seconds: int = 0  # for time-boxed grants
    timeout_seconds: int = 300  # how long a request waits before it is denied


@dataclass(frozen=True, slots=True)
class Shadow:
    """What a candidate policy tried in shadow mode (`interceptor policy shadow`) would have
    decided on the same operation; `session`: the shadow run's id, `policy`: the candidate's
    version. It decides nothing: the audit record carries it."""

    session: str
    policy: str
    verdict: Verdict
    rule: str
    reason: str

    def record(self, enforced: Verdict) -> dict[str, object]:
        """The record's `operation.shadow`: the candidate's verdict and rule, whether it
        agrees with the `enforced` verdict, and its reason where it does not."""
        agrees = self.verdict is enforced
        mark: dict[str, object] = {"session": self.session, "policy": self.policy, "verdict": self.verdict.value,
                                   "rule": self.rule, "agrees": agrees}
        if not agrees:
            mark["reason"] = self.reason
        return mark


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: str  # the rule's name; "default-deny" when no rule matched
    reason: str = ""
    masks: tuple[MaskSpec, ...] = ()
    approval: ApprovalSpec | None = None
    details: tuple[dict[str, object], ...] = field(default=())  # per statement, for audit
    shadow: Shadow | None = None  # what the candidate policy in shadow mode would have decided

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @classmethod
    def deny(cls, rule: str, reason: str) -> "Decision":
        return cls(Verdict.DENY, rule, reason)


class Judge(Protocol):
    """What a protocol session asks: the decision on one operation of its flow, taken by
    the policy in force now for the flow's agent and identity (interceptor.enforcer.judge)."""

    def decide(self, operation: Operation) -> Decision:
        """The decision; raises when the policy cannot be evaluated (the caller denies)."""
