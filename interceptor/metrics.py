"""Prometheus metrics on prometheus_client: the daemon's counters in a private registry, the
present state read at each scrape, and `/metrics` served on `metrics_listen`.

Counters are bumped where things happen (the enforcer's callbacks, identity changes, the BPF
ring-buffer thread; prometheus_client's counters are thread-safe). Gauges are read from the
daemon at scrape time, so a scrape always shows the present state, never a stale copy. The
server is the standard library's threaded WSGI server with prometheus_client's exposition app
behind a router: anything but `/metrics` is 404, and a scrape whose state cannot be read is a
500 naming why, never a page of zeros.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Info, disable_created_metrics, generate_latest, make_wsgi_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from interceptor.decision import Decision

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
COLLECT_TIMEOUT_S = 5.0  # a scrape waits this long for the daemon's present state
READ_TIMEOUT_S = 5.0  # a client that sends nothing must not hold a connection (and a thread) forever

# The `_created` series would add a timestamp family beside every counter in the text format;
# no dashboard reads them. This is process-wide: the daemon is the only exporter in its process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated


@dataclass(frozen=True, slots=True)
class Gauges:
    """The daemon's present state, read at scrape time."""

    sessions: int
    approvals_pending: int
    audit: Mapping[str, Any] = field(default_factory=dict)  # ChainedSink.stats()


class CollectFailed(RuntimeError):
    """The daemon's present state could not be read for a scrape; the message says why."""


class Metrics:
    """What the daemon counts. Every method is cheap and thread-safe; none does I/O."""

    def __init__(self, version: str = "") -> None:
        self.version = version
        self.registry = CollectorRegistry()
        Info("interceptor_build", "The running daemon's version.", registry=self.registry).info({"version": version})
        self._connections = Counter(
            "interceptor_connections", "Diverted connections judged by the enforcer, by agent, resource and decision.",
            ("agent", "resource", "decision"), registry=self.registry)
        self._decisions = Counter(
            "interceptor_decisions",
            "Policy decisions on operations of open flows, by verdict (approve: held for a human).",
            ("verdict",), registry=self.registry)
        self._masked = Counter("interceptor_masked_statements", "Operations allowed with their results masked.",
                               registry=self.registry)
        self._identity_changes = Counter(
            "interceptor_identity_changes",
            "Agent identities obtained, refreshed to a new subject, lost or expired, by agent and new state.",
            ("agent", "state"), registry=self.registry)

    def connection(self, agent: str | None, resource: str | None, decision: str) -> None:
        """A diverted connection judged: `allow` (handed to its handler) or `deny`."""
        self._connections.labels(agent or "", resource or "", decision).inc()

    def decision(self, decision: Decision) -> None:
        """A policy decision on an operation of an open flow."""
        self._decisions.labels(decision.verdict.value).inc()
        if decision.masks:
            self._masked.inc()

    def identity_change(self, agent: str, state: str) -> None:
        """An agent's identity changed to `state` (valid, expired, ...)."""
        self._identity_changes.labels(agent, state).inc()

    def with_state(self, read: Callable[[], Gauges]) -> CollectorRegistry:
        """A registry of the counters and the present state `read` returns at each collection."""
        registry = CollectorRegistry()
        registry.register(self.registry)
        registry.register(PresentState(read))
        return registry

    def render(self, gauges: Gauges) -> str:
        """The text exposition format (0.0.4) of the counters and these gauges."""
        return generate_latest(self.with_state(lambda: gauges)).decode()


class PresentState:
    """A prometheus_client collector of the gauges `read` returns; `read` raises CollectFailed
    when the daemon's state cannot be read, which fails the whole scrape."""

    def __init__(self, read: Callable[[], Gauges]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return present_state(self.read())


def present_state(gauges: Gauges) -> Iterable[Metric]:
    """The families read at scrape time: sessions, pending approvals, the audit store's state."""
    audit = gauges.audit
    return [
        GaugeMetricFamily("interceptor_sessions", "Open diverted connections.", value=gauges.sessions),
        GaugeMetricFamily("interceptor_approvals_pending", "Operations waiting for a human's approval.",
                          value=gauges.approvals_pending),
        GaugeMetricFamily("interceptor_audit_queue_depth", "Audit records queued and not yet durable.",
                          value=audit.get("queue_depth", 0)),
        GaugeMetricFamily("interceptor_audit_write_latency_ms", "Duration of the last audit group commit.",
                          value=audit.get("last_write_latency_ms", 0.0)),
        CounterMetricFamily("interceptor_audit_written", "Audit records made durable.", value=audit.get("written", 0)),
        CounterMetricFamily("interceptor_audit_failed", "Audit records in commits that failed (retried or refused).",
                            value=audit.get("failed", 0)),
        GaugeMetricFamily("interceptor_audit_failing", "1 while the audit store fails (operations are denied).",
                          value=1 if audit.get("failing") else 0),
    ]


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` from the `metrics_listen` setting; ValueError names the problem."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"metrics_listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    return host, int(port)


# -- the server (I/O) -----------------------------------------------------------------------------


class _Server(ThreadingWSGIServer):
    """prometheus_client's threaded WSGI server, bound to IPv6 when the host is an IPv6 address."""

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that went away or sent nothing in time: a debug line, not a traceback on stderr."""
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr; a read timeout on the client's socket."""

    timeout = READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Log nothing."""


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class MetricsServer:
    """Serves `/metrics` from a thread; `collect` reads the daemon's gauges on the daemon's loop
    at each scrape. ValueError for a malformed `listen`; `start` raises OSError if it cannot bind."""

    def __init__(self, listen: str, metrics: Metrics, collect: Callable[[], Awaitable[Gauges]]) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.collect = collect
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        app = self._router(asyncio.get_running_loop())
        self._server = make_server(self.host, self.port, app, _Server, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) the server listens on; empty before start."""
        return [self._server.socket.getsockname()[:2]] if self._server else []

    async def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            await asyncio.to_thread(self._thread.join)

    def _router(self, loop: asyncio.AbstractEventLoop) -> WSGIApplication:
        exposition = make_wsgi_app(self.metrics.with_state(lambda: self._read(loop)))

        def route(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                return _plain(start_response, "404 Not Found", "only /metrics is served here\n")
            try:
                response: Iterable[bytes] = exposition(environ, start_response)
            except CollectFailed as exc:
                log.warning("metrics scrape failed: %s", exc)
                return _plain(start_response, "500 Internal Server Error", f"collecting metrics failed: {exc}\n")
            return response

        return route

    def _read(self, loop: asyncio.AbstractEventLoop) -> Gauges:
        """The daemon's gauges, from the server's thread; CollectFailed on error or timeout."""
        future = asyncio.run_coroutine_threadsafe(self._gauges(), loop)
        try:
            return future.result(COLLECT_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise CollectFailed(f"no answer within {COLLECT_TIMEOUT_S} s") from None
        except Exception as exc:
            raise CollectFailed(str(exc)) from exc

    async def _gauges(self) -> Gauges:
        return await self.collect()
