"""The bench's own arithmetic: profile aggregation and the targets table (no servers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, where bench/ lives

from bench import profile, report  # noqa: E402


def test_profile_counts_own_time_per_function_of_the_loop_thread():
    raw = "\n".join([
        "thread (1): MainThread;run (interceptor/daemon.py:373);write (libc.so.6) 30",
        f"thread (1): MainThread;run (interceptor/daemon.py:373);_scrub_dict ({profile.ROOT}interceptor/audit/scrub.py:66) 6",
        f"thread (1): MainThread;run (interceptor/daemon.py:373);_scrub_dict ({profile.ROOT}interceptor/audit/scrub.py:77) 4",
        "thread (2): audit-store_0;_worker (concurrent/futures/thread.py:81) 60",
        "garbage line",
    ])
    result = profile.aggregate(raw, top=5)
    assert result["samples"] == 100
    assert result["threads"] == [{"thread": "audit-store_0", "share": 0.6}, {"thread": "MainThread", "share": 0.4}]
    assert result["main_top"] == [{"frame": "write (libc.so.6)", "share": 0.75},
                                  {"frame": "_scrub_dict (interceptor/audit/scrub.py)", "share": 0.25}]


def _cell(route, clients, mode, tps, avg, cpu=None):
    cell = {"route": route, "clients": clients, "mode": mode, "tps": {"median": tps}, "latency_avg_ms": {"median": avg}}
    if cpu is not None:
        cell["proxy_cpu_us"] = {"median": cpu}
    return cell


def test_targets_say_met_or_by_how_much_not():
    results = {
        "pgbench": {"cells": [
            _cell("direct", 1, "prepared", 12000, 0.080), _cell("pgbouncer", 1, "prepared", 10000, 0.100),
            _cell("interceptor-batched", 1, "prepared", 5000, 0.200),
            _cell("pgbouncer", 8, "prepared", 50000, 0.16, cpu=13.0),
            _cell("interceptor-batched", 8, "prepared", 12500, 0.6, cpu=80.0),
        ]},
        "connect": {"ratios": {"agent connect() to an unprotected destination, hooks attached / not attached": 1.011}},
        "masking": [{"case": "redact 2 columns", "classifiers": False, "mb_per_s": {"median": 260.0}},
                    {"case": "all classifiers on 1 column", "classifiers": True, "mb_per_s": {"median": 25.0}}],
        "scale": {"connections": 2000, "kib_per_connection": {"median": 11.4}, "all_answered": True},
    }
    text = "\n".join(report._targets_md(results))
    assert "| 12,500 vs 50,000 = 0.25x | **not met** | 4.0x short |" in text
    assert "| 120 us vs 20 us | **not met** | 100 us more |" in text
    assert "hooks attached / not attached <= 1.02 | 1.011 | met |" in text
    assert "redact 2 columns | 260.0 MB/s | met |" in text
    assert "all classifiers on 1 column | 25.0 MB/s | **not met** | 2.0x short |" in text
    assert "2,000 connections at <= 64 KiB RSS each, all answering | 11.4 KiB, all answered: yes | met |" in text
    assert "the daemon spent 80 us of CPU per transaction, pgbouncer 13 us (6.2x)" in text
