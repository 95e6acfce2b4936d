"""Held statements that their client gives up on: through the kernel redirect, real clients
(psql, psycopg 3, asyncpg) send a PostgreSQL CancelRequest for an UPDATE held for approval,
or are killed while it is held. The client gets 57014 query_canceled at once and its session
goes on; the approval request is withdrawn, with why ("the client cancelled the statement",
"the client disconnected"), so nobody approves an operation nothing waits for; the row is
untouched on the server; and no abandoned hold slows another session down.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import psycopg
import pytest

from daemon import Daemon, INTERCEPTOR, running_daemon
from pg_fixture import PgServer, postgres_policy, write_credentials
from test_pg_proxy import Proxy

from interceptor.approvals import ApprovalBroker, Grant, SqliteStore

pytestmark = pytest.mark.root

AGENT = "holder"
PASSWORD = "s3cret-upstream-pw"
CANCELLED = "the client cancelled the operation"
DISCONNECTED = "the client disconnected"
HOLD_SECONDS = 120
ROUNDS = 50


def policy_text(pg: PgServer, secret: Path) -> str:
    return postgres_policy(pg, secret, AGENT, [
        f"{{name: reads, effect: allow, agents: [{AGENT}], resources: [db], sql: {{kinds: [select]}}}}",
        f"{{name: order-updates, effect: approve, agents: [{AGENT}], resources: [db],"
        f" sql: {{kinds: [update], tables: [public.orders]}},"
        f" approval: {{groups: [dba], timeout_seconds: {HOLD_SECONDS}}}}}",
    ])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pg-holds")
    with PgServer(user="owner", password=PASSWORD) as pg:
        pg.psql("create table orders (id int primary key, status text);"
                "insert into orders select id, 'new' from generate_series(1, 10) id")
        secret = write_credentials(workdir / "db-credentials", "owner", PASSWORD)
        policy = workdir / "policy.yaml"
        policy.write_text(policy_text(pg, secret))
        with running_daemon(workdir, policy) as daemon:
            yield daemon, pg, workdir


@pytest.fixture(autouse=True)
def _nothing_left_pending(env):
    """Every test ends with no request pending and every row as it was."""
    daemon, pg, _ = env
    yield
    assert pending(daemon) == [], "a request stayed pending"
    assert pg.psql("select count(*) from orders where status <> 'new'") == "0", "a held UPDATE ran"


def conninfo(pg: PgServer) -> str:
    # the agent's own user and password: ignored upstream, the enforcer logs in with the resource's
    return f"host=127.0.0.1 port={pg.port} dbname=postgres user=agent password=not-the-real-one sslmode=disable"


def requests(daemon: Daemon) -> list[dict]:
    return daemon.call("approvals.list", pending_only=False)["requests"]


def pending(daemon: Daemon) -> list[dict]:
    return [r for r in requests(daemon) if r["state"] == "pending"]


def held_request(daemon: Daemon, timeout: float = 20) -> dict:
    """The agent's one pending request (each test holds one statement at a time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in pending(daemon):
            if request["agent"] == AGENT:
                return request
        time.sleep(0.05)
    raise AssertionError(f"no pending request from {AGENT} within {timeout}s")


def settled(daemon: Daemon, request_id: str, timeout: float = 10) -> tuple[dict, float]:
    """The request once it is no longer pending, and how long that took from now."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        [request] = [r for r in requests(daemon) if r["request_id"] == request_id]
        if request["state"] != "pending":
            return request, time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} still pending after {timeout}s")


def approval_events(daemon: Daemon, request_id: str) -> list[dict]:
    return [e for e in daemon.audit_events("approval") if (e.get("outcome") or {}).get("request_id") == request_id]


def statement_event(daemon: Daemon, request_id: str) -> dict:
    """The audit record of the held statement itself (written once the hold ended)."""
    def match(event: dict) -> bool:
        approval = (event.get("outcome") or {}).get("approval") or {}
        return event.get("kind") == "statement" and approval.get("request_id") == request_id

    return daemon.wait_for_event(match)


def agent_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([INTERCEPTOR, "exec", "--agent", AGENT, "--", sys.executable, "-c", textwrap.dedent(code),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and out.strip(), out + err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def check_withdrawn(daemon: Daemon, request: dict, reason: str) -> None:
    """Withdrawn with `reason` in the store, in `approvals list --all` and in the audit trail;
    the statement's record says it was cancelled; an approver can no longer release it."""
    request_id = request["request_id"]
    assert (request["state"], request["decision_reason"]) == ("withdrawn", reason), request
    listing = daemon.cli("approvals", "list", "--all").stdout.splitlines()
    [row] = [i for i, line in enumerate(listing) if line.startswith(f"{request_id}  ")]
    assert listing[row].split()[1] == "withdrawn" and listing[row + 1].strip() == f"withdrawn: {reason}", listing
    assert [(e["outcome"]["state"], e["decision"]) for e in approval_events(daemon, request_id)] == [
        ("pending", "approve"), ("withdrawn", "deny")]
    assert approval_events(daemon, request_id)[-1]["reason"] == reason
    refused = daemon.cli("approvals", "approve", request_id, check=False)
    assert refused.returncode != 0 and f"request {request_id} was withdrawn ({reason})" in refused.stderr, refused


def test_psql_interrupted_while_held_gets_57014_and_the_request_is_withdrawn(env):
    daemon, pg, _ = env
    psql = subprocess.Popen([INTERCEPTOR, "exec", "--agent", AGENT, "--", "psql", conninfo(pg), "-X", "-At",
                             "-v", "VERBOSITY=verbose", "-c", "update orders set status = 'psql' where id = 1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request = held_request(daemon)
    started = time.monotonic()
    psql.send_signal(signal.SIGINT)  # psql sends a CancelRequest on a new connection
    _, err = psql.communicate(timeout=30)
    took = time.monotonic() - started
    errors = re.findall(r"ERROR:\s+([0-9A-Z]{5}): (.*)", err)
    assert [code for code, _ in errors] == ["57014"], err
    assert "held for approval by rule 'order-updates' and the request is withdrawn" in errors[0][1]
    assert f"request {request['request_id']}" in err  # the NOTICE it got while held
    assert took < 5, f"psql took {took:.2f}s to end after its cancel"
    print(f"\npsql: SIGINT to exit {took * 1000:.0f} ms")
    withdrawn, _ = settled(daemon, request["request_id"])
    check_withdrawn(daemon, withdrawn, CANCELLED)
    record = statement_event(daemon, request["request_id"])
    assert record["decision"] == "deny" and record["outcome"]["approval"]["cancelled"] is True
    assert record["outcome"]["approval"]["approved"] is False
    assert pg.psql("select status from orders where id = 1") == "new"


def test_psycopg_cancel_of_a_held_update_in_a_transaction(env):
    daemon, pg, _ = env
    code = """
    import json, re, sys, threading, time, psycopg
    held = threading.Event()
    out = {}

    def notice(diagnostic):
        out["request_id"] = re.search(r"request ([0-9A-Z]{8})", diagnostic.message_primary).group(1)
        held.set()

    conn = psycopg.connect(sys.argv[1])  # not autocommit: the UPDATE runs in a transaction
    conn.add_notice_handler(notice)
    conn.execute("select 1")

    def cancel():
        held.wait(30)
        out["cancelled_at"] = time.monotonic()
        conn.cancel_safe()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    try:
        conn.execute("update orders set status = 'psycopg' where id = 2")
        out["error"] = None
    except psycopg.Error as exc:
        out["error"] = [type(exc).__name__, exc.sqlstate, str(exc)]
        out["cancel_ms"] = (time.monotonic() - out.pop("cancelled_at")) * 1000
    canceller.join()
    try:
        conn.execute("select 1")
        out["in_failed_transaction"] = None
    except psycopg.Error as exc:
        out["in_failed_transaction"] = exc.sqlstate
    conn.rollback()
    out["after_rollback"] = conn.execute("select 1").fetchall()
    conn.close()
    print(json.dumps(out))
    """
    out = report(agent_python(code, conninfo(pg)))
    assert out["error"][:2] == ["QueryCanceled", "57014"], out
    assert out["in_failed_transaction"] == "25P02", out  # as after a server cancel: the transaction failed
    assert out["after_rollback"] == [[1]], out
    assert out["cancel_ms"] < 5000, out
    print(f"\npsycopg: cancel to QueryCanceled {out['cancel_ms']:.0f} ms")
    withdrawn, _ = settled(daemon, out["request_id"])
    check_withdrawn(daemon, withdrawn, CANCELLED)
    assert pg.psql("select status from orders where id = 2") == "new"


def test_asyncpg_timeout_cancels_the_held_update_and_the_connection_goes_on(env):
    daemon, pg, _ = env
    code = """
    import asyncio, json, re, sys, time, asyncpg
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="agent", password="x",
                                     database="postgres", ssl=False)
        out = {}
        conn.add_log_listener(lambda _, notice: out.update(
            request_id=re.search(r"request ([0-9A-Z]{8})", notice.message).group(1)))
        started = time.monotonic()
        try:
            await conn.execute("update orders set status = 'asyncpg' where id = 3", timeout=2)
            out["error"] = None
        except asyncio.TimeoutError:
            out["error"] = "timeout"
        out["seconds"] = time.monotonic() - started
        out["after"] = await conn.fetchval("select 1")
        out["id"] = await conn.fetchval("select status from orders where id = 3")
        await conn.close()
        print(json.dumps(out))
    asyncio.run(main())
    """
    out = report(agent_python(code, str(pg.port)))
    assert out["error"] == "timeout" and out["after"] == 1 and out["id"] == "new", out
    assert out["seconds"] < 7, out
    withdrawn, _ = settled(daemon, out["request_id"])
    check_withdrawn(daemon, withdrawn, CANCELLED)


def test_a_client_killed_while_held_has_its_request_withdrawn(env):
    daemon, pg, _ = env
    psql = subprocess.Popen([INTERCEPTOR, "exec", "--agent", AGENT, "--", "psql", conninfo(pg), "-X", "-At",
                             "-c", "update orders set status = 'killed' where id = 4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request = held_request(daemon)
    psql.kill()
    psql.communicate(timeout=10)
    withdrawn, took = settled(daemon, request["request_id"], timeout=5)
    assert took < 3, f"withdrawn {took:.2f}s after the kill"
    print(f"\nkilled psql: withdrawn {took * 1000:.0f} ms after SIGKILL")
    check_withdrawn(daemon, withdrawn, DISCONNECTED)
    assert pg.psql("select status from orders where id = 4") == "new"
    record = daemon.wait_for_event(lambda e: e.get("kind") == "statement"
                                   and ((e.get("outcome") or {}).get("approval") or {}).get("request_id")
                                   == request["request_id"])
    assert record["decision"] == "deny" and record["outcome"]["approval"]["withdrawn"] is True, record


# One agent process drives the rounds: it cancels its own held UPDATEs (psycopg), starts psql
# children that it SIGKILLs once held, and after each opens a NEW connection for `select 1`.
DRIVER = r"""
import json, re, signal, subprocess, sys, threading, time, psycopg

dsn = sys.argv[1]

def say(**fields):
    print(json.dumps(fields), flush=True)

def request_id(notice):
    return re.search(r"request ([0-9A-Z]{8})", notice).group(1)

def cancelled_round(row):
    conn = psycopg.connect(dsn, autocommit=True)
    held = threading.Event()
    times = {}

    def notice(diagnostic):
        times["request_id"] = request_id(diagnostic.message_primary)
        held.set()

    conn.add_notice_handler(notice)

    def cancel():
        held.wait(30)
        times["cancel"] = time.monotonic()
        conn.cancel_safe()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    try:
        conn.execute(f"update orders set status = 'round' where id = {row}")
        error = None
    except psycopg.Error as exc:
        error = exc.sqlstate
    ended = time.monotonic()
    canceller.join()
    again = conn.execute("select 1").fetchall()
    conn.close()
    return {"request_id": times["request_id"], "error": error, "cancel_ms": (ended - times["cancel"]) * 1000,
            "again": again}

def killed_round(row):
    child = subprocess.Popen(["psql", dsn, "-X", "-At", "-c", f"update orders set status = 'round' where id = {row}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    notice = child.stderr.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    return {"request_id": request_id(notice), "error": None}

def new_connection():
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select 1").fetchall()
    return rows, (time.monotonic() - started) * 1000

for command in sys.stdin:
    kind, row = command.split()
    result = cancelled_round(int(row)) if kind == "cancel" else killed_round(int(row))
    rows, ms = new_connection()
    say(kind=kind, new_rows=rows, new_ms=ms, **result)
"""


def test_fifty_abandoned_holds_leave_nothing_pending_and_slow_no_new_session(env):
    daemon, pg, workdir = env
    driver = agent_python(DRIVER, conninfo(pg))
    rounds: list[dict] = []
    try:
        for index in range(ROUNDS):
            kind = "cancel" if index % 2 == 0 else "kill"
            driver.stdin.write(f"{kind} {index % 10 + 1}\n")
            driver.stdin.flush()
            line = driver.stdout.readline()
            assert line, driver.stderr.read()[-3000:]
            result = json.loads(line)
            withdrawn, _ = settled(daemon, result["request_id"])
            result.update(state=withdrawn["state"], reason=withdrawn["decision_reason"])
            rounds.append(result)
    finally:
        driver.stdin.close()
        driver.wait(timeout=30)
    for result in rounds:
        expected = (CANCELLED, "57014") if result["kind"] == "cancel" else (DISCONNECTED, None)
        assert (result["state"], result["reason"], result.get("error")) == ("withdrawn", *expected), result
        assert result["new_rows"] == [[1]] and result["new_ms"] < 5000, result
        if result["kind"] == "cancel":
            assert result["again"] == [[1]] and result["cancel_ms"] < 5000, result
    assert len({r["request_id"] for r in rounds}) == ROUNDS

    def spread(values: list[float]) -> dict[str, float]:
        return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
                "max": round(max(values), 1)}

    figures = {
        "rounds": ROUNDS,
        "new_connection_ms": spread([r["new_ms"] for r in rounds]),
        "new_connection_ms_after_cancel": spread([r["new_ms"] for r in rounds if r["kind"] == "cancel"]),
        "new_connection_ms_after_kill": spread([r["new_ms"] for r in rounds if r["kind"] == "kill"]),
        "cancel_to_client_ms": spread([r["cancel_ms"] for r in rounds if r["kind"] == "cancel"]),
    }
    (workdir / "holds-figures.json").write_text(json.dumps({"figures": figures, "rounds": rounds}, indent=2))
    print(f"\n{ROUNDS} holds, alternately cancelled and abandoned (ms; details in {workdir / 'holds-figures.json'}):")
    for name, values in figures.items():
        if name != "rounds":
            print(f"  {name:32} min {values['min']:8.1f}  median {values['median']:8.1f}  max {values['max']:8.1f}")


class _OpeningStore(SqliteStore):
    """A store whose grant lookup (the first step of opening a request) waits until the test
    lets it go: a cancel can arrive while the request is still being opened."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = asyncio.Event()

    async def take_grant(self, grant_key: str, now: float, grant_id: str | None = None) -> Grant | None:
        if grant_id is None:
            self.entered.set()
            await self.release.wait()
        return await super().take_grant(grant_key, now, grant_id)


class _SlowOpeningProxy(Proxy):
    """The handler behind a loopback listener (no daemon, no redirect), with that store."""

    async def _broker(self, path: str) -> ApprovalBroker:
        self.store = _OpeningStore(path)
        await self.store.initialize()
        return ApprovalBroker(self.store, self.sink, poll_seconds=0.05)


def test_a_cancel_while_the_request_is_being_opened_is_not_lost(env, tmp_path):
    _, pg, _ = env
    proxy = _SlowOpeningProxy(pg, tmp_path)  # its test policy holds any DELETE for approval
    try:
        result: Future = Future()
        conn = psycopg.connect(proxy.dsn(dbname="postgres"), autocommit=True)

        def agent() -> None:
            try:
                conn.execute("delete from orders where id = 5")
                result.set_result(None)
            except psycopg.Error as exc:
                result.set_result(exc)

        threading.Thread(target=agent, daemon=True).start()
        assert proxy.store.entered.wait(30), "the DELETE was not held"
        conn.cancel_safe()  # no request id yet: the broker is still opening it
        cancels = [e for e in proxy.sink.events if e.kind == "connection" and e.operation.get("cancel")]
        assert [e.outcome["ended_hold"] for e in cancels] == [True]
        assert not result.done()
        proxy.loop.call_soon_threadsafe(proxy.store.release.set)
        error = result.result(30)
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert conn.execute("select 1").fetchall() == [(1,)]
        conn.close()
        [request] = proxy.call(proxy.broker.list(pending_only=False))
        assert (request.state.value, request.decision_reason) == ("withdrawn", CANCELLED)
        assert pg.psql("select count(*) from orders where id = 5") == "1"
    finally:
        proxy.close()


def test_a_hold_pending_when_the_daemon_stops_is_withdrawn(env):
    daemon, pg, workdir = env
    psql = subprocess.Popen([INTERCEPTOR, "exec", "--agent", AGENT, "--", "psql", conninfo(pg), "-X", "-At",
                             "-c", "update orders set status = 'stopped' where id = 6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request = held_request(daemon)
    daemon.stop()
    try:
        psql.communicate(timeout=30)
        with sqlite3.connect(workdir / "state" / "approvals.db") as store:
            [(state, body)] = store.execute("select state, body from approval_requests where request_id = ?",
                                            (request["request_id"],)).fetchall()
        assert (state, json.loads(body)["decision_reason"]) == ("withdrawn", DISCONNECTED)
        assert [e["outcome"]["state"] for e in approval_events(daemon, request["request_id"])] == [
            "pending", "withdrawn"]
    finally:
        daemon.start()
