"""Learn mode, end to end (issue 20), through the kernel redirect against a real PostgreSQL.

A scripted analyst reads three tables and updates one, under the demo policy
(policy/default.yaml, pointed at this test's server). In learn mode its update, which no rule
of the demo policy allows, is allowed and recorded; `policy suggest` proposes the policy that
allows exactly what it did; loaded with `policy reload`, that policy lets the same script run
unchanged and denies another table and a write; `policy diff` against the demo policy lists
the grants the analyst never used; and a shadow run of the suggested policy beside the demo
policy reports exactly the statements outside it.

The tests run in order: each step uses what the one before left (the trail, the files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import INTERCEPTOR, Daemon, running_daemon
from pg_fixture import PgServer, write_credentials

PASSWORD = "learn-upstream-pw"
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = """
create table customers (id int primary key, name text, email text, card_number text);
create table orders (id int primary key, customer_id int references customers, amount numeric, status text);
create table products (id int primary key, name text, price numeric);
create table payments (id int primary key, order_id int, iban text);
insert into customers values (1, 'Ada', 'ada@example.com', '4111 1111 1111 1111'),
                             (2, 'Grace', 'grace@example.com', '5500 0000 0000 0004');
insert into orders values (10, 1, 99.50, 'new'), (11, 2, 12.00, 'shipped');
insert into products values (1, 'kettle', 30), (2, 'teapot', 18);
insert into payments values (1, 10, 'DE89 3704 0044 0532 0130 00');
"""
# The analyst's task: three tables read, one updated. Each statement runs on its own (an
# agent reads an error and goes on), so the same script runs under every policy below.
SCRIPT = [
    "SELECT id, name, email FROM customers ORDER BY id",
    "SELECT id, customer_id, amount, status FROM orders WHERE status = 'new'",
    "SELECT name, price FROM products ORDER BY name",
    "UPDATE products SET price = 32.5 WHERE id = 1",
]
ANOTHER_TABLE = "SELECT id, iban FROM payments"
A_WRITE = "DELETE FROM orders WHERE id = 11"
ANALYST = """
import json, sys
import psycopg
results = []
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    for sql in json.loads(sys.argv[2]):
        try:
            cursor = conn.execute(sql)
            rows = cursor.fetchall() if cursor.description else []
            results.append({"ok": True, "rows": [list(map(str, r)) for r in rows]})
        except psycopg.Error as exc:
            results.append({"ok": False, "error": str(exc).splitlines()[0]})
print(json.dumps(results))
"""


def demo_policy(pg: PgServer, credentials: Path) -> str:
    """The shipped demo policy, its database pointed at `pg`, its agent without an identity
    (this test has no issuer), every rule as shipped."""
    policy = yaml.safe_load((ROOT / "policy" / "default.yaml").read_text())
    policy["resources"]["demo-db"].update(addresses=[f"127.0.0.1:{pg.port}"],
                                          credentials={"from": "file", "path": str(credentials)})
    policy["agents"]["demo"] = {"unprotected": "deny"}
    return yaml.safe_dump(policy, sort_keys=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("learn")
    with PgServer(user="owner", password=PASSWORD) as pg:
        pg.psql(SCHEMA)
        policy = workdir / "demo.yaml"
        policy.write_text(demo_policy(pg, write_credentials(workdir / "db-credentials", "owner", PASSWORD)))
        with running_daemon(workdir, policy) as daemon:
            yield daemon, pg, workdir


def analyst(pg: PgServer, statements: list[str]) -> list[dict[str, Any]]:
    """The statements run by the analyst (agent demo) through the kernel redirect: one result each."""
    conninfo = f"host=127.0.0.1 port={pg.port} dbname=postgres user=agent password=ignored sslmode=disable"
    done = subprocess.run([INTERCEPTOR, "exec", "--agent", "demo", "--", sys.executable, "-c",
                           textwrap.dedent(ANALYST), conninfo, json.dumps(statements)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def cli_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(daemon.cli(*args, "--json").stdout)


def statements(daemon: Daemon, since: float) -> list[dict[str, Any]]:
    return [e for e in daemon.audit_events("statement") if e["agent"] == "demo" and e["time"] >= since]


def test_learn_mode_allows_and_marks_what_no_rule_allows(env: Any) -> None:
    daemon, pg, workdir = env
    assert not analyst(pg, SCRIPT)[3]["ok"]  # the demo policy has no rule for the update
    started = cli_json(daemon, "learn", "start", "--agent", "demo", "--for", "10m")
    assert cli_json(daemon, "learn", "status")["learning"][0]["session"] == started["session"]
    results = analyst(pg, SCRIPT)
    assert [r["ok"] for r in results] == [True] * 4, results
    assert results[0]["rows"][0][2] != "ada@example.com"  # demo-mask-email masks while learning too
    assert [r["ok"] for r in analyst(pg, ["DROP TABLE payments"])] == [False]  # demo-no-ddl still denies
    stopped = cli_json(daemon, "learn", "stop", "--agent", "demo")
    assert stopped["why"] == "stopped"
    records = statements(daemon, started["started"])
    learned = [r for r in records if r["operation"].get("learn") == started["session"]]
    assert len(learned) == len(records) == 5
    update = next(r for r in learned if r["operation"]["statement"].startswith("UPDATE"))
    assert (update["decision"], update["rule"]) == ("allow", "learn:demo")
    assert update["operation"]["analysis"][0]["judged"][0] == {
        "action": "update", "table": "public.products", "columns": ["price"], "rule": "learn:demo",
        "verdict": "allow"}
    assert not analyst(pg, SCRIPT)[3]["ok"]  # stopped: the demo policy alone decides again


def test_learning_ends_by_itself_when_its_time_runs_out(env: Any) -> None:
    daemon, _, _ = env
    started = cli_json(daemon, "learn", "start", "--agent", "demo", "--for", "1s")
    deadline = time.monotonic() + 15
    while cli_json(daemon, "learn", "status")["learning"] and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = cli_json(daemon, "learn", "status")["ended"][-1]
    assert (ended["session"], ended["why"]) == (started["session"], "expired")
    assert cli_json(daemon, "status")["learn"]["ended"][-1]["why"] == "expired"
    assert f"session {started['session']}) ended: its time ran out" in daemon.log.read_text()
    daemon.wait_for_event(lambda e: e.get("rule") == "learn-expired"
                          and e["operation"]["session"] == started["session"])


def test_suggest_writes_the_policy_of_exactly_what_was_learned(env: Any) -> None:
    daemon, _, workdir = env
    suggested = workdir / "suggested.yaml"
    daemon.cli("policy", "suggest", "--agent", "demo", "--effect", "allow", "-o", str(suggested))
    assert "ok" in daemon.cli("policy", "check", str(suggested)).stdout
    assert " 0 failed" in daemon.cli("policy", "test", str(workdir / "suggested.tests.yaml")).stdout
    rules = yaml.safe_load(suggested.read_text())["rules"]
    grants = sorted((r["sql"].get("kinds", []), r["sql"].get("tables", []), r["sql"].get("columns"))
                    for r in rules if r["effect"] == "allow" and "sql" in r)
    assert grants == [
        (["select"], ["public.customers"], ["email", "id", "name"]),
        (["select"], ["public.orders"], ["amount", "customer_id", "id", "status"]),
        (["select"], ["public.products"], ["id", "name", "price"]),
        (["update"], ["public.products"], ["price"]),
    ]
    names = {r["name"] for r in rules}
    assert {"demo-no-ddl", "demo-mask-card", "demo-mask-email"} <= names  # deny and mask rules kept
    assert not {"demo-read-public", "demo-read-catalog", "demo-update-orders", "demo-echo"} & names


def test_diff_against_the_demo_policy_lists_the_unused_grants(env: Any) -> None:
    daemon, _, workdir = env
    done = daemon.cli("policy", "diff", str(daemon.policy), str(workdir / "suggested.yaml"), "--json", check=False)
    assert done.returncode == 1, done.stderr  # the update was used and the demo policy refuses it
    diff = json.loads(done.stdout)
    text = json.dumps(diff)
    for unused in ("demo-read-catalog", "demo-update-orders", "demo-echo", "demo-read-public"):
        assert unused in text
    human = daemon.cli("policy", "diff", str(daemon.policy), str(workdir / "suggested.yaml"), check=False).stdout
    assert "unused grants" in human and "used but not allowed" in human and "public.products" in human


def test_the_suggested_policy_runs_the_script_unchanged_and_denies_the_rest(env: Any) -> None:
    daemon, pg, workdir = env
    daemon.cli("policy", "reload", str(workdir / "suggested.yaml"))
    try:
        results = analyst(pg, SCRIPT + [ANOTHER_TABLE, A_WRITE])
    finally:
        daemon.cli("policy", "reload", str(daemon.policy))
    assert [r["ok"] for r in results] == [True, True, True, True, False, False], results
    assert results[0]["rows"][0][2] != "ada@example.com"  # the mask rules came along
    assert "denied" in results[4]["error"] and "denied" in results[5]["error"]


def test_a_shadow_run_reports_exactly_the_statements_outside_the_candidate(env: Any) -> None:
    daemon, pg, workdir = env
    run = cli_json(daemon, "policy", "shadow", "--agent", "demo", str(workdir / "suggested.yaml"))
    assert cli_json(daemon, "policy", "shadow", "status")[0]["session"] == run["session"]
    results = analyst(pg, SCRIPT + [ANOTHER_TABLE, A_WRITE])
    daemon.cli("policy", "shadow", "stop", "--agent", "demo")
    # enforced: the demo policy (the update and the delete denied, payments allowed)
    assert [r["ok"] for r in results] == [True, True, True, False, True, False], results
    report = cli_json(daemon, "policy", "shadow", "report", "--session", run["session"])
    (session,) = report["sessions"]
    assert (session["judged"], session["agree"]) == (6, 4)  # the three reads, and the DELETE both deny
    outside = {(o["what"], o["enforced"]) for o in session["outside"]}
    assert outside == {("SELECT id, iban FROM payments", "allow"), ("DELETE FROM orders WHERE id = ?", "deny")}
    widened = {o["what"] for d in session["disagreements"] if d["verdict"] == "allow" for o in d["operations"]}
    assert widened == {"UPDATE products SET price = ? WHERE id = ?"}
    human = daemon.cli("policy", "shadow", "report", "--session", run["session"]).stdout
    assert "outside the candidate" in human and "SELECT id, iban FROM payments" in human
