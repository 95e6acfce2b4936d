"""Flow context: everything the enforcer knows about one diverted connection."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from interceptor.identity.model import Identity

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The process that opened a flow, pinned by (tgid, start_time) so a reused pid
    is never mistaken for the program that connected."""

    tgid: int
    start_time: int  # clock ticks since boot, /proc/<pid>/stat field 22
    uid: int
    gid: int
    exe: str
    cmdline: tuple[str, ...]
    cgroup: str

    def summary(self) -> dict[str, object]:
        return {
            "pid": self.tgid,
            "start_time": self.start_time,
            "uid": self.uid,
            "gid": self.gid,
            "exe": self.exe,
            "cmdline": list(self.cmdline),
            "cgroup": self.cgroup,
        }


@dataclass(frozen=True, slots=True)
class FlowContext:
    """One attributed connection: who opened it, where it was going, and as whom."""

    flow_id: str
    agent: str
    process: ProcessInfo
    original_dst: Endpoint
    client: Endpoint
    resource: str | None
    identity: Identity | None = None
    labels: dict[str, str] = field(default_factory=dict)
    connection_rule: str | None = None  # the rule that let the connection open (or approved it)

    def summary(self) -> dict[str, object]:
        return {
            "flow_id": self.flow_id,
            "agent": self.agent,
            "process": self.process.summary(),
            "original_dst": str(self.original_dst),
            "resource": self.resource,
            "identity": self.identity.summary() if self.identity else None,
        }
