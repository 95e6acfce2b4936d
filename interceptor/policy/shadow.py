"""Shadow mode (sans-IO): a candidate policy judges an agent's operations beside the policy in
force, deciding nothing; where the two disagree the audit record says what the candidate
would have done (`interceptor policy shadow`, `policy shadow report`)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from interceptor.decision import Decision, Shadow, Verdict
from interceptor.policy.engine import PolicyEngine

CANDIDATE_ERROR_RULE = "shadow-candidate-error"


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """One `interceptor policy shadow`: `agent`'s operations are judged by `engine` (the
    candidate, loaded from `path`) too, from `started` (epoch seconds)."""

    agent: str
    session: str
    started: float
    path: str
    engine: PolicyEngine

    @classmethod
    def start(cls, agent: str, now: float, path: str, engine: PolicyEngine) -> ShadowRun:
        """A new run with a fresh id (16 hex digits)."""
        return cls(agent, secrets.token_hex(8), now, path, engine)

    def beside(self, enforced: Decision, candidate: Decision | Exception) -> Decision:
        """`enforced`, carrying what the candidate decided (a candidate that failed to decide
        is recorded as a denial under CANDIDATE_ERROR_RULE; it never changes `enforced`)."""
        if isinstance(candidate, Exception):
            shadow = Shadow(self.session, self.version, Verdict.DENY, CANDIDATE_ERROR_RULE,
                            f"the candidate policy failed to decide: {type(candidate).__name__}: {candidate}")
        else:
            shadow = Shadow(self.session, self.version, candidate.verdict, candidate.rule, candidate.reason)
        return replace(enforced, shadow=shadow)

    @property
    def version(self) -> str:
        return self.engine.policy.version

    def summary(self) -> dict[str, object]:
        """The run as `interceptor policy shadow status` and the audit record show it."""
        return {"agent": self.agent, "session": self.session, "started": self.started, "path": self.path,
                "version": self.version}
