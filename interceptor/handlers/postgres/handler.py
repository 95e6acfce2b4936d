"""asyncio glue: sockets, credentials, approvals, audit and column lookups around the
sans-IO codec, login and ProxySession."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from interceptor.audit.event import AuditUnavailable
from interceptor.decision import MaskSpec
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.auth import LoginError, UpstreamLogin
from interceptor.handlers.postgres.codec import Column, ProtocolViolation
from interceptor.handlers.postgres.session import (
    CLIENT,
    Audit,
    Close,
    Command,
    Hold,
    ProxySession,
    Refused,
    ResolveTables,
    RowMask,
    Send,
    Startup,
    accept_startup,
    database_allowed,
)
from interceptor.masking import TEXT_TYPE_OIDS, ColumnMasker, mask_datarow
from interceptor.operations import SqlQuery

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
STARTUP_SECONDS = 60.0
_COLUMN_NAMES = (
    "SELECT a.attrelid, a.attnum, n.nspname || '.' || c.relname || '.' || a.attname "
    "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE a.attnum > 0 AND a.attrelid IN ({})"
)


class Upstream:
    """A logged-in connection to the server with the resource's credentials."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login: UpstreamLogin) -> None:
        self.reader = reader
        self.writer = writer
        self.login = login

    @classmethod
    async def connect(cls, host: str, port: int, params: dict[str, str], password: str,
                      tls: ssl.SSLContext | None, server_name: str | None) -> Upstream:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if tls is not None:
                writer.write(codec.special_request(codec.SSL_REQUEST))
                if await reader.readexactly(1) != b"S":
                    raise LoginError("upstream refused TLS, which this resource requires")
                await writer.start_tls(tls, server_hostname=server_name or host)
            login = UpstreamLogin(params["user"], password)
            writer.write(codec.startup_message(params))
            while not login.done:
                data = await reader.read(CHUNK)
                if not data:
                    raise LoginError("upstream closed the connection during login")
                writer.writelines(login.receive(data))
        except BaseException:
            writer.transport.abort()
            raise
        return cls(reader, writer, login)

    async def column_names(self, oids: tuple[int, ...]) -> dict[int, dict[int, str]]:
        """`schema.table.column` by table OID and attnum, with one simple query."""
        self.writer.write(codec.query(_COLUMN_NAMES.format(", ".join(str(int(o)) for o in oids))))
        names: dict[int, dict[int, str]] = {}
        error = None
        while True:
            kind, length = codec.HEADER.unpack(await self.reader.readexactly(5))
            body = await self.reader.readexactly(codec.frame_length(length, codec.MAX_MESSAGE, "upstream") - 4)
            if kind == b"D":
                oid, attnum, name = _text_fields(body)
                names.setdefault(int(oid), {})[int(attnum)] = name
            elif kind == b"E":
                error = codec.read_fields(body).get("M", "error")
            elif kind == b"Z":
                break
        if error is not None:
            raise LoginError(f"column lookup failed: {error}")
        return names

    def close(self) -> None:
        self.writer.transport.abort()


def _text_fields(body: bytes) -> list[str]:
    reader = codec.Reader(body, "DataRow")
    fields = []
    for _ in range(reader.int16()):
        length = reader.int32()
        start = reader.pos
        reader.skip(max(length, 0))
        fields.append(body[start:reader.pos].decode())
    return fields


def mask_factory(key: bytes = b""):
    """The seam to interceptor.masking: a DataRow rewriter for the columns the policy masks,
    or None when no column of this result needs it (rows then stream untouched)."""

    def build(specs: tuple[MaskSpec, ...], columns: tuple[Column, ...], names: tuple[str | None, ...]) -> RowMask | None:
        maskers: dict[int, ColumnMasker] = {}
        for index, (column, name) in enumerate(zip(columns, names)):
            for spec in specs:
                whole = name is not None and any(fnmatch.fnmatchcase(name, p) for p in spec.columns)
                textual = column.format == 0 or column.type_oid in TEXT_TYPE_OIDS
                if whole or (spec.classifiers and textual):
                    maskers[index] = ColumnMasker.for_column(spec, whole=whole, type_oid=column.type_oid,
                                                             format_code=column.format, key=key)
                    break
        if not maskers:
            return None
        return lambda body: mask_datarow(body, maskers)

    return build


@dataclass(frozen=True, slots=True)
class _CancelTarget:
    host: str
    port: int
    pid: int
    secret: bytes
    agent: str


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
        reader, writer = await asyncio.open_connection(sock=client)
        try:
            await self._serve(flow, reader, writer, services)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    async def _serve(self, flow: FlowContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     services: Services) -> None:
        started = time.monotonic()
        try:
            first = await asyncio.wait_for(self._startup(flow, reader, writer, services), STARTUP_SECONDS)
        except (ProtocolViolation, Refused) as exc:
            code = exc.code if isinstance(exc, Refused) else "08P01"
            writer.write(codec.error_response(code, str(exc), severity="FATAL"))
            await _drain_quietly(writer)
            await _audit_connection(services, flow, "deny", "startup", str(exc), {})
            return
        except TimeoutError:
            await _audit_connection(services, flow, "deny", "startup", "no startup packet in time", {})
            return
        if first is None:
            return
        startup, credentials, pipelined = first
        try:
            await self._session(flow, reader, writer, services, startup, credentials, pipelined, started)
        except (LoginError, OSError, ProtocolViolation) as exc:
            writer.write(codec.error_response("08006", f"interceptor: {exc}", severity="FATAL"))
            await _drain_quietly(writer)
            await _audit_connection(services, flow, "error", "upstream", str(exc), {"database": startup.database})

    async def _startup(self, flow: FlowContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       services: Services) -> tuple[Startup, dict[str, str], bytes] | None:
        """Answer SSL/GSSENC requests, relay a cancel, or accept a StartupMessage (and
        return what the client already sent after it)."""
        buffer = b""
        while True:
            split = codec.split_startup(buffer)
            if split is None:
                data = await reader.read(codec.MAX_STARTUP)
                if not data:
                    return None
                buffer += data
                continue
            body, buffer = split
            packet = codec.parse_startup(body)
            if isinstance(packet, codec.SpecialRequest):
                if buffer:
                    raise ProtocolViolation("data sent after an SSL/GSSENC request before its answer")
                writer.write(b"N")  # TLS towards the agent is not offered; loopback only
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

    async def _session(self, flow: FlowContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       services: Services, startup: Startup, credentials: dict[str, str], pipelined: bytes,
                       started: float) -> None:
        if "user" not in credentials or "password" not in credentials:
            raise LoginError(f"credentials for resource {flow.resource!r} need 'user' and 'password'")
        host, port = str(flow.original_dst.ip), flow.original_dst.port
        tls, server_name = upstream_tls(services.resource)
        params = {"user": credentials["user"], "database": startup.database, **startup.params}

        async def connect() -> Upstream:
            return await Upstream.connect(host, port, params, credentials["password"], tls, server_name)

        upstream = await connect()
        pid, secret = secrets.randbits(31), secrets.token_bytes(32 if startup.minor >= 2 else 4)
        login = upstream.login
        writer.writelines([startup.greeting, codec.authentication_ok(), *login.forward,
                           codec.backend_key_data(pid, secret), codec.ready_for_query(login.status or b"I")])
        if login.backend_key is not None:
            self._cancel_keys[(pid, secret)] = _CancelTarget(host, port, *login.backend_key, flow.agent)
        session = ProxySession(
            judge=lambda text: services.decide(services.request(flow, SqlQuery(text, startup.database))),
            database=startup.database, mask_factory=mask_factory(),
        )
        link = _Link(flow, services, session, (reader, writer), upstream, connect)
        error = None
        try:
            if login.leftover:
                await link.run(session.from_server(login.leftover))
            if pipelined:
                await link.run(session.from_client(pipelined))
            if not link.done:
                await link.pump()
        except AuditUnavailable as exc:
            error = f"audit unavailable: {exc}"
            writer.write(codec.error_response("58000", f"interceptor: {error}; session closed", severity="FATAL"))
            await _drain_quietly(writer)
        finally:
            self._cancel_keys.pop((pid, secret), None)
            link.close()
        await _audit_connection(services, flow, "allow" if error is None else "error", "session", error,
                                {"database": startup.database, "user": startup.user,
                                 "upstream_user": credentials["user"]},
                                duration_ms=round((time.monotonic() - started) * 1000, 3),
                                statements=link.statements)

    async def _cancel(self, flow: FlowContext, packet: codec.CancelPacket, services: Services) -> None:
        """Relay a cancel to the real backend, only for a key this agent's session holds."""
        target = self._cancel_keys.get((packet.pid, packet.secret))
        allowed = target is not None and target.agent == flow.agent
        if target is not None and allowed:
            try:
                _, up = await asyncio.open_connection(target.host, target.port)
                up.write(codec.cancel_request(target.pid, target.secret))
                await up.drain()
                up.close()
            except OSError as exc:
                log.warning("cancel relay to %s:%s failed: %s", target.host, target.port, exc)
        await _audit_connection(services, flow, "allow" if allowed else "deny", "cancel",
                                None if allowed else "no session of this agent holds that cancel key",
                                {"cancel": True})


class _Link:
    """The two pumps of one proxied session and the commands they carry out."""

    def __init__(self, flow: FlowContext, services: Services, session: ProxySession,
                 client: tuple[asyncio.StreamReader, asyncio.StreamWriter], upstream: Upstream, connect) -> None:
        self.flow = flow
        self.client_reader, self.client = client
        self.services = services
        self.session = session
        self.upstream = upstream
        self.connect = connect
        self.lookup: Upstream | None = None
        self.statements = 0
        self.done = False
        self.capture = bool(getattr(services.audit, "capture", False))  # session bytes for pcap export

    async def pump(self) -> None:
        up = asyncio.ensure_future(self._copy(self.upstream.reader, self.session.from_server, self.client, "down"))
        down = asyncio.ensure_future(self._copy(self.client_reader, self.session.from_client, self.upstream.writer,
                                                "up"))
        try:
            finished, _ = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                task.result()
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _copy(self, reader: asyncio.StreamReader, feed, peer: asyncio.StreamWriter, direction: str) -> None:
        traffic = self.services.traffic
        while not self.done:
            data = await reader.read(CHUNK)
            if not data:
                return
            setattr(traffic, direction, getattr(traffic, direction) + len(data))
            await self.run(feed(data))
            await peer.drain()

    async def run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                (self.client if command.to == CLIENT else self.upstream.writer).writelines(command.data)
                if self.capture:  # what the client saw (masked), and what it sent
                    await self.services.audit.write_session_bytes(
                        self.flow.flow_id, "down" if command.to == CLIENT else "up", b"".join(command.data))
            elif isinstance(command, Audit):
                await self._audit(command)
            elif isinstance(command, Hold):
                await self._hold(command)
            elif isinstance(command, ResolveTables):
                await self._resolve(command)
            elif isinstance(command, Close):
                self.done = True

    async def _audit(self, command: Audit) -> None:
        self.statements += 1
        await self.services.audit.write(self.services.event(
            self.flow, "statement", command.decision, operation=command.operation, outcome=command.outcome))

    async def _hold(self, command: Hold) -> None:
        request = self.services.request(self.flow, SqlQuery(command.text, self.session.database))
        broker = self.services.approvals
        if broker is None:
            await self.run(self.session.approval(False, None, "no approval broker is configured"))
            return
        pending = await broker.open(request, command.decision, self.flow.summary())
        if pending.waiting:
            timeout = command.decision.approval.timeout_seconds if command.decision.approval else 0
            await self.run(self.session.waiting_notice(pending.request_id, timeout))
            await self.client.drain()
        outcome = await pending.wait()
        await self.run(self.session.approval(outcome.approved, outcome.request_id, outcome.reason, outcome.approver))

    async def _resolve(self, command: ResolveTables) -> None:
        if self.lookup is None:
            self.lookup = await self.connect()
        await self.run(self.session.learn_tables(await self.lookup.column_names(command.oids)))

    def close(self) -> None:
        self.upstream.close()
        if self.lookup is not None:
            self.lookup.close()


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        pass


async def _audit_connection(services: Services, flow: FlowContext, verdict: str, stage: str, error: str | None,
                            operation: dict[str, object], **outcome: object) -> None:
    try:
        await services.audit.write(services.event(
            flow, "connection", verdict=verdict, rule=flow.labels.get("rule"), reason=error,
            operation={"protocol": "postgres", "stage": stage, **operation}, outcome={"error": error, **outcome}))
    except AuditUnavailable as exc:
        log.error("audit unavailable for flow %s: %s", flow.flow_id, exc)

