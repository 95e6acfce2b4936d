"""Masked values never leave, in any shape: the session with the real policy engine, a
catalog and the real masker, driven as a conversation (agent bytes in, what reaches the
agent out). Every test ends on what the agent received."""

from __future__ import annotations

import json

import pytest

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import INT16, INT32
from interceptor.handlers.postgres.masks import mask_factory
from conversation import Judging
from interceptor.handlers.postgres.session import ProxySession
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.catalog import Catalog, Function, Relation, Type
from test_pg_session import frames, msg, sent

NONCE = "n0nce"
CUSTOMERS_OID, ROW_TYPE = 16400, 16402
CARD, EMAIL = b"4111 1111 1111 1111", b"ada@example.com"
POLICY = """
version: 1
agents: {agent: {unprotected: deny}}
resources: {db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}}
rules:
  - {name: read, effect: allow, sql: {kinds: [select], tables: ["public.*"]}}
  - {name: mask-card, effect: mask, mask: {columns: [public.customers.card_number], style: partial}}
  - {name: mask-email, effect: mask, mask: {columns: [public.customers.email], style: redact}}
"""
CATALOG = Catalog.build(
    [Relation("public", "customers", "r", ("id", "name", "email", "card_number"), oid=CUSTOMERS_OID),
     Relation("pg_catalog", "pg_stats", "v", ("tablename", "attname", "most_common_vals")),
     Relation("pg_catalog", "pg_stat_activity", "v", ("pid", "query")),
     Relation("public", "pg_stat_statements", "v", ("queryid", "query")),
     Relation("public", "customer_list", "v", ("id", "name", "email"),
              definition_reads=("public.customers.email", "public.customers.id", "public.customers.name")),
     Relation("public", "names", "v", ("id", "name"), definition_reads=("public.customers.id", "public.customers.name")),
     Relation("public", "list_of_lists", "v", ("id",), definition_reads=("public.customer_list.id",))],
    [*(Function("pg_catalog", name, kind=kind, volatility="stable") for name, kind in (
        ("row_to_json", "f"), ("to_jsonb", "f"), ("json_agg", "a"), ("length", "f"), ("upper", "f"),
        ("concat", "f"), ("row_number", "w"), ("count", "a"))),
     Function("pg_catalog", "generate_series", volatility="immutable", returns_set=True),
     Function("pg_catalog", "jsonb_each", volatility="immutable", returns_set=True),
     Function("pg_catalog", "set_config", volatility="volatile")],
    types=[Type("pg_catalog", "int4", oid=23), Type("pg_catalog", "text", oid=25),
           Type("pg_catalog", "record", "p", oid=2249), Type("public", "customers", "c", oid=ROW_TYPE)],
)
COLUMNS = {"public.customers.id": 1, "public.customers.name": 2, "public.customers.email": 3,
           "public.customers.card_number": 4}


def engine_judge(engine: PolicyEngine):
    return lambda query: engine.decide(Request(Subject("agent"), "db", query))


def session(judge=None) -> ProxySession:
    s = ProxySession(judge=Judging(judge or engine_judge(PolicyEngine(load_policy_text(POLICY)))), database="app",
                     catalog=lambda: CATALOG, nonce=NONCE, mask_factory=mask_factory())
    return s


def row_description(*columns: tuple[str, int, int, int, int]) -> bytes:
    """(name, table oid, attnum, type oid, format) per column."""
    body = INT16.pack(len(columns)) + b"".join(
        name.encode() + b"\0" + INT32.pack(table) + INT16.pack(attnum) + INT32.pack(type_oid) + INT16.pack(-1)
        + INT32.pack(-1) + INT16.pack(fmt) for name, table, attnum, type_oid, fmt in columns)
    return msg(b"T", body)


def data_row(*values: bytes | None) -> bytes:
    return msg(b"D", INT16.pack(len(values)) + b"".join(
        INT32.pack(-1) if v is None else INT32.pack(len(v)) + v for v in values))


def values(out: bytes) -> list[list[bytes | None]]:
    rows = []
    for kind, body in frames(out):
        if kind == b"D":
            reader = codec.Reader(body, "DataRow")
            row = []
            for _ in range(reader.int16()):
                length = reader.int32()
                row.append(None if length < 0 else reader.data[reader.pos:reader.pos + length])
                reader.skip(max(length, 0))
            rows.append(row)
    return rows


def run(s: ProxySession, sql: str, *server: bytes, status: bytes = b"I", tag: bytes = b"SELECT 1") -> bytes:
    assert sent(s.from_client(codec.query(sql)), "server") == codec.query(sql), "the statement was refused"
    return sent(s.from_server(b"".join(server) + msg(b"C", tag + b"\0") + codec.ready_for_query(status)), "client")


def refused(s: ProxySession, sql: str) -> bool:
    """Did the session send the server its sentinel (a refusal) in place of the Query?"""
    return sent(s.from_client(codec.query(sql)), "server") == codec.query(f"interceptor_denied_{NONCE}")


def assert_never_clear(out: bytes) -> None:
    assert CARD not in out and EMAIL not in out and b"41111111" not in out


# ---- whole rows -------------------------------------------------------------------------------


def test_a_whole_row_is_masked_field_by_field_in_text():
    out = run(session(), "select c from customers c", row_description(("c", 0, 0, ROW_TYPE, 0)),
              data_row(b'(1,Ada,ada@example.com,"4111 1111 1111 1111")'), data_row(b"(3,Nobody,,)"))
    assert_never_clear(out)
    assert values(out) == [[b'(1,Ada,****,"**** **** **** 1111")'], [b"(3,Nobody,,)"]]


def test_a_whole_row_is_masked_field_by_field_in_binary():
    record = INT32.pack(4) + b"".join(INT32.pack(oid) + INT32.pack(len(v)) + v for oid, v in (
        (23, INT32.pack(1)), (25, b"Ada"), (25, EMAIL), (25, CARD)))
    out = run(session(), "select c from customers c", row_description(("c", 0, 0, ROW_TYPE, 1)), data_row(record))
    assert_never_clear(out)
    masked = values(out)[0][0]
    assert masked is not None and masked.endswith(INT32.pack(19) + b"**** **** **** 1111") and b"Ada" in masked


@pytest.mark.parametrize("sql", ["select row_to_json(c) from customers c", "select json_agg(c) from customers c"])
def test_row_json_is_masked_member_by_member(sql):
    document = json.dumps({"id": 1, "name": "Ada", "email": EMAIL.decode(), "card_number": CARD.decode()})
    if "agg" in sql:
        document = f"[{document}, {document}]"
    out = run(session(), sql, row_description(("j", 0, 0, 114, 0)), data_row(document.encode()))
    assert_never_clear(out)
    rows = json.loads(values(out)[0][0])
    for row in rows if isinstance(rows, list) else [rows]:
        assert row == {"id": 1, "name": "Ada", "email": "****", "card_number": "**** **** **** 1111"}


def test_a_json_row_that_comes_back_as_another_type_is_withheld():
    s = session()
    s.from_client(codec.query("select row_to_json(c) from customers c"))
    out = sent(s.from_server(row_description(("j", 0, 0, 25, 0)) + data_row(CARD)), "client")
    assert_never_clear(out)
    assert s.closed and "withheld" in codec.read_fields(frames(out)[-1][1])["M"]


@pytest.mark.parametrize("sql", ["select c::text from customers c", "select x from (select * from customers) x",
                                 "select concat(c) from customers c", "select row_to_json(x) from (select * from customers) x"])
def test_whole_rows_in_other_shapes_are_refused(sql):
    s = session()
    assert refused(s, sql)


# ---- computed values ---------------------------------------------------------------------------


def test_a_result_whose_columns_the_analysis_miscounted_is_withheld():
    s = session()
    s.from_client(codec.query("select *, email from customers, jsonb_each('{}') j"))  # key, value
    out = sent(s.from_server(row_description(*[(f"c{i}", 0, 0, 25, 0) for i in range(7)]) + data_row(*[EMAIL] * 7)),
               "client")
    assert_never_clear(out)
    assert s.closed and "counted 6 result columns where the server sent 7" in codec.read_fields(frames(out)[-1][1])["M"]


@pytest.mark.parametrize("sql, count", [
    ("select *, name from customers a join customers b using (id)", 8),
    ("select *, a.email from customers a natural join (select id from customers) b", 5),
    ("select *, email from customers, generate_series(1, 1) g", 6),
])
def test_star_counts_columns_as_the_server_does(sql, count):
    decision = decide(sql)
    assert decision.verdict is Verdict.ALLOW and decision.details[0]["output_count"] == count


def lineage_only(text: str) -> Decision:
    """A judge whose analysis found result column 0 derived from the masked card, which the
    server's RowDescription does not name (a value of a UNION carries no origin)."""
    return Decision(Verdict.ALLOW, "read", masks=(
        MaskSpec(("public.customers.card_number",), (), "partial", "mask-card", ("public.customers.card_number",)),),
        details=({"kind": "select", "output_count": 1, "masked_outputs": [
            {"position": 0, "name": "x", "columns": ["public.customers.card_number"], "rules": ["mask-card"]}]},))


def test_a_value_only_the_analysis_ties_to_a_masked_column_is_one_constant():
    out = run(session(judge=lambda query: lineage_only(query.text)), "select x from anywhere",
              row_description(("x", 0, 0, 25, 0)), data_row(CARD), data_row(None))
    assert values(out) == [[b"****"], [b"****"]]


def test_such_a_value_of_a_non_text_type_becomes_null_which_its_client_can_read():
    out = run(session(judge=lambda query: lineage_only(query.text)), "select x from anywhere",
              row_description(("x", 0, 0, 23, 1)), data_row(INT32.pack(19)))
    assert values(out) == [[None]]


@pytest.mark.parametrize("sql", ["select card_number::int from customers", "select length(card_number) from customers",
                                 "select case when card_number like '4%' then null else 1 end from customers",
                                 "select upper(email) from customers", "select count(email) from customers"])
def test_a_result_computed_from_a_masked_column_is_refused_before_it_runs(sql):
    decision = decide(sql)
    assert decision.verdict is Verdict.DENY and "computed from masked column" in decision.reason


# ---- the server's word ----------------------------------------------------------------------------


def lineage_blind(text: str) -> Decision:
    """A judge whose analysis found nothing masked, with the mask rules in force."""
    return Decision(Verdict.ALLOW, "read", masks=(
        MaskSpec((), (), "partial", "mask-card", ("public.customers.card_number",)),), details=({"kind": "select"},))


def test_a_column_the_server_says_is_masked_is_masked_though_the_analysis_missed_it():
    s = session(judge=lambda query: lineage_blind(query.text))
    out = run(s, "select mystery from somewhere", row_description(("mystery", CUSTOMERS_OID, 4, 25, 0)),
              data_row(CARD))
    assert values(out) == [[b"**** **** **** 1111"]]


def test_a_value_of_a_masked_relations_row_type_is_masked_inside_though_the_analysis_missed_it():
    s = session(judge=lambda query: lineage_blind(query.text))
    out = run(s, "select mystery from somewhere", row_description(("mystery", 0, 0, ROW_TYPE, 0)),
              data_row(b'(1,Ada,x,"4111 1111 1111 1111")'))
    assert values(out) == [[b'(1,Ada,x,"**** **** **** 1111")']]


# ---- errors and notices --------------------------------------------------------------------------


def server_error(code: str, message: str, *, notice: bool = False, detail: str = "") -> bytes:
    return codec.error_response(code, message, notice=notice, detail=detail)


def test_an_error_while_masked_values_are_read_keeps_its_sqlstate_and_loses_its_text():
    s = session()
    s.from_client(codec.query("select card_number from customers"))
    out = sent(s.from_server(server_error("22P02", f'invalid input syntax for type integer: "{CARD.decode()}"',
                                          detail=CARD.decode()) + codec.ready_for_query(b"I")), "client")
    assert_never_clear(out)
    fields = codec.read_fields(frames(out)[0][1])
    assert fields["C"] == "22P02" and "'mask-card'" in fields["M"] and "D" not in fields


def test_a_notice_while_masked_values_are_computed_loses_its_text():
    s = session()
    s.from_client(codec.query("select card_number from customers"))
    out = sent(s.from_server(server_error("01000", f"saw {CARD.decode()}", notice=True)), "client")
    assert_never_clear(out)
    assert frames(out)[0][0] == b"N" and "withheld" in codec.read_fields(frames(out)[0][1])["M"]


def test_other_errors_keep_their_text_with_what_the_classifiers_find_replaced():
    s = session()
    s.from_client(codec.query("select 'abc'::int"))
    out = sent(s.from_server(server_error("22P02", 'invalid input syntax for type integer: "abc"')
                             + server_error("XX000", f"oops {EMAIL.decode()}") + codec.ready_for_query(b"E")), "client")
    first, second = (codec.read_fields(body)["M"] for kind, body in frames(out) if kind == b"E")
    assert first == 'invalid input syntax for type integer: "abc"' and second == "oops ****"


# ---- cursors ------------------------------------------------------------------------------------


def test_fetch_from_a_cursor_is_masked_as_its_query():
    s = session()
    run(s, "begin", status=b"T")
    run(s, "declare cur cursor for select id, email from customers", status=b"T", tag=b"DECLARE CURSOR")
    out = run(s, "fetch 1 from cur", row_description(("id", CUSTOMERS_OID, 1, 23, 0), ("email", 0, 0, 25, 0)),
              data_row(b"1", EMAIL), status=b"T")
    assert values(out) == [[b"1", b"****"]]


def test_fetch_from_a_cursor_the_enforcer_did_not_judge_is_refused():
    s = session()
    assert refused(s, "fetch all from elsewhere")


def test_a_cursor_ends_with_its_transaction():
    s = session()
    run(s, "begin", status=b"T")
    run(s, "declare cur cursor for select id from customers", status=b"T", tag=b"DECLARE CURSOR")
    run(s, "commit")
    assert refused(s, "fetch all from cur")


def test_a_closed_cursor_cannot_be_fetched_from():
    s = session()
    run(s, "begin", status=b"T")
    run(s, "declare cur cursor for select id from customers", status=b"T", tag=b"DECLARE CURSOR")
    run(s, "close cur", status=b"T")
    assert refused(s, "fetch all from cur")


# ---- what the engine says about COPY and cursors -----------------------------------------------


def decide(sql: str) -> Decision:
    engine = PolicyEngine(load_policy_text(POLICY + "  - {name: copy, effect: allow, sql: {kinds: [copy]}}\n"
                                                    "  - {name: write, effect: allow, sql: {kinds: [insert, update], "
                                                    "tables: [public.customers]}}\n"
                                                    "  - {name: set-config, effect: allow, sql: {kinds: [select], "
                                                    "functions: [set_config]}}\n"))
    return engine.decide(Request(Subject("agent"), "db", SqlQuery(sql, catalog=CATALOG)))


@pytest.mark.parametrize("sql, verdict, rule", [
    ("copy (select id, name from customers order by id) to stdout", Verdict.ALLOW, "copy"),
    ("copy customers (id, name) to stdout", Verdict.ALLOW, "copy"),
    ("copy customers to stdout", Verdict.DENY, "mask-card"),
    ("copy customers (id, email) to stdout", Verdict.DENY, "mask-email"),
    ("copy (select c from customers c) to stdout", Verdict.DENY, "mask-card"),
    ("copy (select upper(email) from customers) to stdout", Verdict.DENY, "mask-email"),
])
def test_copy_to_sends_rows_unmasked_so_a_masked_column_in_them_is_refused(sql, verdict, rule):
    decision = decide(sql)
    assert (decision.verdict, decision.rule) == (verdict, rule)


@pytest.mark.parametrize("sql, cursor, hold", [
    ("DECLARE x BINARY NO SCROLL CURSOR WITH HOLD FOR select id from customers", "x", True),
    ('declare "Cur" insensitive cursor without hold for select id from customers', "Cur", False),
    ("declare c cursor for values (1)", "c", False),
])
def test_declare_is_judged_as_its_query_and_names_its_cursor(sql, cursor, hold):
    decision = decide(sql)
    assert decision.verdict is Verdict.ALLOW and decision.details[0].get("cursor") == cursor
    assert decision.details[0]["hold"] is hold and decision.details[0]["kind"] == "select"


@pytest.mark.parametrize("sql", ["declare x cursor for delete from customers returning id",
                                 "declare x cursor for select card_number from customers where card_number > ''",
                                 "declare x frobnicate cursor for select 1", "declare x cursor"])
def test_declare_of_anything_else_is_refused(sql):
    assert decide(sql).verdict is Verdict.DENY


@pytest.mark.parametrize("sql, cursor", [("fetch forward 5 from \"X\"", "X"), ("fetch all in x", "x"),
                                         ("move next x", "x"), ("fetch -1 from x", "x"), ("fetch x", "x"),
                                         ("fetch absolute -2 from x", "x"), ("close x", "x"), ("close all", None)])
def test_fetch_move_and_close_name_their_cursor(sql, cursor):
    decision = decide(sql)
    assert decision.verdict is Verdict.ALLOW and decision.details[0].get("cursor") == cursor


def test_fetch_with_a_direction_the_analyser_does_not_know_is_refused():
    assert decide("fetch sideways 3 from x").verdict is Verdict.DENY


# ---- a result the client never asked to have described ---------------------------------------------


def test_an_execute_without_describe_is_described_to_the_enforcer_alone():
    s = session()
    bind = msg(b"B", b"\0\0" + INT16.pack(0) + INT16.pack(0) + INT16.pack(0))
    execute = msg(b"E", b"\0" + INT32.pack(0))
    to_server = sent(s.from_client(codec.parse("", "select email from customers") + bind + execute
                                   + msg(b"S")), "server")
    assert [kind for kind, _ in frames(to_server)] == [b"P", b"B", b"D", b"E", b"S"]
    out = sent(s.from_server(msg(b"1") + msg(b"2") + row_description(("email", CUSTOMERS_OID, 3, 25, 0))
                             + data_row(EMAIL) + msg(b"C", b"SELECT 1\0")
                             + codec.ready_for_query(b"I")), "client")
    assert [kind for kind, _ in frames(out)] == [b"1", b"2", b"D", b"C", b"Z"]  # no RowDescription it never asked for
    assert values(out) == [[b"****"]]


def test_an_execute_after_the_clients_own_describe_of_its_portal_is_not_described_again():
    s = session()
    bind = msg(b"B", b"\0p\0" + INT16.pack(0) + INT16.pack(0) + INT16.pack(0))
    describe, execute = msg(b"D", b"P\0"), msg(b"E", b"\0" + INT32.pack(0))
    s.from_client(codec.parse("p", "select email from customers") + msg(b"S"))
    s.from_server(msg(b"1") + codec.ready_for_query(b"I"))
    for _ in range(2):  # as libpq's PQexecPrepared sends it, again and again
        to_server = sent(s.from_client(bind + describe + execute + msg(b"S")), "server")
        assert [kind for kind, _ in frames(to_server)] == [b"B", b"D", b"E", b"S"]
        out = sent(s.from_server(msg(b"2") + row_description(("email", CUSTOMERS_OID, 3, 25, 0))
                                 + data_row(EMAIL) + msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I")), "client")
        assert [kind for kind, _ in frames(out)] == [b"2", b"T", b"D", b"C", b"Z"]
        assert values(out) == [[b"****"]]


@pytest.mark.parametrize("sql, rule", [
    # a `*` whose rows are copied or written out carries what it expands to
    ("copy (select * from customers) to stdout", "mask-card"),
    ("copy (select * from (select upper(email), card_number from customers) s) to stdout", "mask-card"),
    ("insert into customers (id, name) select * from (select id + 100, card_number from customers) s", "mask-card"),
    # the row ON CONFLICT DO UPDATE reads, and the proposed one
    ("insert into customers values (1, 'x', 'e', '9') on conflict (id) do update "
     "set name = customers.card_number returning name", "mask-card"),
    ("insert into customers as c values (1, 'x', 'e', '9') on conflict (id) do update "
     "set name = excluded.email || c.email", "mask-email"),
    # positions and output names in ORDER BY, GROUP BY, DISTINCT ON
    ("select id, card_number from customers order by 2", "mask-card"),
    ("select 'x', card_number from customers union all select 'y', 'z' order by 2", "mask-card"),
    ("select upper(email) x from customers order by x", "mask-email"),
    ("select card_number, count(*) from customers group by 1", "mask-card"),
    ("select distinct on (2) id, email from customers", "mask-email"),
    # orderings, partitions and filters inside the select list choose rows and their order
    ("select row_number() over (order by card_number) from customers", "mask-card"),
    ("select row_number() over (partition by email) from customers", "mask-email"),
    ("select json_agg(id order by email) from customers", "mask-email"),
    ("select count(*) filter (where card_number like '4%') from customers", "mask-card"),
    # a USING or NATURAL join compares the columns it merges
    ("select count(*) from customers a join (values ('5555')) v(card_number) using (card_number)", "mask-card"),
    ("select count(*) from customers a natural join customers b", "mask-card"),
    # an alias list renames some columns; the others keep their names, and the renamed carry their lineage
    ("copy (select a, b from (select card_number, email from customers) x(a, b)) to stdout", "mask-card"),
    ("copy (with t(a, b) as (select card_number, email from customers) select a, b from t) to stdout", "mask-card"),
    ("select upper(a) from (select card_number from customers) x(a)", "mask-card"),
    ("select id from customers c(a, b) where card_number like '4%'", "mask-card"),
    ("select x.id from (select card_number, id from customers) x(id, card_number) where x.id like '4%'", "mask-card"),
    # positions in parentheses, grouping sets, and output names as the server folds them
    ("select id, card_number from customers order by (2)", "mask-card"),
    ("select id, card_number from customers group by rollup(2), 1", "mask-card"),
    ("select card_number as X from customers order by x", "mask-card"),
    ("select upper(x) from (select card_number as X from customers) s", "mask-card"),
    # a fourth round: VALUES first in a set operation, a CTE's column list in a join, DML joins,
    # computations in a scalar VALUES
    ("with t(i, x) as (values (1, 'x') union all select id, email from customers) select 1 from t "
     "where x like 'a%'", "mask-email"),
    ("with t(k) as (select email from customers) select count(*) from t join (select 'a' as k) s using (k)",
     "mask-email"),
    ("update customers set name = name from customers a join (select 'a' as email) b using (email) "
     "where customers.id = a.id", "mask-email"),
    ("select (values (email::int)) from customers", "mask-email"),
    # a set-returning call's row count, a volatile call's side effect
    ("select id, generate_series(1, length(card_number)) from customers", "mask-card"),
    ("select set_config('my.x', email, false) from customers", "mask-email"),
])
def test_masked_values_that_would_leave_other_than_as_a_result_column_are_refused(sql, rule):
    decision = decide(sql)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, rule), decision.reason


def test_a_values_branch_of_a_union_has_all_its_columns():
    decision = decide("values (1, 'x') union all select id, email from customers")
    assert [o["position"] for o in decision.details[0]["masked_outputs"]] == [1]


def test_the_numeric_shape_keeps_the_positions_of_order_by():
    assert decide("select id, card_number from customers order by 2").verdict is Verdict.DENY
    assert decide("select id, card_number from customers order by 1").verdict is Verdict.ALLOW


def test_the_planners_statistics_are_refused_while_columns_are_masked():
    engine = PolicyEngine(load_policy_text(POLICY.replace('tables: ["public.*"]', 'tables: ["public.*", "pg_catalog.*"]')))
    decision = engine.decide(Request(Subject("agent"), "db", SqlQuery(
        "select most_common_vals from pg_catalog.pg_stats where tablename = 'customers'", catalog=CATALOG)))
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "mask-fail-closed")


@pytest.mark.parametrize("sql", ["select query from pg_catalog.pg_stat_activity",
                                 "select query from public.pg_stat_statements"])
def test_statement_texts_of_sessions_are_refused_while_columns_are_masked(sql):
    engine = PolicyEngine(load_policy_text(POLICY.replace('tables: ["public.*"]', 'tables: ["public.*", "pg_catalog.*"]')))
    decision = engine.decide(Request(Subject("agent"), "db", SqlQuery(sql, catalog=CATALOG)))
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "mask-fail-closed")


def test_a_parenthesised_join_in_from_is_refused():
    decision = decide("select upper(email) from (customers cross join (select 1) z)")
    assert decision.verdict is Verdict.DENY and "parenthesised join" in decision.reason


def test_select_into_is_a_create():
    assert decide("select id, card_number into t1 from customers").verdict is Verdict.DENY


def test_explain_masks_nothing_of_its_plan():
    decision = decide("explain select email, id from customers")
    assert decision.verdict is Verdict.ALLOW and not any("masked_outputs" in d for d in decision.details)


def test_a_declare_the_server_refused_leaves_the_cursor_it_did_not_replace():
    s = session()
    run(s, "begin", status=b"T")
    run(s, "declare x cursor with hold for select email from customers", status=b"T", tag=b"DECLARE CURSOR")
    run(s, "commit")
    s.from_client(codec.query("declare x cursor with hold for select id from customers"))
    s.from_server(server_error("42P03", 'cursor "x" already exists') + codec.ready_for_query(b"I"))
    out = run(s, "fetch all from x", row_description(("id", 0, 0, 25, 0)), data_row(EMAIL))
    assert values(out) == [[b"****"]]


def test_a_protocol_portal_named_like_a_cursor_cannot_be_fetched_as_one():
    s = session()
    run(s, "begin", status=b"T")
    run(s, "declare x cursor with hold for select id from customers", status=b"T", tag=b"DECLARE CURSOR")
    run(s, "commit")
    s.from_client(codec.parse("s1", "select email from customers")
                  + msg(b"B", b"x\0s1\0" + INT16.pack(0) + INT16.pack(0) + INT16.pack(0)) + msg(b"S"))
    s.from_server(msg(b"1") + msg(b"2") + codec.ready_for_query(b"T"))
    assert refused(s, "fetch all from x")


@pytest.mark.parametrize("sql, verdict", [
    ("select * from customer_list", Verdict.DENY),  # reads customers.email: which view column carries it, untold
    ("select id from list_of_lists", Verdict.DENY),  # through a view that does
    ("select * from names", Verdict.ALLOW),  # reads no masked column
])
def test_a_view_whose_definition_reads_a_masked_column_is_refused(sql, verdict):
    decision = decide(sql)
    assert decision.verdict is verdict, decision.reason
    assert verdict is Verdict.ALLOW or "view's definition" in decision.reason
