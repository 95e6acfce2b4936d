"""The control socket's wire (one JSON line each way) and its method table, without a daemon."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from interceptor.approvals.control import ApprovalControl
from interceptor.control import ControlClient, ControlError, ControlMethod, ControlServer, Peer
from interceptor.control_api import CatalogControl, ControlApi
from interceptor.handlers.postgres.catalog import CatalogStore
from interceptor.modes import ModeControl

ROOT = Peer(1, 0, 0)


def test_every_control_method_is_served_and_nothing_else() -> None:
    catalogs = CatalogControl(CatalogStore(), dict)
    approvals = ApprovalControl(None, None)  # type: ignore[arg-type]  # the table only names bound methods
    modes = ModeControl(None)  # type: ignore[arg-type]  # likewise
    api = ControlApi(None, None, None, None, catalogs, approvals, modes, 0.0)  # type: ignore[arg-type]  # likewise
    assert sorted(api.methods()) == sorted(ControlMethod)


def answer(methods: dict[ControlMethod, Any], line: bytes) -> dict[str, Any]:
    return asyncio.run(ControlServer(Path("unused"), methods)._answer(line, ROOT))


def test_the_server_calls_a_method_by_its_wire_name_with_the_peer() -> None:
    async def reload(peer: Peer, path: str | None = None) -> dict[str, Any]:
        return {"path": path, "uid": peer.uid}

    request = json.dumps({"method": "policy.reload", "params": {"path": "/p.yaml"}}).encode()
    assert answer({ControlMethod.POLICY_RELOAD: reload}, request) == {"result": {"path": "/p.yaml", "uid": 0}}


@pytest.mark.parametrize("line, error", [
    (b'{"method": "policy.drop", "params": {}}', "bad request"),
    (b'{"method": "status"}', "bad request"),  # a method this server does not serve
    (b'not json', "bad request"),
    (b'{"method": "sessions", "params": {"all": true}}', "bad parameters for sessions"),
    (b'{"method": "sessions"}', "sessions failed"),
])
def test_the_server_answers_a_bad_request_with_an_error(line: bytes, error: str) -> None:
    def sessions(peer: Peer) -> list[Any]:
        raise RuntimeError("sessions failed")

    assert error in answer({ControlMethod.SESSIONS: sessions}, line)["error"]


def serve_once(path: Path, reply: bytes) -> list[bytes]:
    """A one-shot server at `path` that records the request line and sends `reply`."""
    received: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            received.append(conn.makefile("rb").readline())
            conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return received


def test_the_client_sends_the_method_name_and_params_as_one_json_line(tmp_path: Path) -> None:
    received = serve_once(tmp_path / "control.sock", b'{"result": {"dropped": 2}}\n')
    result = ControlClient(tmp_path / "control.sock").call(ControlMethod.CATALOG_REFRESH, resource="db", database=None)
    assert result == {"dropped": 2}
    assert json.loads(received[0]) == {"method": "catalog.refresh", "params": {"resource": "db", "database": None}}


def test_the_client_raises_the_daemons_error(tmp_path: Path) -> None:
    serve_once(tmp_path / "control.sock", b'{"error": "unknown resource \'nope\'"}\n')
    with pytest.raises(ControlError, match="unknown resource 'nope'"):
        ControlClient(tmp_path / "control.sock").call(ControlMethod.CATALOG_SHOW, resource="nope")
