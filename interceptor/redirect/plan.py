"""What the kernel (or iptables) must know, derived from the policy: a plain value both
redirect backends consume, so neither reads the policy itself."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
