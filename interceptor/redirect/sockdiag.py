"""One exact inet_diag lookup (SOCK_DIAG_BY_FAMILY without NLM_F_DUMP): the kernel finds the
socket by its 4-tuple in its hash tables, instead of us scanning every socket on the host."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_CGROUP_ID = 21
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFF

_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then the sockid
_SOCKID = struct.Struct("!HH16s16s")  # ports and addresses in network order
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_RTA = struct.Struct("=HH")


@dataclass(frozen=True, slots=True)
class SocketInfo:
    uid: int
    inode: int
    cgroup_id: int
    cookie: int  # the socket cookie, as bpf_get_socket_cookie() gives it


def _addr16(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ip.packed.ljust(16, b"\0")


def lookup_tcp(src: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int],
               dst: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]) -> SocketInfo | None:
    """The TCP socket on this host whose local end is `src` and remote end is `dst`."""
    family = socket.AF_INET if src[0].version == 4 else socket.AF_INET6
    body = (_REQ.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES)
            + _SOCKID.pack(src[1], dst[1], _addr16(src[0]), _addr16(dst[0]))
            + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    request = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(request, (0, 0))
        data = nl.recv(65536)
    length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data)
    if kind == NLMSG_ERROR:
        return None  # ENOENT: no such socket (it closed, or never was)
    offset = _NLMSGHDR.size + _MSG_HEAD.size + _SOCKID.size
    _ifindex, cookie_lo, cookie_hi = _SOCKID_TAIL.unpack_from(data, offset)
    offset += _SOCKID_TAIL.size
    _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(data, offset)
    offset += _MSG_TAIL.size
    cgroup_id = 0
    while offset + _RTA.size <= length:
        rta_len, rta_type = _RTA.unpack_from(data, offset)
        if rta_len < _RTA.size:
            break
        if rta_type == INET_DIAG_CGROUP_ID:
            cgroup_id, = struct.unpack_from("=Q", data, offset + _RTA.size)
        offset += (rta_len + 3) & ~3
    return SocketInfo(uid, inode, cgroup_id, cookie_lo | cookie_hi << 32)
