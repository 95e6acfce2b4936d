"""What the kernel (or iptables) must know, derived from the policy: a plain value both
redirect backends consume, so neither reads the policy itself."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only build_plan reads a policy; the backends need not load the policy package
    from interceptor.policy.model import AddressSpec, Policy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[Network]]
MayConnect = Callable[[str, str], bool]  # (agent name, resource name) -> allowed to connect


@dataclass(frozen=True, slots=True)
class AgentEntry:
    index: int  # >= 1; 0 is the managed parent (unassigned: refused everything)
    name: str
    cgroup_paths: tuple[str, ...]  # absolute paths on this host, managed one first
    uids: tuple[int, ...]
    unprotected_allow: bool


@dataclass(frozen=True, slots=True)
class DestEntry:
    network: Network
    port: int  # 0: any port
    resource_index: int  # >= 1


@dataclass(frozen=True, slots=True)
class RedirectPlan:
    enforcer_port: int
    refuse_port: int
    daemon_tgid: int
    managed_root: str  # absolute path of <cgroup2>/interceptor
    agents: tuple[AgentEntry, ...]
    dests: tuple[DestEntry, ...]
    access: frozenset[tuple[int, int]]  # (agent index, resource index) pairs allowed to connect
    resource_names: dict[int, str] = field(default_factory=dict)

    def agent_name(self, index: int) -> str | None:
        for agent in self.agents:
            if agent.index == index:
                return agent.name
        return None


class PlanError(ValueError):
    pass


class Indexer:
    """Stable small integers for names across reloads: a connect() recorded under the old
    policy still names the same agent or resource when the enforcer accepts it."""

    def __init__(self, first: int = 1) -> None:
        self._next = first
        self._ids: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        if name not in self._ids:
            self._ids[name] = self._next
            self._next += 1
        return self._ids[name]


def resolve_host(hostname: str) -> list[Network]:
    """Every address a hostname has now, as host networks (empty when it does not resolve)."""
    import socket

    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]) for info in infos}, key=str)


class HostAddresses:
    """Hostname resolution that never forgets: a name that fails to resolve keeps the
    addresses it had, so a DNS hiccup cannot turn a protected destination into an
    unprotected one (fail closed)."""

    def __init__(self, resolve: Resolver = resolve_host) -> None:
        self._resolve = resolve
        self._known: dict[str, list[Network]] = {}

    def __call__(self, hostname: str) -> list[Network]:
        fresh = self._resolve(hostname)
        if fresh:
            self._known[hostname] = fresh
        return self._known.get(hostname, [])


def build_plan(policy: Policy, may_connect: MayConnect, *, managed_root: str,
               agent_paths: dict[str, list[str]], enforcer_port: int, refuse_port: int,
               daemon_tgid: int, agents_ix: Indexer, resources_ix: Indexer,
               resolve: Resolver = resolve_host) -> RedirectPlan:
    """The kernel's view of a policy. `may_connect(agent, resource) -> bool` is the policy's
    connection-level answer for the agent's current identity."""
    agents = []
    for name, spec in sorted(policy.agents.items()):
        if 0 in spec.uids:
            raise PlanError(f"agent {name}: uid 0 cannot be an agent (root can remove any enforcement)")
        agents.append(AgentEntry(agents_ix(name), name, tuple(agent_paths[name]), tuple(spec.uids),
                                 spec.unprotected == "allow"))
    dests: list[DestEntry] = []
    names: dict[int, str] = {}
    for name, resource in sorted(policy.resources.items()):
        index = resources_ix(name)
        names[index] = name
        for address in resource.addresses:
            dests.extend(DestEntry(net, address.port, index) for net in _networks(address, resolve))
    access = frozenset((a.index, r) for a in agents for r, rname in names.items() if may_connect(a.name, rname))
    return RedirectPlan(enforcer_port, refuse_port, daemon_tgid, managed_root, tuple(agents), tuple(dests),
                        access, names)


def _networks(address: AddressSpec, resolve: Resolver) -> list[Network]:
    """The networks of one destination: its network, or what its hostname resolves to now."""
    if address.network is not None:
        return [address.network]
    if address.hostname is None:
        raise PlanError("an address has neither a network nor a hostname")
    return resolve(address.hostname)
