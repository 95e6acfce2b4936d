"""Names resolved as the server resolves them, with a Catalog: pg_catalog searched first
unless listed, "$user", schemas missing from the catalog skipped, quoted identifiers, unknown
relations denied, an unavailable catalog, and the decision cache keyed by settings and the
catalog's version."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, analyse, load_policy_text
from interceptor.policy.catalog import Catalog, CatalogUnavailable, Function, Relation

RELATIONS = [
    Relation("pg_catalog", "pg_stat_activity", "v", ("pid", "usename", "query")),
    Relation("pg_catalog", "pg_class", "r", ("oid", "relname")),
    Relation("public", "pg_stat_activity", "r", ("pid", "query")),
    Relation("public", "orders", "r", ("id", "status")),
    Relation("public", "customers", "r", ("id", "name", "card")),
    Relation("sales", "orders", "r", ("id", "total")),
    Relation("sales", "Orders", "r", ("id", "secret")),
    Relation("bot", "orders", "r", ("id", "mine")),
    Relation("analyst", "orders", "r", ("id", "theirs")),
]
CATALOG = Catalog.build(RELATIONS, [Function("pg_catalog", "now", volatility="stable")],
                        schemas=("public", "sales", "bot", "analyst"), user="bot")

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: read, effect: allow, sql: {kinds: [select], tables: ["public.*", "pg_catalog.*", "bot.*"]}}
  - {name: no-activity, effect: deny, sql: {kinds: [select], tables: [pg_catalog.pg_stat_activity]}}
  - {name: may-set, effect: allow, sql: {kinds: [set]}}
  - {name: make-tables, effect: allow, sql: {kinds: [create], tables: ["public.*"]}}
  - {name: mask-card, effect: mask, mask: {columns: [public.customers.card]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "catalog.yaml"))


def decide(engine: PolicyEngine, text: str, catalog: Catalog | CatalogUnavailable | None = CATALOG,
           search_path: str | None = None, role: str | None = None) -> Decision:
    settings = tuple((k, v) for k, v in (("search_path", search_path), ("role", role)) if v is not None)
    return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, settings=settings, catalog=catalog)))


def tables(text: str, search_path: str | None = None, role: str | None = None,
           catalog: Catalog = CATALOG) -> list[tuple[str, str] | None]:
    settings = tuple((k, v) for k, v in (("search_path", search_path), ("role", role)) if v is not None)
    return [a.table for s in analyse(text, settings, (), catalog) for a in s.actions if a.table]


# -- pg_catalog first ---------------------------------------------------------------------

def test_pg_catalog_is_searched_first_unless_listed(engine: PolicyEngine) -> None:
    assert decide(engine, "select query from pg_stat_activity").rule == "no-activity"
    assert decide(engine, "select query from pg_stat_activity", search_path="public, pg_catalog").rule == "read"
    decision = decide(engine, "set search_path = public, pg_catalog; select query from pg_stat_activity")
    assert decision.verdict is Verdict.ALLOW and decision.details[1]["tables"] == ["public.pg_stat_activity"]
    assert decide(engine, "select query from pg_stat_activity", search_path="pg_catalog, public").rule == "no-activity"


def test_a_qualified_name_is_what_it_says() -> None:
    assert tables("select * from public.pg_stat_activity") == [("public", "pg_stat_activity")]
    assert tables("select * from pg_catalog.pg_stat_activity", "public, pg_catalog") == [
        ("pg_catalog", "pg_stat_activity")]


# -- "$user", schemas that do not exist -----------------------------------------------------

def test_dollar_user_is_the_role_in_force() -> None:
    assert tables("select id from orders") == [("bot", "orders")]  # the default path: "$user", public
    assert tables("select id from orders", role="analyst") == [("analyst", "orders")]
    assert tables("set role analyst; select id from orders") == [("analyst", "orders")]
    assert tables("set role nobody; select id from orders") == [("public", "orders")]  # no schema nobody: skipped
    assert tables("select id from orders", search_path="public, \"$user\"") == [("public", "orders")]


def test_schemas_missing_from_the_catalog_are_skipped() -> None:
    assert tables("select id from orders", search_path="nowhere, sales") == [("sales", "orders")]
    assert tables("select id from orders", search_path="\"$user\", sales", role="ghost") == [("sales", "orders")]


def test_the_catalogs_default_search_path_applies_when_none_is_set() -> None:
    catalog = Catalog.build(RELATIONS, schemas=("public", "sales"), default_search_path=("sales", "public"))
    assert tables("select id from orders", catalog=catalog) == [("sales", "orders")]
    assert tables("select id from orders", "public", catalog=catalog) == [("public", "orders")]


# -- identifiers ----------------------------------------------------------------------------

def test_quoted_identifiers_keep_their_case() -> None:
    assert tables('select id from sales."Orders"') == [("sales", "Orders")]
    assert tables("select id from sales.ORDERS") == [("sales", "orders")]
    assert tables('select id from "Orders"', "sales") == [("sales", "Orders")]


def test_identifiers_fold_and_truncate_as_the_server_does() -> None:
    long = "t" * 70
    catalog = Catalog.build([Relation("public", "t" * 63, "r", ("a",)), Relation("public", "ÉtÉ", "r", ("a",))])
    assert tables(f"select a from {long}", catalog=catalog) == [("public", "t" * 63)]
    assert tables(f'select a from "{long}"', catalog=catalog) == [("public", "t" * 63)]
    assert tables("select a from ÉTÉ", catalog=catalog) == [("public", "ÉtÉ")]  # only ASCII letters fold


def test_unicode_escaped_identifiers_are_denied(engine: PolicyEngine) -> None:
    assert decide(engine, 'select * from U&"\\006frders"').rule == "sql-not-understood"


# -- relations the catalog does not hold ------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("select * from nothere", 'relation "nothere" is not in the catalog (searched: pg_catalog, bot, public)'),
    ("select * from sales.nothere", 'relation "sales.nothere" is not in the catalog'),
    ("select * from pg_temp.scratch", 'relation "pg_temp.scratch" is not in the catalog'),
    ("select id from orders where id in (select id from ghosts)", 'relation "ghosts"'),
    ("insert into ghosts values (1)", 'relation "ghosts"'),
    ("set search_path = sales; select * from customers", "(searched: pg_catalog, sales)"),
])
def test_a_relation_the_catalog_does_not_hold_is_denied_by_name(engine: PolicyEngine, text: str, message: str) -> None:
    decision = decide(engine, text)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "catalog-unknown-relation")
    assert message in decision.reason


def test_cte_names_still_shadow_tables(engine: PolicyEngine) -> None:
    assert decide(engine, "with ghosts as (select 1 as id) select id from ghosts").verdict is Verdict.ALLOW
    assert tables("with orders as (select id from sales.orders) select id from orders") == [("sales", "orders")]


def test_ddl_targets_need_not_exist(engine: PolicyEngine) -> None:
    assert decide(engine, "create table fresh (a int)", search_path="public").rule == "make-tables"
    assert tables("create table fresh (a int)") == [("bot", "fresh")]  # the first schema of the path that exists
    assert tables("create table fresh (a int)", search_path="nowhere, public") == [("public", "fresh")]


def test_star_expands_from_the_catalog(engine: PolicyEngine) -> None:
    decision = decide(engine, "select * from customers", search_path="public")
    assert decision.masks[0].columns == ("public.customers.card",)
    assert [o["position"] for o in decision.details[0]["masked_outputs"]] == [2]
    decision = decide(engine, "select c.* from public.customers c")
    assert [o["name"] for o in decision.details[0]["masked_outputs"]] == ["card"]


# -- the catalog unavailable -------------------------------------------------------------------

UNAVAILABLE = CatalogUnavailable("connection refused")


@pytest.mark.parametrize("text", ["select id from public.orders", "select now()", "with x as (select 1) select * "
                                  "from x, public.orders", "set search_path = public; select id from orders"])
def test_an_unavailable_catalog_denies_what_names_a_relation_or_a_function(engine: PolicyEngine, text: str) -> None:
    decision = decide(engine, text, catalog=UNAVAILABLE)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "catalog-unavailable")
    assert "catalog is unavailable (connection refused)" in decision.reason


@pytest.mark.parametrize("text", ["SELECT 1", "BEGIN", "SET search_path = public", "SHOW search_path",
                                  "SELECT coalesce(1, 2), current_user"])
def test_an_unavailable_catalog_leaves_the_rest_judged_as_usual(engine: PolicyEngine, text: str) -> None:
    assert decide(engine, text, catalog=UNAVAILABLE).verdict is Verdict.ALLOW


def test_no_catalog_keeps_the_old_resolution() -> None:
    assert [a.table for s in analyse("select id from orders") for a in s.actions] == [("public", "orders")]
    assert [a.table for s in analyse("select id from ghosts", (("search_path", "sales"),))
            for a in s.actions] == [("sales", "ghosts")]


# -- the decision cache ---------------------------------------------------------------------

def test_the_cache_keys_on_settings_and_the_catalogs_version(engine: PolicyEngine) -> None:
    cached = PolicyEngine(load_policy_text(POLICY, "catalog.yaml"))
    first = decide(cached, "select query from pg_stat_activity")
    assert decide(cached, "select query from pg_stat_activity") is first
    assert decide(cached, "select query from pg_stat_activity", search_path="public, pg_catalog").rule == "read"
    same = Catalog.build(RELATIONS, [Function("pg_catalog", "now", volatility="stable")],
                         schemas=("public", "sales", "bot", "analyst"), user="bot")
    assert decide(cached, "select query from pg_stat_activity", catalog=same) is first  # by version, not identity
    other = Catalog.build(RELATIONS[2:], schemas=("public",))
    assert decide(cached, "select query from pg_stat_activity", catalog=other).rule == "read"
    defaults = SqlQuery("reset search_path; select query from pg_stat_activity", catalog=CATALOG,
                        defaults=(("search_path", "public, pg_catalog"),))
    assert cached.decide(Request(Subject("bot"), "db", defaults)).details[1]["tables"] == ["public.pg_stat_activity"]


def test_an_unavailable_catalog_is_never_cached() -> None:
    cached = PolicyEngine(load_policy_text(POLICY, "catalog.yaml"))
    decide(cached, "select 1", catalog=UNAVAILABLE)
    decide(cached, "select id from public.orders where id = 1", catalog=UNAVAILABLE)
    assert not cached.cache
