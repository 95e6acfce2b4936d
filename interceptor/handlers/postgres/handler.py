"""asyncio glue: sockets, credentials, approvals, audit and catalog reads around the
sans-IO codec, login and ProxySession. Sockets are Pipes (interceptor.handlers.pipe):
callbacks, not streams, on the path every statement takes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from interceptor.approvals.broker import DISCONNECTED, PendingRequest
from interceptor.audit.event import AuditUnavailable
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.pipe import Pipe
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.auth import LoginError, UpstreamLogin
from interceptor.handlers.postgres.codec import ProtocolViolation
from interceptor.policy.encodings import EncodingRefused, python_codec
from interceptor.handlers.postgres.session import (
    CLIENT,
    CLIENT_TERMINATED,
    Audit,
    Close,
    Command,
    Hold,
    ProxySession,
    RefreshCatalog,
    Send,
)
from interceptor.handlers.postgres.startup import Refused, Startup, accept_startup, database_allowed
from interceptor.policy.catalog import Catalog, CatalogUnavailable
from interceptor.policy.settings import SessionSettings
from interceptor.handlers.postgres.masks import mask_factory
from interceptor.operations import SqlQuery

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
HOLD_BACK_BYTES = 64 * 1024  # strict audit: a result up to this size waits whole for its record
BACKLOG_BYTES = 256 * 1024  # read on during a wait up to this much, then pause that side
STARTUP_SECONDS = 60.0
REREAD_SECONDS = 2.0  # a name the catalog does not hold has it read again at most this often
CANCELLED = "the client cancelled the statement"  # why a held statement's request is withdrawn on a cancel


class Upstream:
    """A logged-in connection to the server with the resource's credentials."""

    def __init__(self, pipe: Pipe, login: UpstreamLogin) -> None:
        self.pipe = pipe
        self.login = login

    @classmethod
    async def connect(cls, host: str, port: int, params: dict[str, str], password: str,
                      tls: ssl.SSLContext | None, server_name: str | None) -> Upstream:
        pipe = await Pipe.connect(host, port)
        try:
            if tls is not None:
                pipe.write(codec.special_request(codec.SSL_REQUEST))
                if await pipe.read_exactly(1) != b"S":
                    raise LoginError("upstream refused TLS, which this resource requires")
                await pipe.start_tls(tls, server_name or host)
            login = UpstreamLogin(params["user"], password)
            pipe.write(codec.startup_message(params))
            while not login.done:
                data = await pipe.read(CHUNK)
                if not data:
                    raise LoginError("upstream closed the connection during login")
                pipe.writelines(login.receive(data))
        except BaseException:
            pipe.abort()
            raise
        return cls(pipe, login)

    async def simple_query(self, sql: str) -> list[list[str | None]]:
        """The rows of one simple Query, every field as text (None for NULL); LoginError
        when the server answers with an error. Only for the enforcer's own connections."""
        self.pipe.write(codec.query(sql))
        rows: list[list[str | None]] = []
        error = None
        while True:
            kind, length = codec.HEADER.unpack(await self.pipe.read_exactly(5))
            body = await self.pipe.read_exactly(codec.frame_length(length, codec.MAX_MESSAGE, "upstream") - 4)
            if kind == b"D":
                rows.append(_text_fields(body))
            elif kind == b"E":
                error = codec.read_fields(body).get("M", "error")
            elif kind == b"Z":
                break
        if error is not None:
            raise LoginError(f"query failed: {error}")
        return rows

    def close(self) -> None:
        self.pipe.abort()


class CatalogSource:
    """One session's catalog: taken from the daemon's cache (or read, over a connection of
    the enforcer's own with the resource's credentials) at login, read again after DDL the
    session let through, and following the cache when it holds a newer one. A catalog that
    cannot be read is a CatalogUnavailable: statements that need it are denied, the session
    goes on. With no cache configured (None), statements are judged without a catalog."""

    def __init__(self, services: Services, resource: str, database: str, host: str, port: int,
                 credentials: dict[str, str], tls: ssl.SSLContext | None, server_name: str | None) -> None:
        self.store = services.catalogs
        self.resource = resource
        self.database = database
        self._params = {"user": credentials["user"], "database": database, "client_encoding": "UTF8"}
        self._dial = (host, port, credentials["password"], tls, server_name)
        self._catalog: Catalog | CatalogUnavailable | None = None
        self._loaded_at = 0.0
        self._reading: asyncio.Task[None] | None = None  # a read after the cache's ttl ran out

    async def _connect(self) -> Upstream:
        host, port, password, tls, server_name = self._dial
        return await Upstream.connect(host, port, self._params, password, tls, server_name)

    async def load(self) -> None:
        if self.store is None:
            return
        self._loaded_at = self.store.clock()
        try:
            self._catalog = await self.store.get(self.resource, self.database, self._connect)
        except CatalogUnavailable as exc:
            self._catalog = exc

    async def refresh(self, after_ddl: bool) -> None:
        """Read again: always after DDL; for a missing name only if the catalog in hand is
        older than REREAD_SECONDS (an agent naming what does not exist must not make the
        enforcer read the catalog for every statement)."""
        if self.store is None:
            return
        age = self.store.age(self.resource, self.database)
        if not after_ddl and age is not None and age < REREAD_SECONDS:
            return
        self.store.invalidate(self.resource, self.database)
        await self.load()

    def current(self) -> Catalog | CatalogUnavailable | None:
        """The newest catalog known now (never waits); past the cache's ttl, or when the
        cache was emptied (`interceptor catalog refresh`), a read starts in the background and
        statements use it once it is in."""
        if self.store is None:
            return None
        cached = self.store.peek(self.resource, self.database)
        if cached is not None:
            self._catalog = cached
        if self._reading is None and (cached is None or self.store.clock() - self._loaded_at > self.store.ttl):
            self._reading = asyncio.get_running_loop().create_task(self._reload())
        return self._catalog

    async def _reload(self) -> None:
        try:
            await self.load()
        finally:
            self._reading = None

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()


def _parameter_statuses(frames: list[bytes]) -> dict[str, str]:
    """name -> value of the ParameterStatus messages among login frames."""
    found = {}
    for frame in frames:
        if frame[:1] == b"S":
            name, value = codec.read_parameter_status(frame[5:])
            found[name.lower()] = value
    return found


def _text_fields(body: bytes) -> list[str | None]:
    reader = codec.Reader(body, "DataRow")
    fields: list[str | None] = []
    for _ in range(reader.int16()):
        length = reader.int32()
        start = reader.pos
        reader.skip(max(length, 0))
        fields.append(None if length < 0 else body[start:reader.pos].decode())
    return fields


@dataclass(frozen=True, slots=True)
class _CancelTarget:
    """A live session by the cancel key its client was given: its agent, its link (to end a
    held statement) and where to relay any other cancel (the real backend's key, when the
    server gave one)."""

    agent: str
    link: _Link
    host: str
    port: int
    backend: tuple[int, bytes] | None


def resource_option(resource: Any, name: str) -> Any:
    """A protocol option of the resource (`options:` in the policy), None when absent."""
    return (getattr(resource, "options", None) or {}).get(name)


def upstream_tls(resource: Any) -> tuple[ssl.SSLContext | None, str | None]:
    """TLS to the server when the resource's options ask: `tls: {ca: path, server_name: ...}`
    verifies against that CA, `tls: true` against the system store; never unverified."""
    tls = resource_option(resource, "tls")
    if not tls:
        return None, None
    options = tls if isinstance(tls, Mapping) else {}
    context = ssl.create_default_context(cafile=options.get("ca"))
    return context, options.get("server_name")


class PostgresHandler:
    protocol = "postgres"

    def __init__(self) -> None:
        self._cancel_keys: dict[tuple[int, bytes], _CancelTarget] = {}

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        client.setblocking(False)
        pipe = await Pipe.accept(client)
        try:
            await self._serve(flow, pipe, services)
        except (ConnectionError, OSError):
            pass
        finally:
            pipe.close()

    async def _serve(self, flow: FlowContext, client: Pipe, services: Services) -> None:
        started = time.monotonic()
        try:
            first = await asyncio.wait_for(self._startup(flow, client, services), STARTUP_SECONDS)
        except (ProtocolViolation, Refused) as exc:
            code = exc.code if isinstance(exc, Refused) else "08P01"
            client.write(codec.error_response(code, str(exc), severity="FATAL"))
            await client.flush()
            await _audit_connection(services, flow, "deny", "startup", str(exc), {})
            return
        except TimeoutError:
            await _audit_connection(services, flow, "deny", "startup", "no startup packet in time", {})
            return
        if first is None:
            return
        startup, credentials, pipelined = first
        try:
            await self._session(flow, client, services, startup, credentials, pipelined, started)
        except Refused as exc:
            client.write(codec.error_response(exc.code, f"interceptor: {exc}", severity="FATAL"))
            await client.flush()
            await _audit_connection(services, flow, "deny", "startup", str(exc), {"database": startup.database})
        except (LoginError, OSError, ProtocolViolation) as exc:
            client.write(codec.error_response("08006", f"interceptor: {exc}", severity="FATAL"))
            await client.flush()
            await _audit_connection(services, flow, "error", "upstream", str(exc), {"database": startup.database})

    async def _startup(self, flow: FlowContext, client: Pipe,
                       services: Services) -> tuple[Startup, dict[str, str], bytes] | None:
        """Answer SSL/GSSENC requests, relay a cancel, or accept a StartupMessage (and
        return what the client already sent after it)."""
        buffer = b""
        while True:
            split = codec.split_startup(buffer)
            if split is None:
                data = await client.read(codec.MAX_STARTUP)
                if not data:
                    return None
                buffer += data
                continue
            body, buffer = split
            packet = codec.parse_startup(body)
            if isinstance(packet, codec.SpecialRequest):
                if buffer:
                    raise ProtocolViolation("data sent after an SSL/GSSENC request before its answer")
                client.write(b"N")  # TLS towards the agent is not offered; loopback only
                continue
            if isinstance(packet, codec.CancelPacket):
                await self._cancel(flow, packet, services)
                return None
            startup = accept_startup(packet)
            try:
                credentials = await services.credentials()
            except Exception as exc:  # noqa: BLE001 - any secrets failure refuses the login
                raise Refused("28000", f"credentials for resource {flow.resource!r} are unavailable: {exc}") from None
            patterns = resource_option(services.resource, "databases")
            if not database_allowed(startup.database, tuple(patterns) if patterns else None,
                                    credentials.get("database")):
                raise Refused("42501", f"database {startup.database!r} is not allowed for agent {flow.agent!r} "
                                       f"on resource {flow.resource!r}")
            return startup, credentials, buffer

    async def _session(self, flow: FlowContext, client: Pipe, services: Services, startup: Startup,
                       credentials: dict[str, str], pipelined: bytes, started: float) -> None:
        if "user" not in credentials or "password" not in credentials:
            raise LoginError(f"credentials for resource {flow.resource!r} need 'user' and 'password'")
        host, port = str(flow.original_dst.ip), flow.original_dst.port
        tls, server_name = upstream_tls(services.resource)
        params = {"user": credentials["user"], "database": startup.database, **startup.params}
        upstream = await Upstream.connect(host, port, params, credentials["password"], tls, server_name)
        pid, secret = secrets.randbits(31), secrets.token_bytes(32 if startup.minor >= 2 else 4)
        login = upstream.login
        reported = _parameter_statuses(login.forward)
        server_encoding = reported.get("server_encoding", "UTF8")
        client_encoding = reported.get("client_encoding", server_encoding)
        try:
            python_codec(client_encoding, server_encoding)
        except EncodingRefused as exc:
            upstream.close()
            raise Refused("0A000", f"{exc} (the server's default client_encoding for this role or database)") from None
        if reported.get("standard_conforming_strings", "on").lower() != "on":
            upstream.close()
            raise Refused("0A000", "standard_conforming_strings is off for this role or database: a backslash in a "
                                   "string would end it where the enforcer does not; turn it on")
        catalogs = CatalogSource(services, flow.resource or "", startup.database, host, port, credentials, tls,
                                 server_name)
        await catalogs.load()
        client.writelines([startup.greeting, codec.authentication_ok(), *login.forward,
                           codec.backend_key_data(pid, secret), codec.ready_for_query(login.status or b"I")])
        settings = SessionSettings.start({"search_path": startup.params.get("search_path"),
                                          "client_encoding": client_encoding, "role": None})
        session = ProxySession(
            judge=lambda query: services.decide(services.request(flow, query)),
            database=startup.database, catalog=catalogs.current, epoch=services.epoch, settings=settings,
            server_encoding=server_encoding, mask_factory=mask_factory(), scan_errors=services.scan_errors,
        )
        link = _Link(flow, services, session, client, upstream, catalogs)
        self._cancel_keys[(pid, secret)] = _CancelTarget(flow.agent, link, host, port, login.backend_key)
        error = None
        try:
            await link.run(login.leftover, pipelined)
        except AuditUnavailable as exc:
            error = f"audit unavailable: {exc}"
            client.write(codec.error_response("58000", f"interceptor: {error}; session closed", severity="FATAL"))
            await client.flush()
        finally:
            self._cancel_keys.pop((pid, secret), None)
            link.close()
        if error is None and link.closed_because not in (None, CLIENT_TERMINATED):
            error = link.closed_because  # a protocol violation or a state the enforcer could not follow
        await _audit_connection(services, flow, "allow" if error is None else "error", "session", error,
                                {"database": startup.database, "user": startup.user,
                                 "upstream_user": credentials["user"]},
                                duration_ms=round((time.monotonic() - started) * 1000, 3),
                                statements=link.statements)

    async def _cancel(self, flow: FlowContext, packet: codec.CancelPacket, services: Services) -> None:
        """A CancelRequest, only for a key this agent's session holds: a statement of that
        session held for approval ends (its request withdrawn, the client gets 57014);
        otherwise the cancel is relayed to the real backend. The caller then closes the
        cancel connection, as the server does."""
        target = self._cancel_keys.get((packet.pid, packet.secret))
        allowed = target is not None and target.agent == flow.agent
        ended_hold = False
        if target is not None and allowed:
            ended_hold = await target.link.cancel_hold()
            if not ended_hold and target.backend is not None:
                try:
                    relay = await Pipe.connect(target.host, target.port)
                    relay.write(codec.cancel_request(*target.backend))
                    relay.close()
                except OSError as exc:
                    log.warning("cancel relay to %s:%s failed: %s", target.host, target.port, exc)
        await _audit_connection(services, flow, "allow" if allowed else "deny", "cancel",
                                None if allowed else "no session of this agent holds that cancel key",
                                {"cancel": True}, ended_hold=ended_hold)


UP, DOWN = "up", "down"  # client to server, server to client: the two directions of a link


@dataclass(slots=True)
class _Held:
    """A statement of the session waiting on the approval broker."""

    pending: PendingRequest | None = None  # None while its request is being opened
    cancelled: bool = False  # a CancelRequest came while the request was being opened


class _Link:
    """One proxied session: each chunk a socket delivers goes through the ProxySession in
    the callback that read it, and the commands that come out are carried out at once,
    every write for a peer in one call. Only a command that must wait (a strict audit
    record becoming durable, an approval, a catalog read) defers the rest of its
    direction; what that direction reads meanwhile is kept in order for after the wait
    (and reading pauses once that passes BACKLOG_BYTES), while the other direction goes on.
    A direction also stops reading while the peer it writes to is not taking bytes."""

    def __init__(self, flow: FlowContext, services: Services, session: ProxySession, client: Pipe,
                 upstream: Upstream, catalogs: CatalogSource) -> None:
        self.flow = flow
        self.catalogs = catalogs
        self.services = services
        self.session = session
        self.client = client
        self.upstream = upstream
        self.statements = 0
        self.closed_because: str | None = None  # why the session closed the link, when it did
        self.capture = bool(getattr(services.audit, "capture", False))  # session bytes for pcap export
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits: dict[str, asyncio.Future[None] | None] = {UP: None, DOWN: None}  # a task or durability future
        self._backlog: dict[str, deque[bytes]] = {UP: deque(), DOWN: deque()}
        self._backlog_bytes = {UP: 0, DOWN: 0}
        self._held: _Held | None = None

    async def run(self, leftover: bytes, pipelined: bytes) -> None:
        """Serve until either side ends or the session closes; raises what broke it."""
        server_rest = self.upstream.pipe.attach(lambda data: self._received(DOWN, data), self._peer_ended,
                                                self._reading)
        client_rest = self.client.attach(lambda data: self._received(UP, data), self._peer_ended, self._reading)
        for direction, data in ((DOWN, leftover + server_rest), (UP, pipelined + client_rest)):
            if data:
                self._received(direction, data)
        if self.client.ended or self.upstream.pipe.ended:
            self._end(None)
        await self._ended

    def _received(self, direction: str, data: bytes) -> None:
        traffic = self.services.traffic
        if direction == UP:
            traffic.up += len(data)
        else:
            traffic.down += len(data)
        self._feed(direction, data)

    def _feed(self, direction: str, data: bytes) -> None:
        if self._ended.done():
            return
        if self._waits[direction] is not None:  # read while a wait is on: kept, in order, for after it
            self._backlog[direction].append(data)
            self._backlog_bytes[direction] += len(data)
            if self._backlog_bytes[direction] > BACKLOG_BYTES:
                self._reading()
            return
        try:
            commands = self.session.from_client(data) if direction == UP else self.session.from_server(data)
            self._carry(direction, commands)
        except Exception as exc:  # noqa: BLE001 - ends this session with the reason; the daemon goes on
            self._end(exc)

    def _carry(self, direction: str, commands: list[Command]) -> None:
        waiting, rest = self._apply(commands)
        if waiting is None:
            return
        if isinstance(waiting, asyncio.Future):  # a strict audit record: go on once it is durable
            self._waits[direction] = waiting
            waiting.add_done_callback(lambda durable: self._durable(direction, durable, rest))
        else:
            task = asyncio.get_running_loop().create_task(self._carry_later(direction, waiting, rest))
            self._waits[direction] = task
            task.add_done_callback(lambda done: self._resumed(direction, done))
        self._reading()

    async def _carry_later(self, direction: str, waiting: Awaitable[list[Command] | None],
                           rest: list[Command]) -> None:
        while waiting is not None:
            waiting, rest = self._apply((await waiting or []) + rest)

    def _durable(self, direction: str, durable: asyncio.Future[None], rest: list[Command]) -> None:
        self._waits[direction] = None
        if durable.cancelled() or self._ended.done():
            return
        if durable.exception() is not None:
            self._end(durable.exception())
            return
        try:
            self._carry(direction, rest)
        except Exception as exc:  # noqa: BLE001 - as in _feed
            self._end(exc)
            return
        self._replay(direction)

    def _resumed(self, direction: str, task: asyncio.Task[None]) -> None:
        self._waits[direction] = None
        if task.cancelled():
            return
        if task.exception() is not None:
            self._end(task.exception())
            return
        self._replay(direction)

    def _replay(self, direction: str) -> None:
        """The wait is over: what was read meanwhile goes through now, then reading resumes."""
        backlog = self._backlog[direction]
        while backlog and self._waits[direction] is None and not self._ended.done():
            data = backlog.popleft()
            self._backlog_bytes[direction] -= len(data)
            self._feed(direction, data)
        self._reading()

    def _apply(self, commands: list[Command]) -> tuple[Awaitable[list[Command] | None] | None, list[Command]]:
        """Carry out commands in order up to the first that must wait: (that wait, what
        follows it), or (None, []) when all are done."""
        to_client: list[bytes | memoryview] = []
        to_server: list[bytes | memoryview] = []
        waiting: Awaitable[list[Command] | None] | None = None
        index = 0
        for index, command in enumerate(commands, 1):
            kind = type(command)
            if kind is Send:
                (to_client if command.to == CLIENT else to_server).extend(command.data)
                if self.capture:  # what the client saw (masked), and what it sent
                    self.services.audit.write_session_bytes(
                        self.flow.flow_id, "down" if command.to == CLIENT else "up", b"".join(command.data))
            elif kind is Audit:
                durable = self._audit(command)
                if durable is not None:  # strict: nothing after the record leaves before it is durable
                    rest = commands[index:]
                    if to_client and sum(len(piece) for piece in to_client) <= HOLD_BACK_BYTES:
                        # a small result leaves in one piece, once durable: one write, one wakeup
                        rest = [Send(CLIENT, to_client), *rest]
                        to_client = []
                    self._write(to_client, to_server)
                    return durable, rest
            elif kind is Hold:
                waiting = self._hold(command)
                break
            elif kind is RefreshCatalog:
                waiting = self._refresh(command)
                break
            elif kind is Close:
                self._write(to_client, to_server)
                self.closed_because = command.reason
                self._end(None)
                return None, []
        self._write(to_client, to_server)
        if waiting is None:
            return None, []
        return waiting, commands[index:]

    def _write(self, to_client: list[bytes | memoryview], to_server: list[bytes | memoryview]) -> None:
        if to_server:
            self.upstream.pipe.writelines(to_server)
        if to_client:
            self.client.writelines(to_client)

    def _audit(self, command: Audit) -> asyncio.Future[None] | None:
        self.statements += 1
        return self.services.audit.submit(self.services.event(
            self.flow, "statement", command.decision, operation=command.operation, outcome=command.outcome))

    async def _hold(self, command: Hold) -> list[Command]:
        """Wait for the broker's outcome, then resume the session: run the statement, deny it,
        or end it as cancelled (57014) when the client's CancelRequest withdrew it. Cancelled
        (the link closing), the broker withdraws the request itself."""
        request = self.services.request(self.flow, SqlQuery(command.text, self.session.database, command.settings))
        broker = self.services.approvals
        if broker is None:
            return self.session.approval(False, None, "no approval broker is configured")
        held = self._held = _Held()
        try:
            pending = held.pending = await broker.open(request, command.decision, self.flow.summary())
            if pending.waiting:
                timeout = command.decision.approval.timeout_seconds if command.decision.approval else 0
                self._apply(self.session.waiting_notice(pending.request_id, timeout))  # only Sends
                if held.cancelled:
                    await pending.withdraw(CANCELLED)
            outcome = await pending.wait()
        except asyncio.CancelledError:  # the link closed: the statement never runs, and says so
            record = self.session.abandoned_hold(held.pending.request_id if held.pending else None, DISCONNECTED)
            if record is not None:
                self._audit(record)
            raise
        finally:
            self._held = None
        if held.cancelled or outcome.withdrawn:
            return self.session.approval(False, outcome.request_id, CANCELLED, None, cancelled=True)
        return self.session.approval(outcome.approved, outcome.request_id, outcome.reason, outcome.approver)

    async def cancel_hold(self) -> bool:
        """The client's CancelRequest: True when it ends a held statement (its request is
        withdrawn now, or as soon as it is opened); False when nothing is held or a decision
        came first (that statement runs: the caller relays the cancel to the server)."""
        held = self._held
        if held is None:
            return False
        if held.pending is None:
            held.cancelled = True
            return True
        return await held.pending.withdraw(CANCELLED) is not None

    async def _refresh(self, command: RefreshCatalog) -> list[Command]:
        await self.catalogs.refresh(command.after_ddl)
        return self.session.tables_read() if command.for_result else self.session.catalog_read()

    def _reading(self) -> None:
        """Read from a side while its peer takes bytes and, during a wait, until what was read
        meanwhile passes BACKLOG_BYTES (a short wait costs no pause and resume)."""
        for direction, source, sink in ((UP, self.client, self.upstream.pipe), (DOWN, self.upstream.pipe, self.client)):
            if sink.writable and (self._waits[direction] is None or self._backlog_bytes[direction] <= BACKLOG_BYTES):
                source.resume()
            else:
                source.pause()

    def _peer_ended(self) -> None:
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        if self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)

    def close(self) -> None:
        for task in self._waits.values():
            if isinstance(task, asyncio.Task):  # an audit record's durability future is the sink's
                task.cancel()
        self.upstream.close()
        self.catalogs.close()


async def _audit_connection(services: Services, flow: FlowContext, verdict: str, stage: str, error: str | None,
                            operation: dict[str, object], **outcome: object) -> None:
    try:
        await services.audit.write(services.event(
            flow, "connection", verdict=verdict, rule=flow.labels.get("rule"), reason=error,
            operation={"protocol": "postgres", "stage": stage, **operation}, outcome={"error": error, **outcome}))
    except AuditUnavailable as exc:
        log.error("audit unavailable for flow %s: %s", flow.flow_id, exc)
