"""Attribution against real processes: a pid is trusted only with its start time."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import pytest

from interceptor.enforcer.attribution import AttributionError, attribute
from interceptor.redirect import Origin


def origin_for(pid: int, connect_ns: int) -> Origin:
    return Origin(ipaddress.ip_address("10.231.0.2"), 7000, pid, os.getuid(), os.getgid(), 1, 1, 0, connect_ns)


def spawn_with_pid(pid: int, tries: int = 50) -> subprocess.Popen:
    """Start `sleep` with exactly this pid (ns_last_pid: root only), retrying if another
    process on the host takes it first."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "30"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.fail(f"could not obtain pid {pid} for the reuse test after {tries} tries")


def test_live_process_is_attributed_with_exe_cmdline_and_start_time():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker"])
    try:
        time.sleep(0.05)
        info = attribute(origin_for(proc.pid, time.clock_gettime_ns(time.CLOCK_BOOTTIME)))
        assert info.tgid == proc.pid
        assert info.exe == os.path.realpath(sys.executable)
        assert info.cmdline[-1] == "marker"
        assert info.start_time > 0
    finally:
        proc.kill()
        proc.wait()


def test_reused_pid_is_refused():
    first = subprocess.Popen(["true"])
    first.wait()
    connect_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)  # "the first process connected, then exited"
    time.sleep(0.05)  # past the 10 ms resolution of process start times
    second = spawn_with_pid(first.pid)
    try:
        with pytest.raises(AttributionError, match="reused"):
            attribute(origin_for(first.pid, connect_ns))
    finally:
        second.kill()
        second.wait()


def test_exited_process_is_refused():
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(AttributionError, match="gone"):
        attribute(origin_for(proc.pid, time.clock_gettime_ns(time.CLOCK_BOOTTIME)))
