"""Webhook notifications to a real HTTP server on loopback: payloads, retries, never blocking."""

import asyncio
import json

from test_approvals_support import FLOW, Clock, ListSink, approve_decision, sql_request

from interceptor.approvals import ApprovalBroker, Approver, SqliteStore
from interceptor.approvals.webhook import WebhookNotifier

DBA = Approver("okta", "bob@example.com", frozenset({"dba"}))


class Receiver:
    """A tiny HTTP/1.1 server: answers each POST with the next status, records the JSON bodies."""

    def __init__(self, statuses=(), hang: asyncio.Event | None = None):
        self.statuses = list(statuses)
        self.hang = hang
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.received = asyncio.Condition()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks/approvals?team=dba"

    async def serve(self, reader, writer):
        request_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        if self.hang is not None:
            await self.hang.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        async with self.received:
            self.paths.append(request_line.split()[1].decode())
            self.bodies.append(json.loads(body))
            self.received.notify_all()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def until(self, count: int) -> None:
        async with self.received:
            await asyncio.wait_for(self.received.wait_for(lambda: len(self.bodies) >= count), 30)


def test_opened_and_closed_notifications_with_retry(tmp_path):
    async def main():
        receiver = Receiver(statuses=[503, 200])
        url = await receiver.start()
        store = await SqliteStore.open(str(tmp_path / "a.db"))
        broker = ApprovalBroker(store, ListSink(), webhook_url=url, clock=Clock())
        broker.notifier._backoff = 0.01
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        await broker.approve(pending.request_id, DBA, for_seconds=600)
        await receiver.until(3)
        await broker.close()
        await store.close()
        receiver.server.close()
        return pending, receiver

    pending, receiver = asyncio.run(main())
    assert receiver.paths == ["/hooks/approvals?team=dba"] * 3
    first_try, opened, closed = receiver.bodies
    assert first_try == opened  # the 503 was retried with the same payload
    assert opened["event"] == "approval.opened" and closed["event"] == "approval.closed"
    assert opened["request"]["request_id"] == closed["request"]["request_id"] == pending.request_id
    assert opened["request"]["state"] == "pending" and closed["request"]["state"] == "approved"
    assert closed["request"]["approver"] == "bob@example.com"
    assert closed["request"]["granted_until"] == closed["request"]["decided_at"] + 600
    assert set(opened["request"]) >= {"agent", "requester", "resource", "operation", "rule", "created_at", "expires_at"}


def test_a_stuck_receiver_never_holds_up_requests_or_approvers(tmp_path):
    async def main():
        release = asyncio.Event()
        receiver = Receiver(hang=release)
        url = await receiver.start()
        store = await SqliteStore.open(str(tmp_path / "a.db"))
        broker = ApprovalBroker(store, ListSink(), webhook_url=url, clock=Clock())
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        await broker.approve(pending.request_id, DBA)
        outcome = await pending.wait()
        delivered_before_release = len(receiver.bodies)
        release.set()
        await receiver.until(2)
        await broker.close()
        await store.close()
        receiver.server.close()
        return outcome, delivered_before_release, receiver

    outcome, delivered_before_release, receiver = asyncio.run(main())
    assert outcome.approved and delivered_before_release == 0
    assert [b["event"] for b in receiver.bodies] == ["approval.opened", "approval.closed"]


def test_full_queue_drops_and_bad_urls_are_refused():
    async def main():
        notifier = WebhookNotifier("http://127.0.0.1:9/", queue_size=1, attempts=1)
        notifier.notify({"event": "approval.opened"})
        notifier.notify({"event": "approval.closed"})
        queued = notifier._queue.qsize()
        await notifier.close(drain_seconds=30)
        return queued

    assert asyncio.run(main()) == 1
    for url in ("ftp://example.com/x", "http:///nohost", "hooks.example.com"):
        try:
            WebhookNotifier(url)
        except ValueError as exc:
            assert "must be http:// or https://" in str(exc)
        else:
            raise AssertionError(f"{url} was accepted")
