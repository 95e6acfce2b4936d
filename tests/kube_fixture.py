"""Start the test stand-ins - the Kubernetes API server (tests/kubeapi) and the MCP server
(tests/mcp_server.py) - as subprocesses on a given address, optionally inside a network
namespace (`ip netns exec`), and stop them after.

    with running_kubeapi(workdir, host="10.231.0.2", netns=remote.name) as api:
        api.url, api.ca, api.token          # https://10.231.0.2:PORT, CA PEM path, bearer token
        api.kubeconfig(workdir / "kc")      # kubeconfig with token and CA (or none: token=None)
        api.requests()                      # every request it received: method, path, query, headers, body

    with running_mcp(workdir, json_response=True, token="t") as mcp:
        mcp.url                             # http://HOST:PORT/mcp
        mcp.calls()                         # every tools/call that reached it: tool, arguments

`kubectl()` finds Debian's kubectl 1.20 (kubernetes-client). Pytest fixtures: `kubeapi`
(module scope, loopback) and `mcp_server` (module scope, JSON responses, no token); import them
into a test module (`from kube_fixture import kubeapi_fixture`).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeapi.certs import issue

TESTS = Path(__file__).resolve().parent
VENV = Path(sys.executable).parent.parent
START_TIMEOUT = 20.0
# scripts/install.sh unpacks Debian's kubernetes-client here: its /usr/bin/kubectl conflicts with
# the kubectl package some hosts have, so it is not installed system-wide.
DEBIAN_KUBECTL = VENV / "kubernetes-client" / "usr" / "bin" / "kubectl"


class StandInError(RuntimeError):
    """A stand-in server could not be started, or a component the tests need is missing."""


def kubectl() -> str:
    """Path of Debian's kubectl (kubernetes-client 1.20): $KUBECTL, the copy scripts/install.sh
    unpacks into the venv, or /usr/bin/kubectl when that is Debian's. Raises StandInError otherwise."""
    for candidate in (os.environ.get("KUBECTL"), str(DEBIAN_KUBECTL), shutil.which("kubectl")):
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "version", "--client", "-o", "json"], capture_output=True,
                                     text=True, timeout=30)
            if '"gitVersion": "v1.20.' in version.stdout:
                return candidate
    raise StandInError("Debian's kubectl 1.20 (kubernetes-client) is missing: run scripts/install.sh (unpacks it "
                       f"into {DEBIAN_KUBECTL.parent.parent.parent}) or set KUBECTL to its path")


def _wait_ready(process: subprocess.Popen[bytes], log: Path, what: str) -> int:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            line = process.stdout.readline().decode()
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line:
                break
    process.kill()
    process.wait()
    raise StandInError(f"{what} did not start; its log {log}:\n{log.read_text()[-3000:]}")


def _start(argv: list[str], netns: str | None, log: Path, what: str) -> tuple[subprocess.Popen[bytes], int]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as log_handle:
        process = subprocess.Popen([*prefix, sys.executable, *argv], stdout=subprocess.PIPE, stderr=log_handle,
                                   stdin=subprocess.DEVNULL, env=env, cwd=TESTS)
    return process, _wait_ready(process, log, what)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_token(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return path


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class KubeApi:
    """A running Kubernetes API stand-in (HTTPS, bearer token `token` - also in `token_file`, mode
    0600, for a resource's `credentials: {from: file}` - and CA `ca`)."""

    host: str
    port: int
    ca: Path
    token: str
    token_file: Path
    request_log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://{_url_host(self.host)}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far, oldest first: time, peer, method, target, path, query
        ({name: [values]}), headers ([[lower-case name, value]]), body (text, first 64 KiB)."""
        return _read_jsonl(self.request_log)

    def kubeconfig(self, path: Path, token: str | None = "", namespace: str = "default", server: str | None = None,
                   ca: Path | None = None) -> Path:
        """Write a kubeconfig for this server: `token` "" means the real token, None no credential
        (an agent's kubeconfig); `server` and `ca` default to this server's URL and CA."""
        user: dict[str, Any] = {} if token is None else {"token": token or self.token}
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
                  "clusters": [{"name": "stand-in", "cluster": {"server": server or self.url,
                                                                "certificate-authority": str(ca or self.ca)}}],
                  "users": [{"name": "stand-in", "user": user}],
                  "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in",
                                                                "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(config))
        return path


@contextmanager
def running_kubeapi(workdir: Path, host: str = "127.0.0.1", port: int = 0, netns: str | None = None,
                    names: Sequence[str] = (), forbid_namespaces: Sequence[str] = (),
                    log_interval: float = 0.5, gzip_min: int = 128 * 1024) -> Iterator[KubeApi]:
    """The stand-in on host:port (0: a free port) for the block, inside network namespace `netns`
    when given; its certificate names `host` and `names`; every call in `forbid_namespaces` is 403;
    followed logs add a line every `log_interval` s; bodies of `gzip_min` bytes or more are gzipped
    for clients that accept gzip. Raises StandInError when it does not start."""
    workdir.mkdir(parents=True, exist_ok=True)
    certificate = issue(workdir / "kubeapi-tls", [host, *names], "kubeapi stand-in")
    token = secrets.token_urlsafe(24)
    token_file = _write_token(workdir / "kubeapi-token", token)
    request_log = workdir / "kubeapi-requests.jsonl"
    argv = ["-m", "kubeapi", "--host", host, "--port", str(port), "--cert", str(certificate.cert),
            "--key", str(certificate.key), "--token-file", str(token_file), "--request-log", str(request_log),
            "--log-interval", str(log_interval), "--gzip-min", str(gzip_min),
            *(f"--forbid-namespace={ns}" for ns in forbid_namespaces)]
    process, bound = _start(argv, netns, workdir / "kubeapi.log", "the Kubernetes API stand-in")
    try:
        yield KubeApi(host, bound, certificate.ca, token, token_file, request_log, process)
    finally:
        _stop(process)


@dataclass
class McpServer:
    """A running MCP stand-in (plain HTTP) at `url`; `token` (also in `token_file`, mode 0600) is None
    when it needs none."""

    host: str
    port: int
    token: str | None
    token_file: Path | None
    calls_log: Path
    request_log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/mcp"

    def calls(self) -> list[dict[str, Any]]:
        """Every tool call that reached the server, oldest first: time, tool, arguments."""
        return _read_jsonl(self.calls_log)

    def requests(self) -> list[dict[str, Any]]:
        """Every HTTP request received, oldest first: time, method, path, query, headers ([[name, value]]), body."""
        return _read_jsonl(self.request_log)


@contextmanager
def running_mcp(workdir: Path, host: str = "127.0.0.1", port: int = 0, netns: str | None = None,
                json_response: bool = True, token: str | None = None) -> Iterator[McpServer]:
    """tests/mcp_server.py on host:port (0: a free port) for the block, inside `netns` when given;
    JSON responses or SSE; with `token`, requests need it as a bearer token. Raises StandInError."""
    workdir.mkdir(parents=True, exist_ok=True)
    calls, request_log = workdir / "mcp-calls.jsonl", workdir / "mcp-requests.jsonl"
    argv = [str(TESTS / "mcp_server.py"), "--host", host, "--port", str(port), "--calls", str(calls),
            "--request-log", str(request_log), *(["--json-response"] if json_response else [])]
    token_file = None if token is None else _write_token(workdir / "mcp-token", token)
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    process, bound = _start(argv, netns, workdir / "mcp-server.log", "the MCP stand-in")
    try:
        yield McpServer(host, bound, token, token_file, calls, request_log, process)
    finally:
        _stop(process)


@pytest.fixture(name="mcp_server", scope="module")
def mcp_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServer]:
    """The MCP stand-in on 127.0.0.1 with JSON responses and no token, one per test module."""
    with running_mcp(tmp_path_factory.mktemp("mcp")) as server:
        yield server


@pytest.fixture(name="kubeapi", scope="module")
def kubeapi_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """The Kubernetes API stand-in on 127.0.0.1, one per test module."""
    with running_kubeapi(tmp_path_factory.mktemp("kubeapi")) as api:
        yield api
