"""The engine on connections, subjects, dispatch by operation type, the cache and the bench."""

from dataclasses import dataclass

import pytest

from interceptor.decision import Verdict
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, Request, SqlQuery, Subject, TcpConnect
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.bench import run

POLICY = """
version: 1
resources:
  reports: {protocol: postgres, addresses: ["10.0.0.7:5432"]}
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  raw: {protocol: tcp, addresses: ["127.0.0.1:6379"]}
agents:
  bot: {uids: [1001]}
  other: {}
rules:
  - {name: reports-read, effect: allow, agents: [bot], resources: [reports],
     subjects: {groups: [readers], exe: [/usr/bin/python3*]}, sql: {kinds: [select]}}
  - {name: reports-no-audit, effect: deny, resources: [reports], sql: {tables: [audit.*]}}
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


def test_subject_conditions_and_explicit_deny(engine):
    allowed = ask(engine, SqlQuery("select 1 from public.t"), "reports")
    assert allowed.verdict is Verdict.ALLOW and allowed.rule == "reports-read"
    assert ask(engine, SqlQuery("select * from audit.log"), "reports").rule == "reports-no-audit"
    assert ask(engine, SqlQuery("delete from public.t"), "reports").rule == "default-deny"
    assert ask(engine, SqlQuery("select 1 from public.t"), "reports", identity=None).verdict is Verdict.DENY
    assert ask(engine, SqlQuery("select 1 from public.t"), "reports", exe="/bin/curl").verdict is Verdict.DENY


def test_an_operation_of_no_registered_protocol_is_denied(engine):
    @dataclass(frozen=True)
    class Unknown:
        kind = "unknown"

    decision = ask(engine, Unknown(), "db")
    assert decision.verdict is Verdict.DENY and decision.rule == "default-deny"
    assert "unknown operation type Unknown" in decision.reason


def test_connection_level(engine):
    assert ask(engine, TcpConnect(), "db").verdict is Verdict.ALLOW
    assert ask(engine, TcpConnect(), "db", agent="other").rule == "db-other-denied"
    assert ask(engine, TcpConnect(), "raw").verdict is Verdict.APPROVE
    assert ask(engine, TcpConnect(), "reports", exe=None).verdict is Verdict.ALLOW  # plan-time: exe unknown
    assert ask(engine, TcpConnect(), "reports", exe="/bin/curl").verdict is Verdict.DENY
    assert ask(engine, TcpConnect(), "nowhere").verdict is Verdict.DENY
    assert ask(engine, TcpConnect(), "db", agent="ghost").verdict is Verdict.DENY


def test_cache_is_bounded_and_returns_the_same_decision():
    engine = PolicyEngine(load_policy_text(POLICY, "engine.yaml"), cache_size=2)
    first = ask(engine, SqlQuery("select 'a'"), "db")
    assert ask(engine, SqlQuery("select 'a'"), "db") is first
    for text in ("select 'b'", "select 'c'", "select 'd'"):
        ask(engine, SqlQuery(text), "db")
    assert len(engine.cache) == 2
    assert ask(engine, SqlQuery("select 'a'"), "db") is not first


def test_cache_is_bounded_by_the_size_of_what_it_keeps():
    engine = PolicyEngine(load_policy_text(POLICY, "engine.yaml"), cache_chars=100)
    long_one = ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db")
    assert ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db") is long_one
    ask(engine, SqlQuery("select '" + "b" * 80 + "'"), "db")
    assert len(engine.cache) == 1 and engine.cache.chars <= 100
    assert ask(engine, SqlQuery("select '" + "a" * 80 + "'"), "db") is not long_one
    ask(engine, SqlQuery("select '" + "c" * 200 + "'"), "db")  # larger than the whole cache: not kept
    assert engine.cache.chars <= 100


def test_bench_reports_both_engines_and_modes():
    rows = run(0.05)
    assert {(r["engine"], r["mode"]) for r in rows} >= {("sqlglot", "cached"), ("sqlglot", "uncached")}
    assert all(r["decisions_per_s"] > 0 for r in rows)
    cached = {r["engine"]: r["decisions_per_s"] for r in rows if r["mode"] == "cached"}
    uncached = {r["engine"]: r["decisions_per_s"] for r in rows if r["mode"] == "uncached"}
    assert set(cached) == set(uncached)


BEARER = """
version: 1
resources:
  api: {protocol: http, addresses: ["10.0.0.8:443"], options: {identity: bearer}}
  plain: {protocol: http, addresses: ["10.0.0.9:443"]}
agents:
  bot: {}
rules:
  - {name: readers-get, effect: allow, agents: [bot], resources: [api, plain], subjects: {groups: [readers]},
     http: {methods: [GET]}}
  - {name: contractors-out, effect: deny, resources: [api], subjects: {groups: [contractors]}}
"""


def test_a_bearer_resource_leaves_identity_conditions_to_its_requests():
    bearer = PolicyEngine(load_policy_text(BEARER, "bearer.yaml"))
    contractor = Identity(issuer="https://idp", subject="c", groups=frozenset({"contractors"}))
    # the agent's own identity (here none, or another one) does not decide at the connection ...
    assert ask(bearer, TcpConnect(), "api", identity=None).rule == "readers-get"
    assert ask(bearer, TcpConnect(), "api", identity=contractor).rule == "contractors-out"
    assert ask(bearer, TcpConnect(), "plain", identity=None).rule == "default-deny"
    # ... the token each request carries does
    assert ask(bearer, HttpRequest("GET", "/x"), "api", identity=None).rule == "default-deny"
    assert ask(bearer, HttpRequest("GET", "/x"), "api", identity=READER).rule == "readers-get"
