"""read_catalog and CatalogStore against a real PostgreSQL 15, over the real Upstream login."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest
from pg_fixture import PgServer, free_port

from interceptor.handlers.postgres.catalog import CatalogStore, read_catalog
from interceptor.handlers.postgres.upstream import Upstream
from interceptor.policy.catalog import Catalog, CatalogUnavailable, parse_search_path
from interceptor.policy.sql import analyse

SCHEMA = """
create schema sales;
create table sales.orders (id int primary key, note text, total numeric(10,2), created timestamptz default now());
alter table sales.orders drop column note;
create table public.orders (id int);
create table public.customers (id int, name text);
create table public.pg_class (x int);
create function public.audit_hit(x int) returns int volatile language plpgsql as $$ begin return x; end $$;
create view sales.order_report as select id, public.audit_hit(id) as hit from sales.orders;
create sequence sales.ticket_seq;
create function sales.next_ticket() returns bigint language sql as $$ select nextval('sales.ticket_seq') $$;
create table sales.tickets (id bigint default sales.next_ticket(), body text);
create function sales.definer(n int) returns setof int security definer stable language sql as 'select n';
create materialized view sales.totals as select sum(total) as total from sales.orders;
create type sales.pair as (a int, b text);
create table sales.events (id int, at date) partition by range (at);
create role reader login password 'reader-pw';
alter role reader set search_path = sales, public;
create schema reader;
create table reader.orders (id int);
grant usage on schema sales, reader to reader;
create schema hidden;
create table hidden.orders (id int);
create table sales.generated (a int, b int generated always as (pg_catalog.abs(a)) stored);
create function sales.plus(int, int) returns int volatile language sql as 'select $1 + $2';
create operator sales.## (leftarg = int, rightarg = int, function = sales.plus);
create view sales.sums as select id operator(sales.##) 1 as bumped, count(*) over () as n, now() as at
  from sales.orders;
create schema trap;
create function trap.oideq(oid, oid) returns boolean language sql as 'select false';
create operator trap.= (leftarg = oid, rightarg = oid, function = trap.oideq);
create role trapped login password 'trapped-pw';
alter role trapped set search_path = trap, pg_catalog, sales, public;
grant usage on schema trap to trapped;
create function sales.bump() returns boolean volatile language plpgsql as $$ begin return true; end $$;
create table sales.audited (id int);
alter table sales.audited enable row level security;
create policy see on sales.audited using (sales.bump());
create policy ins on sales.audited for insert with check (public.audit_hit(id) > 0);
create table sales.unsecured (id int);
create policy idle on sales.unsecured using (sales.bump());
create view sales.audited_view as select id from sales.audited;
create function sales.on_write() returns trigger language plpgsql as $$ begin return new; end $$;
create table sales.ledger (id int check (public.audit_hit(id) > 0));
create trigger ledger_insert before insert on sales.ledger for each row execute function sales.on_write();
create trigger ledger_truncate after truncate on sales.ledger for each statement execute function sales.on_write();
create domain sales.checked as int check (sales.bump());
create domain sales.positive as sales.checked check (value > 0);
create table sales.typed (id int, c sales.positive);
create table sales.parted (id int, at int) partition by range (at);
create table sales.part1 partition of sales.parted for values from (0) to (10);
create trigger part_insert before insert on sales.part1 for each row execute function sales.on_write();
create type sales.color as enum ('red', 'green');
create function sales.to_color(int) returns sales.color language sql as $$ select 'red'::sales.color $$;
create cast (int as sales.color) with function sales.to_color(int);
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with PgServer(user="owner", password="pw") as server:
        server.psql("create database app")
        server.psql(SCHEMA, dbname="app")
        yield server


async def login(pg: PgServer, user: str, password: str, database: str = "app") -> Upstream:
    return await Upstream.connect(pg.host, pg.port, {"user": user, "database": database}, password, None, None)


async def read(pg: PgServer, user: str, password: str) -> Catalog:
    upstream = await login(pg, user, password)
    try:
        return await read_catalog(upstream, "app")
    finally:
        upstream.close()


@pytest.fixture(scope="module")
def catalog(pg: PgServer) -> Catalog:
    async def with_another_sessions_temp_table() -> Catalog:
        other = await login(pg, "owner", "pw")
        await other.simple_query("create temp table scratch (x int)")
        try:
            return await read(pg, "reader", "reader-pw")
        finally:
            other.close()

    return asyncio.run(with_another_sessions_temp_table())


def test_login_role_and_its_search_path(catalog: Catalog) -> None:
    assert (catalog.user, catalog.database, catalog.default_search_path) == ("reader", "app", ("sales", "public"))
    assert {"sales", "public", "reader", "trap", "pg_catalog", "information_schema"} <= catalog.schemas
    assert not {s for s in catalog.schemas if s.startswith(("pg_temp", "pg_toast"))}
    assert not [r for r in catalog.relations.values() if r.name == "scratch" or r.schema == "pg_toast"]


def test_relations_of_every_kind_with_live_columns(catalog: Catalog) -> None:
    orders = catalog.relation("sales", "orders")
    assert orders is not None and orders.kind == "r"
    assert orders.columns == ("id", "total", "created")  # the dropped column is gone
    assert orders.types == ("integer", "numeric(10,2)", "timestamp with time zone")
    assert orders.functions == () and orders.write_functions == (("default", "pg_catalog.now"),) and orders.oid > 0
    kinds = {name: catalog.relations[("sales", name)].kind
             for name in ("order_report", "ticket_seq", "totals", "pair", "events", "tickets")}
    assert kinds == {"order_report": "v", "ticket_seq": "S", "totals": "m", "pair": "c", "events": "p",
                     "tickets": "r"}
    assert catalog.columns("sales", "pair") == ("a", "b")
    assert catalog.columns("pg_catalog", "pg_class")[:2] == ("oid", "relname")  # type: ignore[index]


def test_functions_views_and_defaults_call(catalog: Catalog) -> None:
    assert catalog.relations[("sales", "order_report")].functions == ("public.audit_hit",)
    assert catalog.relations[("sales", "tickets")].write_functions == (("default", "sales.next_ticket"),)
    assert catalog.relations[("sales", "totals")].functions == ()  # a materialized view's definition runs at REFRESH
    assert catalog.relations[("sales", "sums")].functions == ("pg_catalog.count", "pg_catalog.now", "sales.plus")
    assert catalog.relations[("sales", "generated")].write_functions == (("insert", "pg_catalog.abs"),
                                                                         ("update", "pg_catalog.abs"))
    assert catalog.relations[("pg_catalog", "pg_stat_activity")].functions == ()  # the server's own views
    assert catalog.relations[("public", "customers")].functions == ()


def test_row_security_triggers_checks_and_domain_checks(catalog: Catalog) -> None:
    relations = catalog.relations
    audited = relations[("sales", "audited")]
    assert audited.functions == ("sales.bump",)
    assert set(audited.write_functions) == {("update", "sales.bump"), ("delete", "sales.bump"),
                                            ("insert", "public.audit_hit"), ("insert", "pg_catalog.int4gt")}
    assert relations[("sales", "audited_view")].functions == ("sales.bump",)  # the policies of what it reads
    assert relations[("sales", "audited_view")].write_functions == audited.write_functions
    assert relations[("sales", "unsecured")].functions == ()  # row security is not enabled on it
    assert set(relations[("sales", "ledger")].write_functions) == {
        ("insert", "sales.on_write"), ("truncate", "sales.on_write"), ("insert", "public.audit_hit"),
        ("update", "public.audit_hit"), ("insert", "pg_catalog.int4gt"), ("update", "pg_catalog.int4gt")}
    assert set(relations[("sales", "typed")].write_functions) == {
        (event, f) for event in ("insert", "update") for f in ("sales.bump", "pg_catalog.int4gt")}
    assert relations[("sales", "parted")].write_functions == (("insert", "sales.on_write"),)  # its partition's


def test_types_with_what_a_cast_to_them_runs(catalog: Catalog) -> None:
    assert catalog.types[("sales", "checked")].functions == ("sales.bump",)
    assert catalog.types[("sales", "checked")].kind == "d"
    assert catalog.types[("sales", "positive")].functions == ("pg_catalog.int4gt", "sales.bump")
    assert catalog.types[("sales", "_positive")].functions == ("pg_catalog.int4gt", "sales.bump")  # its array
    assert catalog.types[("sales", "typed")].functions == ("pg_catalog.int4gt", "sales.bump")  # the row type
    assert catalog.types[("sales", "color")].functions == ("sales.to_color",)
    assert catalog.types[("sales", "pair")].functions == ()
    assert catalog.complete and catalog.types[("pg_catalog", "int4")].functions == ()
    assert catalog.resolve_type("text", ("sales", "public")) == catalog.types[("pg_catalog", "text")]


def test_operators_outside_pg_catalog_with_their_functions(catalog: Catalog) -> None:
    assert catalog.operator_functions[("sales", "##")] == ("sales.plus",)
    assert catalog.operator_functions[("trap", "=")] == ("trap.oideq",)
    assert not [key for key in catalog.operator_functions if key[0] == "pg_catalog"]


def test_functions_with_volatility_definer_language(catalog: Catalog) -> None:
    (hit,) = catalog.functions_named("public", "audit_hit")
    assert (hit.arguments, hit.volatility, hit.security_definer, hit.language, hit.kind) == (
        ("integer",), "volatile", False, "plpgsql", "f")
    (definer,) = catalog.functions_named("sales", "definer")
    assert (definer.arguments, definer.volatility, definer.security_definer, definer.returns_set) == (
        ("integer",), "stable", True, True)
    assert {f.arguments for f in catalog.functions_named("pg_catalog", "format")} == {
        ("text",), ("text", 'VARIADIC "any"')}
    assert next(iter(catalog.functions_named("pg_catalog", "now"))).volatility == "stable"
    assert next(iter(catalog.functions_named("pg_catalog", "count"))).kind == "a"


def test_the_dump_round_trips(catalog: Catalog) -> None:
    again = Catalog.from_dict(json.loads(json.dumps(catalog.to_dict())))
    assert again == catalog and again.version == catalog.version


@pytest.mark.parametrize("path", ["sales, public", "public, sales", '"$user", public', "public",
                                  "public, pg_catalog", "nosuch, sales", "reader, sales, public"])
def test_resolution_agrees_with_the_servers_to_regclass(pg: PgServer, catalog: Catalog, path: str) -> None:
    names = ("orders", "customers", "order_report", "pg_class", "tickets", "pair", "nosuch")

    async def server_says() -> dict[str, str | None]:
        upstream = await login(pg, "reader", "reader-pw")
        try:
            await upstream.simple_query(f"set search_path = {path}")
            found = {}
            for name in names:
                (row,) = await upstream.simple_query(
                    "select (select n.nspname from pg_catalog.pg_class c join pg_catalog.pg_namespace n "
                    f"on n.oid = c.relnamespace where c.oid = pg_catalog.to_regclass('{name}'))")
                found[name] = row[0]
            return found
        finally:
            upstream.close()

    expected = asyncio.run(server_says())
    parsed = parse_search_path(path)
    assert parsed is not None
    ours = {name: getattr(catalog.resolve_relation(name, parsed), "schema", None) for name in names}
    assert ours == expected


def test_resolution_skips_schemas_the_role_may_not_use(pg: PgServer, catalog: Catalog) -> None:
    async def server_says() -> str | None:
        upstream = await login(pg, "reader", "reader-pw")
        try:
            await upstream.simple_query("set search_path = hidden, public")
            ((schema,),) = await upstream.simple_query(
                "select n.nspname from pg_catalog.pg_class c join pg_catalog.pg_namespace n "
                "on n.oid = c.relnamespace where c.oid = pg_catalog.to_regclass('orders')")
            return schema
        finally:
            upstream.close()

    assert asyncio.run(server_says()) == "public"
    assert getattr(catalog.resolve_relation("orders", ("hidden", "public")), "schema", None) == "public"


def test_a_search_path_that_would_hijack_operators_does_not(pg: PgServer, catalog: Catalog) -> None:
    trapped = asyncio.run(read(pg, "trapped", "trapped-pw"))
    assert trapped.default_search_path == ("trap", "pg_catalog", "sales", "public")
    assert trapped.relations == catalog.relations and trapped.functions == catalog.functions
    assert trapped.types == catalog.types and trapped.operator_functions == catalog.operator_functions


def test_the_store_reads_once_and_says_why_it_cannot(pg: PgServer) -> None:
    async def scenario() -> None:
        store = CatalogStore()
        logins = []

        async def connect() -> Upstream:
            logins.append(1)
            return await login(pg, "reader", "reader-pw")

        first, second = await asyncio.gather(store.get("app-db", "app", connect), store.get("app-db", "app", connect))
        assert first is second and first.relation("sales", "orders") is not None and len(logins) == 1
        with pytest.raises(CatalogUnavailable, match="login failed: .*password authentication failed"):
            await store.get("app-db", "app-bad", lambda: login(pg, "reader", "wrong"))
        with pytest.raises(CatalogUnavailable, match="login failed: .*onnect"):
            await store.get("gone", "app", lambda: Upstream.connect("127.0.0.1", free_port(), {
                "user": "reader", "database": "app"}, "reader-pw", None, None))

    asyncio.run(scenario())


# -- what the server runs is what the analyser judges ----------------------------------------

def default_btree_class(type_: str, prefix: str) -> str:
    """A default btree operator class probe.<prefix>_ops for `type_`, comparing values as text,
    whose every function marks that it ran."""
    names = (("lt", "<"), ("le", "<="), ("eq", "="), ("ge", ">="), ("gt", ">"))
    functions = [f"create function probe.{prefix}{name}({type_}, {type_}) returns boolean volatile language sql as "
                 f"$$ select probe.mark('{prefix}{name}') and $1::text {op} $2::text $$;" for name, op in names]
    operators = [f"create operator probe.{op} (leftarg = {type_}, rightarg = {type_}, function = probe.{prefix}{name});"
                 for name, op in names]
    return "\n".join((
        *functions, *operators,
        f"create function probe.{prefix}cmp({type_}, {type_}) returns int volatile language sql as "
        f"$$ select pg_catalog.bttextcmp($1::text, $2::text) where probe.mark('{prefix}cmp') $$;",
        f"create operator class probe.{prefix}_ops default for type {type_} using btree as "
        + ", ".join(f"operator {n} probe.{op}" for n, (_, op) in enumerate(names, 1))
        + f", function 1 probe.{prefix}cmp({type_}, {type_});", ""))


TRUTH = """
create role prober login password 'prober-pw';
create schema probe authorization prober;
set role prober;
create table probe.ran (fn text);
create function probe.mark(fn text) returns boolean volatile language plpgsql as $$
  begin insert into probe.ran values (fn); return true; end $$;
create function probe.rls_read() returns boolean volatile language sql as $$ select probe.mark('rls_read') $$;
create function probe.rls_check() returns boolean volatile language sql as $$ select probe.mark('rls_check') $$;
create function probe.chk(int) returns boolean volatile language sql as $$ select probe.mark('chk') $$;
create function probe.dom(int) returns boolean volatile language sql as $$ select probe.mark('dom') $$;
create function probe.def() returns int volatile language sql as $$ select 1 where probe.mark('def') $$;
create function probe.view_fn(int) returns int volatile language sql as $$ select $1 where probe.mark('view_fn') $$;
create function probe.op_fn(int, int) returns boolean volatile language sql as $$ select probe.mark('op_fn') $$;
create function probe.mark_row(r probe.ran) returns boolean volatile language sql as $$
  select probe.mark('mark_row') $$;
create function probe.trg() returns trigger language plpgsql as $$
  begin perform probe.mark('trg'); return coalesce(new, old); end $$;
create type probe.color as enum ('red');
create function probe.cast_fn(int) returns probe.color volatile language sql as $$
  select 'red'::probe.color where probe.mark('cast_fn') $$;
create cast (int as probe.color) with function probe.cast_fn(int);
create operator probe.=== (leftarg = int, rightarg = int, function = probe.op_fn);
create domain probe.checked as int check (probe.dom(value));
create table probe.secured (id int);
alter table probe.secured enable row level security;
alter table probe.secured force row level security;
create policy r on probe.secured for select using (probe.rls_read());
create policy w on probe.secured for insert with check (probe.rls_check());
create policy u on probe.secured for update using (probe.rls_read()) with check (probe.rls_check());
create policy d on probe.secured for delete using (probe.rls_read());
create view probe.v as select probe.view_fn(id) as id from probe.secured;
create table probe.ledger (id int check (probe.chk(id)));
create trigger ledger_row before insert or update on probe.ledger for each row execute function probe.trg();
create trigger ledger_truncate after truncate on probe.ledger for each statement execute function probe.trg();
create table probe.typed (c probe.checked);
create table probe.defaulted (id int default probe.def());
create table probe.parted (id int, at int) partition by range (at);
create table probe.part1 partition of probe.parted for values from (0) to (10);
create trigger part_row before insert on probe.part1 for each row execute function probe.trg();
create table probe.ruled (id int);
create rule log_delete as on delete to probe.ruled do also insert into probe.ledger values (old.id);
create function probe.nested_read() returns boolean volatile language sql as $$ select probe.mark('nested_read') $$;
create table probe.allowed (id int);
alter table probe.allowed enable row level security;
alter table probe.allowed force row level security;
create policy r on probe.allowed using (probe.nested_read());
create table probe.guarded (id int);
alter table probe.guarded enable row level security;
alter table probe.guarded force row level security;
create policy r on probe.guarded using (exists (select 1 from probe.allowed a where a.id = id));
insert into probe.allowed values (1);
insert into probe.guarded values (1);
insert into probe.secured values (1);
insert into probe.ledger values (1);
insert into probe.ruled values (1);
create type probe.shade as enum ('dark');
create function probe.shade_int(probe.shade) returns int volatile language sql as $$
  select 1 where probe.mark('shade_int') $$;
create cast (probe.shade as int) with function probe.shade_int(probe.shade) as implicit;
create table probe.paint (c probe.shade);
insert into probe.paint values ('dark');
create function probe.pcmp(point, point) returns int volatile language sql as $$
  select case when $1[0] < $2[0] then -1 when $1[0] > $2[0] then 1 else 0 end where probe.mark('pcmp') $$;
create function probe.plt(point, point) returns boolean volatile language sql as $$
  select probe.mark('plt') and $1[0] < $2[0] $$;
create function probe.ple(point, point) returns boolean volatile language sql as $$
  select probe.mark('ple') and $1[0] <= $2[0] $$;
create function probe.peq(point, point) returns boolean volatile language sql as $$
  select probe.mark('peq') and $1[0] = $2[0] $$;
create function probe.pge(point, point) returns boolean volatile language sql as $$
  select probe.mark('pge') and $1[0] >= $2[0] $$;
create function probe.pgt(point, point) returns boolean volatile language sql as $$
  select probe.mark('pgt') and $1[0] > $2[0] $$;
create operator probe.< (leftarg = point, rightarg = point, function = probe.plt);
create operator probe.<= (leftarg = point, rightarg = point, function = probe.ple);
create operator probe.= (leftarg = point, rightarg = point, function = probe.peq);
create operator probe.>= (leftarg = point, rightarg = point, function = probe.pge);
create operator probe.> (leftarg = point, rightarg = point, function = probe.pgt);
create table probe.pts (p point, ps point[]);
insert into probe.pts values ('(1,1)', '{"(1,1)"}'), ('(2,2)', '{"(2,2)"}'), ('(0,0)', '{"(0,0)"}');
create table probe.indexed (p point);
insert into probe.indexed values ('(1,1)'), ('(2,2)');
create function probe.intcmp(int, int) returns int volatile language sql as $$
  select pg_catalog.btint4cmp($1, $2) where probe.mark('intcmp') $$;
reset role;
create operator class probe.int_ops for type int using btree as
  operator 1 <, operator 2 <=, operator 3 =, operator 4 >=, operator 5 >, function 1 probe.intcmp(int, int);
create operator class probe.point_ops default for type point using btree as
  operator 1 probe.<, operator 2 probe.<=, operator 3 probe.=, operator 4 probe.>=, operator 5 probe.>,
  function 1 probe.pcmp(point, point);
create function probe.phash(point) returns int volatile language sql as $$ select 0 where probe.mark('phash') $$;
create operator class probe.point_hash_ops for type point using hash as
  operator 1 probe.=, function 1 probe.phash(point);
create index on probe.indexed (p);
create index on probe.indexed using hash (p probe.point_hash_ops);
create function probe.rngdiff(int, int) returns float8 immutable language sql as 'select ($1 - $2)::float8';
create type probe.r as range (subtype = int, subtype_opclass = probe.int_ops, subtype_diff = probe.rngdiff);
create type probe.pair as (a int, b text);
""" + default_btree_class("json", "j") + default_btree_class("probe.pair", "pair") + """
set role prober;
create table probe.spans (s probe.r);
insert into probe.spans values ('[1,3]'), ('[2,4]');
"""

TRUTH_STATEMENTS = [
    "select id from probe.secured",
    "insert into probe.secured values (2)",
    "update probe.secured set id = 3",
    "delete from probe.secured",
    "select id from probe.v",
    "select id from probe.guarded",  # its policy reads probe.allowed, whose policy runs too
    "delete from probe.guarded",
    "insert into probe.ledger values (2)",
    "update probe.ledger set id = 3",
    "truncate probe.ledger",
    "insert into probe.typed values (1)",
    "select 1::probe.checked",
    "insert into probe.defaulted default values",
    "insert into probe.parted values (1, 1)",
    "delete from probe.ruled",
    "select 1 operator(probe.===) 1",
    "select 1::probe.color",
    "set search_path = probe; select r.mark_row from probe.ran r",
    "set search_path = probe; select (r).mark_row from probe.ran r",
    "insert into probe.secured values (4) returning id",
    "select id from probe.secured for update",
    "merge into probe.ledger l using (select 5 as id) s on l.id = s.id when not matched then insert values (s.id)",
    "select cast(1 as probe.checked), '{1}'::probe.checked[]",
    """select a from json_to_record('{"a": 1}') as x(a probe.checked)""",
    # a default btree operator class for a built-in type sorts, groups and compares its values
    "select p from probe.pts order by p",
    "select distinct p from probe.pts",
    "select p from probe.pts group by p",
    "select p from probe.pts union select p from probe.pts",
    "select row_number() over (order by p) from probe.pts",
    "select array_agg(p order by p) from probe.pts",
    """select ps from probe.pts where ps = array[point '(1,1)']""",
    "insert into probe.indexed values ('(3,3)')",  # entered in its indexes, with their operator classes
    # an implicit cast out of a user type runs where the expression needs the other type
    "select c + 1 from probe.paint",
    "select c from probe.paint where c = 1",
    "select c::int from probe.paint",
    # a user default operator class for a built-in type runs on values that come from no table
    "select x, count(*) from (values (point(1,2)), (point(0,0))) v(x) group by x",
    "select array[point(1,2)] = array[point(1,2)]",
    "select to_json(1) union select to_json(2)",
    # and one for a user type, where a value of the type is used
    "select distinct v from (values (row(1,'a')::probe.pair), (row(2,'b')::probe.pair)) x(v)",
    # a range type runs its subtype_opclass where a value is built or compared
    "select '[1,5]'::probe.r",
    "select s from probe.spans order by s",
]


@pytest.fixture(scope="module")
def truth(pg: PgServer) -> Catalog:
    pg.psql("create database truth")
    pg.psql(TRUTH, dbname="truth")

    async def read_it() -> Catalog:
        upstream = await Upstream.connect(pg.host, pg.port, {"user": "prober", "database": "truth"}, "prober-pw",
                                          None, None)
        try:
            return await read_catalog(upstream, "truth")
        finally:
            upstream.close()

    return asyncio.run(read_it())


def ran_in_truth(pg: PgServer, sql: str) -> set[str]:
    """The probe functions the server ran for `sql` (as prober, in a transaction rolled back)."""
    async def run_it() -> list[str]:
        upstream = await Upstream.connect(pg.host, pg.port, {"user": "prober", "database": "truth"}, "prober-pw",
                                          None, None)
        try:
            await upstream.simple_query(f"begin; truncate probe.ran; insert into probe.ran values ('seed'); {sql}")
            ran = await upstream.simple_query("select distinct fn from probe.ran where fn <> 'seed'")
            await upstream.simple_query("rollback")
            return [str(row[0]) for row in ran]
        finally:
            upstream.close()

    return {f"probe.{name}" for name in asyncio.run(run_it())}


def judged(sql: str, catalog: Catalog) -> set[str]:
    statement = analyse(sql, catalog=catalog)[-1]
    assert statement.error is None, statement.error
    return {f.qualified for call in statement.calls for f in call.candidates or ()}


@pytest.mark.parametrize("sql", TRUTH_STATEMENTS)
def test_what_the_server_runs_is_among_the_calls_judged(pg: PgServer, truth: Catalog, sql: str) -> None:
    ran = ran_in_truth(pg, sql)
    assert ran, sql
    assert ran <= judged(sql, truth), f"{sql}: the server ran {sorted(ran - judged(sql, truth))}, not judged"


@pytest.mark.parametrize("sql", ["select id from probe.ledger order by id",
                                 "select relname from pg_catalog.pg_class order by relpages, relname"])
def test_an_operator_class_that_is_not_a_default_runs_only_where_named(pg: PgServer, truth: Catalog,
                                                                       sql: str) -> None:
    """probe.int_ops, a btree class for int that is no default, sorts no int column."""
    assert "probe.intcmp" not in ran_in_truth(pg, sql) | judged(sql, truth)


def test_what_operator_classes_and_ranges_run_is_in_the_catalog(truth: Catalog) -> None:
    pair, json_ = ({f"probe.{prefix}{n}" for n in ("lt", "le", "eq", "ge", "gt", "cmp")} for prefix in ("pair", "j"))
    assert truth.types[("probe", "r")].functions == ("probe.intcmp", "probe.rngdiff")
    assert set(truth.types[("probe", "pair")].functions) == pair
    assert set(truth.relations[("probe", "spans")].functions) == {"probe.intcmp", "probe.rngdiff"}
    assert set(truth.opclass_functions[("pg_catalog.json", "probe.j_ops")]) == json_
    assert set(truth.opclass_functions) == {("pg_catalog.json", "probe.j_ops"), ("pg_catalog.point", "probe.point_ops")}
    assert truth.types[("pg_catalog", "int4")].functions == ()


CLIENTS = """
create type public.status as enum ('new', 'old');
create domain public.positive as int check (value > 0);
create table public.customers (id serial primary key, name text not null, status public.status,
                               n public.positive, tags text[], created timestamptz default now());
create table public.orders (id int primary key, customer_id int references public.customers (id), amount numeric(10,2));
create index on public.orders (customer_id);
create view public.names as select id, name from public.customers;
insert into public.customers (name, status, n) values ('a', 'new', 1);
"""


def test_what_clients_send_is_understood_with_the_catalog(pg: PgServer) -> None:
    """SQLAlchemy's reflection, pandas, psycopg's TypeInfo and asyncpg's type introspection
    (enum and array columns) send nothing the analyser refuses as not understood, and
    nothing it takes for a call of user code, when it has the catalog read."""
    import asyncpg  # the test extra of pyproject.toml installs these
    import pandas
    import psycopg
    import sqlalchemy
    from psycopg.types import TypeInfo

    pg.psql("create database clients")
    pg.psql(CLIENTS, dbname="clients")
    pg.psql("alter database clients set log_statement = 'all'")
    start = pg.log.stat().st_size
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://owner:pw@{pg.host}:{pg.port}/clients")
    inspector = sqlalchemy.inspect(engine)
    for table in inspector.get_table_names():
        inspector.get_columns(table), inspector.get_pk_constraint(table), inspector.get_foreign_keys(table)
        inspector.get_indexes(table), inspector.get_unique_constraints(table), inspector.get_check_constraints(table)
    sqlalchemy.MetaData().reflect(engine)
    pandas.read_sql("select * from customers", engine)
    engine.dispose()
    with psycopg.connect(pg.dsn(dbname="clients")) as conn:
        TypeInfo.fetch(conn, "status")

    async def with_asyncpg() -> Catalog:
        conn = await asyncpg.connect(host=pg.host, port=pg.port, user="owner", password="pw", database="clients")
        try:
            await conn.fetch("select status, tags from customers where status = $1", "new")
        finally:
            await conn.close()
        upstream = await login(pg, "owner", "pw", "clients")
        try:
            return await read_catalog(upstream, "clients")
        finally:
            upstream.close()

    catalog = asyncio.run(with_asyncpg())
    with open(pg.log, encoding="utf-8", errors="replace") as log:
        log.seek(start)
        sent = re.findall(r"LOG:  (?:statement|execute [^:]*): (.*?)(?=\n\S|\Z)", log.read(), re.S)
    statements = {re.sub(r"\n\t", "\n", text).strip() for text in sent} - {""}
    assert len(statements) > 20 and any("::oid[]" in text for text in statements)  # asyncpg's introspection
    refused = {text: [s.error for s in analyse(text, catalog=catalog) if s.error] for text in statements}
    assert not {text: errors for text, errors in refused.items() if errors}
    user_code = {text: [c.display for s in analyse(text, catalog=catalog) for c in s.calls
                        if any(f.schema != "pg_catalog" for f in c.candidates or ())] for text in statements}
    assert not {text: calls for text, calls in user_code.items() if calls}
