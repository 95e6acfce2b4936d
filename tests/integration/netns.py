"""A "remote" host for tests: a network namespace the test creates, joined to the host by a
veth pair, with a TCP server that answers with the peer address it sees.

Only these addresses are ever dialed: they exist only inside the test's own namespace pair.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SERVER = Path(__file__).with_name("whoami_server.py")


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class RemoteHost:
    name: str
    host_if: str
    ip4: str
    host_ip4: str
    ip6: str
    host_ip6: str
    port: int
    server: subprocess.Popen | None = None

    def exec(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def start_server(self) -> None:
        self.server = self.exec(sys.executable, str(SERVER), str(self.port), stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "listening", "whoami server did not start"

    def close(self) -> None:
        if self.server:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def remove_stale() -> None:
    """A run killed before its teardown leaves its namespace and veth behind; their routes
    would shadow the new ones. Only names with our prefix are touched."""
    for line in subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("icpt-h"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("icpt-remote-"):
            subprocess.run(["ip", "netns", "del", line.split()[0]], capture_output=True)


def create(subnet: int = 231, port: int = 7000) -> RemoteHost:
    remove_stale()
    tag = uuid.uuid4().hex[:6]
    name, host_if, peer_if = f"icpt-remote-{tag}", f"icpt-h{tag}", f"icpt-r{tag}"
    host = RemoteHost(name, host_if, f"10.{subnet}.0.2", f"10.{subnet}.0.1", f"fd00:{subnet}::2",
                      f"fd00:{subnet}::1", port)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", name)
        sh("ip", "addr", "add", f"{host.host_ip4}/24", "dev", host_if)
        sh("ip", "-6", "addr", "add", f"{host.host_ip6}/64", "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        ns = ["ip", "netns", "exec", name]
        sh(*ns, "ip", "addr", "add", f"{host.ip4}/24", "dev", peer_if)
        sh(*ns, "ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", peer_if, "nodad")
        sh(*ns, "ip", "link", "set", peer_if, "up")
        sh(*ns, "ip", "link", "set", "lo", "up")
        host.start_server()
        _wait_reachable(host)
    except Exception:
        host.close()
        raise
    return host


def _wait_reachable(host: RemoteHost) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((host.ip4, host.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("integration tests need root (BPF, cgroups, netns): run `sudo make test`")
