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

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
from daemon import INTERCEPTOR, Daemon, running_daemon
from kubeapi.certs import issue
from netns import RemoteHost

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


# ---- a recording HTTP/1.1 origin ---------------------------------------------------------

CONTACT = "ada@example.com"  # every answer of the origin carries it, for masking rules


class RecordingOrigin:
    """An HTTP/1.1 origin server FOR TESTS (asyncio and h11): it answers every complete request
    with JSON (`method`, `target`, `headers`, `body`, `contact`), and an Upgrade request with
    101 after `upgrade_delay` seconds, then echoes what it gets. Everything it receives is
    appended to `log` (JSONL) as it arrives: `{"conn": N, "event": "connect" | "data" |
    "request" | "close", ...}` ("data": its `size` and the first 4 KiB as Latin-1 `text`;
    "request": `method`, `target`, `headers`, `body`, whole), so a test can show what an enforcer
    in front of it forwarded, and what it never did."""

    def __init__(self, log: Path, upgrade_delay: float) -> None:
        self.log = log
        self.upgrade_delay = upgrade_delay
        self.connections = 0

    def _append(self, conn: int, event: str, **fields: object) -> None:
        with open(self.log, "a") as handle:
            handle.write(json.dumps({"time": time.time(), "conn": conn, "event": event, **fields}) + "\n")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._append(conn, "connect")
        server = h11.Connection(h11.SERVER)
        body = bytearray()
        request: h11.Request | None = None
        try:
            while data := await reader.read(65536):
                self._append(conn, "data", size=len(data), text=data[:4096].decode("latin-1"))
                server.receive_data(data)
                while (event := server.next_event()) is not h11.NEED_DATA:
                    if isinstance(event, h11.Request):
                        request, body = event, bytearray()
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage) and request is not None:
                        if await self._answer(conn, server, request, bytes(body), reader, writer):
                            return
                    else:
                        return
        except h11.RemoteProtocolError as exc:
            self._append(conn, "error", error=str(exc))
        finally:
            self._append(conn, "close")
            writer.close()

    async def _answer(self, conn: int, server: h11.Connection, request: h11.Request, body: bytes,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one complete request; True when the connection became an echo after a 101."""
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers]
        self._append(conn, "request", method=request.method.decode(), target=request.target.decode("latin-1"),
                     headers=headers, body=body.decode("latin-1"))
        if any(name == "upgrade" for name, _ in headers):
            await asyncio.sleep(self.upgrade_delay)
            protocol = next(value for name, value in headers if name == "upgrade")
            writer.write(f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                         .encode("latin-1") + server.trailing_data[0])
            while data := await reader.read(65536):
                self._append(conn, "data", size=len(data), text=data[:4096].decode("latin-1"))
                writer.write(data)
            return True
        answer = json.dumps({"method": request.method.decode(), "target": request.target.decode("latin-1"),
                             "headers": headers, "body": body.decode("latin-1"), "contact": CONTACT}).encode()
        writer.write(server.send(h11.Response(status_code=200, headers=[
            ("content-type", "application/json"), ("content-length", str(len(answer)))])))
        writer.write(server.send(h11.Data(data=answer)) + server.send(h11.EndOfMessage()))
        await writer.drain()
        server.start_next_cycle()
        return False

    def entries(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [entry for entry in entries if event is None or entry["event"] == event]


@dataclass
class Origin:
    """A RecordingOrigin running in a subprocess at host:port (TLS when `ca` is set)."""

    host: str
    port: int
    ca: Path | None
    recorder: RecordingOrigin
    process: subprocess.Popen[str]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str, scheme: str | None = None) -> str:
        return f"{scheme or ('https' if self.ca else 'http')}://{self.address}{path}"

    def requests(self) -> list[dict[str, Any]]:
        """Every complete request it received, oldest first."""
        return self.recorder.entries("request")

    def received(self) -> int:
        """Bytes received so far, over every connection."""
        return sum(int(entry["size"]) for entry in self.recorder.entries("data"))


@contextlib.contextmanager
def running_origin(workdir: Path, remote: RemoteHost, tls: bool, upgrade_delay: float = 0.0) -> Iterator[Origin]:
    """A RecordingOrigin in the remote host's network namespace on a free port, with a
    certificate of its own CA for the remote's address when `tls`; stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "origin.jsonl"
    argv = [sys.executable, __file__, "--host", remote.ip4, "--log", str(log), "--upgrade-delay", str(upgrade_delay)]
    ca = None
    if tls:
        certificate = issue(workdir / "tls", [remote.ip4], "origin")
        ca = certificate.ca
        argv += ["--cert", str(certificate.cert), "--key", str(certificate.key)]
    tests = str(Path(__file__).resolve().parent.parent)
    process = remote.exec(*argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": tests})
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[:1] == ["READY"], f"the origin did not start: {ready}"
        yield Origin(remote.ip4, int(ready[1]), ca, RecordingOrigin(log, upgrade_delay), process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _origin_main() -> None:
    parser = argparse.ArgumentParser(description="a recording HTTP/1.1 origin for tests")
    parser.add_argument("--host", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--upgrade-delay", type=float, default=0.0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    origin = RecordingOrigin(args.log, args.upgrade_delay)

    async def main() -> None:
        server = await asyncio.start_server(origin.serve, args.host, 0, ssl=context)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    _origin_main()
