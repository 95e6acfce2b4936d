"""SSH side by side: `ssh host true` round trips, one after another, each a fresh connection
(ControlMaster off: TCP, key exchange, user authentication, a session channel, the exec and its
exit status), straight to Debian's sshd on loopback and through the interceptor (redirect,
attribution, the agent-facing handshake with a host certificate, the upstream login with the
resource's key, the exec judged and audited, batched audit).

The client is the same OpenSSH ssh with the same options on both paths (no configuration file,
the one key sshd accepts, strict host key checking: sshd's own key directly, the SSH host CA's
@cert-authority line from `interceptor trust install` through the interceptor). Each round runs
`count` round trips on each path, in an order that flips every round; a path reports the median
and spread of its rounds: round trips per second, average and p99 latency, and for the
interceptor the daemon's CPU time per round trip. sshd's log counts its logins: one per round
trip on both paths (the interceptor keeps no upstream connection between flows)."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import services
from bench.daemon import INTERCEPTOR, BenchDaemon
from bench.pgbench import cpu_seconds, in_cgroup
from bench.stats import ratio, summary
from tests.ssh_fixture import CLIENT_OPTIONS, Sshd, running_sshd

AGENT = "bench"
# The enforcer's asyncssh has no post-quantum key exchange, so the client agrees on
# curve25519-sha256 with it and on sntrup761x25519-sha512 with sshd: a third path goes direct
# with curve25519-sha256 asked for, the same key exchange as through the interceptor.
ENFORCER_KEX = "curve25519-sha256"
ROUTES = (("direct", "direct to sshd"), ("direct-kex", f"direct to sshd, {ENFORCER_KEX} asked for"),
          ("interceptor", "interceptor, batched audit"))
METRICS = ("round_trips_per_s", "latency_avg_ms", "latency_p99_ms")


class SshBenchError(RuntimeError):
    """A round trip failed or hung; the message carries ssh's stderr."""


@dataclass(frozen=True, slots=True)
class Sample:
    round_trips_per_s: float
    latency_avg_ms: float
    latency_p99_ms: float
    proxy_cpu_ms: float | None  # the daemon's CPU time per round trip (interceptor only)


def policy(sshd: Sshd, credentials: Path) -> str:
    """The bench agent may run `true` on the sshd; every exec is judged and audited."""
    return f"""
version: 1
agents:
  {AGENT}:
    unprotected: deny
resources:
  host:
    protocol: ssh
    addresses: ["{sshd.address}"]
    credentials: {{from: file, path: {credentials}}}
    options: {{known_hosts: {sshd.known_hosts}}}
rules:
  - name: bench-true
    effect: allow
    agents: [{AGENT}]
    resources: [host]
    ssh: {{commands: ["true"]}}
"""


def ssh_argv(sshd: Sshd, known_hosts: Path, options: tuple[str, ...] = ()) -> list[str]:
    """`ssh user@host true` with the bench's client options (`options` first), host keys from
    `known_hosts`."""
    return ["ssh", *options, *CLIENT_OPTIONS, "-o", f"UserKnownHostsFile={known_hosts}", "-o",
            "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-i", str(sshd.key), "-o",
            f"Port={sshd.port}", sshd.target, "true"]


def own_cgroup(cgroup_root: Path) -> Path:
    """This process's cgroup (v2) under the mount `cgroup_root`: a member of it is no agent."""
    line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    return cgroup_root / line[3:].lstrip("/")


def round_trips(argv: list[str], count: int, proxy_pid: int | None) -> Sample:
    """`count` runs of `argv` in a row, each to its end; SshBenchError at the first failure."""
    latencies = []
    before = cpu_seconds(proxy_pid) if proxy_pid else None
    started = time.perf_counter()
    for _ in range(count):
        begun = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise SshBenchError("ssh did not finish within 60s") from None
        if done.returncode != 0:
            raise SshBenchError(f"ssh exited with {done.returncode}: {done.stderr.strip()[-1500:]}")
        latencies.append((time.perf_counter() - begun) * 1000)
    elapsed = time.perf_counter() - started
    cpu = (cpu_seconds(proxy_pid) - before) / count * 1000 if proxy_pid and before is not None else None
    p99 = summary(latencies)["p99"]
    return Sample(count / elapsed, sum(latencies) / count, p99, cpu)


def negotiated_kex(argv: list[str]) -> str | None:
    """The key exchange method ssh agrees on along `argv` (its -v line "kex: algorithm: ..."),
    None when the round trip fails: the two paths' servers (sshd, asyncssh) offer different
    lists, and the client's CPU per connection depends on which is agreed."""
    at = argv.index("ssh") + 1
    done = subprocess.run([*argv[:at], "-v", *argv[at:]], capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"kex: algorithm: (\S+)", done.stderr)
    return found.group(1) if found and done.returncode == 0 else None


def summarize(samples: dict[str, list[Sample]], errors: dict[str, str], kex: Mapping[str, str | None], rounds: int,
              count: int, logins: int) -> dict[str, Any]:
    rows = []
    for route, label in ROUTES:
        got = samples.get(route, [])
        row: dict[str, Any] = {"route": route, "label": label, "error": errors.get(route), "kex": kex.get(route)}
        if got:
            for metric in METRICS:
                row[metric] = summary([getattr(s, metric) for s in got])
            cpu = [s.proxy_cpu_ms for s in got if s.proxy_cpu_ms is not None]
            if cpu:
                row["proxy_cpu_ms"] = summary(cpu)
        rows.append(row)
    for row in rows:
        row["ratios"] = {f"{m}_vs_{base['route'].replace('-', '_')}": ratio(row[m]["median"], base[m]["median"])
                         for base in rows[:2] if METRICS[0] in row and METRICS[0] in base for m in METRICS}
    succeeded = sum(count for got in samples.values() for _ in got) + sum(1 for agreed in kex.values() if agreed)
    return {"count": count, "rounds": rounds, "command": "ssh host true", "server": "Debian sshd on loopback",
            "client": "OpenSSH ssh, a fresh connection per round trip (ControlMaster off), ed25519 keys",
            "audit": "batched (sqlite)", "cells": rows, "sshd_logins": logins,
            "round_trips": succeeded}


def run(rounds: int = 3, count: int = 30) -> dict[str, Any]:
    samples: dict[str, list[Sample]] = {}
    errors: dict[str, str] = {}
    kex: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="icpt-ssh-") as tmp:
        root = Path(tmp)
        with running_sshd(root / "sshd", services.HOST, port=services.free_port()) as sshd:
            credentials = sshd.credentials(root / "credentials")
            daemon = BenchDaemon(root / "daemon", policy(sshd, credentials),
                                 audit={"store": "sqlite", "path": str(root / "audit.db"), "durability": "batched"})
            try:
                services.start_daemon(daemon)
                trust = root / "trust"
                subprocess.run([INTERCEPTOR, "--config", str(daemon.settings), "trust", "install", "--root",
                                str(trust)], capture_output=True, text=True, check=True)
                assert daemon.proc is not None
                outside = own_cgroup(daemon.cgroup_root)
                argv = {"direct": in_cgroup(outside, ssh_argv(sshd, sshd.known_hosts)),
                        "direct-kex": in_cgroup(outside, ssh_argv(sshd, sshd.known_hosts,
                                                                  ("-o", f"KexAlgorithms={ENFORCER_KEX}"))),
                        "interceptor": in_cgroup(daemon.cgroup_root / "interceptor" / AGENT,
                                                 ssh_argv(sshd, trust / "etc" / "ssh" / "ssh_known_hosts"))}
                pids = {"direct": None, "direct-kex": None, "interceptor": daemon.proc.pid}
                kex = {route: negotiated_kex(argv[route]) for route, _ in ROUTES}
                for rnd in range(rounds):
                    order = [route for route, _ in ROUTES]
                    for route in (order if rnd % 2 == 0 else order[::-1]):
                        if route in errors:
                            continue
                        try:
                            samples.setdefault(route, []).append(round_trips(argv[route], count, pids[route]))
                        except SshBenchError as exc:
                            errors[route] = str(exc)
            finally:
                daemon.stop()
                try:
                    daemon.uninstall()
                except subprocess.CalledProcessError:
                    pass
            logins = sshd.log_text().count("Accepted publickey")
    return summarize(samples, errors, kex, rounds, count, logins)
