#!/usr/bin/env python3
"""Compile interceptor's hot modules with Cython, in place and incrementally (only modules whose
source or build options changed): the list and the logic are interceptor/compiled.py, loaded here
by path so that a tree whose binaries are stale (and whose `import interceptor` therefore fails)
can still be rebuilt. Run by scripts/install.sh and `make compiled`.

usage: compile_hot.py [--package DIR] [--jobs N]
  --package DIR  the `interceptor` package directory to build in [default: this checkout's]
  --jobs N       modules compiled at once [default: 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path(__file__).resolve().parent.parent / "interceptor")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("interceptor_compiled_build", args.package / "compiled.py")
    assert spec is not None and spec.loader is not None, f"no compiled.py in {args.package}"
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    try:
        compiled.build(args.package.resolve(), args.jobs, lambda line: print(f"[compile] {line}", flush=True))
    except RuntimeError as exc:
        print(f"[compile] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
