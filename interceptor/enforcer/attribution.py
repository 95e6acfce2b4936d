"""Who opened a diverted connection: the kernel's origin record plus /proc.

A pid is only trusted together with its start time: if the process that holds the pid
now started after the connect() the kernel recorded, the pid was reused and the flow is
refused rather than attributed to the wrong program.
"""

from __future__ import annotations

import os

from interceptor.flow import ProcessInfo
from interceptor.redirect import Origin
from interceptor.redirect.cgroups import process_cgroup

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLOCK_TICKS


class AttributionError(RuntimeError):
    """The connecting process cannot be identified with certainty; the flow is refused."""


def read_stat_start(pid: int) -> int:
    """Start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def process_info(pid: int) -> ProcessInfo:
    """Everything audit and policy need about a live process, read once."""
    try:
        start = read_stat_start(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = tuple(a.decode(errors="replace") for a in f.read().split(b"\0") if a)
        uid = gid = -1
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                elif line.startswith("Gid:"):
                    gid = int(line.split()[1])
                    break
    except (OSError, ValueError) as exc:
        raise AttributionError(f"process {pid} is gone or unreadable: {exc}") from exc
    return ProcessInfo(pid, start, uid, gid, exe, cmdline, process_cgroup(pid))


def attribute(origin: Origin) -> ProcessInfo:
    info = process_info(origin.tgid)
    if info.start_time * NS_PER_TICK > origin.connect_ns:
        raise AttributionError(
            f"pid {origin.tgid} was reused: the process now holding it started after the connect()")
    return info
