"""Judge a Request against a Policy (sans-IO): default deny, explicit deny wins, then
approve, then allow; every Decision names the rule that made it.

The engine is the same for every protocol: it refuses unknown resources and agents, finds
the rules about the request, keeps decisions in a bounded cache, and hands the operation to
the judge its protocol registered (interceptor.protocols): the connection in
interceptor.protocols.tcp, SQL in interceptor.policy.sql_rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from interceptor.decision import Decision
from interceptor.operations import Request
from interceptor.policy.cache import DecisionCache
from interceptor.policy.catalog import Catalog
from interceptor.policy.judgement import DEFAULT_DENY, applies
from interceptor.policy.model import Policy, Rule
from interceptor.policy.sql import SchemaCatalog
from interceptor.protocols import Context, protocols

__all__ = ["DEFAULT_DENY", "PolicyEngine"]

Judge = Callable[[Context, Request, Any], Decision]


class PolicyEngine:
    """Decisions for one policy version; cheap to build, so a reload builds a new one."""

    def __init__(self, policy: Policy, catalog: Catalog | SchemaCatalog | None = None, cache_size: int = 10000,
                 cache_chars: int = 32 * 1024 * 1024) -> None:
        """`catalog`: for operations that read one and carry none (a SqlQuery whose catalog is
        None). `cache_size`: most decisions kept; `cache_chars`: most characters of the texts
        judged that the kept decisions may add up to."""
        self.policy = policy
        self.catalog = catalog
        self.cache = DecisionCache(cache_size, cache_chars)
        self._judges: dict[type, Judge] = {spec.operation: spec.judge for spec in protocols()}

    def decide(self, request: Request) -> Decision:
        """The answer for one request; never raises on bad input (it denies)."""
        if request.resource not in self.policy.resources:
            return Decision.deny(DEFAULT_DENY, f"unknown resource {request.resource!r}")
        if request.subject.agent not in self.policy.agents:
            return Decision.deny(DEFAULT_DENY, f"unknown agent {request.subject.agent!r}")
        operation = request.operation
        judge = self._judges.get(type(operation))
        if judge is None:
            return Decision.deny(DEFAULT_DENY, f"unknown operation type {type(operation).__name__}")
        return judge(self, request, operation)

    def rules(self, request: Request, key: str) -> list[Rule]:
        """The rules about this agent, resource and subject whose operation is `key` or any."""
        return [r for r in self.policy.rules if r.operation in (None, key) and applies(r, request, False)]
