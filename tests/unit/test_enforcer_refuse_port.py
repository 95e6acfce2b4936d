"""The enforcer's refuse port: only bound (connects refused) unless it is given `refused`
(iptables), then each connection there is reset and audited, even when attribution fails or
too many arrive at once; nothing is written to it."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from typing import Any

from interceptor.audit.event import AuditEvent
from interceptor.enforcer import server
from interceptor.enforcer.server import Enforcer


class Sink:
    capture = False

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def write(self, event: AuditEvent) -> None:
        self.events.append(event)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def connect_and_read(port: int) -> str:
    """What a client sees: the errno name of its failure, or the bytes it was sent."""
    with socket.socket() as sock:
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            return repr(sock.recv(64))
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))


def run(refused: Callable[[socket.socket], AuditEvent] | None,
        clients: Callable[[int], Awaitable[Any]]) -> tuple[Any, list[AuditEvent]]:
    async def main() -> tuple[Any, list[AuditEvent]]:
        sink = Sink()
        enforcer = Enforcer(redirect=None, audit=sink, snapshot=None, identity=None,  # type: ignore[arg-type]  # unused on the refuse port
                            identity_required=None, credentials=None, refused=refused)  # type: ignore[arg-type]  # unused on the refuse port
        refuse_port = free_port()
        await enforcer.start(free_port(), refuse_port)
        try:
            seen = await clients(refuse_port)
            for _ in range(100):
                await asyncio.sleep(0.01)
            return seen, sink.events
        finally:
            await enforcer.stop()
    return asyncio.run(main())


CLIENTS = ThreadPoolExecutor(max_workers=32)  # apart from the default executor the enforcer attributes in


def one_client(port: int) -> Awaitable[str]:
    return asyncio.get_running_loop().run_in_executor(CLIENTS, connect_and_read, port)


def test_without_refused_the_port_is_only_bound() -> None:
    seen, events = run(None, one_client)
    assert seen == "ECONNREFUSED" and events == []


def test_each_connection_is_reset_and_audited_with_the_record_given() -> None:
    record = AuditEvent(kind="connect_denied", agent="bot", decision="deny", rule="kernel", reason="policy")
    seen, events = run(lambda conn: record, one_client)
    assert seen == "ECONNRESET" and events == [record]


def test_a_failed_attribution_still_resets_and_audits() -> None:
    def fails(conn: socket.socket) -> AuditEvent:
        raise OSError("socket gone")

    seen, events = run(fails, one_client)
    assert seen == "ECONNRESET"
    assert [(e.kind, e.rule, e.decision) for e in events] == [("connect_denied", "attribution", "deny")]
    assert events[0].reason is not None and events[0].reason.endswith("not attributed: OSError: socket gone")


def test_a_flood_is_reset_and_audited_without_waiting_for_attribution() -> None:
    release = threading.Event()
    record = AuditEvent(kind="connect_denied", decision="deny", rule="kernel", reason="policy")

    def slow(conn: socket.socket) -> AuditEvent:
        release.wait(10)
        return record

    async def flood(port: int) -> list[str]:
        waiting = [one_client(port) for _ in range(server.REFUSALS_ATTRIBUTED_AT_ONCE)]
        await asyncio.sleep(0.5)  # all accepted and being attributed
        extra = await asyncio.gather(*(one_client(port) for _ in range(3)))
        release.set()
        return [*extra, *await asyncio.gather(*waiting)]

    seen, events = run(slow, flood)
    assert seen == ["ECONNRESET"] * (server.REFUSALS_ATTRIBUTED_AT_ONCE + 3)
    unattributed = [e for e in events if e.rule == "attribution"]
    assert len(unattributed) == 3 and all("others are being attributed" in (e.reason or "") for e in unattributed)
    assert events.count(record) == server.REFUSALS_ATTRIBUTED_AT_ONCE
