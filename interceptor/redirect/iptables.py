"""iptables fallback: nat OUTPUT REDIRECT for agents' sockets, matched by cgroup-v2 path
(xt_cgroup) or owner uid. The original destination comes from conntrack (SO_ORIGINAL_DST);
the connecting process from an exact inet_diag lookup (socket inode, uid, cgroup) and the
agents' file descriptors in /proc.

Weaker than BPF in three documented ways: the pid is found after accept (a process that
exits in between cannot be attributed, and the connection is refused), a refused connect is
REDIRECTed to the refuse port, where the enforcer accepts it (so the agent sees its connect
succeed, then a reset, rather than ECONNREFUSED) to attribute and audit it (`refused`), and
attribution scans the agents' file descriptors.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable

from interceptor.redirect import DENY_REASONS, DenyEvent, Origin, SocketAddress, endpoint
from interceptor.redirect.plan import RedirectPlan
from interceptor.redirect.sockdiag import lookup_tcp

SO_ORIGINAL_DST = 80
CHAIN_OUT = "ICPT_OUT"
CHAIN_UDP = "ICPT_UDP"
CHAIN_PREFIX = "ICPT_"


class IptablesError(RuntimeError):
    pass


def _run(argv: list[str], stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise IptablesError(f"{' '.join(argv[:3])}...: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def original_dst(conn: socket.socket) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, = struct.unpack_from("!H", raw, 2)
            return ipaddress.IPv4Address(raw[4:8]), port
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, = struct.unpack_from("!H", raw, 2)
        return ipaddress.IPv6Address(raw[8:24]), port
    except OSError:
        return None  # no conntrack entry: not a redirected connection


def our_chains(tool: str, table: str) -> list[str]:
    """Names of the interceptor chains (ICPT_...) in `table` of `tool` (iptables or ip6tables).
    OSError when the tool is missing, IptablesError when it cannot list the table."""
    return [line[3:] for line in _run([tool, "-w", "-t", table, "-S"]).splitlines()
            if line.startswith(f"-N {CHAIN_PREFIX}")]


class IptablesRedirect:
    mode = "iptables"
    slow_origin = True  # netlink and /proc scans

    def __init__(self, cgroup_root: Path) -> None:
        self.cgroup_root = cgroup_root
        self.plan: RedirectPlan | None = None

    # -- rules --------------------------------------------------------------------------

    def _matchers(self, plan: RedirectPlan) -> list[tuple[str, int]]:
        """(match arguments, agent index), most specific first: an agent's own cgroup before
        the managed parent, which catches everything unassigned."""
        out = []
        for agent in plan.agents:
            for path in agent.cgroup_paths:
                out.append((f"-m cgroup --path {os.path.relpath(path, self.cgroup_root)}", agent.index))
            for uid in agent.uids:
                out.append((f"-m owner --uid-owner {uid}", agent.index))
        out.append((f"-m cgroup --path {os.path.relpath(plan.managed_root, self.cgroup_root)}", 0))
        return out

    def _rules(self, plan: RedirectPlan, version: int) -> str:
        loopback = "127.0.0.0/8" if version == 4 else "::1/128"
        nat = ["*nat", f":{CHAIN_OUT} - [0:0]"]
        flt = ["*filter", f":{CHAIN_UDP} - [0:0]"]
        for index in sorted({a.index for a in plan.agents} | {0}):
            nat.append(f":{CHAIN_PREFIX}A{index} - [0:0]")
            flt.append(f":{CHAIN_PREFIX}U{index} - [0:0]")
        # -g (goto), not -j: when an agent's chain ends without a verdict the packet leaves
        # ICPT_OUT too, instead of falling through to the managed parent's refuse-all matcher.
        for match, index in self._matchers(plan):
            nat.append(f"-A {CHAIN_OUT} -p tcp {match} -g {CHAIN_PREFIX}A{index}")
            flt.append(f"-A {CHAIN_UDP} -p udp {match} -g {CHAIN_PREFIX}U{index}")
        refuse = f"-j REDIRECT --to-ports {plan.refuse_port}"
        for agent in [None, *plan.agents]:
            index = agent.index if agent else 0
            chain, uchain = f"{CHAIN_PREFIX}A{index}", f"{CHAIN_PREFIX}U{index}"
            nat.append(f"-A {chain} -p tcp -d {loopback} -m multiport --dports "
                       f"{plan.enforcer_port},{plan.refuse_port} {refuse}")
            for dest in plan.dests:
                if dest.network.version != version:
                    continue
                port = f"--dport {dest.port}" if dest.port else ""
                allowed = (index, dest.resource_index) in plan.access
                target = f"-j REDIRECT --to-ports {plan.enforcer_port}" if allowed else refuse
                nat.append(f"-A {chain} -p tcp -d {dest.network} {port} {target}")
                flt.append(f"-A {uchain} -p udp -d {dest.network} {port} -j REJECT")
            flt.append(f"-A {uchain} -p udp --dport 53 -j RETURN")
            if not (agent and agent.unprotected_allow):
                nat.append(f"-A {chain} -p tcp {refuse}")
                flt.append(f"-A {uchain} -p udp -j REJECT")
        return "\n".join(nat + ["COMMIT"] + flt + ["COMMIT", ""])

    def apply(self, plan: RedirectPlan) -> None:
        """Install or update the rules; on the first apply, then remove the BPF programs a
        daemon in BPF mode left (only once the rules are in place, so agents are never left
        undiverted in between). IptablesError when a rule cannot be installed."""
        from interceptor.redirect.leftovers import remove_other_mode

        first = self.plan is None
        for version, tool in ((4, "iptables"), (6, "ip6tables")):
            _run([f"{tool}-restore", "--noflush", "--wait"], self._rules(plan, version))
            for table, chain in (("nat", CHAIN_OUT), ("filter", CHAIN_UDP)):
                if subprocess.run([tool, "-w", "-t", table, "-C", "OUTPUT", "-j", chain],
                                  capture_output=True).returncode != 0:
                    _run([tool, "-w", "-t", table, "-I", "OUTPUT", "1", "-j", chain])
            self._drop_stale_chains(tool, plan)
        self.plan = plan
        if first:
            remove_other_mode(self.mode, self.cgroup_root)

    def _drop_stale_chains(self, tool: str, plan: RedirectPlan) -> None:
        wanted = {f"{CHAIN_PREFIX}{kind}{a}" for a in [0, *(x.index for x in plan.agents)] for kind in "AU"}
        for table in ("nat", "filter"):
            for chain in our_chains(tool, table):
                if chain not in wanted | {CHAIN_OUT, CHAIN_UDP}:
                    _run([tool, "-w", "-t", table, "-X", chain])

    def uninstall(self) -> None:
        for tool in ("iptables", "ip6tables"):
            for table, chain in (("nat", CHAIN_OUT), ("filter", CHAIN_UDP)):
                while subprocess.run([tool, "-w", "-t", table, "-D", "OUTPUT", "-j", chain],
                                     capture_output=True).returncode == 0:
                    pass
            for table in ("nat", "filter"):
                chains = our_chains(tool, table)
                for chain in chains:
                    _run([tool, "-w", "-t", table, "-F", chain])
                for chain in chains:
                    _run([tool, "-w", "-t", table, "-X", chain])

    # -- attribution ---------------------------------------------------------------------

    def origin(self, conn: socket.socket) -> Origin | None:
        plan = self.plan
        dst = original_dst(conn)
        local = conn.getsockname()
        if plan is None or dst is None or (str(dst[0]), dst[1]) == (local[0], local[1]):
            return None
        client = self._client_socket(conn.getpeername(), dst)
        if client is None:
            return None
        inode, uid, cgroup_id = client
        pid = self._owner(inode, plan)
        if pid is None:
            return None
        agent_index = self._agent_of(pid, uid, plan)
        if agent_index is None:
            return None
        resource_index = _resource_of(dst, plan)
        if (agent_index, resource_index) not in plan.access:
            return None
        return Origin(dst[0], dst[1], pid, uid, -1, agent_index, resource_index, cgroup_id,
                      time.clock_gettime_ns(time.CLOCK_BOOTTIME))

    def refused(self, conn: socket.socket) -> DenyEvent:
        """A connect the rules REDIRECTed to the refuse port (accepted there, `conn`),
        attributed as far as it can be: tgid and uid -1 when the agent's socket or process is
        already gone, agent index 0 when the process is no agent's. The reason is the one the
        BPF hook would give. Blocking (netlink, /proc scans); IptablesError before the first
        apply, OSError when the connection is already reset."""
        plan = self.plan
        if plan is None:
            raise IptablesError("no rules applied yet")
        dst = original_dst(conn) or endpoint(conn.getsockname())
        client = self._client_socket(conn.getpeername(), dst)
        uid = client[1] if client else -1
        pid = self._owner(client[0], plan) if client else None
        agent_index = self._agent_of(pid, uid, plan) if pid is not None else None
        resource_index = _resource_of(dst, plan)
        return DenyEvent(dst[0], dst[1], -1 if pid is None else pid, uid, agent_index or 0, resource_index,
                         _refusal_reason(dst, resource_index, plan), "tcp")

    @staticmethod
    def _client_socket(peer: SocketAddress, dst: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
                       ) -> tuple[int, int, int] | None:
        """(inode, uid, cgroup id) of the agent's socket: source = our peer, dest = original dst."""
        info = lookup_tcp(endpoint(peer), dst)
        return (info.inode, info.uid, info.cgroup_id) if info else None

    def _candidates(self, plan: RedirectPlan) -> set[int]:
        pids: set[int] = set()
        for path in [plan.managed_root, *(p for a in plan.agents for p in a.cgroup_paths)]:
            for root, _dirs, files in os.walk(path):
                if "cgroup.procs" in files:
                    with open(os.path.join(root, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
        uids = {u for a in plan.agents for u in a.uids}
        if uids:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        if entry.stat().st_uid in uids:
                            pids.add(int(entry.name))
                    except OSError:
                        continue
        return pids

    def _owner(self, inode: int, plan: RedirectPlan) -> int | None:
        target = f"socket:[{inode}]"
        for pid in sorted(self._candidates(plan)):
            try:
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    if os.readlink(fd.path) == target:
                        return pid
            except OSError:
                continue
        return None

    def _agent_of(self, pid: int, uid: int, plan: RedirectPlan) -> int | None:
        from interceptor.redirect.cgroups import process_cgroup

        path = str(self.cgroup_root / process_cgroup(pid).lstrip("/"))
        best: tuple[int, int] | None = None
        for agent in plan.agents:
            for cg in agent.cgroup_paths:
                if path == cg or path.startswith(cg + "/"):
                    if best is None or len(cg) > best[0]:
                        best = (len(cg), agent.index)
        if best:
            return best[1]
        return next((a.index for a in plan.agents if uid in a.uids), None)

    def on_deny(self, callback: Callable[[DenyEvent], None]) -> None:
        """Nothing reports here: the enforcer accepts refused connects on the refuse port and
        asks `refused` about each."""

    def close(self) -> None:
        """Rules stay in place: agents remain fail-closed while the daemon is down."""


def _resource_of(dst: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], plan: RedirectPlan) -> int:
    """The index of the resource `dst` belongs to (the first matching entry, as the rules
    match), 0 when it is no resource's."""
    return next((d.resource_index for d in plan.dests if dst[0] in d.network and d.port in (0, dst[1])), 0)


def _refusal_reason(dst: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], resource_index: int,
                    plan: RedirectPlan) -> str:
    """Why the rules sent a connect to `dst` to the refuse port, in the BPF hook's words."""
    if dst[0].is_loopback and dst[1] in (plan.enforcer_port, plan.refuse_port):
        return DENY_REASONS[3]
    return DENY_REASONS[1] if resource_index else DENY_REASONS[2]
