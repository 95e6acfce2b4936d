"""Where the daemon's time goes: py-spy samples its threads (native frames included, so
time in system calls shows as the libc call) while a workload runs, and the top entries
by own time become a table in BENCHMARKS.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
RATE = 250  # samples per second
TOP = 15


ROOT = str(Path(__file__).resolve().parent.parent) + "/"
_PREFIXES = (ROOT, "site-packages/", f"python{sys.version_info.major}.{sys.version_info.minor}/")


def _frame(frame: str) -> str:
    """`function (path)`: lines of one function counted together, the path shortened
    (checkout, site-packages, stdlib)."""
    frame = re.sub(r":\d+\)$", ")", frame)
    for prefix in _PREFIXES:
        head, found, tail = frame.partition(prefix)
        if found and "(" in head:
            return f"{head.rsplit('(', 1)[0]}({tail}"
    return frame


def aggregate(raw: str, top: int = TOP) -> dict:
    """py-spy --format raw (one `thread;frame;...;frame count` line per stack) into: share of
    samples per thread, and the main thread's top frames by own (innermost) time."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    main = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip() if frames[0].startswith("thread") else "?"
        threads[thread] += count
        if thread == "MainThread":
            main += count
            own[_frame(frames[-1])] += count
    total = sum(threads.values())
    return {"samples": total, "rate_hz": RATE,
            "threads": [{"thread": t, "share": round(n / total, 4)} for t, n in threads.most_common()] if total else [],
            "main_top": [{"frame": f, "share": round(n / main, 4)} for f, n in own.most_common(top)] if main else []}


def profile(pid: int, seconds: float, workload: Callable[[], object]) -> dict:
    """Sample `pid` for `seconds` while `workload()` runs; py-spy must be installed."""
    if PY_SPY is None:
        raise RuntimeError("py-spy not found: pip install py-spy (make setup installs it with the bench extra)")
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        spy = subprocess.Popen([PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--threads", "--native",
                                "--rate", str(RATE), "--duration", str(max(1, round(seconds))), "--output", out.name],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            workload()
        finally:
            _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.strip()[-500:]}")
        return aggregate(Path(out.name).read_text())
