"""Start the real daemon (`interceptor run`) as a subprocess with throwaway settings, and
talk to it the way an operator would: the CLI and the control socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from interceptor.control import ControlClient, ControlError

VENV_BIN = Path(sys.executable).parent
INTERCEPTOR = str(VENV_BIN / "interceptor")
AGENT_CLIENT = str(Path(__file__).with_name("agent_client.py"))
# What an agent's client sees of a refused connect: BPF refuses the connect itself; iptables
# sends it to the refuse port, where the enforcer accepts it to audit it, then resets it.
REFUSED = {"bpf": "ECONNREFUSED", "iptables": "ECONNRESET"}


class Daemon:
    def __init__(self, workdir: Path, policy: Path, redirect: str = "bpf", audit: dict | None = None,
                 metrics_listen: str | None = None, approvals: dict | None = None) -> None:
        self.workdir = workdir
        self.policy = policy
        self.redirect = redirect
        self.audit_path = workdir / "audit.jsonl"
        self.settings = workdir / "interceptor.yaml"
        self.socket = workdir / "control.sock"
        audit = audit or {"store": "jsonl", "path": str(self.audit_path), "durability": "strict"}
        self.settings.write_text(json.dumps({
            "policy": str(policy), "redirect": redirect, "state_dir": str(workdir / "state"),
            "control_socket": str(self.socket), "audit": audit, "metrics_listen": metrics_listen,
            "approvals": approvals or {}}))
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "daemon.log"

    def start(self, timeout: float = 60) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([INTERCEPTOR, "--config", str(self.settings), "run"], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.call("status")
                return
            except ControlError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def call(self, method: str, **params):
        return ControlClient(self.socket).call(method, **params)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([INTERCEPTOR, "--config", str(self.settings), *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"interceptor {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def audit_events(self, kind: str | None = None) -> list[dict]:
        if not self.audit_path.exists():
            return []
        text = self.audit_path.read_text()
        text = text[:text.rfind("\n") + 1]  # a record being written has no newline yet
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        events = [e.get("event", e) for e in events]
        return [e for e in events if kind is None or e.get("kind") == kind]

    def wait_for_event(self, predicate, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.audit_events():
                if predicate(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no matching audit event within {timeout}s; have: {self.audit_events()[-5:]}")

    def pending_request(self, agent: str, timeout: float = 20) -> dict:
        """The agent's request waiting for approval, as `interceptor approvals list` shows it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in json.loads(self.cli("approvals", "list", "--json").stdout):
                if request["agent"] == agent and request["state"] == "pending":
                    return request
            time.sleep(0.2)
        raise AssertionError(f"no pending approval request from {agent} within {timeout}s")

    def agent(self, agent: str, *args: str, user: str | None = None, timeout: float = 20) -> dict:
        """Run the stand-in agent under `interceptor exec` and return its JSON report."""
        argv = [INTERCEPTOR, "exec", "--agent", agent, *(["--user", user] if user else []), "--",
                sys.executable, AGENT_CLIENT, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"agent failed: {result.stderr}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def long_lived_agent(self, agent: str) -> "LongLivedAgent":
        proc = subprocess.Popen([INTERCEPTOR, "exec", "--agent", agent, "--", sys.executable, AGENT_CLIENT, "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return LongLivedAgent(proc)


class LongLivedAgent:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        hello = json.loads(proc.stdout.readline())
        self.pid = hello["pid"]

    def connect(self, host: str, port: int) -> dict:
        self.proc.stdin.write(f"{host} {port}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def direct(host: str, port: int) -> dict:
    """The same attempt from a process that is not an agent."""
    result = subprocess.run([sys.executable, AGENT_CLIENT, host, str(port)], capture_output=True, text=True, timeout=20)
    return json.loads(result.stdout.strip().splitlines()[-1])


def detach_everything() -> None:
    subprocess.run([INTERCEPTOR, "uninstall"], capture_output=True, env=dict(os.environ, INTERCEPTOR_CONFIG="/dev/null"))


@contextlib.contextmanager
def running_daemon(workdir: Path, policy: Path) -> Iterator[Daemon]:
    """The daemon (kernel redirect: bpf) on `policy`; stopped, and every hook detached, after."""
    daemon = Daemon(workdir, policy, redirect="bpf")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        detach_everything()


def psql_errors(stderr: str) -> list[tuple[str, str, str]]:
    """(severity, SQLSTATE, message) of each error psql printed with VERBOSITY=verbose."""
    return re.findall(r"(ERROR|FATAL):\s+([0-9A-Z]{5}): (.*)", stderr)


def agent_python(agent: str, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A Python script (dedented) run as `agent` under `interceptor exec`."""
    return subprocess.run([INTERCEPTOR, "exec", "--agent", agent, "--", sys.executable, "-c", textwrap.dedent(code),
                           *args], capture_output=True, text=True, timeout=timeout)
