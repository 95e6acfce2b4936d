"""The PostgreSQL enforcer behind the kernel redirect: unchanged clients (psql, psycopg,
asyncpg, pgbench) started with `interceptor exec` connect to the database's real address;
the enforcer logs in with credentials the agent never sees and judges every statement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from daemon import Daemon, INTERCEPTOR, running_daemon
from pg_fixture import PgServer, postgres_policy, write_credentials

PASSWORD = "s3cret-upstream-pw"
CARDS = {1: "4111 1111 1111 1111", 2: "5500 0000 0000 0004"}
EMAILS = {1: "ada@example.com", 2: "grace@example.com"}

SCHEMA = f"""
create table customers (id int primary key, name text, email text, card_number text);
create table orders (id int primary key, customer_id int references customers, amount numeric, status text);
insert into customers values (1, 'Ada', '{EMAILS[1]}', '{CARDS[1]}'), (2, 'Grace', '{EMAILS[2]}', '{CARDS[2]}');
insert into orders values (10, 1, 99.50, 'new'), (11, 2, 12.00, 'new');
"""


RULES = [
    "{name: no-ddl, effect: deny, agents: [analyst], resources: [db], sql: {kinds: [ddl]}}",
    "{name: read-public, effect: allow, agents: [analyst], resources: [db],"
    ' sql: {kinds: [select], tables: ["public.*"]}}',
    "{name: read-catalog, effect: allow, agents: [analyst], resources: [db],"
    ' sql: {kinds: [select], tables: ["pg_catalog.*", "information_schema.*"]}}',
    "{name: transactions, effect: allow, agents: [analyst], resources: [db], sql: {kinds: [transaction]}}",
    "{name: mask-card, effect: mask, agents: [analyst], resources: [db],"
    " mask: {columns: [public.customers.card_number], style: partial}}",
    "{name: mask-email, effect: mask, agents: [analyst], resources: [db],"
    " mask: {columns: [public.customers.email], style: redact}}",
    "{name: update-orders, effect: approve, agents: [analyst], resources: [db],"
    " sql: {kinds: [update], tables: [public.orders]}, approval: {groups: [dba], timeout_seconds: 30}}",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pg-kernel")
    with PgServer(user="owner", password=PASSWORD) as pg:
        pg.psql(SCHEMA)
        secret = write_credentials(workdir / "db-credentials", "owner", PASSWORD)
        policy = workdir / "policy.yaml"
        policy.write_text(postgres_policy(pg, secret, "analyst", RULES))
        with running_daemon(workdir, policy) as daemon:
            yield daemon, pg


def conninfo(pg: PgServer) -> str:
    # the agent's own user and password: ignored upstream, the enforcer logs in with the resource's
    return f"host=127.0.0.1 port={pg.port} dbname=postgres user=agent password=not-the-real-one sslmode=disable"


def psql(daemon: Daemon, pg: PgServer, *commands: str) -> subprocess.CompletedProcess:
    argv = [INTERCEPTOR, "exec", "--agent", "analyst", "--", "psql", conninfo(pg), "-X", "-At"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def agent_python(daemon: Daemon, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([INTERCEPTOR, "exec", "--agent", "analyst", "--", sys.executable, "-c",
                           textwrap.dedent(code), *args], capture_output=True, text=True, timeout=timeout)


def test_psql_reads_with_masked_values(env):
    daemon, pg = env
    out = psql(daemon, pg, "select id, name, email, card_number from customers order by id")
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines()]
    assert [r[1] for r in rows] == ["Ada", "Grace"]
    for row in rows:
        assert row[2] not in EMAILS.values() and "@" not in row[2], row
        assert row[3] not in CARDS.values() and row[3].endswith(CARDS[int(row[0])][-4:]), row


def test_psql_catalog_queries(env):
    daemon, pg = env
    out = psql(daemon, pg, r"\d customers")
    assert out.returncode == 0, out.stderr
    assert "card_number" in out.stdout


def test_denied_ddl_names_the_rule_and_the_session_stays_usable(env):
    daemon, pg = env
    out = psql(daemon, pg, "drop table orders", "select 42")
    assert "no-ddl" in out.stderr, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "42"
    assert pg.psql("select count(*) from orders").strip() == "2", "the denied DROP must not have run"


def test_denied_statement_in_a_transaction_block_fails_it(env):
    daemon, pg = env
    code = """
    import sys, psycopg
    with psycopg.connect(sys.argv[1], autocommit=False) as conn:
        conn.execute("select 1")
        try:
            conn.execute("delete from orders")
        except psycopg.errors.InsufficientPrivilege as exc:
            print("denied", exc.sqlstate)
        try:
            conn.execute("select 1")
        except psycopg.errors.InFailedSqlTransaction:
            print("failed-transaction")
        conn.rollback()
        print("after", conn.execute("select count(*) from orders").fetchone()[0])
    """
    out = agent_python(daemon, code, conninfo(pg))
    assert out.stdout.split() == ["denied", "42501", "failed-transaction", "after", "2"], out.stdout + out.stderr


def test_psycopg_text_binary_and_pipeline(env):
    daemon, pg = env
    code = """
    import sys, psycopg
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        text = conn.execute("select name, card_number from customers where id = %s", (1,)).fetchone()
        binary = conn.cursor(binary=True).execute("select name, card_number from customers where id = %s",
                                                  (2,)).fetchone()
        with conn.pipeline():
            a = conn.execute("select count(*) from orders")
            b = conn.execute("select max(amount) from orders")
        print(text[0], text[1]); print(binary[0], binary[1]); print(a.fetchone()[0], b.fetchone()[0])
    """
    out = agent_python(daemon, code, conninfo(pg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Ada ") and CARDS[1] not in lines[0] and lines[0].endswith("1111")
    assert lines[1].startswith("Grace ") and CARDS[2] not in lines[1] and lines[1].endswith("0004")
    assert lines[2] == "2 99.50"


def test_asyncpg_prepared_statements(env):
    daemon, pg = env
    code = """
    import asyncio, sys, asyncpg
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                     database="postgres", ssl=False)
        stmt = await conn.prepare("select id, email from customers where id = $1")
        rows = [await stmt.fetchrow(i) for i in (1, 2)]
        try:
            await conn.execute("truncate orders")
        except asyncpg.InsufficientPrivilegeError:
            print("denied")
        print(await conn.fetchval("select count(*) from orders"))
        print(*[r["email"] for r in rows])
        await conn.close()
    asyncio.run(main())
    """
    out = agent_python(daemon, code, str(pg.port))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "denied" and lines[1] == "2"
    assert not any(email in lines[2] for email in EMAILS.values())


def test_pgbench_select_only_in_all_protocols(env):
    daemon, pg = env
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", pg.dsn()], capture_output=True, check=True)
    # tables made outside the enforcer: the catalog is read again, as a sysadmin does after a migration
    daemon.cli("catalog", "refresh", "db")
    for protocol in ("simple", "extended", "prepared"):
        out = subprocess.run([INTERCEPTOR, "exec", "--agent", "analyst", "--", "pgbench", "-n", "-S", "-t", "50",
                              "-M", protocol, conninfo(pg)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "number of transactions actually processed: 50/50" in out.stdout, \
            f"{protocol}: {out.stdout}{out.stderr}"


def test_update_held_for_approval_runs_after_approve_while_others_work(env):
    daemon, pg = env
    code = """
    import sys, psycopg
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        conn.add_notice_handler(lambda d: print("notice", d.message_primary, flush=True))
        conn.execute("update orders set status = 'shipped' where id = 10")
        print("updated", flush=True)
    """
    held = subprocess.Popen([INTERCEPTOR, "exec", "--agent", "analyst", "--", sys.executable, "-c",
                             textwrap.dedent(code), conninfo(pg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    request = daemon.pending_request("analyst")
    other = psql(daemon, pg, "select count(*) from customers")
    assert other.stdout.strip() == "2", "other sessions keep working while one waits"
    assert pg.psql("select status from orders where id = 10").strip() == "new"
    daemon.cli("approvals", "approve", request["request_id"])
    out, err = held.communicate(timeout=30)
    assert "updated" in out and request["request_id"] in out, out + err
    assert pg.psql("select status from orders where id = 10").strip() == "shipped"


def test_upstream_password_is_nowhere_the_agent_can_see(env):
    daemon, pg = env
    code = """
    import os, sys, psycopg
    print(open(f"/proc/{os.getpid()}/environ", "rb").read().decode(errors="replace"))
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        for sql in ("select * from nosuchtable", "alter user owner password 'x'", "select current_user"):
            try:
                print(conn.execute(sql).fetchall())
            except psycopg.Error as exc:
                print(exc)
    """
    out = agent_python(daemon, code, conninfo(pg))
    assert PASSWORD not in out.stdout + out.stderr
    assert PASSWORD not in daemon.audit_path.read_text()
    assert PASSWORD not in daemon.log.read_text()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            assert PASSWORD.encode() not in cmdline


def test_session_exports_as_a_pcap_that_tshark_decodes_as_postgresql(env, tmp_path):
    daemon, pg = env
    daemon.stop()  # capture is a daemon setting: restart with it on, then back
    captured = Daemon(tmp_path, daemon.policy, redirect="bpf", audit={
        "store": "jsonl", "path": str(tmp_path / "audit.jsonl"), "durability": "strict", "capture": True})
    captured.start()
    try:
        out = psql(captured, pg, "select name from customers where id = 1")
        assert out.returncode == 0, out.stderr
        statement = captured.wait_for_event(lambda e: e.get("kind") == "statement" and
                                            "select name from customers where id" in json.dumps(e.get("operation")))
        pcap = tmp_path / "session.pcap"
        captured.cli("audit", "export", "--store", str(captured.audit_path), "--pcap", statement["flow_id"],
                     "-o", str(pcap))
    finally:
        captured.stop()
        daemon.start()
    decoded = subprocess.run(["tshark", "-r", str(pcap), "-Y", "pgsql", "-T", "fields", "-e", "pgsql.query"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0, decoded.stderr
    assert "select name from customers where id = 1" in decoded.stdout


def test_kill_9_under_load_loses_no_record_of_a_result_a_client_received(env):
    """Strict durability: a result reaches the client only after its record is durable, so
    killing the daemon mid-load leaves a record for every result any client printed."""
    daemon, pg = env
    code = """
    import sys, psycopg
    conn = psycopg.connect(sys.argv[1], autocommit=True)
    n = 0
    try:
        while True:
            n += 1
            conn.execute(f"select {n} as c{sys.argv[2]}_{n}").fetchone()
            print(f"{sys.argv[2]}_{n}", flush=True)
    except psycopg.Error:
        pass
    """
    clients = [subprocess.Popen([INTERCEPTOR, "exec", "--agent", "analyst", "--", sys.executable, "-c",
                                 textwrap.dedent(code), conninfo(pg), str(k)], stdout=subprocess.PIPE, text=True)
               for k in range(4)]
    delivered: set[str] = set()
    for client in clients:  # let every client get going
        for _ in range(50):
            delivered.add(f"c{client.stdout.readline().strip()}")
    daemon.kill()
    for client in clients:
        rest, _ = client.communicate(timeout=30)
        delivered |= {f"c{line}" for line in rest.split()}
    daemon.start()  # the remaining tests (and the fixture's teardown) want a daemon
    recorded = {word for event in daemon.audit_events("statement")
                for word in json.dumps(event.get("operation")).replace('"', " ").split() if word.startswith("c")}
    missing = delivered - recorded
    assert len(delivered) >= 200 and not missing, f"{len(missing)} delivered results have no audit record"
    verify = daemon.cli("audit", "verify", "--store", str(daemon.audit_path), check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("sql", [
    "select * from customers order by id",
    "select email as contact, card_number as pan from customers order by id",
    "select upper(email), 'card: ' || card_number from customers order by id",
    "select c.name, c.email, o.amount from customers c join orders o on o.customer_id = c.id order by o.id",
    r"\copy (select id, email, card_number from customers order by id) to stdout",
])
def test_masked_columns_never_reach_the_agent_in_any_shape(env, sql):
    """SELECT *, aliases, expressions derived from a masked column, joins and COPY TO: the clear
    value never reaches the agent (masked, or the statement is refused rather than leak)."""
    daemon, pg = env
    out = psql(daemon, pg, sql)
    seen = out.stdout + out.stderr
    for clear in (*CARDS.values(), *EMAILS.values(), *(e.upper() for e in EMAILS.values())):
        assert clear not in seen, f"{clear!r} leaked for {sql!r}:\n{seen}"
    if out.returncode == 0:
        assert out.stdout.strip(), f"{sql!r}: allowed but returned nothing"


def test_large_result_streams_with_bounded_daemon_memory(env):
    """A 200 MB result flows through; the daemon's peak RSS (sampled while it streams) stays
    within a small bound above what a small query of the same shape needs."""
    daemon, pg = env

    def rss_kib() -> int:
        status = open(f"/proc/{daemon.proc.pid}/status").read()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    code = """
    import sys, psycopg
    with psycopg.connect(sys.argv[1]) as conn:
        cur = conn.cursor()
        cur.execute(f"select repeat('x', 1000) from generate_series(1, {int(sys.argv[2])})")
        total = 0
        while rows := cur.fetchmany(1000):
            total += sum(len(r[0]) for r in rows)
        print(total)
    """
    assert agent_python(daemon, code, conninfo(pg), "1000").stdout.strip() == "1000000"  # warm-up, same path
    before, peak, streaming = rss_kib(), [0], [True]

    def sample() -> None:
        while streaming[0]:
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out = agent_python(daemon, code, conninfo(pg), "200000", timeout=120)
    finally:
        streaming[0] = False
        sampler.join()
    assert out.stdout.strip() == str(200_000 * 1000), out.stderr
    growth_mib = (peak[0] - before) / 1024
    assert growth_mib < 32, f"the daemon's peak grew by {growth_mib:.0f} MiB streaming a 200 MB result"


def test_one_shot_approval_of_a_prepared_statement_covers_one_execution(env):
    daemon, pg = env
    code = """
    import asyncio, sys, asyncpg
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                     database="postgres", ssl=False)
        stmt = await conn.prepare("update orders set status = $1 where id = $2")  # held here
        print("first", await stmt.fetch("approved-once", 11), flush=True)
        try:
            await stmt.fetch("again", 11)
            print("second ran", flush=True)
        except asyncpg.InsufficientPrivilegeError as exc:
            print("second denied", flush=True)
        await conn.close()
    asyncio.run(main())
    """
    held = subprocess.Popen([INTERCEPTOR, "exec", "--agent", "analyst", "--", sys.executable, "-c",
                             textwrap.dedent(code), str(pg.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    request = daemon.pending_request("analyst")
    daemon.cli("approvals", "approve", request["request_id"])
    out, err = held.communicate(timeout=30)
    assert "first []" in out and "second denied" in out, out + err
    assert pg.psql("select status from orders where id = 11").strip() == "approved-once"
