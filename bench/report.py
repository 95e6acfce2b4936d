"""Results as JSON (bench/results/latest.json) and as Markdown tables (BENCHMARKS.md),
with the machine, versions and date they were measured on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, str]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kernel": platform.release(), "cpu": cpu, "cores": str(os.cpu_count()),
            "python": platform.python_version(), "postgres": version(["/usr/lib/postgresql/15/bin/postgres", "-V"]),
            "pgbouncer": version(["pgbouncer", "--version"]), "haproxy": version(["haproxy", "-v"])}


def _connect_md(result: dict) -> list[str]:
    lines = ["| path | median | p99 | IQR | samples |", "| --- | --- | --- | --- | --- |"]
    labels = {"unhooked": "agent connect(), no hooks attached", "hooked": "agent connect() to an unprotected "
              "destination, hooks attached", "redirected": "agent connect() to a resource (redirected)",
              "ttfb_direct": "connect + first byte, direct", "ttfb_enforcer": "connect + first byte through the enforcer"}
    for key, label in labels.items():
        s = result["stats"][key]
        lines.append(f"| {label} | {s['median']:.1f} | {s['p99']:.1f} | {s['iqr']:.1f} | {s['n']} |")
    lines += ["", "| ratio | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    return lines


def _cell(text: str, limit: int = 400) -> str:
    """Text made safe for one Markdown table cell or list item."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit] + " ..."


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pgbench_md(result: dict) -> list[str]:
    lines = [(f"`pgbench -n -T {result['seconds_per_run']:g}` (no connection time in TPS), {result['rounds']} rounds; "
             "each cell is the median of its rounds, IQR its spread. Latencies in ms; p99 from pgbench's "
             "per-transaction log. Ratios are median over median against direct and pgbouncer on the same "
             f"workload, clients and mode (TPS ratio below 1 = slower; latency ratio above 1 = slower). Identity: "
             f"{result['identity']}; audit store {result['audit_store']}.")]
    if result.get("masked_email_seen") is not None:
        lines += ["", f"The masked path's email column as the agent saw it: `{_cell(result['masked_email_seen'])}`."]
    failures = []
    for workload in dict.fromkeys(row["workload"] for row in result["cells"]):
        lines += ["", f"### {workload}", "",
                  ("| path | clients | mode | runs | TPS | TPS IQR | avg | p99 | TPS / direct | TPS / pgbouncer "
                  "| avg / direct | avg / pgbouncer | p99 / direct | p99 / pgbouncer |"),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        rows = sorted((r for r in result["cells"] if r["workload"] == workload),
                      key=lambda r: (r["clients"], result["modes"].index(r["mode"])))
        for row in rows:
            if row["error"]:
                failures.append(row)
            if "tps" not in row:
                lines.append(f"| {row['label']} | {row['clients']} | {row['mode']} | 0 | failed, see below |"
                             + " |" * 9)
                continue
            ratios = row["ratios"]
            cols = [str(row["tps"]["n"]), _num(row["tps"]["median"]), _num(row["tps"]["iqr"]), _num(row["latency_avg_ms"]["median"], 3),
                    _num(row["latency_p99_ms"]["median"], 3)]
            cols += [_num(ratios.get(f"{m}_vs_{b}"), 3) for m in ("tps", "latency_avg_ms", "latency_p99_ms")
                     for b in ("direct", "pgbouncer")]
            lines.append(f"| {row['label']} | {row['clients']} | {row['mode']} | " + " | ".join(cols) + " |")
    if failures:
        lines += ["", "Paths that failed in some round (first error of each; a path that hung is not run again):", ""]
        lines += [f"- {r['label']}, {r['clients']} clients, {r['mode']}: {_cell(r['error'] or 'no result')}"
                  for r in failures]
    return lines


def _policy_md(result: list[dict]) -> list[str]:
    lines = ["| engine | mode | decisions/s (median) | IQR | runs |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['engine']} | {r['mode']} | {_num(r['decisions_per_s']['median'])} | "
              f"{_num(r['decisions_per_s']['iqr'])} | {r['decisions_per_s']['n']} |" for r in result]
    return lines


def _masking_md(result: list[dict]) -> list[str]:
    lines = ["| case | classifiers | MB/s (median) | IQR | runs |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {'yes' if r['classifiers'] else 'no'} | {_num(r['mb_per_s']['median'], 1)} | "
              f"{_num(r['mb_per_s']['iqr'], 1)} | {r['mb_per_s']['n']} |" for r in result]
    return lines


def _scale_md(result: dict) -> list[str]:
    n = result["connections"]
    lines = [(f"{n} connections to a `tcp` resource (an echo server) held at once, a fresh daemon per round; "
             "daemon VmRSS before (after one warm-up connection) and with all of them open."), "",
             ("| round | RSS before (KiB) | RSS with all open (KiB) | KiB per connection | opened | upstream open "
             "| held by the enforcer | answered an echo |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {r['rss_before_kib']:,} | {r['rss_after_kib']:,} | {r['kib_per_connection']:.2f} | "
              f"{r['opened']} | {r['upstream_open']} | {r['enforcer_sessions']} | {r['answered']} |" for i, r in enumerate(result["rounds"])]
    if "kib_per_connection" in result:
        s = result["kib_per_connection"]
        answered = "yes" if result["all_answered"] else "no"
        lines += ["", (f"KiB per connection: median {s['median']:.2f}, IQR {s['iqr']:.2f} over {s['n']} rounds. "
                       f"All {n} held by the enforcer and answering in every round: {answered}.")]
    lines += [f"- {_cell(error)}" for error in result["errors"]]
    return lines


TITLES = {"connect": "Kernel hooks: connect() latency (microseconds)", "pgbench": "PostgreSQL through each path: pgbench",
          "policy": "Policy decisions per second (SQL)", "masking": "Masking DataRow bodies (MB/s)",
          "scale": "Scale: agent connections held open through the enforcer"}
RENDER = {"connect": _connect_md, "pgbench": _pgbench_md, "policy": _policy_md, "masking": _masking_md,
          "scale": _scale_md}


def render(name: str, result: object) -> list[str]:
    """A section's Markdown; a section that failed shows its error instead of numbers."""
    if isinstance(result, dict) and set(result) == {"error"}:
        return [f"## {TITLES[name]}", "", f"Not measured: {_cell(result['error'], 2000)}"]
    return [f"## {TITLES[name]}", "", *RENDER[name](result)]


def write(results: dict) -> Path:
    info = machine()
    out = ROOT / "bench" / "results" / "latest.json"
    out.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    lines = ["# Benchmarks", "", ("Measured by `make bench` in one run; each path alternated with the others so "
                                  "machine noise hits all alike."), "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    for name, result in results.items():
        lines += ["", *render(name, result)]
    doc = ROOT / "BENCHMARKS.md"
    doc.write_text("\n".join(lines) + "\n")
    return doc
