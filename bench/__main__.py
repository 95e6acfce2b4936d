"""Run every benchmark section in one go; write bench/results/latest.json and BENCHMARKS.md.

A section that fails keeps its error text in the results and the others still run: the
bench reports, it does not pass or fail."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

from bench import connect, hotpath, http, pgbench, report, scale, ssh
from bench.stats import summary
from interceptor.masking import bench as masking_bench
from interceptor.policy import bench as policy_bench

REPEATS = 3


def repeated(run: Callable[[], list[dict]], keys: tuple[str, ...], metric: str, times: int = REPEATS) -> list[dict]:
    """A section that measures each case once, run `times` times: one row per case with the
    metric's median and spread, so these numbers carry a spread like the others."""
    cases: dict[tuple, dict] = {}
    for _ in range(times):
        for row in run():
            case = cases.setdefault(tuple(row[k] for k in keys), {"row": {k: row[k] for k in keys}, "samples": []})
            case["samples"].append(row[metric])
    return [{**case["row"], metric: summary(case["samples"])} for case in cases.values()]


SECTIONS: dict[str, Callable[[], object]] = {
    "connect": connect.run,
    "pgbench": pgbench.run,
    "http": http.run,
    "ssh": ssh.run,
    "policy": lambda: repeated(lambda: policy_bench.run(1.0), ("engine", "mode"), "decisions_per_s"),
    "masking": lambda: repeated(lambda: masking_bench.run(2.0), ("case", "classifiers"), "mb_per_s"),
    "scale": scale.run,
    "hotpath": hotpath.run,
}


def failure(exc: Exception) -> dict[str, str]:
    """A failed section's result: what went wrong, with a failed command's own words."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        text += f"\n{str(exc.stderr).strip()[-1500:]}"
    return {"error": text}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("sections", nargs="*", default=list(SECTIONS),
                        help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--render", action="store_true",
                        help="only write BENCHMARKS.md again from bench/results/latest.json")
    args = parser.parse_args()
    if args.render:
        print(f"[bench] wrote {report.rerender()}", file=sys.stderr)
        return
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    results: dict[str, object] = {}
    for name in args.sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            results[name] = SECTIONS[name]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' numbers
            results[name] = failure(exc)
            print(f"[bench] {name} failed: {results[name]['error']}", file=sys.stderr, flush=True)
        print(f"[bench] {name} took {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    document = report.write(results)
    print(json.dumps(results, indent=2))
    print(f"[bench] wrote {document}", file=sys.stderr)


if __name__ == "__main__":
    main()
