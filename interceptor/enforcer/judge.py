"""The one place an operation becomes a Decision.

A session asks `FlowJudge.decide(operation)`; the judge builds the Request (the flow's agent,
its identity now, its process), applies the identity gate (an agent whose identity is
missing, expired or revoked is denied whatever the rules say) and asks the policy engine in
force now. A reload swaps the engine between two operations, never during one. While the
agent's operations are shadowed (interceptor.policy.shadow) the candidate policy is asked
too, and its answer rides on the decision, for the audit record; while they are learned
(interceptor.policy.learn) the engine in force holds the learning rule.
"""

from __future__ import annotations

from collections.abc import Callable

from interceptor.decision import Decision, Verdict
from interceptor.flow import FlowContext
from interceptor.identity.model import Identity
from interceptor.operations import Operation, Request, Subject, TcpConnect
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.shadow import ShadowRun

IDENTITY_RULE = "identity"
UNKNOWN_REASON = "expired, revoked or not yet obtained"


def _identity_refusal(identity: Identity | None, required: bool, reason: Callable[[], str]) -> Decision | None:
    """The deny of the identity gate, or None when the identity lets the rules decide;
    `reason` says why the agent has none (the identity manager's reason)."""
    if identity is None and required:
        return Decision.deny(IDENTITY_RULE, f"agent has no valid identity: {reason()}")
    if identity is not None and identity.expired():
        return Decision.deny(IDENTITY_RULE, "agent identity expired")
    return None


class FlowJudge:
    """Judges the operations of one flow. `engine` and `identity` are read at each decision
    (the policy and the token in force now); `on_decision` sees every decision (metrics);
    `allowed_by`: the rules that allowed or approved one of its operations so far (a learn
    run that ends cuts the flows its rule allowed something in: Enforcer.close_sessions)."""

    def __init__(self, flow: FlowContext, engine: Callable[[], PolicyEngine],
                 identity: Callable[[], Identity | None], identity_required: Callable[[], bool],
                 on_decision: Callable[[Decision], None] = lambda decision: None, *,
                 identity_reason: Callable[[], str] = lambda: UNKNOWN_REASON,
                 learns: Callable[[str, str | None], str | None] = lambda agent, resource: None,
                 shadow: Callable[[str], ShadowRun | None] = lambda agent: None) -> None:
        """`learns(agent, resource)`: the learn session id when the agent's operations on the
        resource are learned, else None; `shadow(agent)`: the shadow run judging beside."""
        self.flow = flow
        self.engine = engine
        self.identity = identity
        self.identity_required = identity_required
        self.on_decision = on_decision
        self.identity_reason = identity_reason
        self.learns = learns
        self.shadow = shadow
        self.allowed_by: set[str] = set()

    def use_identity(self, identity: Identity) -> None:
        """From now on judge the flow's operations as `identity` (one the handler validated
        from the flow itself, such as the bearer token of `identity: bearer`), not the agent's."""
        self.identity = lambda: identity

    def request(self, operation: Operation, **labels: str) -> Request:
        """The policy question for `operation` of this flow."""
        flow = self.flow
        subject = Subject(flow.agent, self.identity(), flow.process.exe, flow.process.uid)
        return Request(subject, flow.resource or "", operation, dict(flow.labels, **labels))

    def decide(self, operation: Operation) -> Decision:
        """The decision for `operation`, identity gate first, by the engine in force now.
        Raises what the engine raises (a session denies on it); what the shadow candidate
        raises is recorded in the decision's shadow, never raised."""
        request = self.request(operation)
        shadow = self.shadow(self.flow.agent)
        started = shadow.clock() if shadow is not None else 0.0
        decision = self.judged(request, self.engine())
        if shadow is not None:
            decision = shadow.beside(decision, self._candidate(request, shadow, shadow.clock() - started))
        if decision.verdict is not Verdict.DENY:
            self.allowed_by.add(decision.rule)
        self.on_decision(decision)
        return decision

    def connection_shadow(self) -> Decision | None:
        """While the flow's agent is shadowed, the flow's admitted connection (allow, by its
        connection rule) carrying what the candidate decides of it (TcpConnect), for the
        connection records, which have no decision of their own; else None."""
        shadow = self.shadow(self.flow.agent)
        if shadow is None:
            return None
        admitted = Decision(Verdict.ALLOW, self.flow.connection_rule or "")
        return shadow.beside(admitted, self._candidate(self.request(TcpConnect()), shadow))

    def _candidate(self, request: Request, shadow: ShadowRun, enforced: float = 0.0) -> Decision | Exception:
        """What the shadow run's candidate decides of `request`, or what it raised (a
        candidate too slow once is no longer asked: ShadowRun.candidate; `enforced`: the
        seconds the engine in force took to decide it, perhaps only looking it up)."""
        return shadow.candidate(lambda: self.judged(request, shadow.engine), enforced,
                                lambda: self._afresh(request, shadow.clock))

    def _afresh(self, request: Request, clock: Callable[[], float]) -> float:
        """Seconds (by `clock`) the policy in force takes to decide `request` with none of the
        decisions its engine kept: a new engine of its policy and catalog, thrown away."""
        engine = self.engine()
        started = clock()
        self.judged(request, PolicyEngine(engine.policy, engine.catalog))
        return clock() - started

    def learning(self) -> str | None:
        """The learn session id when this flow's operations are learned now, else None."""
        return self.learns(self.flow.agent, self.flow.resource)

    def judged(self, request: Request, engine: PolicyEngine) -> Decision:
        """`request` through the identity gate, then `engine` (the enforcer asks this of a
        connection with the snapshot it attributed the flow by; not counted in on_decision)."""
        refusal = _identity_refusal(request.subject.identity, self.identity_required(), self.identity_reason)
        return refusal or engine.decide(request)

    def epoch(self) -> tuple[object, object, object]:
        """Changes when the policy, the identity or the shadow run does: decisions cached by a
        session under another epoch are taken again."""
        return self.engine(), self.identity(), self.shadow(self.flow.agent)
