"""Upstream login against a server side written from RFC 5802 here (no sockets): the SCRAM
client (scramp) is checked against an independent server half, and its refusals are LoginErrors."""

import base64
import hashlib
import hmac

import pytest

from interceptor.errors import LoginError
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.auth import UpstreamLogin, md5_password
from interceptor.handlers.postgres.codec import INT32


def auth(code: int, extra: bytes = b"") -> bytes:
    return codec.message(b"R", INT32.pack(code) + extra)


def after_login() -> bytes:
    return (codec.message(b"S", b"server_version\x0015.0\0") + codec.backend_key_data(77, b"\0\0\0\x09")
            + codec.ready_for_query(b"I"))


class ScramServer:
    """The server half of SCRAM-SHA-256 for a known password."""

    def __init__(self, password: str, salt: bytes = b"saltsaltsaltsalt", iterations: int = 4096) -> None:
        self.salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        self.salt, self.iterations = salt, iterations

    def first(self, client_first: bytes) -> bytes:
        self.client_bare = client_first[3:].decode()
        self.nonce = self.client_bare.split("r=", 1)[1] + "SERVERPART"
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        without_proof, proof = client_final.decode().rsplit(",p=", 1)
        auth_message = f"{self.client_bare},{self.server_first},{without_proof}".encode()
        client_key = hmac.digest(self.salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if base64.b64decode(proof) != expected:
            raise AssertionError("client proof is wrong")
        server_key = hmac.digest(self.salted, b"Server Key", "sha256")
        return b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))


def sasl_payload(reply: bytes, initial: bool) -> bytes:
    body = reply[5:]
    if initial:
        assert body.startswith(b"SCRAM-SHA-256\0")
        return body[len(b"SCRAM-SHA-256\0") + 4:]
    return body


def test_scram_sha_256_login_verifies_both_sides():
    login, server = UpstreamLogin("svc", "s3cret"), ScramServer("s3cret")
    [first] = login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
    [final] = login.receive(auth(11, server.first(sasl_payload(first, True))))
    server_final = server.final(sasl_payload(final, False))
    assert login.receive(auth(12, server_final) + auth(0) + after_login()) == []
    assert login.done and login.status == b"I" and login.backend_key == (77, b"\0\0\0\x09")
    assert login.forward == [codec.message(b"S", b"server_version\x0015.0\0")]


def test_scram_server_that_does_not_know_the_password_is_refused():
    login, impostor = UpstreamLogin("svc", "s3cret"), ScramServer("other")
    [first] = login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
    login.receive(auth(11, impostor.first(sasl_payload(first, True))))
    with pytest.raises(LoginError, match="signature doesn't match"):
        login.receive(auth(12, b"v=" + base64.b64encode(b"x" * 32)))


def test_scram_skipped_by_the_server_is_refused():
    login = UpstreamLogin("svc", "s3cret")
    login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
    with pytest.raises(LoginError, match="without finishing"):
        login.receive(auth(0))


def test_scram_nonce_must_extend_ours():
    for server_nonce in (b"zzzSERVER", b"abc"):
        login = UpstreamLogin("svc", "pw", scram_nonce="abc")
        login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
        with pytest.raises(LoginError, match="nonce"):
            login.receive(auth(11, b"r=" + server_nonce + b",s=c2FsdHNhbHRzYWx0c2FsdA==,i=4096"))


def test_weak_or_malformed_server_first_messages_are_refused():
    for server_first, problem in ((b"r=abcSERVER,s=c2FsdHNhbHRzYWx0c2FsdA==,i=1000", "must not be < 4096"),
                                  (b"r=abcSERVER,s=c2FsdA==,i=4096", "at least 12 bytes"),
                                  (b"r=abcSERVER,i=4096", "server first"),
                                  (b"\xff", "not UTF-8")):
        login = UpstreamLogin("svc", "pw", scram_nonce="abc")
        login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
        with pytest.raises(LoginError, match=problem):
            login.receive(auth(11, server_first))


def test_scram_steps_out_of_order_are_refused():
    login = UpstreamLogin("svc", "pw")
    login.receive(auth(10, b"SCRAM-SHA-256\0\0"))
    with pytest.raises(LoginError, match="upstream SCRAM exchange failed"):
        login.receive(auth(12, b"v=" + base64.b64encode(b"x" * 32)))


def test_only_plus_mechanism_is_refused():
    with pytest.raises(LoginError, match="only SCRAM-SHA-256"):
        UpstreamLogin("svc", "pw").receive(auth(10, b"SCRAM-SHA-256-PLUS\0\0"))


def test_md5_and_cleartext_answers():
    login = UpstreamLogin("svc", "pw")
    [md5] = login.receive(auth(5, b"abcd"))
    inner = hashlib.md5(b"pwsvc").hexdigest().encode()
    assert md5 == codec.message(b"p", b"md5" + hashlib.md5(inner + b"abcd").hexdigest().encode() + b"\0")
    assert md5_password("svc", "pw", b"abcd") == md5[5:-1]
    [clear] = UpstreamLogin("svc", "pw").receive(auth(3))
    assert clear == codec.message(b"p", b"pw\0")


def test_server_error_and_unsupported_methods_are_login_errors():
    with pytest.raises(LoginError, match="password authentication failed"):
        UpstreamLogin("svc", "pw").receive(codec.error_response("28P01", "password authentication failed"))
    with pytest.raises(LoginError, match="method 7"):
        UpstreamLogin("svc", "pw").receive(auth(7))


def test_messages_before_authentication_are_refused():
    with pytest.raises(codec.ProtocolViolation, match="before authentication"):
        UpstreamLogin("svc", "pw").receive(codec.ready_for_query(b"I"))


def test_login_split_across_reads():
    login = UpstreamLogin("svc", "pw")
    stream = auth(3) + auth(0) + after_login()
    replies = []
    for i in range(len(stream)):
        replies += login.receive(stream[i:i + 1])
    assert replies == [codec.message(b"p", b"pw\0")] and login.done
