"""Judge what PostgreSQL will actually run: through the kernel redirect, real clients (psql,
psycopg, asyncpg, SQLAlchemy, pandas and a raw v3-protocol socket client) talk to a real
PostgreSQL 15 whose database has schemas besides public, and every test checks what the
server did (rows still there, sequences untouched) and what the client got (SQLSTATE 42501
naming the rule, masked values).

Two policies, switched with `interceptor policy reload`:
  sales  SELECT on sales.* only (plus SET/RESET, set_config, INSERT into two sales tables
         and PREPARE, so that what the enforcer must refuse is not refused by the policy);
  demo   like the demo: SELECT public.*, pg_catalog.*, information_schema.*, card and
         email masked, and a deny rule on pg_catalog.pg_stat_activity.
The resource logs in as `app`, a role that is not a superuser and owns the schemas.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon import Daemon, INTERCEPTOR, agent_python, psql_errors, running_daemon
from pg_fixture import PgServer, postgres_policy, write_credentials

pytestmark = pytest.mark.root

AGENT = "analyst"
SUPER_PASSWORD = "s3cret-super-pw"
APP_PASSWORD = "s3cret-app-pw"
CARDS = {1: "4111 1111 1111 1111", 2: "5500 0000 0000 0004"}
EMAILS = {1: "ada@example.com", 2: "grace@example.com"}
ORDERS = "10,11"  # sales.orders ids on the server, as server_ids() reports them

SETUP = f"""
create role app login password '{APP_PASSWORD}';
grant create on schema public to app;
create schema sales authorization app;
create schema evil authorization app;
set role app;
create table public.customers (id int primary key, name text, email text, card_number text);
insert into public.customers values (1, 'Ada', '{EMAILS[1]}', '{CARDS[1]}'), (2, 'Grace', '{EMAILS[2]}', '{CARDS[2]}');
-- same name and id column as sales.orders: which one the server reads shows in the ids
create table public.orders (id int primary key, note text);
insert into public.orders values (1, 'public-decoy');
create type sales.order_status as enum ('new', 'shipped');
create table sales.orders (id int primary key, customer_id int, amount numeric, status sales.order_status);
insert into sales.orders values (10, 1, 99.50, 'new'), (11, 2, 12.00, 'new');
create function sales.purge() returns int volatile language plpgsql as $$
  declare n int; begin delete from sales.orders; get diagnostics n = row_count; return n; end $$;
create function sales.purge_row(o sales.orders) returns int volatile language plpgsql as $$
  begin delete from sales.orders; return 1; end $$;
create sequence sales.seq;
-- marked IMMUTABLE, yet advances a sequence: a user's volatility label proves nothing
create function sales.innocent(x int) returns int immutable language plpgsql as $$
  begin perform nextval('sales.seq'); return x; end $$;
create view sales.order_view as select o.id, sales.purge() as purged from sales.orders o;
create table sales.notes (id int, purged int default sales.purge());
create domain sales.checked as int check (sales.purge() >= 0);
create table sales.hits (n int);
create function sales.bump() returns boolean volatile language plpgsql as $$
  begin insert into sales.hits values (1); return true; end $$;
create table sales.audited (id int);
insert into sales.audited values (1);
alter table sales.audited enable row level security;
alter table sales.audited force row level security;
create policy see_all on sales.audited using (sales.bump());
create table sales.ledger (id int);
create function sales.purge_trigger() returns trigger language plpgsql as $$
  begin delete from sales.orders; return new; end $$;
create trigger ledger_purge before insert on sales.ledger for each row execute function sales.purge_trigger();
create function evil.lower(text) returns text volatile language plpgsql as $$
  begin delete from sales.orders; return 'evil'; end $$;
create table evil.pg_stat_activity (query text);
insert into evil.pg_stat_activity values ('evil-row');
create function evil.int_eq(a int, b int) returns boolean volatile language plpgsql as $$
  begin delete from sales.orders; return a operator(pg_catalog.=) b; end $$;
create operator evil.= (leftarg = int, rightarg = int, function = evil.int_eq);
reset role;
create function sales.definer_purge() returns int security definer volatile language sql as $$
  delete from sales.orders; select 1 $$;
"""

RESTORE = """
delete from sales.orders;
insert into sales.orders values (10, 1, 99.50, 'new'), (11, 2, 12.00, 'new');
delete from sales.notes; delete from sales.hits; delete from sales.ledger;
select setval('sales.seq', 1, false);
"""

ROLEPATH = """
set role app;
create schema sales;
create table public.orders (id int primary key, note text);
insert into public.orders values (1, 'public-decoy');
create table sales.orders (id int primary key, amount numeric);
insert into sales.orders values (10, 99.50), (11, 12.00);
"""

NOCATALOG = """
revoke select on pg_catalog.pg_proc from public;
set role app;
create table public.t (id int);
insert into public.t values (7);
"""


def policy_text(pg: PgServer, secret: Path, which: str) -> str:
    rule = "{{name: {}, effect: {}, agents: [{}], resources: [db], {}}}".format
    rules = [
        rule("no-ddl", "deny", AGENT, "sql: {kinds: [ddl]}"),
        rule("settings", "allow", AGENT, "sql: {kinds: [set, reset]}"),
        rule("set-config", "allow", AGENT, "sql: {kinds: [select], functions: [set_config, pg_catalog.set_config]}"),
    ]
    if which == "sales":
        rules += [
            rule("read-sales", "allow", AGENT, 'sql: {kinds: [select], tables: ["sales.*"]}'),
            rule("insert-notes", "allow", AGENT, "sql: {kinds: [insert], tables: [sales.notes, sales.ledger]}"),
            rule("prepare", "allow", AGENT, "sql: {kinds: [prepare]}"),
        ]
    else:
        rules += [
            rule("no-activity", "deny", AGENT, "sql: {tables: [pg_catalog.pg_stat_activity]}"),
            rule("read-public", "allow", AGENT, 'sql: {kinds: [select], tables: ["public.*"]}'),
            rule("read-catalog", "allow", AGENT,
                 'sql: {kinds: [select], tables: ["pg_catalog.*", "information_schema.*"]}'),
            rule("mask-card", "mask", AGENT, "mask: {columns: [public.customers.card_number], style: partial}"),
            rule("mask-email", "mask", AGENT, "mask: {columns: [public.customers.email], style: redact}"),
        ]
    return postgres_policy(pg, secret, AGENT, rules)


ALLOW_RULES = {"settings", "set-config", "read-sales", "insert-notes", "prepare", "read-public", "read-catalog"}


class Env:
    def __init__(self, daemon: Daemon, pg: PgServer, policies: dict[str, Path]) -> None:
        self.daemon, self.pg, self.policies = daemon, pg, policies
        self.current = "sales"

    def use(self, which: str) -> None:
        if self.current != which:
            self.daemon.cli("policy", "reload", str(self.policies[which]))
            self.current = which


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pg-server-truth")
    with PgServer(user="owner", password=SUPER_PASSWORD) as pg:
        pg.psql(SETUP)
        for database in ("rolepath", "nocatalog", "sjisdb"):
            pg.psql(f"create database {database} owner app")
        pg.psql(ROLEPATH, dbname="rolepath")
        pg.psql("alter role app in database rolepath set search_path = sales, public")
        pg.psql(NOCATALOG, dbname="nocatalog")
        pg.psql("alter database sjisdb set client_encoding = 'SJIS'")
        secret = write_credentials(workdir / "db-credentials", "app", APP_PASSWORD)
        policies = {}
        for which in ("sales", "demo"):
            policies[which] = workdir / f"{which}.yaml"
            policies[which].write_text(policy_text(pg, secret, which))
        with running_daemon(workdir, policies["sales"]) as daemon:
            yield Env(daemon, pg, policies)


@pytest.fixture(autouse=True)
def _restore(env):
    """Whatever a failing test let run, the next one starts from the same rows."""
    yield
    env.pg.psql(RESTORE)


def server_ids(pg: PgServer, table: str = "sales.orders") -> str:
    return pg.psql(f"select coalesce(string_agg(id::text, ',' order by id), '') from {table}")


def conninfo(pg: PgServer, dbname: str = "postgres", extra: str = "") -> str:
    # the agent's own user and password: the enforcer logs in with the resource's
    return f"host=127.0.0.1 port={pg.port} dbname={dbname} user=agent password=not-the-real-one sslmode=disable {extra}"


# ---- clients under `interceptor exec` ---------------------------------------------------------------

def psql(env: Env, *commands: str, dbname: str = "postgres", extra: str = "",
         environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [INTERCEPTOR, "exec", "--agent", AGENT, "--", "psql", conninfo(env.pg, dbname, extra), "-X", "-At",
            "-v", "VERBOSITY=verbose"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(environ or {})})


def agent_json(code: str, *args: str) -> dict:
    out = agent_python(AGENT, code, *args)
    assert out.returncode == 0 and out.stdout.strip(), out.stdout + "\n".join(out.stderr.splitlines()[-3:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# A v3-protocol client of our own, run as the agent: exact messages, exact answers.
WIRE = r'''
import json, socket, struct, sys

def frame(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body

def cstr(value):
    return (value.encode() if isinstance(value, str) else value) + b"\0"

def fields(body):
    out, pos = {}, 0
    while pos < len(body) and body[pos] != 0:
        end = body.index(b"\0", pos + 1)
        out[chr(body[pos])] = body[pos + 1:end].decode("utf-8", "replace")
        pos = end + 1
    return out

def datarow(body):
    count, pos, row = struct.unpack_from("!h", body)[0], 2, []
    for _ in range(count):
        length = struct.unpack_from("!i", body, pos)[0]
        pos += 4
        row.append(None if length < 0 else body[pos:pos + length].decode("utf-8", "replace"))
        pos += max(length, 0)
    return row

def message(item):
    kind = item[0]
    if kind == "P":
        return frame(b"P", cstr(item[1]) + cstr(item[2]) + struct.pack("!h", 0))
    if kind == "B":
        params = item[3] if len(item) > 3 else []
        body = cstr(item[1]) + cstr(item[2]) + struct.pack("!hh", 0, len(params))
        for value in params:
            body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value.encode())) + value.encode()
        return frame(b"B", body + struct.pack("!h", 0))
    if kind == "E":
        return frame(b"E", cstr(item[1]) + struct.pack("!i", item[2] if len(item) > 2 else 0))
    if kind in ("D", "C"):
        return frame(kind.encode(), item[1].encode() + cstr(item[2]))
    if kind == "S":
        return frame(b"S", b"")
    if kind == "H":
        return frame(b"H", b"")
    if kind == "Q":
        return frame(b"Q", cstr(item[1]))
    if kind == "Qx":
        return frame(b"Q", cstr(bytes.fromhex(item[1])))
    raise ValueError(item)

def step_bytes(step):
    """A step: {"q": sql} | {"qx": hex} | {"ext": [messages]} (Sync added) | {"raw": [messages]}."""
    if "q" in step:
        return message(["Q", step["q"]]), 1
    if "qx" in step:
        return message(["Qx", step["qx"]]), 1
    if "ext" in step:
        return b"".join(message(m) for m in step["ext"]) + message(["S"]), 1
    return b"".join(message(m) for m in step["raw"]), sum(1 for m in step["raw"] if m[0] in ("S", "Q", "Qx"))

class Conn:
    def __init__(self, port, params, pipelined=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        body = struct.pack("!I", 196608) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
        extra = b"".join(step_bytes(s)[0] for s in pipelined)
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body + extra)

    def read(self):
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + length:
                    kind, body, self.buf = self.buf[:1], self.buf[5:1 + length], self.buf[1 + length:]
                    return kind, body
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return None
            self.buf += data

    def collect(self, replies):
        out = {"rows": [], "tags": [], "errors": [], "notices": [], "kinds": "", "params": {}, "closed": False}
        seen = 0
        while seen < replies:
            msg = self.read()
            if msg is None:
                out["closed"] = True
                break
            kind, body = msg
            out["kinds"] += kind.decode("latin-1")
            if kind == b"D":
                out["rows"].append(datarow(body))
            elif kind == b"C":
                out["tags"].append(body[:-1].decode())
            elif kind == b"E":
                out["errors"].append(fields(body))
            elif kind == b"N":
                out["notices"].append(fields(body))
            elif kind == b"S":
                name, value = body[:-1].split(b"\0", 1)
                out["params"][name.decode()] = value.decode()
            elif kind == b"Z":
                seen += 1
                out["status"] = body.decode()
        return out

def run(port, session):
    params = {"user": "agent", "database": "postgres", **session.get("params", {})}
    pipelined = session.get("pipelined", [])
    conn = Conn(port, params, pipelined)
    result = {"login": conn.collect(1), "pipelined": [], "steps": []}
    for step in pipelined:
        closed = result["login"]["closed"]
        result["pipelined"].append({"closed": True} if closed else conn.collect(step_bytes(step)[1]))
    closed = result["login"]["closed"]
    for step in session.get("steps", []):
        if "wait" in step:
            print(json.dumps({"waiting": step["wait"]}), flush=True)
            sys.stdin.readline()
            continue
        if closed:
            result["steps"].append({"closed": True, "rows": [], "errors": [], "tags": []})
            continue
        data, replies = step_bytes(step)
        try:
            conn.sock.sendall(data)
        except OSError:
            result["steps"].append({"closed": True, "rows": [], "errors": [], "tags": []})
            closed = True
            continue
        answer = conn.collect(replies)
        closed = answer["closed"]
        result["steps"].append(answer)
    conn.sock.close()
    return result

if __name__ == "__main__":
    port, sessions = int(sys.argv[1]), json.loads(sys.argv[2])
    print(json.dumps([run(port, s) for s in sessions]), flush=True)
'''


def wire(env: Env, *sessions: dict) -> list[dict]:
    """Run sessions (params, pipelined, steps) one after the other in one agent process."""
    out = agent_python(AGENT, WIRE, str(env.pg.port), json.dumps(list(sessions)))
    assert out.returncode == 0 and out.stdout.strip(), out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def wire_steps(env: Env, *steps: dict, **session) -> list[dict]:
    result = wire(env, {"steps": list(steps), **session})[0]
    assert not result["login"]["errors"], result["login"]
    return result["steps"]


def q(sql: str) -> dict:
    return {"q": sql}


def rule_of(message: str) -> str | None:
    found = re.search(r"interceptor rule '([^']+)'", message)
    return found.group(1) if found else None


def assert_denied(step: dict, rule: str | None = None, mentions: tuple[str, ...] = ()) -> str:
    """The step got exactly the enforcer's 42501 (naming `rule`, when given; never an allow
    rule) and no rows; returns the message."""
    errors = step.get("errors", [])
    assert errors and errors[0].get("C") == "42501", f"expected 42501, got {step}"
    message = errors[0]["M"]
    named = rule_of(message)
    assert named is not None, message
    assert named not in ALLOW_RULES, message
    if rule is not None:
        assert named == rule, message
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert not step["rows"], step
    return message


def assert_rows(step: dict, rows: list[list[str | None]]) -> None:
    assert not step.get("errors") and not step.get("closed"), step
    assert step["rows"] == rows, step


# ---- 1. SELECT * under the demo-like policy ----------------------------------------------------------

def check_masked(stdout: str, ids: tuple[int, ...] = (1, 2)) -> None:
    for clear in (*CARDS.values(), *EMAILS.values()):
        assert clear not in stdout, f"{clear!r} leaked:\n{stdout}"
    for i in ids:  # partial masking keeps the last four digits and the separators
        assert f"**** **** **** {CARDS[i][-4:]}" in stdout, stdout


def test_select_star_from_customers_is_allowed_and_masked(env):
    env.use("demo")
    out = psql(env, "select * from customers order by id")
    assert out.returncode == 0 and not psql_errors(out.stderr), out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["1", "Ada"], ["2", "Grace"]], out.stdout
    for row in rows:
        assert row[2] not in EMAILS.values() and "@" not in row[2], row
        assert row[3] != CARDS[int(row[0])] and row[3].endswith(CARDS[int(row[0])][-4:]), row


@pytest.mark.parametrize("sql,ids", [
    ("table customers", (1, 2)),
    ("select c.* from customers c order by c.id", (1, 2)),
    ("select * from customers c join orders o on o.id = c.id", (1,)),  # public.orders holds id 1 only
    ("select * from (select * from customers) s order by 1", (1, 2)),
])
def test_select_star_shapes_are_masked(env, sql, ids):
    env.use("demo")
    out = psql(env, sql)
    assert out.returncode == 0 and not psql_errors(out.stderr), out.stderr
    assert "Ada" in out.stdout
    check_masked(out.stdout, ids)


def test_the_planners_statistics_of_masked_columns_are_refused(env):
    """pg_stats shows sampled values of every analysed column: with masks in force, refused."""
    env.use("demo")
    env.pg.psql("analyze public.customers")
    out = psql(env, "select most_common_vals::text from pg_catalog.pg_stats where tablename = 'customers'")
    assert [code for _, code, _ in psql_errors(out.stderr)] == ["42501"], out.stdout + out.stderr
    assert "mask-fail-closed" in out.stderr and "ada@example.com" not in out.stdout, out.stdout + out.stderr


def test_select_star_masked_over_the_extended_protocol_in_binary(env):
    env.use("demo")
    code = """
    import json, sys, psycopg
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        text = conn.execute("select * from customers where id = %s", (1,)).fetchall()
        binary = conn.cursor(binary=True).execute("select * from customers where id = %s", (2,)).fetchall()
    print(json.dumps({"text": text, "binary": binary}))
    """
    got = agent_json(code, conninfo(env.pg))
    assert got["text"][0][:2] == [1, "Ada"] and got["binary"][0][:2] == [2, "Grace"], got
    check_masked(json.dumps(got))


def test_select_star_with_a_startup_search_path_is_masked(env):
    env.use("demo")
    out = psql(env, "select * from customers order by id", environ={"PGOPTIONS": "-c search_path=evil,public"})
    assert out.returncode == 0 and not psql_errors(out.stderr), out.stderr
    assert "Grace" in out.stdout
    check_masked(out.stdout)


# ---- 2. user-defined and volatile functions, wherever they are called ---------------------------------

PURGE_CALLS = [
    "SELECT sales.purge()",
    "SELECT * FROM sales.purge()",
    "select id from sales.orders where sales.purge() > 0",
    "with x as (select sales.purge() as n) select n from x",
    "select * from sales.order_view",
    "SELECT SALES.PURGE()",
    'select "sales"."purge"()',
    "select id from sales.orders order by sales.purge()",
    "values (sales.purge())",
    "select (select sales.purge())",
    "select o.id from sales.orders o, lateral (select sales.purge()) p",
    "select id from sales.orders where id in (select sales.purge())",
    "select count(*) from sales.orders group by sales.purge()",
    "select sales.definer_purge()",
    # attribute notation: o.purge_row is purge_row(o), found through the search_path
    pytest.param(("set search_path = sales, public", "select o.purge_row from sales.orders o"),
                 id="attribute-notation-o.purge_row"),
    "select sales.purge_row(o) from sales.orders o",
    "select * from rows from (sales.purge())",
    "insert into sales.notes (id) values (1)",  # the column default calls sales.purge()
]


@pytest.mark.parametrize("sql", PURGE_CALLS)
def test_user_function_calls_are_refused(env, sql):
    env.use("sales")
    setup, sql = sql if isinstance(sql, tuple) else (None, sql)
    steps = wire_steps(env, *([q(setup)] if setup else []), q(sql), q("select 1"))
    if setup:
        assert not steps[0]["errors"], steps[0]
    step, after = steps[-2:]
    assert_denied(step, mentions=("purge",))
    assert_rows(after, [["1"]])
    assert server_ids(env.pg) == ORDERS, f"{sql!r} ran on the server"
    assert env.pg.psql("select count(*) from sales.notes") == "0"


def test_user_function_labelled_immutable_is_refused(env):
    env.use("sales")
    step, = wire_steps(env, q("select sales.innocent(1)"))
    assert_denied(step, mentions=("innocent",))
    assert env.pg.psql("select last_value || ':' || is_called from sales.seq") == "1:false"


def test_unqualified_call_through_search_path_is_refused(env):
    env.use("sales")
    set_path, call = wire_steps(env, q("set search_path = sales"), q("select purge()"))
    assert not set_path["errors"], set_path
    assert_denied(call, mentions=("purge",))
    assert server_ids(env.pg) == ORDERS


def test_user_functions_refused_over_the_extended_protocol(env):
    env.use("sales")
    code = """
    import asyncio, json, sys, psycopg, asyncpg
    out = {}
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        for key, sql, args in (("psycopg", "select sales.purge()", None),
                               ("psycopg-param", "select id from sales.orders where id = %s and sales.purge() > 0",
                                (10,)),
                               ("psycopg-prepared", "select * from sales.purge()", None)):
            try:
                out[key] = conn.execute(sql, args, prepare=key.endswith("prepared")).fetchall()
            except psycopg.Error as exc:
                out[key] = [exc.sqlstate, str(exc)]
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[2]), user="agent", password="x",
                                     database="postgres", ssl=False)
        for key, call in (("asyncpg", lambda: conn.fetchval("select sales.purge()")),
                          ("asyncpg-prepare", lambda: conn.prepare("select id, sales.purge() from sales.orders")),
                          ("asyncpg-cte", lambda: conn.fetch("with x as (select sales.purge()) select * from x"))):
            try:
                out[key] = str(await call())
            except asyncpg.PostgresError as exc:
                out[key] = [exc.sqlstate, str(exc)]
        out["after"] = await conn.fetchval("select count(*) from sales.orders")
        await conn.close()
    asyncio.run(main())
    print(json.dumps(out))
    """
    got = agent_json(code, conninfo(env.pg), str(env.pg.port))
    for key in ("psycopg", "psycopg-param", "psycopg-prepared", "asyncpg", "asyncpg-prepare", "asyncpg-cte"):
        assert isinstance(got[key], list) and got[key][0] == "42501", f"{key}: {got[key]}"
        assert rule_of(got[key][1]) not in (None, *ALLOW_RULES), f"{key}: {got[key]}"
    assert got["after"] == 2 and server_ids(env.pg) == ORDERS


def test_harmless_functions_are_still_allowed(env):
    env.use("sales")
    a, b, c = wire_steps(env, q("select lower('X'), upper('y'), now() is not null, current_schema()"),
                         q("select count(*), max(amount), coalesce(min(id), 0) from sales.orders"),
                         q("select pg_catalog.length('abc')"))
    assert_rows(a, [["x", "Y", "t", "public"]])
    assert_rows(b, [["2", "99.50", "10"]])
    assert_rows(c, [["3"]])


@pytest.mark.parametrize("sql,rows", [
    ("select * from generate_series(1, 2)", [["1"], ["2"]]),
    ("select * from rows from (generate_series(1, 2))", [["1"], ["2"]]),
    ("select x from unnest(array[3, 4]) as u(x)", [["3"], ["4"]]),
    ("select id from sales.orders where id = any(array[10]::int[])", [["10"]]),
    ("select count(*) from pg_catalog.pg_type where oid = any('{23,25}'::oid[])", [["2"]]),
])
def test_harmless_set_returning_functions_and_array_casts_are_allowed(env, sql, rows):
    env.use("sales")
    step, = wire_steps(env, q(sql))
    assert_rows(step, rows)


# ---- 3. client-only encodings -------------------------------------------------------------------------

def test_pgclientencoding_sjis_is_refused_at_startup(env):
    env.use("sales")
    out = psql(env, "select count(*) from sales.orders", environ={"PGCLIENTENCODING": "SJIS"})
    assert out.returncode != 0 and out.stdout.strip() == "", out.stdout
    assert "SJIS" in out.stderr and "refused" in out.stderr, out.stderr


@pytest.mark.parametrize("options,named", [
    ("-c client_encoding=SJIS", "SJIS"),
    ("--client-encoding=BIG5", "BIG5"),
    ("-c CLIENT_ENCODING=shift_jis", "shift_jis"),
    ("-cclient_encoding=win936", "win936"),
])
def test_options_with_a_client_only_encoding_are_refused_at_startup(env, options, named):
    env.use("sales")
    code = """
    import json, sys, psycopg
    try:
        with psycopg.connect(sys.argv[1]) as conn:
            print(json.dumps({"connected": conn.execute("show client_encoding").fetchone()[0]}))
    except psycopg.Error as exc:
        print(json.dumps({"error": str(exc)}))
    """
    got = agent_json(code, conninfo(env.pg, extra=f"options='{options}'"))
    assert "error" in got and named.lower() in got["error"].lower(), got


def test_client_only_encoding_as_a_startup_parameter_is_refused(env):
    env.use("sales")
    for encoding in ("SJIS", "GB18030", "JOHAB", "UHC"):
        login = wire(env, {"params": {"client_encoding": encoding}, "steps": [q("select 1")]})[0]
        assert login["login"]["errors"] and encoding in login["login"]["errors"][0]["M"], login
        assert login["steps"][0].get("closed"), login


def test_database_default_sjis_is_refused_at_login(env):
    env.use("sales")
    login = wire(env, {"params": {"database": "sjisdb"}, "steps": [q("select 1")]})[0]
    assert login["login"]["errors"] and "SJIS" in login["login"]["errors"][0]["M"], login
    assert not login["steps"][0]["rows"]


@pytest.mark.parametrize("sql,named", [
    ("SET client_encoding TO 'SJIS'", ("SJIS",)),
    ("SET NAMES 'BIG5'", ("BIG5",)),
    ("select set_config('client_encoding', 'GBK', false)", ("GBK",)),
    ("set client_encoding = mskanji", ("mskanji", "SJIS")),
    ("SET SESSION client_encoding TO 'UHC'", ("UHC",)),
    # refused before it runs, naming the encoding or the set_config form it will not follow
    ("select * from set_config('CLIENT_ENCODING', 'gb18030', false)", ("gb18030", "set_config()")),
    ("set client_encoding to default; set client_encoding = 'Shift_JIS'", ("Shift_JIS", "SJIS")),
])
def test_switching_to_a_client_only_encoding_is_refused(env, sql, named):
    env.use("sales")
    result = wire(env, {"steps": [q(sql), q("show client_encoding")]})[0]
    step, show = result["steps"]
    assert step["errors"], step
    message = step["errors"][0]["M"]
    assert any(name.lower() in message.lower() for name in named), message
    assert "the server switched" not in message, f"refused only after the server applied it: {message}"
    assert "client_encoding" not in step["params"], step  # the server never reported the switch
    if not show.get("closed") and not show["errors"]:
        assert show["rows"] == [["UTF8"]], show


def test_set_local_client_only_encoding_in_a_transaction_is_refused(env):
    env.use("sales")
    result = wire(env, {"steps": [q("begin"), q("set local client_encoding to 'JOHAB'"), q("rollback")]})[0]
    step = result["steps"][1]
    assert step["errors"] and "johab" in step["errors"][0]["M"].lower(), step
    assert "client_encoding" not in step["params"], step


def test_psql_backslash_encoding_sjis_is_refused(env):
    env.use("sales")
    out = psql(env, r"\encoding SJIS", "select count(*) from sales.orders")
    # psql switches with SET client_encoding: refused, so the session never reads SJIS
    assert "SJIS" in out.stderr, out.stdout + out.stderr
    assert "the server switched" not in out.stderr, f"refused only after the server applied it: {out.stderr}"
    assert server_ids(env.pg) == ORDERS


SMUGGLE = b"SELECT '\x95\\'; DELETE FROM sales.orders; --'"
SMUGGLE_E = b"SELECT E'\x95\\'; DELETE FROM sales.orders; --'"


def test_raw_socket_sjis_login_with_smuggled_delete_is_refused(env):
    env.use("sales")
    sessions = [{"params": {"client_encoding": "SJIS"}, "pipelined": [{"qx": payload.hex()}],
                 "steps": [{"qx": payload.hex()}]} for payload in (SMUGGLE, SMUGGLE_E)]
    for result in wire(env, *sessions):
        assert result["login"]["errors"] and "SJIS" in result["login"]["errors"][0]["M"], result
        assert result["login"]["closed"] or not result["steps"][0]["tags"], result
    assert server_ids(env.pg) == ORDERS, "the smuggled DELETE ran"


def test_raw_socket_set_sjis_then_pipelined_smuggled_delete_is_refused(env):
    env.use("sales")
    result = wire(env, {"steps": [{"raw": [["Q", "SET client_encoding TO 'SJIS'"], ["Qx", SMUGGLE_E.hex()]]},
                                  q("select count(*) from sales.orders")]})[0]
    both = result["steps"][0]
    # the SET is refused; the next Query is not valid in the encoding that stays (UTF8): the
    # enforcer may refuse it too or end the session, as long as the DELETE never runs
    assert both["errors"], both
    assert any("SJIS" in e["M"] for e in both["errors"]) or both["errors"][0]["C"] == "08P01", both
    assert "DELETE" not in " ".join(both["tags"]) and "client_encoding" not in both["params"], both
    assert server_ids(env.pg) == ORDERS, "the smuggled DELETE ran"


# ---- 4. name resolution ---------------------------------------------------------------------------------

def test_deny_rule_on_pg_stat_activity_stops_the_unqualified_name(env):
    env.use("demo")
    out = psql(env, "select query from pg_stat_activity", "select 42")
    errors = psql_errors(out.stderr)
    assert errors and errors[0][1] == "42501" and rule_of(errors[0][2]) == "no-activity", out.stderr
    assert out.stdout.strip().splitlines() == ["42"], out.stdout


@pytest.mark.parametrize("steps,rule", [
    (["select * from PG_STAT_ACTIVITY"], "no-activity"),
    (['select query from "pg_stat_activity"'], "no-activity"),
    (["set search_path = evil", "select query from pg_stat_activity"], "no-activity"),
    (["set search_path = public, pg_catalog", "select query from pg_stat_activity"], "no-activity"),
    (["select count(*) from customers c, pg_stat_activity a"], "no-activity"),
    (["with a as (select * from pg_stat_activity) select count(*) from a"], "no-activity"),
])
def test_pg_stat_activity_deny_follows_resolution(env, steps, rule):
    env.use("demo")
    answers = wire_steps(env, *map(q, steps))
    for answer in answers[:-1]:
        assert not answer["errors"], answer
    assert_denied(answers[-1], rule=rule)


def test_a_table_named_like_pg_catalog_one_earlier_in_the_path_is_that_table(env):
    env.use("demo")
    set_path, read = wire_steps(env, q("set search_path = evil, pg_catalog"), q("select query from pg_stat_activity"))
    assert not set_path["errors"], set_path
    message = assert_denied(read, mentions=("evil",))  # evil's table, or evil's code: never pg_catalog's view
    assert rule_of(message) != "no-activity", message


def test_startup_search_path_reads_sales_orders_and_is_judged_so(env):
    env.use("sales")
    allowed = psql(env, "select id from orders order by id", environ={"PGOPTIONS": "-c search_path=sales"})
    assert allowed.returncode == 0 and not psql_errors(allowed.stderr), allowed.stderr
    assert allowed.stdout.split() == ["10", "11"], allowed.stdout
    env.use("demo")
    denied = psql(env, "select id from orders order by id", environ={"PGOPTIONS": "-c search_path=sales"})
    errors = psql_errors(denied.stderr)
    assert errors and errors[0][1] == "42501" and "sales.orders" in errors[0][2], denied.stderr
    assert denied.stdout.strip() == "", "public.orders is allowed, but the server read sales.orders"


@pytest.mark.parametrize("params", [
    {"search_path": "sales"},
    {"options": "-c search_path=sales,public"},
    {"options": "-c search_path=sales -c statement_timeout=5000"},
    {"options": "--search-path=sales"},
    {"SEARCH_PATH": '"sales"'},
])
def test_startup_search_path_forms(env, params):
    env.use("demo")
    result = wire(env, {"params": params, "steps": [q("select id from orders"), q("select id from public.orders")]})[0]
    assert not result["login"]["errors"], result["login"]
    read, qualified = result["steps"]
    assert_denied(read, mentions=("sales.orders",))
    assert_rows(qualified, [["1"]])


def test_the_login_roles_default_search_path_is_followed(env):
    env.use("demo")
    read, = wire_steps(env, q("select id from orders"), params={"database": "rolepath"})
    assert_denied(read, mentions=("sales.orders",))
    env.use("sales")
    read, public = wire_steps(env, q("select id from orders order by id"), q("select id from public.orders"),
                              params={"database": "rolepath"})
    assert_rows(read, [["10"], ["11"]])
    assert_denied(public, mentions=("public.orders",))


def test_set_search_path_then_a_statement(env):
    env.use("sales")
    before, set_path, after = wire_steps(env, q("select id from orders"), q("set search_path = sales"),
                                         q("select id from orders order by id"))
    assert_denied(before, mentions=("public.orders",))
    assert not set_path["errors"], set_path
    assert_rows(after, [["10"], ["11"]])
    env.use("demo")
    set_path, after, same = wire_steps(env, q("SET search_path TO 'sales'"), q("select id from orders"),
                                       q("set search_path = sales; select id from orders"))
    assert_denied(after, mentions=("sales.orders",))
    assert_denied(same, mentions=("sales.orders",))


def test_set_search_path_pipelined_with_the_statement(env):
    env.use("demo")
    both, = wire_steps(env, {"raw": [["Q", "set search_path = sales"], ["Q", "select id from orders"]]})
    assert both["tags"][:1] == ["SET"], both
    assert both["errors"] and both["errors"][0]["C"] == "42501" and "sales.orders" in both["errors"][0]["M"], both
    assert not both["rows"], both


def test_set_local_search_path_ends_with_rollback(env):
    env.use("sales")
    steps = wire_steps(env, q("begin"), q("set local search_path = sales"), q("select id from orders order by id"),
                       q("rollback"), q("select id from orders"))
    assert_rows(steps[2], [["10"], ["11"]])
    assert_denied(steps[4], mentions=("public.orders",))


def test_set_in_an_aborted_transaction_is_rolled_back(env):
    env.use("sales")
    steps = wire_steps(env, q("begin"), q("set search_path = sales"), q("select 1/0"), q("rollback"),
                       q("select id from orders"))
    assert steps[2]["errors"][0]["C"] == "22012", steps[2]
    assert_denied(steps[4], mentions=("public.orders",))  # the server reads public.orders again


@pytest.mark.parametrize("ending", [["commit"], ["end"], ["commit and chain", "rollback"]])
def test_commit_of_an_aborted_transaction_rolls_back_set(env, ending):
    """COMMIT of a failed transaction is a ROLLBACK (the server answers ROLLBACK): the SET
    made in it is undone, so the server reads public.orders again."""
    env.use("sales")
    steps = wire_steps(env, q("begin"), q("set search_path = sales"), q("select 1/0"), *map(q, ending),
                       q("select id from orders"))
    assert steps[3]["tags"] == ["ROLLBACK"], steps[3]
    assert_denied(steps[-1], mentions=("public.orders",))


def test_commit_of_an_aborted_transaction_pipelined(env):
    env.use("sales")
    both, = wire_steps(env, {"raw": [["Q", "begin"], ["Q", "set search_path = sales"], ["Q", "select 1/0"],
                                     ["Q", "commit"], ["Q", "select id from orders"]]})
    assert "ROLLBACK" in both["tags"], both
    assert not both["rows"], f"public.orders reached the agent under a policy that allows sales.* only: {both}"
    assert both["errors"][-1]["C"] == "42501" and "public.orders" in both["errors"][-1]["M"], both


def test_reset_search_path(env):
    env.use("sales")
    steps = wire_steps(env, q("set search_path = sales"), q("reset search_path"), q("select id from orders"))
    assert not steps[1]["errors"], steps[1]
    assert_denied(steps[2], mentions=("public.orders",))


def test_set_config_search_path(env):
    env.use("sales")
    steps = wire_steps(env, q("select set_config('search_path', 'sales', false)"),
                       q("select id from orders order by id"))
    assert_rows(steps[0], [["sales"]])
    assert_rows(steps[1], [["10"], ["11"]])
    env.use("demo")
    steps = wire_steps(env, q("begin"), q("select set_config('search_path', 'sales', true)"),
                       q("select id from orders"), q("rollback"), q("select id from orders"))
    assert_denied(steps[2], mentions=("sales.orders",))
    assert_rows(steps[4], [["1"]])


def test_shadowing_lower_earlier_in_the_path_is_refused(env):
    env.use("sales")
    set_path, call, after = wire_steps(env, q("SET search_path = evil, pg_catalog"), q("SELECT lower('x')"),
                                       q("select count(*) from sales.orders"))
    assert not set_path["errors"], set_path
    assert_denied(call, mentions=("evil", "before pg_catalog"))  # any call or operator could be evil's
    assert_denied(after, mentions=("evil", "before pg_catalog"))  # count(*) and = too
    assert server_ids(env.pg) == ORDERS


@pytest.mark.parametrize("steps,expect", [
    # pg_catalog is searched first, so pg_catalog.lower(text) hides evil.lower(text): allowed,
    # or refused by an enforcer that counts every lower() on the path as a candidate
    (["SET search_path = evil", "SELECT lower('X')"], "x|refused"),
    # evil (functions, operators) searched before pg_catalog: every expression is refused,
    # qualified calls and calls evil has no function for too (its operators could still run)
    (["SET search_path = evil, pg_catalog", "SELECT pg_catalog.lower('X')"], None),
    (["SET search_path = evil, pg_catalog", "SELECT upper('x')"], None),
    (["SET search_path = evil, pg_catalog", "SELECT lower('X'::text)"], None),
    (["select set_config('search_path', 'evil, pg_catalog', false)", "SELECT lower('x')"], None),
    (["SET search_path = public, evil, pg_catalog", "select lower(status::text) from sales.orders"], None),
])
def test_shadowing_variations(env, steps, expect):
    env.use("sales")
    answers = wire_steps(env, *map(q, steps))
    assert not answers[0]["errors"], answers[0]
    if expect is None:
        assert_denied(answers[-1], mentions=("evil", "before pg_catalog"))
    elif expect == "x|refused":
        if answers[-1]["errors"]:
            assert_denied(answers[-1], mentions=("lower",))
        else:
            assert_rows(answers[-1], [["x"]])
    else:
        assert_rows(answers[-1], [[expect]])
    assert server_ids(env.pg) == ORDERS


def test_startup_search_path_with_the_shadowing_schema_first(env):
    env.use("sales")
    result = wire(env, {"params": {"options": "-c search_path=evil,pg_catalog"}, "steps": [q("select lower('x')")]})
    assert not result[0]["login"]["errors"], result
    assert_denied(result[0]["steps"][0])
    assert server_ids(env.pg) == ORDERS


# ---- 5. prepared statement and portal names ------------------------------------------------------------

def test_refused_reparse_of_a_held_name_then_execute_runs_what_the_server_holds(env):
    env.use("sales")
    parse, reparse, execute = wire_steps(
        env, {"ext": [["P", "s1", "select id from sales.orders order by id"]]},
        {"ext": [["P", "s1", "delete from sales.orders"]]},
        {"ext": [["B", "", "s1"], ["E", ""]]})
    assert not parse["errors"] and parse["kinds"].startswith("1"), parse
    assert_denied(reparse)
    assert_rows(execute, [["10"], ["11"]])
    assert execute["tags"] == ["SELECT 2"], execute
    assert server_ids(env.pg) == ORDERS
    ran = [e for e in env.daemon.audit_events("statement")
           if "select id from sales.orders order by id" in json.dumps(e.get("operation"))
           and (e.get("outcome") or {}).get("rows") == 2]
    assert ran and ran[-1]["decision"] == "allow", "the execution is recorded as the SELECT the server ran"


def test_refused_reparse_in_the_same_segment_skips_to_sync_and_the_name_keeps_its_statement(env):
    env.use("sales")
    segment, execute = wire_steps(
        env, {"ext": [["P", "s2", "select id from sales.orders order by id"], ["P", "s2", "delete from sales.orders"],
                      ["B", "", "s2"], ["E", ""]]},
        {"ext": [["B", "", "s2"], ["E", ""]]})
    assert len(segment["errors"]) == 1, segment
    assert_denied(segment)
    assert_rows(execute, [["10"], ["11"]])
    assert server_ids(env.pg) == ORDERS


def test_bind_after_close_and_refused_reparse_runs_nothing(env):
    env.use("sales")
    steps = wire_steps(env, {"ext": [["P", "s3", "select id from sales.orders"]]}, {"ext": [["C", "S", "s3"]]},
                       {"ext": [["P", "s3", "delete from sales.orders"]]}, {"ext": [["B", "", "s3"], ["E", ""]]})
    assert_denied(steps[2])
    assert steps[3]["errors"] and not steps[3]["rows"], steps[3]
    assert server_ids(env.pg) == ORDERS


def test_unnamed_statement_after_a_refused_parse_is_gone(env):
    env.use("sales")
    steps = wire_steps(env, {"ext": [["P", "", "select id from sales.orders"]]},
                       {"ext": [["P", "", "select sales.purge()"]]}, {"ext": [["B", "", ""], ["E", ""]]})
    assert_denied(steps[1])
    assert steps[2]["errors"] and not steps[2]["rows"], steps[2]
    assert server_ids(env.pg) == ORDERS


def test_bind_of_a_name_created_by_sql_prepare_is_refused(env):
    env.use("sales")
    prepare, bind, execute = wire_steps(env, q("PREPARE p1 AS DELETE FROM sales.orders"),
                                        {"ext": [["B", "", "p1"], ["E", ""]]}, q("EXECUTE p1"))
    if prepare["errors"]:  # refused: the name was never prepared; Bind must still be refused
        assert prepare["errors"][0]["C"] == "42501", prepare
    assert_denied(bind)
    assert execute["errors"] and not execute["tags"], execute
    assert server_ids(env.pg) == ORDERS


def test_bind_and_execute_of_names_never_prepared_are_refused(env):
    env.use("sales")
    bind, execute, describe_then_execute = wire_steps(
        env, {"ext": [["B", "", "never"], ["E", ""]]}, {"ext": [["E", "noportal"]]},
        {"ext": [["D", "P", "noportal"], ["E", "noportal"]]})
    assert_denied(bind, rule="unknown-statement")
    assert_denied(execute, rule="unknown-portal")
    assert describe_then_execute["errors"] and not describe_then_execute["rows"], describe_then_execute


def test_prepared_statement_judged_again_after_search_path_changes(env):
    env.use("demo")
    steps = wire_steps(env, {"ext": [["P", "s4", "select id from orders"], ["B", "", "s4"], ["E", ""]]},
                       q("set search_path = sales"), {"ext": [["B", "", "s4"], ["E", ""]]},
                       q("set search_path = public"), {"ext": [["B", "", "s4"], ["E", ""]]})
    assert_rows(steps[0], [["1"]])
    # the server re-analyses s4 with the new path: it would read sales.orders
    assert_denied(steps[2], mentions=("sales.orders",))
    assert_rows(steps[4], [["1"]])


# ---- 6. real clients connect and query ----------------------------------------------------------------

def test_sqlalchemy_and_pandas_under_the_sales_policy(env):
    env.use("sales")
    code = """
    import json, sys, pandas, sqlalchemy
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://agent:x@127.0.0.1:{sys.argv[1]}/postgres")
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("select id, amount from sales.orders order by id")).all()
        one = conn.execute(sqlalchemy.text("select status::text from sales.orders where id = :i"), {"i": 11}).scalar()
    frame = pandas.read_sql("select id, customer_id from sales.orders order by id", engine)
    print(json.dumps({"rows": [[r[0], str(r[1])] for r in rows], "one": one,
                      "frame": frame.to_dict(orient="records")}))
    """
    got = agent_json(code, str(env.pg.port))
    assert got == {"rows": [[10, "99.50"], [11, "12.00"]], "one": "new",
                   "frame": [{"id": 10, "customer_id": 1}, {"id": 11, "customer_id": 2}]}, got


def test_sqlalchemy_inspect_under_the_demo_policy(env):
    env.use("demo")
    code = """
    import json, sys, sqlalchemy
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://agent:x@127.0.0.1:{sys.argv[1]}/postgres")
    inspector = sqlalchemy.inspect(engine)
    print(json.dumps({"sales": sorted(inspector.get_table_names(schema="sales")),
                      "views": inspector.get_view_names(schema="sales"),
                      "schemas": sorted(inspector.get_schema_names()),
                      "columns": [c["name"] for c in inspector.get_columns("customers")]}))
    """
    got = agent_json(code, str(env.pg.port))
    assert got["sales"] == ["audited", "hits", "ledger", "notes", "orders"], got
    assert got["views"] == ["order_view"] and {"sales", "evil", "public"} <= set(got["schemas"]), got
    assert got["columns"] == ["id", "name", "email", "card_number"], got


def test_asyncpg_and_psycopg_under_the_sales_policy(env):
    env.use("sales")
    code = """
    import asyncio, json, sys, psycopg, asyncpg
    out = {}
    with psycopg.connect(sys.argv[1]) as conn:
        out["psycopg"] = conn.execute("select id, status::text from sales.orders order by id").fetchall()
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[2]), user="agent", password="x",
                                     database="postgres", ssl=False)
        out["asyncpg"] = [[r["id"], r["status"]] for r in await conn.fetch(
            "select id, status::text from sales.orders order by id")]
        out["asyncpg-param"] = await conn.fetchval("select amount from sales.orders where id = $1", 10)
        await conn.close()
    asyncio.run(main())
    print(json.dumps(out, default=str))
    """
    got = agent_json(code, conninfo(env.pg), str(env.pg.port))
    assert got == {"psycopg": [[10, "new"], [11, "new"]], "asyncpg": [[10, "new"], [11, "new"]],
                   "asyncpg-param": "99.50"}, got


def test_asyncpg_type_introspection_is_allowed_by_default(env):
    """An enum column: asyncpg asks pg_type (and pg_range, ...) about the type with its own
    introspection query before it can decode the rows."""
    env.use("sales")
    code = """
    import asyncio, json, sys, asyncpg
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                     database="postgres", ssl=False)
        try:
            rows = [[r["id"], r["status"]] for r in await conn.fetch("select id, status from sales.orders order by id")]
        except asyncpg.PostgresError as exc:
            rows = [exc.sqlstate, str(exc)]
        await conn.close()
        print(json.dumps(rows))
    asyncio.run(main())
    """
    out = agent_python(AGENT, code, str(env.pg.port))
    assert json.loads(out.stdout) == [[10, "new"], [11, "new"]], out.stdout + out.stderr


def test_psql_connects_under_the_sales_policy(env):
    env.use("sales")
    out = psql(env, "select count(*) from sales.orders", "show standard_conforming_strings", "select version()")
    assert out.returncode == 0 and not psql_errors(out.stderr), out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["2", "on"] and lines[2].startswith("PostgreSQL 15"), out.stdout


# ---- 7. prepared statements after a policy reload -------------------------------------------------------

def interactive(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([INTERCEPTOR, "exec", "--agent", AGENT, "--", sys.executable, "-c", textwrap.dedent(code),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def next_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"agent ended: {proc.stderr.read()}")
    return json.loads(line)


def test_asyncpg_prepared_statement_is_refused_after_a_reload_without_reconnecting(env):
    env.use("sales")
    code = """
    import asyncio, json, sys, asyncpg
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                     database="postgres", ssl=False)
        stmt = await conn.prepare("select id from sales.orders order by id")
        async def attempt():
            out = {}
            for key, call in (("stmt", stmt.fetch), ("cached", lambda: conn.fetch("select amount from sales.orders"))):
                try:
                    out[key] = [str(r[0]) for r in await call()]
                except asyncpg.PostgresError as exc:
                    out[key] = [exc.sqlstate, str(exc)]
            return out
        for _ in range(3):
            print(json.dumps(await attempt()), flush=True)
            sys.stdin.readline()
        await conn.close()
    asyncio.run(main())
    """
    proc = interactive(code, str(env.pg.port))
    try:
        first = next_line(proc)
        assert first == {"stmt": ["10", "11"], "cached": ["99.50", "12.00"]}, first
        env.use("demo")
        proc.stdin.write("go\n"), proc.stdin.flush()
        second = next_line(proc)
        for key in ("stmt", "cached"):
            assert second[key][0] == "42501" and rule_of(second[key][1]) not in (None, *ALLOW_RULES), second
        env.use("sales")
        proc.stdin.write("go\n"), proc.stdin.flush()
        third = next_line(proc)
        assert third == first, third  # allowed again under the policy that allows it
        proc.stdin.write("go\n"), proc.stdin.flush()
        proc.wait(timeout=20)
    finally:
        proc.kill()


def test_psycopg_server_prepared_statement_is_refused_after_a_reload(env):
    env.use("sales")
    code = """
    import json, sys, psycopg
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        for _ in range(2):
            try:
                rows = conn.execute("select id from sales.orders where id = %s", (10,), prepare=True).fetchall()
                print(json.dumps({"rows": rows}), flush=True)
            except psycopg.Error as exc:
                print(json.dumps({"error": [exc.sqlstate, str(exc)]}), flush=True)
            sys.stdin.readline()
    """
    proc = interactive(code, conninfo(env.pg))
    try:
        assert next_line(proc) == {"rows": [[10]]}
        env.use("demo")
        proc.stdin.write("go\n"), proc.stdin.flush()
        second = next_line(proc)
        assert second.get("error", [None])[0] == "42501", second
        proc.stdin.write("go\n"), proc.stdin.flush()
        proc.wait(timeout=20)
    finally:
        proc.kill()


def test_open_portal_is_refused_after_a_reload(env):
    env.use("sales")
    session = {"steps": [q("begin"),
                         {"raw": [["P", "s5", "select id from sales.orders order by id"], ["B", "c5", "s5"],
                                  ["E", "c5", 1], ["S"]]},
                         {"wait": "reload"},
                         {"raw": [["E", "c5", 1], ["S"]]}, q("rollback")]}
    proc = interactive(WIRE, str(env.pg.port), json.dumps([session]))
    try:
        assert next_line(proc) == {"waiting": "reload"}
        env.use("demo")
        proc.stdin.write("go\n"), proc.stdin.flush()
        result = next_line(proc)[0]
    finally:
        proc.kill()
    first, after = result["steps"][1], result["steps"][2]
    assert_rows(first, [["10"]])
    assert_denied(after)


# ---- 8. the catalog cannot be read ---------------------------------------------------------------------

def test_catalog_unavailable_denies_what_needs_it_and_the_session_stays_usable(env):
    env.use("demo")
    steps = wire_steps(env, q("select id from t"), q("select 1"), q("select id from public.t"),
                       q("select lower('x')"), {"ext": [["P", "", "select id from t"], ["B", "", ""], ["E", ""]]},
                       q("begin"), q("commit"), q("select 2"), params={"database": "nocatalog"})
    for index in (0, 2, 3, 4):
        message = assert_denied(steps[index])
        assert "catalog" in message and "unavailable" in message, message
    assert_rows(steps[1], [["1"]])
    assert not steps[5]["errors"] and not steps[6]["errors"], steps[5:7]
    assert_rows(steps[7], [["2"]])


def test_a_catalog_that_became_readable_is_used_by_new_sessions(env):
    env.use("demo")
    first, = wire_steps(env, q("select id from t"), params={"database": "nocatalog"})
    assert_denied(first)
    env.pg.psql("grant select on pg_catalog.pg_proc to public", dbname="nocatalog")
    try:
        deadline = time.monotonic() + 15
        while True:  # a failed read is remembered for a few seconds before the next is tried
            answer, = wire_steps(env, q("select id from t"), params={"database": "nocatalog"})
            if not answer["errors"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert_rows(answer, [["7"]])
    finally:
        env.pg.psql("revoke select on pg_catalog.pg_proc from public", dbname="nocatalog")


# ---- beyond the list: functions the server calls without the statement naming them --------------

def test_operator_from_the_search_path_calls_a_user_function(env):
    env.use("sales")
    set_path, read = wire_steps(env, q("set search_path = evil, pg_catalog"),
                                q("select id from sales.orders where id = 10"))
    assert not set_path["errors"], set_path
    assert read["errors"], f"evil.= (evil.int_eq, volatile) ran: {read}"
    assert server_ids(env.pg) == ORDERS, "the operator's function deleted the orders"


def test_explicit_operator_calls_a_user_function(env):
    env.use("sales")
    call, = wire_steps(env, q("select 1 operator(evil.=) 1"))
    assert call["errors"], f"operator(evil.=) ran evil.int_eq: {call}"
    assert server_ids(env.pg) == ORDERS, "the operator's function deleted the orders"


def test_domain_check_calls_a_user_function(env):
    env.use("sales")
    cast, = wire_steps(env, q("select 1::sales.checked"))
    assert cast["errors"], f"the domain's CHECK (sales.purge()) ran: {cast}"
    assert server_ids(env.pg) == ORDERS, "the domain's CHECK deleted the orders"


def test_row_security_policy_calls_a_user_function(env):
    env.use("sales")
    read, = wire_steps(env, q("select id from sales.audited"))
    assert read["errors"] and env.pg.psql("select count(*) from sales.hits") == "0", \
        f"the row security policy's sales.bump() ran: {read}"


def test_trigger_of_an_allowed_insert_calls_a_user_function(env):
    env.use("sales")
    insert, = wire_steps(env, q("insert into sales.ledger values (1)"))
    assert server_ids(env.pg) == ORDERS, f"the BEFORE INSERT trigger deleted the orders: {insert}"
