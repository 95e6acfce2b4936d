"""Run every benchmark section in one go; write bench/results/latest.json and BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import sys

from bench import connect, report


SECTIONS = {"connect": connect.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    results = {}
    for name in args.sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name]()
    document = report.write(results)
    print(json.dumps(results, indent=2))
    print(f"[bench] wrote {document}", file=sys.stderr)


if __name__ == "__main__":
    main()
