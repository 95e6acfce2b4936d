"""Webhook notifications: JSON POSTs from a background task, retried with backoff.

`notify()` only enqueues (bounded; when full the notification is dropped and logged)
so a slow or dead receiver can never hold up a held operation or an approver. The
audit log, not the webhook, is the record of truth. Payloads: see README.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class WebhookNotifier:
    def __init__(
        self, url: str, *, queue_size: int = 1000, attempts: int = 5, backoff: float = 1.0, timeout: float = 10.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http:// or https:// with a host, not {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._worker: asyncio.Task[None] | None = None

    def notify(self, payload: dict[str, Any]) -> None:
        """Queue a payload for delivery; never blocks, never raises."""
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.error("webhook queue full (%d): dropped %s notification", self._queue.maxsize, payload.get("event"))
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._deliver_all(), name="approvals-webhook")

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Give queued notifications a moment to go out, then stop."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        except TimeoutError:
            log.warning("webhook: %d notification(s) not delivered at shutdown", self._queue.qsize())
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)

    async def _deliver_all(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._deliver(payload)
            finally:
                self._queue.task_done()

    async def _deliver(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        for attempt in range(1, self._attempts + 1):
            try:
                status = await asyncio.wait_for(self._post(body), self._timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    return
                problem = f"HTTP {status}"
            log.warning("webhook %s attempt %d/%d failed: %s", self.url, attempt, self._attempts, problem)
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        log.error("webhook %s: gave up on %s notification for %s", self.url, payload.get("event"), payload.get("request", {}).get("request_id"))

    async def _post(self, body: bytes) -> int:
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._tls)
        try:
            head = (
                f"POST {self._target} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "User-Agent: interceptor-approvals\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()

