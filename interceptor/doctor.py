"""`interceptor doctor`: every kernel feature and component the daemon needs, checked for
real (a BPF program is compiled and loaded, an iptables rule is listed), and hooks a daemon
of the other redirect mode left, each failure with what it is and how to fix it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed_for: str = "daemon"  # daemon | bpf | iptables | optional | resource (one resource's flows)


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root privileges", ok, "running as root" if ok else f"running as uid {os.geteuid()}",
                 "run as root (sudo): loading BPF programs and cgroup attach need CAP_BPF and CAP_NET_ADMIN")


def _cgroup2() -> Check:
    from interceptor.redirect.cgroups import FALLBACK_MOUNT, find_mount

    mount = find_mount()
    if mount:
        return Check("cgroup v2", True, f"mounted at {mount}")
    ok = Path("/proc/filesystems").read_text().find("cgroup2") >= 0
    return Check("cgroup v2", ok, f"not mounted; the daemon mounts it at {FALLBACK_MOUNT}" if ok
                 else "the kernel does not support cgroup2", "a kernel built with CONFIG_CGROUPS and cgroup v2")


def _btf() -> Check:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Check("BTF", ok, "/sys/kernel/btf/vmlinux present" if ok else "no /sys/kernel/btf/vmlinux",
                 "a kernel built with CONFIG_DEBUG_INFO_BTF=y", needed_for="optional")


def _headers() -> Check:
    build = Path(f"/lib/modules/{os.uname().release}/build")
    source = os.environ.get("BCC_KERNEL_SOURCE")
    ok = build.exists() or bool(source and Path(source).exists())
    detail = f"{build} -> {build.resolve()}" if build.exists() else (f"BCC_KERNEL_SOURCE={source}" if ok else
                                                                      f"{build} missing")
    return Check("kernel headers for bcc", ok, detail,
                 "run scripts/install.sh: it installs linux-headers-amd64 and links the nearest Debian headers "
                 "when this kernel has no headers package", needed_for="bpf")


def _bcc_module() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Check("python bcc", False, str(exc), "apt-get install python3-bpfcc; the venv needs "
                     "--system-site-packages (scripts/install.sh does this)", needed_for="bpf")
    return Check("python bcc", True, f"bcc {getattr(bcc, '__version__', '')} from {Path(bcc.__file__).parent}",
                 needed_for="bpf")


def _bpf_load() -> Check:
    from interceptor.redirect.bpf import PROGRAMS, BpfUnavailable, compile_programs

    try:
        bpf = compile_programs()
        for name, attach_type in PROGRAMS:
            bpf.load_func(name.encode(), bpf.CGROUP_SOCK_ADDR, attach_type=attach_type)
        bpf.cleanup()
    except (BpfUnavailable, Exception) as exc:  # bcc raises bare Exception on verifier errors
        return Check("BPF programs compile and load", False, str(exc).splitlines()[0][:300],
                     "see the kernel headers and python bcc checks above; the kernel needs BPF_SYSCALL, "
                     "CGROUP_BPF and BPF_JIT", needed_for="bpf")
    return Check("BPF programs compile and load", True,
                 f"{len(PROGRAMS)} programs (connect4/6, sendmsg4/6) verified by the kernel", needed_for="bpf")


def _libbpf() -> Check:
    from interceptor.redirect import libbpf

    try:
        libbpf.lib()
    except OSError as exc:
        return Check("libbpf", False, str(exc), "apt-get install libbpf1", needed_for="bpf")
    return Check("libbpf", True, "libbpf.so loaded (attach/replace/query)", needed_for="bpf")


def _iptables() -> Check:
    missing = [t for t in ("iptables", "ip6tables", "iptables-restore", "ip6tables-restore") if not shutil.which(t)]
    if missing:
        return Check("iptables fallback", False, f"missing {', '.join(missing)}", "apt-get install iptables",
                     needed_for="iptables")
    for argv in (["iptables", "-w", "-t", "nat", "-S", "OUTPUT"], ["iptables", "-m", "cgroup", "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            return Check("iptables fallback", False, f"{' '.join(argv)}: {result.stderr.strip()[:200]}",
                         "the kernel needs netfilter nat, REDIRECT, conntrack and xt_cgroup", needed_for="iptables")
    return Check("iptables fallback", True, "nat table, REDIRECT and cgroup match available", needed_for="iptables")


def _node() -> Check:
    ok = shutil.which("node") is not None
    return Check("node (local dev OpenID provider)", ok, shutil.which("node") or "not found",
                 "apt-get install nodejs npm (only for the demo's local issuer)", needed_for="optional")


LEFTOVERS = "leftovers of the other redirect mode"


def _leftovers(running_mode: str | None) -> Check:
    from interceptor.redirect.leftovers import find_leftovers

    lines = find_leftovers(running_mode)
    if not lines:
        return Check(LEFTOVERS, True, "none", needed_for="optional")
    return Check(LEFTOVERS, False, "; ".join(lines),
                 "a daemon starting in the other mode removes these itself and logs it (restart it); with the "
                 "daemon stopped, `interceptor uninstall` removes them now", needed_for="optional")


CHECKS: tuple[Callable[[], Check], ...] = (_root, _cgroup2, _btf, _headers, _bcc_module, _libbpf, _bpf_load,
                                           _iptables, _node)


def _guarded(check: Callable[[], Check], name: str) -> Check:
    try:
        return check()
    except Exception as exc:  # a check that crashes is a failed check, with its reason
        return Check(name, False, f"check failed: {exc}")


ENV_NOTE = "doctor reads its own environment, not the daemon's: the daemon's log at start says whether it has it"


def _credentials(policy: Path) -> list[Check]:
    """One check per resource of the policy at `policy` with credentials: resolved (a command
    source run, with a time limit) and validated for its protocol, no value shown."""
    from interceptor.credentials_check import check_policy
    from interceptor.policy.loader import PolicyError, load_policy

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        return [Check("policy", False, str(exc).splitlines()[0], "run `interceptor policy check`",
                      needed_for="resource")]
    return [Check(f"credentials of resource {c.resource}", c.ok, f"{c.source}: {c.detail}" if c.ok else c.detail,
                  f"{c.fix}; {ENV_NOTE}" if c.source.startswith("env ") and not c.ok else c.fix, needed_for="resource")
            for c in asyncio.run(check_policy(loaded, run_commands=True))]


def run_checks(running_mode: str | None = None, policy: Path | None = None) -> list[Check]:
    """Every host check in order, then leftovers of the redirect mode other than `running_mode`
    (the running daemon's "bpf" or "iptables"; None when no daemon runs: every hook found is listed),
    then the credentials of each resource of the policy file at `policy` (None: not checked)."""
    results = [_guarded(check, check.__name__.strip("_")) for check in CHECKS]
    results.append(_guarded(lambda: _leftovers(running_mode), LEFTOVERS))
    if policy is not None:
        try:
            results.extend(_credentials(policy))
        except Exception as exc:  # a check that crashes is a failed check, with its reason
            results.append(Check("credentials", False, f"check failed: {exc}", needed_for="resource"))
    return results


def verdict(checks: list[Check]) -> tuple[bool, str]:
    """Can the daemon run, and with which redirect?"""
    failed = {c.needed_for for c in checks if not c.ok}
    if "daemon" in failed:
        return False, "the daemon cannot run"
    if "bpf" not in failed:
        summary = "ready: BPF redirection"
    elif "iptables" not in failed:
        summary = "degraded: BPF unavailable, the daemon will use the iptables fallback"
    else:
        return False, "neither BPF nor iptables redirection is available"
    if "resource" in failed:
        return False, f"{summary}, but the flows of resources whose credentials fail are refused"
    return True, summary
