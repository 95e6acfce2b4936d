"""Shadow mode (sans-IO): a candidate policy judges an agent's operations beside the policy in
force, deciding nothing; where the two disagree the audit record says what the candidate
would have done (`interceptor policy shadow`, `policy shadow report`)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from interceptor.decision import Decision, Shadow, Verdict
from interceptor.policy.engine import PolicyEngine

log = logging.getLogger(__name__)

CANDIDATE_ERROR_RULE = "shadow-candidate-error"
# How long the candidate may take to decide one operation: CANDIDATE_BUDGET_S (seconds; a
# decision takes tens of microseconds), or SLOWER times what the policy in force took (a long
# statement's analysis takes both a while). It decides on the event loop every flow shares,
# so one that took longer (tens of thousands of rules, a glob that backtracks on a long path)
# is not asked again.
CANDIDATE_BUDGET_S = 0.02
SLOWER = 10


class CandidateTooSlow(Exception):
    """The candidate took too long to decide an operation once (ShadowRun.candidate), and is
    no longer asked."""


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """One `interceptor policy shadow`: `agent`'s operations are judged by `engine` (the
    candidate, loaded from `path`) too, from `started` (epoch seconds), until one of its
    decisions takes too long (`candidate`; `too_slow` then holds how long, in seconds);
    `clock`: seconds, for timing decisions."""

    agent: str
    session: str
    started: float
    path: str
    engine: PolicyEngine
    too_slow: list[float] = field(default_factory=list, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.perf_counter, compare=False, repr=False)

    @classmethod
    def start(cls, agent: str, now: float, path: str, engine: PolicyEngine) -> ShadowRun:
        """A new run with a fresh id (16 hex digits)."""
        return cls(agent, secrets.token_hex(8), now, path, engine)

    def candidate(self, decide: Callable[[], Decision], enforced: float = 0.0,
                  afresh: Callable[[], float] | None = None) -> Decision | Exception:
        """What the candidate decides (`decide` asks it), or what it raised; CandidateTooSlow,
        without asking, once a decision took longer than CANDIDATE_BUDGET_S and SLOWER times
        `enforced` (seconds the policy in force took to decide the same operation) and than
        SLOWER times what `afresh` returns, asked only then: the seconds the policy in force
        takes to decide it without the decisions it kept (the candidate starts with none, so a
        decision the policy in force only looked up is no measure of it)."""
        if self.too_slow:
            return CandidateTooSlow(f"it took {self.too_slow[0] * 1000:.0f} ms to decide an operation once (more "
                                    f"than {CANDIDATE_BUDGET_S * 1000:.0f} ms and {SLOWER} times the policy in force, "
                                    "on the loop every flow shares), and is no longer asked: stop the run and make the "
                                    "candidate smaller")
        started = self.clock()
        try:
            return decide()
        except Exception as exc:  # noqa: BLE001 - a candidate's failure never changes what is enforced
            return exc
        finally:
            spent = self.clock() - started
            if not self.too_slow and spent > max(CANDIDATE_BUDGET_S, SLOWER * enforced) and (
                    afresh is None or spent > SLOWER * afresh()):
                self.too_slow.append(spent)
                log.warning("shadow run %s (agent %s): the candidate policy took %.0f ms to decide an operation; it "
                            "is no longer asked", self.session, self.agent, spent * 1000)

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
        """The run as `interceptor policy shadow status` and the audit record show it
        (`too_slow_ms`: how long the decision took that stopped the candidate being asked)."""
        return {"agent": self.agent, "session": self.session, "started": self.started, "path": self.path,
                "version": self.version, "too_slow_ms": round(self.too_slow[0] * 1000, 3) if self.too_slow else None}
