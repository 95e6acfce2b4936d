"""Learn mode (sans-IO): an agent's operations are allowed and recorded so that `interceptor
policy suggest` can propose the narrowest policy that would have allowed them.

Learning adds one rule to the policy in force, last: `learn:AGENT`, an allow rule about the
agent (and the learned resources) with no operation block, so it is about every operation.
Everything that decides before an allow still decides: explicit deny rules, approve rules,
the protocols' builtin refusals (dangerous SQL functions, opaque statements, masks that
cannot be guaranteed, unknown relations), and mask rules still mask. A policy rule that
allows an operation is named in its record, as it comes before the learning rule. The SQL
judge keeps the learning rule off DDL, COPY with the server's files or programs, SET of a
setting a session may not choose, and reads of credentials or other sessions' statements,
nor the pg_stat_statements functions (sql_rules.never_learned), and lets it allow a function of the database's own (not
pg_catalog's) refused only by default; the SSH judge off shells, shell-class commands,
writes that make the server run code and forwards (ssh_rules.never_learned); the Kubernetes
judge off running code in a pod or reaching through the API server, and changes to
permissions (kube_rules.never_learned).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from interceptor.policy.model import Policy, Rule

LEARN_PREFIX = "learn:"  # a rule name no policy can use (names are [A-Za-z0-9][A-Za-z0-9_.-]*)
MAX_LEARN_SECONDS = 366 * 86400.0  # the longest a learn run may be asked to last
# What a refusal of what the learning rule does not cover adds to its reason
UNLEARNED_NOTE = " (learn mode never learns this: a rule of the policy must name it)"


def learn_seconds(value: object) -> float:
    """`value` as how long a learn run lasts, in seconds: a number, finite, more than 0 and
    at most MAX_LEARN_SECONDS; ValueError otherwise (a bool, a string, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"learning must last a number of seconds, not {value!r}")
    seconds = float(value) if not isinstance(value, int) or abs(value) < 10 ** 18 else math.inf
    if not 0 < seconds <= MAX_LEARN_SECONDS:
        raise ValueError(f"learning must last more than 0 s and at most 366 days, not {value!r} s"[:200])
    return seconds


@dataclass(frozen=True, slots=True)
class LearnSession:
    """One `interceptor learn start`: `agent` learns on `resources` (None: every resource)
    from `started` until `until` (epoch seconds; None: until stopped)."""

    agent: str
    session: str
    started: float
    until: float | None = None
    resources: tuple[str, ...] | None = None

    @classmethod
    def start(cls, agent: str, now: float, seconds: float | None = None,
              resources: tuple[str, ...] | None = None) -> LearnSession:
        """A new session with a fresh id (16 hex digits); `seconds`: how long it lasts."""
        return cls(agent, secrets.token_hex(8), now, None if seconds is None else now + seconds, resources)

    @property
    def rule_name(self) -> str:
        return LEARN_PREFIX + self.agent

    def covers(self, resource: str | None) -> bool:
        """Are the agent's operations on `resource` learned?"""
        return self.resources is None or resource in self.resources

    def rule(self) -> Rule:
        return Rule(name=self.rule_name, effect="allow", reason=f"learn mode (session {self.session})",
                    agents=(self.agent,), resources=self.resources)

    def summary(self) -> dict[str, object]:
        """The session as `interceptor learn status` and the audit record show it."""
        return {"agent": self.agent, "session": self.session, "started": self.started, "until": self.until,
                "resources": list(self.resources) if self.resources is not None else None}


def with_learning(policy: Policy, sessions: Iterable[LearnSession]) -> Policy:
    """`policy` with each session's rule appended (the same policy when there is none); its
    version says it is learning, so decisions kept under the policy's version are not reused."""
    ordered = sorted(sessions, key=lambda s: s.agent)
    if not ordered:
        return policy
    learning = ".".join(session.session for session in ordered)
    return replace(policy, rules=policy.rules + tuple(session.rule() for session in ordered),
                   version=f"{policy.version}+learn.{learning}")


def is_learning(rule: Rule) -> bool:
    """Is `rule` a learning rule (one `with_learning` added)?"""
    return rule.name.startswith(LEARN_PREFIX)


def learning_rule(rules: Iterable[Rule]) -> Rule | None:
    """The learning rule among `rules` (those about one request), None when not learning."""
    return next((rule for rule in rules if is_learning(rule)), None)


def learning_of(sessions: Mapping[str, LearnSession], agent: str, resource: str | None) -> str | None:
    """The id of the session learning `agent` on `resource`, None when it is not learned."""
    session = sessions.get(agent)
    return session.session if session is not None and session.covers(resource) else None
