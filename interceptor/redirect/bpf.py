"""Thin loader for bpf/redirect.c: compile with bcc, fill the maps, attach at the cgroup-v2
root (ALLOW_MULTI, replacing what a previous daemon left), and read origins and denials.

Programs stay attached when the daemon exits or dies: agents' connects then land on a
closed loopback port and are refused. Only `uninstall()` detaches them, or a daemon starting
in iptables mode (see leftovers.py), with which they cannot run side by side.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from interceptor.redirect import (
    DENY_REASONS,
    DenyEvent,
    Origin,
    endpoint,
    libbpf,
    mapped,
    unmap,
)
from interceptor.redirect.plan import DestEntry, RedirectPlan
from interceptor.redirect.sockdiag import lookup_tcp

log = logging.getLogger(__name__)

BPF_SOURCE = Path(__file__).resolve().parent.parent.parent / "bpf" / "redirect.c"
SO_NETNS_COOKIE = 71
CONFIG_ANY_PORT_DESTS, CONFIG_UID_AGENTS = 1, 2  # struct config flags, as in bpf/redirect.h

# (program name in redirect.c, attach type); the name prefix marks our programs in the kernel.
PROGRAMS = (
    ("icpt_connect4", libbpf.CGROUP_INET4_CONNECT),
    ("icpt_connect6", libbpf.CGROUP_INET6_CONNECT),
    ("icpt_sendmsg4", libbpf.CGROUP_UDP4_SENDMSG),
    ("icpt_sendmsg6", libbpf.CGROUP_UDP6_SENDMSG),
)
# Hooks earlier versions attached to, still swept by detach_all and at attach (icpt_sockops
# re-keyed origins by 4-tuple; the enforcer now finds the client's socket cookie itself).
RETIRED = (("icpt_sockops", libbpf.CGROUP_SOCK_OPS),)
PREFIX = "icpt_"

# bcc ships no types: its BPF object, its map tables and their Key/Leaf values are Any here.
Bcc = Any
K = TypeVar("K")
V = TypeVar("V")


class _DenyEvent(ctypes.Structure):
    """struct deny_event of bpf/redirect.h (bcc cannot infer ring buffer record types)."""

    _fields_ = [("addr", ctypes.c_ubyte * 16), ("port", ctypes.c_uint16), ("family", ctypes.c_uint16),
                ("tgid", ctypes.c_uint32), ("uid", ctypes.c_uint32), ("agent", ctypes.c_uint32),
                ("resource", ctypes.c_uint32), ("reason", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class BpfUnavailable(RuntimeError):
    """BPF cannot be used here; the message says what is missing and how to get it."""


def bpf_source() -> Path:
    """bpf/ ships next to the package in a checkout and under share/ when installed."""
    for candidate in (BPF_SOURCE, Path("/usr/local/share/interceptor/bpf/redirect.c"),
                      Path("/opt/interceptor/bpf/redirect.c")):
        if candidate.exists():
            return candidate
    raise BpfUnavailable(f"BPF source redirect.c not found (looked at {BPF_SOURCE})")


def compile_programs() -> Bcc:
    """redirect.c compiled and loaded by bcc (a bcc.BPF); BpfUnavailable when it cannot be."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise BpfUnavailable("python bcc module missing: apt-get install python3-bpfcc "
                             "(and use a venv with --system-site-packages)") from exc
    source = bpf_source()
    try:
        return BPF(src_file=str(source).encode(), cflags=[f"-I{source.parent}", "-Wno-macro-redefined"])
    except Exception as exc:  # bcc raises bare Exception for missing headers / compile errors
        raise BpfUnavailable(f"bcc could not compile {source.name}: {exc}. Kernel headers must be at "
                             f"/lib/modules/{os.uname().release}/build (scripts/install.sh links Debian's)") from exc


def host_netns_cookie() -> int:
    with socket.socket() as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _detach(fd: int, attach_type: int, ours: Callable[[str], bool]) -> int:
    """Detach the programs at this hook whose name `ours` accepts; returns how many."""
    removed = 0
    for prog_id, name in libbpf.attached_programs(fd, attach_type):
        if ours(name):
            libbpf.detach(prog_id, fd, attach_type)
            removed += 1
    return removed


@contextlib.contextmanager
def _opened(cgroup_root: Path) -> Iterator[int]:
    """A read-only descriptor of the cgroup directory, closed after."""
    fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def attached_ours(cgroup_root: Path) -> list[str]:
    """Names of the interceptor programs attached at the root (current and retired hooks), one
    per attachment. OSError when BPF cannot be queried (no libbpf, no BPF in the kernel)."""
    with _opened(cgroup_root) as fd:
        return [name for _, attach_type in PROGRAMS + RETIRED
                for _, name in libbpf.attached_programs(fd, attach_type) if name.startswith(PREFIX)]


def detach_all(cgroup_root: Path) -> int:
    """Detach every interceptor program from the root; returns how many were removed."""
    with _opened(cgroup_root) as fd:
        return sum(_detach(fd, attach_type, lambda name: name.startswith(PREFIX))
                   for _, attach_type in PROGRAMS + RETIRED)


class BpfRedirect:
    mode = "bpf"
    slow_origin = False  # one map lookup

    def __init__(self, cgroup_root: Path) -> None:
        self.cgroup_root = cgroup_root
        self.bpf = compile_programs()
        self._funcs = {}
        for name, attach_type in PROGRAMS:
            self._funcs[name] = self.bpf.load_func(name.encode(), self.bpf.CGROUP_SOCK_ADDR, attach_type=attach_type)
        self.origins = self.bpf["origins"]
        self._host_netns = host_netns_cookie()
        self._flags = 0
        self._ports: set[int] = set()
        self._attached = False
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    # -- maps ---------------------------------------------------------------------------

    def apply(self, plan: RedirectPlan) -> None:
        """Fill the maps from the plan (new entries first, stale ones removed after), then
        attach on first use: the kernel never sees a half-filled policy."""
        agents = self.bpf["agents"]
        for entry in plan.agents:
            agents[ctypes.c_int(entry.index)] = agents.Leaf(int(entry.unprotected_allow))
        cgroup_ids = {os.stat(plan.managed_root).st_ino: 0}
        for entry in plan.agents:
            for path in entry.cgroup_paths:
                cgroup_ids[os.stat(path).st_ino] = entry.index
        uids = {uid: entry.index for entry in plan.agents for uid in entry.uids}
        dests = {self._dest_key_tuple(d): d.resource_index for d in plan.dests}
        ports = {d.port for d in plan.dests if d.port}
        flags = (CONFIG_ANY_PORT_DESTS if any(d.port == 0 for d in plan.dests) else 0) | \
                (CONFIG_UID_AGENTS if uids else 0)

        # Widen the filters first, fill the maps, then narrow: a connect() in between may
        # look at the trie once too often, never once too few.
        self._set_config(plan, flags | self._flags)
        self._set_ports(ports | self._ports)
        self._sync(self.bpf["agent_cgroups"], {ctypes.c_uint64(k).value: v for k, v in cgroup_ids.items()},
                   lambda t, k: t.Key(k), lambda t, v: t.Leaf(v))
        self._sync(self.bpf["agent_uids"], uids, lambda t, k: t.Key(k), lambda t, v: t.Leaf(v))
        self._sync(self.bpf["dests"], dests, self._dest_key, lambda t, v: t.Leaf(v))
        self._sync(self.bpf["access"], {pair: 1 for pair in plan.access},
                   lambda t, k: t.Key(*k), lambda t, v: t.Leaf(v))
        self._set_ports(ports)
        self._set_config(plan, flags)
        if not self._attached:
            self._attach()

    def _set_config(self, plan: RedirectPlan, flags: int) -> None:
        cfg = self.bpf["config"]
        value = cfg.Leaf()
        value.enforcer_port = plan.enforcer_port
        value.refuse_port = plan.refuse_port
        value.daemon_tgid = plan.daemon_tgid
        value.flags = flags
        value.host_netns = self._host_netns
        cfg[ctypes.c_int(0)] = value
        self._flags = flags

    def _set_ports(self, ports: set[int]) -> None:
        """dest_ports, the bitmap of exact ports some resource uses; only changed words are written."""
        words: dict[int, int] = {}
        for port in ports:
            words[port >> 6] = words.get(port >> 6, 0) | (1 << (port & 63))
        table = self.bpf["dest_ports"]
        for index in set(words) | {port >> 6 for port in self._ports}:
            table[ctypes.c_int(index)] = table.Leaf(words.get(index, 0))
        self._ports = set(ports)

    @staticmethod
    def _dest_key_tuple(d: DestEntry) -> tuple[int, int, bytes]:
        prefix = d.network.prefixlen + (96 if d.network.version == 4 else 0)
        return (32 + prefix, d.port, mapped(str(d.network.network_address)))

    @staticmethod
    def _dest_key(table: Bcc, k: tuple[int, int, bytes]) -> Bcc:
        key = table.Key()
        key.prefixlen, key.port = k[0], k[1]
        ctypes.memmove(key.addr, k[2], 16)
        return key

    @staticmethod
    def _sync(table: Bcc, wanted: Mapping[K, V], make_key: Callable[[Bcc, K], Bcc],
              make_leaf: Callable[[Bcc, V], Bcc]) -> None:
        for k, v in wanted.items():
            table[make_key(table, k)] = make_leaf(table, v)
        wanted_keys = {bytes(make_key(table, k)) for k in wanted}
        for key in list(table.keys()):
            if bytes(key) not in wanted_keys:
                del table[key]

    # -- attach -------------------------------------------------------------------------

    def _attach(self) -> None:
        """Attach (or swap in) our programs, detach retired ones, then remove the iptables
        chains a daemon in iptables mode left: only once ours are in place, so agents are never
        left undiverted in between."""
        from interceptor.redirect.leftovers import remove_other_mode

        with _opened(self.cgroup_root) as fd:
            for name, attach_type in PROGRAMS:
                ours = [pid for pid, pname in libbpf.attached_programs(fd, attach_type) if pname == name]
                replace = ours[0] if ours else None
                libbpf.attach(self._funcs[name].fd, fd, attach_type, replace_id=replace)
                for stale in ours[1:]:
                    libbpf.detach(stale, fd, attach_type)
                log.info("%s %s at %s", "replaced" if replace else "attached", name, self.cgroup_root)
            for name, attach_type in RETIRED:
                if _detach(fd, attach_type, name.__eq__):
                    log.info("detached %s left by an earlier version", name)
        self._attached = True
        remove_other_mode(self.mode, self.cgroup_root)

    # -- the enforcer's questions --------------------------------------------------------

    def origin(self, conn: socket.socket) -> Origin | None:
        """The record connect() left for the agent's socket, found by that socket's cookie:
        the kernel looks the socket up by the accepted connection's 4-tuple (inet_diag)."""
        client = lookup_tcp(endpoint(conn.getpeername()), endpoint(conn.getsockname()))
        if client is None:
            return None  # the agent's socket is gone already: nothing to serve
        key = self.origins.Key(client.cookie)
        try:
            o = self.origins[key]
        except KeyError:
            return None
        del self.origins[key]
        return Origin(unmap(bytes(o.addr)), o.port, o.tgid, o.uid, o.gid, o.agent, o.resource, o.cgroup_id,
                      o.ktime_ns)

    def on_deny(self, callback: Callable[[DenyEvent], None]) -> None:
        table = self.bpf["deny_events"]

        def decode(_ctx: object, data: int, _size: int) -> None:
            ev = ctypes.cast(data, ctypes.POINTER(_DenyEvent)).contents
            callback(DenyEvent(unmap(bytes(ev.addr)), ev.port, ev.tgid, ev.uid, ev.agent, ev.resource,
                               DENY_REASONS.get(ev.reason, f"reason {ev.reason}"),
                               "udp" if ev.protocol == socket.IPPROTO_UDP else "tcp"))

        table.open_ring_buffer(decode)
        self._poller = threading.Thread(target=self._poll, name="bpf-deny-events", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.bpf.ring_buffer_poll(200)

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=2)

    def uninstall(self) -> None:
        self.close()
        detach_all(self.cgroup_root)
