"""Issue 20 attacks on `policy suggest`, `policy diff` and `policy shadow report`: records of
the real shape (the real engine under learn mode decides, `marked` makes the record's
operation, a real SQLite store holds them), read back by the click commands; what an agent
controls in the trail (methods, hosts, names) must never widen the suggested policy nor break
the files written."""

import json

from click.testing import CliRunner
from audit_fixture import fill_store

from interceptor.handlers.base import marked
from interceptor.handlers.postgres.record import redact_literals
from interceptor.operations import HttpRequest, KubeRequest, McpCall, Request, SqlQuery, SshRequest, Subject, TcpConnect
from interceptor.policy.catalog import Catalog
from interceptor.policy.cli import policy
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.learn import LearnSession, with_learning
from interceptor.policy.loader import load_policy_text
from interceptor.policy.shadow import ShadowRun
from interceptor.policy.shadow_report import report

T0 = 1_796_050_000.0
BASE = """
version: 1
resources:
  api: {protocol: http, addresses: ["api.example.com:443"]}
  cluster: {protocol: kubernetes, addresses: ["10.96.0.1:443"]}
  tools: {protocol: mcp, addresses: ["mcp.example.com:443"]}
  web1: {protocol: ssh, addresses: ["web1.example.com:22"], options: {known_hosts: /etc/interceptor/ssh/known_hosts}}
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  echo: {protocol: tcp, addresses: ["127.0.0.1:7007"]}
agents:
  a: {uids: [1001]}
  b: {uids: [1002]}
rules:
  - {name: b-all, effect: allow, agents: [b]}
  - {name: echo-held, effect: approve, agents: [a], resources: [echo], tcp: true, approval: {groups: [sre]}}
"""
CATALOG = Catalog.from_columns({"public.t": ["id", "x.y", "public.t.secret", "secret"], "public.a.b": ["id"],
                                "public.p": ["id"]})
# a base that lets the agent run a shell and forward to any host's 5432 (learn mode learns neither)
SHELLS = BASE.replace("rules:\n", "rules:\n  - {name: a-web1, effect: allow, agents: [a], resources: [web1], "
                      "ssh: {shell: true, forward: ['*:5432']}}\n")
KINDS = {"ssh": "ssh", "http": "request", "kubernetes": "request", "mcp": "request"}


def _learned(base, agent, operations, exe=None, resources=None):
    """The records the daemon writes for `operations` [(resource, Operation)] of `agent`
    (run by the program `exe`) learning on every resource: the learn-start record, then each
    operation decided by the engine under learn mode, its operation marked."""
    session = LearnSession.start(agent, T0, resources=resources)
    engine = PolicyEngine(with_learning(load_policy_text(base), [session]))
    events = [{"kind": "policy", "agent": agent, "decision": "allow", "rule": "learn-start", "time": T0,
               "operation": {"action": "learn-start", **session.summary()}}]
    for at, (resource, operation) in enumerate(operations, 1):
        decision = engine.decide(Request(Subject(agent, None, exe, 1001), resource, operation))
        kind, verdict, summary = KINDS.get(operation.kind), decision.verdict.value, operation.summary()
        outcome = {"approval": {"approved": True, "request_id": "R1", "approver": "alice"}} if verdict == "approve" \
            else {}
        if isinstance(operation, SqlQuery):
            kind, summary = "statement", {"protocol": "postgres", "statement": redact_literals(operation.text)}
        elif isinstance(operation, TcpConnect):  # the tcp handler's record once the connection was let through
            kind, verdict, summary, outcome = "connection", "allow", {"protocol": "tcp", "dst": "127.0.0.1:7007"}, {}
        events.append({"kind": kind, "agent": agent, "resource": resource, "decision": verdict,
                       "rule": decision.rule, "reason": decision.reason, "time": T0 + at,
                       "operation": marked(summary, decision, session.session), "outcome": outcome,
                       "process": {"pid": 7, "uid": 1001, "exe": exe, "cmdline": [exe or "?"]}})
    return events


def _suggest(tmp_path, base, events, *extra):
    store = tmp_path / "audit.db"
    fill_store(store, events)
    (tmp_path / "base.yaml").write_text(base)
    out = tmp_path / "suggested.yaml"
    result = CliRunner().invoke(policy, ["suggest", "--agent", "a", "--store", str(store), "--policy",
                                         str(tmp_path / "base.yaml"), "-o", str(out), *extra])
    return result, out


def _verdict(path, agent, resource, operation, exe=None):
    engine = PolicyEngine(load_policy_text(path.read_text()))
    return engine.decide(Request(Subject(agent, None, exe, 1001), resource, operation)).verdict.value


def _sql(text):
    return SqlQuery(text, catalog=CATALOG)


def test_a_method_or_verb_the_agent_sends_is_no_glob(tmp_path):
    """HTTP methods, MCP methods and Kubernetes verbs are tokens an agent chooses: `*` is a
    valid HTTP method. The suggested rule names the one seen, never every method."""
    events = _learned(BASE, "a", [("api", HttpRequest("*", "/v1/reports", host="api.example.com")),
                                  ("tools", McpCall("*")),
                                  ("cluster", KubeRequest("*", "/metrics", resource_request=False))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "api", HttpRequest("*", "/v1/reports", host="api.example.com")) == "allow"
    assert _verdict(out, "a", "api", HttpRequest("DELETE", "/v1/reports", host="api.example.com")) == "deny"
    assert _verdict(out, "a", "tools", McpCall("tools/call", "drop_db", "{}")) == "deny"
    assert _verdict(out, "a", "tools", McpCall("resources/read")) == "deny"
    assert _verdict(out, "a", "cluster", KubeRequest("post", "/metrics", resource_request=False)) == "deny"
    assert _verdict(out, "a", "cluster", KubeRequest("*", "/metrics", resource_request=False)) == "allow"


def test_a_host_with_its_port_is_suggested_as_the_host(tmp_path):
    """The record's host is the Host header (`name:port`); a hosts pattern holds no port."""
    events = _learned(BASE, "a", [("api", HttpRequest("GET", "/v1/x", host="API.example.com:8443"))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "api", HttpRequest("GET", "/v1/x", host="api.example.com:8443")) == "allow"
    assert _verdict(out, "a", "api", HttpRequest("GET", "/v1/x", host="other.example.com")) == "deny"


def test_what_no_pattern_can_say_exactly_is_listed_not_granted(tmp_path):
    """A forward to a host holding a glob character (its brackets are an IPv6 address's, so
    `[*]` is `*`), a table or column whose name holds a dot (a pattern's parts are split at
    dots; a column named `public.t.secret` is not the column `secret`), a path or host no
    pattern can hold: each is listed in the header and granted nothing; the rest still is."""
    events = _learned(SHELLS, "a", [
        ("web1", SshRequest("forward", forward="local", target="*:5432")),
        ("db", _sql('SELECT id FROM "a.b"')), ("db", _sql('SELECT "x.y" FROM t')),
        ("db", _sql('SELECT "public.t.secret" FROM t')), ("db", _sql("SELECT id FROM p")),
        ("api", HttpRequest("OPTIONS", "*", host="api.example.com")),
        ("api", HttpRequest("GET", "/v1/x", host="[::1]:8443"))])
    result, out = _suggest(tmp_path, SHELLS, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "# Seen but no rule can allow exactly that" in text
    for name in ("forward to *:5432", "table public.a.b", "column public.t.x.y", "column public.t.public.t.secret",
                 "path '*'", "host ::1"):
        assert name in text, name
    assert _verdict(out, "a", "web1", SshRequest("forward", forward="local", target="db:5432")) == "deny"
    assert _verdict(out, "a", "db", _sql("SELECT secret FROM t")) == "deny"
    assert _verdict(out, "a", "db", _sql("SELECT id FROM p")) == "allow"
    assert CliRunner().invoke(policy, ["test", str(tmp_path / "suggested.tests.yaml")]).exit_code == 0


def test_a_connection_held_for_approval_stays_approve(tmp_path):
    """The tcp handler records a connection a person approved as allowed by the approve rule:
    --effect allow must not turn that gate into an allow."""
    events = _learned(BASE, "a", [("echo", TcpConnect())])
    assert events[-1]["rule"] == "echo-held"
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "echo", TcpConnect()) == "approve"


def test_shell_true_is_never_an_allow(tmp_path):
    """One command with a glob (`ls *`) is shell class (allowed by a base rule with `shell:
    true`), suggested as `shell: true`, which allows every command: under --effect allow it
    is still approve."""
    events = _learned(SHELLS, "a", [("web1", SshRequest("exec", command="ls *"))])
    assert events[-1]["rule"] == "a-web1"
    result, out = _suggest(tmp_path, SHELLS, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "web1", SshRequest("exec", command="rm -rf /srv")) == "approve"
    assert "shell: true allows every command" in out.read_text()
    assert CliRunner().invoke(policy, ["test", str(tmp_path / "suggested.tests.yaml")]).exit_code == 0


FILES = BASE.replace("rules:\n", "rules:\n  - {name: a-files, effect: allow, agents: [a], resources: [api], "
                     "http: {paths: ['/files/[*]'], methods: [GET]}}\n  - {name: a-db, effect: allow, agents: [a], "
                     "resources: [db], sql: {kinds: [select], tables: [public.p]}}\n")


def test_diff_reads_what_suggest_wrote_as_what_happened(tmp_path):
    """suggest escapes a `*` in a name as `[*]` and covers a SELECT without a table by a
    rule on a table no relation has: diff reads them back as the path `/files/*` and a
    SELECT without a table, which CURRENT allows; no false refusal, no false "never used"."""
    events = _learned(FILES, "a", [("api", HttpRequest("GET", "/files/*", host="api.example.com")),
                                   ("db", _sql("SELECT 1"))])
    result, out = _suggest(tmp_path, FILES, events)
    assert result.exit_code == 0, result.output
    diffed = CliRunner().invoke(policy, ["diff", str(tmp_path / "base.yaml"), str(out), "--agent", "a"])
    assert diffed.exit_code == 0, diffed.output
    assert "used but not allowed by CURRENT:\n  (none)" in diffed.output
    assert "fully used grants in CURRENT: a-files" in diffed.output
    assert "a-db (allow): sql: kinds [select], tables [public.p] on db\n      partly used: select no table" \
        in diffed.output


def _ended(events):
    """Each ssh record followed by its ssh-end record, as the ssh handler writes them: the
    same operation and decision (marks included), the exit in the outcome."""
    out = []
    for event in events:
        out.append(event)
        if event["kind"] == "ssh" and event["decision"] != "deny":
            out.append({**event, "kind": "ssh-end", "time": event["time"] + 0.5,
                        "outcome": {"exit_status": 0, "request_event": "e1"}})
    return out


def test_the_end_of_an_ssh_request_is_not_a_second_operation(tmp_path):
    events = _ended(_learned(BASE, "a", [("web1", SshRequest("exec", command="uptime"))]))
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert "# 1 operation, first" in out.read_text()
    assert "1 records used" in result.output


def test_shadow_report_counts_an_ssh_request_once(tmp_path):
    """The ssh-end record carries the request's decision and shadow mark again."""
    enforced = PolicyEngine(load_policy_text(SHELLS))
    run = ShadowRun.start("a", T0, "/etc/interceptor/candidate.yaml", PolicyEngine(load_policy_text(BASE)))
    events = []
    for at, command in enumerate(("uptime", "uptime", "df -h"), 1):
        operation = SshRequest("exec", command=command)
        request = Request(Subject("a"), "web1", operation)
        decision = run.beside(enforced.decide(request), run.engine.decide(request))
        events.append({"kind": "ssh", "agent": "a", "resource": "web1", "decision": decision.verdict.value,
                       "rule": decision.rule, "time": T0 + at, "outcome": {},
                       "operation": marked(operation.summary(), decision, None)})
    fill_store(tmp_path / "audit.db", _ended(events))
    result = CliRunner().invoke(report, ["--store", str(tmp_path / "audit.db"), "--json"])
    assert result.exit_code == 0, result.output
    (session,) = json.loads(result.output)["sessions"]
    assert (session["judged"], session["agree"], session["disagree"]) == (3, 0, 3)
    assert [(o["what"], o["count"]) for o in session["outside"]] == [("exec uptime", 2), ("exec df -h", 1)]


PSQL = BASE.replace("rules:\n", "rules:\n  - {name: a-psql, effect: allow, agents: [a], resources: [db], "
                    "subjects: {exe: [/usr/bin/psql]}, sql: {kinds: [select], tables: [public.*]}}\n")


def test_a_base_rules_conditions_on_who_are_kept(tmp_path):
    """What a base rule allowed only to psql (`subjects: {exe: ...}`) is suggested for psql
    only, not for any program of the agent; what learn mode allowed has no such condition."""
    events = _learned(PSQL, "a", [("db", _sql("SELECT id FROM p"))], exe="/usr/bin/psql")
    events += _learned(PSQL, "a", [("db", _sql("SELECT id FROM t"))], exe="/usr/bin/python3")[1:]
    assert [e["rule"] for e in events[1:]] == ["a-psql", "learn:a"]
    result, out = _suggest(tmp_path, PSQL, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "db", _sql("SELECT id FROM p"), "/usr/bin/psql") == "allow"
    assert _verdict(out, "a", "db", _sql("SELECT id FROM p"), "/usr/bin/python3") == "deny"
    assert _verdict(out, "a", "db", _sql("SELECT id FROM t"), "/usr/bin/python3") == "allow"
    assert CliRunner().invoke(policy, ["test", str(tmp_path / "suggested.tests.yaml")]).exit_code == 0


def test_a_grant_is_no_cross_product_of_what_was_seen(tmp_path):
    """A delete of one pod and a list of all pods do not make a delete of every pod; a GET on
    one host and a DELETE on another do not make a DELETE on the first."""
    events = _learned(BASE, "a", [
        ("cluster", KubeRequest("delete", "/api/v1/namespaces/prod/pods/web-1", api_version="v1", resource="pods",
                                namespace="prod", name="web-1")),
        ("cluster", KubeRequest("list", "/api/v1/namespaces/prod/pods", api_version="v1", resource="pods",
                                namespace="prod")),
        ("api", HttpRequest("GET", "/v1/x", host="api.example.com")),
        ("api", HttpRequest("DELETE", "/v1/x", host="scratch.example.com"))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    delete = KubeRequest("delete", "", api_version="v1", resource="pods", namespace="prod", name="db-0")
    assert _verdict(out, "a", "cluster", delete) == "deny"
    assert _verdict(out, "a", "api", HttpRequest("DELETE", "/v1/x", host="api.example.com")) == "deny"
    assert _verdict(out, "a", "api", HttpRequest("DELETE", "/v1/x", host="scratch.example.com")) == "allow"


def test_an_ssh_request_no_rule_allows_exactly_does_not_stop_the_suggestion(tmp_path):
    """A command with a path not in normal form (`..`, a trailing `/`: a pattern word holding
    `/` covers only a path in normal form) and a directory renamed (a tree: only a `/**` glob
    allows it) were learned, and made suggest fail for everything: they are listed instead."""
    events = _learned(BASE, "a", [("web1", SshRequest("exec", command="cat /srv/x/../y")),
                                  ("web1", SshRequest("exec", command="ls -la /tmp/")),
                                  ("web1", SshRequest("write", path="/srv/old", action="rename-tree")),
                                  ("web1", SshRequest("exec", command="uptime"))])
    assert [e["decision"] for e in events[1:]] == ["allow"] * 4
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for what in ("command cat /srv/x/../y", "command ls -la /tmp/", "write of /srv/old (rename-tree)"):
        assert what in text, what
    assert _verdict(out, "a", "web1", SshRequest("exec", command="uptime")) == "allow"
    assert _verdict(out, "a", "web1", SshRequest("write", path="/srv/old/x", action="open")) == "deny"


def test_the_agent_cannot_do_the_case_that_must_be_denied(tmp_path):
    """The must-deny cases named a fixed path, tool and file (`/not-learned`): an agent that
    did exactly that while learning made every suggestion fail."""
    events = _learned(BASE, "a", [("api", HttpRequest("DELETE", "/not-learned", host="api.example.com")),
                                  ("tools", McpCall("tools/call", "not-learned", "{}")),
                                  ("web1", SshRequest("read", path="/not-learned", action="open"))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    tests = (tmp_path / "suggested.tests.yaml").read_text()
    assert '"path": "/not-learned-2"' in tests and '"tool": "not-learned-2"' in tests
    assert CliRunner().invoke(policy, ["test", str(tmp_path / "suggested.tests.yaml")]).exit_code == 0


def test_a_long_name_makes_no_long_rule_name(tmp_path):
    events = _learned(BASE, "a", [("api", HttpRequest("GET", "/" + "a" * 5000, host="api.example.com")),
                                  ("api", HttpRequest("GET", "/" + "a" * 5001, host="api.example.com"))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    names = [rule.name for rule in load_policy_text(out.read_text()).rules]
    assert max(len(name) for name in names) <= 82 and len(set(names)) == len(names)


KEPT = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  db2: {protocol: postgres, addresses: ["127.0.0.2:5432"]}
  echo: {protocol: tcp, addresses: ["127.0.0.1:7007"]}
agents:
  a: {uids: [1001]}
  b: {uids: [1002]}
rules:
  - {name: all-sql, effect: allow, sql: {kinds: [select], tables: [public.*]}}
  - {name: tcp-all, effect: allow, tcp: true}
  - {name: any-a, effect: allow, agents: [a]}
"""


def test_diff_takes_no_kept_grant_for_a_use(tmp_path):
    """suggest keeps CURRENT's grants on the resources not learned, narrowed and renamed
    (tcp-all-a): diff took them for uses, so tcp-all was "fully used" though the agent only
    read one table on db; it is unused where it was learned, kept (no telling) elsewhere."""
    events = _learned(KEPT, "a", [("db", _sql("SELECT id FROM p"))], resources=("db",))
    result, out = _suggest(tmp_path, KEPT, events)
    assert result.exit_code == 0, result.output
    diffed = CliRunner().invoke(policy, ["diff", str(tmp_path / "base.yaml"), str(out), "--agent", "a", "--json"])
    assert diffed.exit_code == 0, diffed.output
    (agent,) = json.loads(diffed.output)["agents"]
    assert agent["used"] == []
    unused = {grant["rule"]: grant for grant in agent["unused"]}
    assert unused["tcp-all"]["status"] == "unused" and unused["tcp-all"]["kept_on"] == ["db2", "echo"]
    assert unused["any-a"]["status"] == "unused"
    assert unused["all-sql"]["status"] == "partly used" and unused["all-sql"]["kept_on"] == ["db2"]
    assert [use["what"] for use in unused["all-sql"]["uses"]] == ["select public.p (id)"]


def test_every_object_name_is_listed(tmp_path):
    """Six secrets read were suggested as every secret of the namespace (names were left out
    past five)."""
    names = [f"db-{n}" for n in range(6)]
    events = _learned(BASE, "a", [("cluster", KubeRequest("get", f"/api/v1/namespaces/prod/secrets/{name}",
                                                          api_version="v1", resource="secrets", namespace="prod",
                                                          name=name)) for name in names])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    other = KubeRequest("get", "", api_version="v1", resource="secrets", namespace="prod", name="admin-token")
    assert _verdict(out, "a", "cluster", other) == "deny"


def test_a_failure_quoting_the_agent_reaches_the_terminal_escaped(tmp_path, monkeypatch):
    """A SuggestError may quote a case's reason, which holds what the agent sent."""
    import interceptor.policy.suggest_cli as suggest_cli

    def failing(*args, **kwargs):
        raise suggest_cli.SuggestError("cases do not hold:\nno rule allows GET /x\x1b]52;c;evil\x07\u202e")

    monkeypatch.setattr(suggest_cli, "suggest", failing)
    result, _ = _suggest(tmp_path, BASE, _learned(BASE, "a", [("api", HttpRequest("GET", "/x"))]))
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
    assert "cases do not hold:\nno rule allows GET /x\\x1b]52;c;evil\\x07\\u202e" in result.output
