"""`interceptor doctor`: every kernel feature and component the daemon needs, checked for
real (a BPF program is compiled and loaded, an iptables rule is listed), hooks a daemon of
the other redirect mode left, and what each resource of the policy needs before a flow fails
(its credentials; for ssh resources the SSH host CA, its `@cert-authority` block in
/etc/ssh/ssh_known_hosts and the resource's own `known_hosts` file, read without any network
access), each failure with what it is and how to fix it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from interceptor.policy.model import Policy, ResourceSpec
    from interceptor.ssh_certificates import SshHostCA


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


COMPILED = "compiled hot modules"


def _compiled() -> Check:
    from interceptor import compiled

    state = compiled.status()
    if not state["pure_python"]:
        return Check(COMPILED, True, f"all {len(state['compiled'])} run compiled with Cython", needed_for="optional")
    if state["compiled"]:
        pure = ", ".join(module.removeprefix("interceptor.") for module in state["pure_python"])
        detail = f"{len(state['pure_python'])} of {len(compiled.HOT)} run as pure Python (the same code, slower): {pure}"
    else:
        detail = f"none of the {len(compiled.HOT)} is compiled: they run as pure Python (the same code, slower)"
    return Check(COMPILED, False, detail, f"compile them: {compiled.rebuild_command()} (scripts/install.sh does; it "
                 "needs gcc, python3-dev and Cython)", needed_for="optional")


CHECKS: tuple[Callable[[], Check], ...] = (_root, _cgroup2, _btf, _headers, _bcc_module, _libbpf, _bpf_load,
                                           _iptables, _node, _compiled)


def _guarded(check: Callable[[], Check], name: str) -> Check:
    try:
        return check()
    except Exception as exc:  # a check that crashes is a failed check, with its reason
        return Check(name, False, f"check failed: {exc}")


ENV_NOTE = "doctor reads its own environment, not the daemon's: the daemon's log at start says whether it has it"


def _resources(policy: Path, state_dir: Path) -> list[Check]:
    """The checks of the policy at `policy`: one per resource with credentials (resolved, a
    command source run with a time limit, and validated for its protocol, no value shown), then
    when it has ssh resources the checks of _ssh."""
    from interceptor.credentials_check import check_policy
    from interceptor.policy.loader import PolicyError, load_policy

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        return [Check("policy", False, str(exc).splitlines()[0], "run `interceptor policy check`",
                      needed_for="resource")]
    checks = [Check(f"credentials of resource {c.resource}", c.ok, f"{c.source}: {c.detail}" if c.ok else c.detail,
                    f"{c.fix}; {ENV_NOTE}" if c.source.startswith("env ") and not c.ok else c.fix,
                    needed_for="resource")
              for c in asyncio.run(check_policy(loaded, run_commands=True))]
    return checks + _ssh(loaded, state_dir, Path("/"))


SSH_CA = "SSH host CA"
SSH_TRUST = "SSH host CA in ssh_known_hosts"
SSH_PORT = 22


def _ssh(policy: Policy, state_dir: Path, root: Path) -> list[Check]:
    """For a policy with ssh resources: the SSH host CA of `state_dir`, its block in
    `<root>/etc/ssh/ssh_known_hosts`, then each ssh resource's known_hosts file; none without."""
    resources = [r for r in policy.resources.values() if r.protocol == "ssh"]
    if not resources:
        return []
    ca_check, ca = _ssh_host_ca(state_dir)
    return [ca_check, _guarded(lambda: _ssh_trust(policy, ca, root), SSH_TRUST)] + \
        [_guarded(partial(_known_hosts, r), f"known_hosts of resource {r.name}") for r in resources]


def _ssh_host_ca(state_dir: Path) -> tuple[Check, SshHostCA | None]:
    """The SSH host CA loaded as the daemon loads it (not created: absent is fine, the daemon
    creates it when it starts); a failure gives SshHostCAError's reason and remedy."""
    from interceptor.ssh_certificates import SshHostCA, SshHostCAError, key_path

    path = key_path(state_dir)
    if not os.path.lexists(path):
        return Check(SSH_CA, True, f"none yet ({path}): the daemon creates it when it starts",
                     needed_for="resource"), None
    try:
        ca = SshHostCA.open(state_dir, create=False)
    except SshHostCAError as exc:
        as_root = "" if os.geteuid() == 0 else f" (doctor runs as uid {os.geteuid()}: run it as root)"
        return Check(SSH_CA, False, str(exc), f"do as the detail says{as_root}; until the daemon can load it, "
                                               "it refuses every ssh flow", needed_for="resource"), None
    return Check(SSH_CA, True, f"{path}: {ca.key.get_fingerprint('sha256')}", needed_for="resource"), ca


def _ssh_trust(policy: Policy, ca: SshHostCA | None, root: Path) -> Check:
    """Whether the system-wide known_hosts holds the `@cert-authority` line `interceptor trust
    install` writes now for `policy` and `ca` (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"). Only a
    warning when missing or stale: agents may trust the CA through their own known_hosts."""
    from interceptor.trust_cli import KnownHosts, ssh_trust

    fix = "`interceptor trust install` (with --policy FILE for another policy than the settings'), unless " \
          "agents' own known_hosts trust the SSH host CA"
    known = KnownHosts(root)
    try:
        wanted = ssh_trust(policy)
        block = known.block()
    except (OSError, ValueError) as exc:  # KnownHostsError is a ValueError
        return Check(SSH_TRUST, False, f"{known.path}: {exc}", fix, needed_for="optional")
    if not wanted.patterns:
        return Check(SSH_TRUST, True, "the ssh resources have no host pattern: " + "; ".join(wanted.warnings),
                     needed_for="optional")
    if block is None:
        return Check(SSH_TRUST, False, f"{known.path} has no SSH host CA block: agents' ssh does not trust the "
                                       "enforcer's host certificates", fix, needed_for="optional")
    if ca is None:
        return Check(SSH_TRUST, False, f"{known.path} has an SSH host CA block, but no SSH host CA is loaded (see "
                                       "above): it cannot be for the CA the daemon will use", fix,
                     needed_for="optional")
    if ca.known_hosts_line(wanted.patterns) not in block.splitlines():
        return Check(SSH_TRUST, False, f"{known.path}: the SSH host CA block is stale (another CA key or other "
                                       f"host patterns than {', '.join(wanted.patterns)})", fix, needed_for="optional")
    return Check(SSH_TRUST, True, f"{known.path} trusts the SSH host CA for {', '.join(wanted.patterns)}",
                 needed_for="optional")


def _keyscan(host: str, port: int, path: str) -> str:
    """The command adding the ed25519 host key of `host`:`port` to the known_hosts `path`."""
    return f"ssh-keyscan -t ed25519{'' if port == SSH_PORT else f' -p {port}'} {host} >> {path}"


def _lookups(resource: ResourceSpec) -> tuple[list[tuple[str, int]], list[str]]:
    """The (name, port) pairs the ssh handler looks the server's host key up under (its
    `host_key_alias` on each port, else each hostname and single address of the resource),
    and the networks whose addresses are only known when dialled."""
    from interceptor.handlers.base import resource_option

    ports = dict.fromkeys(a.port for a in resource.addresses)
    alias = resource_option(resource, "host_key_alias")
    if isinstance(alias, str) and alias:
        return [(alias, port) for port in ports], []
    names: list[tuple[str, int]] = []
    networks: list[str] = []
    for address in resource.addresses:
        if address.hostname is not None:
            names.append((address.hostname, address.port))
        elif address.network is not None and address.network.num_addresses == 1:
            names.append((str(address.network.network_address), address.port))
        else:
            networks.append(str(address.network))
    return list(dict.fromkeys(names)), networks


def _known_hosts(resource: ResourceSpec) -> Check:
    """The resource's `known_hosts` file read and parsed as the ssh handler does, with a plain
    key or `@cert-authority` entry for every name of _lookups (asyncssh's matching: `[host]:port`
    for a port other than 22, then the bare host)."""
    from interceptor.errors import Refused
    from interceptor.handlers.ssh.upstream import KnownHostsUnusable, known_hosts

    name = f"known_hosts of resource {resource.name}"
    lookups, networks = _lookups(resource)
    try:
        path, trusted = known_hosts(resource)
    except KnownHostsUnusable as exc:
        path = str((resource.options or {})["known_hosts"])
        scans = "; ".join(_keyscan(host, port, path) for host, port in lookups) or _keyscan("HOST", SSH_PORT, path)
        return Check(name, False, str(exc), "fix or remove the entry the detail quotes" if os.access(path, os.R_OK) else
                     f"make it a file root can read holding the server's host key; after checking its fingerprint: "
                     f"{scans}", needed_for="resource")
    except Refused as exc:
        return Check(name, False, str(exc), "set the resource's known_hosts option to an OpenSSH known_hosts file "
                                            "holding the server's host key", needed_for="resource")
    missing = [(host, port) for host, port in lookups
               if not any(trusted.match(host, "", None if port == SSH_PORT else port)[:2])]
    unchecked = f"; not checked here: the addresses of {', '.join(networks)} (looked up when dialled)" \
        if networks else ""
    if missing:
        shown = ", ".join(host if port == SSH_PORT else f"[{host}]:{port}" for host, port in missing)
        return Check(name, False, f"{path} has no host key or @cert-authority entry for {shown}{unchecked}",
                     "check the server's fingerprint, then: " +
                     "; ".join(_keyscan(host, port, path) for host, port in missing), needed_for="resource")
    shown = ", ".join(host if port == SSH_PORT else f"[{host}]:{port}" for host, port in lookups)
    return Check(name, True, f"{path} has entries for {shown or 'no fixed name'}{unchecked}", needed_for="resource")


def run_checks(running_mode: str | None = None, policy: Path | None = None,
               state_dir: Path | None = None) -> list[Check]:
    """Every host check in order, then leftovers of the redirect mode other than `running_mode`
    (the running daemon's "bpf" or "iptables"; None when no daemon runs: every hook found is listed),
    then the checks of each resource of the policy file at `policy` (None: not checked), the
    SSH host CA's in `state_dir` (None: the settings' default)."""
    from interceptor.config import Settings

    results = [_guarded(check, check.__name__.strip("_")) for check in CHECKS]
    results.append(_guarded(lambda: _leftovers(running_mode), LEFTOVERS))
    if policy is not None:
        try:
            results.extend(_resources(policy, state_dir or Settings().state_dir))
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
