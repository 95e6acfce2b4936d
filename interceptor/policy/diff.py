"""`policy diff CURRENT SUGGESTED`, the logic: what CURRENT grants an agent that it never
used, and what it used that CURRENT refuses.

"Used" is the grants of SUGGESTED, read as exact values (what `policy suggest` writes: each
kind, table, column, function, verb, command... is one thing the agent did; a glob in
SUGGESTED is taken as the name it spells, with suggest's escapes undone: `[*]` is `*`; its
select rule on the table no relation has, NO_TABLE, is a SELECT without a table). A rule of
SUGGESTED that is a rule of CURRENT kept for other agents or resources (`policy suggest`
keeps them under the same name or NAME-N, narrowed) is no use. Each use becomes an operation
and CURRENT judges it with the engine's own matching: SQL as `Action`s and `Call`s judged by the rules
interceptor.policy.sql_rules judges a statement's with, every other protocol as its
operation (interceptor.operations) through `PolicyEngine.decide`. A rule's conditions on
the agent's identity and process count as met: the comparison is about what the agent may
do, whoever runs it. A CURRENT allow or approve rule is "used" by the operations it decides.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from typing import Any

from interceptor.decision import Verdict
from interceptor.operations import (HttpRequest, KubeRequest, McpCall, Operation, Request, SqlQuery, SshRequest,
                                    Subject, TcpConnect)
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.http_rules import HttpMatch
from interceptor.policy.judgement import DEFAULT_DENY, Judgement, applies
from interceptor.policy.kube_rules import KubeMatch
from interceptor.policy.mcp_rules import TOOLS_CALL, McpMatch
from interceptor.policy.model import Policy, Rule
from interceptor.policy.sql_rules import OPERATION_KEY as SQL_KEY
from interceptor.policy.sql_rules import SqlMatch, _action, _call, _column_matches, sql_match
from interceptor.policy.ssh_rules import SshMatch
from interceptor.policy.suggest import NO_TABLE, glob_unescape
from interceptor.policy.statement import Action, Call, Statement, qualified
from interceptor.protocols import spec_for

GRANTS = ("allow", "approve")


@dataclass(frozen=True, slots=True)
class Use:
    """One operation SUGGESTED grants the agent on `resource` (by its rule `grant`, whose
    effect is `effect`; `operation`: its protocol's operation key, `sql`, `tcp`...), and
    CURRENT's judgement of it: `verdict` allow | approve | deny by `rule` ("default-deny"
    or a builtin rule when no rule of CURRENT decided) for `reason`.
    `what`: the operation in words; `kind`, `table` (schema.table), `columns` (None: all),
    `function`: what a SQL use is about, None for other protocols; `request`: what CURRENT
    was asked, for other protocols (None for SQL, judged action by action)."""

    resource: str
    operation: str
    grant: str
    effect: str
    what: str
    verdict: str
    rule: str
    reason: str
    kind: str | None = None
    table: str | None = None
    columns: tuple[str, ...] | None = None
    function: str | None = None
    request: Request | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The use as JSON: every field but the request; columns a list or null."""
        out = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "request"}
        if self.columns is not None:
            out["columns"] = list(self.columns)
        return out


@dataclass(slots=True)
class GrantUse:
    """One allow or approve rule of CURRENT about the agent and the uses it decided;
    `kept`: SUGGESTED holds the same rule on every resource it has (as `policy suggest` keeps
    the grants of resources it did not learn), which says nothing of its use; `kept_on`: the
    resources SUGGESTED keeps it on (where nothing tells whether it was used).
    `grants`: what it grants in words; `leftover`: in words, what it grants beyond those
    uses (a kind it lists never used, the tables of a glob other than those used, columns
    of a table beyond those read...); for a SQL rule `kinds_unused`, `tables_used`
    (schema.table -> the columns used, None: all or unknown) and `functions_used`."""

    rule: str
    effect: str
    resources: tuple[str, ...] | None
    grants: str
    uses: list[Use] = field(default_factory=list)
    kept: bool = False
    kept_on: tuple[str, ...] = ()
    leftover: list[str] = field(default_factory=list)
    sql: bool = False
    kinds_unused: tuple[str, ...] = ()
    tables_used: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    functions_used: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """"kept" (SUGGESTED holds it as is and no other grant used it), "unused" (it decided
        no use), "partly used" (something is left over) or "used"."""
        if not self.uses:
            return "kept" if self.kept else "unused"
        return "partly used" if self.leftover else "used"

    def to_dict(self) -> dict[str, Any]:
        """The grant as JSON: rule, effect, resources, grants, status, kept_on, leftover, uses
        (Use.to_dict), and for SQL kinds_unused, tables_used, functions_used."""
        out: dict[str, Any] = {"rule": self.rule, "effect": self.effect,
                               "resources": list(self.resources) if self.resources is not None else None,
                               "grants": self.grants, "status": self.status, "kept_on": list(self.kept_on),
                               "leftover": self.leftover,
                               "uses": [u.to_dict() for u in self.uses]}
        if self.sql:
            out.update(kinds_unused=list(self.kinds_unused), functions_used=list(self.functions_used),
                       tables_used={t: list(c) if c is not None else None for t, c in self.tables_used.items()})
        return out


@dataclass(slots=True)
class AgentDiff:
    """The diff for one agent: `grants` (CURRENT's allow/approve rules about it, in policy
    order; SUGGESTED's grants equal to one of them are not judged: see GrantUse.kept),
    `refused` (uses CURRENT denies), `differs` (uses SUGGESTED allows and CURRENT approves,
    or the reverse), `uses` (every use), `skipped` (SUGGESTED grants that name no operation
    to compare: a rule about any operation, an MCP arguments condition)."""

    agent: str
    grants: list[GrantUse]
    uses: list[Use]
    skipped: list[str]

    @property
    def refused(self) -> list[Use]:
        return [u for u in self.uses if u.verdict == Verdict.DENY.value]

    @property
    def differs(self) -> list[Use]:
        return [u for u in self.uses if u.verdict != Verdict.DENY.value and u.verdict != u.effect]

    def to_dict(self) -> dict[str, Any]:
        """The agent's diff as JSON: agent, unused (GrantUse.to_dict of the grants unused or
        partly used), used (fully used), kept (held as is by SUGGESTED), refused, differs
        (Use.to_dict), skipped."""
        return {"agent": self.agent,
                "unused": [g.to_dict() for g in self.grants if g.status in ("unused", "partly used")],
                "used": [g.to_dict() for g in self.grants if g.status == "used"],
                "kept": [g.to_dict() for g in self.grants if g.status == "kept"],
                "refused": [u.to_dict() for u in self.refused], "differs": [u.to_dict() for u in self.differs],
                "skipped": self.skipped}


class _Unconditional(PolicyEngine):
    """CURRENT's engine with every rule's identity and process conditions taken as met."""

    def rules(self, request: Request, key: str) -> list[Rule]:
        return [r for r in self.policy.rules if r.operation in (None, key) and applies(r, request, True, True)]


def diff(current: Policy, suggested: Policy, agent: str) -> AgentDiff:
    """What CURRENT grants `agent` that SUGGESTED's grants (its allow and approve rules about
    the agent) never used, and how CURRENT judges each of those grants' operations."""
    engine = _Unconditional(current)
    uses: list[Use] = []
    skipped: list[str] = []
    copies = [(copy, kept.name) for copy in suggested.rules for kept in current.rules if _copy_of(copy, kept)
              and (copy.agents is None or agent in copy.agents)]
    for rule in suggested.rules:
        if rule.effect not in GRANTS or (rule.agents is not None and agent not in rule.agents) \
                or any(copy.name == rule.name for copy, _ in copies):
            continue
        for resource in _resources(suggested, rule):
            if rule.operation is None:
                skipped.append(f"{rule.name} on {resource}: grants every operation, nothing to compare")
                continue
            if isinstance(rule.match, McpMatch) and rule.match.arguments is not None:
                skipped.append(f"{rule.name} on {resource}: its arguments condition is compared as no arguments")
            uses.extend(_judged(engine, agent, resource, rule))
    grants = []
    for rule in current.rules:
        if rule.effect in GRANTS and (rule.agents is None or agent in rule.agents):
            kept = {r for copy, name in copies if name == rule.name for r in _resources(suggested, copy)}
            where = _resources(current, rule)
            grants.append(_grant_use(current, rule, uses, set(where) <= kept, tuple(r for r in where if r in kept)))
    return AgentDiff(agent, grants, uses, skipped)


def _copy_of(copy: Rule, rule: Rule) -> bool:
    """Is `copy` (of SUGGESTED) `rule` (of CURRENT) kept as `policy suggest` keeps a grant of
    what was not learned: the same rule under its name or NAME-N, its agents and resources
    aside?"""
    return (copy.name == rule.name or copy.name.startswith(rule.name + "-")) and \
        replace(copy, name=rule.name, agents=None, resources=None) == replace(rule, agents=None, resources=None)


def _resources(policy: Policy, rule: Rule) -> list[str]:
    """The resources a rule is about whose protocol its operation block is about."""
    names = rule.resources if rule.resources is not None else tuple(policy.resources)
    out = []
    for name in names:
        resource = policy.resources.get(name)
        if resource is None:
            continue
        spec = spec_for(resource.protocol)
        if rule.operation in (None, "tcp", spec.operation_key):
            out.append(name)
    return out


def _judged(engine: _Unconditional, agent: str, resource: str, rule: Rule) -> Iterator[Use]:
    match = rule.match
    if isinstance(match, SqlMatch):
        yield from _sql_uses(engine, agent, resource, rule, match)
        return
    for operation, what in _operations(rule):
        request = Request(Subject(agent), resource, operation)
        decision = engine.decide(request)
        yield Use(resource, operation.kind, rule.name, rule.effect, what, decision.verdict.value, decision.rule,
                  decision.reason, request=request)


def _operations(rule: Rule) -> Iterator[tuple[Operation, str]]:
    """The operations a non-SQL grant names, each with its words."""
    match = rule.match
    if rule.operation == "tcp":
        yield TcpConnect(), "connect"
    elif isinstance(match, KubeMatch):
        yield from _kube_operations(match)
    elif isinstance(match, SshMatch):
        yield from _ssh_operations(match)
    elif isinstance(match, HttpMatch):
        for method in _names(match.methods or ("GET",)):
            for path in _names(match.paths or ("/",)):
                for host in _names(match.hosts) if match.hosts is not None else (None,):
                    yield HttpRequest(method, path, host=host), f"{method} {path}" + (f" host {host}" if host else "")
    elif isinstance(match, McpMatch):
        if match.tools is not None:
            for tool in _names(match.tools):
                yield McpCall(TOOLS_CALL, tool), f"{TOOLS_CALL} {tool}"
        else:
            for method in _names(match.methods or ()):
                yield McpCall(method), method


def _names(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The names SUGGESTED's patterns spell (glob_unescape)."""
    return tuple(glob_unescape(p) for p in patterns)


def _kube_operations(match: KubeMatch) -> Iterator[tuple[Operation, str]]:
    if match.resources is None and match.non_resource_urls is not None:
        for verb in _names(match.verbs or ("get",)):
            for url in _names(match.non_resource_urls):
                yield KubeRequest(verb, url, resource_request=False), f"{verb} {url}"
        return
    for verb in _names(match.verbs or ("*",)):
        for group in _names(match.api_groups or ("",)):
            for target in _names(match.resources or ("*",)):
                resource, _, subresource = target.partition("/")
                for namespace in _names(match.namespaces or ("",)):
                    for name in _names(match.names or ("",)):
                        what = f"{verb} {target}{'.' + group if group else ''}"
                        what += f' "{name}"' if name else ""
                        what += f' in namespace "{namespace}"' if namespace else ""
                        yield KubeRequest(verb, "", api_group=group, resource=resource, subresource=subresource,
                                          namespace=namespace, name=name), what


def _ssh_operations(match: SshMatch) -> Iterator[tuple[Operation, str]]:
    for words in match.commands or ():
        command = shlex.join(_names(words))
        yield SshRequest("exec", command=command), f"exec {command}"
    if match.shell:
        yield SshRequest("shell"), "shell"
    for key in ("read", "write"):
        for path in _names(getattr(match, key) or ()):
            yield SshRequest(key, path=path, action="open"), f"{key} {path}"
    for key, kind in (("forward", "local"), ("remote_forward", "remote")):
        for target in getattr(match, key) or ():
            yield SshRequest("forward", forward=kind, target=target), f"{key} {target}"


def _sql_uses(engine: _Unconditional, agent: str, resource: str, rule: Rule, match: SqlMatch) -> Iterator[Use]:
    """A SQL grant's actions (each kind on each table, with the columns it lists) and calls
    (each function), judged as sql_rules judges a statement's."""
    rules = engine.rules(Request(Subject(agent), resource, SqlQuery("")), SQL_KEY)
    unknown = _unknown(engine.policy, agent, resource)
    kinds = match.kinds or ("*",)
    for name in _names(match.functions or ()):
        schema, _, function = name.rpartition(".")
        call = Call(function, schema or None)
        for kind in kinds:
            judgement = unknown or _call(call, Statement("", kind), rules)
            yield _use(resource, rule, f"{kind} calling {name}()", judgement, kind=kind, function=name)
    if match.functions is not None:
        return
    tables = [None if (s, t) == tuple(NO_TABLE.split(".")) else (glob_unescape(s), glob_unescape(t))
              for s, t in match.tables or ()]
    for table in tables or [None]:
        columns = _columns(match.columns, table)
        for kind in kinds:
            action = Action(kind, table, frozenset(columns) if columns is not None else None)
            judgement = unknown or _action(action, Statement("", kind), rules)
            where = qualified(table) if table is not None else "no table"
            shown = f" ({', '.join(columns)})" if columns else "" if columns is not None else " (all columns)"
            yield _use(resource, rule, f"{kind} {where}{shown}", judgement, kind=kind,
                       table=qualified(table) if table is not None else None, columns=columns)


def _unknown(policy: Policy, agent: str, resource: str) -> Judgement | None:
    """The engine's refusal of an agent or resource CURRENT does not name (PolicyEngine.decide's)."""
    if resource not in policy.resources:
        return Judgement(Verdict.DENY, DEFAULT_DENY, f"unknown resource {resource!r}")
    if agent not in policy.agents:
        return Judgement(Verdict.DENY, DEFAULT_DENY, f"unknown agent {agent!r}")
    return None


def _columns(patterns: tuple[str, ...] | None, table: tuple[str, str] | None) -> tuple[str, ...] | None:
    """The columns a grant lists for `table`: its bare names and its schema.table.column
    entries of that table; None when it lists none (all columns)."""
    if patterns is None:
        return None
    out = []
    for pattern in patterns:
        parts = [glob_unescape(part) for part in pattern.split(".")]
        if len(parts) == 1:
            out.append(parts[0])
        elif table is not None and (parts[0], parts[1]) == table:
            out.append(parts[2])
    return tuple(sorted(set(out)))


def _use(resource: str, rule: Rule, what: str, judgement: Judgement, **sql: Any) -> Use:
    return Use(resource, SQL_KEY, rule.name, rule.effect, what, judgement.verdict.value, judgement.rule,
               judgement.reason, **sql)


def _grant_use(current: Policy, rule: Rule, uses: list[Use], kept: bool, kept_on: tuple[str, ...]) -> GrantUse:
    """What of `rule`'s grant the uses it decided exercised, and what is left over; `kept`,
    `kept_on`: GrantUse's."""
    mine = [u for u in uses if u.rule == rule.name and u.verdict != Verdict.DENY.value
            and rule.operation in (None, u.operation) and (rule.resources is None or u.resource in rule.resources)]
    grant = GrantUse(rule.name, rule.effect, rule.resources, describe(rule), mine, kept, kept_on=kept_on)
    match = sql_match(rule)
    if rule.operation is None and mine:
        grant.leftover.append("every other operation on its resources")
    if match is None:
        if mine:
            grant.leftover.extend(_values_unused(current, rule, mine))
        return grant
    grant.sql = True
    kinds = {u.kind for u in mine if u.kind is not None}
    grant.kinds_unused = tuple(k for k in match.kinds or () if k not in kinds)
    tables: dict[str, tuple[str, ...] | None] = {}
    for use in mine:
        if use.table is not None:
            known = tables.get(use.table, ())
            tables[use.table] = None if use.columns is None or known is None else tuple(
                sorted(set(known) | set(use.columns)))
    grant.tables_used = dict(sorted(tables.items()))
    grant.functions_used = tuple(sorted({u.function for u in mine if u.function is not None}))
    if mine:
        grant.leftover.extend(_sql_leftover(match, grant))
    return grant


def _values_unused(current: Policy, rule: Rule, uses: list[Use]) -> Iterator[str]:
    """For a rule about another protocol than SQL: each value a field of its block lists
    (a verb, a namespace, a command pattern, a path glob...) that decided none of its uses,
    asked of the engine with the rule narrowed to that one value."""
    match = rule.match
    if match is None:
        return
    for item in fields(match):  # type: ignore[arg-type]  # every parsed block is a dataclass
        values = getattr(match, item.name)
        if not isinstance(values, tuple):
            continue
        unused = [value for value in values if not any(
            _decides(current, _narrowed(rule, item.name, value), use) for use in uses)]
        if unused:
            yield f"{item.name} never used: {', '.join(_word(item.name, v) for v in unused)}"


def _narrowed(rule: Rule, name: str, value: object) -> Rule:
    """`rule` with the field `name` of its block listing `value` alone; an `ssh:` block
    (which matches what any of its keys covers) keeps no other key."""
    match: Any = rule.match  # a parsed block: a frozen dataclass
    listed: dict[str, Any] = {name: (value,)}
    return replace(rule, match=SshMatch(**listed) if isinstance(match, SshMatch) else replace(match, **listed))


def _decides(current: Policy, rule: Rule, use: Use) -> bool:
    """Does `rule`, alone in CURRENT, decide the use?"""
    if use.request is None:
        return False
    return _Unconditional(replace(current, rules=(rule,))).decide(use.request).rule == rule.name


def _sql_leftover(match: SqlMatch, grant: GrantUse) -> Iterator[str]:
    """What a SQL grant used at least once grants beyond its uses, in words."""
    if grant.kinds_unused:
        yield f"kinds never used: {', '.join(grant.kinds_unused)}"
    if match.functions is not None:
        unused = [f for f in match.functions if _glob(f) or f not in grant.functions_used]
        if unused:
            yield f"functions never called: {', '.join(unused)} (called: {', '.join(grant.functions_used)})"
        return
    used = list(grant.tables_used)
    if match.tables is None:
        yield f"every table but {', '.join(used)}" if used else "every table"
    for schema, table in match.tables or ():
        pattern = f"{schema}.{table}"
        hits = [t for t in used if fnmatchcase(t, pattern)]
        if _glob(pattern):
            yield f"every table matching {pattern} but {', '.join(hits)}" if hits else \
                f"every table matching {pattern}"
        elif not hits:
            yield f"table {pattern} never used"
    known = {t: c for t, c in grant.tables_used.items() if c is not None}
    if match.columns is None:
        if known:
            yield "every column but those used: " + "; ".join(f"{t} ({', '.join(c)})" for t, c in known.items())
        return
    read = [(tuple(t.split(".", 1)), c) for t, columns in known.items() for c in columns]
    unused = [p for p in match.columns if _glob(p) or not any(
        _column_matches((p,), (table[0], table[1]), column) for table, column in read)]
    if unused:
        yield f"columns never used: {', '.join(unused)}"


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def definitions(current: Policy, suggested: Policy) -> list[str]:
    """How SUGGESTED defines its resources and agents otherwise than CURRENT, one sentence
    each (`resource db: addresses differ`): loaded, it would change where the agents'
    connections go, with which credentials, or which processes are which agent; and the
    deny and mask rules of CURRENT it has not as they are (`deny rule no-ddl: differs`,
    `mask rule card: only in CURRENT`): `policy suggest` keeps every one, and one dropped
    or changed (its subjects, resources, columns...) would refuse or mask less."""
    changes: list[str] = []
    for what, ours, theirs in (("resource", current.resources, suggested.resources),
                               ("agent", current.agents, suggested.agents)):
        for name in sorted(set(ours) | set(theirs)):
            if name not in theirs:
                changes.append(f"{what} {name}: only in CURRENT")
            elif name not in ours:
                changes.append(f"{what} {name}: only in SUGGESTED")
            elif ours[name] != theirs[name]:
                fields = [f for f in type(ours[name]).__dataclass_fields__
                          if getattr(ours[name], f) != getattr(theirs[name], f)]
                changes.append(f"{what} {name}: {', '.join(fields)} differ")
    for effect in ("deny", "mask"):
        kept = {r.name: r for r in suggested.rules if r.effect == effect}
        for rule in sorted((r for r in current.rules if r.effect == effect), key=lambda r: r.name):
            if rule.name not in kept:
                changes.append(f"{effect} rule {rule.name}: only in CURRENT")
            elif kept[rule.name] != rule:
                changes.append(f"{effect} rule {rule.name}: differs")
    return changes


def describe(rule: Rule) -> str:
    """What a rule grants in words: `sql: kinds [select], tables [public.*]`, `tcp`, `any
    operation`, with `on RESOURCES` when it names them."""
    where = f" on {', '.join(rule.resources)}" if rule.resources is not None else ""
    if rule.operation is None:
        return f"any operation{where}"
    if rule.match is None:
        return f"{rule.operation}{where}"
    parts = []
    for item in fields(rule.match):  # type: ignore[arg-type]  # every parsed block is a dataclass
        value = getattr(rule.match, item.name)
        if value is None or value is False or value == ():
            continue
        listed = ", ".join(_word(item.name, v) for v in value) if value is not True else ""
        parts.append(f"{item.name} [{listed}]" if value is not True else item.name)
    return f"{rule.operation}: {', '.join(parts)}{where}"


def _word(name: str, value: object) -> str:
    """One listed value of a block's field `name`: a table pattern as schema.table, a command
    pattern as its words, an empty string (the core API group, no namespace) as ""."""
    if isinstance(value, tuple):
        return ("." if name == "tables" else " ").join(map(str, value))
    return str(value) if value != "" else '""'
