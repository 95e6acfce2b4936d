"""tcp: the connection itself. Every resource's connection is a TcpConnect, judged here
whatever the resource's protocol; a `tcp` resource is judged on nothing else, and its handler
relays bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, TcpConnect
from interceptor.policy.judgement import DEFAULT_DENY, EFFECT_VERDICT, applies
from interceptor.protocols.spec import ProtocolSpec

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog
    from interceptor.protocols.spec import Context, Problem

KEY = "tcp"


def judge_connection(context: Context, request: Request, operation: TcpConnect) -> Decision:
    """May the agent open a connection at all: yes when some rule could allow or approve
    an operation on the resource, unless a deny rule covers every operation or tcp. A tcp
    rule that allows or approves decides (allow before approve). Process conditions the
    request cannot answer (exe/uid None, as when the redirect plan is built per agent) are
    taken as possibly met; the enforcer asks again with them. On a resource whose requests
    carry the identity (`identity: bearer`), identity conditions are judged per request: at
    the connection, allowing rules count as possibly met and no deny rule refuses for them."""
    rules = [r for r in context.policy.rules if applies(r, request, lenient=True)]
    for rule in rules:
        if rule.effect == "deny" and rule.operation in (None, KEY):
            return Decision.deny(rule.name, rule.reason or "connection denied")
    if _identity_per_request(context, request):
        rules = [r for r in context.policy.rules if applies(r, request, lenient=True, identity_later=True)]
    tcp_rules = sorted((r for r in rules if r.operation == KEY and r.effect in ("allow", "approve")),
                       key=lambda r: r.effect != "allow")
    if tcp_rules:
        rule = tcp_rules[0]
        return Decision(EFFECT_VERDICT[rule.effect], rule.name, rule.reason, approval=rule.approval)
    for rule in rules:
        if rule.effect in ("allow", "approve"):
            return Decision(Verdict.ALLOW, rule.name, "connection allowed: the rule allows operations on it")
    return Decision.deny(DEFAULT_DENY, "no rule allows this agent to reach this resource")


def _identity_per_request(context: Context, request: Request) -> bool:
    resource = context.policy.resources.get(request.resource)
    return resource is not None and (resource.options or {}).get("identity") == "bearer"


def _parse_match(block: Any, problem: Problem) -> None:
    """`tcp: true` says all there is to say: the rule is about the connection."""


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> TcpConnect:
    return TcpConnect()


SPEC: ProtocolSpec[TcpConnect] = ProtocolSpec(
    name="tcp",
    operation_key=KEY,
    operation=TcpConnect,
    description="Available: the connection is judged at accept, bytes are relayed, one audit record per connection.",
    handler="interceptor.handlers.tcp",
    match_schema={"const": True, "description": "`tcp: true`: the rule is about the connection itself."},
    options_schema={"type": "object", "additionalProperties": False, "description": "A tcp resource has no options."},
    parse_match=_parse_match,
    judge=judge_connection,
    parse_case=_parse_case,
    every_resource=True,
)
