"""pgbench side by side: direct to PostgreSQL, through pgbouncer (session pool), haproxy (tcp
mode) and the interceptor (redirect + attribution + policy + audit, strict and batched), and
a query returning a masked column through the interceptor.

Every (clients, mode, path) cell runs once per round; a round visits all cells, in an order
that flips every round, so machine noise hits all paths alike. Each cell reports the median
and spread of its rounds. A path that fails (the daemon, or pgbench through it) keeps its
first error text in the result and the other paths go on.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import profile, services
from bench.daemon import BenchDaemon
from bench.stats import ratio, summary

CLIENTS = (1, 8)
MODES = ("simple", "extended", "prepared")
SELECT, MASKED = "select-only (pgbench -S)", "masked column (SELECT id, email FROM bench_masked)"
# What an agent that runs one psql per command meets: every transaction opens (and logs in
# on) a new connection. Simple protocol only: nothing is prepared across connections.
RECONNECT = "select-only, a new connection per transaction (pgbench -S -C)"
MASKED_ROWS = 10_000
MASKED_DOMAIN = "example.com"
MASKED_SCRIPT = f"\\set id random(1, {MASKED_ROWS})\nSELECT id, email FROM bench_masked WHERE id = :id;\n"
AGENT = "bench"
# The agent's own password: the enforcer ignores it and logs in with the resource's
# credentials, while PostgreSQL refuses it, so a connection that was not diverted fails
# instead of being measured as the interceptor path.
AGENT_PASSWORD = "the-agent-password-is-ignored"


@dataclass(frozen=True, slots=True)
class Route:
    """One path pgbench takes. `audit` names the daemon durability it runs under: interceptor
    routes need that daemon; baselines are just measured while it runs, to share its noise."""

    name: str
    label: str
    workload: str
    audit: str
    target: str  # postgres | pgbouncer | haproxy | interceptor


ROUTES = (
    Route("direct", "direct", SELECT, "strict", "postgres"),
    Route("pgbouncer", "pgbouncer (session pool)", SELECT, "strict", "pgbouncer"),
    Route("haproxy", "haproxy (tcp mode)", SELECT, "strict", "haproxy"),
    Route("interceptor-strict", "interceptor, strict audit", SELECT, "strict", "interceptor"),
    Route("interceptor-batched", "interceptor, batched audit", SELECT, "batched", "interceptor"),
    Route("masked-direct", "direct", MASKED, "batched", "postgres"),
    Route("masked-pgbouncer", "pgbouncer (session pool)", MASKED, "batched", "pgbouncer"),
    Route("interceptor-masked", "interceptor, batched audit, masked column", MASKED, "batched", "interceptor"),
    Route("reconnect-direct", "direct", RECONNECT, "strict", "postgres"),
    Route("reconnect-pgbouncer", "pgbouncer (session pool)", RECONNECT, "strict", "pgbouncer"),
    Route("reconnect-interceptor-strict", "interceptor, strict audit", RECONNECT, "strict", "interceptor"),
    Route("reconnect-interceptor-batched", "interceptor, batched audit", RECONNECT, "batched", "interceptor"),
)
BASELINES = ("postgres", "pgbouncer")
METRICS = ("tps", "latency_avg_ms", "latency_p99_ms")
PROFILED = (8, "prepared")  # the cell the daemon is profiled on, batched audit


@dataclass(frozen=True, slots=True)
class Sample:
    """One pgbench run: transactions per second (without connection time), average and p99
    latency in milliseconds."""

    tps: float
    latency_avg_ms: float
    latency_p99_ms: float
    transactions: int
    proxy_cpu_us: float | None = None  # CPU time of the proxy process (all threads) per transaction


class PgbenchError(RuntimeError):
    """pgbench failed or printed no result; the message carries its output."""


class PgbenchTimeout(PgbenchError):
    """pgbench hung past its time: the path is not tried again in later rounds."""


_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)$",
                  re.MULTILINE)
_AVG = re.compile(r"^latency average = ([0-9.]+) ms$", re.MULTILINE)


def parse_output(stdout: str) -> tuple[float, float]:
    """(tps, average latency in ms) from pgbench's summary."""
    tps, avg = _TPS.search(stdout), _AVG.search(stdout)
    if tps is None or avg is None:
        raise PgbenchError(f"pgbench printed no tps/latency summary:\n{stdout[-1500:]}")
    return float(tps.group(1)), float(avg.group(1))


def transaction_latencies_us(lines: list[str]) -> list[int]:
    """Latencies from pgbench -l lines `client txn time_us script epoch epoch_us [lag]`;
    transactions that failed (time `failed` / `skipped`) are not latencies and are left out."""
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            out.append(int(fields[2]))
    return out


def applies(route: Route, mode: str) -> bool:
    return route.workload != RECONNECT or mode == "simple"


def pgbench_argv(port: int, clients: int, mode: str, seconds: float, script: Path | None, log_prefix: Path,
                 reconnect: bool = False) -> list[str]:
    threads = min(clients, os.cpu_count() or 1)
    workload = (["-f", str(script)] if script else ["-S"]) + (["-C"] if reconnect else [])
    return ["pgbench", "-n", "-h", services.HOST, "-p", str(port), "-U", services.USER, "-c", str(clients),
            "-j", str(threads), "-M", mode, "-T", str(max(1, round(seconds))), "-l", "--log-prefix",
            str(log_prefix), *workload, services.DATABASE]


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """argv run as a member of `cgroup` (it joins before exec, so all its connects are the agent's)."""
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]


def _clear(log_dir: Path) -> None:
    for path in log_dir.iterdir():
        path.unlink()


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pgbench(argv: list[str], password: str, log_dir: Path, timeout: float, proxy_pid: int | None = None) -> Sample:
    """Run pgbench (its -l logs going to the empty `log_dir`) and read its result; with
    `proxy_pid`, also the CPU that process spent per transaction."""
    _clear(log_dir)  # a failed run may have left logs behind
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    cpu_before = cpu_seconds(proxy_pid) if proxy_pid else None
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PgbenchTimeout(f"pgbench did not finish within {timeout:.0f}s: {exc.stderr!r:.1500}") from None
    if done.returncode != 0:
        raise PgbenchError(f"pgbench exited with {done.returncode}: {_explain(done.stderr or done.stdout)}")
    tps, avg = parse_output(done.stdout)
    latencies = []
    for path in log_dir.iterdir():
        latencies += transaction_latencies_us(path.read_text().splitlines())
    _clear(log_dir)
    if not latencies:
        raise PgbenchError("pgbench logged no transaction")
    cpu = None
    if proxy_pid and cpu_before is not None:
        cpu = (cpu_seconds(proxy_pid) - cpu_before) / len(latencies) * 1e6
    return Sample(tps, avg, summary(latencies)["p99"] / 1000, len(latencies), cpu)


def policy(pg_port: int, credentials: Path) -> str:
    """The bench agent may read the bench database; email of bench_masked is masked. No
    identity block: the bench agent has no identity (source none)."""
    return f"""
version: 1
agents:
  {AGENT}:
    unprotected: deny
resources:
  db:
    protocol: postgres
    addresses: ["{services.HOST}:{pg_port}"]
    credentials: {{from: file, path: {credentials}}}
    options: {{databases: [{services.DATABASE}]}}
rules:
  - name: bench-reads
    effect: allow
    agents: [{AGENT}]
    resources: [db]
    sql: {{kinds: [select], tables: ["public.*", "pg_catalog.*"]}}
  - name: bench-mask-email
    effect: mask
    agents: [{AGENT}]
    resources: [db]
    mask: {{columns: [public.bench_masked.email], style: redact}}
"""


def prepare_database(pg: services.Postgres) -> None:
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", str(pg.sockets), "-p", str(pg.port), "-U", services.USER,
                    services.DATABASE], capture_output=True, text=True, check=True, timeout=300)
    pg.psql("CREATE TABLE bench_masked (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL); "
            f"INSERT INTO bench_masked SELECT i, 'customer ' || i, 'customer' || i || '@{MASKED_DOMAIN}' "
            f"FROM generate_series(1, {MASKED_ROWS}) i; ANALYZE bench_masked")


def _explain(output: str) -> str:
    text = output.strip()[-1500:]
    if "password authentication failed" in text:
        text += " (PostgreSQL itself answered: the connection was not diverted to the enforcer)"
    return text


def masked_value(cgroup: Path, port: int) -> str:
    """What the agent reads of a masked email through the enforcer (psql, simple query)."""
    argv = in_cgroup(cgroup, ["psql", "-h", services.HOST, "-p", str(port), "-U", services.USER, "-d", services.DATABASE,
                              "-X", "-A", "-t", "-c", "SELECT email FROM bench_masked WHERE id = 1"])
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": AGENT_PASSWORD})
    if done.returncode != 0:
        raise PgbenchError(f"psql through the interceptor failed: {_explain(done.stderr)}")
    return done.stdout.strip()


class Cells:
    """Samples and first errors per (route, clients, mode), and what the masked path returned.
    A failed cell is tried again next round (the host is shared; a failure may pass), unless
    it hung."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, int, str], list[Sample]] = {}
        self.errors: dict[tuple[str, int, str], str] = {}
        self.hung: set[tuple[str, int, str]] = set()
        self.masked_seen: str | None = None

    def measure(self, key: tuple[str, int, str], run: Callable[[], Sample]) -> None:
        if key in self.hung:
            return
        try:
            self.samples.setdefault(key, []).append(run())
        except PgbenchTimeout as exc:
            self.hung.add(key)
            self.fail(key, str(exc))
        except (PgbenchError, OSError) as exc:
            self.fail(key, str(exc))

    def fail(self, key: tuple[str, int, str], error: str) -> None:
        self.errors.setdefault(key, error)


def summarize(cells: Cells, rounds: int, seconds: float) -> dict:
    """Per cell: median/spread of tps, average and p99 latency, ratios to direct and pgbouncer
    on the same workload, clients and mode (median over median)."""
    rows = []
    medians: dict[tuple[str, str, int, str], dict[str, float]] = {}
    for route in ROUTES:
        for clients in CLIENTS:
            for mode in MODES:
                if not applies(route, mode):
                    continue
                key = (route.name, clients, mode)
                samples = cells.samples.get(key, [])
                row: dict = {"route": route.name, "label": route.label, "workload": route.workload,
                             "clients": clients, "mode": mode, "error": cells.errors.get(key)}
                if samples:
                    for metric in METRICS:
                        row[metric] = summary([getattr(s, metric) for s in samples])
                    row["transactions"] = sum(s.transactions for s in samples)
                    cpu = [s.proxy_cpu_us for s in samples if s.proxy_cpu_us is not None]
                    if cpu:
                        row["proxy_cpu_us"] = summary(cpu)
                    if route.target in BASELINES:
                        medians[(route.target, route.workload, clients, mode)] = {
                            m: row[m]["median"] for m in METRICS}
                rows.append(row)
    for row in rows:
        if "tps" not in row:
            continue
        row["ratios"] = {}
        for base, short in (("postgres", "direct"), ("pgbouncer", "pgbouncer")):
            ref = medians.get((base, row["workload"], row["clients"], row["mode"]))
            if ref is not None:
                row["ratios"].update({f"{m}_vs_{short}": ratio(row[m]["median"], ref[m]) for m in METRICS})
    return {"seconds_per_run": seconds, "rounds": rounds, "clients": list(CLIENTS), "modes": list(MODES),
            "identity": "the bench agent has no identity block (identity source none)",
            "audit_store": "sqlite", "masked_email_seen": cells.masked_seen, "cells": rows}


def _order(rnd: int) -> list[tuple[int, str]]:
    combos = [(c, m) for c in CLIENTS for m in MODES]
    return combos if rnd % 2 == 0 else combos[::-1]


@dataclass(frozen=True, slots=True)
class Setup:
    """What every cell of a run shares: where each target listens, the masked-column script,
    the password, pgbench's log directory, seconds per run, and the daemon's policy."""

    ports: dict[str, int]
    pids: dict[str, int]  # the proxies' processes, for CPU per transaction
    script: Path
    password: str
    logs: Path
    seconds: float
    policy: str


def run(rounds: int = 3, seconds: float = 2.0) -> dict:
    """Start PostgreSQL, pgbouncer and haproxy, then per round a strict-audit and a batched-audit
    daemon (order flipping each round), measuring every path's cells while they run."""
    password = secrets.token_urlsafe(12)
    cells = Cells()
    with tempfile.TemporaryDirectory(prefix="icpt-pgbench-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # servers running as `postgres` reach their own files below
        (root / "pg").mkdir()
        pg = services.Postgres(root / "pg", password)
        started: list = []
        try:
            pg.start()
            started.append(pg)
            prepare_database(pg)
            proxies = {"pgbouncer": services.pgbouncer(root, pg), "haproxy": services.haproxy(root, pg)}
            for proxy in proxies.values():
                proxy.start()
                started.append(proxy)
            setup = _setup(root, pg, {k: p.port for k, p in proxies.items()},
                           {k: p.proc.pid for k, p in proxies.items()}, password, seconds)
            for rnd in range(rounds):
                for audit in (("strict", "batched") if rnd % 2 == 0 else ("batched", "strict")):
                    _phase(root / f"daemon-{audit}", audit, rnd, cells, setup)
            profiled = _profile(root / "daemon-profile", setup)
        finally:
            for service in reversed(started):
                service.stop()
    return {**summarize(cells, rounds, seconds), "profile": profiled}


def _setup(root: Path, pg: services.Postgres, proxies: dict[str, int], pids: dict[str, int], password: str,
           seconds: float) -> Setup:
    script = root / "masked.sql"
    script.write_text(MASKED_SCRIPT)
    credentials = root / "db.credentials"
    credentials.write_text(f"user: {services.USER}\npassword: {password}\n")
    credentials.chmod(0o600)
    logs = root / "logs"
    logs.mkdir()
    return Setup({"postgres": pg.port, "interceptor": pg.port, **proxies}, pids, script, password, logs, seconds,
                 policy(pg.port, credentials))


def _check_mask(cgroup: Path, rnd: int, cells: Cells, setup: Setup) -> None:
    """Once per run: the masked path must really mask, or its numbers mean nothing."""
    try:
        cells.masked_seen = masked_value(cgroup, setup.ports["interceptor"])
    except PgbenchError as exc:
        cells.masked_seen = f"failed: {exc}"
    if cells.masked_seen == f"customer1@{MASKED_DOMAIN}":
        for clients, mode in _order(rnd):
            cells.fail(("interceptor-masked", clients, mode), "the masked column came back unmasked")


def _agent_cgroup(daemon: BenchDaemon) -> Path:
    return daemon.cgroup_root / "interceptor" / AGENT


def _restart(daemon: BenchDaemon, audit: str) -> str | None:
    """(Re)start the daemon; the error text when it cannot be had."""
    daemon.stop()
    try:
        services.start_daemon(daemon)
    except services.ServiceError as exc:
        return f"daemon ({audit} audit) did not start: {exc}"
    return None


def _healthy(daemon: BenchDaemon) -> bool:
    """Still running, with its agent cgroup in place: other work on this host (an uninstall,
    another daemon) can take the hooks and cgroups away under it."""
    return daemon.proc is not None and daemon.proc.poll() is None and (_agent_cgroup(daemon) / "cgroup.procs").exists()


def _profile(workdir: Path, setup: Setup) -> dict:
    """py-spy on a batched-audit daemon while pgbench runs the PROFILED cell through it."""
    clients, mode = PROFILED
    daemon = BenchDaemon(workdir, setup.policy, audit={"store": "sqlite", "path": str(workdir / "audit.db"),
                                                       "durability": "batched"})
    seconds = max(setup.seconds, 5.0)
    try:
        error = _restart(daemon, "batched")
        if error is not None:
            return {"error": error}
        argv = in_cgroup(_agent_cgroup(daemon), pgbench_argv(setup.ports["interceptor"], clients, mode, seconds, None,
                                                           setup.logs / "pgbench"))
        result = profile.profile(daemon.proc.pid, seconds, functools.partial(
            run_pgbench, argv, AGENT_PASSWORD, setup.logs, timeout=seconds + 60))
        return {"clients": clients, "mode": mode, "audit": "batched", "seconds": seconds, **result}
    except (RuntimeError, OSError, PgbenchError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        daemon.stop()
        try:
            daemon.uninstall()
        except subprocess.CalledProcessError as exc:
            print(f"[bench] interceptor uninstall failed: {exc.stderr}", file=sys.stderr)


def _phase(workdir: Path, audit: str, rnd: int, cells: Cells, setup: Setup) -> None:
    """One daemon run: every cell of the routes that belong to this durability mode."""
    routes = [r for r in ROUTES if r.audit == audit]
    if rnd % 2:
        routes.reverse()
    daemon = BenchDaemon(workdir, setup.policy, audit={"store": "sqlite", "path": str(workdir / "audit.db"),
                                                       "durability": audit})
    try:
        daemon_error = _restart(daemon, audit)
        if daemon_error is None and cells.masked_seen is None and any(r.name == "interceptor-masked" for r in routes):
            _check_mask(_agent_cgroup(daemon), rnd, cells, setup)
        for clients, mode in _order(rnd):
            for route in routes:
                if not applies(route, mode):
                    continue
                key = (route.name, clients, mode)
                argv = pgbench_argv(setup.ports[route.target], clients, mode, setup.seconds,
                                    setup.script if route.workload == MASKED else None, setup.logs / "pgbench",
                                    reconnect=route.workload == RECONNECT)
                password = setup.password
                proxy_pid = setup.pids.get(route.target)
                if route.target == "interceptor":
                    if daemon_error is None and not _healthy(daemon):
                        daemon_error = _restart(daemon, audit)
                    if daemon_error is not None:
                        cells.fail(key, daemon_error)
                        continue
                    argv, password = in_cgroup(_agent_cgroup(daemon), argv), AGENT_PASSWORD
                    proxy_pid = daemon.proc.pid
                cells.measure(key, functools.partial(run_pgbench, argv, password, setup.logs,
                                                     timeout=setup.seconds + 60, proxy_pid=proxy_pid))
    finally:
        daemon.stop()
        try:
            daemon.uninstall()
        except subprocess.CalledProcessError as exc:  # the numbers taken still stand
            print(f"[bench] interceptor uninstall failed: {exc.stderr}", file=sys.stderr)
