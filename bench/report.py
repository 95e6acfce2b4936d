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
    programs = result.get("programs") or {}
    names = sorted({key.rsplit("_", 1)[0] for key in programs})
    if names:
        lines += ["", ("Time inside our BPF programs per IPv4 connect() of an agent to an unprotected destination, "
                       "as the kernel counts it (kernel.bpf_stats_enabled, on only for that probe): ")
                  + "; ".join(f"{name} {programs[name + '_ns']['median']:.0f} ns over "
                              f"{programs[name + '_runs']['median']:g} run(s)" for name in names)
                  + ". Timing whole connect() calls is noisier than that difference, so both ratios are given."]
    others = result.get("programs_not_agent") or {}
    if others:
        lines[-1] += (" For a process that is not an agent (every other process on the host): "
                      + "; ".join(f"{name} {others[name + '_ns']['median']:.0f} ns" for name in names
                                  if name + "_ns" in others) + ".")
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
    lines = [(f"`pgbench -n -T {result['seconds_per_run']:g}` (no connection time in TPS, except with `-C`, where "
              "connecting and logging in is what is measured: there TPS and the average include it, the p99 from "
              f"pgbench's log does not), {result['rounds']} rounds; "
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
                  "| avg / direct | avg / pgbouncer | p99 / direct | p99 / pgbouncer | proxy CPU us/txn |"),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        rows = sorted((r for r in result["cells"] if r["workload"] == workload),
                      key=lambda r: (r["clients"], result["modes"].index(r["mode"])))
        for row in rows:
            if row["error"]:
                failures.append(row)
            if "tps" not in row:
                lines.append(f"| {row['label']} | {row['clients']} | {row['mode']} | 0 | failed, see below |"
                             + " |" * 10)
                continue
            ratios = row["ratios"]
            cols = [str(row["tps"]["n"]), _num(row["tps"]["median"]), _num(row["tps"]["iqr"]), _num(row["latency_avg_ms"]["median"], 3),
                    _num(row["latency_p99_ms"]["median"], 3)]
            cols += [_num(ratios.get(f"{m}_vs_{b}"), 3) for m in ("tps", "latency_avg_ms", "latency_p99_ms")
                     for b in ("direct", "pgbouncer")]
            cols.append(_num(row["proxy_cpu_us"]["median"], 1) if "proxy_cpu_us" in row else "-")
            lines.append(f"| {row['label']} | {row['clients']} | {row['mode']} | " + " | ".join(cols) + " |")
    if failures:
        lines += ["", "Paths that failed in some round (first error of each; a path that hung is not run again):", ""]
        lines += [f"- {r['label']}, {r['clients']} clients, {r['mode']}: {_cell(r['error'] or 'no result')}"
                  for r in failures]
    lines += ["", "proxy CPU us/txn: user + system time of the proxy process (the daemon with all its threads, "
                  "pgbouncer, haproxy) per transaction, over the same runs.", "", *_profile_md(result.get("profile"))]
    return lines


def _profile_md(result: dict | None) -> list[str]:
    if not result:
        return []
    lines = ["### Profile of the daemon (py-spy)", ""]
    if "error" in result:
        return lines + [f"Not measured: {_cell(result['error'])}"]
    lines += [(f"{result['clients']} clients, {result['mode']}, {result['audit']} audit, {result['seconds']:g} s at "
               f"{result['rate_hz']} Hz with native frames (a libc call is time in that system call; "
               "`epoll_pwait` is the event loop waiting). Own time of the event loop thread, by function:"), "",
              "| function | share of the loop thread's samples |", "| --- | --- |"]
    lines += [f"| {_cell(r['frame'])} | {r['share'] * 100:.1f}% |" for r in result["main_top"]]
    lines += ["", "Samples by thread: " + ", ".join(f"{t['thread']} {t['share'] * 100:.0f}%" for t in result["threads"])
              + " (threads blocked in native calls are sampled too)."]
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


def _cells(results: dict) -> dict[tuple[str, int, str], dict]:
    pg = results.get("pgbench") or {}
    return {(c["route"], c["clients"], c["mode"]): c for c in pg.get("cells", []) if "tps" in c}


def _median(cell: dict | None, metric: str) -> float | None:
    return cell[metric]["median"] if cell and metric in cell else None


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**not met**")


ADDED_US_MAX = 50  # added latency at 1 client, microseconds (pgbouncer adds about 20)
CPU_US_MAX = 35  # daemon CPU per prepared transaction, microseconds (pgbouncer spends about 15)
GOAL = ("The goal beyond these targets stays 1.0x pgbouncer's TPS and no more added latency than pgbouncer's "
        "(the TPS / pgbouncer and avg / pgbouncer columns below).")


def _targets_md(results: dict) -> list[str]:
    """Each target of the issue against this run's numbers: met or by how much not."""
    rows: list[tuple[str, str, bool | None, str]] = []
    cells = _cells(results)
    for mode in ("simple", "extended", "prepared"):
        bouncer = _median(cells.get(("pgbouncer", 8, mode)), "tps")
        for route, floor in (("interceptor-batched", 0.5), ("interceptor-strict", 0.25)):
            tps = _median(cells.get((route, 8, mode)), "tps")
            if tps is None or not bouncer:
                continue
            share = tps / bouncer
            rows.append((f"TPS at 8 clients >= {floor}x pgbouncer ({route.split('-')[1]} audit, {mode})",
                         f"{tps:,.0f} vs {bouncer:,.0f} = {share:.2f}x", share >= floor,
                         "" if share >= floor else f"{floor * bouncer / tps:.2f}x short"))
    for mode in ("simple", "extended", "prepared"):
        direct = _median(cells.get(("direct", 1, mode)), "latency_avg_ms")
        bouncer = _median(cells.get(("pgbouncer", 1, mode)), "latency_avg_ms")
        ours = _median(cells.get(("interceptor-batched", 1, mode)), "latency_avg_ms")
        if None in (direct, bouncer, ours):
            continue
        added, bouncer_added = (ours - direct) * 1000, (bouncer - direct) * 1000
        rows.append((f"added latency at 1 client <= {ADDED_US_MAX} us (batched audit, {mode})",
                     f"{added:.0f} us (pgbouncer's {bouncer_added:.0f} us)", added <= ADDED_US_MAX,
                     "" if added <= ADDED_US_MAX else f"{added - ADDED_US_MAX:.0f} us more"))
    cpu = _median(cells.get(("interceptor-batched", 8, "prepared")), "proxy_cpu_us")
    if cpu is not None:
        rows.append((f"daemon CPU per prepared transaction <= {CPU_US_MAX} us (8 clients, batched audit)",
                     f"{cpu:.0f} us", cpu <= CPU_US_MAX, "" if cpu <= CPU_US_MAX else f"{cpu / CPU_US_MAX:.1f}x more"))
    connect = results.get("connect") or {}
    for name, value in (connect.get("ratios") or {}).items():
        if name.startswith("agent connect() to an unprotected destination"):
            rows.append((f"{name} <= 1.02", f"{value:.3f}", value <= 1.02, "" if value <= 1.02 else f"+{value - 1.02:.3f}"))
    masking = results.get("masking")
    if isinstance(masking, list):
        for case in masking:
            mb = case["mb_per_s"]["median"]
            if case["case"].startswith("passthrough"):
                continue
            rows.append((f"masking >= 50 MB/s per core: {case['case']}", f"{mb:,.1f} MB/s", mb >= 50,
                         "" if mb >= 50 else f"{50 / mb:.1f}x short"))
    scale = results.get("scale") or {}
    if "kib_per_connection" in scale:
        kib = scale["kib_per_connection"]["median"]
        ok = kib <= 64 and scale.get("all_answered")
        rows.append((f"{scale['connections']:,} connections at <= 64 KiB RSS each, all answering",
                     f"{kib:.1f} KiB, all answered: {'yes' if scale.get('all_answered') else 'no'}", ok, ""))
    lines = ["| target | this run | | by how much |", "| --- | --- | --- | --- |"]
    lines += [f"| {t} | {m} | {_verdict(ok)} | {d} |" for t, m, ok, d in rows]
    lines += ["", GOAL]
    return (lines + _why_md(cells, results.get("hotpath"), (results.get("pgbench") or {}).get("profile"))
            + _masking_why(masking))


def _masking_why(masking: object) -> list[str]:
    """Classifiers cost what they find: the same column with and without secrets in it."""
    speeds = {case["case"]: case["mb_per_s"]["median"] for case in masking} if isinstance(masking, list) else {}
    found, clean = speeds.get("all classifiers on 1 column"), speeds.get("all classifiers on 1 column, no secrets")
    if found is None or clean is None or found >= 50:
        return []
    return ["", f"Classifiers on a field with secrets in it (a card number and an email in one 91-byte value) run at "
                f"{found:.0f} MB/s, on a field without any at {clean:.0f} MB/s (MB/s of whole rows): the cheap pre-checks "
                "skip most patterns on clean text, and on the other the time goes to what each candidate brings "
                "(the pattern's match, Luhn, mod-97, entropy checks, cutting the masked value together), in Python, "
                "per value."]


SYSCALLS = ("write (libc", "writev (libc", "read (libc", "sendmsg (libc", "recvmsg (libc")


def _why_md(cells: dict, hotpath: object, profiled: dict | None = None) -> list[str]:
    """The CPU each proxy spent per transaction explains the throughput gap on a host whose
    cores PostgreSQL and pgbench share with it."""
    ours = _median(cells.get(("interceptor-batched", 8, "prepared")), "proxy_cpu_us")
    bouncer = _median(cells.get(("pgbouncer", 8, "prepared")), "proxy_cpu_us")
    if ours is None or not bouncer:
        return []
    text = (f"Why: at 8 clients (prepared, batched audit) the daemon spent {ours:.0f} us of CPU per transaction, "
            f"pgbouncer {bouncer:.0f} us ({ours / bouncer:.1f}x). Per statement the daemon parses the messages, "
            "judges the statement, builds, scrubs, hashes and stores an audit record, and crosses the kernel "
            "twice each way, in one Python event loop on a host whose cores PostgreSQL and pgbench share.")
    parts = {part["part"]: part["us"]["median"] for part in hotpath} if isinstance(hotpath, list) else {}
    if parts:
        python = sum(us for part, us in parts.items() if not part.startswith("policy decision"))
        text += (f" Measured in isolation (section below), the Python work of a prepared transaction adds up to "
                 f"{python:.0f} us (its decision was taken at Parse); the rest is the event loop, the system calls "
                 "and the audit writer thread.")
    if profiled and profiled.get("main_top"):
        share = sum(r["share"] for r in profiled["main_top"] if r["frame"].startswith(SYSCALLS))
        text += (f" In the profile, sending and receiving (write, writev, read: on loopback a send also runs the "
                 f"receiver's TCP input and wakes it) take {share * 100:.0f}% of the event loop thread's samples.")
    lines = ["", text]
    shape = next((us for part, us in parts.items() if "numeric shape" in part), None)
    unseen = next((us for part, us in parts.items() if "never seen" in part), None)
    if shape is not None and unseen is not None:
        lines += ["", f"The simple protocol sends every statement as text with its own numbers: its decision is found "
                      f"by numeric shape after a tokenize ({shape:.0f} us; a statement never seen costs {unseen:.0f} us "
                      "of sqlglot parsing and analysis), where a prepared statement's was taken once at Parse."]
    alone = _median(cells.get(("interceptor-batched", 1, "prepared")), "proxy_cpu_us")
    bouncer_alone = _median(cells.get(("pgbouncer", 1, "prepared")), "proxy_cpu_us")
    if alone is not None and bouncer_alone:
        lines += ["", f"Added latency at 1 client: there the daemon spent {alone:.0f} us of CPU per prepared "
                      f"transaction, most of it in the event loop on the transaction's path (pgbouncer "
                      f"{bouncer_alone:.0f} us), more than at 8 "
                      f"clients ({ours:.0f} us): each of its two sends wakes a peer that sleeps (pgbench, the "
                      "PostgreSQL backend), where at 8 clients the peers are often awake and one loop turn serves "
                      "several sessions."]
    strict = _median(cells.get(("interceptor-strict", 8, "prepared")), "tps")
    batched = _median(cells.get(("interceptor-batched", 8, "prepared")), "tps")
    slow = _median(cells.get(("interceptor-strict", 1, "prepared")), "latency_avg_ms")
    fast = _median(cells.get(("interceptor-batched", 1, "prepared")), "latency_avg_ms")
    if None not in (strict, batched, slow, fast) and batched:
        lines += ["", f"Strict audit (the default) releases a result only once the group commit holding its record "
                      f"is on disk (fsync): at 1 client that adds {(slow - fast) * 1000:.0f} us per transaction to "
                      f"batched's latency, and at 8 clients (prepared) it runs at {strict / batched:.2f}x batched's "
                      "TPS, as sessions released by one commit queue their next records for the one after."]
    return lines


def _hotpath_md(result: list[dict]) -> list[str]:
    lines = ["One `pgbench -S -M prepared` transaction, each part timed alone in a loop (no sockets), "
             "microseconds:", "", "| part | us (median) | IQR | runs |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['part']} | {r['us']['median']:.2f} | {r['us']['iqr']:.2f} | {r['us']['n']} |" for r in result]
    return lines


def _http_md(result: dict) -> list[str]:
    lines = [(f"`wrk --latency -t1 -c N -d {result['seconds_per_run']:g}s` against {result['upstream']}, "
              f"{result['rounds']} rounds; each cell is the median of its rounds, IQR its spread. Latency in "
              "microseconds; added latency is the average's difference from direct at the same connections; "
              "proxy CPU is the proxy process's CPU time per request."), "",
             "| path | connections | requests/s | IQR | vs direct | latency avg | p99 | added | proxy CPU/request |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["cells"]:
        if "rps" not in row:
            lines.append(f"| {row['label']} | {row['connections']} | not measured: {_cell(row['error'] or '')} |"
                         " | | | | | |")
            continue
        cpu = row.get("proxy_cpu_us")
        lines.append(f"| {row['label']} | {row['connections']} | {_num(row['rps']['median'])} | "
                     f"{_num(row['rps']['iqr'])} | {row.get('ratios', {}).get('rps_vs_direct', float('nan')):.3f} | "
                     f"{_num(row['latency_avg_us']['median'], 1)} | {_num(row['latency_p99_us']['median'], 1)} | "
                     f"{_num(row.get('added_latency_us'), 1)} | {_num(cpu['median'], 1) if cpu else '-'} |")
    return lines


def _ssh_md(result: dict) -> list[str]:
    lines = [(f"`{result['command']}`: {result['count']} round trips in a row per path and round, {result['rounds']} "
              f"rounds, {result['client']}, to {result['server']}; each cell is the median of its rounds, IQR "
              "its spread. Latency in milliseconds per round trip; daemon CPU is the daemon's CPU time per "
              "round trip."),
             "", ("| path | round trips/s | IQR | vs direct | vs direct, same key exchange | latency avg | p99 "
                  "| daemon CPU/round trip |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["cells"]:
        if "round_trips_per_s" not in row:
            lines.append(f"| {row['label']} | not measured: {_cell(row['error'] or '')} | | | | | | |")
            continue
        cpu, ratios = row.get("proxy_cpu_ms"), row.get("ratios", {})
        lines.append(f"| {row['label']} | {_num(row['round_trips_per_s']['median'], 1)} | "
                     f"{_num(row['round_trips_per_s']['iqr'], 1)} | "
                     f"{_num(ratios.get('round_trips_per_s_vs_direct'), 3)} | "
                     f"{_num(ratios.get('round_trips_per_s_vs_direct_kex'), 3)} | "
                     f"{_num(row['latency_avg_ms']['median'], 1)} | {_num(row['latency_p99_ms']['median'], 1)} | "
                     f"{_num(cpu['median'], 1) if cpu else '-'} |")
    agreed = [f"{row['label']} {row['kex']}" for row in result["cells"] if row.get("kex")]
    if agreed:
        lines += ["", "Key exchange the client agreed on (with the enforcer on the interceptor path; the enforcer "
                      "logs in to sshd with its own): " + ", ".join(agreed) + "."]
    lines += ["", f"sshd logged {result['sshd_logins']:,} logins for {result['round_trips']:,} successful round trips "
                  "(each path's, and one per path to read the key exchange): the interceptor keeps no connection to "
                  "sshd between flows. It can keep up with direct: the enforcer asks the client for no authentication "
                  "(the flow says who the agent is), where sshd checks the client's key, and its own login to sshd "
                  "(started when the client asks to log in, after the key exchange) overlaps the client's side."]
    return lines


TITLES = {"connect": "Kernel hooks: connect() latency (microseconds)", "pgbench": "PostgreSQL through each path: pgbench",
          "http": "HTTP through each path: wrk", "ssh": "SSH through each path: `ssh host true` round trips",
          "policy": "Policy decisions per second (SQL)", "masking": "Masking DataRow bodies (MB/s)",
          "scale": "Scale: agent connections held open through the enforcer",
          "hotpath": "What a transaction costs the daemon in Python"}
def rerender() -> Path:
    """BENCHMARKS.md again from bench/results/latest.json (after a change to this module)."""
    saved = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    return write(saved["results"], saved["machine"])


RENDER = {"connect": _connect_md, "pgbench": _pgbench_md, "http": _http_md, "ssh": _ssh_md, "policy": _policy_md,
          "masking": _masking_md, "scale": _scale_md, "hotpath": _hotpath_md}


def render(name: str, result: object) -> list[str]:
    """A section's Markdown; a section that failed shows its error instead of numbers."""
    if isinstance(result, dict) and set(result) == {"error"}:
        return [f"## {TITLES[name]}", "", f"Not measured: {_cell(result['error'], 2000)}"]
    return [f"## {TITLES[name]}", "", *RENDER[name](result)]


def write(results: dict, info: dict[str, str] | None = None) -> Path:
    """Write both files; `info` keeps the machine and date of an earlier run when re-rendering it."""
    info = info or machine()
    out = ROOT / "bench" / "results" / "latest.json"
    out.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    lines = ["# Benchmarks", "", ("Measured by `make bench` in one run; each path alternated with the others so "
                                  "machine noise hits all alike."), "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Targets", "", *_targets_md(results)]
    for name, result in results.items():
        lines += ["", *render(name, result)]
    doc = ROOT / "BENCHMARKS.md"
    doc.write_text("\n".join(lines) + "\n")
    return doc
