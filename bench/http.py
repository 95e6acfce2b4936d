"""HTTP side by side: wrk against a fixed-response upstream (haproxy `http-request return`)
directly, through haproxy in http mode, and through the interceptor (redirect + attribution
+ one judged and audited request each, batched audit, keep-alive connections).

Each (path, connections) cell runs once per round, in an order that flips every round; a
cell reports the median and spread of its rounds: requests per second, average and p99
latency, and for the proxies their CPU per request."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import services
from bench.daemon import BenchDaemon
from bench.pgbench import cpu_seconds, in_cgroup
from bench.stats import ratio, summary

AGENT = "bench"
CONNECTIONS = (1, 8)
ROUTES = (("direct", "direct"), ("haproxy", "haproxy (http mode)"), ("interceptor", "interceptor, batched audit"))
METRICS = ("rps", "latency_avg_us", "latency_p99_us")
_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)$", re.MULTILINE)
_LATENCY = re.compile(r"^\s+Latency\s+([0-9.]+)(us|ms|s)\b", re.MULTILINE)
_P99 = re.compile(r"^\s+99%\s+([0-9.]+)(us|ms|s)$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s+([0-9]+) requests in ", re.MULTILINE)


class WrkError(RuntimeError):
    """wrk failed, printed no result, or saw non-2xx answers; the message carries its output."""


@dataclass(frozen=True, slots=True)
class Sample:
    rps: float
    latency_avg_us: float
    latency_p99_us: float
    requests: int
    proxy_cpu_us: float | None = None  # CPU time of the proxy process per request


def parse_wrk(stdout: str) -> tuple[float, float, float, int]:
    """(requests/s, average latency us, p99 latency us, requests) from `wrk --latency`;
    WrkError when it reports non-2xx answers or socket errors, or no result."""
    if "Non-2xx or 3xx responses" in stdout or "Socket errors" in stdout:
        raise WrkError(f"wrk saw failed requests:\n{stdout[-1500:]}")
    found = [_RPS.search(stdout), _LATENCY.search(stdout), _P99.search(stdout), _REQUESTS.search(stdout)]
    if not all(found):
        raise WrkError(f"wrk printed no result:\n{stdout[-1500:]}")
    rps, avg, p99, requests = found
    assert rps and avg and p99 and requests
    return (float(rps.group(1)), float(avg.group(1)) * _UNITS[avg.group(2)],
            float(p99.group(1)) * _UNITS[p99.group(2)], int(requests.group(1)))


def run_wrk(argv: list[str], timeout: float, proxy_pid: int | None) -> Sample:
    before = cpu_seconds(proxy_pid) if proxy_pid else None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    rps, avg, p99, requests = parse_wrk(done.stdout)
    cpu = None
    if proxy_pid and before is not None and requests:
        cpu = (cpu_seconds(proxy_pid) - before) / requests * 1e6
    return Sample(rps, avg, p99, requests, cpu)


def wrk_argv(port: int, connections: int, seconds: float) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed (Debian package wrk; `make setup` installs it)")
    return [wrk, "--latency", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"http://{services.HOST}:{port}/v1/ping"]


def haproxy_pair(root: Path) -> tuple[services.Foreground, services.Foreground]:
    """The upstream (a fixed 200 answer, no backend) and haproxy in http mode in front of it."""
    upstream_port, proxy_port = services.free_port(), services.free_port()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    defaults = "defaults\n  mode http\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n"
    (root / "upstream.cfg").write_text(
        f"global\n  maxconn 4096\n{defaults}frontend up\n  bind {services.HOST}:{upstream_port}\n"
        '  http-request return status 200 content-type application/json string "{\\"ok\\":true}"\n')
    (root / "proxy.cfg").write_text(
        f"global\n  maxconn 4096\n{defaults}frontend px\n  bind {services.HOST}:{proxy_port}\n"
        f"  default_backend up\nbackend up\n  server u1 {services.HOST}:{upstream_port}\n")
    return (services.Foreground("http-upstream", root, upstream_port, [haproxy, "-db", "-f", str(root / "upstream.cfg")]),
            services.Foreground("haproxy-http", root, proxy_port, [haproxy, "-db", "-f", str(root / "proxy.cfg")]))


def policy(port: int) -> str:
    """The bench agent may GET /v1/* of the upstream; every request is judged and audited."""
    return f"""
version: 1
agents:
  {AGENT}:
    unprotected: deny
resources:
  api:
    protocol: http
    addresses: ["{services.HOST}:{port}"]
rules:
  - name: bench-api-reads
    effect: allow
    agents: [{AGENT}]
    resources: [api]
    http: {{methods: [GET], paths: ["/v1/*"]}}
"""


def summarize(samples: dict[tuple[str, int], list[Sample]], errors: dict[tuple[str, int], str],
              rounds: int, seconds: float) -> dict:
    rows = []
    direct: dict[int, dict[str, float]] = {}
    for route, label in ROUTES:
        for connections in CONNECTIONS:
            got = samples.get((route, connections), [])
            row: dict = {"route": route, "label": label, "connections": connections,
                         "error": errors.get((route, connections))}
            if got:
                for metric in METRICS:
                    row[metric] = summary([getattr(s, metric) for s in got])
                cpu = [s.proxy_cpu_us for s in got if s.proxy_cpu_us is not None]
                if cpu:
                    row["proxy_cpu_us"] = summary(cpu)
                if route == "direct":
                    direct[connections] = {m: row[m]["median"] for m in METRICS}
            rows.append(row)
    for row in rows:
        ref = direct.get(row["connections"])
        if ref is not None and "rps" in row:
            row["ratios"] = {f"{m}_vs_direct": ratio(row[m]["median"], ref[m]) for m in METRICS}
            row["added_latency_us"] = round(row["latency_avg_us"]["median"] - ref["latency_avg_us"], 1)
    return {"seconds_per_run": seconds, "rounds": rounds, "upstream": "haproxy 'http-request return' (fixed 200)",
            "client": "wrk, one thread, keep-alive", "audit": "batched (sqlite)", "cells": rows}


def run(rounds: int = 3, seconds: float = 2.0) -> dict:
    samples: dict[tuple[str, int], list[Sample]] = {}
    errors: dict[tuple[str, int], str] = {}
    with tempfile.TemporaryDirectory(prefix="icpt-http-") as tmp:
        root = Path(tmp)
        upstream, proxy = haproxy_pair(root)
        daemon = BenchDaemon(root / "daemon", policy(upstream.port),
                             audit={"store": "sqlite", "path": str(root / "audit.db"), "durability": "batched"})
        started: list[services.Foreground] = []
        try:
            for server in (upstream, proxy):
                server.start()
                started.append(server)
            services.start_daemon(daemon)
            agent = daemon.cgroup_root / "interceptor" / AGENT
            assert proxy.proc is not None and daemon.proc is not None
            targets = {"direct": (upstream.port, None, False), "haproxy": (proxy.port, proxy.proc.pid, False),
                       "interceptor": (upstream.port, daemon.proc.pid, True)}
            for rnd in range(rounds):
                order = [(r, c) for r, _ in ROUTES for c in CONNECTIONS]
                for route, connections in (order if rnd % 2 == 0 else order[::-1]):
                    port, pid, diverted = targets[route]
                    argv = wrk_argv(port, connections, seconds)
                    try:
                        sample = run_wrk(in_cgroup(agent, argv) if diverted else argv, seconds + 60, pid)
                    except (WrkError, OSError) as exc:
                        errors.setdefault((route, connections), str(exc))
                        continue
                    samples.setdefault((route, connections), []).append(sample)
        finally:
            daemon.stop()
            try:
                daemon.uninstall()
            except subprocess.CalledProcessError:
                pass
            for server in reversed(started):
                server.stop()
    return summarize(samples, errors, rounds, seconds)
