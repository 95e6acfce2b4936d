"""`interceptor policy suggest` (issue 20): the policy and tests made from learn records of the
contract's shape (/tmp/h/contract20.md), checked by loading them, by `policy check` and `policy
test`, and by judging what happened and what did not with the engine."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from audit_fixture import fill_store
from interceptor.control import ControlMethod
from interceptor.handlers.postgres.record import redact_literals
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy.cases import run_cases
from interceptor.policy.catalog import Catalog
from interceptor.policy.cli import policy
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import load_policy_text
from interceptor.policy.model import Rule
from interceptor.policy.suggest import NO_TABLE, PLACEHOLDER_GROUP, SuggestError, glob_escape, iso, suggest

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "policy" / "default.yaml").read_text()
SESSION = "0123456789abcdef"
T0 = 1_796_050_000.0
CATALOG = Catalog.from_columns({"public.customers": ["id", "name", "email", "card_number"],
                                "public.orders": ["id", "customer_id", "status", "total"],
                                "public.products": ["sku", "price"], "public.payments": ["id", "amount"]})


def start(agent="demo", resources=("demo-db",), session=SESSION):
    return {"kind": "policy", "agent": agent, "decision": "allow", "rule": "learn-start", "time": T0 - 60,
            "operation": {"action": "learn-start", "agent": agent, "session": session,
                          "resources": None if resources is None else list(resources), "until": None}}


def action(kind, table, columns, rule="learn:demo"):
    return {"action": kind, "table": table, "columns": columns, "rule": rule, "verdict": "allow"}


def call(name, resolves, rule="learn:demo"):
    return {"function": name, "resolves": resolves, "rule": rule, "verdict": "allow"}


def statement(text, judged, at, kind="select", decision="allow", rule="learn:demo", agent="demo",
              resource="demo-db", approval=None):
    outcome = {"rows": 1, "command": kind.upper(), "error": None}
    if approval is not None:
        outcome["approval"] = approval
    return {"kind": "statement", "agent": agent, "resource": resource, "decision": decision, "rule": rule,
            "time": T0 + at, "operation": {"protocol": "postgres", "database": "demo", "via": "simple",
                                           "statement": text, "learn": SESSION,
                                           "analysis": [{"kind": kind, "verdict": decision, "rule": rule,
                                                         "judged": judged}]},
            "outcome": outcome}


def analyst():
    """The demo's scripted analyst: three tables read, one updated; a DROP refused by the
    demo's deny rule; a transaction (allowed without a rule)."""
    return [
        start(),
        statement("SELECT id, name FROM customers WHERE id = ?",
                  [action("select", "public.customers", ["id", "name"], "demo-read-public")], 1),
        statement("SELECT id, status, total FROM orders WHERE customer_id = ?",
                  [action("select", "public.orders", ["id", "status", "total", "customer_id"], "demo-read-public")], 2),
        statement("SELECT sku, price FROM products", [action("select", "public.products", ["sku", "price"])], 3),
        statement("SELECT sku, price FROM products", [action("select", "public.products", ["sku", "price"])], 4),
        statement("BEGIN", [], 5, kind="transaction", rule="builtin-transaction-control"),
        statement("UPDATE orders SET status = ? WHERE id = ?",
                  [action("select", "public.orders", ["id"], "demo-read-public"),
                   action("update", "public.orders", ["status"], "demo-update-orders")],
                  6, kind="update", decision="approve", rule="demo-update-orders",
                  approval={"approved": True, "approver": "alice"}),
        statement("DROP TABLE orders", [], 7, kind="drop", decision="deny", rule="demo-no-ddl"),
    ]


def decide(policy, sql, agent="demo", resource="demo-db"):
    engine = PolicyEngine(policy)
    return engine.decide(Request(Subject(agent), resource, SqlQuery(sql, catalog=CATALOG)))


def rules_of(text):
    return {rule["name"]: rule for rule in yaml.safe_load(text)["rules"]}


def write(tmp_path, made, name="suggested.yaml"):
    (tmp_path / name).write_text(made.policy)
    tests = tmp_path / name.replace(".yaml", ".tests.yaml")
    tests.write_text(made.tests)
    return tmp_path / name, tests


def test_the_analyst_gets_exactly_what_it_did(tmp_path):
    made = suggest(analyst(), DEMO, "default.yaml", "demo", policy_name="suggested.yaml")
    loaded = load_policy_text(made.policy)
    for sql in ("SELECT id, name FROM customers WHERE id = 1", "SELECT sku, price FROM products",
                "SELECT id, status, total FROM orders WHERE customer_id = 7",
                "UPDATE orders SET status = 'shipped' WHERE id = 7"):
        assert decide(loaded, sql).verdict.value == "approve", sql
    for sql in ("SELECT id, amount FROM payments", "DELETE FROM orders", "UPDATE customers SET name = 'x'",
                "SELECT email FROM customers", "UPDATE orders SET total = 0 WHERE id = 7", "DROP TABLE orders"):
        assert decide(loaded, sql).verdict.value == "deny", sql
    rules = rules_of(made.policy)
    assert rules["suggest-demo-db-select-public.customers"]["sql"] == {
        "kinds": ["select"], "tables": ["public.customers"], "columns": ["id", "name"]}
    assert rules["suggest-demo-db-update-public.orders"]["sql"]["columns"] == ["status"]
    assert rules["suggest-demo-db-select-public.orders"]["approval"] == {"groups": ["dba-oncall"]}
    # the demo's deny and mask rules stay, its grants to demo on demo-db go, demo-echo (not learned) stays
    assert {"demo-no-ddl", "demo-mask-card", "demo-mask-email", "demo-echo"} <= set(rules)
    assert not {"demo-read-public", "demo-read-catalog", "demo-update-orders"} & set(rules)
    assert made.used == 6 and made.skipped == {"refused even while learning: never ran": 1}
    assert "# Seen but refused even while learning" in made.policy and "DROP TABLE orders" in made.policy
    assert f"2 operations, first {iso(T0 + 3)}, last {iso(T0 + 4)}; e.g. SELECT sku, price FROM products" \
        in made.policy
    path, tests = write(tmp_path, made)
    checked = CliRunner().invoke(policy, ["check", str(path)])
    assert checked.exit_code == 0, checked.output
    results = run_cases(tests)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    denied = [r for r in results if r.expected["verdict"] == "deny"]
    assert {r.name for r in denied} == {"demo-db: a write on public.customers, only read",
                                        "demo-db: a read of public.not_learned, not learned"}


def test_allow_effect_and_masks_kept(tmp_path):
    events = [start(), statement("SELECT id, email FROM customers",
                                 [action("select", "public.customers", ["id", "email"], "demo-read-public")], 1)]
    made = suggest(events, DEMO, "default.yaml", "demo", effect="allow")
    decision = decide(load_policy_text(made.policy), "SELECT id, email FROM customers")
    assert decision.verdict.value == "allow"
    assert [m.columns for m in decision.masks if m.columns] == [("public.customers.email",)]
    assert "approval" not in rules_of(made.policy)["suggest-demo-db-select-public.customers"]
    assert '"masks": ["public.customers.email"]' in made.tests
    _, tests = write(tmp_path, made)
    assert all(r.passed for r in run_cases(tests))


def test_unknown_columns_leave_the_rule_without_columns():
    events = [start(), statement("SELECT * FROM orders", [action("select", "public.orders", None)], 1),
              statement("SELECT id FROM orders", [action("select", "public.orders", ["id"])], 2)]
    made = suggest(events, DEMO, "default.yaml", "demo")
    assert rules_of(made.policy)["suggest-demo-db-select-public.orders"]["sql"] == {
        "kinds": ["select"], "tables": ["public.orders"]}


BASE = """
version: 1
resources:
  db1: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  db2: {protocol: postgres, addresses: ["127.0.0.1:5433"]}
  echo: {protocol: tcp, addresses: ["127.0.0.1:7007"]}
agents:
  a: {uids: [1001]}
  b: {uids: [1002]}
  c: {uids: [1003]}
rules:
  - {name: shared, effect: allow, agents: [a, b], resources: [db1], sql: {kinds: [select]}}
  - {name: everyone, effect: allow, resources: [db1], sql: {kinds: [select]}}
  - {name: anywhere, effect: allow, agents: [a], sql: {kinds: [select]}}
  - {name: connect-all, effect: allow, agents: [a]}
  - {name: no-drop, effect: deny, agents: [a], sql: {kinds: [drop]}}
  - {name: hide, effect: mask, resources: [db1], mask: {columns: [public.t.secret]}}
"""


def test_base_grants_are_narrowed_not_lost():
    events = [start("a", ["db1"]), statement("SELECT x FROM t", [action("select", "public.t", ["x"])], 1,
                                             agent="a", resource="db1")]
    made = suggest(events, BASE, "base.yaml", "a")
    rules = rules_of(made.policy)
    assert rules["shared"]["agents"] == ["b"]
    assert rules["everyone"]["agents"] == ["b", "c"]
    assert rules["anywhere"] == {"name": "anywhere", "effect": "allow", "agents": ["a"], "resources": ["db2"],
                                 "sql": {"kinds": ["select"]}}
    assert rules["connect-all"]["resources"] == ["db2", "echo"]
    assert rules["no-drop"]["sql"] == {"kinds": ["drop"]} and "hide" in rules
    assert rules["suggest-db1-select-public.t"]["approval"] == {"groups": [PLACEHOLDER_GROUP]}
    assert f"{PLACEHOLDER_GROUP} is a placeholder" in made.policy
    engine = PolicyEngine(load_policy_text(made.policy))
    table = Catalog.from_columns({"public.t": ["x", "y", "secret"]})
    assert engine.decide(Request(Subject("a"), "db1", SqlQuery("SELECT x FROM t", catalog=table))).verdict.value \
        == "approve"
    assert engine.decide(Request(Subject("a"), "db1", SqlQuery("SELECT y FROM t", catalog=table))).verdict.value \
        == "deny"
    assert engine.decide(Request(Subject("b"), "db1", SqlQuery("SELECT y FROM t", catalog=table))).verdict.value \
        == "allow"
    assert engine.decide(Request(Subject("a"), "db2", SqlQuery("SELECT y FROM t", catalog=table))).verdict.value \
        == "allow"


def test_functions_tableless_selects_and_globs():
    events = [start("a", ["db1"]),
              statement('SELECT "we*rd".x, audit.stamp(x) FROM "we*rd"',
                        [action("select", "public.we*rd", ["x"]), call("stamp", ["audit.stamp"])], 1,
                        agent="a", resource="db1"),
              statement("SELECT audit.stamp(?)", [action("select", None, None), call("audit.stamp", ["audit.stamp"])],
                        2, agent="a", resource="db1")]
    made = suggest(events, BASE, "base.yaml", "a", effect="allow")
    rules = rules_of(made.policy)
    assert rules["suggest-db1-select-public.we-rd"]["sql"] == {"kinds": ["select"], "tables": ["public.we[*]rd"],
                                                               "columns": ["x"]}
    assert rules["suggest-db1-call-audit.stamp"]["sql"] == {"kinds": ["select"], "functions": ["audit.stamp"]}
    assert not any(rule.get("sql", {}).get("tables") == [NO_TABLE] for rule in rules.values())
    assert "2 statement(s) calling functions have no case" in made.tests
    assert glob_escape("a?b[c]*") == "a[?]b[[]c][*]"


def test_a_tableless_select_alone_gets_a_rule_that_names_no_table():
    events = [start("a", ["db1"]), statement("SELECT ?", [action("select", None, None)], 1, agent="a",
                                             resource="db1")]
    made = suggest(events, BASE, "base.yaml", "a")
    rule = rules_of(made.policy)["suggest-db1-select-without-table"]
    assert rule["sql"] == {"kinds": ["select"], "tables": [NO_TABLE]}
    assert load_policy_text(made.policy).rules


def test_declined_approvals_and_unlearned_records_grant_nothing():
    declined = statement("DELETE FROM t", [action("delete", "public.t", None)], 1, kind="delete",
                         decision="approve", agent="a", resource="db1", approval={"approved": False})
    other = statement("SELECT x FROM t", [action("select", "public.t", ["x"])], 2, agent="a", resource="db1")
    other["operation"] = {k: v for k, v in other["operation"].items() if k != "learn"}
    learned = statement("SELECT y FROM t", [action("select", "public.t", ["y"])], 3, agent="a", resource="db1")
    made = suggest([start("a", ["db1"]), declined, other, learned], BASE, "base.yaml", "a")
    rules = rules_of(made.policy)
    assert rules["suggest-db1-select-public.t"]["sql"]["columns"] == ["y"]
    assert not any("delete" in name for name in rules)
    assert "DELETE FROM t" in made.policy.split("version:")[0]


def test_no_learn_record_is_an_error():
    with pytest.raises(SuggestError, match="no learn record of agent 'a'"):
        suggest([start("a", ["db1"])], BASE, "base.yaml", "a")
    with pytest.raises(SuggestError, match="agent 'zed' is not in the base policy"):
        suggest([], BASE, "base.yaml", "zed")


OTHERS = """
version: 1
resources:
  echo: {protocol: tcp, addresses: ["127.0.0.1:7007"]}
  api: {protocol: http, addresses: ["api.example.com:443"]}
  cluster: {protocol: kubernetes, addresses: ["10.96.0.1:443"]}
  tools: {protocol: mcp, addresses: ["mcp.example.com:443"]}
  web1: {protocol: ssh, addresses: ["web1.example.com:22"], options: {known_hosts: /etc/interceptor/ssh/known_hosts}}
agents:
  a: {uids: [1001]}
rules:
  - {name: all, effect: allow, agents: [a]}
"""


def learned(resource, kind, operation, at, rule="learn:a"):
    return {"kind": kind, "agent": "a", "resource": resource, "decision": "allow", "rule": rule, "time": T0 + at,
            "operation": {**operation, "learn": SESSION}, "outcome": {}}


def test_other_protocols(tmp_path):
    events = [
        start("a", None),
        learned("echo", "connection", {"protocol": "tcp", "dst": "127.0.0.1:7007"}, 1),
        learned("api", "request", {"kind": "http", "method": "GET", "host": "api.example.com", "path": "/v1/reports",
                                   "query": [], "target": "/v1/reports"}, 2),
        learned("api", "request", {"kind": "http", "method": "POST", "host": "api.example.com",
                                   "path": "/v1/reports", "query": [], "target": "/v1/reports"}, 3),
        learned("cluster", "request", {"kind": "kubernetes", "verb": "get", "api_version": "v1", "resource": "pods",
                                       "namespace": "prod", "name": "web-1",
                                       "path": "/api/v1/namespaces/prod/pods/web-1"}, 4),
        learned("cluster", "request", {"kind": "kubernetes", "verb": "list", "api_version": "v1",
                                       "resource": "pods", "namespace": "prod",
                                       "path": "/api/v1/namespaces/prod/pods"}, 5),
        learned("cluster", "request", {"kind": "kubernetes", "verb": "get", "path": "/version"}, 6,
                rule="builtin-kubernetes-discovery"),
        learned("tools", "request", {"kind": "mcp", "method": "tools/call", "tool": "read_file",
                                     "arguments": "{}"}, 7),
        learned("web1", "ssh", {"kind": "ssh", "request": "exec", "command": "systemctl status nginx"}, 8),
        learned("web1", "ssh", {"kind": "ssh", "request": "read", "path": "/var/log/syslog", "action": "open"}, 9),
        learned("web1", "ssh", {"kind": "ssh", "request": "exec", "command": "journalctl -u nginx | tail"}, 10),
    ]
    made = suggest(events, OTHERS, "others.yaml", "a", effect="allow")
    rules = rules_of(made.policy)
    assert "all" not in rules
    assert rules["suggest-echo-tcp"]["tcp"] is True
    assert rules["suggest-api-path-v1-reports"]["http"] == {"paths": ["/v1/reports"], "hosts": ["api.example.com"],
                                                            "methods": ["GET", "POST"]}
    assert rules["suggest-cluster-prod-pods-get"]["kubernetes"] == {
        "api_groups": [""], "resources": ["pods"], "namespaces": ["prod"], "names": ["web-1"], "verbs": ["get"]}
    assert rules["suggest-cluster-prod-pods-list"]["kubernetes"] == {
        "api_groups": [""], "resources": ["pods"], "namespaces": ["prod"], "verbs": ["list"]}
    assert rules["suggest-tools-tools"]["mcp"] == {"tools": ["read_file"]}
    assert rules["suggest-web1-commands"]["ssh"] == {"commands": ["systemctl status nginx"]}
    assert rules["suggest-web1-read"]["ssh"] == {"read": ["/var/log/syslog"]}
    assert rules["suggest-web1-shell"]["ssh"] == {"shell": True}  # a pipeline is shell class
    assert "e.g. journalctl -u nginx | tail" in made.policy
    assert made.skipped == {"allowed without a rule (builtin)": 1}
    _, tests = write(tmp_path, made)
    results = run_cases(tests)
    assert len(results) == 13 and all(r.passed for r in results), [r for r in results if not r.passed]


def test_the_command_reads_the_trail_and_writes_both_files(tmp_path):
    store = tmp_path / "audit.db"
    fill_store(store, analyst())
    base = tmp_path / "base.yaml"
    base.write_text(DEMO)
    out = tmp_path / "out" / "suggested.yaml"
    out.parent.mkdir()
    runner = CliRunner()
    result = runner.invoke(policy, ["suggest", "--agent", "demo", "--store", str(store), "--policy", str(base),
                                    "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} and its tests {out.parent / 'suggested.tests.yaml'}" in result.output
    assert runner.invoke(policy, ["check", str(out)]).exit_code == 0
    tested = runner.invoke(policy, ["test", str(out.parent / "suggested.tests.yaml")])
    assert tested.exit_code == 0 and "6 passed, 0 failed" in tested.output, tested.output
    printed = runner.invoke(policy, ["suggest", "--agent", "demo", "--store", str(store), "--policy", str(base),
                                     "--effect", "allow", "--session", SESSION])
    assert printed.exit_code == 0 and '"effect": "allow"' in printed.output and "tests not written" in printed.output
    none = runner.invoke(policy, ["suggest", "--agent", "demo", "--store", str(store), "--policy", str(base),
                                  "--since", str(T0 + 100)])
    assert none.exit_code == 1 and "no learn record of agent 'demo'" in none.output
    assert f"the trail has its learn runs {SESSION} (started " in none.output and "widen --since/--until" in none.output


def test_from_the_engines_own_analysis(tmp_path):
    """Records as the daemon writes them while learning: the analysis is the learning engine's
    `Decision.details` (the demo policy plus the rule `learn:demo`), the text redacted."""
    base = load_policy_text(DEMO)
    learning = PolicyEngine(replace(base, rules=(*base.rules, Rule("learn:demo", "allow", agents=("demo",),
                                                                      resources=("demo-db",)))))
    script = ["SELECT id, name FROM customers WHERE id = 42", "SELECT * FROM products WHERE price > 10.5",
              "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
              "UPDATE orders SET status = 'shipped' WHERE id = 7", "SELECT 1", "BEGIN", "DROP TABLE orders"]
    events = [start()]
    for at, sql in enumerate(script):
        decision = learning.decide(Request(Subject("demo"), "demo-db", SqlQuery(sql, catalog=CATALOG)))
        approved = {"approved": True, "approver": "alice"} if decision.verdict.value == "approve" else None
        record = statement(redact_literals(sql), [], at, decision=decision.verdict.value, rule=decision.rule,
                           approval=approved)
        record["operation"]["analysis"] = [{key: detail[key] for key in ("kind", "verdict", "rule", "judged")}
                                           for detail in decision.details]
        events.append(record)
    made = suggest(events, DEMO, "default.yaml", "demo", effect="allow")
    loaded = load_policy_text(made.policy)
    for sql in script[:-1]:  # the update keeps the demo's approval, whatever --effect says
        assert decide(loaded, sql).verdict.value == ("approve" if sql.startswith("UPDATE") else "allow"), sql
    update = rules_of(made.policy)["suggest-demo-db-update-public.orders"]
    assert update["approval"] == {"groups": ["dba-oncall"], "grant": "one-shot", "timeout_seconds": 300}
    assert "# Approve, with the approval of the base's rule demo-update-orders" in made.policy
    for sql in ("SELECT id FROM payments", "DELETE FROM products", "UPDATE orders SET total = 0",
                "SELECT email FROM customers", "DROP TABLE orders"):
        assert decide(loaded, sql).verdict.value == "deny", sql
    assert rules_of(made.policy)["suggest-demo-db-select-public.products"]["sql"]["columns"] == ["price", "sku"]
    _, tests = write(tmp_path, made)
    results = run_cases(tests)
    assert len(results) == 7 and all(r.passed for r in results), [r for r in results if not r.passed]


def test_redacted_text_the_analyser_cannot_read_and_opaque_statements(tmp_path):
    base = BASE.replace("rules:\n", "rules:\n  - {name: maint, effect: allow, agents: [a], resources: [db1], "
                                    "sql: {kinds: [vacuum]}}\n")
    events = [start("a", ["db1"]),
              statement("SELECT x FROM t WHERE x = ?::int", [action("select", "public.t", ["x"])], 1, agent="a",
                        resource="db1"),
              statement("VACUUM t", [], 2, kind="vacuum", rule="maint", agent="a", resource="db1")]
    made = suggest(events, base, "base.yaml", "a", effect="allow")
    rules = rules_of(made.policy)
    assert "maint" not in rules and rules["suggest-db1-vacuum-statements"]["sql"] == {"kinds": ["vacuum"]}
    assert "\"sql\": \"SELECT x FROM t WHERE x = '0'::int\"" in made.tests
    engine = PolicyEngine(load_policy_text(made.policy))
    assert engine.decide(Request(Subject("a"), "db1", SqlQuery("VACUUM t"))).verdict.value == "allow"
    _, tests = write(tmp_path, made)
    assert all(r.passed for r in run_cases(tests))


def test_one_session_of_several():
    other = "fedcba9876543210"
    second = statement("SELECT y FROM u", [action("select", "public.u", ["y"])], 2, agent="a", resource="db2")
    second["operation"]["learn"] = other
    events = [start("a", ["db1"]), start("a", ["db2"], session=other), second,
              statement("SELECT x FROM t", [action("select", "public.t", ["x"])], 1, agent="a", resource="db1")]
    rules = rules_of(suggest(events, BASE, "base.yaml", "a", session=SESSION).policy)
    assert "suggest-db1-select-public.t" in rules and not any("db2-select" in name for name in rules)
    assert rules["anywhere"]["resources"] == ["db2"]  # db2 was not learned in this session: a keeps it there
    both = rules_of(suggest(events, BASE, "base.yaml", "a").policy)
    assert {"suggest-db1-select-public.t", "suggest-db2-select-public.u"} <= set(both) and "anywhere" not in both


def test_a_connection_where_nothing_needed_a_rule_is_kept(tmp_path):
    connection = {"kind": "connection", "agent": "a", "resource": "db2", "decision": "allow", "rule": "learn:a",
                  "time": T0 + 2, "operation": {"protocol": "postgres", "dst": "127.0.0.1:5433", "stage": "session",
                                                "learn": SESSION}, "outcome": {}}
    events = [start("a", ["db1", "db2"]), connection, dict(connection, resource="db1"),
              statement("BEGIN", [], 1, kind="transaction", rule="builtin-transaction-control", agent="a",
                        resource="db2"),
              statement("SELECT x FROM t", [action("select", "public.t", ["x"])], 3, agent="a", resource="db1")]
    made = suggest(events, BASE, "base.yaml", "a", effect="allow")
    rules = rules_of(made.policy)
    assert rules["suggest-db2-connection"]["tcp"] is True and "suggest-db1-connection" not in rules
    engine = PolicyEngine(load_policy_text(made.policy))
    assert engine.decide(Request(Subject("a"), "db2", SqlQuery("SELECT x FROM t"))).verdict.value == "deny"
    _, tests = write(tmp_path, made)
    assert all(r.passed for r in run_cases(tests))


class _Daemon:
    """What `policy suggest` asks the running daemon: the file its policy was loaded from."""

    def __init__(self, path, version):
        self.answer = {"policy": {"path": str(path), "version": version}}

    def call(self, method, **params):
        assert method is ControlMethod.STATUS
        return self.answer


def test_the_base_is_the_policy_the_daemon_runs_and_a_changed_file_is_said(tmp_path):
    """Not the settings' file: a daemon started with --policy, or reloaded from another file,
    runs that one, and a suggestion from another base would move its resources."""
    store = tmp_path / "audit.db"
    fill_store(store, analyst())
    running = tmp_path / "running.yaml"
    running.write_text(DEMO)
    version = load_policy_text(DEMO).version
    args = ["suggest", "--agent", "demo", "--store", str(store)]
    result = CliRunner().invoke(policy, args, obj={"control": _Daemon(running, version)})
    assert result.exit_code == 0, result.output
    assert f"# Base: {running} (version {version})" in result.output and "warning" not in result.output
    changed = CliRunner().invoke(policy, args, obj={"control": _Daemon(running, "0ld")})
    assert f"warning: {running} changed since the daemon loaded it (running version 0ld)" in changed.output
