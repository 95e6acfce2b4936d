"""Diverting agents' connections to the enforcer: BPF cgroup hooks, iptables as fallback.

Both backends take a RedirectPlan, and answer the enforcer's one question after accept():
where was this connection going, and who opened it (`origin(conn)`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Protocol

from interceptor.redirect.plan import AgentEntry, DestEntry, RedirectPlan

__all__ = ["AgentEntry", "DestEntry", "RedirectPlan", "Origin", "DenyEvent", "Redirect", "DENY_REASONS"]

# An AF_INET socket address (host, port), or an AF_INET6 one (host, port, flowinfo, scope id).
SocketAddress = tuple[str, int] | tuple[str, int, int, int]

DENY_REASONS = {
    1: "policy: agent may not reach this resource",
    2: "destination is not a resource and the agent's unprotected setting is deny",
    3: "agent dialed the enforcer directly",
    4: "agent is in a network namespace other than the host's",
    5: "UDP to a resource address",
    6: "origin map full",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a diverted connection was going, and who opened it (as the kernel saw it)."""

    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_port: int
    tgid: int
    uid: int
    gid: int
    agent_index: int
    resource_index: int
    cgroup_id: int
    connect_ns: int  # CLOCK_BOOTTIME at connect(): a process started later is not the one that connected


@dataclass(frozen=True, slots=True)
class DenyEvent:
    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_port: int
    tgid: int
    uid: int
    agent_index: int
    resource_index: int
    reason: str
    protocol: str


class Redirect(Protocol):
    mode: str
    slow_origin: bool  # origin() blocks long enough to belong in a worker thread

    def apply(self, plan: RedirectPlan) -> None:
        """Install or update everything the plan says; atomically where the backend can."""

    def origin(self, conn: socket.socket) -> Origin | None:
        """The origin of an accepted connection, consumed (None: not diverted; close it)."""

    def on_deny(self, callback: Callable[[DenyEvent], None]) -> None:
        """Report refused connects (for audit)."""

    def close(self) -> None:
        """Stop reading, leaving the kernel state in place (agents stay fail-closed)."""

    def uninstall(self) -> None:
        """Remove every hook, map and rule; agents are then no longer diverted."""


def unmap(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """16 bytes as stored in the maps -> the address, IPv4 when v4-mapped."""
    ip6 = ipaddress.IPv6Address(addr)
    return ip6.ipv4_mapped or ip6


def endpoint(address: SocketAddress) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """(ip, port) of a socket address; IPv4 when a dual-stack socket shows it v4-mapped."""
    return unmap(mapped(address[0])), address[1]


def mapped(ip: str) -> bytes:
    """An address as the maps store it: 16 bytes, IPv4 v4-mapped."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed
