"""Prometheus metrics: a small registry the daemon owns, the text exposition format (0.0.4)
rendered by hand, and a tiny asyncio HTTP server for `/metrics` on `metrics_listen`.

Counters are bumped where things happen (the enforcer's callbacks, identity changes, the BPF
ring-buffer thread, hence the lock); gauges are read from the daemon at scrape time, so a
scrape always shows the present state, never a stale copy. No dependency: the format is a
few lines of text and the server answers one GET per connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from interceptor.decision import Decision

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192  # a scraper's request head is a few hundred bytes
READ_TIMEOUT_S = 5.0  # a client that sends nothing must not hold a connection forever

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Labels
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name, `counter` or `gauge`, what it means, and its samples."""

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...] = ()


@dataclass(frozen=True, slots=True)
class Gauges:
    """The daemon's present state, read at scrape time."""

    sessions: int
    approvals_pending: int
    audit: Mapping[str, Any] = field(default_factory=dict)  # ChainedSink.stats()


# -- exposition format (sans-IO) ----------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def exposition(families: Iterable[Family]) -> str:
    """The Prometheus text format: HELP and TYPE once per family, then one line per sample."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            lines.append(f"{family.name}{{{labels}}} {_number(sample.value)}" if labels
                         else f"{family.name} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


# -- the registry ---------------------------------------------------------------------------------


class Metrics:
    """What the daemon counts. Every method is cheap and thread-safe; none does I/O."""

    def __init__(self, version: str = "") -> None:
        self.version = version
        self._lock = threading.Lock()
        self._connections: Counter[Labels] = Counter()
        self._verdicts: Counter[str] = Counter()
        self._masked = 0
        self._identity_changes: Counter[Labels] = Counter()

    def connection(self, agent: str | None, resource: str | None, decision: str) -> None:
        """A diverted connection judged: `allow` (handed to its handler) or `deny`."""
        key = (("agent", agent or ""), ("resource", resource or ""), ("decision", decision))
        with self._lock:
            self._connections[key] += 1

    def decision(self, decision: Decision) -> None:
        """A policy decision on an operation of an open flow."""
        with self._lock:
            self._verdicts[decision.verdict.value] += 1
            if decision.masks:
                self._masked += 1

    def identity_change(self, agent: str, state: str) -> None:
        with self._lock:
            self._identity_changes[(("agent", agent), ("state", state))] += 1

    def families(self, gauges: Gauges) -> list[Family]:
        with self._lock:
            connections = sorted(self._connections.items())
            verdicts = sorted(self._verdicts.items())
            masked = self._masked
            identity = sorted(self._identity_changes.items())
        audit = gauges.audit
        return [
            Family("interceptor_build_info", "gauge", "The running daemon's version.",
                   (Sample((("version", self.version),), 1),)),
            Family("interceptor_connections_total", "counter",
                   "Diverted connections judged by the enforcer, by agent, resource and decision.",
                   tuple(Sample(k, v) for k, v in connections)),
            Family("interceptor_decisions_total", "counter",
                   "Policy decisions on operations of open flows, by verdict (approve: held for a human).",
                   tuple(Sample((("verdict", k),), v) for k, v in verdicts)),
            Family("interceptor_masked_statements_total", "counter",
                   "Operations allowed with their results masked.", (Sample((), masked),)),
            Family("interceptor_identity_changes_total", "counter",
                   "Agent identities obtained, refreshed to a new subject, lost or expired, by agent and new state.",
                   tuple(Sample(k, v) for k, v in identity)),
            Family("interceptor_sessions", "gauge", "Open diverted connections.", (Sample((), gauges.sessions),)),
            Family("interceptor_approvals_pending", "gauge", "Operations waiting for a human's approval.",
                   (Sample((), gauges.approvals_pending),)),
            Family("interceptor_audit_queue_depth", "gauge", "Audit records queued and not yet durable.",
                   (Sample((), audit.get("queue_depth", 0)),)),
            Family("interceptor_audit_write_latency_ms", "gauge", "Duration of the last audit group commit.",
                   (Sample((), audit.get("last_write_latency_ms", 0.0)),)),
            Family("interceptor_audit_written_total", "counter", "Audit records made durable.",
                   (Sample((), audit.get("written", 0)),)),
            Family("interceptor_audit_failed_total", "counter", "Audit records in commits that failed (retried or refused).",
                   (Sample((), audit.get("failed", 0)),)),
            Family("interceptor_audit_failing", "gauge", "1 while the audit store fails (operations are denied).",
                   (Sample((), 1 if audit.get("failing") else 0),)),
        ]

    def render(self, gauges: Gauges) -> str:
        return exposition(self.families(gauges))


# -- HTTP (sans-IO parsing and framing) -----------------------------------------------------------


class BadRequest(ValueError):
    pass


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def parse_request_head(head: bytes) -> tuple[str, str]:
    """(method, path without query) from an HTTP/1.x request head; BadRequest names the problem."""
    line = head.split(b"\r\n", 1)[0]
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed request line {line[:80]!r}") from exc
    if not version.startswith("HTTP/1."):
        raise BadRequest(f"unsupported protocol {version[:20]!r}")
    return method, target.split("?", 1)[0]


def http_response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                  head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


def route(method: str, path: str) -> bytes | None:
    """The error response for anything but a scrape; None for a scrape (GET or HEAD /metrics)."""
    if path != "/metrics":
        return http_response(404, b"only /metrics is served here\n")
    if method not in ("GET", "HEAD"):
        return http_response(405, f"method {method} not allowed on /metrics\n".encode())
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` from the `metrics_listen` setting; ValueError names the problem."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"metrics_listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    return host, int(port)


# -- the server (I/O) -----------------------------------------------------------------------------


class MetricsServer:
    """Serves `/metrics`; `collect` reads the daemon's gauges at each scrape."""

    def __init__(self, listen: str, metrics: Metrics, collect: Callable[[], Awaitable[Gauges]]) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.collect = collect
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=MAX_HEAD)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._server.sockets] if self._server else []

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self._answer(reader))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the scraper went away
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path = parse_request_head(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            return http_response(400, f"incomplete or oversized request: {type(exc).__name__}\n".encode())
        except BadRequest as exc:
            return http_response(400, f"{exc}\n".encode())
        refusal = route(method, path)
        if refusal is not None:
            return refusal
        try:
            gauges = await self.collect()
        except Exception as exc:
            log.warning("metrics scrape failed: %s", exc)
            return http_response(500, f"collecting metrics failed: {exc}\n".encode())
        return http_response(200, self.metrics.render(gauges).encode(), CONTENT_TYPE, head_only=method == "HEAD")
