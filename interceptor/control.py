"""The control API: JSON lines over a Unix socket, one request and one answer per line.

Access is decided by the peer's kernel credentials (SO_PEERCRED), not by anything the
client says: root, or a member of the configured admin group.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

Method = Callable[..., Awaitable[Any] | Any]
MAX_REQUEST = 1 << 20


class ControlError(RuntimeError):
    """An answer the daemon gave as an error, or no daemon to answer."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def _in_group(uid: int, gid: int, group: str | None) -> bool:
    if group is None:
        return False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == entry.gr_gid:
        return True
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name in entry.gr_mem
    except KeyError:
        return False


class ControlServer:
    def __init__(self, path: Path, methods: dict[str, Method], admin_group: str | None = None) -> None:
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
        sock = writer.get_extra_info("socket")
        pid, uid, gid = peer_credentials(sock)
        allowed = uid == 0 or _in_group(uid, gid, self.admin_group)
        try:
            while line := await reader.readline():
                answer = await self._answer(line, {"pid": pid, "uid": uid, "gid": gid}) if allowed else {
                    "error": f"permission denied: uid {uid} is not root or in the admin group"}
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes, peer: dict[str, int]) -> dict[str, Any]:
        try:
            request = json.loads(line)
            method = self.methods[request["method"]]
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
    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: str, **params: Any) -> Any:
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
