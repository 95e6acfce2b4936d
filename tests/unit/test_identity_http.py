"""The identity provider's HTTP client (httpx) against loopback servers: answers, the body cap,
TLS that is always verified, plain http only to loopback, and failures as IdentityProviderError."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interceptor.identity.errors import IdentityConfigError, IdentityProviderError
from interceptor.identity.http import MAX_BODY, HttpxClient, get_json, post_form


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        body = b"x" * (MAX_BODY + 1) if self.path == "/big" else b'{"keys": []}'
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        form = self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"form": "' + form + b'", "type": "' + self.headers["Content-Type"].encode() + b'"}'
        self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A loopback server; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for 127.0.0.1, and that certificate's file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_get_json_returns_the_document_and_lower_cased_headers():
    with serving() as base:
        doc, response = asyncio.run(get_json(HttpxClient(), base + "/jwks", "jwks"))
    assert doc == {"keys": []} and response.headers["cache-control"] == "max-age=60"


def test_post_form_sends_a_urlencoded_form_and_returns_any_status():
    with serving() as base:
        response = asyncio.run(post_form(HttpxClient(), base + "/token", {"grant_type": "client_credentials"}))
    assert response.status == 400
    assert response.json("token") == {"form": "grant_type=client_credentials",
                                      "type": "application/x-www-form-urlencoded"}


def test_a_body_over_the_cap_is_refused():
    with serving() as base, pytest.raises(IdentityProviderError, match=f"larger than {MAX_BODY} bytes"):
        asyncio.run(HttpxClient().request("GET", base + "/big"))


def test_no_server_is_a_provider_error():
    with serving() as base:
        port = base.rsplit(":", 1)[1]
    with pytest.raises(IdentityProviderError, match="ConnectError"):
        asyncio.run(HttpxClient().request("GET", f"http://127.0.0.1:{port}/jwks"))


def test_plain_http_is_only_for_loopback():
    with pytest.raises(IdentityProviderError, match="must use https"):
        asyncio.run(HttpxClient().request("GET", "http://idp.example.com/jwks"))


def test_tls_is_verified_against_the_trusted_authorities(tmp_path):
    server_context, cert_file = self_signed(tmp_path)
    with serving(server_context) as base:
        with pytest.raises(IdentityProviderError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(HttpxClient().request("GET", base + "/jwks"))
        trusting = ssl.create_default_context(cafile=str(cert_file))
        assert asyncio.run(HttpxClient(ssl_context=trusting).request("GET", base + "/jwks")).status == 200


def test_a_context_that_would_not_verify_is_refused():
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    with pytest.raises(IdentityConfigError, match="must be verified"):
        HttpxClient(ssl_context=unverified)
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(IdentityConfigError, match="must be verified"):
        HttpxClient(ssl_context=unverified)
