"""Kernel hooks: what connect() costs an agent with the hooks attached vs not, and what a
redirected connect (and its first byte through the enforcer) costs vs going direct."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.daemon import BenchDaemon
from bench.stats import ratio, summary

PROBE = str(Path(__file__).with_name("probe.py"))
RESOURCE_IP = "127.0.0.77"  # a loopback address the policy names as a resource


def _server(host: str, banner: bool) -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if banner:
                conn.sendall(b"hello\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def _probe(cgroup: Path, host: str, port: int, count: int, mode: str) -> list[int]:
    out = subprocess.run([sys.executable, PROBE, str(cgroup), host, str(port), str(count), mode],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def policy(port: int) -> str:
    return f"""
version: 1
agents:
  bench:
    unprotected: allow
resources:
  bench-echo:
    protocol: tcp
    addresses: ["{RESOURCE_IP}:{port}"]
rules:
  - name: bench-may-connect
    effect: allow
    agents: [bench]
    resources: [bench-echo]
    tcp: true
"""


def run(rounds: int = 5, count: int = 2000) -> dict:
    plain_sock, plain_port = _server("127.0.0.1", banner=False)
    echo_sock, echo_port = _server(RESOURCE_IP, banner=True)
    samples: dict[str, list[int]] = {k: [] for k in ("unhooked", "hooked", "redirected", "ttfb_direct",
                                                     "ttfb_enforcer")}
    with tempfile.TemporaryDirectory(prefix="icpt-bench-") as tmp:
        daemon = BenchDaemon(Path(tmp), policy(echo_port), audit={"store": "jsonl", "path": f"{tmp}/audit.jsonl",
                                                                  "durability": "batched"})
        try:
            for _ in range(rounds):  # alternate, so machine noise hits both sides alike
                daemon.start()
                cgroup = daemon.cgroup_root / "interceptor" / "bench"
                samples["hooked"] += _probe(cgroup, "127.0.0.1", plain_port, count, "connect")
                samples["redirected"] += _probe(cgroup, RESOURCE_IP, echo_port, count // 4, "connect")
                samples["ttfb_enforcer"] += _probe(cgroup, RESOURCE_IP, echo_port, count // 4, "ttfb")
                daemon.stop()
                daemon.uninstall()
                cgroup.mkdir(parents=True, exist_ok=True)  # same cgroup, no hooks anywhere
                samples["unhooked"] += _probe(cgroup, "127.0.0.1", plain_port, count, "connect")
                samples["ttfb_direct"] += _probe(cgroup, RESOURCE_IP, echo_port, count // 4, "ttfb")
                cgroup.rmdir()
                cgroup.parent.rmdir()
        finally:
            daemon.stop()
            daemon.uninstall()
            plain_sock.close()
            echo_sock.close()
    stats = {k: summary([v / 1000 for v in vs]) for k, vs in samples.items()}  # microseconds
    return {
        "unit": "us",
        "stats": stats,
        "ratios": {
            "agent connect() to an unprotected destination, hooks attached / not attached":
                ratio(stats["hooked"]["median"], stats["unhooked"]["median"]),
            "agent connect() redirected to the enforcer / unprotected connect without hooks":
                ratio(stats["redirected"]["median"], stats["unhooked"]["median"]),
            "connect + first byte through the enforcer / direct":
                ratio(stats["ttfb_enforcer"]["median"], stats["ttfb_direct"]["median"]),
        },
    }
