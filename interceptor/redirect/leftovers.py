"""What a daemon of one redirect mode left in the kernel that a daemon of the other mode must
not run beside: our BPF programs at the cgroup-v2 root, our iptables chains (ICPT_...).

Both outlive their daemon on purpose (agents stay fail-closed). Beside the other mode's hooks
they refuse or misroute every agent: BPF programs send agents to the refusal port under
iptables rules, and iptables rules send the BPF-rewritten connect to the enforcer to the
refusal port. `find_leftovers` names them (for `interceptor doctor`); `remove_other_mode`
removes them once a daemon has installed its own hooks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from interceptor.redirect import cgroups
from interceptor.redirect.bpf import attached_ours, detach_all
from interceptor.redirect.iptables import IptablesError, IptablesRedirect, our_chains

log = logging.getLogger(__name__)

TOOLS = ("iptables", "ip6tables")
TABLES = ("nat", "filter")


def iptables_chains() -> list[tuple[str, str, list[str]]]:
    """(tool, table, chain names) for each table holding interceptor chains. OSError when a
    tool is missing, IptablesError when it cannot list a table."""
    found = [(tool, table, our_chains(tool, table)) for tool in TOOLS for table in TABLES]
    return [entry for entry in found if entry[2]]


def _bpf_lines(mount: Path | None) -> list[str]:
    if mount is None:
        return ["cgroup v2 is not mounted: BPF programs at its root not checked"]
    try:
        names = attached_ours(mount)
    except OSError as exc:
        return [f"BPF programs at {mount} not checked: {exc}"]
    return [f"BPF program {name} attached at {mount} (redirect: bpf)" for name in names]


def _iptables_lines() -> list[str]:
    try:
        found = iptables_chains()
    except (OSError, IptablesError) as exc:
        return [f"iptables chains not checked: {exc}"]
    return [f"{tool} table {table}: chains {', '.join(chains)} (redirect: iptables)"
            for tool, table, chains in found]


def find_leftovers(running_mode: str | None = None, mount: Path | None = None) -> list[str]:
    """One human line per leftover: each interceptor BPF program attached at the cgroup-v2 root
    (`mount`, found when None) and each iptables table holding interceptor chains; empty when
    there are none. The hooks of `running_mode` ("bpf" or "iptables"), a running daemon's own,
    are not leftovers and are not listed. A check that cannot run (no libbpf, no iptables, no
    cgroup-v2 mount) gives a line saying so instead of raising."""
    lines = []
    if running_mode != "bpf":
        lines += _bpf_lines(mount or cgroups.find_mount())
    if running_mode != "iptables":
        lines += _iptables_lines()
    return lines


def remove_other_mode(mode: str, mount: Path) -> None:
    """Remove what a daemon of the mode other than `mode` left, logging what was found and
    removed at WARNING. Call once a daemon in `mode` has its own hooks in place. OSError or
    IptablesError when something found cannot be removed (agents then stay refused)."""
    if mode == "iptables":
        _remove_bpf(mount)
    else:
        _remove_iptables(mount)


def _remove_bpf(mount: Path) -> None:
    try:
        names = attached_ours(mount)
    except OSError as exc:
        log.info("BPF not queried for programs an earlier daemon left: %s", exc)
        return
    if names:
        detach_all(mount)
        log.warning("found BPF programs an earlier daemon in bpf mode left at %s (%s), which would refuse "
                    "every agent in iptables mode: removed them", mount, ", ".join(names))


def _remove_iptables(mount: Path) -> None:
    try:
        found = iptables_chains()
    except (OSError, IptablesError) as exc:
        log.info("iptables not queried for chains an earlier daemon left: %s", exc)
        return
    if found:
        IptablesRedirect(mount).uninstall()
        log.warning("found iptables chains an earlier daemon in iptables mode left (%s), which would refuse "
                    "every agent in bpf mode: removed them",
                    "; ".join(f"{tool} {table}: {', '.join(chains)}" for tool, table, chains in found))
