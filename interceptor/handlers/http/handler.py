"""asyncio glue of every protocol over HTTP (http, kubernetes, mcp): the agent's TLS with a
certificate of the host CA, the upstream connection (TLS verified, the resource's client
certificate), the resource's credentials, the HTTP session (interceptor.handlers.http.session)
with the protocol's Dialect on the driver until the flow ends, and one connection record.

What the agent is told when the flow cannot start, in its protocol's dialect
(Dialect.refusal) as the answer to its first request, then the connection closes:

- the upstream is unreachable, or its certificate is not verified: 502;
- the resource's credentials are unavailable or unusable: 502 (never quoting them);
- `identity: bearer` and no valid bearer token in the first request: 401.

An agent that starts TLS when the daemon has no host CA gets its connection closed (there is
no way to answer it) and the record says so.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from interceptor.certificates import upstream_context
from interceptor.enforcer.driver import Driver
from interceptor.errors import ClientProtocolError, Fault, InterceptorError, UpstreamUnavailable
from interceptor.flow import FlowContext
from interceptor.handlers.base import FlowEnd, Services, resolved_credentials, resource_option
from interceptor.handlers.http.credentials import CredentialsError, UpstreamCredentials, upstream_credentials
from interceptor.handlers.http.bearer import BearerRefused, BearerValidators, FlowDialect
from interceptor.handlers.http.dialect import Dialect, RequestHead
from interceptor.handlers.http.headers import head_end, read_head
from interceptor.handlers.http.session import HttpSession, reply_bytes
from interceptor.handlers.http.target import parse_target
from interceptor.handlers.pipe import Pipe

log = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello (RFC 8446 section 5.1)
FIRST_BYTE_SECONDS = 60.0  # an agent that connects and sends nothing is let go after this
HANDSHAKE_SECONDS = 30.0
CONNECT_SECONDS = 30.0  # the upstream's TCP connect and TLS handshake, each
FIRST_REQUEST_SECONDS = 30.0  # reading the request a refusal answers
REFUSAL_BODY_LIMIT = 64 * 1024  # the most of its body a refusal reads (the JSON-RPC id of an MCP call)
CHUNK = 64 * 1024


class AgentTlsUnavailable(InterceptorError):
    """The agent started TLS and the daemon has no host CA to answer it with."""

    fault = Fault.ENFORCER
    status = 503


@dataclass(slots=True)
class _End(FlowEnd):
    """How the flow ended, and how the agent was let go."""

    status: int | None = None  # what the agent was answered, when the flow ended in a refusal
    abort: bool = True  # reset the agent at the end; False when every answer went out whole


class HttpHandler:
    """The Handler of one protocol over HTTP: `protocol` is its name (`http`, `kubernetes`,
    `mcp`), `dialect_factory` makes the flow's Dialect from what the daemon lends it."""

    def __init__(self, protocol: str, dialect_factory: Callable[[Services], Dialect]) -> None:
        self.protocol = protocol
        self.dialect_factory = dialect_factory
        self.validators = BearerValidators()  # for resources with `identity: bearer`

    async def serve(self, flow: FlowContext, client: socket.socket, services: Services) -> None:
        end = _End()
        pipe: Pipe | None = None
        client.setblocking(False)
        try:
            pipe, server_name = await self._accept(flow, client, services, end)
            if pipe is not None:
                await self._serve(flow, pipe, server_name, services, end)
        except InterceptorError as exc:
            end.failed(exc)
        except (ConnectionError, OSError, TimeoutError) as exc:
            end.error = end.error or f"agent connection: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug ends this flow, recorded; the daemon goes on
            log.exception("flow %s of agent %s failed", flow.flow_id, flow.agent)
            end.error, end.fault = f"internal error: {type(exc).__name__}: {exc}", Fault.ENFORCER
        finally:
            if pipe is None:
                client.close()
            elif end.error is None or not end.abort:
                pipe.close()
            else:
                pipe.abort()
        await end.record(flow, services, self.protocol, operation=end.details, outcome={"status": end.status})

    async def _accept(self, flow: FlowContext, client: socket.socket, services: Services,
                      end: _End) -> tuple[Pipe | None, str | None]:
        """The agent's socket as a Pipe, through TLS when its first byte starts a handshake;
        and the SNI it sent (None: none, or clear text)."""
        first = await asyncio.wait_for(_peek(client), FIRST_BYTE_SECONDS)
        end.details["agent_tls"] = first == bytes([TLS_HANDSHAKE])
        if not end.details["agent_tls"]:
            return await Pipe.accept(client), None
        if services.certificates is None:
            log.error("flow %s of agent %s: the agent started TLS to %s, but the daemon has no host CA to answer "
                      "it with; closing", flow.flow_id, flow.agent, flow.original_dst)
            raise AgentTlsUnavailable("the agent started TLS but the daemon has no host CA (agent-facing TLS is "
                                      "not configured); connection closed")
        tls = services.certificates.agent_context(str(flow.original_dst.ip))
        pipe = Pipe()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: pipe, client, ssl=tls.context, ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            raise ClientProtocolError(f"TLS handshake with the agent failed: {tls.refusal or exc}") from None
        end.details["sni"] = tls.server_name
        return pipe, tls.server_name

    async def _serve(self, flow: FlowContext, pipe: Pipe, server_name: str | None, services: Services,
                     end: _End) -> None:
        credential_names: frozenset[str] = frozenset()
        header = resource_option(services.resource, "token_header")
        if isinstance(header, str):
            credential_names = frozenset({header.lower()})
        first: _FirstRequest | None = None
        dialect = FlowDialect(self.dialect_factory(services), credential_names)
        try:
            if resource_option(services.resource, "identity") == "bearer":
                first = await _first_request(pipe)
                dialect.token = await self._bearer(flow, services, first, end)
            credentials = await _credentials(services)
            server = await _connect(flow, services, bool(end.details["agent_tls"]), server_name, credentials, end)
        except InterceptorError as exc:
            end.failed(exc)
            end.status = await _refuse(pipe, dialect, first or await _first_request(pipe, REFUSAL_BODY_LIMIT), exc)
            return
        session = HttpSession(dialect, services.judge, server_name=server_name,
                              credential_headers=credentials.headers)
        driver = Driver(flow, services, session, pipe, server)
        try:
            await driver.run(session.start(), client_rest=first.raw if first is not None else b"")
        except InterceptorError as exc:
            end.failed(exc)
        except (ConnectionError, OSError) as exc:
            end.error = f"connection: {type(exc).__name__}: {exc}"
        finally:
            driver.close()
        if end.error is not None:
            for record in session.unrecorded(end.error):
                await services.audit.write(services.event(flow, record.kind, record.decision,
                                                          operation=record.operation, outcome=record.outcome))
        if end.error is None and session.error is not None:
            end.error, end.fault, end.abort = session.error, session.fault, session.cut_short
        end.details["requests"] = driver.records

    async def _bearer(self, flow: FlowContext, services: Services, first: _FirstRequest, end: _End) -> str:
        """`identity: bearer`: the first request's token validated as the flow's identity,
        which the judge asks from now on; returns the token. BearerRefused (401) otherwise."""
        if first.head is None:
            raise BearerRefused("no request to take the bearer token from")
        agent = services.judge.engine().policy.agents.get(flow.agent)
        identity, token = await self.validators.identity(flow.agent, agent.identity if agent else None, first.head)
        services.judge.use_identity(identity)
        end.details["identity"] = "bearer"
        return token


async def _peek(sock: socket.socket) -> bytes:
    """The first byte the agent sent, left in the socket (b"" when it closed first)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)


async def _credentials(services: Services) -> UpstreamCredentials:
    """What the resource's credentials send upstream; none when the resource names none.
    CredentialsError (502) when they cannot be had or used; the message quotes no secret."""
    header = resource_option(services.resource, "token_header")
    token_header = header if isinstance(header, str) else None
    credentials = await resolved_credentials(services, lambda secrets: upstream_credentials(secrets, token_header),
                                             CredentialsError)
    return credentials if credentials is not None else UpstreamCredentials()


def verified_name(flow: FlowContext, services: Services, server_name: str | None) -> str:
    """The name the upstream's certificate must hold: the `tls.server_name` option, else the
    SNI the agent sent, else the resource's host name for the destination's port (the first
    such address), else the destination IP address."""
    option = resource_option(services.resource, "tls")
    if isinstance(option, Mapping) and isinstance(option.get("server_name"), str):
        return str(option["server_name"])
    if server_name:
        return server_name
    port = flow.original_dst.port
    for address in services.resource.addresses:
        if address.hostname is not None and address.port == port:
            return address.hostname
    return str(flow.original_dst.ip)


def upstream_tls(services: Services, agent_tls: bool, client_cert: tuple[str, str] | None) -> ssl.SSLContext | None:
    """The context to dial the upstream with, None for clear text: the `tls` option (`true`,
    `{ca, server_name}`, `false`), or when absent the same as the agent's connection. A
    client certificate with clear text is refused (it would never be presented)."""
    option = resource_option(services.resource, "tls")
    wanted = agent_tls if option is None else bool(option)
    if not wanted:
        if client_cert is not None:
            raise CredentialsError(f"resource {services.resource.name!r} has a client certificate in its credentials "
                                   "but the upstream connection is clear text (set tls)")
        return None
    ca = option.get("ca") if isinstance(option, Mapping) else None
    try:
        return upstream_context(str(ca) if ca else None, client_cert)
    except (OSError, ssl.SSLError) as exc:
        what = "the client certificate or key" if client_cert else f"the CA file {ca}"
        raise CredentialsError(f"resource {services.resource.name!r}: {what} cannot be loaded: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None


async def _connect(flow: FlowContext, services: Services, agent_tls: bool, server_name: str | None,
                   credentials: UpstreamCredentials, end: _End) -> Pipe:
    """The upstream connection to the flow's original destination, through verified TLS
    when `upstream_tls` asks. UpstreamUnavailable (502) when it cannot be reached or its
    certificate is not verified."""
    context = upstream_tls(services, agent_tls, credentials.client_certificate)
    dst = flow.original_dst
    end.details["upstream_tls"] = context is not None
    try:
        pipe = await asyncio.wait_for(Pipe.connect(str(dst.ip), dst.port), CONNECT_SECONDS)
    except (OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"upstream {dst} is unreachable: {getattr(exc, 'strerror', None) or exc!r}") from None
    if context is None:
        return pipe
    name = verified_name(flow, services, server_name)
    try:
        await asyncio.wait_for(pipe.start_tls(context, name), CONNECT_SECONDS)
    except ssl.SSLCertVerificationError as exc:
        pipe.abort()
        raise UpstreamUnavailable(f"upstream {dst}: its certificate is not verified for {name!r}: "
                                  f"{exc.verify_message}") from None
    except (OSError, TimeoutError) as exc:
        pipe.abort()
        raise UpstreamUnavailable(f"upstream {dst}: TLS failed: {exc!r}") from None
    return pipe


@dataclass(frozen=True, slots=True)
class _FirstRequest:
    """The agent's first request as read before the session: `head` (None when the agent
    sent none, or bytes the session would refuse anyway), what of its body was read, and
    every byte read (which the session then reads again)."""

    head: RequestHead | None
    body: bytes
    raw: bytes


async def _first_request(pipe: Pipe, body_limit: int = 0) -> _FirstRequest:
    """Read the agent's first request head (up to headers.MAX_HEAD, FIRST_REQUEST_SECONDS),
    and up to `body_limit` bytes of a Content-Length body unless the agent waits for 100
    Continue (RFC 9110 section 10.1.1), as the session reads them."""
    buffer = bytearray()
    try:
        async with asyncio.timeout(FIRST_REQUEST_SECONDS):
            while not (size := head_end(buffer)):
                data = await pipe.read(CHUNK)
                if not data:
                    break
                buffer += data
            if not size:
                return _FirstRequest(None, b"", bytes(buffer))
            parsed = read_head(bytes(buffer[:size]))
            target = parse_target(parsed.method, parsed.target)
            # a client waiting for 100 Continue sends no body: the refusal answers the head alone
            wanted = 0 if parsed.values("expect") else min(parsed.content_length or 0, body_limit)
            while len(buffer) - size < wanted and (data := await pipe.read(CHUNK)):
                buffer += data
    except (ClientProtocolError, TimeoutError):
        return _FirstRequest(None, b"", bytes(buffer))
    hosts = parsed.values("host")
    head = RequestHead(parsed.method, parsed.target, target.path, target.query, parsed.headers,
                       target.authority or (hosts[0] if hosts else None), parsed.http_version)
    return _FirstRequest(head, bytes(buffer[size:size + wanted]), bytes(buffer))


async def _refuse(pipe: Pipe, dialect: Dialect, first: _FirstRequest, error: InterceptorError) -> int | None:
    """Answer the agent's first request with the dialect's refusal of `error` (its status
    and message), `Connection: close`. Returns the status sent; None when there was no
    request to answer (the connection then just closes)."""
    if first.head is None:
        return None
    reply = dialect.refusal(first.head, first.body, error.status, str(error), None)
    pipe.write(reply_bytes(reply, first.head.method, close=True))
    await pipe.flush()
    return reply.status
