"""The engine on connections, HTTP, Kubernetes, SSH, subjects, the cache and the bench."""

import pytest

from interceptor.decision import Verdict
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, KubernetesRequest, Request, SqlQuery, SshCommand, Subject, TcpConnect
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.bench import run

POLICY = """
version: 1
resources:
  api: {protocol: http, addresses: ["api.internal:443"]}
  box: {protocol: ssh, addresses: ["10.0.0.9:22"]}
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  raw: {protocol: tcp, addresses: ["127.0.0.1:6379"]}
agents:
  bot: {uids: [1001]}
  other: {}
rules:
  - {name: api-read, effect: allow, agents: [bot], subjects: {groups: [readers], exe: [/usr/bin/python3*]},
     http: {methods: [GET], paths: ["/v1/*"]}}
  - {name: api-mask, effect: mask, agents: [bot], http: {paths: ["/v1/*"]}, mask: {classifiers: [email]}}
  - {name: api-no-admin, effect: deny, http: {paths: ["/v1/admin*"]}}
  - {name: box-restart, effect: approve, resources: [box], ssh: {commands: ["systemctl restart *"]},
     approval: {groups: [ops], grant: time-boxed, grant_seconds: 600}}
  - {name: raw-approve, effect: approve, resources: [raw], tcp: true, approval: {groups: [ops]}}
  - {name: db-other-denied, effect: deny, agents: [other], resources: [db]}
  - {name: db-read, effect: allow, resources: [db], sql: {kinds: [select]}}
"""
READER = Identity(issuer="https://idp", subject="bot", groups=frozenset({"readers"}))


@pytest.fixture(scope="module")
def engine():
    return PolicyEngine(load_policy_text(POLICY, "engine.yaml"))


def ask(engine, operation, resource, agent="bot", identity=READER, exe="/usr/bin/python3.11"):
    return engine.decide(Request(Subject(agent, identity, exe, 1001), resource, operation))


def test_http_subject_conditions_and_explicit_deny(engine):
    allowed = ask(engine, HttpRequest("get", "api.internal", "/v1/users"), "api")
    assert allowed.verdict is Verdict.ALLOW and allowed.rule == "api-read"
    assert allowed.masks[0].classifiers == ("email",) and allowed.masks[0].rule == "api-mask"
    assert ask(engine, HttpRequest("GET", "api.internal", "/v1/admin/x"), "api").rule == "api-no-admin"
    assert ask(engine, HttpRequest("POST", "api.internal", "/v1/users"), "api").rule == "default-deny"
    assert ask(engine, HttpRequest("GET", "api.internal", "/v1/users"), "api", identity=None).verdict is Verdict.DENY
    assert ask(engine, HttpRequest("GET", "api.internal", "/v1/users"), "api", exe="/bin/curl").verdict is Verdict.DENY


def test_ssh_globs_never_match_shell_syntax(engine):
    decision = ask(engine, SshCommand("systemctl restart nginx"), "box")
    assert decision.verdict is Verdict.APPROVE and decision.approval.grant_seconds == 600
    assert ask(engine, SshCommand("systemctl restart nginx; rm -rf /"), "box").verdict is Verdict.DENY
    assert ask(engine, SshCommand("systemctl restart $(id)"), "box").verdict is Verdict.DENY


def test_kubernetes_without_rules_is_denied(engine):
    decision = ask(engine, KubernetesRequest("get", "pods", namespace="x"), "api")
    assert decision.verdict is Verdict.DENY and decision.rule == "default-deny"


def test_connection_level(engine):
    assert ask(engine, TcpConnect(), "db").verdict is Verdict.ALLOW
    assert ask(engine, TcpConnect(), "db", agent="other").rule == "db-other-denied"
    assert ask(engine, TcpConnect(), "raw").verdict is Verdict.APPROVE
    assert ask(engine, TcpConnect(), "api", exe=None).verdict is Verdict.ALLOW  # plan-time: exe unknown
    assert ask(engine, TcpConnect(), "api", exe="/bin/curl").verdict is Verdict.DENY
    assert ask(engine, TcpConnect(), "nowhere").verdict is Verdict.DENY
    assert ask(engine, TcpConnect(), "db", agent="ghost").verdict is Verdict.DENY


def test_cache_is_bounded_and_returns_the_same_decision():
    engine = PolicyEngine(load_policy_text(POLICY, "engine.yaml"), cache_size=2)
    first = ask(engine, SqlQuery("select 'a'"), "db")
    assert ask(engine, SqlQuery("select 'a'"), "db") is first
    for text in ("select 'b'", "select 'c'", "select 'd'"):
        ask(engine, SqlQuery(text), "db")
    assert len(engine._cache) == 2
    assert ask(engine, SqlQuery("select 'a'"), "db") is not first


def test_cache_is_bounded_by_the_size_of_what_it_keeps():
    engine = PolicyEngine(load_policy_text(POLICY, "engine.yaml"), cache_chars=100)
    long_one = ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db")
    assert ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db") is long_one
    ask(engine, SqlQuery("select '" + "b" * 80 + "'"), "db")
    assert len(engine._cache) == 1 and engine._cache_chars <= 100
    assert ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db") is not long_one
    ask(engine, SqlQuery("select '" + "c" * 200 + "'"), "db")  # larger than the whole cache: not kept
    assert engine._cache_chars <= 100


def test_bench_reports_both_engines_and_modes():
    rows = run(0.05)
    assert {(r["engine"], r["mode"]) for r in rows} >= {("sqlglot", "cached"), ("sqlglot", "uncached")}
    assert all(r["decisions_per_s"] > 0 for r in rows)
    cached = {r["engine"]: r["decisions_per_s"] for r in rows if r["mode"] == "cached"}
    uncached = {r["engine"]: r["decisions_per_s"] for r in rows if r["mode"] == "uncached"}
    assert set(cached) == set(uncached)
