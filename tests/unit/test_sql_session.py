"""Statements about the session: what SET, RESET, set_config, DISCARD, DEALLOCATE and
transaction control change (Statement.effects, detail["effects"]), how later statements of
the same string resolve under it, unsafe client encodings, and the bootstrap statements
every client runs first."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, analyse, load_policy_text
from interceptor.policy.catalog import Catalog, Function, Relation
from interceptor.policy.settings import Effect

CATALOG = Catalog.build(
    [Relation("public", "orders", "r", ("id", "status")), Relation("sales", "orders", "r", ("id", "total")),
     Relation("evil", "orders", "r", ("id",)), Relation("pg_catalog", "pg_type", "r", ("oid", "typname")),
     Relation("pg_catalog", "pg_namespace", "r", ("oid", "nspname")),
     Relation("pg_catalog", "pg_class", "r", ("oid", "relname"))],
    [Function("pg_catalog", name, volatility="stable") for name in
     ("version", "current_schema", "current_schemas", "current_database", "pg_backend_pid", "current_setting",
      "to_regtype")]
    + [Function("pg_catalog", "set_config", volatility="volatile"),
       Function("pg_catalog", "lower", volatility="immutable")],
    schemas=("public", "sales", "evil"), user="bot")

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: read-public, effect: allow, sql: {kinds: [select], tables: ["public.*"]}}
  - {name: may-set, effect: allow, sql: {kinds: [set]}}
  - {name: may-set-config, effect: allow, sql: {functions: [set_config]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "session.yaml"))


def decide(engine: PolicyEngine, text: str, catalog: Catalog | None = CATALOG,
           settings: tuple[tuple[str, str | None], ...] = (),
           defaults: tuple[tuple[str, str | None], ...] = ()) -> Decision:
    return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, settings=settings, defaults=defaults,
                                                                  catalog=catalog)))


def effects(text: str) -> list[list[dict[str, object]]]:
    return [[e.to_dict() for e in s.effects] for s in analyse(text, catalog=CATALOG)]


def effect(kind: str, name: str | None = None, value: str | None = None, local: bool = False) -> dict[str, object]:
    return Effect(kind, name, value, local).to_dict()


@pytest.mark.parametrize("text,expected", [
    ("SET search_path TO a, \"B\"", [effect("set", "search_path", 'a, "B"')]),
    ("set search_path = 'a, b'", [effect("set", "search_path", '"a, b"')]),  # one schema named "a, b"
    ("SET search_path TO \"$user\", public", [effect("set", "search_path", '"$user", public')]),
    ("SET SESSION search_path = DEFAULT", [effect("set", "search_path")]),
    ("SET LOCAL search_path = sales", [effect("set", "search_path", "sales", local=True)]),
    ("SET SCHEMA 'Sales'", [effect("set", "search_path", '"Sales"')]),
    ("SET client_encoding TO 'utf8'", [effect("set", "client_encoding", "utf8")]),
    ("SET NAMES 'LATIN1'", [effect("set", "client_encoding", "LATIN1")]),
    ("SET NAMES DEFAULT", [effect("set", "client_encoding")]),
    ("SET statement_timeout = 5000", [effect("set", "statement_timeout", "5000")]),
    ("SET TIME ZONE 'UTC'", [effect("set", "timezone", "UTC")]),
    ("SET myapp.tenant = 'x'", [effect("set", "myapp.tenant", "x")]),
    ("RESET search_path", [effect("reset", "search_path")]),
    ("RESET ALL", [effect("reset_all")]),
    ("RESET ROLE", [effect("reset", "role")]),
    ("DISCARD ALL", [effect("discard_all")]),
    ("DISCARD PLANS", []),
    ("DISCARD TEMP", []),
    ("DEALLOCATE p1", [effect("deallocate", "p1")]),
    ("DEALLOCATE PREPARE \"P1\"", [effect("deallocate", "P1")]),
    ("DEALLOCATE ALL", [effect("deallocate_all")]),
    ("BEGIN", [effect("begin")]),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", [effect("begin")]),
    ("COMMIT", [effect("commit")]),
    ("END WORK", [effect("commit")]),
    ("COMMIT AND CHAIN", [effect("commit"), effect("begin")]),
    ("ROLLBACK", [effect("rollback")]),
    ("ABORT TRANSACTION", [effect("rollback")]),
    ("SAVEPOINT S1", [effect("savepoint", "s1")]),
    ("RELEASE SAVEPOINT s1", [effect("release", "s1")]),
    ("RELEASE s1", [effect("release", "s1")]),
    ("ROLLBACK TO SAVEPOINT \"S1\"", [effect("rollback_to", "S1")]),
    ("ROLLBACK WORK TO s1", [effect("rollback_to", "s1")]),
    ("SELECT set_config('search_path', 'a, b', false)", [effect("set", "search_path", "a, b")]),
    ("select pg_catalog.set_config('CLIENT_ENCODING', 'utf8', 't') as x",
     [effect("set", "client_encoding", "utf8", True)]),
    ("SELECT set_config('statement_timeout', '0', false)", []),  # not followed: no effect, judged as a call
])
def test_effects_as_the_server_reads_them(text: str, expected: list[dict[str, object]]) -> None:
    assert effects(text) == [expected]


@pytest.mark.parametrize("text,value", [
    ("SET ROLE reporting", "reporting"), ("SET ROLE \"Reporting\"", "Reporting"), ("SET ROLE 'Reporting'", "Reporting"),
    ("SET ROLE NONE", None), ("SET LOCAL ROLE reporting", "reporting"), ("set role = reporting", "reporting"),
    ("SELECT set_config('role', 'reporting', false)", "reporting"),
])
def test_role_changes_are_followed(text: str, value: str | None) -> None:
    (statement,) = analyse(text, catalog=CATALOG)
    assert [(e.kind, e.name, e.value) for e in statement.effects] == [("set", "role", value)]


def test_set_role_and_session_authorization_stay_opaque(engine: PolicyEngine) -> None:
    for text in ("SET ROLE postgres", "SET SESSION AUTHORIZATION postgres", "set role = postgres",
                 "SET session_authorization = postgres"):
        decision = decide(engine, text)
        assert (decision.verdict, decision.rule, decision.details[0]["kind"]) == (
            Verdict.DENY, "sql-opaque-statement", "set_role"), text
    assert decide(engine, "SET ROLE postgres").details[0]["effects"] == [effect("set", "role", "postgres")]


@pytest.mark.parametrize("text", [
    "SAVEPOINT", "ROLLBACK s1", "RELEASE TO s1", "COMMIT PREPARED 'x'", "START", "BEGIN FOO",
    "SET search_path TO a.b", "SET search_path TO E'a'", "SET search_path TO 'a\\b'", "SET client_encoding TO a, b",
    "SET search_path FROM CURRENT", "SET ROLE a, b", "SET", "SET x 1",
    "SELECT set_config('search_path', current_user, false)", "SELECT set_config(lower('x'), 'a', false)",
    "SELECT set_config('search_path', 'a', is_local) FROM t", "SELECT 1, set_config('role', 'a', false)",
    "SELECT * FROM orders WHERE set_config('search_path', 'evil', false) IS NOT NULL",
    "EXPLAIN ANALYZE SELECT set_config('search_path', 'evil', false)",
])
def test_what_cannot_be_followed_is_an_error(engine: PolicyEngine, text: str) -> None:
    (statement,) = analyse(text, catalog=CATALOG)
    assert statement.error is not None and not statement.effects, statement
    assert decide(engine, text).verdict is Verdict.DENY


def test_later_statements_resolve_under_earlier_settings() -> None:
    statements = analyse("SET search_path = sales; SELECT id FROM orders; RESET search_path; SELECT id FROM orders; "
                         "SELECT set_config('search_path', 'evil, sales', false); SELECT id FROM orders",
                         catalog=CATALOG)
    assert [s.actions[0].table for s in statements[1::2]] == [
        ("sales", "orders"), ("public", "orders"), ("evil", "orders")]


def test_reset_returns_to_the_sessions_default() -> None:
    statements = analyse("RESET search_path; SELECT id FROM orders", (("search_path", "public"),),
                         (("search_path", "sales"),), CATALOG)
    assert statements[1].actions[0].table == ("sales", "orders")
    statements = analyse("RESET ALL; SELECT id FROM orders", (("search_path", "sales"),), (), CATALOG)
    assert statements[1].actions[0].table == ("public", "orders")  # no default: the catalog's ("$user", public)
    statements = analyse("DISCARD ALL; SELECT id FROM orders", (("search_path", "evil"),), (), CATALOG)
    assert statements[1].actions[0].table == ("public", "orders")


def test_transactions_undo_what_they_set() -> None:
    def last_table(text: str) -> tuple[str, str] | None:
        return analyse(text, (("search_path", "public"),), (), CATALOG)[-1].actions[0].table

    assert last_table("BEGIN; SET search_path = evil; ROLLBACK; SELECT id FROM orders") == ("public", "orders")
    assert last_table("BEGIN; SET search_path = evil; COMMIT; SELECT id FROM orders") == ("evil", "orders")
    assert last_table("BEGIN; SET LOCAL search_path = evil; COMMIT; SELECT id FROM orders") == ("public", "orders")
    assert last_table("BEGIN; SET LOCAL search_path = sales; SELECT 1; SELECT id FROM orders") == ("sales", "orders")
    assert last_table("BEGIN; SAVEPOINT a; SET search_path = evil; ROLLBACK TO SAVEPOINT a; "
                      "SELECT id FROM orders") == ("public", "orders")
    assert last_table("BEGIN; SET search_path = sales; SAVEPOINT a; SET search_path = evil; RELEASE a; "
                      "SELECT id FROM orders") == ("evil", "orders")
    assert last_table("SAVEPOINT a; SELECT set_config('search_path', 'evil', true); ROLLBACK TO a; "
                      "SELECT id FROM orders") == ("public", "orders")


def test_the_engine_reports_every_statements_effects(engine: PolicyEngine) -> None:
    decision = decide(engine, "BEGIN; SET LOCAL search_path = sales; SELECT id FROM public.orders; COMMIT")
    assert [d["effects"] for d in decision.details] == [
        [effect("begin")], [effect("set", "search_path", "sales", local=True)], [], [effect("commit")]]
    assert decision.verdict is Verdict.ALLOW


def test_set_then_a_statement_in_the_same_string_is_judged_under_it(engine: PolicyEngine) -> None:
    assert decide(engine, "SELECT id FROM orders").verdict is Verdict.ALLOW
    decision = decide(engine, "SET search_path = sales; SELECT id FROM orders")
    assert decision.verdict is Verdict.DENY and decision.details[1]["tables"] == ["sales.orders"]
    decision = decide(engine, "SELECT set_config('search_path', 'sales', false); SELECT id FROM orders")
    assert decision.verdict is Verdict.DENY and decision.details[1]["tables"] == ["sales.orders"]
    assert decide(engine, "SELECT id FROM orders", settings=(("search_path", "sales"),)).verdict is Verdict.DENY


# -- encodings ----------------------------------------------------------------------------

UNSAFE = ["SJIS", "sjis", "Shift_JIS", "shift-jis", "S.J.I.S", "mskanji", "win932", "Windows932", "SHIFT_JIS_2004",
          "BIG5", "big-5", "win950", "windows_950", "GBK", "win936", "WINDOWS936", "UHC", "win949", "windows949",
          "GB18030", "gb-18030", "JOHAB"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_client_encodings_are_refused_in_every_spelling(engine: PolicyEngine, name: str) -> None:
    for text in (f"SET client_encoding TO '{name}'", f"SET NAMES '{name}'", f"SET LOCAL client_encoding = '{name}'",
                 f"SELECT set_config('client_encoding', '{name}', false)", f"SELECT 1; SET client_encoding = '{name}'"):
        decision = decide(engine, text)
        assert (decision.verdict, decision.rule) == (Verdict.DENY, "builtin-unsafe-encoding"), text
        assert "quote or backslash" in decision.reason


def test_a_reset_to_an_unsafe_default_is_refused(engine: PolicyEngine) -> None:
    defaults = (("client_encoding", "SJIS"),)
    for text in ("RESET client_encoding", "RESET ALL", "DISCARD ALL", "SET client_encoding TO DEFAULT"):
        decision = decide(engine, text, settings=(("client_encoding", "UTF8"),), defaults=defaults)
        assert decision.rule == "builtin-unsafe-encoding", text


@pytest.mark.parametrize("name", ["UTF8", "utf-8", "unicode", "LATIN1", "win1252", "EUC_JP", "cp936", "sql_ascii"])
def test_other_encodings_are_judged_as_any_set(engine: PolicyEngine, name: str) -> None:
    decision = decide(engine, f"SET client_encoding TO '{name}'")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "builtin-session-bootstrap")


# -- what every client runs first ---------------------------------------------------------

NOTHING = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  other: {protocol: postgres, addresses: ["127.0.0.2:5432"]}
agents:
  bot: {}
rules:
  - {name: elsewhere, effect: allow, resources: [other], sql: {kinds: [select, show]}}
"""


def nothing() -> PolicyEngine:
    """An engine whose policy allows this agent nothing on db."""
    return PolicyEngine(load_policy_text(NOTHING, "nothing.yaml"))


BOOTSTRAP = [
    "SHOW standard_conforming_strings", "show transaction isolation level", "SHOW server_version_num",
    "SHOW TIME ZONE", "SHOW search_path", "SHOW \"DateStyle\"", "SHOW session authorization",
    "select pg_catalog.version()", "SELECT version()", "select current_schema()", "SELECT current_schemas(false)",
    "SELECT current_user, session_user, current_role, current_catalog, current_database()", "SELECT 1",
    "SELECT pg_backend_pid()", "SELECT current_setting('server_version_num')",
    "SELECT typname, oid FROM pg_type WHERE oid = to_regtype($1)",
    "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace "
    "WHERE t.typname = $1 AND ns.nspname = $2",
]


@pytest.mark.parametrize("text", BOOTSTRAP)
def test_what_clients_run_first_is_allowed_by_default(text: str) -> None:
    decision = decide(nothing(), text)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "builtin-session-bootstrap"), decision.reason


@pytest.mark.parametrize("text", [
    "SHOW ALL", "SHOW data_directory", "SHOW hba_file", "SELECT current_setting('data_directory')",
    "SELECT current_setting(lower('x'))", "SELECT version() FROM orders", "SELECT lower('x')",
    "SELECT relname FROM pg_catalog.pg_class; SHOW ALL",
])
def test_other_settings_and_selects_are_not_bootstrap(text: str) -> None:
    assert decide(nothing(), text).verdict is Verdict.DENY


def test_a_deny_rule_takes_bootstrap_statements_away() -> None:
    text = NOTHING + """  - {name: no-show, effect: deny, sql: {kinds: [show]}}
  - {name: no-select, effect: deny, sql: {kinds: [select]}}
  - {name: no-types, effect: deny, sql: {kinds: [select], tables: [pg_catalog.pg_type]}}
"""
    engine = PolicyEngine(load_policy_text(text, "deny.yaml"))
    assert decide(engine, "SHOW search_path").rule == "no-show"
    assert decide(engine, "SELECT version()").rule == "no-select"
    assert decide(engine, "SELECT oid FROM pg_catalog.pg_type").rule in ("no-select", "no-types")
