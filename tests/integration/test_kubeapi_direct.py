"""The test stand-ins against real clients, directly (no enforcer): the Kubernetes API stand-in
(tests/kubeapi - a STATEFUL TEST SERVER written for these tests, because no real kube-apiserver can
be installed here; it follows the API conventions: discovery, resourceVersion, list and chunked
watch, Table output, Status errors, logs, exec) with Debian's kubectl 1.20 and the python
`kubernetes` client, and the MCP stand-in (tests/mcp_server.py) with the `mcp` package's client.
These prove the stand-ins behave as the real servers do for these clients, so the enforcer's
tests can put them upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube_fixture import KubeApi, McpServer, kubectl, running_kubeapi, running_mcp
from netns import RemoteHost
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.stream import stream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, TextContent

FORBIDDEN = "secure"
MANIFEST = """\
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}, annotations: {{stand-in.test/log: "boot\\nserving /healthz"}}}}
spec:
  containers: [{{name: web, image: "nginx:{tag}", env: [{{name: MODE, value: prod}}]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers: [{{name: api, image: "api:{tag}", ports: [{{containerPort: 80}}]}}]
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    with running_kubeapi(tmp_path_factory.mktemp("kubeapi"), forbid_namespaces=[FORBIDDEN], log_interval=0.2) as server:
        yield server


@pytest.fixture(scope="module")
def kubeconfig(api: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return api.kubeconfig(tmp_path_factory.mktemp("kubeconfig") / "config")


def run_kubectl(kubeconfig: Path, *args: str, timeout: float = 30, check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([kubectl(), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                            timeout=timeout, input=stdin or "")
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def header(entry: dict[str, Any], name: str) -> str | None:
    return next((value for key, value in entry["headers"] if key == name), None)


def api_client(kubeconfig: Path) -> Any:
    """CoreV1Api, typed Any: it takes the plain dicts these tests send as bodies, which its annotations
    (models only) do not say."""
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return k8s.CoreV1Api(api)


def test_kubectl_get_asks_for_a_table_with_the_token(api: KubeApi, kubeconfig: Path) -> None:
    out = run_kubectl(kubeconfig, "get", "namespaces").stdout.splitlines()
    assert out[0].split() == ["NAME", "STATUS", "AGE"]
    assert {line.split()[0] for line in out[1:]} >= {"default", "kube-system"}
    listed = [e for e in api.requests() if e["path"] == "/api/v1/namespaces" and e["method"] == "GET"][-1]
    assert "as=Table" in (header(listed, "accept") or "")
    assert header(listed, "authorization") == f"Bearer {api.token}"


def test_without_the_token_requests_are_unauthorized(api: KubeApi, tmp_path: Path) -> None:
    wrong = api.kubeconfig(tmp_path / "wrong", token="not-the-token")
    result = run_kubectl(wrong, "get", "pods", check=False)
    assert result.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized)" in result.stderr
    anonymous = httpx.get(f"{api.url}/api/v1/namespaces/default/pods", verify=ssl.create_default_context(cafile=api.ca))
    assert anonymous.status_code == 401
    assert anonymous.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert header(api.requests()[-1], "authorization") is None


def test_kubectl_apply_creates_then_patches(api: KubeApi, kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST.format(tag="1"))
    first = run_kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout
    assert "pod/web created" in first and "deployment.apps/api created" in first
    manifest.write_text(MANIFEST.format(tag="1").replace("api:1", "api:2"))
    second = run_kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout
    assert "pod/web unchanged" in second and "deployment.apps/api configured" in second
    deployment = json.loads(run_kubectl(kubeconfig, "get", "deployment", "api", "-o", "json").stdout)
    assert deployment["spec"]["template"]["spec"]["containers"] == [
        {"name": "api", "image": "api:2", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
    assert deployment["metadata"]["generation"] == 2
    assert any(e["path"] == "/openapi/v2" for e in api.requests()), "kubectl validated against the OpenAPI document"
    patch = [e for e in api.requests() if e["method"] == "PATCH" and e["path"].endswith("/deployments/api")][-1]
    assert header(patch, "content-type") == "application/strategic-merge-patch+json"
    table = run_kubectl(kubeconfig, "get", "deployments").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:2] == ["api", "2/2"]


def test_kubectl_describe_pod(kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "run", "described", "--image=busybox:1", "--env=LEVEL=debug")
    out = run_kubectl(kubeconfig, "describe", "pod", "described").stdout
    assert "Name:         described" in out
    assert "Status:       Running" in out
    assert "Image:          busybox:1" in out
    assert "LEVEL:  debug" in out


def test_kubectl_logs_and_logs_follow(kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST.format(tag="1"))
    run_kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert run_kubectl(kubeconfig, "logs", "web").stdout == "boot\nserving /healthz\n"
    assert run_kubectl(kubeconfig, "logs", "web", "--tail=1").stdout == "serving /healthz\n"
    follow = subprocess.Popen([kubectl(), "--kubeconfig", str(kubeconfig), "logs", "-f", "web"],
                              stdout=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    lines = [follow.stdout.readline() for _ in range(4)]
    follow.terminate()
    follow.wait(timeout=10)
    assert lines == ["boot\n", "serving /healthz\n", "tick 1\n", "tick 2\n"]


def test_kubectl_exec_and_attach_over_spdy(api: KubeApi, kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "run", "spdy-shell", "--image=busybox:1")
    assert run_kubectl(kubeconfig, "exec", "spdy-shell", "--", "echo", "hello", "spdy").stdout == "hello spdy\n"
    failed = run_kubectl(kubeconfig, "exec", "spdy-shell", "--", "cat", "/nope", check=False)
    assert failed.returncode == 1
    assert "cat: /nope: No such file or directory" in failed.stderr
    assert "command terminated with exit code 1" in failed.stderr
    piped = run_kubectl(kubeconfig, "exec", "-i", "spdy-shell", "--", "cat", stdin="piped input\n")
    assert piped.stdout == "piped input\n"
    execs = [e for e in api.requests() if e["path"].endswith("/pods/spdy-shell/exec")]
    assert [(e["method"], header(e, "upgrade")) for e in execs] == [("POST", "SPDY/3.1")] * 3
    attached = run_kubectl(kubeconfig, "attach", "spdy-shell")
    assert attached.stdout == "spdy-shell starting\nlistening on :8080\nready\n"


def test_kubectl_port_forward_reaches_an_echoing_port(kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "run", "forwarded", "--image=busybox:1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    forward = subprocess.Popen([kubectl(), "--kubeconfig", str(kubeconfig), "port-forward", "pod/forwarded",
                                f"{local}:80"], stdout=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        assert forward.stdout.readline().startswith(f"Forwarding from 127.0.0.1:{local} -> 80")
        with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
            conn.sendall(b"ping through the pod")
            conn.shutdown(socket.SHUT_WR)
            echoed = b""
            while chunk := conn.recv(4096):
                echoed += chunk
        assert echoed == b"ping through the pod"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_kubectl_get_watch_sees_changes(kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "run", "watched", "--image=busybox:1", "--labels=watch=me")
    watcher = subprocess.Popen([kubectl(), "--kubeconfig", str(kubeconfig), "get", "pods", "-l", "watch=me", "-w",
                                "--output-watch-events"], stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    first = [watcher.stdout.readline(), watcher.stdout.readline()]
    run_kubectl(kubeconfig, "label", "pod", "watched", "seen=yes")
    run_kubectl(kubeconfig, "delete", "pod", "watched")
    rest = [watcher.stdout.readline(), watcher.stdout.readline()]
    watcher.terminate()
    watcher.wait(timeout=10)
    assert first[0].split()[:2] == ["EVENT", "NAME"]
    assert [line.split()[:2] for line in [first[1], *rest]] == [["ADDED", "watched"], ["MODIFIED", "watched"],
                                                                 ["DELETED", "watched"]]


def test_kubectl_delete_then_not_found(kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "create", "configmap", "doomed", "--from-literal=k=v")
    assert 'configmap "doomed" deleted' in run_kubectl(kubeconfig, "delete", "configmap", "doomed").stdout
    gone = run_kubectl(kubeconfig, "get", "configmap", "doomed", check=False)
    assert gone.returncode == 1
    assert 'Error from server (NotFound): configmaps "doomed" not found' in gone.stderr


def test_kubectl_errors_are_statuses(kubeconfig: Path) -> None:
    denied = run_kubectl(kubeconfig, "get", "pods", "-n", FORBIDDEN, check=False)
    assert denied.returncode == 1
    assert (f'Error from server (Forbidden): pods is forbidden: User "stand-in-user" cannot list resource "pods" in '
            f'API group "" in the namespace "{FORBIDDEN}"') in denied.stderr
    run_kubectl(kubeconfig, "create", "configmap", "twice")
    again = run_kubectl(kubeconfig, "create", "configmap", "twice", check=False)
    assert 'Error from server (AlreadyExists): configmaps "twice" already exists' in again.stderr
    bad = run_kubectl(kubeconfig, "create", "configmap", "Bad_Name", check=False)
    assert 'The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in bad.stderr


def test_kubectl_secret_values_come_back_base64(kubeconfig: Path) -> None:
    run_kubectl(kubeconfig, "create", "secret", "generic", "db", "--from-literal=password=hunter2")
    secret = json.loads(run_kubectl(kubeconfig, "get", "secret", "db", "-o", "json").stdout)
    assert secret["data"] == {"password": "aHVudGVyMg=="}
    assert secret["type"] == "Opaque"
    assert "hunter2" not in run_kubectl(kubeconfig, "get", "secrets").stdout


def test_python_client_crud_selectors_and_chunking(kubeconfig: Path) -> None:
    core = api_client(kubeconfig)
    core.create_namespace({"metadata": {"name": "py"}})
    for index in range(5):
        core.create_namespaced_config_map("py", {"metadata": {"name": f"cm{index}",
                                                              "labels": {"parity": "odd" if index % 2 else "even"}},
                                                 "data": {"n": str(index)}})
    with pytest.raises(k8s.ApiException) as conflict:
        core.create_namespaced_config_map("py", {"metadata": {"name": "cm0"}})
    assert conflict.value.status == 409 and json.loads(conflict.value.body or "{}")["reason"] == "AlreadyExists"
    odd = core.list_namespaced_config_map("py", label_selector="parity=odd").items
    assert [item.metadata.name for item in odd] == ["cm1", "cm3"]
    named = core.list_namespaced_config_map("py", field_selector="metadata.name=cm4").items
    assert [item.data for item in named] == [{"n": "4"}]
    page = core.list_namespaced_config_map("py", limit=2)
    rest = core.list_namespaced_config_map("py", limit=10, _continue=page.metadata._continue)
    assert [i.metadata.name for i in page.items + rest.items] == [f"cm{i}" for i in range(5)]
    before = int(page.metadata.resource_version)
    patched = core.patch_namespaced_config_map("cm0", "py", {"data": {"n": "zero"}})
    assert patched.data == {"n": "zero"} and int(patched.metadata.resource_version) > before
    stale = core.read_namespaced_config_map("cm1", "py")
    stale.metadata.resource_version = str(before - 1)
    with pytest.raises(k8s.ApiException) as modified:
        core.replace_namespaced_config_map("cm1", "py", stale)
    assert modified.value.status == 409 and json.loads(modified.value.body or "{}")["reason"] == "Conflict"
    core.delete_collection_namespaced_config_map("py", label_selector="parity=even")
    assert [i.metadata.name for i in core.list_namespaced_config_map("py").items] == ["cm1", "cm3"]
    with pytest.raises(k8s.ApiException) as missing:
        core.read_namespaced_config_map("cm0", "py")
    assert missing.value.status == 404


def test_python_client_watch_streams_live_events(kubeconfig: Path) -> None:
    core = api_client(kubeconfig)
    core.create_namespace({"metadata": {"name": "watched"}})
    start = core.list_namespaced_pod("watched").metadata.resource_version

    def change() -> None:
        time.sleep(0.5)
        body = {"metadata": {"name": "w1"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        core.create_namespaced_pod("watched", body)
        core.patch_namespaced_pod("w1", "watched", {"metadata": {"labels": {"v": "2"}}})
        core.delete_namespaced_pod("w1", "watched")

    changer = threading.Thread(target=change)
    changer.start()
    seen = []
    watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
    events = watcher.stream(  # type: ignore[no-untyped-call]
        core.list_namespaced_pod, "watched", resource_version=start, timeout_seconds=10)
    for event in events:
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            watcher.stop()  # type: ignore[no-untyped-call]
    changer.join()
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_python_client_exec_over_websocket(kubeconfig: Path) -> None:
    core = api_client(kubeconfig)
    core.create_namespaced_pod("default", {"metadata": {"name": "shell"}, "spec": {"containers": [
        {"name": "c", "image": "x", "env": [{"name": "TOKEN", "value": "t0"}]}]}})
    output = stream(core.connect_get_namespaced_pod_exec, "shell", "default", command=["echo", "hello", "world"],
                    stderr=True, stdin=False, stdout=True, tty=False)
    assert output == "hello world\n"
    failing = stream(core.connect_get_namespaced_pod_exec, "shell", "default", command=["cat", "/etc/shadow"],
                     stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    failing.run_forever(timeout=10)
    assert failing.returncode == 1
    assert failing.read_stderr() == "cat: /etc/shadow: No such file or directory\n"
    echo = stream(core.connect_get_namespaced_pod_exec, "shell", "default", command=["cat"], stderr=True,
                  stdin=True, stdout=True, tty=False, _preload_content=False)
    echo.write_stdin("typed line\n")
    deadline = time.monotonic() + 10
    received = ""
    while "typed line" not in received and time.monotonic() < deadline:
        echo.update(timeout=1)
        received += echo.read_stdout()
    echo.close()
    assert received == "typed line\n"


def _text(result: CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent), content
    return content.text


def test_stand_ins_run_inside_a_network_namespace(remote: RemoteHost, tmp_path: Path) -> None:
    """As the enforcer's tests run them: at the remote host's address, in its namespace."""
    with running_kubeapi(tmp_path / "kube", host=remote.ip4, netns=remote.name) as inside:
        assert inside.url == f"https://{remote.ip4}:{inside.port}"
        config = inside.kubeconfig(tmp_path / "config")
        assert run_kubectl(config, "get", "namespace", "default", "-o", "name").stdout == "namespace/default\n"
        assert inside.requests()[-1]["peer"].startswith(remote.host_ip4 + ":")
    with running_mcp(tmp_path / "mcp", host=remote.ip4, netns=remote.name) as mcp_inside:
        assert asyncio.run(_mcp_tools(mcp_inside.url)) == ["search_docs", "read_file", "delete_file", "get_customer"]


def test_large_bodies_are_gzipped_for_clients_that_accept_gzip(tmp_path: Path) -> None:
    with running_kubeapi(tmp_path, gzip_min=256) as small:
        context = ssl.create_default_context(cafile=small.ca)
        auth = {"authorization": f"Bearer {small.token}"}
        url = f"{small.url}/api/v1/namespaces"
        zipped = httpx.get(url, headers={**auth, "accept-encoding": "gzip"}, verify=context)
        plain = httpx.get(url, headers={**auth, "accept-encoding": "identity"}, verify=context)
        assert zipped.headers["content-encoding"] == "gzip"
        assert "content-encoding" not in plain.headers
        assert zipped.json()["items"] == plain.json()["items"]


async def _mcp_tools(url: str) -> list[str]:
    async with Client(url) as session:
        return [tool.name for tool in (await session.list_tools()).tools]


async def _mcp_session(server: McpServer, mode: str, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(server.url, http_client=http), mode=mode) as session:
            tools = await session.list_tools()
            customer = await session.call_tool("get_customer", {"id": "42"})
            deleted = await session.call_tool("delete_file", {"path": "/srv/docs/notes.txt"})
            again = await session.call_tool("delete_file", {"path": "/srv/docs/notes.txt"})
            return {"tools": [tool.name for tool in tools.tools], "customer": _text(customer),
                    "deleted": _text(deleted), "again_error": again.is_error}


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_mcp_client_lists_and_calls_tools(tmp_path: Path, json_response: bool, mode: str) -> None:
    with running_mcp(tmp_path, json_response=json_response, token="mcp-token") as server:
        result = asyncio.run(_mcp_session(server, mode, "mcp-token"))
        assert result == {"tools": ["search_docs", "read_file", "delete_file", "get_customer"],
                          "customer": "Customer 42: Ada Lovelace, email ada@example.com, card 4111 1111 1111 1111",
                          "deleted": "deleted /srv/docs/notes.txt", "again_error": True}
        assert [(c["tool"], c["arguments"]) for c in server.calls()] == [
            ("get_customer", {"id": "42"}), ("delete_file", {"path": "/srv/docs/notes.txt"}),
            ("delete_file", {"path": "/srv/docs/notes.txt"})]
        posts = [e for e in server.requests() if e["method"] == "POST"]
        assert all(header(e, "authorization") == "Bearer mcp-token" for e in posts)
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        accept = {"accept": "application/json, text/event-stream"}
        raw = httpx.post(server.url, json=initialize, headers={**accept, "authorization": "Bearer mcp-token"})
        expected = "application/json" if json_response else "text/event-stream"
        assert raw.status_code == 200 and raw.headers["content-type"].startswith(expected)
        refused = httpx.post(server.url, json=initialize, headers=accept)
        assert refused.status_code == 401
        assert len(server.calls()) == 3
