"""The http protocol's rules: `http: {methods, paths, hosts}` globs, allow/approve/mask must
cover the request, deny any; precedence; masks; the `policy test` case; load-time problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, Request, Subject
from interceptor.policy import PolicyEngine, PolicyError, load_policy_text
from interceptor.policy.cases import run_cases
from interceptor.policy.http_rules import host_name, parse_http_case
from interceptor.protocols import spec_for

POLICY = """
version: 1
resources:
  api: {protocol: http, addresses: ["api.example.com:443"], options: {tls: true}}
  other: {protocol: http, addresses: ["10.0.0.9:80"]}
agents:
  bot: {uids: [1001]}
  ops: {uids: [1002]}
rules:
  - {name: reports-read, effect: allow, agents: [bot], resources: [api],
     http: {methods: [GET, head], paths: ["/v1/reports/*"], hosts: ["API.example.com"]}}
  - {name: no-secret-reports, effect: deny, resources: [api], http: {paths: ["/v1/reports/secret*"]}}
  - {name: no-other-hosts, effect: deny, resources: [api], http: {hosts: ["*.internal"]}}
  - {name: deletes-need-ops, effect: approve, agents: [bot], resources: [api],
     http: {methods: [DELETE], paths: ["/v1/reports/*"]}, approval: {groups: [ops]}}
  - {name: ops-anything, effect: allow, agents: [ops], resources: [other]}
  - {name: mask-emails, effect: mask, resources: [api], http: {paths: ["/v1/reports/*"]},
     mask: {classifiers: [email]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "http.yaml"))


def ask(engine: PolicyEngine, method: str, path: str, host: str | None = "api.example.com",
        resource: str = "api", agent: str = "bot") -> Decision:
    return engine.decide(Request(Subject(agent, None, None, 1001), resource, HttpRequest(method, path, (), host)))


def test_an_allow_rule_covers_method_path_and_host(engine: PolicyEngine) -> None:
    decision = ask(engine, "GET", "/v1/reports/2026/q1")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "reports-read")
    assert ask(engine, "HEAD", "/v1/reports/x", host="API.Example.COM.:443").rule == "reports-read"
    assert ask(engine, "get", "/v1/reports/x").rule == "reports-read"  # methods compare upper-cased


@pytest.mark.parametrize(("method", "path", "host"), [
    ("POST", "/v1/reports/x", "api.example.com"),  # another method
    ("GET", "/v1/reports", "api.example.com"),  # the glob needs something after the slash
    ("GET", "/v2/reports/x", "api.example.com"),
    ("GET", "/v1/reports/x", "evil.example.com"),  # another host
])
def test_what_the_allow_rule_does_not_cover_is_default_deny(engine: PolicyEngine, method: str, path: str,
                                                           host: str | None) -> None:
    decision = ask(engine, method, path, host)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "default-deny")
    assert f"{method} {path}" in decision.reason


def test_deny_wins_and_covers_an_unknown_host(engine: PolicyEngine) -> None:
    assert ask(engine, "GET", "/v1/reports/secret-plans").rule == "no-secret-reports"
    assert ask(engine, "GET", "/v1/reports/x", host="db.internal").rule == "no-other-hosts"
    # no Host: a deny rule about hosts takes it as any host (an allow rule naming hosts never covers it)
    unknown = ask(engine, "GET", "/v1/reports/x", host=None)
    assert (unknown.verdict, unknown.rule) == (Verdict.DENY, "no-other-hosts")
    deny_line = '  - {name: no-other-hosts, effect: deny, resources: [api], http: {hosts: ["*.internal"]}}\n'
    without_deny = POLICY.replace(deny_line, "")
    assert ask(PolicyEngine(load_policy_text(without_deny)), "GET", "/v1/reports/x", host=None).rule == "default-deny"


def test_approve_ranks_between_deny_and_allow(engine: PolicyEngine) -> None:
    decision = ask(engine, "DELETE", "/v1/reports/7")
    assert (decision.verdict, decision.rule) == (Verdict.APPROVE, "deletes-need-ops")
    assert decision.approval is not None and decision.approval.approver_groups == ("ops",)


def test_a_rule_without_an_http_block_covers_every_request(engine: PolicyEngine) -> None:
    assert ask(engine, "PATCH", "/anything", host=None, resource="other", agent="ops").rule == "ops-anything"
    assert ask(engine, "GET", "/anything", host=None, resource="other").rule == "default-deny"


def test_mask_rules_that_cover_the_request_add_their_masks(engine: PolicyEngine) -> None:
    allowed = ask(engine, "GET", "/v1/reports/x")
    assert [(m.rule, m.classifiers) for m in allowed.masks] == [("mask-emails", ("email",))]
    assert ask(engine, "GET", "/v1/reports/secret").masks == ()  # a denial carries none


@pytest.mark.parametrize(("host", "name"), [
    ("api.example.com", "api.example.com"), ("API.example.com.:8443", "api.example.com"),
    ("[2001:db8::1]:443", "2001:db8::1"), ("[::1]", "::1"), ("10.0.0.1:80", "10.0.0.1"), ("", None), (None, None),
])
def test_host_names_lose_port_case_and_trailing_dot(host: str | None, name: str | None) -> None:
    assert host_name(host) == name


def test_the_policy_test_case_and_its_errors() -> None:
    assert parse_http_case({"http": {"method": "get", "path": "/v1/x", "host": "h", "query": {"a": 1}}}) == \
        HttpRequest("GET", "/v1/x", (("a", "1"),), "h")
    with pytest.raises(ValueError, match="unknown key"):
        parse_http_case({"http": {"method": "GET", "path": "/v1/x", "verb": "get"}})
    with pytest.raises(ValueError, match="absolute path"):
        parse_http_case({"http": {"method": "GET", "path": "v1/x"}})
    with pytest.raises(KeyError):
        parse_http_case({"http": {"path": "/v1/x"}})


@pytest.mark.parametrize(("block", "message"), [
    ('{paths: ["v1/*"]}', "expected an absolute path glob"),
    ('{hosts: ["api.example.com:443"]}', "without scheme or port"),
    ('{hosts: ["https://api.example.com"]}', "without scheme or port"),
    ("{}", "http"),
    ('{methods: [GET], verbs: [get]}', "verbs"),
])
def test_bad_blocks_are_refused_at_load_with_their_place(block: str, message: str) -> None:
    text = POLICY.split("rules:")[0] + f"rules:\n  - {{name: r, effect: allow, resources: [api], http: {block}}}\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "bad.yaml")
    assert any(message in problem and problem.startswith("bad.yaml:") for problem in caught.value.problems)


def test_an_http_rule_on_a_resource_of_another_protocol_is_refused() -> None:
    text = """
version: 1
resources: {db: {protocol: postgres, addresses: ["10.0.0.7:5432"]}}
agents: {bot: {uids: [1001]}}
rules: [{name: r, effect: allow, resources: [db], http: {methods: [GET]}}]
"""
    with pytest.raises(PolicyError, match="http rule on resource 'db' whose protocol is postgres"):
        load_policy_text(text, "bad.yaml")


def test_options_are_checked_against_the_shared_schema() -> None:
    base = POLICY.split("rules:")[0].replace("options: {tls: true}", "options: {tls: {ca: /etc/ca.pem}, "
                                             "identity: bearer, token_header: X-Api-Key}")
    load_policy_text(base + "rules: []\n", "ok.yaml")
    with pytest.raises(PolicyError, match="identity"):
        load_policy_text(base.replace("identity: bearer", "identity: cookie") + "rules: []\n", "bad.yaml")
    assert set(spec_for("http").options_schema["properties"]) == {"tls", "identity", "token_header"}


def test_subjects_still_apply_to_http_rules() -> None:
    policy = load_policy_text(POLICY.replace("agents: [bot], resources: [api],\n     http: {methods: [GET, head]",
                                             "resources: [api], subjects: {groups: [readers]},\n     "
                                             "http: {methods: [GET, head]"), "groups.yaml")
    engine = PolicyEngine(policy)
    operation = HttpRequest("GET", "/v1/reports/x", (), "api.example.com")
    reader = Identity(issuer="https://idp", subject="u", groups=frozenset({"readers"}))
    assert engine.decide(Request(Subject("bot", reader), "api", operation)).rule == "reports-read"
    assert engine.decide(Request(Subject("bot", None), "api", operation)).rule == "default-deny"


def test_the_shipped_example_passes_policy_test() -> None:
    results = run_cases(Path(__file__).parents[2] / "policy" / "examples" / "http.tests.yaml")
    assert results and all(result.passed for result in results), [r for r in results if not r.passed]
