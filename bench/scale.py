"""Scale: N agent connections held open at once through the enforcer to a `tcp` resource (a
small echo server here): the daemon's RSS per held connection, and that every one of them
still answers an echo.

The agent side is this module run as a program inside the agent cgroup, driven over
stdin/stdout one command a line (`warm`, `open`, `echo`, `quit`), so the parent can read
the daemon's RSS between the steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import services
from bench.connect import RESOURCE_IP, policy
from bench.daemon import BenchDaemon
from bench.stats import summary
from interceptor.control import ControlClient

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit to the hard one (children, the daemon too, inherit it);
    fails with the numbers when even that is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise RuntimeError(f"open files limit {hard} is below the {needed} this bench needs (raise ulimit -n)")
    return hard


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS (process gone?)")


class EchoServer:
    """Echoes every line back; counts the connections open right now (the enforcer's upstreams)."""

    def __init__(self, host: str) -> None:
        self.open = 0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._echo, host, 0, backlog=4096))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()

    def wait_open(self, count: int, timeout: float) -> int:
        """Wait until `count` connections are open here; returns how many were."""
        deadline = time.monotonic() + timeout
        while self.open < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class Agent:
    """This module's agent side, started in the agent cgroup."""

    def __init__(self, cgroup: Path, port: int, count: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.scale", str(cgroup), RESOURCE_IP, str(port),
                                      str(count)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def step(self, command: str, timeout: float = 120) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise RuntimeError(f"agent gave no answer to {command!r} (exit status {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _round(workdir: Path, echo: EchoServer, connections: int) -> dict:
    daemon = BenchDaemon(workdir, policy(echo.port))
    services.start_daemon(daemon)
    agent = None
    try:
        agent = Agent(daemon.cgroup_root / "interceptor" / "bench", echo.port, connections)
        warm = agent.step("warm")
        if not warm["answered"]:
            raise RuntimeError(f"warm-up connection through the enforcer got no echo: {warm}")
        before = rss_kib(daemon.proc.pid)
        opened = agent.step("open")
        upstream = echo.wait_open(connections, timeout=120)
        after = rss_kib(daemon.proc.pid)
        # the enforcer's own count: connections that bypassed it would echo too
        held = ControlClient(daemon.socket).call("status")["sessions"]
        answered = agent.step("echo")
        return {"rss_before_kib": before, "rss_after_kib": after, "opened": opened["opened"],
                "open_errors": opened["errors"], "upstream_open": upstream, "enforcer_sessions": held,
                "answered": answered["answered"], "kib_per_connection": round((after - before) / connections, 2)}
    finally:
        if agent is not None:
            agent.close()
        daemon.stop()
        daemon.uninstall()
        echo.wait_open(0, timeout=30)


def run(rounds: int = 3, connections: int = 2000) -> dict:
    """Per round a fresh daemon; the result keeps each round and the median and spread of KiB
    per connection. `all_answered` is true only if, in every round, the enforcer held every
    connection and every one answered."""
    raise_fd_limit(2 * connections + 1000)
    echo = EchoServer(RESOURCE_IP)
    runs, errors = [], []
    with tempfile.TemporaryDirectory(prefix="icpt-scale-") as tmp:
        try:
            for rnd in range(rounds):
                try:
                    runs.append(_round(Path(tmp) / f"round-{rnd}", echo, connections))
                except (RuntimeError, OSError, ValueError) as exc:
                    errors.append(f"round {rnd}: {exc}")
        finally:
            echo.close()
    result: dict = {"connections": connections, "rounds": runs, "errors": errors,
                    "all_answered": bool(runs) and not errors and all(
                        r["answered"] == r["enforcer_sessions"] == connections for r in runs)}
    if runs:
        result["kib_per_connection"] = summary([r["kib_per_connection"] for r in runs])
    return result


def _agent_main(cgroup: str, host: str, port: int, count: int) -> None:
    """The agent: join the cgroup, then obey one command a line, answering one JSON line each."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    held: list[socket.socket] = []

    def answer(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    def echo(sock: socket.socket, n: int) -> bool:
        payload = f"echo {n}\n".encode()
        sock.settimeout(30)
        try:
            sock.sendall(payload)
            return sock.makefile("rb").readline() == payload
        except OSError:
            return False

    for command in sys.stdin:
        command = command.strip()
        if command == "warm":
            with socket.create_connection((host, port), timeout=30) as sock:
                answer(answered=echo(sock, 0))
        elif command == "open":
            errors: dict[str, int] = {}
            for _ in range(count):
                try:
                    held.append(socket.create_connection((host, port), timeout=30))
                except OSError as exc:
                    errors[exc.strerror or str(exc)] = errors.get(exc.strerror or str(exc), 0) + 1
            answer(opened=len(held), errors=errors)
        elif command == "echo":
            answer(answered=sum(echo(sock, n) for n, sock in enumerate(held)))
        else:
            return


if __name__ == "__main__":
    _agent_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
