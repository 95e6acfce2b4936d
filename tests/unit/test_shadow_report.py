"""`interceptor policy shadow report` on a real SQLite audit store holding records of the
shape the daemon writes in shadow mode (operation.shadow)."""

import json

import pytest
from click.testing import CliRunner

from audit_fixture import fill_store
from interceptor.audit import AuditEvent, open_store
from interceptor.policy.shadow_report import candidates, read, report, summarise

T0 = 1_790_000_000.0
SESSION, OTHER = "0123456789abcdef", "fedcba9876543210"


def _statement(n: int, text: str, decision: str, verdict: str, rule: str, agent: str = "demo",
               session: str = SESSION) -> AuditEvent:
    agrees = decision == verdict
    shadow = {"session": session, "policy": "cand1234", "verdict": verdict, "rule": rule, "agrees": agrees}
    if not agrees:
        shadow["reason"] = f"would {verdict} by rule {rule}"
    return AuditEvent(kind="statement", agent=agent, decision=decision, resource="demo-db", rule="demo-read-public",
                      operation={"protocol": "postgres", "database": "shop", "via": "simple", "statement": text,
                                 "shadow": shadow}, time=T0 + n)


EVENTS = [
    AuditEvent(kind="policy", agent="demo", decision="allow", rule="shadow-start", time=T0,
               operation={"action": "shadow-start", "agent": "demo", "session": SESSION,
                          "path": "/etc/interceptor/suggested.yaml", "version": "cand1234"}),
    _statement(0.5, "DROP TABLE orders", "deny", "deny", "demo-no-ddl"),  # agrees, and outside the candidate
    _statement(1, "SELECT id, total FROM orders", "allow", "allow", "read-orders"),
    _statement(2, "SELECT id, total FROM orders WHERE id = ?", "allow", "allow", "read-orders"),
    _statement(3, "SELECT * FROM secrets", "allow", "deny", "default-deny"),
    _statement(4, "UPDATE orders SET status = ? WHERE id = ?", "approve", "allow", "update-orders"),
    _statement(5, "SELECT * FROM secrets", "allow", "deny", "default-deny"),
    _statement(6, "DELETE FROM items WHERE id = ?", "approve", "deny", "default-deny"),
    _statement(7, "SELECT 1\x1b[2J", "allow", "deny", "default-deny"),
    AuditEvent(kind="http", agent="demo", decision="allow", resource="k8s", rule="pods",
               operation={"kind": "kubernetes", "verb": "get", "resource": "secrets", "namespace": "prod",
                          "name": "db", "shadow": {"session": SESSION, "policy": "cand1234", "verdict": "deny",
                                                   "rule": "default-deny", "agrees": False, "reason": "no rule"}},
               time=T0 + 8),
    AuditEvent(kind="ssh", agent="demo", decision="allow", resource="box", rule="ops",
               operation={"kind": "ssh", "request": "exec", "command": "cat /etc/shadow",
                          "shadow": {"session": SESSION, "policy": "cand1234", "verdict": "deny",
                                     "rule": "default-deny", "agrees": False, "reason": "no rule"}},
               time=T0 + 9),
    AuditEvent(kind="statement", agent="demo", decision="allow", resource="demo-db", rule="demo-read-public",
               operation={"protocol": "postgres", "statement": "SELECT 2"}, time=T0 + 10),  # before shadowing
    _statement(11, "SELECT name FROM customers", "allow", "deny", "default-deny", agent="cursor", session=OTHER),
]


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "audit.db")
    fill_store(path, EVENTS)
    return path


def _run(*args: str):
    return CliRunner().invoke(report, list(args))


def test_the_report_lists_exactly_the_operations_outside_the_candidate(store):
    result = _run("--store", store, "--agent", "demo", "--json")
    assert result.exit_code == 0, result.output
    [session] = json.loads(result.output)["sessions"]
    assert (session["agent"], session["session"], session["policy"], session["path"]) == (
        "demo", SESSION, "cand1234", "/etc/interceptor/suggested.yaml")
    assert (session["judged"], session["agree"], session["disagree"]) == (10, 3, 7)
    assert (session["first"], session["last"]) == (T0 + 0.5, T0 + 9)
    assert [(o["enforced"], o["rule"], o["what"], o["count"]) for o in session["outside"]] == [
        ("deny", "demo-no-ddl", "DROP TABLE orders", 1), ("allow", "default-deny", "SELECT * FROM secrets", 2),
        ("approve", "default-deny", "DELETE FROM items WHERE id = ?", 1),
        ("allow", "default-deny", "SELECT 1\x1b[2J", 1),
        ("allow", "default-deny", 'get secrets "db" in namespace "prod"', 1),
        ("allow", "default-deny", "exec cat /etc/shadow", 1)]
    groups = [(d["enforced"], d["verdict"], d["rule"], d["records"],
               [(o["resource"], o["what"], o["count"], o["first"], o["last"]) for o in d["operations"]])
              for d in session["disagreements"]]
    assert groups == [
        ("allow", "deny", "default-deny", 5, [("demo-db", "SELECT * FROM secrets", 2, T0 + 3, T0 + 5),
                                             ("demo-db", "SELECT 1\x1b[2J", 1, T0 + 7, T0 + 7),
                                             ("k8s", 'get secrets "db" in namespace "prod"', 1, T0 + 8, T0 + 8),
                                             ("box", "exec cat /etc/shadow", 1, T0 + 9, T0 + 9)]),
        ("approve", "allow", "update-orders", 1,
         [("demo-db", "UPDATE orders SET status = ? WHERE id = ?", 1, T0 + 4, T0 + 4)]),
        ("approve", "deny", "default-deny", 1, [("demo-db", "DELETE FROM items WHERE id = ?", 1, T0 + 6, T0 + 6)]),
    ]
    assert session["disagreements"][0]["operations"][0]["reason"] == "would deny by rule default-deny"


def test_text_groups_by_decisions_and_escapes_the_agents_text(store):
    result = _run("--store", store)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"agent demo, shadow session {SESSION}, candidate cand1234 "
                               "(/etc/interceptor/suggested.yaml): 10 records judged from ")
    assert lines[0].endswith(", 3 agree, 7 disagree")
    assert lines[1] == "  outside the candidate (it would deny them): 7 records, 6 distinct"
    assert lines[2].endswith("  demo-db: DROP TABLE orders")
    assert lines[3] == "             enforced deny, candidate rule demo-no-ddl"
    assert lines[5] == "             enforced allow, candidate rule default-deny; would deny by rule default-deny"
    first = lines.index("  enforced allow -> candidate deny by rule default-deny: 5 records, 4 distinct")
    assert lines[first + 1].startswith("         2x  ")
    assert lines[first + 1].endswith("  demo-db: SELECT * FROM secrets")
    assert lines[first + 2] == "             would deny by rule default-deny"
    assert "demo-db: SELECT 1\\x1b[2J" in result.output and "\x1b" not in result.output
    assert f"agent cursor, shadow session {OTHER}, candidate cand1234: 1 records judged" in result.output


def test_one_session_and_no_session(store):
    result = _run("--store", store, "--session", OTHER, "--json")
    assert [s["agent"] for s in json.loads(result.output)["sessions"]] == ["cursor"]
    result = _run("--store", store, "--session", "0000000000000000")
    assert result.exit_code == 0
    assert result.output == "no shadow records of session 0000000000000000\n"


def test_since_and_until_bound_the_records_read_not_the_candidates_file(store):
    opened = open_store(store)
    try:
        [one] = summarise(read(opened, "demo", T0 + 3, T0 + 6), paths=candidates(opened, "demo"))
    finally:
        opened.close()
    assert (one.judged, one.agree, one.path) == (3, 0, "/etc/interceptor/suggested.yaml")
    result = _run("--store", store, "--since", str(T0 + 3), "--until", str(T0 + 6), "--json")
    [session] = json.loads(result.output)["sessions"]
    assert (session["judged"], session["path"]) == (3, "/etc/interceptor/suggested.yaml")


def test_a_store_that_cannot_be_opened_fails(tmp_path):
    result = _run("--store", str(tmp_path / "missing" / "audit.db"))
    assert result.exit_code == 1
    assert "cannot open audit store" in result.output
