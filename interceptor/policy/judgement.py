"""Which rules are about a request and which of them wins: the precedence every protocol's
judge shares (explicit deny, then approve, then allow; nothing: default deny)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from interceptor.decision import ApprovalSpec, Decision, MaskSpec, Verdict
from interceptor.operations import Request, Subject
from interceptor.policy.model import Rule, SubjectMatch, globs

DEFAULT_DENY = "default-deny"
EFFECT_VERDICT = {"deny": Verdict.DENY, "approve": Verdict.APPROVE, "allow": Verdict.ALLOW}
_RANK = {Verdict.ALLOW: 0, Verdict.APPROVE: 1, Verdict.DENY: 2}


@dataclass(frozen=True, slots=True)
class Judgement:
    """One verdict and the rule (by name) that made it, before it becomes a Decision."""

    verdict: Verdict
    rule: str
    reason: str
    approval: ApprovalSpec | None = None

    def decision(self, masks: tuple[MaskSpec, ...] = (), details: tuple[dict[str, object], ...] = ()) -> Decision:
        """The Decision; masks are dropped from a denial, which returns nothing to mask."""
        return Decision(self.verdict, self.rule, self.reason, masks if self.verdict is not Verdict.DENY else (),
                        self.approval, details)


def pick(rules: Iterable[Rule], default_reason: str) -> Judgement:
    """Explicit deny wins, then approve, then allow; nothing: default deny with `default_reason`."""
    candidates = list(rules)
    for effect in ("deny", "approve", "allow"):
        for rule in candidates:
            if rule.effect == effect:
                return Judgement(EFFECT_VERDICT[effect], rule.name, rule.reason or f"{effect} by rule {rule.name}",
                                 rule.approval)
    return Judgement(Verdict.DENY, DEFAULT_DENY, default_reason)


def severity(judgement: Judgement) -> tuple[int, bool]:
    """Sort key, most restrictive last: deny > approve > allow; among denials an explicit
    rule ranks above default-deny, so the one named is the one that decided."""
    return _RANK[judgement.verdict], judgement.rule != DEFAULT_DENY


def applies(rule: Rule, request: Request, lenient: bool, identity_later: bool = False) -> bool:
    """Is the rule about this agent, resource and subject? `lenient`: process conditions the
    request cannot answer (exe or uid None) count as met; `identity_later`: so do identity
    conditions (the identity is only known from the requests, as with `identity: bearer`)."""
    if rule.agents is not None and request.subject.agent not in rule.agents:
        return False
    if rule.resources is not None and request.resource not in rule.resources:
        return False
    return rule.subjects is None or subject_matches(rule.subjects, request.subject, lenient, identity_later)


def subject_matches(match: SubjectMatch, subject: Subject, lenient: bool, identity_later: bool = False) -> bool:
    """Every given field of `match` holds; identity fields never hold without an identity,
    unless `identity_later` says they are judged later, on each operation."""
    identity = subject.identity
    if not identity_later and any(v is not None for v in (match.groups, match.scopes, match.subject,
                                                          match.client_id)):
        if identity is None:
            return False
        if match.groups is not None and not any(globs(match.groups, g) for g in identity.groups):
            return False
        if match.scopes is not None and not any(globs(match.scopes, s) for s in identity.scopes):
            return False
        if not globs(match.subject, identity.subject) or not globs(match.client_id, identity.client_id):
            return False
    if match.exe is not None and not (subject.exe is None and lenient) and not globs(match.exe, subject.exe):
        return False
    if match.uid is not None and not (subject.uid is None and lenient) and subject.uid not in match.uid:
        return False
    return True
