"""What the integration tests of the protocols over HTTP (http, kubernetes, mcp) share: a policy
around one resource, its credentials file, the daemon on it, agent commands under
`interceptor exec`, the request records of the audit trail, and small raw-socket helpers.

    with running_http_daemon(workdir, policy_text) as daemon:
        run_agent(AGENT, "curl", ...)                 # the command in the agent's cgroup
        request_records(daemon, rule="allow-reads")   # kind "request" audit records

The upstream stand-ins are tests/kube_fixture.py's (Kubernetes API, MCP server); the policy
names them at the address they listen on, so the agent's connections to that address are
diverted by the kernel to the enforcer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon import INTERCEPTOR, Daemon, running_daemon

# Approvals decided by root as break-glass: no approver token is read from this person's config
ROOT_APPROVER = {**os.environ, "XDG_CONFIG_HOME": "/nonexistent"}


def write_token(path: Path, token: str) -> Path:
    """A `from: file` credentials file holding `token:` (mode 0600); returns `path`."""
    path.touch(mode=0o600)  # made unreadable to others before the token is in it
    path.write_text(f"token: {token}\n")
    return path


def resource_block(name: str, protocol: str, address: str, credentials: Path | None = None,
                   options: str = "") -> str:
    """A policy's `resources:` entry: `name` at `address` (HOST:PORT) with `protocol`, the
    `credentials` file (None: none) and `options` (a YAML flow mapping, "" for none)."""
    lines = [f"  {name}:", f"    protocol: {protocol}", f'    addresses: ["{address}"]']
    if credentials is not None:
        lines.append(f"    credentials: {{from: file, path: {credentials}}}")
    if options:
        lines.append(f"    options: {options}")
    return "\n".join(lines) + "\n"


def policy_text(agents: Sequence[str], resources: Sequence[str], rules: Sequence[str]) -> str:
    """A policy YAML: each of `agents` with `unprotected: deny` (it reaches nothing but the
    resources), the `resources` (resource_block), and `rules`, each a YAML flow mapping on a line."""
    agent_lines = "".join(f"  {agent}: {{unprotected: deny}}\n" for agent in agents)
    body = "".join(f"  - {rule}\n" for rule in rules)
    return f"version: 1\nagents:\n{agent_lines}resources:\n{''.join(resources)}rules:\n{body}"


@contextlib.contextmanager
def running_http_daemon(workdir: Path, policy: str) -> Iterator[Daemon]:
    """The daemon (kernel redirect: bpf, strict JSONL audit) on the policy text; stopped, and
    every hook detached, after. Its host CA is in `ca_file(daemon)` once it runs."""
    path = workdir / "policy.yaml"
    path.write_text(policy)
    check = subprocess.run([INTERCEPTOR, "policy", "check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, f"the test's policy does not load: {check.stderr}{check.stdout}\n{policy}"
    with running_daemon(workdir, path) as daemon:
        yield daemon


def ca_file(daemon: Daemon) -> Path:
    """The host CA certificate (PEM) the daemon issues agent-facing certificates with."""
    return daemon.workdir / "state" / "tls" / "ca.pem"


def run_agent(agent: str, *argv: str, timeout: float = 60, stdin: str | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run as `agent` (in its cgroup) under `interceptor exec`; its output as text."""
    return subprocess.run([INTERCEPTOR, "exec", "--agent", agent, "--", *argv], capture_output=True, text=True,
                          timeout=timeout, input=stdin or "", env=dict(env) if env is not None else None)


def start_agent(agent: str, *argv: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`argv` started as `agent` under `interceptor exec`, stdout and stderr piped."""
    return subprocess.Popen([INTERCEPTOR, "exec", "--agent", agent, "--", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=dict(env) if env is not None else None)


def agent_python(agent: str, code: str, *args: str, timeout: float = 60,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A Python script (dedented) run as `agent`; tests/ is on its path."""
    tests = str(Path(__file__).resolve().parent.parent)
    merged = {**(env if env is not None else os.environ), "PYTHONPATH": tests}
    return run_agent(agent, sys.executable, "-c", textwrap.dedent(code), *args, timeout=timeout, env=merged)


def last_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON value on the last line a command printed; AssertionError with its output otherwise."""
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, f"exit {result.returncode}: {result.stdout}{result.stderr[-3000:]}"
    return json.loads(lines[-1])


def request_records(daemon: Daemon, predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
                    **fields: object) -> list[dict[str, Any]]:
    """The audit records of kind "request" satisfying `predicate` whose top-level `fields` equal."""
    return [event for event in daemon.audit_events("request")
            if predicate(event) and all(event.get(key) == value for key, value in fields.items())]


def wait_records(daemon: Daemon, predicate: Callable[[dict[str, Any]], bool], count: int = 1,
                 timeout: float = 10) -> list[dict[str, Any]]:
    """At least `count` request records satisfying `predicate`, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = request_records(daemon, predicate)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} of {count} records; last: {daemon.audit_events()[-5:]}"
            return found
        time.sleep(0.05)


def decide(daemon: Daemon, verb: str, request_id: str, *args: str) -> None:
    """`interceptor approvals approve|deny ID` as root (break-glass)."""
    result = subprocess.run([INTERCEPTOR, "--config", str(daemon.settings), "approvals", verb, request_id, *args],
                            capture_output=True, text=True, env=ROOT_APPROVER, timeout=30)
    assert result.returncode == 0, result.stderr


def header(entry: Mapping[str, Any], name: str) -> str | None:
    """The first value of header `name` in a stand-in's request log entry ([[name, value]])."""
    return next((value for key, value in entry["headers"] if key.lower() == name), None)


def recv_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the peer sends until it closes (or `timeout` passes with nothing)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
