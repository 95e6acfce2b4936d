"""Masked columns stay masked whatever shape the result takes: through the kernel redirect,
real clients (psql, psycopg in text, asyncpg in binary) read public.customers of a real
PostgreSQL 15 as the agent `analyst`, whose policy masks card_number (partial) and email
(redact). Every test checks the raw text the client got (rows, errors, notices) for the
clear values, and that what is not masked arrives exact.

"masked" means a card shows as partial (only its last four digits), an email as `****`, the
other fields exact, NULL stays NULL. "denied" means SQLSTATE 42501 naming an interceptor rule.
The resource logs in as `app`, a role that is not a superuser and owns the table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from daemon import Daemon, INTERCEPTOR, agent_python, psql_errors, running_daemon
from pg_fixture import PgServer, postgres_policy, write_credentials

pytestmark = pytest.mark.root

AGENT = "analyst"
SUPER_PASSWORD = "s3cret-super-pw"
APP_PASSWORD = "s3cret-app-pw"
NAMES = {1: "Ada", 2: "Grace", 3: "Nobody"}
CARDS = {1: "4111 1111 1111 1111", 2: "5500 0000 0000 0004"}
EMAILS = {1: "ada@example.com", 2: "grace@example.com"}
IBANS = {1: "DE89370400440532013000", 2: "GB82WEST12345698765432", 3: "DE89370400440532013000"}
EVE = (4, "Eve", "eve@example.com", "4012 8888 8888 1881")  # inserted by one test, gone after it
CLEAR = (*CARDS.values(), *EMAILS.values(), EVE[2], EVE[3])
# the card digits in any spacing: "4111111111111111", "4111-1111-...", as JSON or composite text
CLEAR_DIGITS = tuple(re.sub(r"\D", "", card) for card in (*CARDS.values(), EVE[3]))

ROWS = f"""
insert into public.customers values (1, 'Ada', '{EMAILS[1]}', '{CARDS[1]}'),
  (2, 'Grace', '{EMAILS[2]}', '{CARDS[2]}'), (3, 'Nobody', NULL, NULL);
"""
SETUP = f"""
create role app login password '{APP_PASSWORD}';
grant create on schema public to app;
set role app;
create table public.customers (id int primary key, name text, email text, card_number text);
create view public.customer_list as select * from public.customers;
create view public.customer_names as select id, name from public.customers;
create table public.accounts (id int primary key, iban text);
insert into public.accounts values {", ".join(f"({i}, '{iban}')" for i, iban in IBANS.items())};
{ROWS}
"""
RESTORE = f"delete from public.customers; {ROWS}"


def policy_text(pg: PgServer, secret: Path) -> str:
    rule = "{{name: {}, effect: {}, agents: [{}], resources: [db], {}}}".format
    rules = [
        rule("read-public", "allow", AGENT, 'sql: {kinds: [select], tables: ["public.*"]}'),
        rule("write-customers", "allow", AGENT, "sql: {kinds: [insert, update], tables: [public.customers]}"),
        rule("copy", "allow", AGENT, "sql: {kinds: [copy]}"),
        rule("settings", "allow", AGENT, "sql: {kinds: [set, reset]}"),
        # asyncpg turns jit off with set_config() before it asks the catalog about a composite type
        rule("set-config", "allow", AGENT, "sql: {kinds: [select], functions: [set_config, pg_catalog.set_config]}"),
        rule("mask-card", "mask", AGENT, "mask: {columns: [public.customers.card_number], style: partial}"),
        rule("mask-email", "mask", AGENT, "mask: {columns: [public.customers.email], style: redact}"),
        rule("hash-iban", "mask", AGENT, "mask: {columns: [public.accounts.iban], style: hash}"),
    ]
    return postgres_policy(pg, secret, AGENT, rules)


ALLOW_RULES = {"read-public", "write-customers", "copy", "settings", "set-config"}


class Env:
    def __init__(self, daemon: Daemon, pg: PgServer) -> None:
        self.daemon, self.pg = daemon, pg


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pg-masking")
    with PgServer(user="owner", password=SUPER_PASSWORD) as pg:
        pg.psql(SETUP)
        secret = write_credentials(workdir / "db-credentials", "app", APP_PASSWORD)
        policy = workdir / "policy.yaml"
        policy.write_text(policy_text(pg, secret))
        with running_daemon(workdir, policy) as daemon:
            yield Env(daemon, pg)


@pytest.fixture(autouse=True)
def _restore(env):
    """Whatever a test wrote (RETURNING, a failure half way), the next one starts from the same rows."""
    yield
    env.pg.psql(RESTORE)


def conninfo(pg: PgServer) -> str:
    # the agent's own user and password: the enforcer logs in with the resource's
    return f"host=127.0.0.1 port={pg.port} dbname=postgres user=agent password=not-the-real-one sslmode=disable"


# ---- clients under `interceptor exec` ---------------------------------------------------------------

def psql(env: Env, *commands: str) -> subprocess.CompletedProcess:
    """Each command a -c of its own, in one session; quiet (no command tags), verbose errors."""
    argv = [INTERCEPTOR, "exec", "--agent", AGENT, "--", "psql", conninfo(env.pg), "-X", "-At", "-q",
            "-v", "VERBOSITY=verbose"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def agent_json(code: str, *args: str) -> dict:
    """Runs the agent's script; checks everything it got (printed or in a traceback) for clear values."""
    out = agent_python(AGENT, code, *args)
    assert_never_clear(out.stdout + out.stderr)
    assert out.returncode == 0 and out.stdout.strip(), out.stdout + "\n".join(out.stderr.splitlines()[-3:])
    return json.loads(out.stdout.strip().splitlines()[-1])


PSYCOPG = """
import json, sys, psycopg
out, notices = {}, []
def attempt(key, call):
    try:
        out[key] = call()
    except psycopg.Error as exc:
        d = exc.diag
        out[key] = {"error": exc.sqlstate, "str": str(exc), "primary": d.message_primary,
                    "detail": d.message_detail, "hint": d.message_hint, "context": d.context,
                    "internal_query": d.internal_query}
    except Exception as exc:  # the client could not read what it got (a value it cannot parse)
        out[key] = {"client_error": repr(exc)}
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.add_notice_handler(lambda d: notices.append([d.sqlstate, d.message_primary, d.message_detail, d.context]))
"""
PSYCOPG_END = """
conn.close()
print(json.dumps({**out, "notices": notices}, default=str))
"""

ASYNCPG = """
import asyncio, json, sys, asyncpg
out, notices = {}, []
def plain(value):
    if isinstance(value, asyncpg.Record):
        return [plain(v) for v in value.values()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
async def attempt(key, call):
    try:
        out[key] = plain(await call())
    except asyncpg.PostgresError as exc:
        out[key] = {"error": exc.sqlstate, "str": str(exc), "detail": exc.detail, "fields": exc.as_dict()}
    except Exception as exc:  # the client could not read what it got (a value it cannot decode)
        out[key] = {"client_error": repr(exc)}
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                 database="postgres", ssl=False)
    conn.add_log_listener(lambda c, m: notices.append(m.as_dict()))
"""
ASYNCPG_END = """
    await conn.close()
asyncio.run(main())
print(json.dumps({**out, "notices": notices}, default=str))
"""


def psycopg_session(env: Env, body: str) -> dict:
    """`body` (indented 0) runs with `conn` (autocommit) and `attempt(key, call)`; returns what it got."""
    return agent_json(PSYCOPG + textwrap.dedent(body) + PSYCOPG_END, conninfo(env.pg))


def asyncpg_session(env: Env, body: str) -> dict:
    """`body` (indented 4, inside `async def main`) runs with `conn` and `await attempt(key, coroutine fn)`."""
    return agent_json(ASYNCPG + textwrap.indent(textwrap.dedent(body), "    ") + ASYNCPG_END, str(env.pg.port))


# ---- what the client got ------------------------------------------------------------------------------

def assert_never_clear(text) -> None:
    """No clear card number (in any spacing) or email in what the client received."""
    if not isinstance(text, str):
        text = json.dumps(text, default=str)
    for clear in CLEAR:
        assert clear.lower() not in text.lower(), f"{clear!r} leaked:\n{text}"
    for run in re.findall(r"\d[\d\s\-./]*\d", text):  # digits with separators between them
        digits = re.sub(r"\D", "", run)
        for clear in CLEAR_DIGITS:
            assert clear not in digits, f"the digits of {clear!r} leaked as {run!r}:\n{text}"


def rule_of(message: str) -> str | None:
    found = re.search(r"interceptor rule '([^']+)'", message)
    return found.group(1) if found else None


def assert_partial_card(value, card: str) -> None:
    """Partial: the last four digits kept, every other digit hidden ('**** **** **** 1111')."""
    assert isinstance(value, str) and value != card, f"{value!r} is not a masked card"
    assert "*" in value and value.endswith(card[-4:]), f"{value!r} is not {card!r} masked partially"
    assert re.sub(r"\D", "", value) == card[-4:], f"{value!r} shows more than the last four digits"


def assert_masked_customer(fields, expect_id: int) -> None:
    """One customers row (id, name, email, card_number), masked inside: NULL stays NULL."""
    assert len(fields) == 4, fields
    assert str(fields[0]) == str(expect_id) and fields[1] == NAMES[expect_id], fields
    if expect_id in CARDS:
        assert fields[2] == "****", f"email not redacted: {fields}"
        assert_partial_card(fields[3], CARDS[expect_id])
    else:
        assert fields[2] is None and fields[3] is None, f"NULLs must stay NULL: {fields}"


def assert_masked_customers(rows, ids=(1, 2, 3)) -> None:
    assert len(rows) == len(ids), rows
    for fields, expect_id in zip(rows, ids):
        assert_masked_customer(fields, expect_id)


def assert_masked_json(objects, ids=(1, 2, 3)) -> None:
    """Customers rows as JSON objects (parsed): the same masking, keyed by column name."""
    assert [o["id"] for o in objects] == list(ids), objects
    for obj in objects:
        assert set(obj) == {"id", "name", "email", "card_number"}, obj
        assert_masked_customer([obj["id"], obj["name"], obj["email"], obj["card_number"]], obj["id"])


def parse_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        pytest.fail(f"not JSON (masked as a whole value instead of inside?): {text!r}")


def record(text: str) -> list[str | None]:
    """The fields of a composite value in PostgreSQL's text form: '(1,Ada,****,"**** 1111")'."""
    assert text.startswith("(") and text.endswith(")"), f"not a record: {text!r}"
    body, fields, i = text[1:-1], [], 0
    while True:
        if body[i:i + 1] == '"':
            value, i = [], i + 1
            while True:
                ch = body[i]
                if ch == "\\":
                    value.append(body[i + 1])
                    i += 2
                elif ch == '"' and body[i + 1:i + 2] == '"':
                    value.append('"')
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    value.append(ch)
                    i += 1
            fields.append("".join(value))
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            fields.append(body[i:end] or None)  # empty and unquoted: NULL
            i = end
        if i >= len(body):
            return fields
        assert body[i] == ",", f"bad record {text!r}"
        i += 1


def lines_of(out: subprocess.CompletedProcess) -> list[str]:
    """psql's rows, after checking everything it printed for clear values and that nothing failed."""
    assert_never_clear(out.stdout + out.stderr)
    assert out.returncode == 0 and not psql_errors(out.stderr), out.stderr
    return out.stdout.splitlines()


def psql_fields(out: subprocess.CompletedProcess) -> list[list[str | None]]:
    """psql -At rows split on '|'; an empty field is NULL (no test value is an empty string)."""
    return [[f or None for f in line.split("|")] for line in lines_of(out)]


def denied_in_psql(out: subprocess.CompletedProcess) -> bool:
    """True when psql got the enforcer's 42501 naming a rule that is not an allow rule (and no rows)."""
    errors = psql_errors(out.stderr)
    if not errors:
        return False
    severity, sqlstate, message = errors[0]
    assert sqlstate == "42501", out.stderr
    assert rule_of(message) not in (None, *ALLOW_RULES), message
    assert not out.stdout.strip(), out.stdout
    return True


# The same rows with other hidden parts: the cards keep their format and last four digits (what
# partial masking shows), the emails change. A client's view that changes with them shows the
# hidden part, or something computed from it (a hash, a length, the card reversed).
OTHER_SECRETS = {1: ("zed.x@elsewhere.io", "3999 2222 5555 1111"), 2: ("q@example.net", "6011 7777 3333 0004")}


def assert_same_view_with_other_secrets(env: Env, commands: tuple[str, ...], seen: subprocess.CompletedProcess) -> None:
    """Runs `commands` again in psql after the superuser changed the hidden parts of the masked
    values: the client must see exactly what it saw (rows in any order, the same errors)."""
    for row_id, (email, card) in OTHER_SECRETS.items():
        env.pg.psql(f"update public.customers set email = '{email}', card_number = '{card}' where id = {row_id}")
    try:
        again = psql(env, *commands)
    finally:
        env.pg.psql(RESTORE)
    assert_never_clear(again.stdout + again.stderr)
    assert sorted(again.stdout.splitlines()) == sorted(seen.stdout.splitlines()), \
        f"{commands}: what the client sees depends on the masked values:\n{seen.stdout}\n---\n{again.stdout}"
    assert psql_errors(again.stderr) == psql_errors(seen.stderr), (seen.stderr, again.stderr)


def rows_of(got: dict, key: str) -> list:
    """The rows a client script got for `key`, failing with the error it got instead."""
    assert isinstance(got[key], list), f"{key}: {got[key]}"
    return got[key]


def assert_plain_columns_exact(env: Env) -> None:
    """What no rule masks arrives exact (the same session, after whatever the test did)."""
    assert psql_fields(psql(env, "select id, name from customers order by id")) == \
        [["1", "Ada"], ["2", "Grace"], ["3", "Nobody"]]


# ---- 1. whole rows are masked inside: the masked field replaced, the rest exact ----------------------------

def test_whole_row_in_psql_is_masked_inside(env):
    rows = lines_of(psql(env, "select c from customers c order by id", "select id, name from customers order by id"))
    assert len(rows) == 6, rows
    assert_masked_customers([record(line) for line in rows[:3]])
    assert rows[2] == "(3,Nobody,,)", rows
    assert rows[3:] == ["1|Ada", "2|Grace", "3|Nobody"], rows


@pytest.mark.parametrize("function", ["row_to_json(c)", "to_json(c)", "to_jsonb(c)"])
def test_row_as_json_in_psql_is_masked_inside(env, function):
    # WHERE and ORDER BY on id, which is not masked (on a masked column they are refused by design)
    rows = lines_of(psql(env, f"select {function} from customers c where id in (1, 2, 3) order by id"))
    assert_masked_json([parse_json(line) for line in rows])
    one = lines_of(psql(env, f"select {function} from customers c where id = 1"))
    assert_masked_json([parse_json(line) for line in one], ids=(1,))
    assert_plain_columns_exact(env)


@pytest.mark.parametrize("function", ["json_agg(c)", "jsonb_agg(c)"])
def test_rows_aggregated_as_json_in_psql_are_masked_inside(env, function):
    rows = lines_of(psql(env, f"select {function} from customers c"))
    objects = parse_json("\n".join(rows))  # json_agg prints one element a line, jsonb_agg all on one
    assert isinstance(objects, list) and len(objects) == 3, objects
    assert_masked_json(sorted(objects, key=lambda o: o["id"]))


def test_whole_row_in_psycopg_text_is_masked_inside(env):
    got = psycopg_session(env, """
        attempt("rows", lambda: conn.execute("select c from customers c order by id").fetchall())
        attempt("jsonb", lambda: conn.execute("select to_jsonb(c) from customers c order by id").fetchall())
        attempt("param", lambda: conn.execute("select c from customers c where id = %s", (2,)).fetchall())
        attempt("plain", lambda: conn.execute("select id, name from customers order by id").fetchall())
    """)
    assert all(isinstance(row[0], str) for row in rows_of(got, "rows")), got["rows"]
    assert_masked_customers([record(row[0]) for row in got["rows"]])
    assert all(isinstance(row[0], dict) for row in rows_of(got, "jsonb")), got["jsonb"]
    assert_masked_json([row[0] for row in got["jsonb"]])
    assert_masked_customers([record(row[0]) for row in rows_of(got, "param")], ids=(2,))
    assert got["plain"] == [[1, "Ada"], [2, "Grace"], [3, "Nobody"]], got
    assert got["notices"] == [], got


def test_whole_row_in_asyncpg_binary_is_masked_inside(env):
    got = asyncpg_session(env, """
        await attempt("rows", lambda: conn.fetch("select c from customers c order by id"))
        await attempt("json", lambda: conn.fetch("select row_to_json(c) from customers c order by id"))
        await attempt("jsonb", lambda: conn.fetch("select to_jsonb(c) from customers c order by id"))
        await attempt("plain", lambda: conn.fetch("select id, name from customers order by id"))
    """)
    assert_masked_customers([row[0] for row in rows_of(got, "rows")])
    for key in ("json", "jsonb"):
        assert all(isinstance(row[0], str) for row in rows_of(got, key)), got[key]
        assert_masked_json([parse_json(row[0]) for row in got[key]])
    assert got["plain"] == [[1, "Ada"], [2, "Grace"], [3, "Nobody"]], got
    assert got["notices"] == [], got


# ---- 2. other shapes: masked as a whole value, or denied; never clear -----------------------------------

OTHER_SHAPES = [
    ("select c::text from customers c", 3),
    ("select ROW(c.*) from customers c", 3),
    ("select array_agg(c) from customers c", 1),
    ("select string_agg(c::text, ';') from customers c", 1),
    ("select concat(c) from customers c", 3),
    ("select format('%s', c) from customers c", 3),
    ("select md5(c::text) from customers c", 3),
    ("select x from (select * from customers) x", 3),
    ("select row_to_json(x) from (select card_number as cc from customers) x", 3),
    ("select json_build_object('cc', card_number) from customers", 3),
    ("select upper(email), reverse(card_number) from customers", 3),
]


@pytest.mark.parametrize("sql,count", OTHER_SHAPES, ids=[s for s, _ in OTHER_SHAPES])
def test_other_shapes_are_masked_whole_or_denied(env, sql, count):
    out = psql(env, sql)
    assert_never_clear(out.stdout + out.stderr)
    if not denied_in_psql(out):
        assert len(psql_fields(out)) == count, out.stdout
        # neither the clear values nor anything computed from them (a hash, upper case, reversed)
        assert_same_view_with_other_secrets(env, (sql,), out)
    assert_plain_columns_exact(env)


# ---- 3. computed values give the oracle nothing: they are not run -----------------------------------------

@pytest.mark.parametrize("sql", [
    "select case when card_number like '4%' then null else 'x' end from customers order by id",
    "select length(card_number) from customers order by id",
    # an error only for some values would tell them apart, its text withheld or not
    "select 1 / (substr(replace(card_number, ' ', ''), 1, 1)::int - 4) from customers where id = 1",
])
def test_values_computed_from_a_masked_column_are_refused_before_they_run(env, sql):
    """Were the NULL-ness, the length or an error shown, a card's first digit or its length would be."""
    out = psql(env, sql)
    assert_never_clear(out.stdout + out.stderr)
    errors = psql_errors(out.stderr)
    assert [code for _, code, _ in errors] == ["42501"] and "computed from masked column" in errors[0][2], out.stderr
    assert_plain_columns_exact(env)


# ---- 4. the server's word: a masked column renamed in a subquery -------------------------------------------

def test_masked_column_renamed_in_a_subquery_is_masked(env):
    rows = psql_fields(psql(env, "select cc, id from (select id, card_number as cc from customers) s order by s.id"))
    assert [row[1] for row in rows] == ["1", "2", "3"], rows
    assert_partial_card(rows[0][0], CARDS[1])
    assert_partial_card(rows[1][0], CARDS[2])
    assert rows[2][0] is None, rows


# ---- 5. RETURNING -------------------------------------------------------------------------------------------

def test_update_returning_star_is_masked(env):
    rows = psql_fields(psql(env, "update customers set name = name where id = 1 returning *"))
    assert_masked_customers(rows, ids=(1,))
    assert env.pg.psql("select card_number from customers where id = 1") == CARDS[1]


def test_insert_returning_masked_columns_is_masked(env):
    new_id, name, email, card = EVE
    rows = psql_fields(psql(env, f"insert into customers values ({new_id}, '{name}', '{email}', '{card}') "
                                 "returning card_number, email, name"))
    assert len(rows) == 1, rows
    assert_partial_card(rows[0][0], card)
    assert rows[0][1:] == ["****", "Eve"], rows
    assert env.pg.psql(f"select email || '|' || card_number from customers where id = {new_id}") == f"{email}|{card}"


# ---- 6. COPY TO STDOUT --------------------------------------------------------------------------------------

def copy_rows(out: subprocess.CompletedProcess) -> list[list[str | None]]:
    """COPY's text rows: tab separated, \\N for NULL."""
    return [[None if f == r"\N" else f for f in line.split("\t")] for line in lines_of(out)]


def test_copy_of_the_table_is_masked_or_denied(env):
    out = psql(env, "copy customers to stdout")
    assert_never_clear(out.stdout + out.stderr)
    if not denied_in_psql(out):
        assert_masked_customers(copy_rows(out))
    assert_plain_columns_exact(env)


def test_copy_of_columns_no_rule_masks_gives_the_rows(env):
    assert copy_rows(psql(env, "copy (select id, name from customers order by id) to stdout")) == \
        [["1", "Ada"], ["2", "Grace"], ["3", "Nobody"]]


@pytest.mark.parametrize("sql", [
    "copy (select card_number from customers) to stdout",
    "copy (select c from customers c) to stdout",
    "copy (select id, email from customers order by id) to stdout",
])
def test_copy_of_a_query_reading_masked_columns_is_masked_or_denied(env, sql):
    out = psql(env, sql)
    assert_never_clear(out.stdout + out.stderr)
    if not denied_in_psql(out):
        assert len(copy_rows(out)) == 3, out.stdout
        assert_same_view_with_other_secrets(env, (sql,), out)


# ---- 7. cursors ---------------------------------------------------------------------------------------------

def test_sql_cursor_in_psql_fetches_masked_rows(env):
    """DECLARE is judged as its query; FETCH returns its rows masked."""
    out = psql(env, "begin", "declare x cursor for select * from customers order by id", "fetch 1 from x",
               "fetch all from x", "close x", "commit")
    assert_never_clear(out.stdout + out.stderr)
    assert not psql_errors(out.stderr), out.stderr
    assert_masked_customers(psql_fields(out))


def test_psycopg_named_cursor_fetches_masked_rows(env):
    got = psycopg_session(env, """
        def named():
            with psycopg.connect(sys.argv[1]) as tx:  # not autocommit: a named cursor lives in a transaction
                with tx.cursor(name="cur") as cur:
                    cur.execute("select * from customers order by id")
                    return {"first": cur.fetchmany(1), "rest": cur.fetchall()}
        attempt("named", named)
    """)
    assert isinstance(got["named"], dict) and set(got["named"]) == {"first", "rest"}, got
    assert_masked_customers(got["named"]["first"], ids=(1,))
    assert_masked_customers(got["named"]["rest"], ids=(2, 3))


def test_asyncpg_portal_cursors_fetch_masked_rows(env):
    got = asyncpg_session(env, """
        async def iterate():
            async with conn.transaction():
                return [r async for r in conn.cursor("select * from customers order by id", prefetch=1)]
        async def fetch():
            async with conn.transaction():
                cur = await conn.cursor("select * from customers order by id")
                return [await cur.fetch(1), await cur.fetch(10)]
        await attempt("iterate", iterate)
        await attempt("fetch", fetch)
    """)
    assert_masked_customers(rows_of(got, "iterate"))
    assert_masked_customers(rows_of(got, "fetch")[0], ids=(1,))
    assert_masked_customers(got["fetch"][1], ids=(2, 3))


# ---- 8. errors and notices carry no value -------------------------------------------------------------------

@pytest.mark.parametrize("sql,rule", [
    ("select card_number::int from customers", "mask-card"),
    ("select email::int from customers", "mask-email"),
])
def test_a_cast_of_a_masked_column_is_refused_before_it_runs_and_carries_no_value(env, sql, rule):
    """Run, the cast would fail for some values and not others: an oracle, whatever the text says."""
    out = psql(env, sql, "select id, name from customers order by id")
    assert_never_clear(out.stdout + out.stderr)
    errors = psql_errors(out.stderr)
    assert len(errors) == 1 and errors[0][1] == "42501", out.stderr
    assert rule in errors[0][2] and "computed from masked column" in errors[0][2], errors
    assert out.stdout.splitlines() == ["1|Ada", "2|Grace", "3|Nobody"], out.stdout


# Raised while masked values are read (they may be in the message), not computed from them:
WHILE_MASKED = "select card_number, email, 1 / (id - 1) from customers order by id"


def test_an_error_while_masked_values_are_read_keeps_its_sqlstate_and_withholds_its_text(env):
    out = psql(env, WHILE_MASKED, "select 1")
    assert_never_clear(out.stdout + out.stderr)
    errors = psql_errors(out.stderr)
    assert [code for _, code, _ in errors] == ["22012"], out.stderr
    assert "withheld" in errors[0][2] and "mask-card" in errors[0][2] and "division" not in errors[0][2], errors
    assert out.stdout.splitlines() == ["1"], out.stdout


def test_error_of_a_statement_reading_no_masked_column_keeps_its_message(env):
    out = psql(env, "select 'abc'::int")
    errors = psql_errors(out.stderr)
    assert errors and errors[0][1] == "22P02", out.stderr
    assert 'invalid input syntax for type integer: "abc"' in errors[0][2], errors


def test_errors_in_psycopg_carry_no_value(env):
    got = psycopg_session(env, f"""
        for key, sql in (("card", "select card_number::int from customers"),
                         ("card-param", "select card_number::int from customers where id = %s"),
                         ("while", "{WHILE_MASKED}"),
                         ("plain", "select 'abc'::int")):
            attempt(key, lambda: conn.execute(sql, (1,) if "%s" in sql else None).fetchall())
        attempt("after", lambda: conn.execute("select id, name from customers order by id").fetchall())
    """)
    for key in ("card", "card-param"):
        assert got[key]["error"] == "42501" and "computed from masked column" in got[key]["primary"], got[key]
    assert got["while"]["error"] == "22012" and "withheld" in got["while"]["primary"], got["while"]
    assert got["plain"]["error"] == "22P02" and '"abc"' in got["plain"]["primary"], got["plain"]
    assert got["after"] == [[1, "Ada"], [2, "Grace"], [3, "Nobody"]], got


def test_errors_in_asyncpg_carry_no_value(env):
    got = asyncpg_session(env, f"""
        await attempt("card", lambda: conn.fetch("select card_number::int from customers"))
        await attempt("card-param", lambda: conn.fetch("select card_number::int from customers where id = $1", 2))
        await attempt("while", lambda: conn.fetch("{WHILE_MASKED}"))
        await attempt("plain", lambda: conn.fetch("select 'abc'::int"))
        await attempt("after", lambda: conn.fetch("select id, name from customers order by id"))
    """)
    for key in ("card", "card-param"):
        assert got[key]["error"] == "42501" and "computed from masked column" in got[key]["str"], got[key]
    assert got["while"]["error"] == "22012" and "withheld" in got["while"]["str"], got["while"]
    assert got["plain"]["error"] == "22P02" and '"abc"' in got["plain"]["str"], got["plain"]
    assert got["after"] == [[1, "Ada"], [2, "Grace"], [3, "Nobody"]], got


# ---- 10. what an attack found: each kind closed ---------------------------------------------------------------

ATTACKS = {
    "copy of a star": ["copy (select * from customers) to stdout",
                       "copy (select * from (select upper(email), card_number from customers) s) to stdout"],
    "a star written into an unmasked column": [
        "insert into customers (id, name) select * from (select id + 100, card_number || ' / ' || email "
        "from customers where id < 3) s", "select id, name from customers where id > 100 order by id"],
    "the row ON CONFLICT reads": [
        "insert into customers values (1, 'x', 'e', '9') on conflict (id) do update "
        "set name = customers.card_number || ' / ' || customers.email returning name"],
    "a star the analysis expands differently": [
        "select *, upper(card_number), lower(email) from customers, generate_series(1, 1) g order by id",
        "select *, a.card_number || '' from customers a join (select id, name as nm from customers) b using (id) "
        "order by id"],
    "a view over the masked table": ["select * from customer_list order by id",
                                     "select to_jsonb(c) from customer_list c"],
    "a cursor re-declared under a refused name": [
        "begin", "declare x cursor with hold for select upper(card_number), lower(email) from customers", "commit",
        "declare x cursor with hold for select id, name from customers", "fetch all from x", "close x"],
    "a cursor whose DECLARE the server skipped": [
        "begin", "declare y cursor with hold for select card_number || '', email || '' from customers", "commit",
        "select 1/(select 0); declare y cursor with hold for select id, name from customers", "fetch all from y"],
    "a session setting storing a masked value": [
        "select set_config('my.x', card_number || ' ' || email, false) from customers where id = 1",
        "select current_setting('my.x')"],
    "a row count": ["select p, count(*) from (select p, generate_series(1, substr(replace(card_number, ' ', ''), "
                    "p, 1)::int) from customers, generate_series(1, 16) p where id = 2) s group by p order by p"],
    "an order by position": ["select 'SECRET' tag, card_number from customers where id = 1 union all "
                             "select 'p-' || v, v from (values ('4111 1111 1111 1110'), ('4111 1111 1111 1112')) "
                             "p(v) order by 2"],
    "a whole row through a subquery": ["select s from (select c from customers c) s",
                                       "select (x).email, (x).card_number from (select c as x from customers c) s",
                                       "with s as (select c from customers c) select s from s",
                                       "select to_json(s) from (select c from customers c) s"],
    "a comparison by UNION, INTERSECT or DISTINCT": [
        "select count(*) from (select email from customers where id = 1 intersect select 'ada@example.com') s",
        "select count(*) from (select card_number from customers where id = 1 union select '4111 1111 1111 1111') s",
        "select count(*) from (select distinct email from customers) s"],
    "an alias list renaming a subquery's columns": [
        "copy (select a, b from (select card_number, email from customers) x(a, b)) to stdout",
        "select id from customers c(a, b) where card_number like '4%'",
        "select upper(a) from (select card_number from customers) x(a)"],
    "a position in parentheses, a grouping set or an output name in another case": [
        "select id from (select id, card_number from customers order by (2) limit 1) s",
        "select id, card_number from customers group by rollup(2), 1",
        "select card_number as X from customers order by x"],
    "a USING or NATURAL join": [
        "select count(*) from customers a join (values ('4111 1111 1111 1111')) v(card_number) using (card_number)",
        "select count(*) from customers a natural join customers b"],
    "a parenthesised join, a VALUES branch, a WITH query's column list": [
        "select upper(email) from (customers cross join (select 1) z)",
        "with t(i, x) as (values (1, 'x') union all select id, email from customers) select upper(x) from t",
        "values (0, 'x') union all select id, email from customers",
        "with t(k) as (select email from customers) select count(*) from t join (select 'ada@example.com' as k) s "
        "using (k)"],
    "a window order": ["select tag, r from (select tag, row_number() over (order by x) r from (select 'SECRET' tag, "
                       "email x from customers where id = 1 union all select 'p-' || v, v from (values ('ad'), "
                       "('ada@example.co'), ('ada@example.cp')) p(v)) u) s"],
    "explain analyze row counts": ["explain (analyze, costs off, timing off, summary off) "
                                   "select generate_series(1, length(email)) from customers where id = 1"],
}


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_an_attack_of_each_kind_gets_no_clear_value_and_no_oracle(env, kind):
    out = psql(env, *ATTACKS[kind])
    assert_never_clear(out.stdout + out.stderr)
    if kind in ("a row count", "an order by position", "a window order", "explain analyze row counts",
                "a comparison by UNION, INTERSECT or DISTINCT", "an alias list renaming a subquery's columns",
                "a position in parentheses, a grouping set or an output name in another case",
                "a USING or NATURAL join"):
        assert any(code == "42501" for _, code, _ in psql_errors(out.stderr)), out.stdout + out.stderr
        assert "SECRET" not in out.stdout and "actual rows=15" not in out.stdout


def test_a_view_that_reads_no_masked_column_is_read(env):
    assert lines_of(psql(env, "select id, name from customer_names order by id")) == ["1|Ada", "2|Grace", "3|Nobody"]


def test_style_hash_gives_a_stable_digest_keyed_by_the_hosts_mask_key(env):
    key = (env.daemon.workdir / "state" / "mask.key").read_bytes()  # made by the daemon at its start
    expected = [f"{i}|{hmac.new(key, iban.encode(), hashlib.sha256).hexdigest()[:16]}" for i, iban in IBANS.items()]
    for _ in range(2):  # the same digests on every query: equal values stay joinable and countable
        out = psql(env, "select id, iban from accounts order by id")
        assert out.returncode == 0 and out.stdout.split() == expected, out.stdout + out.stderr
    assert expected[0].split("|")[1] == expected[2].split("|")[1] != expected[1].split("|")[1]
    assert len(key) == 32 and not any(iban in out.stdout for iban in IBANS.values())
