"""asyncio glue around the sans-IO PostgreSQL parts: the startup (TLS refused, cancel
relayed, StartupMessage accepted), the upstream login with the resource's credentials, the
session's catalog, then the ProxySession on the driver (interceptor.enforcer.driver) until
the flow ends, and one connection record."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from dataclasses import dataclass

from interceptor.credentials_check import validate_shape
from interceptor.enforcer.driver import Driver
from interceptor.errors import (
    AuditUnavailable, ClientProtocolError, Fault, InterceptorError, LoginError, ProtocolViolation, Refused,
    ServerProtocolError, UpstreamUnavailable,
)
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services, resource_option
from interceptor.handlers.commands import Await, Command
from interceptor.handlers.pipe import Pipe
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.masks import mask_factory
from interceptor.handlers.postgres.session import NORMAL_ENDS, ProxySession, RefreshCatalog
from interceptor.handlers.postgres.session_catalog import CatalogSource
from interceptor.handlers.postgres.startup import Startup, accept_startup, database_allowed
from interceptor.handlers.postgres.upstream import Upstream, upstream_tls
from interceptor.policy.encodings import EncodingRefused, python_codec
from interceptor.policy.settings import SessionSettings

log = logging.getLogger(__name__)

STARTUP_SECONDS = 60.0


def _parameter_statuses(frames: list[bytes]) -> dict[str, str]:
    """name -> value of the ParameterStatus messages among login frames."""
    found = {}
    for frame in frames:
        if frame[:1] == b"S":
            name, value = codec.read_parameter_status(frame[5:])
            found[name.lower()] = value
    return found


@dataclass(frozen=True, slots=True)
class _CancelTarget:
    """A live session by the cancel key its client was given: its agent, its driver (to end
    a held statement) and where to relay any other cancel (the real backend's key, when the
    server gave one)."""

    agent: str
    driver: Driver
    host: str
    port: int
    backend: tuple[int, bytes] | None


class _CatalogReads:
    """The session's Await commands: read the catalog again, then resume the session."""

    def __init__(self, session: ProxySession, catalogs: CatalogSource) -> None:
        self.session = session
        self.catalogs = catalogs

    async def __call__(self, command: Await) -> list[Command]:
        if not isinstance(command, RefreshCatalog):
            raise TypeError(f"a PostgreSQL session awaits no {type(command).__name__}")
        await self.catalogs.refresh(command.after_ddl)
        return self.session.catalog_refreshed(command)


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
        except ProtocolViolation as exc:
            await _refuse(client, services, flow, ClientProtocolError(str(exc)), "startup", {})
            return
        except Refused as exc:
            await _refuse(client, services, flow, exc, "startup", {})
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
            await _refuse(client, services, flow, exc, "startup", {"database": startup.database})
        except (LoginError, UpstreamUnavailable, ServerProtocolError) as exc:
            await _refuse(client, services, flow, exc, "upstream", {"database": startup.database})

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
                validate_shape(services.resource, credentials)  # a misspelt `database:` must not widen
            except Exception as exc:  # noqa: BLE001 - any secrets failure refuses the login
                raise Refused("28000", f"credentials for resource {flow.resource!r} are unavailable: {exc}") from None
            patterns = resource_option(services.resource, "databases")
            if not database_allowed(startup.database, tuple(map(str, patterns)) if isinstance(patterns, list) else None,
                                    credentials.get("database")):
                raise Refused("42501", f"database {startup.database!r} is not allowed for agent {flow.agent!r} "
                                       f"on resource {flow.resource!r}")
            return startup, credentials, buffer

    async def _session(self, flow: FlowContext, client: Pipe, services: Services, startup: Startup,
                       credentials: dict[str, str], pipelined: bytes, started: float) -> None:
        if "user" not in credentials or "password" not in credentials:
            raise Refused("28000", f"credentials for resource {flow.resource!r} need 'user' and 'password'")
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
        catalogs = CatalogSource(services.catalogs, flow.resource or "", startup.database, host, port, credentials, tls,
                                 server_name)
        await catalogs.load()
        client.writelines([startup.greeting, codec.authentication_ok(), *login.forward,
                           codec.backend_key_data(pid, secret), codec.ready_for_query(login.status or b"I")])
        settings = SessionSettings.start({"search_path": startup.params.get("search_path"),
                                          "client_encoding": client_encoding, "role": None})
        session = ProxySession(
            judge=services.judge,
            database=startup.database, catalog=catalogs.current, epoch=services.judge.epoch, settings=settings,
            server_encoding=server_encoding, mask_factory=mask_factory(services.mask_key),
            scan_errors=services.scan_errors,
        )
        driver = Driver(flow, services, session, client, upstream.pipe, _CatalogReads(session, catalogs))
        self._cancel_keys[(pid, secret)] = _CancelTarget(flow.agent, driver, host, port, login.backend_key)
        error = None
        try:
            await driver.run(client_rest=pipelined, server_rest=login.leftover)
        except AuditUnavailable as exc:
            error = f"{exc.fault} fault: audit unavailable: {exc}"
            client.write(codec.error_response(exc.sqlstate, f"interceptor: audit unavailable: {exc}; session closed",
                                              severity="FATAL"))
            await client.flush()
        finally:
            self._cancel_keys.pop((pid, secret), None)
            driver.close()
            catalogs.close()
        if error is None and driver.closed_because not in (None, *NORMAL_ENDS):
            error = driver.closed_because  # a protocol violation or a state the enforcer could not follow
        await _audit_connection(services, flow, "allow" if error is None else "error", "session", error,
                                {"database": startup.database, "user": startup.user,
                                 "upstream_user": credentials["user"]},
                                duration_ms=round((time.monotonic() - started) * 1000, 3),
                                statements=driver.records)

    async def _cancel(self, flow: FlowContext, packet: codec.CancelPacket, services: Services) -> None:
        """A CancelRequest, only for a key this agent's session holds: a statement of that
        session held for approval ends (its request withdrawn, the client gets 57014);
        otherwise the cancel is relayed to the real backend. The caller then closes the
        cancel connection, as the server does."""
        target = self._cancel_keys.get((packet.pid, packet.secret))
        allowed = target is not None and target.agent == flow.agent
        ended_hold = False
        if target is not None and allowed:
            ended_hold = await target.driver.cancel_holds()
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


async def _refuse(client: Pipe, services: Services, flow: FlowContext, error: InterceptorError, stage: str,
                  operation: dict[str, object]) -> None:
    """End the session before it started: FATAL with the error's SQLSTATE, and the connection
    record says whose fault it was (a refusal by policy or of bad input is a deny, the
    server's failure an error)."""
    client.write(codec.error_response(error.sqlstate, f"interceptor: {error}", severity="FATAL"))
    await client.flush()
    verdict = "deny" if error.fault in (Fault.POLICY, Fault.CLIENT) else "error"
    await _audit_connection(services, flow, verdict, stage, str(error), operation, fault=error.fault.value)


async def _audit_connection(services: Services, flow: FlowContext, verdict: str, stage: str, error: str | None,
                            operation: dict[str, object], **outcome: object) -> None:
    try:
        await services.audit.write(services.event(
            flow, "connection", verdict=verdict, rule=flow.labels.get("rule"), reason=error,
            operation={"protocol": "postgres", "stage": stage, **operation}, outcome={"error": error, **outcome}))
    except AuditUnavailable as exc:
        log.error("audit unavailable for flow %s: %s", flow.flow_id, exc)
