"""The control API: JSON lines over a Unix socket, one request and one answer per line.

Access is decided by the peer's kernel credentials (SO_PEERCRED), not by anything the
client says: root, or a member of the configured admin group.
"""

from __future__ import annotations

import asyncio
import enum
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20


class ControlMethod(enum.StrEnum):
    """Every method the control socket serves, by its name on the wire."""

    STATUS = "status"
    SESSIONS = "sessions"
    POLICY_RELOAD = "policy.reload"
    IDENTITY_STATUS = "identity.status"
    IDENTITY_LOGIN = "identity.login"
    CATALOG_SHOW = "catalog.show"
    CATALOG_DUMP = "catalog.dump"
    CATALOG_REFRESH = "catalog.refresh"
    APPROVALS_LIST = "approvals.list"
    APPROVALS_APPROVE = "approvals.approve"
    APPROVALS_DENY = "approvals.deny"
    LEARN_START = "learn.start"
    LEARN_STOP = "learn.stop"
    LEARN_STATUS = "learn.status"
    SHADOW_START = "policy.shadow.start"
    SHADOW_STOP = "policy.shadow.stop"
    SHADOW_STATUS = "policy.shadow.status"


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a control connection, as the kernel names it."""

    pid: int
    uid: int
    gid: int


# A served method: called with `peer=Peer` and the request's params as keywords; its result
# (or awaited result) is the JSON answer.
Method = Callable[..., Awaitable[Any] | Any]


class ControlError(RuntimeError):
    """An answer the daemon gave as an error, or no daemon to answer."""


def peer_credentials(sock: socket.socket) -> Peer:
    """The process at the other end, from the kernel (SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Peer(pid, uid, gid)


def _in_group(uid: int, gid: int, group: str | None) -> bool:
    if group is None:
        return False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == entry.gr_gid:
        return True
    try:
        return pwd.getpwuid(uid).pw_name in entry.gr_mem
    except KeyError:
        return False


class ControlServer:
    """Serves `methods` on the Unix socket at `path` to root and members of `admin_group`."""

    def __init__(self, path: Path, methods: Mapping[ControlMethod, Method], admin_group: str | None = None) -> None:
        self.path = path
        self.methods = methods
        self.admin_group = admin_group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)
        if self.admin_group:
            try:
                os.chown(self.path, 0, grp.getgrnam(self.admin_group).gr_gid)
            except KeyError:
                log.warning("admin group %r does not exist; only root can use the control socket", self.admin_group)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        if self.path.exists():
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_credentials(writer.get_extra_info("socket"))
        allowed = peer.uid == 0 or _in_group(peer.uid, peer.gid, self.admin_group)
        try:
            while line := await reader.readline():
                answer = await self._answer(line, peer) if allowed else {
                    "error": f"permission denied: uid {peer.uid} is not root or in the admin group"}
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            request = json.loads(line)
            method = self.methods[ControlMethod(request["method"])]
        except (ValueError, KeyError, TypeError):
            return {"error": "bad request: expected {\"method\": NAME, \"params\": {...}} with a known method"}
        try:
            result = method(peer=peer, **request.get("params", {}))
            if asyncio.iscoroutine(result):
                result = await result
            return {"result": result}
        except TypeError as exc:
            return {"error": f"bad parameters for {request['method']}: {exc}"}
        except Exception as exc:  # the answer names the problem; the daemon keeps serving
            log.info("control %s failed: %s", request["method"], exc)
            return {"error": str(exc)}


class ControlClient:
    """Calls the daemon's control socket at `path`, one connection per call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: ControlMethod, **params: Any) -> Any:
        """The daemon's JSON answer to `method` with `params`; ControlError when it answered
        with an error, or when no daemon answers."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(self.path))
                sock.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"the interceptor daemon is not running (no control socket at {self.path}); "
                               "start it with `interceptor run` or `systemctl start interceptor`") from exc
        except PermissionError as exc:
            raise ControlError(f"permission denied on {self.path}: run as root or a member of the admin group") \
                from exc
        if not data:
            raise ControlError("the daemon closed the control connection without answering")
        answer = json.loads(data)
        if "error" in answer:
            raise ControlError(answer["error"])
        return answer["result"]
