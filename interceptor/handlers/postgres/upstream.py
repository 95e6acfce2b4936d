"""The enforcer's own connections to the server: dialled with the resource's credentials
(never the agent's), TLS when the resource's options ask (verified, never blind), logged in
with the sans-IO UpstreamLogin; a session's upstream, and the catalog reader's."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from interceptor.errors import LoginError, ProtocolViolation, ServerProtocolError, UpstreamUnavailable
from interceptor.handlers.base import resource_option
from interceptor.handlers.pipe import Pipe
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.auth import UpstreamLogin
from interceptor.handlers.postgres.frames import Frame, FrameReader
from interceptor.policy.model import ResourceSpec

CHUNK = 256 * 1024


class Upstream:
    """A logged-in connection to the server with the resource's credentials."""

    def __init__(self, pipe: Pipe, login: UpstreamLogin) -> None:
        self.pipe = pipe
        self.login = login
        self._frames = FrameReader("upstream")
        self._frames.feed(login.leftover)

    @classmethod
    async def connect(cls, host: str, port: int, params: dict[str, str], password: str,
                      tls: ssl.SSLContext | None, server_name: str | None) -> Upstream:
        try:
            pipe = await Pipe.connect(host, port)
        except OSError as exc:
            raise UpstreamUnavailable(f"upstream {host}:{port}: {exc.strerror or exc}") from None
        try:
            return cls(pipe, await _login(pipe, params, password, tls, server_name or host))
        except ProtocolViolation as exc:
            pipe.abort()
            raise ServerProtocolError(f"upstream login: {exc}") from None
        except OSError as exc:  # TLS handshake failures (ssl.SSLError) included
            pipe.abort()
            raise UpstreamUnavailable(f"upstream {host}:{port}: {exc.strerror or exc}") from None
        except BaseException:
            pipe.abort()
            raise

    async def simple_query(self, sql: str) -> list[list[str | None]]:
        """The rows of one simple Query, every field as text (None for NULL); LoginError
        when the server answers with an error. Only for the enforcer's own connections."""
        self.pipe.write(codec.query(sql))
        rows: list[list[str | None]] = []
        error = None
        while True:
            kind, start, end = await self._next()
            body = self._frames.data[start + 5:end]
            if kind == 0x44:  # DataRow
                rows.append(_text_fields(body))
            elif kind == 0x45:  # ErrorResponse
                error = codec.read_fields(body).get("M", "error")
            elif kind == 0x5A:  # ReadyForQuery
                break
        if error is not None:
            raise LoginError(f"query failed: {error}")
        return rows

    async def _next(self) -> Frame:
        """The server's next message, read as it arrives; ConnectionError when the server
        ends the connection first."""
        while (frame := self._frames.next()) is None:
            data = await self.pipe.read(CHUNK)
            if not data:
                raise ConnectionError(f"upstream ended the connection {len(self._frames.rest())} bytes into a "
                                      "message")
            self._frames.feed(data)
        return frame

    def close(self) -> None:
        self.pipe.abort()


def _text_fields(body: bytes) -> list[str | None]:
    reader = codec.Reader(body, "DataRow")
    fields: list[str | None] = []
    for _ in range(reader.int16()):
        length = reader.int32()
        start = reader.pos
        reader.skip(max(length, 0))
        fields.append(None if length < 0 else body[start:reader.pos].decode())
    return fields


def upstream_tls(resource: ResourceSpec) -> tuple[ssl.SSLContext | None, str | None]:
    """TLS to the server when the resource's options ask: `tls: {ca: path, server_name: ...}`
    verifies against that CA, `tls: true` against the system store; never unverified."""
    tls = resource_option(resource, "tls")
    if not tls:
        return None, None
    options = tls if isinstance(tls, Mapping) else {}
    context = ssl.create_default_context(cafile=options.get("ca"))
    return context, options.get("server_name")


async def _login(pipe: Pipe, params: dict[str, str], password: str, tls: ssl.SSLContext | None,
                 server_name: str) -> UpstreamLogin:
    """TLS first when asked (SSLRequest, docs 55.2.10), then the StartupMessage and the
    authentication exchange; LoginError when the server refuses either."""
    if tls is not None:
        pipe.write(codec.special_request(codec.SSL_REQUEST))
        if await pipe.read_exactly(1) != b"S":
            raise LoginError("upstream refused TLS, which this resource requires")
        await pipe.start_tls(tls, server_name)
    login = UpstreamLogin(params["user"], password)
    pipe.write(codec.startup_message(params))
    while not login.done:
        data = await pipe.read(CHUNK)
        if not data:
            raise LoginError("upstream closed the connection during login")
        pipe.writelines(login.receive(data))
    return login
