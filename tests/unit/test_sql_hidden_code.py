"""Code the server runs that a statement does not name, judged as the calls it is: what a
relation runs when read or written (row security policies, triggers, CHECK constraints,
the domain checks of its columns, defaults, rules, through views and into partitions), the
function of an operator named with OPERATOR(), what a cast to a type runs, a call in
attribute notation; and harmless forms real clients send that sqlglot reads badly
(`oid[]`, ROWS FROM)."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, analyse, load_policy_text
from interceptor.policy.catalog import Catalog, CatalogUnavailable, Function, Relation, Type
from interceptor.policy.statement import Action


def builtin(name: str, volatility: str = "immutable", kind: str = "f") -> Function:
    return Function("pg_catalog", name, volatility=volatility, kind=kind)


def user(schema: str, name: str, *arguments: str) -> Function:
    return Function(schema, name, arguments, volatility="volatile", language="plpgsql")


BUILTIN_TYPES = [Type("pg_catalog", name) for name in ("int4", "text", "oid", "regclass", "date", "numeric", "bool",
                                                      "record")]
TYPES = [*BUILTIN_TYPES, Type("information_schema", "cardinal_number", "d"),
         Type("sales", "checked", "d", ("sales.purge",)), Type("sales", "_checked", "b", ("sales.purge",)),
         Type("sales", "color", "e"), Type("sales", "colour", "e", ("sales.to_colour",)), Type("sales", "orders", "c"),
         Type("shadow", "text", "d", ("sales.purge",)), Type("public", "datetime", "d", ("sales.bump",)),
         Type("sales", "Text", "d", ("sales.purge",))]

RELATIONS = [
    Relation("sales", "orders", "r", ("id", "total")),
    Relation("sales", "audited", "r", ("id",), functions=("sales.bump",),
             write_functions=(("delete", "sales.bump"), ("insert", "sales.purge"), ("update", "sales.bump"))),
    Relation("sales", "audited_view", "v", ("id",), functions=("sales.bump",),
             write_functions=(("delete", "sales.bump"), ("insert", "sales.purge"), ("update", "sales.bump"))),
    Relation("sales", "ledger", "r", ("id",),
             write_functions=(("insert", "sales.purge_trigger"), ("truncate", "sales.purge_trigger"))),
    Relation("sales", "checked_t", "r", ("id",),
             write_functions=(("insert", "pg_catalog.int4gt"), ("insert", "sales.purge"),
                              ("update", "pg_catalog.int4gt"), ("update", "sales.purge"))),
    Relation("sales", "parted", "p", ("id", "at"), write_functions=(("insert", "sales.purge_trigger"),)),
    Relation("sales", "notes", "r", ("id", "purged"), write_functions=(("default", "sales.purge"),)),
    Relation("sales", "stamped", "r", ("id",), write_functions=(("lock", "sales.bump"), ("update", "sales.bump"),
                                                                ("update", "sales.touch"))),
    Relation("sales", "ghost", "r", ("id",), functions=("sales.gone",)),
    Relation("pg_catalog", "pg_type", "r", ("oid", "typname", "typnamespace", "typtype", "typbasetype", "typelem",
                                            "typdelim", "typrelid", "typinput", "typlen")),
    Relation("pg_catalog", "pg_namespace", "r", ("oid", "nspname")),
    Relation("pg_catalog", "pg_class", "r", ("oid", "relname", "reltype")),
    Relation("pg_catalog", "pg_attribute", "r", ("attrelid", "attname", "atttypid", "attnum", "attisdropped")),
    Relation("pg_catalog", "pg_range", "r", ("rngtypid", "rngsubtype", "rngmultitypid")),
]
FUNCTIONS = [
    builtin("count", kind="a"), builtin("int4gt"), builtin("lower"), builtin("generate_series"), builtin("unnest"),
    builtin("array_agg", kind="a"), builtin("coalesce"), builtin("array_length"), builtin("json_to_record", "stable"),
    builtin("now", "stable"), user("sales", "to_colour", "integer"), user("sales", "purge_row", "sales.orders"),
    builtin("name"),
    user("sales", "purge"), user("sales", "bump"), user("sales", "purge_trigger"), user("sales", "touch"),
    user("evil", "int_eq", "integer", "integer"), user("evil", "text_eq", "text", "text"),
    Function("sales", "plus", ("integer", "integer"), "immutable", language="sql"),
]
OPERATORS = {("evil", "="): ("evil.int_eq", "evil.text_eq"), ("sales", "##"): ("sales.plus",),
             ("Evil", "="): ("evil.int_eq",), ("ghost", "<->"): ("ghost.distance",)}
CATALOG = Catalog.build(RELATIONS, FUNCTIONS, types=TYPES, schemas=("public", "sales", "evil", "shadow"),
                        default_search_path=("sales", "public"), user="bot", operators=("pg_catalog",),
                        operator_functions=OPERATORS)

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: read, effect: allow, sql: {kinds: [select], tables: ["sales.*", "pg_catalog.*"]}}
  - {name: may-set, effect: allow, sql: {kinds: [set]}}
  - {name: write, effect: allow, sql: {kinds: [insert, update, delete, merge, truncate, copy], tables: ["sales.*"]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "hidden.yaml"))


def decide(engine: PolicyEngine, text: str, catalog: Catalog = CATALOG) -> Decision:
    return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, catalog=catalog)))


def denied(engine: PolicyEngine, text: str, *named: str) -> Decision:
    decision = decide(engine, text)
    assert decision.verdict is Verdict.DENY, (text, decision.reason)
    assert all(name in decision.reason for name in named), (text, decision.reason)
    return decision


def allowed(engine: PolicyEngine, text: str, catalog: Catalog = CATALOG) -> None:
    decision = decide(engine, text, catalog)
    assert decision.verdict is Verdict.ALLOW, (text, decision.reason)


# -- 4. what relations run when read or written ----------------------------------------------

@pytest.mark.parametrize("text", [
    "select id from sales.audited",
    "select count(*) from audited a where a.id > 0",
    "with x as (select * from sales.audited) select id from x",
    "select o.id from sales.orders o join sales.audited a on a.id = o.id",
    "select id from sales.orders where id in (select id from sales.audited)",
    "select id from sales.audited_view",  # a view runs the policies of the tables it reads
    "copy sales.audited to stdout",
])
def test_a_row_security_policy_runs_on_every_read(engine: PolicyEngine, text: str) -> None:
    decision = denied(engine, text)
    assert "sales.bump" in decision.details[0]["functions"]  # type: ignore[operator]
    if not text.startswith("copy"):  # (COPY TO is also denied for the copy itself)
        assert "sales.bump() (run when sales.audited" in decision.reason and "user-defined" in decision.reason


@pytest.mark.parametrize("text,function", [
    ("update sales.audited set id = 2", "sales.bump"),
    ("delete from sales.audited", "sales.bump"),
    ("insert into sales.audited values (1)", "sales.purge() (run by INSERT on sales.audited)"),
    ("insert into sales.audited values (1) returning id", "sales.bump() (run when sales.audited is read)"),
    ("update sales.audited_view set id = 2", "sales.bump"),
    ("select id from sales.orders for update", None),  # no policy on orders: allowed below
])
def test_row_security_policies_run_on_writes(engine: PolicyEngine, text: str, function: str | None) -> None:
    if function is None:
        allowed(engine, text)
    else:
        denied(engine, text, function)


@pytest.mark.parametrize("text", [
    "insert into sales.ledger values (1)",
    "insert into ledger select id from sales.orders",
    "copy sales.ledger from stdin",
    "truncate sales.ledger",
    "merge into sales.ledger l using sales.orders o on l.id = o.id when not matched then insert values (o.id)",
    "with moved as (select id from sales.orders) insert into sales.ledger select id from moved",
    "insert into sales.parted values (1, 1)",  # a partition's trigger runs for rows routed to it
])
def test_triggers_run_on_the_writes_they_are_for(engine: PolicyEngine, text: str) -> None:
    denied(engine, text, "sales.purge_trigger()", "is user-defined")


@pytest.mark.parametrize("text", [
    "update sales.ledger set id = 2",  # the trigger is for INSERT and TRUNCATE only
    "delete from sales.ledger",
    "select id from sales.ledger",
    "delete from sales.checked_t",  # CHECK constraints run on INSERT and UPDATE only
    "select id from sales.notes",
    "update sales.notes set id = 1",  # a default runs on INSERT, or UPDATE ... = DEFAULT
])
def test_writes_the_code_is_not_for_run_none_of_it(engine: PolicyEngine, text: str) -> None:
    allowed(engine, text)


@pytest.mark.parametrize("text", [
    "insert into sales.checked_t values (1)",
    "update sales.checked_t set id = 2",
    "insert into sales.checked_t values (1) on conflict (id) do update set id = 3",
    "update sales.notes set purged = default",
    "insert into sales.notes (id) values (1)",
])
def test_check_constraints_domain_checks_and_defaults_run_on_insert_and_update(engine: PolicyEngine,
                                                                               text: str) -> None:
    denied(engine, text, "sales.purge()", "is user-defined")


def test_a_row_lock_runs_the_update_policies_not_the_update_triggers() -> None:
    engine = PolicyEngine(load_policy_text(
        POLICY + "  - {name: policy-ok, effect: allow, sql: {functions: [sales.bump]}}\n", "hidden.yaml"))
    allowed(engine, "select id from sales.stamped for update")
    allowed(engine, "select s.id from sales.stamped s join sales.orders o on o.id = s.id for share of s")
    denied(engine, "update sales.stamped set id = 2", "sales.touch() (run by UPDATE on sales.stamped)")
    denied(engine, "select id from sales.stamped for update; update sales.stamped set id = 2", "sales.touch()")
    denied(PolicyEngine(load_policy_text(POLICY, "hidden.yaml")), "select id from sales.stamped for no key update",
           "sales.bump() (run by LOCK on sales.stamped)")
    for text in ("select x.id from (select id from sales.stamped) x for update",
                 "select x.id from (select id from sales.stamped) x for update of x"):
        denied(engine, text, "FOR UPDATE/SHARE of a subquery")
    allowed(engine, "with x as (select id from sales.stamped) select x.id, o.id from x, sales.orders o for update of o")


def test_a_rule_naming_the_function_allows_the_write() -> None:
    engine = PolicyEngine(load_policy_text(
        POLICY + "  - {name: trigger-ok, effect: allow, sql: {functions: [sales.purge_trigger]}}\n", "hidden.yaml"))
    allowed(engine, "insert into sales.ledger values (1)")
    allowed(engine, "truncate sales.ledger")
    deny_bump = PolicyEngine(load_policy_text(
        POLICY + "  - {name: no-bump, effect: deny, sql: {functions: [bump]}}\n", "hidden.yaml"))
    assert decide(deny_bump, "select id from sales.audited").rule == "no-bump"


def test_code_missing_from_the_catalog_is_denied_by_name(engine: PolicyEngine) -> None:
    decision = denied(engine, "select id from sales.ghost", 'function "sales.gone" (run by sales.ghost)')
    assert decision.rule == "catalog-unknown-function"


def test_without_a_catalog_no_relation_code_is_known() -> None:
    engine = PolicyEngine(load_policy_text(POLICY, "hidden.yaml"))
    decision = engine.decide(Request(Subject("bot"), "db", SqlQuery("insert into sales.ledger values (1)")))
    assert decision.verdict is Verdict.ALLOW, decision.reason


def test_relation_code_round_trips_through_a_dump() -> None:
    again = Catalog.from_dict(CATALOG.to_dict())
    assert again == CATALOG and again.version == CATALOG.version
    assert again.relation("sales", "audited") == RELATIONS[1]
    assert again.relation("sales", "ledger").written(("truncate",)) == (  # type: ignore[union-attr]
        ("truncate", "sales.purge_trigger"),)
    with pytest.raises(ValueError, match="malformed catalog dump"):
        Catalog.from_dict({"relations": [{"schema": "s", "name": "t", "write_functions": [["insert"]]}]})
    with pytest.raises(ValueError, match="write event 'select' is not one of insert, update"):
        Catalog.from_dict({"relations": [{"schema": "s", "name": "t", "write_functions": [["select", "s.f"]]}]})
    with pytest.raises(ValueError, match="malformed catalog dump"):
        Catalog.from_dict({"operator_functions": [{"schema": "s", "functions": ["s.f"]}]})


# -- 1. attribute notation: t.f is f(t) ------------------------------------------------------

@pytest.mark.parametrize("text,written", [
    ("select o.purge_row from sales.orders o", "o.purge_row"),
    ("select (o).purge_row from sales.orders o", "(o).purge_row"),
    ("select id from sales.orders o where o.purge_row > 0", "o.purge_row"),
    ("select sales.orders.purge_row from sales.orders", "sales.orders.purge_row"),
    ("select orders.purge_row from orders", "orders.purge_row"),
    ("update sales.orders o set total = o.purge_row", "o.purge_row"),
    ("delete from sales.orders o where o.purge_row is not null", "o.purge_row"),
    ("insert into sales.orders (id) values (1) returning orders.purge_row", "orders.purge_row"),
    ("select x.purge_row from (select id from sales.orders) x", "x.purge_row"),
    ("select g.purge_row from generate_series(1, 2) g", "g.purge_row"),  # its columns are not known
    ("select o.id.purge_row from sales.orders o", "o.id.purge_row"),  # a field, or a call on the column
    ("select o.purge_row.id from sales.orders o", "o.purge_row"),
    ("set search_path = pg_catalog, sales; select o.purge_row from sales.orders o", "o.purge_row"),
])
def test_attribute_notation_is_a_call(engine: PolicyEngine, text: str, written: str) -> None:
    decision = denied(engine, text, f"sales.purge_row() (called in attribute notation: {written}) is user-defined")
    assert "purge_row" in decision.details[-1]["functions"]  # type: ignore[operator]


@pytest.mark.parametrize("text", [
    "select o.id, o.total, o.ctid, o.xmin, (o).id, orders.total from sales.orders o, sales.orders",
    "select x.a, x.total from (select id as a, total from sales.orders) x",
    "with c(a) as (select id from sales.orders) select c.a from c",
    "update sales.orders o set total = o.total + 1 where o.id = 1",
    "insert into sales.orders as o (id) values (1) on conflict (id) do update set total = excluded.total",
    "select o from sales.orders o",
    "select x.name from (select 'a' as name) x",
])
def test_columns_and_fields_are_no_calls(engine: PolicyEngine, text: str) -> None:
    allowed(engine, text)
    assert not [c for c in analyse(text, catalog=CATALOG)[-1].calls if c.via is not None]


def test_a_types_schema_and_name_are_no_field_selection() -> None:
    (statement,) = analyse("select 'x'::pg_catalog.text, 1::pg_catalog.int4, 'r'::sales.color", catalog=CATALOG)
    assert statement.error is None and statement.calls == ()


@pytest.mark.parametrize("text", [
    "select o.nosuch from sales.orders o",
    "select (o).nosuch from sales.orders o",
    "set search_path = pg_catalog; select o.purge_row from sales.orders o",  # sales is not searched
])
def test_a_name_neither_a_column_nor_a_function_is_denied(engine: PolicyEngine, text: str) -> None:
    decision = denied(engine, text, "is neither a column of sales.orders nor a function in the catalog")
    assert decision.rule == "catalog-unknown-function"


def test_the_function_gets_the_whole_row(engine: PolicyEngine) -> None:
    for text in ("select o.purge_row from sales.orders o", "select o from sales.orders o"):
        (statement,) = analyse(text, catalog=CATALOG)
        assert statement.actions == (Action("select", ("sales", "orders"), frozenset({"id", "total"})),)
        assert statement.outputs[0].sources == {("sales", "orders", "id"), ("sales", "orders", "total")}
    allowed(engine, "select o.purge_row from sales.orders o", Catalog.build(RELATIONS))  # incomplete: may be a column


# -- 3. casts to types that run code ---------------------------------------------------------

@pytest.mark.parametrize("text", [
    "select 1::sales.checked",
    "select cast(1 as sales.checked)",
    "select '{1}'::sales.checked[]",
    "select 1::checked",  # through the search_path
    'select 1::"checked"',
    "select '{1}'::_checked",
    "select x.a from json_to_record('{\"a\": 1}') as x(a sales.checked)",
    "insert into sales.orders (id) values (1::sales.checked)",
    "select id from sales.orders where id::sales.checked > 0 order by id",
    "update sales.orders set total = cast(total as sales.checked)",
    "set search_path = shadow, pg_catalog; select 'x'::text",  # shadow.text before pg_catalog.text
    "select 'x'::\"Text\"",  # sqlglot reads "Text" as text, the server as sales."Text"
])
def test_a_cast_to_a_domain_runs_its_checks(engine: PolicyEngine, text: str) -> None:
    decision = denied(engine, text, "sales.purge() (run by a cast to ", "is user-defined")
    assert "sales.purge" in decision.details[-1]["functions"]  # type: ignore[operator]


@pytest.mark.parametrize("text,reason", [
    ("select 'x'::datetime", "sales.bump() (run by a cast to public.datetime)"),  # sqlglot reads it as a builtin
    ("select 1::sales.colour", "sales.to_colour() (run by a cast to sales.colour)"),  # CREATE CAST ... WITH FUNCTION
    ("select 1::sales.nosuch", 'type "sales.nosuch" is not in the catalog (searched: sales)'),
    ("select 1::nosuch", 'type "nosuch" is not in the catalog (searched: pg_catalog, sales, public)'),
    ('select 1::"Checked"', 'type "Checked" is not in the catalog'),
    ("create table sales.copy as select 1::sales.checked as c", ""),
])
def test_casts_are_judged_by_the_type_the_server_resolves(engine: PolicyEngine, text: str, reason: str) -> None:
    decision = denied(engine, text, reason)
    if "is not in the catalog" in reason:
        assert decision.rule == "catalog-unknown-type"
    if "sales.checked" in text:
        assert "sales.purge" in decision.details[0]["functions"]  # type: ignore[operator]


@pytest.mark.parametrize("text", [
    "select 1::int, 'x'::text, now()::date, '{1}'::int[], 1::pg_catalog.int4, cast('1' as numeric(3, 1))",
    "select 'red'::sales.color, null::sales.orders, null::record, 1::information_schema.cardinal_number",
    "set search_path = shadow; select 'x'::text",  # pg_catalog is searched first
    "set search_path = sales; select '2020-01-01'::date, 'x'::datetime",  # public is not searched
    "select date '2020-01-01', interval '1 day', text 'x', 'x'::regclass",
    "create table sales.t (c sales.checked default 1::sales.checked)",  # a definition runs nothing
])
def test_casts_to_builtin_and_harmless_types_are_allowed(text: str) -> None:
    engine = PolicyEngine(load_policy_text(POLICY + "  - {name: ddl, effect: allow, sql: {kinds: [create]}}\n",
                                           "hidden.yaml"))
    allowed(engine, text)


def test_without_its_types_a_catalog_takes_an_unknown_unqualified_type_for_a_builtin(engine: PolicyEngine) -> None:
    bare = Catalog.build(RELATIONS, FUNCTIONS, types=TYPES[len(BUILTIN_TYPES):], schemas=("public", "sales"),
                         default_search_path=("sales", "public"))
    allowed(engine, "select 'x'::citext, 1::pg_lsn", bare)
    assert decide(engine, "select 1::sales.nosuch", bare).rule == "catalog-unknown-type"
    assert decide(engine, "select 1::checked", bare).verdict is Verdict.DENY


def test_casts_with_the_catalog_unavailable_or_the_function_allowed() -> None:
    engine = PolicyEngine(load_policy_text(
        POLICY + "  - {name: purge-ok, effect: allow, sql: {functions: [sales.purge]}}\n", "hidden.yaml"))
    allowed(engine, "select 1::sales.checked")

    def unavailable(text: str) -> Decision:
        return engine.decide(Request(Subject("bot"), "db", SqlQuery(text, catalog=CatalogUnavailable("down"))))

    assert unavailable("select 1::sales.checked").rule == "catalog-unavailable"
    assert unavailable("select 1::checked").rule == "catalog-unavailable"
    assert unavailable("select 1::int, 'x'::text, 1::pg_catalog.int4").verdict is Verdict.ALLOW


# -- a user default operator class for a builtin type: values from no table run it too ----------

def classed(opclass_functions: dict[tuple[str, str], tuple[str, ...]]) -> Catalog:
    return Catalog.build(RELATIONS, [*FUNCTIONS, builtin("point"), user("sales", "ptcmp", "point", "point")],
                         types=TYPES, schemas=("public", "sales", "evil", "shadow"),
                         default_search_path=("sales", "public"), user="bot", operators=("pg_catalog",),
                         operator_functions=OPERATORS, opclass_functions=opclass_functions)


CLASSED = classed({("pg_catalog.point", "sales.pt_ops"): ("sales.ptcmp",)})


@pytest.mark.parametrize("text", [
    "select x, count(*) from (values (point(1,2))) v(x) group by x",
    "select array[point(1,2)] = array[point(1,2)]",
    "select 1",  # which types a statement's values have, the analyser cannot tell: any may be one
    "select id from sales.orders",
    "insert into sales.orders (id) values (1)",
    "explain analyze select 1",
])
def test_a_user_default_operator_class_for_a_builtin_type_is_judged_everywhere(engine: PolicyEngine,
                                                                               text: str) -> None:
    decision = decide(engine, text, CLASSED)
    assert decision.verdict is Verdict.DENY, decision.reason
    assert ("sales.ptcmp() (the function of operator class sales.pt_ops, a user default for built-in type "
            "pg_catalog.point, which may run") in decision.reason and "user-defined" in decision.reason
    allowed(engine, text, classed({}))  # a database without one: as before


@pytest.mark.parametrize("text", ["set search_path = public", "reset search_path", "show search_path", "begin",
                                  "discard all"])
def test_statements_that_evaluate_no_expression_run_no_operator_class(text: str) -> None:
    (statement,) = analyse(text, catalog=CLASSED)
    assert statement.calls == () and statement.error is None


def test_a_rule_naming_the_operator_classs_function_allows_it() -> None:
    engine = PolicyEngine(load_policy_text(
        POLICY + "  - {name: ptcmp-ok, effect: allow, sql: {functions: [sales.ptcmp]}}\n", "hidden.yaml"))
    allowed(engine, "select distinct x from (values (point(1,2))) v(x)", CLASSED)
    missing = Catalog.build(RELATIONS, FUNCTIONS, types=TYPES, schemas=("sales",),
                            opclass_functions={("pg_catalog.point", "sales.pt_ops"): ("sales.ptcmp",)})
    (statement,) = analyse("select 1", catalog=missing)
    assert statement.error == 'function "sales.ptcmp" (of operator class sales.pt_ops) is not in the catalog'


# -- 2. operators named with OPERATOR() --------------------------------------------------------

@pytest.mark.parametrize("text", [
    "select 1 operator(evil.=) 1",
    "select id from sales.orders where id OPERATOR(evil.=) 10",
    "select id from sales.orders order by id operator(EVIL.=) 1",
    "delete from sales.orders where 'a' operator(evil.=) 'b'",
    "select 1 where exists (select 1 from sales.orders where id operator ( evil . = ) 2)",
    "set search_path = pg_catalog, evil; select 1 operator(=) 1",  # every = of the path is a candidate
])
def test_an_operator_outside_pg_catalog_runs_its_function(engine: PolicyEngine, text: str) -> None:
    decision = denied(engine, text, "(the function of operator ", "is user-defined (volatile)")
    assert {"evil.int_eq", "evil.text_eq"} <= set(decision.details[-1]["functions"])  # type: ignore[arg-type]


@pytest.mark.parametrize("text,reason", [
    ('select 1 operator("Evil".=) 1', "evil.int_eq() (the function of operator Evil.=)"),
    ("select 1 operator(sales.##) 2", "sales.plus() (the function of operator sales.##) is user-defined (immutable)"),
    ("select 1 operator(nosuch.=) 1", 'operator "nosuch.=" is not in the catalog'),
    ("select 1 operator(ghost.<->) 1", 'function "ghost.distance" (of operator ghost.<->) is not in the catalog'),
    ("select operator(evil.-) 1", "not understood"),  # a prefix operator sqlglot cannot parse
])
def test_operators_are_found_as_written(engine: PolicyEngine, text: str, reason: str) -> None:
    denied(engine, text, reason)


@pytest.mark.parametrize("text", [
    "select 1 operator(pg_catalog.=) 1",
    "select 'a' OPERATOR(pg_catalog.||) 'b'",
    "select 1 operator(=) 1",  # pg_catalog first, evil not on the path
    "select id from sales.orders where id = 1",
])
def test_pg_catalog_operators_stay_free(engine: PolicyEngine, text: str) -> None:
    allowed(engine, text)


def test_a_rule_naming_the_operators_function_allows_it() -> None:
    engine = PolicyEngine(load_policy_text(
        POLICY + "  - {name: eq-ok, effect: allow, sql: {functions: [evil.int_eq, evil.text_eq]}}\n", "hidden.yaml"))
    allowed(engine, "select 1 operator(evil.=) 1")
    unavailable = engine.decide(Request(Subject("bot"), "db", SqlQuery(
        "select 1 operator(evil.=) 1", catalog=CatalogUnavailable("no connection"))))
    assert unavailable.rule == "catalog-unavailable", unavailable.reason


# -- 5. what real clients send is read, not refused -----------------------------------------

@pytest.mark.parametrize("text", [
    "select t.oid, t.typname from pg_catalog.pg_type t where t.oid = any($1::oid[])",
    "select count(*) from pg_catalog.pg_type where oid = any('{23,25}'::oid[])",
    "select cast('{23}' as oid[]), '{pg_type}'::regclass[], 'x'::regtype, '{1}'::oid[3][], null::oid array",
    "select * from rows from (generate_series(1, 2))",
    "select g.a, g.b from rows from (generate_series(1, 2), unnest(array[1])) with ordinality as g(a, b, n)",
])
def test_harmless_forms_clients_send_are_judged_and_allowed(engine: PolicyEngine, text: str) -> None:
    allowed(engine, text)


def test_asyncpgs_type_introspection_is_allowed(engine: PolicyEngine) -> None:
    from asyncpg import introspection  # the test extra of pyproject.toml installs it
    query = SqlQuery(introspection.INTRO_LOOKUP_TYPES, settings=(("search_path", "pg_catalog"),), catalog=CATALOG)
    decision = engine.decide(Request(Subject("bot"), "db", query))
    assert decision.verdict is Verdict.ALLOW, decision.reason


@pytest.mark.parametrize("text,named", [
    ("select * from rows from (sales.purge())", "sales.purge() is user-defined"),
    ("select * from rows from (generate_series(1, 2), purge()) as g(a, b)", "sales.purge() is user-defined"),
    ("select id from sales.orders where id = any(array[purge()]::oid[])", "sales.purge() is user-defined"),
    ("select '{1}'::oid[], purge()", "sales.purge() is user-defined"),
])
def test_what_those_forms_hold_is_still_judged(engine: PolicyEngine, text: str, named: str) -> None:
    denied(engine, text, named)


# -- operators written without OPERATOR(): every one of that name in the path is a candidate --

WITH_OPERATORS = Catalog.build(RELATIONS, [*FUNCTIONS, user("public", "int_text_eq", "int4", "text")], types=TYPES,
                               schemas=("public", "sales", "evil", "shadow"), default_search_path=("sales", "public"),
                               user="bot", operator_functions={**OPERATORS, ("public", "="): ("public.int_text_eq",),
                                                               ("sales", "<->"): ("sales.plus",)})


@pytest.mark.parametrize("text", [
    "select id from sales.orders where id = 'abc'::text",  # pg_catalog has no int = text: public's wins
    "select id from sales.orders where id in (1, 2)",  # IN compares with =
    "select nullif(id, 1) from sales.orders",
    "select id from sales.orders where id is distinct from 1",
    "select case id when 1 then 'a' end from sales.orders",
    "select id from sales.orders where id != 1 or id=2",
])
def test_an_operator_of_a_schema_in_the_path_is_a_candidate_of_every_use_of_its_name(engine, text):
    decision = decide(engine, text, WITH_OPERATORS)
    assert decision.verdict is Verdict.DENY and "public.int_text_eq" in decision.reason, (text, decision.reason)


@pytest.mark.parametrize("text", ["select id from sales.orders", "select count(*) from sales.orders",
                                  "select t.* from sales.orders t", "select id + 1 from sales.orders"])
def test_statements_without_such_an_operator_name_are_not_affected(engine, text):
    allowed(engine, text, WITH_OPERATORS)


def test_an_implicit_operator_of_a_schema_in_the_path_is_judged_as_its_function(engine):
    decision = decide(engine, "select id <-> total from sales.orders", WITH_OPERATORS)
    assert decision.verdict is Verdict.DENY and "sales.plus" in decision.reason, decision.reason
