"""Every function a statement makes the server run, named as the server looks it up, and
judged with the catalog: user-defined, volatile and SECURITY DEFINER functions are denied
by default wherever they are called, also through a view or a column default."""

from __future__ import annotations

import re

import pytest
from sqlglot.dialects.postgres import Postgres

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, analyse, load_policy_text
from interceptor.policy.catalog import Catalog, Function, Relation
from interceptor.policy.sql_functions import NOT_FUNCTION_NAMES, function_calls
from interceptor.policy.statement import Unsupported


def builtin(name: str, volatility: str = "immutable", kind: str = "f", definer: bool = False) -> Function:
    return Function("pg_catalog", name, volatility=volatility, kind=kind, security_definer=definer)


CATALOG = Catalog.build(
    [Relation("sales", "orders", "r", ("id", "total"),
              write_functions=(("default", "pg_catalog.nextval"), ("default", "pg_catalog.now"))),
     Relation("sales", "tickets", "r", ("id", "body"), write_functions=(("default", "sales.next_ticket"),)),
     Relation("sales", "report", "v", ("id", "hit"), functions=("public.audit_hit",)),
     Relation("sales", "plain", "v", ("id",), functions=("pg_catalog.sum",)),
     Relation("sales", "totals", "m", ("total",)),  # its definition runs at REFRESH, not when read
     Relation("pg_catalog", "pg_class", "r", ("oid", "relname"))],
    [builtin("lower"), builtin("upper"), builtin("count", kind="a"), builtin("sum", kind="a"), builtin("now", "stable"),
     builtin("btrim"), builtin("substring"), builtin("extract"), builtin("position"), builtin("date_trunc"),
     builtin("random", "volatile"), builtin("clock_timestamp", "volatile"), builtin("gen_random_uuid", "volatile"),
     builtin("timeofday", "volatile"), builtin("nextval", "volatile"), builtin("set_config", "volatile"),
     builtin("pg_read_file", "volatile"), builtin("setseed", "volatile"), builtin("unnest"),
     builtin("sneaky", "stable", definer=True),
     Function("sales", "purge", volatility="volatile", language="plpgsql"),
     Function("sales", "fmt", volatility="immutable", language="sql"),
     Function("sales", "definer", volatility="stable", security_definer=True, returns_set=True),
     Function("sales", "next_ticket", volatility="volatile", language="sql"),
     Function("public", "audit_hit", volatility="volatile", language="plpgsql"),
     Function("evil", "lower", volatility="volatile", language="plpgsql"),
     Function("evil", "count", volatility="immutable", kind="a")],
    schemas=("public", "sales", "evil"), default_search_path=("sales", "public"), user="bot")

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: read, effect: allow, sql: {kinds: [select], tables: ["sales.*", "pg_catalog.*"]}}
  - {name: write, effect: allow, sql: {kinds: [insert, update, delete], tables: ["sales.*"]}}
  - {name: may-set, effect: allow, sql: {kinds: [set]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "functions.yaml"))


def decide(engine: PolicyEngine, text: str, catalog: Catalog | None = CATALOG) -> Decision:
    return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, catalog=catalog)))


def called(text: str) -> list[str]:
    return [call.display for statement in analyse(text) for call in statement.calls]


# -- which calls, named how ---------------------------------------------------------------

@pytest.mark.parametrize("text,names", [
    ("select lower(x), pg_catalog.lower(x), \"Lower\"(x), s.f(1) from t",
     ["lower", "pg_catalog.lower", "Lower", "s.f"]),
    ("select now(), current_timestamp, current_timestamp(2), localtime, current_date from t", ["now"]),
    ("select current_user, session_user, current_role, user, current_catalog, current_schema", []),
    ("select current_schema(), version(), pg_catalog.current_setting('x')", ["current_schema", "version",
                                                                           "pg_catalog.current_setting"]),
    ("select coalesce(a, 1), greatest(a, 1), least(a, 1), nullif(a, 1), cast(a as text), a::text from t", []),
    ("select row(1, 2), array[1], array(select 1), exists(select 1), 1 in (1), 1 = any(array[1]) from t", []),
    ("select case when a then 1 end, a between 1 and 2, x::char(3), y::numeric(10, 2) from t", []),
    ("select extract(year from d), position('a' in b), normalize(b) from t",
     ["pg_catalog.extract", "pg_catalog.position", "pg_catalog.normalize"]),
    ("select trim(b), trim(leading 'x' from b), trim(trailing from b), trim(both 'x' from b) from t",
     ["pg_catalog.btrim", "pg_catalog.ltrim", "pg_catalog.rtrim", "pg_catalog.btrim"]),
    ("select substring(b from 1 for 2), substring(b, 1, 2), overlay(b placing 'x' from 1), overlay(b, 'x', 1) from t",
     ["pg_catalog.substring", "substring", "pg_catalog.overlay", "overlay"]),
    ("select count(*), sum(a) filter (where a > 1), rank() over (order by a), string_agg(b, ','), json_agg(t) from t",
     ["count", "sum", "rank", "string_agg", "json_agg"]),
    ("select date_part('year', d), date_trunc('day', d), to_char(d, 'YYYY'), char_length(b), strpos(b, 'a') from t",
     ["date_part", "date_trunc", "to_char", "char_length", "strpos"]),
    ("select if(1, 2, 3), like('a', 'b'), mod(5, 2), left(b, 1) from t", ["if", "like", "mod", "left"]),
    ("select a from t where a like ('x') and a not like ('y') and not like('a', 'b')", ["like"]),
    ("select * from generate_series(1, 3), lateral unnest(array[1]) with ordinality u(v, i), sales.purge() p",
     ["generate_series", "unnest", "sales.purge"]),
])
def test_calls_are_named_as_the_server_resolves_them(text: str, names: list[str]) -> None:
    assert called(text) == names


def test_every_sqlglot_word_followed_by_a_parenthesis_is_a_call_or_an_error() -> None:
    """Whatever sqlglot makes of `word(...)` in any position, the analyser reports the call
    (or fails), unless PostgreSQL never reads that word as a function name."""
    dialect = Postgres()
    parser = dialect.parser()
    vocabulary = (set(dialect.tokenizer_class.KEYWORDS) | set(parser.FUNCTIONS) | set(parser.FUNCTION_PARSERS)
                  | set(parser.NO_PAREN_FUNCTION_PARSERS) | {t.name for t in parser.NO_PAREN_FUNCTIONS})
    words = sorted(w.lower() for w in vocabulary
                   if re.fullmatch(r"[A-Za-z_]\w*", w) and w.lower() not in NOT_FUNCTION_NAMES)
    templates = ["select {w}({a})", "select * from {w}({a})", "select * from t join lateral {w}({a}) x on true",
                 "select 1 from t where x = {w}({a}) order by {w}({a})", "insert into t values ({w}({a}))"]
    missed = []
    for word in words:
        for template in templates:
            for arguments in ("", "1", "1, 2", "1, 2, 3"):
                text = template.format(w=word, a=arguments)
                try:
                    tokens = dialect.tokenize(text)
                    tree = parser.parse(tokens, text)[0]
                except Exception:  # noqa: BLE001 - what sqlglot cannot parse is denied anyway
                    continue
                try:
                    calls = function_calls(tree, tokens)
                except Unsupported:
                    continue
                if not any(call.name == word for call, _ in calls):
                    missed.append(text)
    assert not missed


def test_a_from_item_sqlglot_reads_as_a_table_but_is_a_call_is_an_error() -> None:
    (statement,) = analyse("select * from comment(1)")
    assert statement.error is not None and "calls a function" in statement.error


# -- judged with the catalog ----------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "select sales.purge()",
    "select * from sales.purge()",
    "select id from orders where purge() is not null",
    "with x as (select purge() as p) select p from x",
    "select id from orders order by purge()",
    "select id from orders group by id having count(purge()) > 0",
    "select o.id from orders o join tickets t on t.id = purge()",
    "select id from orders where id in (select purge())",
    "values (purge())",
    "insert into orders (id) values (purge())",
    "update orders set total = purge()",
    "delete from orders returning purge()",
    "select id from orders; select purge()",
    "explain analyze select purge()",
])
def test_a_user_defined_function_is_denied_wherever_it_is_called(engine: PolicyEngine, text: str) -> None:
    decision = decide(engine, text)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "default-deny"), decision.reason
    assert "sales.purge() is user-defined (volatile)" in decision.reason and "sql.functions" in decision.reason


def test_immutable_user_defined_functions_are_denied_too(engine: PolicyEngine) -> None:
    assert "sales.fmt() is user-defined (immutable)" in decide(engine, "select fmt(1)").reason


def test_security_definer_is_denied(engine: PolicyEngine) -> None:
    assert "SECURITY DEFINER" in decide(engine, "select * from sales.definer(1)").reason
    decision = decide(engine, "select sneaky()")
    assert decision.verdict is Verdict.DENY and "pg_catalog.sneaky() is SECURITY DEFINER" in decision.reason


@pytest.mark.parametrize("text", [
    "select lower(total::text), upper('x'), count(*), sum(total), now(), extract(year from now()) from orders",
    "select date_trunc('day', now()), trim(' x '), substring('abc' from 1), position('a' in 'abc')",
    "select random(), clock_timestamp(), timeofday(), gen_random_uuid()",
    "select coalesce(total, 0), current_user, current_timestamp from orders",
    "select * from unnest(array[1, 2])",
    "select id, hit from plain",
    "select total from totals",
])
def test_immutable_stable_and_harmless_pg_catalog_functions_are_allowed(engine: PolicyEngine, text: str) -> None:
    decision = decide(engine, text)
    assert decision.verdict is Verdict.ALLOW, decision.reason


@pytest.mark.parametrize("text,reason", [
    ("select setseed(0.5)", "pg_catalog.setseed() is volatile"),
    ("select nextval('sales.seq')", "nextval() is on the dangerous list"),
    ("select pg_read_file('/etc/passwd')", "pg_read_file() is on the dangerous list"),
    ("select set_config('statement_timeout', '0', false)", "set_config() is on the dangerous list"),
])
def test_volatile_and_dangerous_builtins_are_denied(engine: PolicyEngine, text: str, reason: str) -> None:
    decision = decide(engine, text)
    assert decision.verdict is Verdict.DENY and reason in decision.reason


def test_a_user_function_shadowing_a_builtin_earlier_in_the_path_is_denied(engine: PolicyEngine) -> None:
    assert decide(engine, "select lower('x')").verdict is Verdict.ALLOW
    # a schema with functions before pg_catalog: any call or operator could be taken over
    for statement in ("SELECT lower('x')", "SELECT count(*) FROM sales.orders", "SELECT pg_catalog.lower('x')",
                      "SELECT 1 + 1"):
        decision = decide(engine, f"SET search_path = evil, pg_catalog; {statement}")
        assert (decision.verdict, decision.rule) == (Verdict.DENY, "builtin-search-path-shadowing"), statement
        assert "searches evil before pg_catalog" in decision.reason
    assert decide(engine, "SET search_path = evil, pg_catalog; SET search_path = pg_catalog, evil; "
                          "SELECT pg_catalog.lower('x')").verdict is Verdict.ALLOW
    # pg_catalog first (not listed): still every same-named function of the path is a candidate
    decision = decide(engine, "SET search_path = evil; SELECT lower('x')")
    assert decision.verdict is Verdict.DENY and "evil.lower() is user-defined (volatile)" in decision.reason
    assert decision.details[1]["functions"] == ["lower"]


def test_a_quoted_name_is_another_function(engine: PolicyEngine) -> None:
    decision = decide(engine, 'select "Lower"(\'x\')')
    assert (decision.rule, decision.verdict) == ("catalog-unknown-function", Verdict.DENY)
    assert 'function "Lower" is not in the catalog (searched: pg_catalog, sales, public)' in decision.reason


def test_an_unknown_function_is_denied_by_name(engine: PolicyEngine) -> None:
    assert 'function "nosuch"' in decide(engine, "select nosuch(1)").reason
    assert 'function "sales.nosuch" is not in the catalog (searched: sales)' in decide(
        engine, "select sales.nosuch(1)").reason


def test_a_view_runs_the_functions_of_its_definition(engine: PolicyEngine) -> None:
    decision = decide(engine, "select id from report")
    assert decision.verdict is Verdict.DENY
    assert "public.audit_hit() (run when sales.report is read) is user-defined" in decision.reason
    assert decision.details[0]["functions"] == ["public.audit_hit"]


def test_a_write_runs_the_column_defaults(engine: PolicyEngine) -> None:
    decision = decide(engine, "insert into tickets (body) values ('x')")
    assert "sales.next_ticket() (a column default of sales.tickets) is user-defined" in decision.reason
    assert decide(engine, "select id from tickets").verdict is Verdict.ALLOW  # reading runs no default
    assert decide(engine, "update tickets set body = 'x'").verdict is Verdict.ALLOW
    assert decide(engine, "update tickets set id = default").verdict is Verdict.DENY
    # a serial column's nextval comes with the insert the policy allows
    assert decide(engine, "insert into orders (total) values (1)").verdict is Verdict.ALLOW


def test_rules_name_functions_by_name_or_by_schema() -> None:
    def engine_with(rule: str) -> PolicyEngine:
        return PolicyEngine(load_policy_text(POLICY + f"  - {rule}\n", "functions.yaml"))

    allow_named = engine_with("{name: purge-ok, effect: allow, sql: {functions: [sales.purge]}}")
    assert decide(allow_named, "select purge()").verdict is Verdict.ALLOW
    allow_any = engine_with("{name: purge-ok, effect: allow, sql: {functions: [purge]}}")
    assert decide(allow_any, "select * from sales.purge()").verdict is Verdict.ALLOW
    views = engine_with("{name: audit-ok, effect: allow, sql: {functions: [public.audit_hit]}}")
    assert decide(views, "select id from report").verdict is Verdict.ALLOW
    shadow = "SET search_path = evil, pg_catalog; SELECT lower('x')"
    only_builtin = engine_with("{name: lower-ok, effect: allow, sql: {functions: [pg_catalog.lower]}}")
    assert decide(only_builtin, shadow).verdict is Verdict.DENY  # evil.lower is a candidate too
    no_evil = engine_with("{name: no-evil, effect: deny, sql: {functions: [\"evil.*\"]}}")
    assert decide(no_evil, "SET search_path = evil; SELECT lower('x')").rule == "no-evil"
    assert decide(no_evil, "SELECT lower('x')").verdict is Verdict.ALLOW
    no_lower = engine_with("{name: no-lower, effect: deny, sql: {functions: [lower]}}")
    assert decide(no_lower, "select lower('x')").rule == "no-lower"


def test_procedures_stay_opaque(engine: PolicyEngine) -> None:
    assert decide(engine, "CALL sales.purge()").rule == "sql-opaque-statement"


def test_without_a_catalog_only_the_dangerous_list_applies(engine: PolicyEngine) -> None:
    assert decide(engine, "select sales.purge() from sales.orders", catalog=None).verdict is Verdict.ALLOW
    decision = decide(engine, "select pg_catalog.pg_read_file('x') from sales.orders", catalog=None)
    assert decision.rule == "builtin-dangerous-functions"
