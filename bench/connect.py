"""Kernel hooks: what connect() costs an agent with the hooks attached vs not, and what a
redirected connect (and its first byte through the enforcer) costs vs going direct."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.daemon import BenchDaemon
from bench.stats import ratio, summary
from interceptor.redirect import libbpf

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")

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


class ProgramClock:
    """The kernel's own count of time spent in our programs (kernel.bpf_stats_enabled), read
    around a probe: what the hooks cost per connect() without the noise of timing whole
    syscalls. An IPv4 connect() runs icpt_connect4 only."""

    HOOKS = ((libbpf.CGROUP_INET4_CONNECT, "icpt_connect4"),)

    def __init__(self, cgroup_root: Path) -> None:
        fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.prog_ids = {name: pid for hook, name in self.HOOKS
                             for pid, attached in libbpf.attached_programs(fd, hook) if attached == name}
        finally:
            os.close(fd)
        missing = {name for _, name in self.HOOKS} - set(self.prog_ids)
        if missing:
            raise RuntimeError(f"{', '.join(sorted(missing))} not attached at the cgroup root")

    def _read(self) -> dict[str, tuple[int, int]]:
        return {name: libbpf.program_run_stats(pid) for name, pid in self.prog_ids.items()}

    def __enter__(self) -> ProgramClock:
        self.previous = BPF_STATS.read_text().strip()
        BPF_STATS.write_text("1")
        self.start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        self.end = self._read()
        BPF_STATS.write_text(self.previous)

    def ns_per_connect(self, connects: int) -> dict[str, float]:
        """Per program: ns spent per connect() and runs per connect()."""
        out = {}
        for name in self.prog_ids:
            (t0, n0), (t1, n1) = self.start[name], self.end[name]
            out[f"{name}_ns"] = (t1 - t0) / connects
            out[f"{name}_runs"] = (n1 - n0) / connects
        return out


def _program_time(cgroup_root: Path, cgroup: Path, port: int, count: int, into: dict[str, list[float]]) -> None:
    """A probe of `count` connects from `cgroup` on its own (the stats slow every run a
    little), adding each program's time and runs per connect() to `into`."""
    with ProgramClock(cgroup_root) as clock:
        _probe(cgroup, "127.0.0.1", port, count, "connect")
    for key, value in clock.ns_per_connect(count).items():
        into.setdefault(key, []).append(value)


def run(rounds: int = 5, count: int = 2000) -> dict:
    plain_sock, plain_port = _server("127.0.0.1", banner=False)
    echo_sock, echo_port = _server(RESOURCE_IP, banner=True)
    samples: dict[str, list[int]] = {k: [] for k in ("unhooked", "hooked", "redirected", "ttfb_direct",
                                                     "ttfb_enforcer")}
    programs: dict[str, list[float]] = {}
    bystanders: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="icpt-bench-") as tmp:
        daemon = BenchDaemon(Path(tmp), policy(echo_port), audit={"store": "jsonl", "path": f"{tmp}/audit.jsonl",
                                                                  "durability": "batched"})
        try:
            for _ in range(rounds):  # alternate, so machine noise hits both sides alike
                daemon.start()
                cgroup = daemon.cgroup_root / "interceptor" / "bench"
                samples["hooked"] += _probe(cgroup, "127.0.0.1", plain_port, count, "connect")
                _program_time(daemon.cgroup_root, cgroup, plain_port, count // 4, programs)
                bystander = daemon.cgroup_root / "bench-not-an-agent"  # every other process on the host
                bystander.mkdir(exist_ok=True)
                _program_time(daemon.cgroup_root, bystander, plain_port, count // 4, bystanders)
                bystander.rmdir()
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
    program = {k: summary(vs) for k, vs in programs.items()}
    in_bpf_us = program["icpt_connect4_ns"]["median"] / 1000
    return {
        "unit": "us",
        "stats": stats,
        "programs": program,  # per connect(): ns in each program and how often it ran
        "programs_not_agent": {k: summary(vs) for k, vs in bystanders.items()},  # the same, for a non-agent
        "ratios": {
            "agent connect() to an unprotected destination, hooks attached / not attached":
                ratio(stats["hooked"]["median"], stats["unhooked"]["median"]),
            "agent connect() redirected to the enforcer / unprotected connect without hooks":
                ratio(stats["redirected"]["median"], stats["unhooked"]["median"]),
            "connect + first byte through the enforcer / direct":
                ratio(stats["ttfb_enforcer"]["median"], stats["ttfb_direct"]["median"]),
            "agent connect() to an unprotected destination: (unhooked + time in our programs) / unhooked":
                ratio(stats["unhooked"]["median"] + in_bpf_us, stats["unhooked"]["median"]),
        },
    }
