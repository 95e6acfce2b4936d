"""Kubernetes rules (interceptor.policy.kube_rules through the engine): RBAC-shaped matching
with globs, subresources, namespaces and names (covering for allow, falling in for deny),
non-resource URLs and the discovery default, deny > approve > allow, the Secret masks and
`reveal_secrets`, mask rules' paths, and `policy test` cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.operations import KubeRequest, Request, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.cases import run_cases
from interceptor.policy.kube_rules import (
    DISCOVERY_RULE, SECRET_KIND_PATHS, SECRET_RULE, SECRETS_REQUEST_PATHS, TOKEN_REQUEST_PATHS, KubeMatch, describe,
    parse_kube_case, parse_kube_match,
)
from interceptor.policy.loader import PolicyError
from interceptor.policy.model import MaskRule, Rule

ROOT = Path(__file__).resolve().parents[2]
LAST = 'metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]'  # a rule with paths masks it too

HEADER = """
version: 1
resources:
  k8s: {protocol: kubernetes, addresses: ["10.0.0.1:6443"]}
agents:
  bot: {uids: [1001]}
rules:
"""
POLICY = HEADER + """\
  - name: read-apps
    effect: allow
    agents: [bot]
    kubernetes: {verbs: [get, list, watch], api_groups: ["", apps], resources: [pods, pods/log, deployments],
                 namespaces: [dev, "team-*"]}
  - name: read-one-secret
    effect: allow
    kubernetes: {verbs: [get], resources: [secrets], names: [app-config], namespaces: [dev]}
  - name: ops-reads-secrets
    effect: allow
    kubernetes: {verbs: [get, list], resources: [secrets], namespaces: [ops], reveal_secrets: true}
  - name: nodes
    effect: allow
    kubernetes: {verbs: [list], resources: [nodes], namespaces: [""]}
  - name: health
    effect: allow
    kubernetes: {verbs: [get], non_resource_urls: ["/healthz*"]}
  - name: delete-in-dev-needs-approval
    effect: approve
    approval: {groups: [sre]}
    kubernetes: {verbs: [delete], resources: ["*"], namespaces: [dev]}
  - name: delete-anything-in-dev
    effect: allow
    kubernetes: {verbs: [delete], namespaces: [dev]}
  - name: no-exec-in-prod
    effect: deny
    reason: no shells in prod
    kubernetes: {resources: [pods], namespaces: [prod]}
  - name: keep-kube-system
    effect: deny
    kubernetes: {verbs: [delete, deletecollection], resources: [namespaces], names: [kube-system]}
  - name: no-version
    effect: deny
    kubernetes: {non_resource_urls: [/version]}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "k.yaml"))


def decide(engine: PolicyEngine, method: str, url: str) -> Decision:
    operation = parse_kube_case({"method": method, "path": url})
    return engine.decide(Request(Subject("bot"), "k8s", operation))


@pytest.mark.parametrize(("method", "url", "verdict", "rule"), [
    ("GET", "/api/v1/namespaces/dev/pods", "allow", "read-apps"),
    ("GET", "/api/v1/namespaces/team-a/pods/web/log", "allow", "read-apps"),
    ("GET", "/apis/apps/v1/namespaces/dev/deployments?watch=1", "allow", "read-apps"),
    ("GET", "/apis/batch/v1/namespaces/dev/jobs", "deny", "default-deny"),  # another group and resource
    ("GET", "/apis/apps/v1/namespaces/dev/deployments/web/scale", "deny", "default-deny"),  # not a listed subresource
    ("GET", "/api/v1/namespaces/dev/pods/web/exec?command=sh", "deny", "default-deny"),
    ("POST", "/api/v1/namespaces/dev/pods", "deny", "default-deny"),
    ("GET", "/api/v1/namespaces/qa/pods", "deny", "default-deny"),
    ("GET", "/api/v1/pods", "deny", "no-exec-in-prod"),  # across namespaces: holds prod's, falls in the deny
    ("GET", "/api/v1/nodes", "allow", "nodes"),  # namespaces [""]: cluster-scoped
    ("GET", "/api/v1/namespaces/dev/secrets/app-config", "allow", "read-one-secret"),
    ("GET", "/api/v1/namespaces/dev/secrets?fieldSelector=metadata.name%3Dapp-config", "deny", "default-deny"),
    ("GET", "/api/v1/namespaces/dev/secrets", "deny", "default-deny"),  # names never cover a list
    ("GET", "/api/v1/namespaces/dev/secrets/other", "deny", "default-deny"),
    ("GET", "/healthz/ready", "allow", "health"),
    ("POST", "/healthz", "deny", "default-deny"),
    ("GET", "/api/v1/namespaces/prod/pods/web/exec?command=sh", "deny", "no-exec-in-prod"),  # subresource falls in
    ("POST", "/api/v1/namespaces/prod/pods/web/portforward", "deny", "no-exec-in-prod"),
    ("GET", "/apis/apps/v1/deployments", "deny", "default-deny"),  # across namespaces: not covered by namespaces
    ("DELETE", "/api/v1/namespaces/dev/pods/web", "approve", "delete-in-dev-needs-approval"),  # approve > allow
    ("DELETE", "/api/v1/namespaces/kube-system", "deny", "keep-kube-system"),
    ("DELETE", "/api/v1/namespaces", "deny", "keep-kube-system"),  # no name: falls in names
    ("GET", "/version", "deny", "no-version"),  # a deny beats the discovery default
    ("GET", "/apis/apps/v1", "allow", DISCOVERY_RULE),
    ("GET", "/api", "allow", DISCOVERY_RULE),
    ("GET", "/openapi/v3/apis/apps/v1", "allow", DISCOVERY_RULE),
    ("GET", "/swagger-2.0.0.pb-v1", "allow", DISCOVERY_RULE),  # kubectl 1.20's apply validates with it
    ("POST", "/apis", "deny", "default-deny"),
    ("GET", "/metrics", "deny", "default-deny"),
])
def test_rules(engine: PolicyEngine, method: str, url: str, verdict: str, rule: str) -> None:
    decision = decide(engine, method, url)
    assert (decision.verdict.value, decision.rule) == (verdict, rule), decision.reason


def test_deny_falls_in_across_namespaces_but_allow_does_not_cover() -> None:
    policy = POLICY + """
  - name: no-prod-secrets
    effect: deny
    kubernetes: {resources: [secrets], namespaces: [prod]}
  - name: all-secrets-anywhere
    effect: allow
    kubernetes: {resources: [secrets]}
"""
    engine = PolicyEngine(load_policy_text(policy, "k.yaml"))
    assert decide(engine, "GET", "/api/v1/secrets").rule == "no-prod-secrets"  # a list across namespaces holds prod's
    assert decide(engine, "GET", "/api/v1/namespaces/qa/secrets").rule == "all-secrets-anywhere"
    assert decide(engine, "GET", "/api/v1/namespaces/prod/secrets/x").rule == "no-prod-secrets"


def test_default_deny_names_the_request(engine: PolicyEngine) -> None:
    decision = decide(engine, "POST", "/api/v1/namespaces/dev/pods/web/exec?command=ls")
    assert decision.reason == 'no rule allows create pods/exec "web" in namespace "dev"'


def test_secret_values_are_masked_unless_revealed(engine: PolicyEngine) -> None:
    secret = decide(engine, "GET", "/api/v1/namespaces/dev/secrets/app-config")
    assert secret.masks == (MaskSpec(paths=SECRETS_REQUEST_PATHS, rule=SECRET_RULE),)
    pods = decide(engine, "GET", "/api/v1/namespaces/dev/pods")
    assert pods.masks == (MaskSpec(paths=SECRET_KIND_PATHS, rule=SECRET_RULE),)
    assert decide(engine, "GET", "/api/v1/namespaces/ops/secrets").masks == ()  # reveal_secrets
    assert decide(engine, "GET", "/api/v1/namespaces/dev/pods/web/log").masks == ()  # a stream, not objects
    assert decide(engine, "GET", "/healthz").masks == ()
    assert decide(engine, "GET", "/api/v1/namespaces/prod/pods").masks == ()  # denied: nothing to mask


def test_mask_rules_add_their_paths_where_the_request_falls_in() -> None:
    base = load_policy_text(POLICY, "k.yaml")
    masking = (
        Rule("mask-env", "mask", operation="kubernetes", match=parse_kube_case_match({"resources": ["pods"]}),
             mask=MaskRule(paths=("spec.containers[*].env[*].value",), style="partial")),
        Rule("mask-emails", "mask", mask=MaskRule(classifiers=("email",))),
        Rule("sql-only", "mask", mask=MaskRule(columns=(("s", "t", "c"),))),  # nothing a JSON body has
    )
    engine = PolicyEngine(type(base)(base.version, base.resources, base.agents, base.rules + masking))
    masks = decide(engine, "GET", "/api/v1/namespaces/dev/pods/web").masks
    assert [m.rule for m in masks] == [SECRET_RULE, "mask-env", "mask-emails"]
    assert masks[1] == MaskSpec(style="partial", rule="mask-env", paths=("spec.containers[*].env[*].value", LAST))
    # a log is a stream, not a pod: only rules naming pods/log (or about every request) reach it
    assert [m.rule for m in decide(engine, "GET", "/api/v1/namespaces/dev/pods/web/log").masks] == ["mask-emails"]
    listed = decide(engine, "GET", "/apis/apps/v1/namespaces/dev/deployments").masks
    assert [m.rule for m in listed] == [SECRET_RULE, "mask-emails"]


def parse_kube_case_match(raw: dict[str, list[str]]) -> KubeMatch:
    def problem(where: tuple[str | int, ...], message: str) -> None:
        raise AssertionError(message)
    return parse_kube_match(raw, problem)


@pytest.mark.parametrize(("block", "message"), [
    ("{resources: [pods/log/x]}", "k.yaml:9:30: resource pattern 'pods/log/x': expected resource or resource/sub"),
    ("{resources: [/x]}", "resource pattern '/x'"),
    ("{non_resource_urls: [healthz]}", "non-resource URL 'healthz': expected a path glob"),
    ("{non_resource_urls: [/x], names: [a]}", "names is about resource requests"),
    ("{verbs: []}", "should be non-empty"),
    ("{resource: [pods]}", "unknown key 'resource'"),
    ("{reveal_secrets: yes-please}", "is not of type 'boolean'"),
])
def test_bad_blocks_are_reported_where_they_are(block: str, message: str) -> None:
    text = f"""version: 1
resources:
  k8s: {{protocol: kubernetes, addresses: ["10.0.0.1:6443"]}}
agents:
  bot: {{uids: [1001]}}
rules:
  - name: r
    effect: allow
    kubernetes: {block}
"""
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, "k.yaml")
    assert message in str(error.value)


def test_cases_by_attributes_and_derived_agree() -> None:
    derived = parse_kube_case({"method": "get", "path": "/api/v1/namespaces/prod/secrets/x"})
    by_attributes = parse_kube_case({"verb": "get", "resource": "secrets", "namespace": "prod", "name": "x",
                                     "api_group": "", "api_version": "v1", "path": "/api/v1/namespaces/prod/secrets/x"})
    assert derived == by_attributes
    assert parse_kube_case({"verb": "get", "path": "/version"}) == KubeRequest("get", "/version",
                                                                                resource_request=False)
    assert parse_kube_case({"verb": "create", "resource": "pods", "subresource": "exec", "command": ["ls"]}).command \
        == ("ls",)


@pytest.mark.parametrize(("block", "error"), [
    ({"method": "GET"}, ValueError),
    ({"method": "GET", "path": "/api/v1/pods", "x": 1}, ValueError),
    ({"verb": "get"}, ValueError),
    ({"resource": "pods"}, ValueError),
    ({"verb": "get", "resource": 5}, TypeError),
    ({"verb": "get", "resource": "pods", "dry_run": "yes"}, TypeError),
    ({"verb": "get", "resource": "pods", "command": "ls"}, TypeError),
    ({"method": "GET", "path": "/api/v1/namespaces/a/../b/pods"}, ValueError),
    ({"verb": "get", "resource": "pods", "subresource": "exec"}, ValueError),  # a connect is create
    ({"verb": "get", "resource": "nodes", "subresource": "proxy", "api_group": ""}, ValueError),
])
def test_bad_cases(block: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_kube_case(block)


def test_describe() -> None:
    assert describe(parse_kube_case({"method": "GET", "path": "/apis/apps/v1/namespaces/a/deployments/w/scale"})) \
        == 'get deployments/scale.apps "w" in namespace "a"'
    assert describe(parse_kube_case({"method": "GET", "path": "/api/v1/nodes"})) == "list nodes"
    assert describe(parse_kube_case({"method": "GET", "path": "/version"})) == "get /version"


def test_the_shipped_example_passes() -> None:
    results = run_cases(ROOT / "policy" / "examples" / "kubernetes.tests.yaml")
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    assert Verdict.APPROVE.value in {r.got["verdict"] for r in results}


def test_mask_blocks_take_json_paths_checked_at_load() -> None:
    policy = POLICY + """
  - name: mask-annotations
    effect: mask
    kubernetes: {resources: [deployments]}
    mask: {paths: ['metadata.annotations["example.com/token"]', "spec.template.spec.containers[*].env[*].value"]}
"""
    engine = PolicyEngine(load_policy_text(policy, "k.yaml"))
    masks = decide(engine, "GET", "/apis/apps/v1/namespaces/dev/deployments/web").masks
    assert masks[1] == MaskSpec(rule="mask-annotations", paths=(
        'metadata.annotations["example.com/token"]', "spec.template.spec.containers[*].env[*].value", LAST))
    with pytest.raises(PolicyError) as error:
        load_policy_text(policy.replace("env[*].value", "env[*]..value"), "k.yaml")
    assert "k.yaml:46:65: JSON path 'spec.template.spec.containers[*].env[*]..value': expected a name" in str(error.value)


CONNECT_POLICY = HEADER + """\
  - {name: reads, effect: allow, kubernetes: {verbs: [get, list], resources: ["*"], namespaces: [dev, ""]}}
  - {name: shells, effect: allow, kubernetes: {verbs: [create], resources: [pods/exec], namespaces: [qa]}}
  - {name: no-ws-attach, effect: deny, kubernetes: {verbs: [get], resources: [pods/attach]}}
  - {name: no-proxy-deletes, effect: deny, kubernetes: {verbs: [delete], resources: [services/proxy]}}
  - {name: no-pod-creates, effect: deny, kubernetes: {verbs: [create], resources: [pods], namespaces: [staging]}}
"""


@pytest.mark.parametrize(("method", "url", "rule"), [
    # a read-only rule allows no connect, whatever the method: each is `create`
    ("GET", "/api/v1/namespaces/dev/pods/web/exec?command=sh", "default-deny"),
    ("GET", "/api/v1/namespaces/dev/pods/web/portforward?ports=80", "default-deny"),
    ("GET", "/api/v1/namespaces/dev/pods/web/proxy/", "default-deny"),
    ("GET", "/api/v1/nodes/n1/proxy/pods", "default-deny"),
    ("HEAD", "/api/v1/namespaces/dev/pods/web/proxy/", "default-deny"),
    ("GET", "/api/v1/namespaces/dev/pods/web/log", "reads"),  # not a connect
    ("GET", "/api/v1/namespaces/qa/pods/web/exec?command=sh", "shells"),  # GET+WebSocket
    ("POST", "/api/v1/namespaces/qa/pods/web/exec?command=sh", "shells"),  # POST+SPDY
    # a deny names any verb the server may authorize the connect by
    ("POST", "/api/v1/namespaces/qa/pods/web/attach", "no-ws-attach"),
    ("GET", "/api/v1/namespaces/qa/services/web/proxy/x", "no-proxy-deletes"),
    ("GET", "/api/v1/namespaces/staging/pods/web/exec", "no-pod-creates"),  # pods falls in
])
def test_a_connect_is_create_whatever_the_method(method: str, url: str, rule: str) -> None:
    engine = PolicyEngine(load_policy_text(CONNECT_POLICY, "k.yaml"))
    decision = decide(engine, method, url)
    assert decision.rule == rule, decision.reason
    assert parse_kube_case({"method": method, "path": url}).verb == ("get" if rule == "reads" else "create")


def test_a_deny_on_get_of_a_connect_does_not_reach_other_resources() -> None:
    engine = PolicyEngine(load_policy_text(CONNECT_POLICY, "k.yaml"))
    assert decide(engine, "GET", "/api/v1/namespaces/dev/pods/web").rule == "reads"
    assert decide(engine, "GET", "/api/v1/namespaces/dev/services/web").rule == "reads"


def test_a_token_request_answer_is_masked_unless_revealed() -> None:
    policy = CONNECT_POLICY + """
  - {name: tokens, effect: allow, kubernetes: {verbs: [create], resources: [serviceaccounts/token], namespaces: [dev]}}
  - name: tokens-in-clear
    effect: allow
    kubernetes: {verbs: [create], resources: [serviceaccounts/token], namespaces: [ops], reveal_secrets: true}
"""
    engine = PolicyEngine(load_policy_text(policy, "k.yaml"))
    issued = decide(engine, "POST", "/api/v1/namespaces/dev/serviceaccounts/builder/token")
    assert (issued.rule, issued.masks) == ("tokens", (MaskSpec(paths=TOKEN_REQUEST_PATHS, rule=SECRET_RULE),))
    assert "status.token" in TOKEN_REQUEST_PATHS and set(SECRET_KIND_PATHS) < set(TOKEN_REQUEST_PATHS)
    assert decide(engine, "POST", "/api/v1/namespaces/ops/serviceaccounts/builder/token").masks == ()
    account = decide(engine, "GET", "/api/v1/namespaces/dev/serviceaccounts/builder")
    assert account.masks == (MaskSpec(paths=SECRET_KIND_PATHS, rule=SECRET_RULE),)  # names of Secrets, no token


URL_POLICY = HEADER + """\
  - {name: logs, effect: allow, kubernetes: {verbs: [get], non_resource_urls: [/logs]}}
  - {name: checks, effect: allow, kubernetes: {verbs: [get], non_resource_urls: ["/livez/*"]}}
  - {name: no-healthz, effect: deny, kubernetes: {non_resource_urls: [/healthz]}}
  - {name: no-readyz-checks, effect: deny, kubernetes: {non_resource_urls: ["/readyz/*"]}}
  - {name: no-metrics, effect: deny, kubernetes: {non_resource_urls: [/metrics/]}}
  - {name: no-version, effect: deny, kubernetes: {verbs: [get], non_resource_urls: [/version]}}
"""


@pytest.mark.parametrize(("url", "rule"), [
    ("/logs", "logs"),
    ("/logs/", "default-deny"),  # an allow covers the path as written, as RBAC does
    ("/logs/kube-apiserver.log", "default-deny"),
    ("/livez/etcd", "checks"),
    ("/livez", "default-deny"),
    ("/healthz", "no-healthz"),
    ("/healthz/", "no-healthz"),  # a deny holds with a trailing slash
    ("/healthz/etcd", "default-deny"),  # and for nothing further
    ("/readyz/", "no-readyz-checks"),
    ("/readyz", "no-readyz-checks"),  # `/readyz/*` holds for `/readyz/`, which may be `/readyz`
    ("/metrics", "no-metrics"),  # a deny glob's trailing slash is read both ways too
    ("/version/", "no-version"),  # beats the discovery default, however spelt
    ("/openapi/v3/", DISCOVERY_RULE),
    ("/api/", DISCOVERY_RULE),
])
def test_non_resource_urls_and_a_trailing_slash(url: str, rule: str) -> None:
    engine = PolicyEngine(load_policy_text(URL_POLICY, "k.yaml"))
    assert decide(engine, "GET", url).rule == rule


def test_discovery_lists_both_spellings_of_the_version() -> None:
    engine = PolicyEngine(load_policy_text(HEADER + "  - {name: logs, effect: allow, kubernetes: {verbs: [get], "
                                           "non_resource_urls: [/logs]}}\n", "k.yaml"))
    assert decide(engine, "GET", "/version").rule == decide(engine, "GET", "/version/").rule == DISCOVERY_RULE
    assert decide(engine, "GET", "/version/x").rule == "default-deny"


def test_a_mask_rule_reaches_logs_and_exec_only_when_it_names_them() -> None:
    base = load_policy_text(POLICY, "k.yaml")
    masking = (
        Rule("mask-pods", "mask", operation="kubernetes", match=parse_kube_case_match({"resources": ["pods"]}),
             mask=MaskRule(classifiers=("email",))),
        Rule("mask-logs", "mask", operation="kubernetes", match=parse_kube_case_match({"resources": ["pods/log"]}),
             mask=MaskRule(classifiers=("card",))),
    )
    engine = PolicyEngine(type(base)(base.version, base.resources, base.agents, base.rules + masking))
    assert [m.rule for m in decide(engine, "GET", "/api/v1/namespaces/dev/pods/web/log").masks] == ["mask-logs"]
    assert [m.rule for m in decide(engine, "GET", "/api/v1/namespaces/dev/pods/web").masks] == [
        SECRET_RULE, "mask-pods"]
    assert decide(engine, "POST", "/api/v1/namespaces/dev/pods/web/exec?command=ls").masks == ()
