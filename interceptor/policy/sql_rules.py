"""Judge a SqlQuery by the rules about SQL (sans-IO): every statement of a query is judged on
its own, under the session settings and the catalog the SqlQuery carries, and the query gets
the most restrictive verdict (deny > approve > allow).

`Decision.details` holds one dict per statement for audit: kind, tables, actions, columns,
functions, verdict, rule, reason, `effects` - what the statement changes in the session if it
runs ([Effect.to_dict()], maybe empty), so the postgres session can follow it - and
`masked_outputs` - the result columns (position, name, source columns) whose values derive
from masked columns, so the postgres handler can mask computed columns.

Functions, with a catalog: a rule naming the function in `sql.functions` decides; else the
dangerous list denies; else a call is allowed only when every function it may resolve to
is a pg_catalog one that is immutable or stable (or HARMLESS_VOLATILE_FUNCTIONS) and not
SECURITY DEFINER (docs, 38.7 "Function Volatility Categories").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.operations import Request, SqlQuery
from interceptor.policy.catalog import Catalog, CatalogUnavailable, Function
from interceptor.policy.judgement import DEFAULT_DENY, Judgement, pick, severity
from interceptor.policy.model import MaskRule, Rule
from interceptor.policy.sql import AnyCatalog, analyse, numeric_shape, shape_holds
from interceptor.policy.sql_session import BOOTSTRAP_RELATIONS, SESSION_SETTINGS
from interceptor.policy.learn import UNLEARNED_NOTE, is_learning, learning_rule
from interceptor.policy.statement import Action, Call, ColumnRef, OutputColumn, Statement, qualified

if TYPE_CHECKING:  # the protocol registry imports this module
    from interceptor.protocols.spec import Context, Problem

OPERATION_KEY = "sql"  # a rule's `sql:` block, a test case's `sql:` text
TRANSACTION_RULE = "builtin-transaction-control"
BOOTSTRAP_RULE = "builtin-session-bootstrap"
CURSOR_RULE = "builtin-cursor"
DANGEROUS_RULE = "builtin-dangerous-functions"
UNPARSED_RULE = "sql-not-understood"
OPAQUE_RULE = "sql-opaque-statement"
MASK_FAILSAFE_RULE = "mask-fail-closed"
# The planner's statistics: most common values, histogram bounds, sampled from every column
STATISTICS_RELATIONS = frozenset(("pg_catalog", name) for name in (
    "pg_statistic", "pg_stats", "pg_statistic_ext_data", "pg_stats_ext", "pg_stats_ext_exprs",
    "pg_stat_activity"))  # and the text of every session's statement now, literals included
# Views of statements' texts in whatever schema their extension lives (pg_stat_statements),
# and the set-returning functions of the same names they are defined over: never learned
STATEMENT_TEXT_RELATIONS = frozenset({"pg_stat_statements", "pg_stat_statements_info"})

# Functions that reach outside the query's tables: files, programs, other servers, other
# sessions, settings. Denied unless an allow/approve rule names them in `sql.functions`.
DANGEROUS_FUNCTIONS = frozenset({
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "lo_import", "lo_export", "lo_from_bytea", "lo_put", "lo_unlink",
    "lo_create", "lo_open", "lowrite", "loread", "dblink", "dblink_exec", "dblink_connect", "dblink_send_query",
    "dblink_open", "dblink_connect_u", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
    "pg_rotate_logfile", "set_config", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
    "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "pg_advisory_lock", "pg_advisory_xact_lock", "query_to_xml", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "table_to_xml", "database_to_xml", "schema_to_xml", "pg_logical_emit_message",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot", "pg_drop_replication_slot",
    "pg_replication_origin_create", "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_logdir_ls",
    "pg_import_system_collations", "txid_current", "pg_current_xact_id", "pg_notify", "nextval", "setval",
    # other sessions' queries, settings and files: what a deny on pg_stat_activity or
    # pg_settings would not stop if these were free
    "pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_get_backend_client_addr",
    "pg_stat_get_backend_client_port", "pg_stat_get_backend_userid", "pg_stat_get_backend_dbid",
    "pg_stat_get_backend_wait_event", "pg_stat_get_backend_wait_event_type", "pg_stat_get_progress_info",
    "pg_stat_get_wal_receiver", "pg_stat_get_subscription", "pg_get_replication_slots",
    "pg_stat_get_replication_slot", "pg_get_backend_memory_contexts", "pg_show_all_settings",
    "pg_show_all_file_settings", "pg_hba_file_rules", "pg_ident_file_mappings", "pg_get_shmem_allocations",
    "pg_lock_status", "pg_prepared_xact", "pg_stat_get_backend_pid", "pg_stat_get_backend_start",
    "pg_stat_get_backend_activity_start", "pg_stat_get_backend_xact_start", "pg_stat_get_backend_subxact",
    # the XML exports run queries over whole tables, schemas or databases
    "query_to_xmlschema", "table_to_xmlschema", "schema_to_xmlschema", "database_to_xmlschema",
    "table_to_xml_and_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml_and_xmlschema",
    "cursor_to_xmlschema", "ts_stat", "ts_rewrite",
})
# Volatile pg_catalog functions allowed by default all the same: they change nothing and read
# no table data, only the clock, a random source, or what psql's \d and \l+ show of sizes,
# partitions and recovery state.
HARMLESS_VOLATILE_FUNCTIONS = frozenset({
    "random", "clock_timestamp", "timeofday", "gen_random_uuid", "pg_partition_ancestors", "pg_partition_tree",
    "pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size", "pg_database_size",
    "pg_tablespace_size", "pg_is_in_recovery", "pg_jit_available", "pg_advisory_unlock_all",
})
# What a column default may call on a write the policy allows, though the dangerous list
# names it: a serial column's sequence.
COLUMN_DEFAULT_FUNCTIONS = frozenset({"pg_catalog.nextval"})
DDL_KINDS = frozenset({"create", "alter", "drop", "comment", "grant", "revoke", "truncate"})
# What the learning rule (interceptor.policy.learn) does not cover: changes to the database's
# structure and permissions, COPY reaching the server's files or programs, and SET of a
# setting a session may not choose on its own (SESSION_SETTINGS are allowed by default):
# session_replication_role turns triggers off, default_transaction_read_only a read-only role
# writable; and reads of relations holding credentials, large objects, or the statements and
# sampled values of other sessions (the enforcer logs every agent of a resource in as one
# role, whose sessions pg_stat_activity shows).
NEVER_LEARNED_KINDS = DDL_KINDS | {"copy_file", "copy_program", "set"}
NEVER_LEARNED_RELATIONS = STATISTICS_RELATIONS | frozenset(("pg_catalog", name) for name in (
    "pg_authid", "pg_shadow", "pg_user_mapping", "pg_user_mappings", "pg_subscription", "pg_largeobject",
    "pg_file_settings", "pg_hba_file_rules", "pg_ident_file_mappings"))
# Statements allowed by default unless a deny rule names their kind: (rule, reason).
_BUILTIN_KINDS = {
    "transaction": (TRANSACTION_RULE, "transaction control is allowed by default"),
    "show": (BOOTSTRAP_RULE, "SHOW of a setting every client reads is allowed by default"),
    "set": (BOOTSTRAP_RULE, "SET of a setting a session may choose is allowed by default"),
    "reset": (BOOTSTRAP_RULE, "RESET (back to the session's defaults) is allowed by default"),
    "discard": (BOOTSTRAP_RULE, "DISCARD (what connection pools send) is allowed by default"),
    "deallocate": (BOOTSTRAP_RULE, "DEALLOCATE of the session's own prepared statements is allowed by default"),
    "fetch": (CURSOR_RULE, "FETCH and MOVE read a cursor whose DECLARE was judged (the session refuses any other "
                           "and masks what it returns as its query's result)"),
    "close": (CURSOR_RULE, "CLOSE of the session's own cursors is allowed by default"),
}
_ALWAYS_BUILTIN = frozenset({"transaction", "fetch", "close"})
_ALWAYS_BUILTIN = frozenset({"transaction", "fetch", "close"})
# (the statement's judgement, its masks, its masked outputs, how each action and call was judged)
StatementJudgement = tuple[Judgement, list[MaskSpec], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class SqlMatch:
    """A rule's `sql:` block; every given field must hold."""

    kinds: tuple[str, ...] | None = None  # statement kinds, lower case; "ddl" and "*" stand for several
    tables: tuple[tuple[str, str], ...] | None = None  # (schema glob, table glob)
    columns: tuple[str, ...] | None = None  # column globs: "name" or "schema.table.column"
    functions: tuple[str, ...] | None = None  # "name" or "schema.name" globs, lower case


def parse_sql_match(raw: Mapping[str, Any], problem: Problem) -> SqlMatch:
    """A schema-valid `sql:` block as a SqlMatch; a table pattern that is not schema.table and
    a column pattern of two parts are reported to `problem` (path within the block, message)."""
    tables: list[tuple[str, str]] = []
    for i, pattern in enumerate(raw.get("tables", ())):
        parts = pattern.split(".")
        if len(parts) != 2 or not all(parts):
            problem(("tables", i), f"table pattern {pattern!r}: expected schema.table "
                    "(globs allowed, e.g. sales.* or public.orders)")
            continue
        tables.append((parts[0], parts[1]))
    for i, pattern in enumerate(raw.get("columns", ())):
        if len(pattern.split(".")) not in (1, 3):
            problem(("columns", i), f"column pattern {pattern!r}: expected column or schema.table.column")
    return SqlMatch(kinds=tuple(k.lower() for k in raw["kinds"]) if "kinds" in raw else None,
                    tables=tuple(tables) if "tables" in raw else None,
                    columns=tuple(raw["columns"]) if "columns" in raw else None,
                    functions=tuple(f.lower() for f in raw["functions"]) if "functions" in raw else None)


def sql_match(rule: Rule) -> SqlMatch | None:
    """The rule's `sql:` block; None for a rule about any operation."""
    return rule.match if isinstance(rule.match, SqlMatch) else None


def judge_sql(context: Context, request: Request, query: SqlQuery) -> Decision:
    """The Decision for one query, kept in the engine's cache: by exact text first (a prepared
    statement's comes back every execution), then by numeric shape: `WHERE aid = 1` and `= 7`
    are judged as `= 0` once, as the analysis would not tell them apart anyway. The text first
    analysed for a shape is kept under both keys; its siblings are not (one-off texts would
    push out what repeats). A shape whose analysis fails is judged on the real text instead,
    so the error names what the client sent, and so is one that changes settings (`SET
    statement_timeout = 5000`: the effect carries the number). The key holds the settings the
    query runs under and the catalog's version, never the catalog itself; a query whose
    catalog is unavailable is not kept. Never raises on bad input (it denies)."""
    catalog = _catalog(context, query)
    rules = context.rules(request, OPERATION_KEY)
    if isinstance(catalog, CatalogUnavailable):
        return _judge(query, catalog, rules, query.text)
    cache = context.cache
    where = (context.policy.version, request.subject, request.resource, query.database, query.settings,
             query.defaults, catalog.version if isinstance(catalog, Catalog) else None)
    key: Hashable = (*where, query.text)
    decision = cache.get(key)
    if decision is not None:
        return decision
    shape = numeric_shape(query.text)
    if shape is not None:
        shape_key: Hashable = (*where, shape)
        decision = cache.get(shape_key)
        if decision is not None:
            return decision
        if shape_holds(shape):
            decision = _judge(query, catalog, rules, shape[0])
            if not any("error" in detail or detail["effects"] for detail in decision.details):
                cache.keep(shape_key, decision, len(shape[0]) + len(shape[1]))
                cache.keep(key, decision, len(query.text))
                return decision
    decision = _judge(query, catalog, rules, query.text)
    cache.keep(key, decision, len(query.text))
    return decision


def judge_uncached(context: Context, request: Request, query: SqlQuery) -> Decision:
    """The Decision for the query's own text, neither looked up in the cache nor kept there."""
    return _judge(query, _catalog(context, query), context.rules(request, OPERATION_KEY), query.text)


def _catalog(context: Context, query: SqlQuery) -> AnyCatalog:
    return query.catalog if query.catalog is not None else context.catalog


def _judge(query: SqlQuery, catalog: AnyCatalog, rules: list[Rule], text: str) -> Decision:
    """`text`: the query's own, or its numeric shape's."""
    worst: Judgement | None = None
    masks: list[MaskSpec] = []
    details: list[dict[str, object]] = []
    for statement in analyse(text, query.settings, query.defaults, catalog):
        judgement, statement_masks, masked_outputs, judged = _statement(statement, rules)
        detail: dict[str, object] = {**statement.summary(), "verdict": judgement.verdict.value,
                                     "rule": judgement.rule, "reason": judgement.reason, "judged": judged}
        detail["effects"] = [effect.to_dict() for effect in statement.effects]
        detail["output_count"] = len(statement.outputs)
        if masked_outputs:
            detail["masked_outputs"] = masked_outputs
        details.append(detail)
        masks.extend(m for m in statement_masks if m not in masks)
        if worst is None or severity(judgement) > severity(worst):
            worst = judgement
    if worst is None:
        return Decision.deny(UNPARSED_RULE, "not understood, denied: no statement")
    return worst.decision(tuple(masks), tuple(details))


def _statement(statement: Statement, rules: list[Rule]) -> StatementJudgement:
    if statement.error is not None:
        if statement.rule is not None:
            return Judgement(Verdict.DENY, statement.rule, f"denied: {statement.error}"), [], [], []
        return Judgement(Verdict.DENY, UNPARSED_RULE, f"not understood, denied: {statement.error}"), [], [], []
    if statement.kind == "empty":
        return Judgement(Verdict.ALLOW, "empty-query", "no statement"), [], [], []
    if statement.opaque:
        return _opaque(statement, rules), [], [], []
    if statement.kind in _BUILTIN_KINDS and (statement.kind in _ALWAYS_BUILTIN or statement.bootstrap):
        denied = [r for r in rules if r.effect == "deny" and _explicit_kind(r, statement.kind)]
        if denied:
            return Judgement(Verdict.DENY, denied[0].name, denied[0].reason or f"{statement.kind} denied"), [], [], []
        return Judgement(Verdict.ALLOW, *_BUILTIN_KINDS[statement.kind]), [], [], []
    actions = [_action(action, statement, rules) for action in statement.actions]
    calls = [_call(call, statement, rules) for call in statement.calls]
    judged = [_judged_action(a, j) for a, j in zip(statement.actions, actions)]
    judged += [_judged_call(c, j) for c, j in zip(statement.calls, calls)]
    if not judged:
        return Judgement(Verdict.DENY, UNPARSED_RULE, f"{statement.kind}: nothing the analyser can judge"), [], [], []
    worst = max(actions + calls, key=severity)
    if worst.verdict is Verdict.DENY:
        return worst, [], [], judged
    masking = [(r, r.mask) for r in rules if r.effect == "mask" and r.mask is not None
               and _mask_rule_applies(r, statement)]
    masks, outputs, refusal = _masks(statement, masking)
    if refusal is not None:
        return refusal, [], [], judged
    return worst, masks, outputs, judged


def _judged_action(action: Action, judgement: Judgement) -> dict[str, Any]:
    """How one action was judged, for audit (`Decision.details[i]["judged"]`): columns None
    when the action may read any column of its table."""
    return {"action": action.kind, "table": qualified(action.table) if action.table else None,
            "columns": sorted(action.columns) if action.columns is not None else None,
            "rule": judgement.rule, "verdict": judgement.verdict.value}


def _judged_call(call: Call, judgement: Judgement) -> dict[str, Any]:
    """How one function call was judged, for audit: the name as written and the functions
    it may resolve to (None without a catalog); rule "" when allowed by default."""
    return {"function": call.display, "resolves": sorted(_qualified(call)) if call.candidates else None,
            "rule": judgement.rule, "verdict": judgement.verdict.value}


def _opaque(statement: Statement, rules: list[Rule]) -> Judgement:
    """sqlglot could not see inside: only a rule that names this kind (and nothing about
    tables, columns or functions, which cannot be checked) may decide it."""
    named = [r for r in rules if r.effect != "mask" and _explicit_kind(r, statement.kind)
             and (m := sql_match(r)) is not None and m.tables is None and m.columns is None and m.functions is None]
    blanket = [r for r in rules if r.effect == "deny" and sql_match(r) is None]
    judgement = pick(blanket + named, "")
    if judgement.rule == DEFAULT_DENY:
        return Judgement(Verdict.DENY, OPAQUE_RULE, f"{statement.kind.upper()} statements are opaque to the "
                         f"analyser; denied unless a rule names kind {statement.kind!r}")
    return judgement


def _action(action: Action, statement: Statement, rules: list[Rule]) -> Judgement:
    """What the rules say; with none, a bootstrap read (a type-lookup catalog relation,
    or a SELECT of session functions without FROM) is allowed by default."""
    matching = [r for r in rules if r.effect != "mask" and _action_matches(r, action, statement)]
    where = f" on {action.table[0]}.{action.table[1]}" if action.table else ""
    unlearned = learning_rule(rules) is not None and never_learned(action, statement)
    judgement = pick(matching, f"no rule allows {action.kind}{where}" + (
        " (learn mode never learns DDL, COPY with the server's files or programs, SET of a setting a session "
        "may not choose, nor reads of credentials or other sessions' statements, directly or through a view: "
        "a rule must name it)" if unlearned else ""))
    if judgement.rule == DEFAULT_DENY and action.kind == "select" and (
            action.table in BOOTSTRAP_RELATIONS or (action.table is None and statement.bootstrap)):
        return Judgement(Verdict.ALLOW, BOOTSTRAP_RULE, "what drivers read when they connect is allowed by default")
    return judgement


def _call(call: Call, statement: Statement, rules: list[Rule]) -> Judgement:
    """A rule naming the function, then the dangerous list, then (with a catalog) what
    the function may be: every candidate must be safe to run on the agent's behalf."""
    matching = [r for r in rules if r.effect != "mask" and (m := sql_match(r)) is not None
                and m.functions is not None and _function_matches(m.functions, r.effect, call)
                and _kind_ok(m.kinds, statement.kind)]
    judgement = pick(matching, "")
    if judgement.rule != DEFAULT_DENY:
        return judgement
    if _session_setting(call, statement):
        return Judgement(Verdict.ALLOW, BOOTSTRAP_RULE, "set_config of a setting a session may choose is "
                         "allowed by default, as SET is")
    by_default = call.via is not None and call.via[0] == "default"
    if call.name in DANGEROUS_FUNCTIONS and not (by_default and _qualified(call) <= COLUMN_DEFAULT_FUNCTIONS):
        return Judgement(Verdict.DENY, DANGEROUS_RULE, f"function {call.display}(){_via(call)} is on the "
                         "dangerous list; allow it explicitly with sql.functions")
    for function in call.candidates or ():
        why = _unsafe(function)
        if why is not None and not (by_default and function.qualified in COLUMN_DEFAULT_FUNCTIONS):
            learning = learning_rule(rules) if function.schema != "pg_catalog" else None
            if learning is not None and function.name not in STATEMENT_TEXT_RELATIONS:
                return Judgement(Verdict.ALLOW, learning.name, f"learn mode: function {function.qualified}()"
                                 f"{_via(call)} is {why}, allowed while learning")
            return Judgement(Verdict.DENY, DEFAULT_DENY, f"function {function.qualified}(){_via(call)} is {why}: "
                             f"denied by default; allow it with sql.functions: [{function.qualified}]"
                             + (UNLEARNED_NOTE if learning is not None else ""))
    return Judgement(Verdict.ALLOW, "", "")


def _session_setting(call: Call, statement: Statement) -> bool:
    """pg_catalog.set_config('name', 'value', is_local) with literals the analyser read (its
    effects) of settings a session may choose: what pg_dump and drivers send instead of SET."""
    return (call.name == "set_config" and call.schema in (None, "pg_catalog") and call.via is None
            and all(f.schema == "pg_catalog" for f in call.candidates or ())
            and bool(statement.effects) and all(e.kind == "set" and e.name in SESSION_SETTINGS
                                                for e in statement.effects))


def _unsafe(function: Function) -> str | None:
    """Why running this function on the agent's behalf is not allowed by default, if it is not."""
    if function.schema != "pg_catalog":
        return f"user-defined ({function.volatility}{', SECURITY DEFINER' if function.security_definer else ''})"
    if function.security_definer:
        return "SECURITY DEFINER"
    if function.volatility not in ("immutable", "stable", "volatile"):
        return f"of unknown volatility ({function.volatility})"
    if function.volatility == "volatile" and function.name not in HARMLESS_VOLATILE_FUNCTIONS:
        return "volatile (it may change data or the session)"
    return None


def _qualified(call: Call) -> set[str]:
    """The schema.name a call may run: each candidate's, or the one written."""
    if call.candidates:
        return {f.qualified for f in call.candidates}
    return {call.display} if call.schema is not None else set()


def _via(call: Call) -> str:
    if call.via is None:
        return ""
    how, what = call.via
    if how == "read":
        return f" (run when {what} is read)"
    if how == "default":
        return f" (a column default of {what})"
    if how == "operator":
        return f" (the function of operator {what})"
    if how == "type":
        return f" (run by a cast to {what})"
    if how == "attribute":
        return f" (called in attribute notation: {what})"
    return f" (run by {how.upper()} on {what})"


def _function_matches(patterns: tuple[str, ...], effect: str, call: Call) -> bool:
    """`sql.functions` globs: `name` matches the function in any schema; `schema.name`
    matches what it resolves to: for a deny rule any candidate, for allow/approve all."""
    if any(fnmatchcase(call.name, p) for p in patterns if "." not in p):
        return True
    dotted = [p for p in patterns if "." in p]
    hits = [any(fnmatchcase(name, p) for p in dotted) for name in sorted(_qualified(call))]
    return bool(dotted and hits) and (any(hits) if effect == "deny" else all(hits))


def _explicit_kind(rule: Rule, kind: str) -> bool:
    match = sql_match(rule)
    return match is not None and match.kinds is not None and kind in match.kinds


def _kind_ok(kinds: tuple[str, ...] | None, kind: str) -> bool:
    return kinds is None or kind in kinds or "*" in kinds or (kind in DDL_KINDS and "ddl" in kinds)


def _action_matches(rule: Rule, action: Action, statement: Statement) -> bool:
    """Does `rule` cover this action of `statement`? Rules about functions only judge
    function calls."""
    match = sql_match(rule)
    if match is None:
        return rule.operation is None and not (is_learning(rule) and never_learned(action, statement))
    return _covers(match, rule.effect == "deny", action)


def never_learned(action: Action, statement: Statement) -> bool:
    """Does the learning rule leave this action of `statement` to the rules: its kind is
    one of NEVER_LEARNED_KINDS, or the statement reads a relation of NEVER_LEARNED_RELATIONS
    or a view of statement texts (in any schema), itself or through the definition of a view
    it reads (Statement.filters holds what those definitions read: a view over
    pg_stat_statements is no innocent table)?"""
    return action.kind in NEVER_LEARNED_KINDS or _unlearned_relation(action.table) or any(
        _unlearned_relation((ref[0], ref[1])) for ref in statement.filters)


def _unlearned_relation(table: tuple[str, str] | None) -> bool:
    return table is not None and (table in NEVER_LEARNED_RELATIONS or table[1] in STATEMENT_TEXT_RELATIONS)


def _covers(m: SqlMatch, deny: bool, action: Action) -> bool:
    """Does an `sql:` block cover this action, for a deny rule (any column will do, an
    unknown table or column set is covered) or an allow, approve or mask rule (all must)?"""
    if m.functions is not None or not _kind_ok(m.kinds, action.kind):
        return False
    if m.tables is not None:
        if action.table is None:
            if deny or action.kind != "select":
                return False
        elif not any(fnmatchcase(action.table[0], s) and fnmatchcase(action.table[1], t) for s, t in m.tables):
            return False
    if m.columns is None or action.table is None:
        return True
    if action.columns is None:
        return deny  # which columns is unknown: a deny rule about columns must hold
    hits = [_column_matches(m.columns, action.table, c) for c in action.columns]
    return any(hits) if deny else all(hits)


def _column_matches(patterns: tuple[str, ...], table: tuple[str, str], column: str) -> bool:
    for pattern in patterns:
        parts = pattern.split(".")
        if len(parts) == 1 and fnmatchcase(column, pattern):
            return True
        if len(parts) == 3 and all(fnmatchcase(v, p) for v, p in zip((*table, column), parts)):
            return True
    return False


def _mask_rule_applies(rule: Rule, statement: Statement) -> bool:
    if rule.operation not in (None, OPERATION_KEY):
        return False
    match = sql_match(rule)
    return match is None or any(_covers(match, False, a) for a in statement.actions)


def _ref_masked(pattern: tuple[str, str, str], ref: ColumnRef) -> bool:
    """A `*` ref (columns unknown) may be any column of its table."""
    schema, table, column = ref
    return (fnmatchcase(schema, pattern[0]) and fnmatchcase(table, pattern[1])
            and (column == "*" or fnmatchcase(column, pattern[2])))


def _embeds_masked_rows(output: OutputColumn, hit: list[ColumnRef]) -> bool:
    """Does a masked column reach the result inside a whole row (of its relation, or of a
    derived table), rather than by name?"""
    return ("", "") in output.rows or any(ref[:2] in output.rows for ref in hit)


def _masks(statement: Statement, rules: list[tuple[Rule, MaskRule]]
           ) -> tuple[list[MaskSpec], list[dict[str, Any]], Judgement | None]:
    """The masks a statement's results need, the result columns they cover, or a refusal
    when masking cannot be guaranteed (`_mask_refusal`)."""
    specs: list[MaskSpec] = []
    outputs: dict[int, dict[str, Any]] = {}
    for rule, mask in rules:
        patterns = mask.columns
        refusal = _mask_refusal(statement, rule.name, patterns)
        if refusal is not None:
            return [], [], refusal
        columns: set[str] = set()
        for output in statement.outputs:
            hit = sorted(r for r in output.sources if any(_ref_masked(p, r) for p in patterns))
            if hit:
                columns.update(".".join(r) for r in hit)
                entry = outputs.setdefault(output.position, {"position": output.position, "name": output.name,
                                                              "columns": [], "rules": []})
                if output.shape is not None and output.row is not None:
                    entry.update(shape=output.shape, table=".".join(output.row))
                entry["columns"] = sorted(set(entry["columns"]) | {".".join(r) for r in hit})
                entry["rules"].append(rule.name)
        specs.append(MaskSpec(tuple(sorted(columns)), mask.classifiers, mask.style, rule.name,
                              tuple(".".join(p) for p in patterns)))
    return specs, [outputs[p] for p in sorted(outputs)], None


def _mask_refusal(statement: Statement, rule: str, patterns: tuple[tuple[str, str, str], ...]) -> Judgement | None:
    """Why the rule's masked columns could leave unmasked, None when they cannot: used outside
    a result column (which rows, their order or count would tell them), a result column of a
    table whose columns are unknown, a whole row in a shape the masker cannot rewrite, or a
    result computed from one (an error it raises, the time it takes would tell it)."""
    statistics = sorted(f"{a.table[0]}.{a.table[1]}" for a in statement.actions if a.table is not None
                        and (a.table in STATISTICS_RELATIONS or a.table[1] in STATEMENT_TEXT_RELATIONS))
    if statistics and patterns:
        return Judgement(Verdict.DENY, MASK_FAILSAFE_RULE, f"{statistics[0]} holds values of columns (sampled, "
                          f"or as literals of statements), those rule {rule} masks included")
    for ref in sorted(statement.filters):
        if any(_ref_masked(p, ref) for p in patterns):
            what = ".".join(ref) if ref[2] != "*" else f"{ref[0]}.{ref[1]} (whole rows)"
            return Judgement(Verdict.DENY, rule, f"masked column {what} is used outside the result columns "
                             "(WHERE, JOIN, ORDER BY, GROUP BY, DISTINCT, UNION, a window, a write, a copy, or a "
                             "view's definition): the rows it chooses or orders would tell its value; use it only "
                             "in the select list")
    for output in statement.outputs:
        hit = sorted(r for r in output.sources if any(_ref_masked(p, r) for p in patterns))
        if any(r[2] == "*" for r in hit):
            unknown = next(r for r in hit if r[2] == "*")
            return Judgement(Verdict.DENY, MASK_FAILSAFE_RULE, f"schema of {unknown[0]}.{unknown[1]} is unknown: "
                             f"cannot tell which result columns rule {rule} must mask")
        if hit and output.shape is None and _embeds_masked_rows(output, hit):
            tables = ", ".join(sorted(f"{s}.{t}" if s else "a derived table" for s, t in output.rows))
            return Judgement(Verdict.DENY, MASK_FAILSAFE_RULE, f"result column {output.position + 1} ({output.name}) "
                             f"embeds whole rows of {tables}, whose column {'.'.join(hit[0])} rule {rule} "
                             "masks, in a shape the masker cannot rewrite field by field; select the columns, or "
                             "pass the row alone to row_to_json, to_jsonb or json_agg")
    for ref in sorted(statement.computed):
        if any(_ref_masked(p, ref) for p in patterns):
            return Judgement(Verdict.DENY, rule, f"a result computed from masked column {'.'.join(ref)} is not "
                             "run: what the computation does with the value (an error it raises, the time it "
                             "takes) could tell it; select the column itself, which comes back masked")
    return None
