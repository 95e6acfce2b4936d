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
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": platform.release(), "cpu": cpu, "cores": str(os.cpu_count()),
            "python": platform.python_version(), "postgres": version(["/usr/lib/postgresql/15/bin/postgres", "-V"]),
            "pgbouncer": version(["pgbouncer", "--version"]), "haproxy": version(["haproxy", "-v"])}


def _connect_md(result: dict) -> list[str]:
    lines = ["## Kernel hooks: connect() latency (microseconds)", "",
             "| path | median | p99 | IQR | samples |", "| --- | --- | --- | --- | --- |"]
    labels = {"unhooked": "agent connect(), no hooks attached", "hooked": "agent connect() to an unprotected "
              "destination, hooks attached", "redirected": "agent connect() to a resource (redirected)",
              "ttfb_direct": "connect + first byte, direct", "ttfb_enforcer": "connect + first byte through the enforcer"}
    for key, label in labels.items():
        s = result["stats"][key]
        lines.append(f"| {label} | {s['median']:.1f} | {s['p99']:.1f} | {s['iqr']:.1f} | {s['n']} |")
    lines += ["", "| ratio | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    return lines


RENDER = {"connect": _connect_md}


def write(results: dict) -> Path:
    info = machine()
    out = ROOT / "bench" / "results" / "latest.json"
    out.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    lines = ["# Benchmarks", "", "Measured by `make bench` in one run; each path alternated with the others so "
             "machine noise hits all alike.", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    for name, result in results.items():
        lines += [""] + RENDER[name](result)
    doc = ROOT / "BENCHMARKS.md"
    doc.write_text("\n".join(lines) + "\n")
    return doc
