"""The host CA (interceptor.certificates): its files and their permissions, reloading and
racing creators, leaves per server name checked by real TLS handshakes (memory BIOs: a client
context trusting ca.pem against the contexts the handlers accept agents with), the cache
and its renewal on an injected clock, names refused, and the upstream context."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import os
import socket
import ssl
import stat
import threading
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interceptor.certificates import (
    BACKDATE, LEAF_VALIDITY, AgentTLS, HostCA, HostCAError, fingerprint, parse_server_name, upstream_context,
)
from interceptor.daemon import open_host_ca, private_state_dir
from interceptor.errors import ClientProtocolError

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)  # certificates keep whole seconds


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(tmp_path: Path, clock: Clock) -> HostCA:
    return HostCA.open(tmp_path, clock=clock)


def ca_file(state_dir: Path) -> str:
    return str(state_dir / "tls" / "ca.pem")


def client_context(cafile: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, sni: str | None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of a completed handshake over memory BIOs; the first side's SSLError otherwise."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    accepted = server.wrap_bio(server_in, server_out, server_side=True)
    dialled = client.wrap_bio(client_in, client_out, server_hostname=sni)
    done = {"server": False, "client": False}
    for _ in range(20):
        for side, end in (("client", dialled), ("server", accepted)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done.values()):
            return accepted, dialled
    raise AssertionError("handshake did not finish")


def peer_names(end: ssl.SSLObject) -> tuple[tuple[str, str], ...]:
    cert = end.getpeercert()
    assert cert is not None
    return tuple(cert["subjectAltName"])  # type: ignore[arg-type]


def leaf_of(end: ssl.SSLObject) -> x509.Certificate:
    der = end.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# --- the CA's files -------------------------------------------------------------------


def test_creates_the_ca_files_with_their_modes(tmp_path: Path, ca: HostCA) -> None:
    tls = tmp_path / "tls"
    modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in (tls, tls / "ca.pem", tls / "private",
                                                            tls / "private" / "ca.key")}
    assert modes == {tls: 0o755, tls / "ca.pem": 0o644, tls / "private": 0o700, tls / "private" / "ca.key": 0o600}
    assert (tls / "ca.pem").read_bytes() == ca.certificate_pem
    assert sorted(os.listdir(tls / "private")) == ["ca.key"]  # no temporary file left behind


def test_the_ca_certificate(ca: HostCA) -> None:
    cert = ca.certificate
    assert str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value).startswith("interceptor host CA ")
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=3650)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert fingerprint(cert) == cert.fingerprint(hashes.SHA256()).hex(":").upper()


def test_reopening_loads_the_same_ca(tmp_path: Path, ca: HostCA) -> None:
    again = HostCA.open(tmp_path)
    assert fingerprint(again.certificate) == fingerprint(ca.certificate)
    assert again.key.private_numbers() == ca.key.private_numbers()


def test_a_missing_or_altered_public_copy_is_rewritten(tmp_path: Path, ca: HostCA) -> None:
    public = tmp_path / "tls" / "ca.pem"
    public.write_bytes(b"not the CA\n")
    HostCA.open(tmp_path)
    assert public.read_bytes() == ca.certificate_pem
    public.unlink()
    HostCA.open(tmp_path)
    assert public.read_bytes() == ca.certificate_pem and stat.S_IMODE(public.stat().st_mode) == 0o644


def test_creators_racing_end_with_one_ca(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    prints: list[str] = []

    def create() -> None:
        start.wait()
        prints.append(fingerprint(HostCA.open(tmp_path).certificate))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(prints) == 8 and len(set(prints)) == 1
    assert sorted(os.listdir(tmp_path / "tls" / "private")) == ["ca.key"]
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == HostCA.open(tmp_path).certificate_pem


@pytest.mark.parametrize("path, mode, message", [
    ("tls/private/ca.key", 0o640, "mode 0640: it must be readable by root only"),
    ("tls/private/ca.key", 0o604, "chmod 0600"),
    ("tls/private", 0o750, "mode 0750: it must be readable by root only"),
    ("tls", 0o775, "mode 0775: it must be writable by root only"),
])
def test_modes_wider_than_allowed_are_refused(tmp_path: Path, ca: HostCA, path: str, mode: int, message: str) -> None:
    os.chmod(tmp_path / path, mode)
    with pytest.raises(HostCAError, match=message):
        HostCA.open(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("path", ["tls/private/ca.key", "tls/private", "tls"])
def test_files_of_another_owner_are_refused(tmp_path: Path, ca: HostCA, path: str) -> None:
    os.chown(tmp_path / path, 65534, -1)
    with pytest.raises(HostCAError, match="owned by uid 65534, not 0"):
        HostCA.open(tmp_path)


def test_a_symlinked_key_is_refused(tmp_path: Path, ca: HostCA) -> None:
    key = tmp_path / "tls" / "private" / "ca.key"
    key.rename(tmp_path / "elsewhere.key")
    key.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(HostCAError, match="is a symlink"):
        HostCA.open(tmp_path)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o755)
    (tmp_path / "tls").symlink_to(tmp_path / "real")
    with pytest.raises(HostCAError, match="is not a directory"):
        HostCA.open(tmp_path)


def test_a_public_copy_that_cannot_be_written_is_a_host_ca_error(tmp_path: Path, ca: HostCA) -> None:
    public = tmp_path / "tls" / "ca.pem"
    public.unlink()
    public.mkdir()
    with pytest.raises(HostCAError, match="cannot write the host CA in .*/tls: Is a directory"):
        HostCA.open(tmp_path)
    assert sorted(os.listdir(tmp_path / "tls")) == ["ca.pem", "private"]  # no temporary file left


def _rewrite_key_file(tmp_path: Path, data: bytes) -> None:
    key = tmp_path / "tls" / "private" / "ca.key"
    key.write_bytes(data)


def test_a_key_file_without_its_certificate_is_refused(tmp_path: Path, ca: HostCA) -> None:
    key = tmp_path / "tls" / "private" / "ca.key"
    _rewrite_key_file(tmp_path, key.read_bytes().split(b"-----BEGIN CERTIFICATE")[0])
    with pytest.raises(HostCAError, match="one PEM private key and one certificate"):
        HostCA.open(tmp_path)


def test_a_certificate_of_another_key_is_refused(tmp_path: Path, ca: HostCA) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _rewrite_key_file(tmp_path, other + ca.certificate_pem)
    with pytest.raises(HostCAError, match="not the key's"):
        HostCA.open(tmp_path)


def test_an_expired_ca_is_refused(tmp_path: Path, ca: HostCA, clock: Clock) -> None:
    clock.now = NOW + datetime.timedelta(days=3651)
    with pytest.raises(HostCAError, match="expired on"):
        HostCA.open(tmp_path, clock=clock)


# --- leaves, through real handshakes ----------------------------------------------------


def test_a_dns_name_gets_a_dns_leaf(tmp_path: Path, ca: HostCA) -> None:
    _, client = handshake(ca.server_context("api.example.com"), client_context(ca_file(tmp_path)), "api.example.com")
    assert peer_names(client) == (("DNS", "api.example.com"),)
    leaf = leaf_of(client)
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
    assert leaf.not_valid_after_utc == NOW + LEAF_VALIDITY


@pytest.mark.parametrize("address, shown", [("10.0.0.5", "10.0.0.5"), ("::1", "0:0:0:0:0:0:0:1")])
def test_an_ip_address_gets_an_ip_leaf(tmp_path: Path, ca: HostCA, address: str, shown: str) -> None:
    _, client = handshake(ca.server_context(address), client_context(ca_file(tmp_path)), address)
    assert peer_names(client) == (("IP Address", shown),)


def test_alpn_offers_http11_only(tmp_path: Path, ca: HostCA) -> None:
    server, client = handshake(ca.server_context("example.com"),
                               client_context(ca_file(tmp_path), ["h2", "http/1.1"]), "example.com")
    assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "http/1.1"
    server, client = handshake(ca.server_context("example.com"), client_context(ca_file(tmp_path), ["h2"]),
                               "example.com")
    assert client.selected_alpn_protocol() is None  # no protocol agreed: h2 is never selected


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_11_is_refused(tmp_path: Path, ca: HostCA) -> None:
    old = client_context(ca_file(tmp_path))
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(ca.server_context("example.com"), old, "example.com")


def test_a_client_that_does_not_trust_the_ca_fails(tmp_path: Path, ca: HostCA) -> None:
    other = tmp_path / "other"
    HostCA.open(other)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca.server_context("example.com"), client_context(ca_file(other)), "example.com")


def test_agent_context_presents_the_sni_and_reports_it(tmp_path: Path, ca: HostCA) -> None:
    tls = ca.agent_context("10.0.0.5")
    _, client = handshake(tls.context, client_context(ca_file(tmp_path)), "Kube.Example.com")
    assert peer_names(client) == (("DNS", "kube.example.com"),)
    assert tls.server_name == tls.certificate_name == "kube.example.com" and tls.refusal is None


@pytest.mark.parametrize("address, shown", [("10.0.0.5", "10.0.0.5"), ("fd00::5", "FD00:0:0:0:0:0:0:5")])
def test_agent_context_without_sni_presents_the_destination_ip(tmp_path: Path, ca: HostCA, address: str,
                                                                shown: str) -> None:
    """A client dialling an address sends no SNI (RFC 6066 section 3) and checks the address."""
    tls = ca.agent_context(address)
    server, client = handshake(tls.context, client_context(ca_file(tmp_path)), address)
    assert peer_names(client) == (("IP Address", shown),)
    assert tls.server_name is None and tls.certificate_name == address
    assert server.selected_alpn_protocol() is None  # the client offered none


def test_agent_context_alpn_is_http11(tmp_path: Path, ca: HostCA) -> None:
    tls = ca.agent_context("10.0.0.5")
    server, _ = handshake(tls.context, client_context(ca_file(tmp_path), ["h2", "http/1.1"]), "example.com")
    assert server.selected_alpn_protocol() == "http/1.1"


def test_agent_context_refuses_a_bad_sni(tmp_path: Path, ca: HostCA) -> None:
    tls = ca.agent_context("10.0.0.5")
    lax = client_context(ca_file(tmp_path))
    lax.check_hostname = False
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED|UNRECOGNIZED_NAME"):
        handshake(tls.context, lax, "bad_name-.example")
    assert tls.refusal == "TLS server name 'bad_name-.example' is not a valid hostname or IP address"
    assert tls.server_name is None


def test_agent_context_fails_closed_when_no_leaf_can_be_issued(tmp_path: Path, ca: HostCA,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str, now: datetime.datetime) -> None:
        raise RuntimeError("signing failed")

    monkeypatch.setattr(ca, "_issue", broken)
    tls = ca.agent_context("10.0.0.5")
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, client_context(ca_file(tmp_path)), "kube.example.com")
    assert tls.refusal == "no certificate for 'kube.example.com': RuntimeError: signing failed"
    assert tls.server_name is None


def test_agent_contexts_are_per_flow_and_freed_without_the_cycle_collector(tmp_path: Path, ca: HostCA) -> None:
    one, two = ca.agent_context("10.0.0.5"), ca.agent_context("10.0.0.5")
    assert one.context is not two.context
    handshake(one.context, client_context(ca_file(tmp_path)), "kube.example.com")
    context = weakref.ref(one.context)
    gc.disable()
    try:
        del one
        assert context() is None
    finally:
        gc.enable()


# --- the cache ----------------------------------------------------------------------------


def test_a_name_is_issued_once_and_names_are_canonical(ca: HostCA) -> None:
    context = ca.server_context("example.com")
    assert ca.server_context("EXAMPLE.com.") is context
    assert ca.server_context("other.example.com") is not context


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path, clock: Clock) -> None:
    ca = HostCA.open(tmp_path, clock=clock, cache_size=2)
    a = ca.server_context("a.example")
    b = ca.server_context("b.example")
    assert ca.server_context("a.example") is a  # a used last: b is the oldest
    ca.server_context("c.example")
    assert ca.server_context("a.example") is a
    assert ca.server_context("b.example") is not b


def presented(context: ssl.SSLContext, sni: str) -> x509.Certificate:
    """The leaf `context` presents, read without verifying it (the clock may be in the future)."""
    reader = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reader.check_hostname = False
    reader.verify_mode = ssl.CERT_NONE
    return leaf_of(handshake(context, reader, sni)[1])


def test_a_leaf_is_renewed_a_day_before_it_expires(ca: HostCA, clock: Clock) -> None:
    context = ca.server_context("example.com")
    clock.now = NOW + LEAF_VALIDITY - datetime.timedelta(days=1, seconds=1)
    assert ca.server_context("example.com") is context
    clock.now = NOW + LEAF_VALIDITY - datetime.timedelta(days=1)
    renewed = ca.server_context("example.com")
    assert renewed is not context
    assert presented(renewed, "example.com").not_valid_after_utc == clock.now + LEAF_VALIDITY
    assert presented(context, "example.com").not_valid_after_utc == NOW + LEAF_VALIDITY


def test_a_leaf_is_reissued_when_the_clock_goes_back(ca: HostCA, clock: Clock) -> None:
    context = ca.server_context("example.com")
    clock.now = NOW - datetime.timedelta(hours=2)  # before the cached leaf's notBefore
    assert ca.server_context("example.com") is not context
    assert presented(ca.server_context("example.com"), "example.com").not_valid_before_utc == clock.now - BACKDATE


def test_a_leaf_never_outlives_the_ca(ca: HostCA, clock: Clock) -> None:
    clock.now = ca.certificate.not_valid_after_utc - datetime.timedelta(days=3)
    leaf = presented(ca.server_context("example.com"), "example.com")
    assert leaf.not_valid_after_utc == ca.certificate.not_valid_after_utc


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "", ".", "*.example.com", "a..b", "-a.example", "a-.example", "exämple.com", "a b.example", "1.2.3",
    "example.123", "x" * 64 + ".example", ("a" * 62 + ".") * 4 + "ab", "fe80::1%eth0", "10.0.0.5/32",
    "[::1]", "example.com:443", "a/b", "a\x00.example",
])
def test_bad_names_are_refused(ca: HostCA, name: str) -> None:
    with pytest.raises(ClientProtocolError, match="TLS server name"):
        ca.server_context(name)
    with pytest.raises(ClientProtocolError):
        ca.agent_context(name)


@pytest.mark.parametrize("name, canonical", [
    ("localhost", "localhost"), ("my_service.internal", "my_service.internal"), ("EXAMPLE.com.", "example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"), ("10.0.0.5", "10.0.0.5"), ("::FFFF:10.0.0.5", "::ffff:a00:5"),
    ("a" * 63 + ".example", "a" * 63 + ".example"), ("1.2.3.example", "1.2.3.example"),
])
def test_good_names(name: str, canonical: str) -> None:
    assert str(parse_server_name(name)) == canonical


# --- upstream ------------------------------------------------------------------------------


def test_upstream_context_verifies_against_the_given_ca(tmp_path: Path, ca: HostCA) -> None:
    upstream = upstream_context(ca_file(tmp_path), None)
    _, client = handshake(ca.server_context("api.internal"), upstream, "api.internal")
    assert client.selected_alpn_protocol() == "http/1.1"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(ca.server_context("api.internal"), upstream_context(ca_file(tmp_path), None), "other.internal")


def test_upstream_context_without_a_ca_uses_the_system_store(tmp_path: Path) -> None:
    fresh = HostCA.open(tmp_path / "fresh")  # made just now: in no system store
    upstream = upstream_context(None, None)
    assert upstream.check_hostname and upstream.verify_mode is ssl.CERT_REQUIRED
    assert upstream.cert_store_stats()["x509_ca"] > 0
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(fresh.server_context("api.internal"), upstream, "api.internal")


def _client_certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a client certificate it signed (clientAuth), as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enforcer")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "client-ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_upstream_context_presents_the_client_certificate(tmp_path: Path, ca: HostCA) -> None:
    client_ca, cert, key = _client_certificate(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*_server_files(tmp_path, ca))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=str(client_ca))
    accepted, _ = handshake(server, upstream_context(ca_file(tmp_path), (str(cert), str(key))), "api.internal")
    seen = accepted.getpeercert()
    assert seen is not None and seen["subject"] == ((("commonName", "enforcer"),),)
    with pytest.raises(ssl.SSLError):
        handshake(server, upstream_context(ca_file(tmp_path), None), "api.internal")


def _server_files(tmp_path: Path, ca: HostCA) -> tuple[str, str]:
    """A leaf for api.internal signed by `ca`, as files a plain server context can load."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key()).serial_number(3)
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=3000))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.internal")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# --- on the event loops the daemon runs ------------------------------------------------------


async def _serve_over_loop(ca: HostCA, cafile: str, sni: str | None, address: str) -> tuple[AgentTLS, bytes]:
    """An agent's TLS accepted the way a handler does (loop.start_tls, server side) on a
    socketpair; the agent's client dials with `sni` and reads what the server wrote."""
    loop = asyncio.get_running_loop()
    server_sock, client_sock = socket.socketpair()
    tls = ca.agent_context(address)
    transport, protocol = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
    client = asyncio.ensure_future(asyncio.open_connection(sock=client_sock, ssl=client_context(cafile),
                                                           server_hostname=sni or address))
    secure = await loop.start_tls(transport, protocol, tls.context, server_side=True)
    assert secure is not None
    secure.write(b"hello")
    reader, writer = await client
    data = await reader.readexactly(5)
    writer.close()
    secure.close()
    return tls, data


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("sni, expected", [("kube.example.com", "kube.example.com"), (None, None)])
def test_agent_context_on_the_event_loop(tmp_path: Path, ca: HostCA, run: Callable[[Coroutine[Any, Any, Any]], Any],
                                         sni: str | None, expected: str | None) -> None:
    tls, data = run(_serve_over_loop(ca, ca_file(tmp_path), sni, "10.0.0.5"))
    assert data == b"hello" and tls.server_name == expected and tls.refusal is None


def test_open_host_ca_leaves_tls_off_when_the_ca_cannot_be_loaded(tmp_path: Path, ca: HostCA,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(open_host_ca(tmp_path), HostCA)
    os.chmod(tmp_path / "tls" / "private" / "ca.key", 0o644)
    assert open_host_ca(tmp_path) is None
    assert "agent-facing TLS disabled, TLS flows will be refused" in caplog.text and "mode 0644" in caplog.text


def test_the_state_directory_is_made_and_kept_root_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fresh = tmp_path / "new" / "state"
    private_state_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        private_state_dir(wide)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o700
    assert "was mode 0755; narrowed to 0700" in caplog.text
