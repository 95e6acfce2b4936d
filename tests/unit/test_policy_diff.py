"""`interceptor policy diff CURRENT SUGGESTED`: the unused grants of CURRENT and the uses it refuses,
judged with the engine's own matching."""

import json
from pathlib import Path

from click.testing import CliRunner

from interceptor.policy import load_policy_text
from interceptor.policy.cli import policy
from interceptor.policy.diff import diff

DEMO = Path(__file__).resolve().parents[2] / "policy" / "default.yaml"

# What `policy suggest` would write for an analyst reading three tables and updating one, and a
# delete the demo policy does not allow.
ANALYST = """version: 1
resources:
  demo-db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  demo: {}
rules:
  - {name: read-orders, effect: approve, agents: [demo], resources: [demo-db], approval: {groups: [dba]},
     sql: {kinds: [select], tables: [public.orders], columns: [id, total]}}
  - {name: read-customers, effect: allow, agents: [demo], resources: [demo-db],
     sql: {kinds: [select], tables: [public.customers], columns: [id, name]}}
  - {name: read-items, effect: allow, agents: [demo], resources: [demo-db],
     sql: {kinds: [select], tables: [public.items], columns: [order_id, sku]}}
  - {name: update-orders, effect: approve, agents: [demo], resources: [demo-db], approval: {groups: [dba]},
     sql: {kinds: [update], tables: [public.orders], columns: [status]}}
  - {name: delete-items, effect: allow, agents: [demo], resources: [demo-db],
     sql: {kinds: [delete], tables: [public.items]}}
"""


def _run(tmp_path, current: str, suggested: str, *args: str):
    current_path, suggested_path = tmp_path / "current.yaml", tmp_path / "suggested.yaml"
    current_path.write_text(current)
    suggested_path.write_text(suggested)
    return CliRunner().invoke(policy, ["diff", str(current_path), str(suggested_path), *args])


def test_the_demo_policy_against_an_analysts_suggestion(tmp_path):
    result = _run(tmp_path, DEMO.read_text(), ANALYST)
    assert result.exit_code == 1, result.output
    unused, refused = result.output.split("used but not allowed by CURRENT:")
    unused = unused.split("unused grants in CURRENT:")[1]
    assert "demo-read-catalog (allow): sql: kinds [select], tables [pg_catalog.*, information_schema.*] on " \
           "demo-db\n      never used" in unused
    assert "demo-echo (allow): tcp on demo-echo\n      never used" in unused
    assert "demo-read-public (allow): sql: kinds [select], tables [public.*] on demo-db\n      partly used: " \
           "select public.customers (id, name); select public.items (order_id, sku); select public.orders " \
           "(id, total)\n      unused: every table matching public.* but public.customers, public.items, " \
           "public.orders\n" in unused
    assert "demo-update-orders" in unused and "partly used: update public.orders (status)" in unused
    assert "delete public.items (all columns) on demo-db (SUGGESTED allows it by rule delete-items): denied by " \
           "default-deny: no rule allows delete on public.items" in refused
    assert "update public.orders" not in refused
    assert "select public.orders (id, total) on demo-db: SUGGESTED approves it (rule read-orders), CURRENT " \
           "allows it (rule demo-read-public)" in refused


def test_json_names_what_each_grant_used(tmp_path):
    result = _run(tmp_path, DEMO.read_text(), ANALYST, "--json", "--agent", "demo")
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert out["refused"] == 1
    [agent] = out["agents"]
    grants = {g["rule"]: g for g in agent["unused"] + agent["used"]}
    assert {g["rule"] for g in agent["unused"] if g["status"] == "unused"} == {"demo-read-catalog", "demo-echo"}
    public = grants["demo-read-public"]
    assert public["status"] == "partly used"
    assert public["tables_used"] == {"public.customers": ["id", "name"], "public.items": ["order_id", "sku"],
                                     "public.orders": ["id", "total"]}
    assert public["kinds_unused"] == []
    update = grants["demo-update-orders"]
    assert update["tables_used"] == {"public.orders": ["status"]}
    assert [u["verdict"] for u in update["uses"]] == ["approve"]
    assert [(u["grant"], u["rule"], u["verdict"]) for u in agent["refused"]] == [
        ("delete-items", "default-deny", "deny")]
    assert [u["grant"] for u in agent["differs"]] == ["read-orders"]


RESOURCES = """version: 1
resources:
  db: {protocol: postgres, addresses: ["10.0.0.5:5432"]}
  k8s: {protocol: kubernetes, addresses: ["10.0.0.6:6443"]}
  box: {protocol: ssh, addresses: ["10.0.0.7:22"], options: {known_hosts: /etc/ssh/known_hosts}}
  echo: {protocol: tcp, addresses: ["10.0.0.8:7"]}
"""

CURRENT = RESOURCES + """agents:
  bot: {}
  other: {}
rules:
  - {name: no-secrets, effect: deny, agents: [bot], resources: [db], sql: {tables: [private.*]}}
  - {name: rw-sales, effect: allow, agents: [bot], resources: [db],
     sql: {kinds: [select, insert, update], tables: [sales.orders], columns: [id, total, note]}}
  - {name: report-fn, effect: allow, agents: [bot], resources: [db], sql: {functions: [sales.report, sales.audit]}}
  - {name: pods, effect: allow, agents: [bot], resources: [k8s],
     kubernetes: {verbs: [get, list, delete], resources: [pods], namespaces: [default]}}
  - {name: uptime, effect: allow, agents: [bot], resources: [box], ssh: {commands: [uptime, "df -h"]}}
  - {name: echo, effect: allow, agents: [bot], resources: [echo], tcp: true}
  - {name: others, effect: allow, agents: [other], resources: [db], sql: {kinds: [select]}}
"""

SUGGESTED = RESOURCES + """agents:
  bot: {}
rules:
  - {name: no-secrets, effect: deny, agents: [bot], resources: [db], sql: {tables: [private.*]}}
  - {name: s1, effect: allow, agents: [bot], resources: [db],
     sql: {kinds: [select], tables: [sales.orders], columns: [id, total]}}
  - {name: s2, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select], tables: [private.keys],
     columns: [id]}}
  - {name: s3, effect: allow, agents: [bot], resources: [db], sql: {functions: [sales.report]}}
  - {name: s4, effect: allow, agents: [bot], resources: [k8s],
     kubernetes: {verbs: [get, list], resources: [pods], namespaces: [default]}}
  - {name: s5, effect: allow, agents: [bot], resources: [k8s], kubernetes: {verbs: [get], resources: [secrets],
     namespaces: [default]}}
  - {name: s6, effect: allow, agents: [bot], resources: [box], ssh: {commands: [uptime, "cat /etc/passwd"]}}
"""


def test_every_protocol_is_judged_by_the_engine():
    current, suggested = load_policy_text(CURRENT), load_policy_text(SUGGESTED)
    result = diff(current, suggested, "bot")
    refused = {(u.grant, u.what, u.rule) for u in result.refused}
    assert refused == {("s2", "select private.keys (id)", "no-secrets"),
                       ("s5", 'get secrets in namespace "default"', "default-deny"),
                       ("s6", "exec cat /etc/passwd", "default-deny")}
    grants = {g.rule: g for g in result.grants}
    assert set(grants) == {"rw-sales", "report-fn", "pods", "uptime", "echo"}  # not the other agent's
    assert grants["echo"].status == "unused"
    sales = grants["rw-sales"]
    assert sales.status == "partly used"
    assert sales.kinds_unused == ("insert", "update")
    assert sales.leftover == ["kinds never used: insert, update", "columns never used: note"]
    assert grants["report-fn"].functions_used == ("sales.report",)
    assert grants["report-fn"].leftover == ["functions never called: sales.audit (called: sales.report)"]
    assert [u.what for u in grants["pods"].uses] == ['get pods in namespace "default"',
                                                     'list pods in namespace "default"']
    assert [u.what for u in grants["uptime"].uses] == ["exec uptime"]
    # the values of a block no use needed, found by the engine with the rule narrowed to each one
    assert grants["pods"].leftover == ["verbs never used: delete"]
    assert grants["uptime"].leftover == ["commands never used: df -h"]
    assert grants["uptime"].grants == "ssh: commands [uptime, df -h] on box"
    assert grants["pods"].grants == "kubernetes: verbs [get, list, delete], resources [pods], namespaces " \
                                    "[default] on k8s"
    assert grants["rw-sales"].grants == "sql: kinds [select, insert, update], tables [sales.orders], columns [id, " \
                                        "total, note] on db"


def test_nothing_refused_exits_0_and_an_unknown_agent_2(tmp_path):
    suggested = SUGGESTED.split("  - {name: s2")[0].replace("  bot: {}\n", "  bot: {}\n  other: {}\n")
    result = _run(tmp_path, CURRENT, suggested)
    assert result.exit_code == 0, result.output
    assert "used but not allowed by CURRENT:\n  (none)" in result.output
    assert "echo (allow): tcp on echo\n      never used" in result.output
    result = _run(tmp_path, CURRENT, suggested, "--agent", "nobody")
    assert result.exit_code == 2
    assert "names no agent 'nobody'" in result.output


def test_a_policy_that_does_not_load_exits_2(tmp_path):
    result = _run(tmp_path, "version: 1\nrules: [", SUGGESTED)
    assert result.exit_code == 2
    assert result.output.startswith("CURRENT ")


def test_a_grant_of_every_operation_is_not_compared():
    suggested = load_policy_text(SUGGESTED + "  - {name: all, effect: allow, agents: [bot], resources: [echo]}\n")
    result = diff(load_policy_text(CURRENT), suggested, "bot")
    assert result.skipped == ["all on echo: grants every operation, nothing to compare"]


def test_a_grant_suggested_keeps_as_it_is_is_neither_used_nor_unused(tmp_path):
    """`policy suggest` keeps the grants of the resources it did not learn: the same rule in
    both files says nothing of its use."""
    kept = ANALYST.replace('  demo-db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}\n',
                           '  demo-db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}\n'
                           '  demo-echo: {protocol: tcp, addresses: ["127.0.0.1:7007"]}\n')
    kept += "  - {name: demo-echo, effect: allow, agents: [demo], resources: [demo-echo], tcp: true}\n"
    result = _run(tmp_path, DEMO.read_text(), kept, "--json")
    [agent] = json.loads(result.output)["agents"]
    assert [g["rule"] for g in agent["kept"]] == ["demo-echo"]
    assert "demo-echo" not in {g["rule"] for g in agent["unused"] + agent["used"]}
    result = _run(tmp_path, DEMO.read_text(), kept)
    assert "grants SUGGESTED keeps as they are (not learned: no telling whether used): demo-echo" in result.output


def test_a_suggestion_that_moves_a_resource_or_changes_an_agent_is_said_and_fails(tmp_path):
    """A suggestion built from another file than the running policy moved the database to
    another port (the newcomer's run): loading it sends the credentials elsewhere."""
    current = tmp_path / "current.yaml"
    current.write_text(DEMO.read_text())
    moved = tmp_path / "moved.yaml"
    moved.write_text(DEMO.read_text().replace("127.0.0.1:5432", "127.0.0.1:5433").replace("unprotected: deny",
                                                                              "unprotected: allow"))
    result = CliRunner().invoke(policy, ["diff", str(current), str(moved)])
    assert result.exit_code == 1
    assert "resources, agents, deny and mask rules SUGGESTED defines otherwise" in result.output
    assert "resource demo-db: addresses differ" in result.output and "agent demo: unprotected differ" in result.output
    same = CliRunner().invoke(policy, ["diff", str(current), str(current), "--json"])
    assert same.exit_code == 0 and json.loads(same.output)["definitions"] == []
