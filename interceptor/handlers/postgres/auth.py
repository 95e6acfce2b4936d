"""Logging in to the upstream server with the resource's credentials, sans-IO.

The agent never authenticates upstream: the enforcer does, with whatever method the
server asks for (SCRAM-SHA-256, md5 or cleartext), and verifies the server's SCRAM
signature so a server that does not know the password cannot fake a login. SCRAM itself
is scramp's ScramClient; this module frames it in PostgreSQL's SASL messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from scramp import ScramClient, ScramException

from interceptor.errors import LoginError, ProtocolViolation
from interceptor.handlers.postgres.codec import INT32, Reader, cstr, message, read_fields
from interceptor.handlers.postgres.frames import FrameReader

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12
SCRAM = "SCRAM-SHA-256"


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


@contextmanager
def _scram_step() -> Iterator[None]:
    """scramp's refusals (a nonce that does not extend ours, a wrong server signature, an
    iteration count below 4096, a step out of order) as LoginError."""
    try:
        yield
    except ScramException as exc:
        raise LoginError(f"upstream SCRAM exchange failed: {exc}") from None
    except UnicodeDecodeError:
        raise LoginError("upstream SCRAM exchange failed: message is not UTF-8") from None


class ScramSha256:
    """The client side of SCRAM-SHA-256 (RFC 7677) without channel binding, on scramp:
    bytes of the SASL messages in and out; every refusal is a LoginError."""

    def __init__(self, user: str, password: str, nonce: str | None = None) -> None:
        with _scram_step():
            self._client = ScramClient([SCRAM], user, password, c_nonce=nonce)
        self.verified = False

    def first(self) -> bytes:
        """client-first-message."""
        with _scram_step():
            first: str = self._client.get_client_first()
        return first.encode()

    def final(self, server_first: bytes) -> bytes:
        """client-final-message (with the proof) for the server-first-message."""
        with _scram_step():
            self._client.set_server_first(server_first.decode())
            final: str = self._client.get_client_final()
        return final.encode()

    def verify(self, server_final: bytes) -> None:
        """Check the server's signature: only a server that knows the password can make it."""
        with _scram_step():
            self._client.set_server_final(server_final.decode())
        self.verified = True


class UpstreamLogin:
    """Feed it the server's bytes; it answers authentication requests and collects what
    the client must see afterwards (ParameterStatus, notices), the backend key and the
    first transaction status. `done` once ReadyForQuery arrived."""

    def __init__(self, user: str, password: str, scram_nonce: str | None = None) -> None:
        self.user = user
        self.password = password
        self._scram_nonce = scram_nonce
        self._scram: ScramSha256 | None = None
        self._frames = FrameReader("upstream")
        self.forward: list[bytes] = []  # ParameterStatus / NoticeResponse messages, as sent
        self.backend_key: tuple[int, bytes] | None = None
        self.status: bytes | None = None
        self.authenticated = False

    @property
    def done(self) -> bool:
        return self.status is not None

    def receive(self, data: bytes) -> list[bytes]:
        """The replies to send upstream for `data`; raises LoginError or ProtocolViolation."""
        frames = self._frames
        frames.feed(data)
        replies: list[bytes] = []
        while not self.done and (frame := frames.next()) is not None:
            whole = frames.data[frame[1]:frame[2]]
            replies.extend(self._handle(whole[:1], whole, whole[5:]))
        return replies

    @property
    def leftover(self) -> bytes:
        """Bytes after ReadyForQuery (none from a well-behaved server)."""
        return self._frames.rest()

    def _handle(self, kind: bytes, frame: bytes, body: bytes) -> list[bytes]:
        if kind == b"R":
            return self._authenticate(body)
        if kind == b"E":
            fields = read_fields(body)
            raise LoginError(f"upstream login failed: {fields.get('M', 'error')} ({fields.get('C', '?')})")
        if not self.authenticated and kind != b"N":
            raise ProtocolViolation(f"upstream sent {kind!r} before authentication completed")
        if kind in (b"S", b"N"):
            self.forward.append(frame)
        elif kind == b"K":
            if not 8 <= len(body) <= 260:
                raise ProtocolViolation(f"upstream BackendKeyData of {len(body)} bytes")
            self.backend_key = (INT32.unpack_from(body, 0)[0], body[4:])
        elif kind == b"Z":
            self.status = body[:1]
        elif kind != b"v":
            raise ProtocolViolation(f"unexpected upstream message {kind!r} during login")
        return []

    def _authenticate(self, body: bytes) -> list[bytes]:
        reader = Reader(body, "Authentication")
        code = reader.int32()
        if code == AUTH_OK:
            if self._scram is not None and not self._scram.verified:
                raise LoginError("upstream accepted SCRAM without finishing it; refusing the server")
            self.authenticated = True
            return []
        if code == AUTH_CLEARTEXT:
            return [message(b"p", cstr(self.password))]
        if code == AUTH_MD5:
            return [message(b"p", md5_password(self.user, self.password, body[4:8]) + b"\0")]
        if code == AUTH_SASL:
            mechanisms = [m.decode(errors="replace") for m in body[4:].split(b"\0") if m]
            if SCRAM not in mechanisms:
                raise LoginError(f"upstream offers SASL mechanisms {mechanisms}; only {SCRAM} is supported")
            self._scram = ScramSha256(self.user, self.password, self._scram_nonce)
            first = self._scram.first()
            return [message(b"p", cstr(SCRAM) + INT32.pack(len(first)) + first)]
        if code == AUTH_SASL_CONTINUE and self._scram is not None:
            return [message(b"p", self._scram.final(body[4:]))]
        if code == AUTH_SASL_FINAL and self._scram is not None:
            self._scram.verify(body[4:])
            return []
        raise LoginError(f"upstream asks for authentication method {code}, which the enforcer does not support")
