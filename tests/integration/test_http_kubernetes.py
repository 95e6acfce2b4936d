"""Kubernetes through the kernel redirect: Debian's kubectl 1.20 and the python `kubernetes`
client, run in the agent's cgroup, reach the API server's real address; the enforcer answers
their TLS with the host CA (trusted through the kubeconfig `interceptor kubeconfig` writes, which
holds no credentials), judges every request by its Kubernetes attributes, sends the cluster's
bearer token upstream, masks Secret values and holds deletes in prod for approval.

The API server is tests/kubeapi: a STATEFUL TEST STAND-IN written for these tests (no real
kube-apiserver can be installed here) that follows the API conventions (discovery,
resourceVersion, list and chunked watch, Table output, Status errors, logs, exec over WebSocket
and SPDY) and logs every request it receives, so the tests can show what the enforcer forwarded
and what it never did. It runs in a network namespace at the remote host's address.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon import Daemon
from http_setup import (
    agent_python, ca_file, decide, header, last_json, policy_text, request_records, resource_block, run_agent,
    running_http_daemon, start_agent, wait_records, write_token,
)
from kube_fixture import KubeApi, kubectl, running_kubeapi
from netns import RemoteHost

pytestmark = pytest.mark.root

AGENT = "deployer"
OPS = "ops-bot"
PASSWORD = "hunter2-in-clear"
OPS_PASSWORD = "ops-clear-value"
SYSTEM_REASON = "cluster credentials live in kube-system"
RULES = [
    f"{{name: workloads, effect: allow, agents: [{AGENT}], resources: [cluster], kubernetes: {{"
    "verbs: [get, list, watch, create, update, patch, delete], api_groups: ['', apps],"
    " resources: [pods, pods/log, configmaps, deployments, events, services, replicasets], namespaces: [dev]}}",
    f"{{name: prod-reads, effect: allow, agents: [{AGENT}], resources: [cluster], kubernetes: {{"
    " verbs: [get, list, watch], resources: [pods, configmaps], namespaces: [prod]}}",
    f"{{name: dev-shells, effect: allow, agents: [{AGENT}], resources: [cluster], kubernetes: {{"
    " verbs: [get, create], resources: [pods/exec], namespaces: [dev]}}",
    f"{{name: dev-secrets, effect: allow, agents: [{AGENT}], resources: [cluster], kubernetes: {{"
    " verbs: [get, list, watch], resources: [secrets], namespaces: [dev]}}",
    f"{{name: ops-secrets-in-clear, effect: allow, agents: [{OPS}], resources: [cluster], kubernetes: {{"
    " verbs: [get, list], resources: [secrets], namespaces: [ops], reveal_secrets: true}}",
    "{name: no-system-secrets, effect: deny, resources: [cluster], reason: '" + SYSTEM_REASON + "',"
    " kubernetes: {resources: [secrets], namespaces: [kube-system]}}",
    f"{{name: prod-deletes-need-sre, effect: approve, agents: [{AGENT}], resources: [cluster], kubernetes: {{"
    " verbs: [delete], resources: [pods, configmaps], namespaces: [prod]}, approval: {groups: [sre],"
    " timeout_seconds: 120}}",
    "{name: mask-emails, effect: mask, resources: [cluster], kubernetes: {resources: [configmaps]},"
    " mask: {classifiers: [email], style: redact}}",
]
MANIFEST = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}, annotations: {stand-in.test/log: "boot\\nserving"}}
spec:
  containers: [{name: web, image: "nginx:1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: dev}
data: {owner: ada@example.com, level: debug}
"""
SECRET_MANIFEST = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: dev}}
stringData: {{password: {PASSWORD}}}
"""


@dataclass
class Cluster:
    daemon: Daemon
    api: KubeApi
    admin: Path  # a kubeconfig with the real token, straight to the stand-in (not an agent)
    agent_config: Path  # the agent's, from `interceptor kubeconfig`: the host CA, no credentials
    ops_config: Path

    def admin_kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([kubectl(), "--kubeconfig", str(self.admin), *args], capture_output=True,
                                text=True, timeout=30, input=stdin or "")
        assert result.returncode == 0, f"kubectl {args} (admin) failed: {result.stderr}"
        return result

    def kubectl(self, *args: str, agent: str = AGENT, stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        config = self.agent_config if agent == AGENT else self.ops_config
        return run_agent(agent, kubectl(), "--kubeconfig", str(config), *args, stdin=stdin, timeout=timeout)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        return self.api.requests()[mark:]


@pytest.fixture(scope="module")
def cluster(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("kube")
    with running_kubeapi(workdir / "api", host=remote.ip4, netns=remote.name, log_interval=0.2) as api:
        address = f"{api.host}:{api.port}"
        resource = resource_block("cluster", "kubernetes", address, write_token(workdir / "cluster-token", api.token),
                                  f"{{tls: {{ca: {api.ca}}}}}")
        policy = policy_text([AGENT, OPS], [resource], RULES)
        admin = api.kubeconfig(workdir / "admin-config")
        for namespace in ("dev", "prod", "ops"):
            subprocess.run([kubectl(), "--kubeconfig", str(admin), "create", "namespace", namespace], check=True,
                           capture_output=True, timeout=30)
        with running_http_daemon(workdir, policy) as daemon:
            configs = []
            for agent in (AGENT, OPS):
                path = workdir / f"{agent}-config"
                daemon.cli("kubeconfig", "--agent", agent, "--resource", "cluster", "-o", str(path))
                configs.append(path)
            yield Cluster(daemon, api, admin, *configs)


def test_agent_kubeconfig_names_the_real_server_the_host_ca_and_no_credentials(cluster: Cluster) -> None:
    text = cluster.agent_config.read_text()
    config = yaml.safe_load(text)
    [entry] = config["clusters"]
    assert entry["cluster"]["server"] == cluster.api.url
    ca = base64.b64decode(entry["cluster"]["certificate-authority-data"])
    assert ca == ca_file(cluster.daemon).read_bytes()
    assert config["users"] == [{"name": AGENT, "user": {"username": AGENT}}]
    assert cluster.api.token not in text
    assert cluster.agent_config.stat().st_mode & 0o777 == 0o600


def test_kubectl_get_pods_through_the_enforcer_with_the_real_token(cluster: Cluster) -> None:
    cluster.admin_kubectl("run", "listed", "-n", "dev", "--image=busybox:1")
    mark = len(cluster.api.requests())
    out = cluster.kubectl("get", "pods", "-n", "dev")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert "listed" in {line.split()[0] for line in lines[1:]}
    seen = cluster.requests_since(mark)
    listing = [e for e in seen if e["path"] == "/api/v1/namespaces/dev/pods"]
    assert listing and listing[-1]["method"] == "GET"
    assert "as=Table" in (header(listing[-1], "accept") or "")
    assert {header(e, "authorization") for e in seen} == {f"Bearer {cluster.api.token}"}
    record = wait_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("target", "").startswith(
        "/api/v1/namespaces/dev/pods"))[-1]
    assert record["decision"] == "allow" and record["rule"] == "workloads", record


def test_the_agents_credentials_and_impersonation_never_reach_the_server(cluster: Cluster, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster.agent_config.read_text())
    config["users"][0]["user"] = {"token": "agents-own-token"}
    with_token = tmp_path / "own-token-config"
    with_token.write_text(yaml.safe_dump(config))
    mark = len(cluster.api.requests())
    own = run_agent(AGENT, kubectl(), "--kubeconfig", str(with_token), "get", "pods", "-n", "dev")
    assert own.returncode == 0, own.stderr
    impersonating = cluster.kubectl("get", "configmaps", "-n", "dev", "--as", "cluster-admin",
                                    "--as-group", "system:masters")
    assert impersonating.returncode == 0, impersonating.stderr
    basic = cluster.kubectl("get", "pods", "-n", "dev")  # the kubeconfig's user: Basic of the agent's name
    assert basic.returncode == 0, basic.stderr
    seen = cluster.requests_since(mark)
    assert len(seen) >= 3
    assert {header(e, "authorization") for e in seen} == {f"Bearer {cluster.api.token}"}
    assert not [name for e in seen for name, _ in e["headers"] if name.lower().startswith("impersonate-")]
    assert "agents-own-token" not in json.dumps(seen)


def test_kubectl_apply_describe_logs_and_delete(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST)
    first = cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    assert "pod/web created" in first.stdout and "configmap/settings created" in first.stdout
    manifest.write_text(MANIFEST.replace("level: debug", "level: info"))
    second = cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    assert second.returncode == 0, second.stderr
    assert "pod/web unchanged" in second.stdout and "configmap/settings configured" in second.stdout
    stored = json.loads(cluster.admin_kubectl("get", "configmap", "settings", "-n", "dev", "-o", "json").stdout)
    assert stored["data"] == {"owner": "ada@example.com", "level": "info"}

    described = cluster.kubectl("describe", "pod", "web", "-n", "dev")
    assert described.returncode == 0, described.stderr
    assert "Name:         web" in described.stdout and "Image:          nginx:1" in described.stdout

    assert cluster.kubectl("logs", "web", "-n", "dev").stdout == "boot\nserving\n"
    follow = start_agent(AGENT, kubectl(), "--kubeconfig", str(cluster.agent_config), "logs", "-f", "web",
                         "-n", "dev")
    assert follow.stdout is not None
    lines = [follow.stdout.readline() for _ in range(4)]
    follow.terminate()
    follow.wait(timeout=10)
    assert lines == ["boot\n", "serving\n", "tick 1\n", "tick 2\n"]

    # the mask rule on configmaps: the e-mail address is masked in what the agent reads
    shown = cluster.kubectl("get", "configmap", "settings", "-n", "dev", "-o", "json")
    assert json.loads(shown.stdout)["data"]["level"] == "info"
    assert "ada@example.com" not in shown.stdout
    wait_records(cluster.daemon, lambda e: e["rule"] == "workloads" and (e.get("operation") or {}).get(
        "name") == "settings" and (e.get("outcome") or {}).get("masked", 0) > 0)

    deleted = cluster.kubectl("delete", "configmap", "settings", "-n", "dev")
    assert deleted.returncode == 0, deleted.stderr
    assert 'configmap "settings" deleted' in deleted.stdout
    gone = subprocess.run([kubectl(), "--kubeconfig", str(cluster.admin), "get", "configmap", "settings", "-n",
                           "dev"], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "NotFound" in gone.stderr


def test_kubectl_exec_over_spdy_is_relayed_and_its_bytes_audited(cluster: Cluster) -> None:
    cluster.admin_kubectl("run", "shell", "-n", "dev", "--image=busybox:1")
    out = cluster.kubectl("exec", "shell", "-n", "dev", "--", "echo", "hello", "through", "the", "enforcer")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello through the enforcer\n"
    piped = cluster.kubectl("exec", "-i", "shell", "-n", "dev", "--", "cat", stdin="typed into the pod\n")
    assert piped.stdout == "typed into the pod\n", piped.stderr
    execs = [e for e in cluster.api.requests() if e["path"] == "/api/v1/namespaces/dev/pods/shell/exec"]
    assert [(e["method"], header(e, "upgrade")) for e in execs] == [("POST", "SPDY/3.1")] * 2
    records = wait_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("subresource") == "exec"
                           and (e.get("operation") or {}).get("name") == "shell", count=2)
    for record in records:
        assert record["decision"] == "allow" and record["rule"] == "dev-shells"
        upgrade = record["outcome"]["upgrade"]
        assert upgrade["protocol"].lower() == "spdy/3.1"
        assert upgrade["bytes_up"] > 0 and upgrade["bytes_down"] > len("hello through the enforcer\n"), upgrade
        assert record["outcome"]["status"] == 101


def test_denied_requests_get_a_status_naming_the_rule_and_never_reach_the_server(cluster: Cluster) -> None:
    mark = len(cluster.api.requests())
    secrets = cluster.kubectl("get", "secrets", "-n", "kube-system")
    assert secrets.returncode == 1
    assert ('Error from server (Forbidden): list secrets in namespace "kube-system" is forbidden by interceptor '
            f"rule no-system-secrets: {SYSTEM_REASON}") in secrets.stderr, secrets.stderr
    cluster.admin_kubectl("run", "prod-web", "-n", "prod", "--image=nginx:1")
    shell = cluster.kubectl("exec", "prod-web", "-n", "prod", "--", "echo", "hi")
    assert shell.returncode == 1
    assert 'create pods/exec "prod-web" in namespace "prod" is forbidden by interceptor rule' in shell.stderr, \
        shell.stderr
    services = cluster.kubectl("get", "services", "-n", "prod")  # no rule allows it: denied by default
    assert services.returncode == 1
    assert ('Error from server (Forbidden): list services in namespace "prod" is forbidden by interceptor rule '
            'default-deny: no rule allows list services in namespace "prod"') in services.stderr, services.stderr
    seen = [e["path"] for e in cluster.requests_since(mark)]
    assert not [p for p in seen if "/secrets" in p or p.endswith("/exec") or "/services" in p], seen
    denied = request_records(cluster.daemon, decision="deny")
    assert {"no-system-secrets"} <= {e["rule"] for e in denied}
    [system] = [e for e in denied if e["rule"] == "no-system-secrets"]
    assert system["operation"]["verb"] == "list" and system["operation"]["namespace"] == "kube-system"
    assert system["outcome"]["status"] == 403 and system["reason"] == SYSTEM_REASON


def test_delete_in_prod_is_held_until_approved(cluster: Cluster) -> None:
    cluster.admin_kubectl("create", "configmap", "doomed", "-n", "prod", "--from-literal=k=v")
    cluster.admin_kubectl("create", "configmap", "kept", "-n", "prod", "--from-literal=k=v")
    mark = len(cluster.api.requests())
    deleting = start_agent(AGENT, kubectl(), "--kubeconfig", str(cluster.agent_config), "delete", "configmap",
                           "doomed", "-n", "prod")
    request = cluster.daemon.pending_request(AGENT)
    assert request["rule"] == "prod-deletes-need-sre"
    assert request["operation"] == {"kind": "kubernetes", "verb": "delete", "api_version": "v1",
                                    "resource": "configmaps", "namespace": "prod", "name": "doomed"}, request
    time.sleep(0.5)
    assert deleting.poll() is None, "kubectl waits while its delete is held"
    assert not [e for e in cluster.requests_since(mark) if e["method"] == "DELETE"], "a held delete was sent"
    decide(cluster.daemon, "approve", request["request_id"])
    out, err = deleting.communicate(timeout=30)
    assert deleting.returncode == 0, err
    assert 'configmap "doomed" deleted' in out
    assert [e["path"] for e in cluster.requests_since(mark) if e["method"] == "DELETE"] == [
        "/api/v1/namespaces/prod/configmaps/doomed"]
    approved = wait_records(cluster.daemon, lambda e: (e.get("outcome") or {}).get("approval", {}).get(
        "request_id") == request["request_id"])[-1]
    assert (approved["decision"], approved["rule"]) == ("approve", "prod-deletes-need-sre")
    assert approved["outcome"]["approval"]["approved"] is True and approved["outcome"]["status"] == 200
    assert approved["outcome"]["approval"]["approver"].startswith("root@")

    refused = start_agent(AGENT, kubectl(), "--kubeconfig", str(cluster.agent_config), "delete", "configmap",
                          "kept", "-n", "prod")
    second = cluster.daemon.pending_request(AGENT)
    cluster.daemon.call("approvals.deny", request_id=second["request_id"], reason="not during the freeze")
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 1
    assert "not during the freeze" in err and "prod-deletes-need-sre" in err, err
    assert [e["path"] for e in cluster.requests_since(mark) if e["method"] == "DELETE"] == [
        "/api/v1/namespaces/prod/configmaps/doomed"]
    cluster.admin_kubectl("get", "configmap", "kept", "-n", "prod")
    not_approved = wait_records(cluster.daemon, lambda e: (e.get("outcome") or {}).get("approval", {}).get(
        "request_id") == second["request_id"])[-1]
    assert (not_approved["decision"], not_approved["outcome"]["status"]) == ("deny", 403)
    assert not_approved["outcome"]["bytes_up"] == 0


def decoded_values(document: dict[str, Any]) -> list[str]:
    """Every value of a Secret's `data` (base64-decoded) in a Secret, a List or a watch event."""
    if "items" in document:
        return [value for item in document["items"] for value in decoded_values(item)]
    secret = document.get("object", document)
    return [base64.b64decode(value).decode("utf-8", "replace") for value in (secret.get("data") or {}).values()]


def json_documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents kubectl printed one after another (a watch with -o json)."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text.rstrip()):
        while text[index].isspace():
            index += 1
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def assert_no_secret(text: str, *values: str) -> None:
    for value in values:
        assert value not in text and base64.b64encode(value.encode()).decode() not in text, text


def test_secret_values_are_masked_in_every_shape_kubectl_reads(cluster: Cluster) -> None:
    # applied by an administrator: the last-applied annotation holds the manifest, stringData in clear
    cluster.admin_kubectl("apply", "--validate=false", "-f", "-", stdin=SECRET_MANIFEST)
    stored = json.loads(cluster.admin_kubectl("get", "secret", "db", "-n", "dev", "-o", "json").stdout)
    assert decoded_values(stored) == [PASSWORD]
    assert PASSWORD in stored["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]

    as_json = cluster.kubectl("get", "secret", "db", "-n", "dev", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    secret = json.loads(as_json.stdout)
    assert list(secret["data"]) == ["password"] and decoded_values(secret) != [PASSWORD]
    assert PASSWORD not in secret["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert_no_secret(as_json.stdout, PASSWORD)
    as_yaml = cluster.kubectl("get", "secret", "db", "-n", "dev", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout)["data"] == secret["data"]
    assert_no_secret(as_yaml.stdout, PASSWORD)
    listed = cluster.kubectl("get", "secrets", "-n", "dev", "-o", "json")
    assert [item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]] == ["db"]
    assert_no_secret(listed.stdout, PASSWORD)
    table = cluster.kubectl("get", "secrets", "-n", "dev")
    assert table.stdout.splitlines()[1].split()[:3] == ["db", "Opaque", "1"], table.stdout

    watch = start_agent(AGENT, kubectl(), "--kubeconfig", str(cluster.agent_config), "get", "secret", "db",
                        "-n", "dev", "-w", "-o", "json")
    time.sleep(2)  # the watch has listed the secret and waits for changes
    rotated = "rotated-" + PASSWORD
    cluster.admin_kubectl("patch", "secret", "db", "-n", "dev", "-p",
                          json.dumps({"data": {"password": base64.b64encode(rotated.encode()).decode()}}))
    time.sleep(2)
    watch.terminate()
    watched, _ = watch.communicate(timeout=10)
    documents = json_documents(watched)
    assert len(documents) == 2, watched
    assert documents[0]["data"].keys() == documents[1]["data"].keys() == {"password"}
    assert_no_secret(watched, PASSWORD, rotated)
    assert json.loads(cluster.admin_kubectl("get", "secret", "db", "-n", "dev", "-o", "json").stdout)["data"] == {
        "password": base64.b64encode(rotated.encode()).decode()}

    records = request_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("resource") == "secrets"
                              and e["operation"].get("namespace") == "dev")
    assert records and all(e["rule"] == "dev-secrets" for e in records)
    assert all(e["outcome"]["masked"] > 0 for e in records if e["operation"]["verb"] in ("get", "list")), records


def test_a_reveal_secrets_rule_shows_them(cluster: Cluster) -> None:
    cluster.admin_kubectl("create", "secret", "generic", "ops-db", "-n", "ops", f"--from-literal=password={OPS_PASSWORD}")
    shown = cluster.kubectl("get", "secret", "ops-db", "-n", "ops", "-o", "json", agent=OPS)
    assert shown.returncode == 0, shown.stderr
    assert decoded_values(json.loads(shown.stdout)) == [OPS_PASSWORD]
    other = cluster.kubectl("get", "secret", "ops-db", "-n", "ops", "-o", "json")  # the deployer has no rule
    assert other.returncode == 1 and "Forbidden" in other.stderr


PYTHON_CLIENT = """
import json, sys, threading, time
from kubernetes import client, config, watch
from kubernetes.stream import stream

api = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1]))
out = {"pods": sorted(p.metadata.name for p in api.list_namespaced_pod("dev").items)}
start = api.list_namespaced_config_map("dev").metadata.resource_version
created = api.create_namespaced_config_map("dev", {"metadata": {"name": "py-made"}, "data": {"n": "1"}})
out["created"] = [created.metadata.name, created.data]

def change():
    time.sleep(0.5)
    api.patch_namespaced_config_map("py-made", "dev", {"data": {"n": "2"}})
    api.delete_namespaced_config_map("py-made", "dev")

changer = threading.Thread(target=change)
changer.start()
seen, watcher = [], watch.Watch()
for event in watcher.stream(api.list_namespaced_config_map, "dev", resource_version=start, timeout_seconds=4):
    seen.append([event["type"], event["object"].metadata.name, event["object"].data])
    if event["type"] == "DELETED":
        watcher.stop()
changer.join()
out["watched"] = seen
out["exec"] = stream(api.connect_get_namespaced_pod_exec, "py-shell", "dev", command=["echo", "over", "websocket"],
                     stderr=True, stdin=False, stdout=True, tty=False)
try:
    api.list_namespaced_secret("kube-system")
except client.ApiException as exc:
    out["denied"] = [exc.status, json.loads(exc.body)["message"]]
print(json.dumps(out))
"""


def test_python_kubernetes_client_lists_creates_watches_and_execs(cluster: Cluster) -> None:
    cluster.admin_kubectl("run", "py-shell", "-n", "dev", "--image=busybox:1")
    report = last_json(agent_python(AGENT, PYTHON_CLIENT, str(cluster.agent_config)))
    assert "py-shell" in report["pods"]
    assert report["created"] == ["py-made", {"n": "1"}]
    assert report["watched"] == [["ADDED", "py-made", {"n": "1"}], ["MODIFIED", "py-made", {"n": "2"}],
                                 ["DELETED", "py-made", {"n": "2"}]]
    assert report["exec"] == "over websocket\n"
    assert report["denied"] == [403, 'list secrets in namespace "kube-system" is forbidden by interceptor rule '
                                     f"no-system-secrets: {SYSTEM_REASON}"]
    websocket = wait_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("name") == "py-shell"
                             and e["operation"].get("subresource") == "exec")[-1]
    # a GET upgrade, authorized as create (as kube-apiserver 1.31+ authorizes WebSocket exec)
    assert (websocket["operation"]["method"], websocket["operation"]["verb"]) == ("GET", "create")
    assert websocket["rule"] == "dev-shells"
    assert websocket["outcome"]["upgrade"]["protocol"].lower() == "websocket"
    assert websocket["outcome"]["upgrade"]["bytes_down"] > len("over websocket\n")
    exec_request = [e for e in cluster.api.requests() if e["path"] == "/api/v1/namespaces/dev/pods/py-shell/exec"]
    assert [(e["method"], (header(e, "upgrade") or "").lower()) for e in exec_request] == [("GET", "websocket")]
    # the watch is recorded when its response ends: the server ends it after its timeoutSeconds (4)
    watches = wait_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("verb") == "watch"
                           and e["operation"].get("resource") == "configmaps", timeout=15)
    assert watches[-1]["outcome"]["status"] == 200 and watches[-1]["outcome"]["bytes_down"] > 0


def test_the_audit_cli_finds_the_requests_and_proves_the_chain(cluster: Cluster) -> None:
    """What an operator reads with `interceptor audit`: every request of the agent, denials by
    rule, exec relays with their byte counts; the hash chain intact."""
    cluster.admin_kubectl("run", "audited", "-n", "dev", "--image=busybox:1")
    assert cluster.kubectl("exec", "audited", "-n", "dev", "--", "hostname").stdout == "audited\n"
    assert cluster.kubectl("get", "secrets", "-n", "kube-system").returncode == 1
    searched = cluster.daemon.cli("audit", "search", "--agent", AGENT, "--kind", "request", "--resource", "cluster",
                                  "--json")
    records = [json.loads(line) for line in searched.stdout.splitlines() if line.strip()]
    records = [record.get("event", record) for record in records]
    assert {"allow", "deny"} <= {record["decision"] for record in records}
    assert {"workloads", "dev-shells", "no-system-secrets"} <= {r["rule"] for r in records}
    [relay] = [r for r in records if r["operation"].get("name") == "audited" and "upgrade" in r["outcome"]]
    assert relay["outcome"]["upgrade"]["bytes_down"] > len("audited\n"), relay
    verified = cluster.daemon.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout


SYSTEM_SECRETS = ["/api/v1/namespaces/kube-system/secrets", "/api/v1/namespaces/dev/../kube-system/secrets",
                  "/api/v1/namespaces/kube-system//secrets", "/api/v1/namespaces/kube-system/secrets/",
                  "/api/v1/namespaces/kube%2Dsystem/secrets", "/api/v1/namespaces/kube-system/%73ecrets",
                  "/api/v1/namespaces/kube-system/secrets/../secrets", "/api/v1/watch/namespaces/kube-system/secrets",
                  "/api/v1/namespaces/kube-system/secrets?watch=1", "/api/v1/namespaces/kube-system/secrets;x=y",
                  "/api/v1/namespaces/dev/%2e%2e/kube-system/secrets", "/api/v1/namespaces/kube-system/Secrets"]


def test_raw_requests_for_denied_paths_never_reach_the_server(cluster: Cluster) -> None:
    """Every spelling of a denied path (dot segments, empty segments, percent-encoding, the
    /watch/ prefix and ?watch, a trailing slash, ';' parameters) is refused, 403 or 400, and
    identity headers an API server would trust are dropped from what is allowed."""
    ca = str(ca_file(cluster.daemon))
    mark = len(cluster.api.requests())
    for path in SYSTEM_SECRETS:
        out = run_agent(AGENT, "curl", "-sS", "--path-as-is", "--cacert", ca, "-w", "\n%{http_code}",
                        cluster.api.url + path)
        body, _, status = out.stdout.rpartition("\n")
        assert status in ("400", "403"), (path, out.stdout, out.stderr)
        assert json.loads(body)["kind"] == "Status", (path, body)
    assert [e["target"] for e in cluster.requests_since(mark)] == []
    allowed = run_agent(AGENT, "curl", "-sS", "--cacert", ca, "-H", "Impersonate-User: admin", "-H",
                        "Impersonate-Group: system:masters", "-H", "Impersonate-Extra-Scopes: all", "-H",
                        "X-Remote-User: admin", "-H", "X-Remote-Group: system:masters", "-H",
                        "Authorization: Bearer forged", cluster.api.url + "/api/v1/namespaces/dev/pods")
    assert json.loads(allowed.stdout)["kind"] == "PodList", allowed
    [listed] = cluster.requests_since(mark)
    names = {name.lower() for name, _ in listed["headers"]}
    assert not {name for name in names if name.startswith(("impersonate-", "x-remote-"))}, names
    assert header(listed, "authorization") == f"Bearer {cluster.api.token}"


def test_a_large_secret_list_is_masked_although_kubectl_accepts_gzip(cluster: Cluster) -> None:
    """kubectl asks for gzip; the stand-in gzips bodies of 128 KiB and more for clients that
    ask, as the API server does. The enforcer asks for identity coding, so what it masks is
    JSON it reads."""
    bulky = base64.b64encode(b"B" * 200_000).decode()
    cluster.admin_kubectl("apply", "--validate=false", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bulky", "namespace": "dev"},
        "data": {"blob": bulky}}))
    mark = len(cluster.api.requests())
    out = cluster.kubectl("get", "secret", "bulky", "-n", "dev", "-o", "json")
    assert out.returncode == 0, out.stderr
    secret = json.loads(out.stdout)
    assert list(secret["data"]) == ["blob"] and bulky not in out.stdout and "QkJCQkJC" not in out.stdout
    [read] = [e for e in cluster.requests_since(mark) if e["path"] == "/api/v1/namespaces/dev/secrets/bulky"]
    assert header(read, "accept-encoding") == "identity"


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def test_secret_values_are_masked_in_tables_with_their_objects(cluster: Cluster) -> None:
    """A Table (what kubectl get asks for) can carry each row's whole object
    (includeObject=Object), in a list and in each watch event: masked there too."""
    cluster.admin_kubectl("create", "secret", "generic", "tabled", "-n", "dev", "--from-literal=token=tabled-value")
    ca = str(ca_file(cluster.daemon))
    url = cluster.api.url + "/api/v1/namespaces/dev/secrets"
    listed = run_agent(AGENT, "curl", "-sS", "--cacert", ca, "-H", f"Accept: {TABLE}",
                       url + "?includeObject=Object&fieldSelector=metadata.name%3Dtabled")
    table = json.loads(listed.stdout)
    assert table["kind"] == "Table" and [row["object"]["metadata"]["name"] for row in table["rows"]] == ["tabled"]
    assert table["rows"][0]["object"]["data"].keys() == {"token"}
    assert_no_secret(listed.stdout, "tabled-value")
    watched = run_agent(AGENT, "curl", "-sS", "--cacert", ca, "-H", f"Accept: {TABLE}",
                        url + "?includeObject=Object&watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dtabled")
    events = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["kind"]) for e in events] == [("ADDED", "Table")], watched.stdout
    assert events[0]["object"]["rows"][0]["object"]["data"].keys() == {"token"}
    assert_no_secret(watched.stdout, "tabled-value")


def test_a_watch_the_agent_abandons_ends_and_is_recorded(cluster: Cluster) -> None:
    """kubectl get -w stopped (killed, as Ctrl-C does): its connection to the enforcer closes
    while the watch streams. The enforcer ends the flow (and the upstream watch with it) and
    writes the watch's record then, not when the API server ends the watch (its timeout is 30
    to 60 minutes) or when an event happens to come and cannot be written."""
    watcher = start_agent(AGENT, kubectl(), "--kubeconfig", str(cluster.agent_config), "get", "configmaps", "-n",
                          "dev", "-w")
    time.sleep(2)
    watcher.kill()
    watcher.wait(timeout=10)
    wait_records(cluster.daemon, lambda e: (e.get("operation") or {}).get("verb") == "watch" and
                 e["operation"].get("resource") == "configmaps" and "kubectl" in e["process"]["exe"], timeout=5)


WEBSOCKET_EXEC = """
import base64, socket, ssl, sys
host, port, ca, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
offered = "base64url.bearer.authorization.k8s.io." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
context = ssl.create_default_context(cafile=ca)
with context.wrap_socket(socket.create_connection((host, port)), server_hostname=host) as sock:
    sock.sendall((f"GET /api/v1/namespaces/dev/pods/ws-shell/exec?command=hostname&stdout=true HTTP/1.1\\r\\n"
                  f"Host: {host}:{port}\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n"
                  f"Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
                  f"Sec-WebSocket-Protocol: {offered}, v4.channel.k8s.io\\r\\n\\r\\n").encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += sock.recv(4096)
print(head.split(b"\\r\\n")[0].decode())
"""


def test_a_bearer_token_offered_as_a_websocket_subprotocol_never_reaches_the_server(cluster: Cluster) -> None:
    """The API server authenticates a WebSocket by a token in the subprotocol list
    (base64url.bearer.authorization.k8s.io.<token>), as browsers cannot set headers: the
    enforcer drops it; the exec runs with the cluster's token."""
    cluster.admin_kubectl("run", "ws-shell", "-n", "dev", "--image=busybox:1")
    out = agent_python(AGENT, WEBSOCKET_EXEC, cluster.api.host, str(cluster.api.port), str(ca_file(cluster.daemon)),
                       "agents-websocket-token")
    assert out.stdout.startswith("HTTP/1.1 101"), out.stdout + out.stderr
    [upgrade] = [e for e in cluster.api.requests() if e["path"] == "/api/v1/namespaces/dev/pods/ws-shell/exec"]
    assert header(upgrade, "sec-websocket-protocol") == "v4.channel.k8s.io"
    assert header(upgrade, "authorization") == f"Bearer {cluster.api.token}"
