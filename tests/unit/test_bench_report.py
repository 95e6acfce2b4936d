"""The bench's own arithmetic: profile aggregation and the targets table (no servers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, where bench/ lives

import pytest  # noqa: E402

from bench import http, profile, report  # noqa: E402


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
            _cell("direct", 1, "prepared", 12000, 0.080), _cell("pgbouncer", 1, "prepared", 10000, 0.100, cpu=30.0),
            _cell("interceptor-batched", 1, "prepared", 5000, 0.200, cpu=95.0),
            _cell("pgbouncer", 8, "prepared", 50000, 0.16, cpu=13.0),
            _cell("interceptor-batched", 8, "prepared", 12500, 0.6, cpu=80.0),
        ]},
        "connect": {"ratios": {"agent connect() to an unprotected destination, hooks attached / not attached": 1.011}},
        "masking": [{"case": "redact 2 columns", "classifiers": False, "mb_per_s": {"median": 260.0}},
                    {"case": "all classifiers on 1 column", "classifiers": True, "mb_per_s": {"median": 25.0}}],
        "scale": {"connections": 2000, "kib_per_connection": {"median": 11.4}, "all_answered": True},
    }
    text = "\n".join(report._targets_md(results))
    assert "TPS at 8 clients >= 0.5x pgbouncer (batched audit, prepared) | 12,500 vs 50,000 = 0.25x | **not met** | " \
           "2.00x short |" in text
    assert "<= 50 us (batched audit, prepared) | 120 us (pgbouncer's 20 us) | **not met** | 70 us more |" in text
    assert "daemon CPU per prepared transaction <= 35 us (8 clients, batched audit) | 80 us | **not met** | 2.3x more |" in text
    assert "strict audit" not in text.split("\n\n")[0]  # no strict cell measured: no strict row
    assert "hooks attached / not attached <= 1.02 | 1.011 | met |" in text
    assert "redact 2 columns | 260.0 MB/s | met |" in text
    assert "all classifiers on 1 column | 25.0 MB/s | **not met** | 2.0x short |" in text
    assert "2,000 connections at <= 64 KiB RSS each, all answering | 11.4 KiB, all answered: yes | met |" in text
    assert "the daemon spent 80 us of CPU per transaction, pgbouncer 13 us (6.2x)" in text
    assert "there the daemon spent 95 us of CPU per prepared transaction" in text and "(pgbouncer 30 us)" in text


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:18080/v1/ping
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.25ms  667.89us   2.68ms   99.25%
  Latency Distribution
     50%  590.00us
     99%    2.10ms
  33410 requests in 2.00s, 1.64MB read
Requests/sec:  16697.35
"""


def test_wrk_output_is_read_in_microseconds_and_failed_requests_are_refused():
    assert http.parse_wrk(WRK_OUTPUT) == (16697.35, 1250.0, 2100.0, 33410)
    with pytest.raises(http.WrkError, match="failed requests"):
        http.parse_wrk(WRK_OUTPUT + "  Non-2xx or 3xx responses: 12\n")
    with pytest.raises(http.WrkError, match="no result"):
        http.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_http_rows_give_ratios_to_direct_and_a_failed_path_its_error():
    samples = {("direct", 1): [http.Sample(10_000, 60, 90, 20_000)],
               ("interceptor", 1): [http.Sample(2_500, 300, 500, 5_000, proxy_cpu_us=180.0)]}
    result = http.summarize(samples, {("haproxy", 1): "haproxy exited"}, rounds=1, seconds=2)
    lines = "\n".join(report.render("http", result))
    interceptor = next(r for r in result["cells"] if r["route"] == "interceptor" and r["connections"] == 1)
    assert interceptor["ratios"]["rps_vs_direct"] == 0.25 and interceptor["added_latency_us"] == 240.0
    assert "| interceptor, batched audit | 1 | 2,500 |" in lines and "| 180.0 |" in lines
    assert "not measured: haproxy exited" in lines
