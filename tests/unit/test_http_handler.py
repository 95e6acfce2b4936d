"""The HTTP handler over real sockets on loopback, no daemon: an agent (a blocking client in a
thread, clear text or TLS with SNI) -> HttpHandler.serve on an accepted socket -> a local
upstream (http.server in a thread, clear text or TLS with a CA made here), with the Services
a flow gets: the judge of a policy, an in-memory audit sink, the resource's credentials and
the host CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interceptor.audit.event import AuditEvent
from interceptor.certificates import HostCA
from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.errors import MaskingError
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.http import HANDLER
from interceptor.handlers.http.credentials import CredentialsError, upstream_credentials
from interceptor.handlers.http.dialect import RequestHead, ResponseHead
from interceptor.handlers.http.plain import PlainDialect
from interceptor.operations import HttpRequest
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.secrets import SecretError
from test_approvals_support import ListSink
from test_identity_validator import AUDIENCE, KeyServer, claims, sign

LOOPBACK = ipaddress.ip_address("127.0.0.1")
POLICY = """
version: 1
resources:
  api:
    protocol: http
    addresses: ["api.example.com:443"]
    OPTIONS
agents:
  bot: {uids: [1001], IDENTITY}
rules:
  - {name: reports-read, effect: allow, agents: [bot], resources: [api], SUBJECTS
     http: {methods: [GET], paths: ["/v1/reports/*"]}}
  - {name: no-archive, effect: deny, resources: [api], http: {paths: ["/v1/reports/archive/*"]}}
"""


class Sink(ListSink):
    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        raise AssertionError("no session bytes are captured")


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A handshake the enforcer refused (an unverified certificate) is what a test wants."""


@dataclass
class Upstream:
    """http.server on 127.0.0.1 (TLS with `context`), keeping each request's method, path and
    headers; it answers JSON naming the path."""

    context: ssl.SSLContext | None = None
    requests: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)
    clients: list[object] = field(default_factory=list)  # the TLS client certificate of each request

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                upstream.requests.append((self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()]))
                if isinstance(self.connection, ssl.SSLSocket):
                    upstream.clients.append(self.connection.getpeercert())
                body = json.dumps({"path": self.path, "owner": "ann@example.com"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_DELETE = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        if self.context is not None:
            self.httpd.socket = self.context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def upstream_ca(tmp_path: Path) -> HostCA:
    """A CA (made here, as the host CA is) that signs the TLS upstream's certificate."""
    return HostCA.open(tmp_path / "upstream-ca")


@pytest.fixture
def host_ca(tmp_path: Path) -> HostCA:
    """The daemon's host CA, which the agent trusts."""
    return HostCA.open(tmp_path / "host-ca")


@dataclass
class Served:
    """What one flow gave: the agent's raw response, the audit records, the upstream's requests."""

    response: bytes
    events: list[AuditEvent]

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1]) if self.response else 0

    @property
    def body(self) -> bytes:
        return self.response.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        for line in self.response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    def kind(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.events if event.kind == kind]

    @property
    def connection(self) -> AuditEvent:
        (record,) = self.kind("connection")
        return record


def agent_request(port: int, request: bytes, tls: ssl.SSLContext | None = None,
                  server_name: str | None = None) -> bytes:
    """Send `request` (which says Connection: close) from a blocking client; everything the
    agent read until the connection ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        chunks = []
        try:
            sock = tls.wrap_socket(raw, server_hostname=server_name) if tls is not None else raw
            sock.sendall(request)
            while data := sock.recv(65536):
                chunks.append(data)
        except (ConnectionResetError, ssl.SSLError):
            pass
        return b"".join(chunks)


def get(path: str, host: str = "api.example.com", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def policy_text(options: str = "", identity: str = "", subjects: str = "") -> str:
    return (POLICY.replace("OPTIONS", f"options: {options}" if options else "")
            .replace(", IDENTITY", f", identity: {identity}" if identity else "")
            .replace("SUBJECTS", subjects))


def no_credentials() -> Awaitable[dict[str, str]]:
    raise AssertionError("the resource names no credentials: none are asked for")


async def serve(port: int, agent: Callable[[int], bytes], *, policy: str = policy_text(),
                credentials: Callable[[], Awaitable[dict[str, str]]] | None = None,
                certificates: HostCA | None = None) -> Served:
    """Accept one agent connection and serve it with the http HANDLER, the flow's original
    destination being 127.0.0.1:`port` (the resource's address api.example.com:`port`)."""
    loaded = load_policy_text(policy.replace("api.example.com:443", f"api.example.com:{port}"), "handler.yaml")
    engine = PolicyEngine(loaded)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    client = asyncio.create_task(asyncio.to_thread(agent, listener.getsockname()[1]))
    conn, peer = await asyncio.get_running_loop().sock_accept(listener)
    listener.close()
    process = ProcessInfo(os.getpid(), 1, 1001, 1001, "/usr/bin/agent", ("agent",), "/agents/bot")
    flow = FlowContext("flow-1", "bot", process, Endpoint(LOOPBACK, port), Endpoint(LOOPBACK, peer[1]), "api",
                       connection_rule="reports-read")
    sink = Sink()
    resource = loaded.resources["api"]
    if credentials is not None:
        resource = type(resource)(resource.name, resource.protocol, resource.addresses,
                                  {"from": "env", "name": "API_TOKEN"}, resource.options)
    services = Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False), audit=sink,
                        resource=resource, credentials=credentials or no_credentials, certificates=certificates)
    await asyncio.wait_for(HANDLER.serve(flow, conn, services), 20)
    return Served(await asyncio.wait_for(client, 20), sink.events)


Runner = Callable[[Coroutine[Any, Any, Served]], Served]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a flow on asyncio's own loop, and on uvloop (the daemon's)."""
    loop_run = uvloop.run if request.param == "uvloop" else asyncio.run
    return lambda coro: loop_run(asyncio.wait_for(coro, 30))


def secret(**values: str) -> Callable[[], Awaitable[dict[str, str]]]:
    async def resolve() -> dict[str, str]:
        return values
    return resolve


# ---- clear text -----------------------------------------------------------------------------


def test_an_allowed_get_reaches_the_upstream_and_is_recorded(run: Runner, upstream: Upstream) -> None:
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1"))))
    assert served.status == 200 and json.loads(served.body) == {"path": "/v1/reports/q1", "owner": "ann@example.com"}
    assert [(method, path) for method, path, _ in upstream.requests] == [("GET", "/v1/reports/q1")]
    (request,) = served.kind("request")
    assert (request.decision, request.rule) == ("allow", "reports-read")
    connection = served.connection
    assert connection.decision == "allow" and connection.operation is not None and connection.outcome is not None
    assert connection.operation["protocol"] == "http" and connection.operation["agent_tls"] is False
    assert connection.outcome["bytes_up"] > 0 and connection.outcome["bytes_down"] > len(served.body)
    assert connection.outcome["error"] is None and connection.operation["requests"] == 1


def test_a_denied_request_gets_403_json_naming_the_rule_and_nothing_goes_upstream(run: Runner,
                                                                                  upstream: Upstream) -> None:
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/archive/2019"))))
    assert served.status == 403 and served.header("content-type") == "application/json"
    body = json.loads(served.body)
    assert body["rule"] == "no-archive" and "no-archive" in body["error"]
    assert upstream.requests == []
    (request,) = served.kind("request")
    assert (request.decision, request.rule) == ("deny", "no-archive")


def test_default_deny_for_what_no_rule_covers(run: Runner, upstream: Upstream) -> None:
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v2/admin"))))
    assert served.status == 403 and json.loads(served.body)["rule"] == "default-deny"
    assert upstream.requests == []


def test_a_mask_rule_masks_the_json_answer(run: Runner, upstream: Upstream) -> None:
    policy = policy_text() + ("  - {name: mask-emails, effect: mask, resources: [api], http: {paths: [\"/v1/*\"]}, "
                              "mask: {classifiers: [email]}}\n")
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1")), policy=policy))
    assert served.status == 200 and b"ann@example.com" not in served.response
    body = served.body
    if served.header("transfer-encoding") == "chunked":  # the masked body's length is not known up front
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    document = json.loads(body)
    assert document["path"] == "/v1/reports/q1" and document["owner"] != "ann@example.com"
    (request,) = served.kind("request")
    assert request.outcome is not None and request.outcome["masked"] == 1


HEAD = RequestHead("GET", "/v1/x", "/v1/x", (), (("host", "api.example.com"),), "api.example.com")
MASKED = Decision(Verdict.ALLOW, "reads", masks=(MaskSpec(rule="hide-owner", paths=("owner", "items[*].token")),))


def test_the_plain_dialect_masks_json_paths_and_withholds_what_it_cannot_mask() -> None:
    dialect = PlainDialect()
    operation = dialect.operation(HEAD, b"")
    assert operation == HttpRequest("GET", "/v1/x", (), "api.example.com")
    json_response = ResponseHead(200, (("content-type", "application/problem+json; charset=utf-8"),))
    assert dialect.response_filter(HEAD, operation, Decision(Verdict.ALLOW, "reads"), json_response) is None
    body_filter = dialect.response_filter(HEAD, operation, MASKED, json_response)
    assert body_filter is not None
    document = b'{"owner": "ann", "items": [{"token": "t1", "id": 1}], "kept": "x"}'
    out = body_filter.feed(document[:10]) + body_filter.feed(document[10:]) + body_filter.end()
    masked = json.loads(out)
    assert masked["owner"] != "ann" and masked["items"][0]["token"] != "t1"
    assert masked["items"][0]["id"] == 1 and masked["kept"] == "x" and body_filter.masked == 2
    with pytest.raises(MaskingError, match="not JSON"):
        dialect.response_filter(HEAD, operation, MASKED, ResponseHead(200, (("content-type", "text/html"),)))
    with pytest.raises(MaskingError, match="gzip-encoded"):
        dialect.response_filter(HEAD, operation, MASKED, ResponseHead(200, (("content-type", "application/json"),
                                                                            ("content-encoding", "gzip"))))
    broken = dialect.response_filter(HEAD, operation, MASKED, json_response)
    assert broken is not None and broken.feed(b'{"owner": ') == b""
    with pytest.raises(MaskingError, match="not valid JSON"):
        broken.end()
    refusal = dialect.refusal(HEAD, b"", 403, "denied", "no-archive")
    assert refusal.status == 403 and json.loads(refusal.body) == {"error": "denied", "rule": "no-archive"}


def test_the_credential_token_goes_upstream_and_the_agents_authorization_never(run: Runner, upstream: Upstream) -> None:
    request = get("/v1/reports/q1", "api.example.com", "Authorization: Bearer agents-own-token")
    served = run(serve(upstream.port, lambda port: agent_request(port, request), credentials=secret(token="s3cret")))
    assert served.status == 200
    (_, _, headers), = upstream.requests
    assert [value for name, value in headers if name == "authorization"] == ["Bearer s3cret"]
    assert "agents-own-token" not in repr(headers)


def test_a_token_header_replaces_the_agents_header_of_that_name(run: Runner, upstream: Upstream) -> None:
    request = get("/v1/reports/q1", "api.example.com", "X-Api-Key: agents-key")
    served = run(serve(upstream.port, lambda port: agent_request(port, request),
                       policy=policy_text("{token_header: X-Api-Key}"), credentials=secret(token="s3cret")))
    assert served.status == 200
    (_, _, headers), = upstream.requests
    assert [value for name, value in headers if name == "x-api-key"] == ["s3cret"]
    assert not any(name == "authorization" for name, _ in headers)


def test_user_and_password_go_up_as_basic_and_other_keys_are_refused() -> None:
    assert upstream_credentials({"user": "svc", "password": "pw"}).headers == (("authorization", "Basic c3ZjOnB3"),)
    with pytest.raises(CredentialsError, match="tokne") as caught:
        upstream_credentials({"tokne": "s3cret"})
    assert "s3cret" not in str(caught.value)
    with pytest.raises(CredentialsError, match="ambiguous"):
        upstream_credentials({"token": "t", "user": "u", "password": "p"})
    with pytest.raises(CredentialsError, match="client_certificate without client_key"):
        upstream_credentials({"client_certificate": "/etc/cert.pem"})
    with pytest.raises(CredentialsError, match="cannot carry"):
        upstream_credentials({"token": "bad\r\nX-Injected: 1"})


def test_unavailable_credentials_are_a_502_that_quotes_no_secret(run: Runner, upstream: Upstream) -> None:
    async def failing() -> dict[str, str]:
        raise SecretError("credentials: environment variable API_TOKEN is not set in the daemon")

    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1")), credentials=failing))
    assert served.status == 502 and "API_TOKEN is not set" in json.loads(served.body)["error"]
    assert upstream.requests == []
    assert served.connection.decision == "error" and served.connection.outcome is not None
    assert served.connection.outcome["fault"] == "enforcer" and served.connection.outcome["status"] == 502

    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1")),
                       credentials=secret(tokne="s3cret")))
    assert served.status == 502 and "tokne" in served.body.decode() and "s3cret" not in served.body.decode()


def test_an_unreachable_upstream_is_a_502_and_a_server_fault(run: Runner) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    served = run(serve(port, lambda port: agent_request(port, get("/v1/reports/q1"))))
    assert served.status == 502 and "unreachable" in json.loads(served.body)["error"]
    connection = served.connection
    assert connection.decision == "error" and connection.outcome is not None
    assert connection.outcome["fault"] == "server" and "unreachable" in str(connection.reason)


def test_a_failure_inside_the_handler_still_ends_in_one_connection_record(run: Runner, upstream: Upstream,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(services: Services) -> PlainDialect:
        raise RuntimeError("dialect bug")

    monkeypatch.setattr(HANDLER, "dialect_factory", broken)
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1"))))
    assert served.response == b"" and upstream.requests == []
    connection = served.connection
    assert connection.decision == "error" and connection.outcome is not None
    assert connection.outcome["fault"] == "enforcer" and "RuntimeError: dialect bug" in str(connection.reason)


# ---- TLS to the upstream --------------------------------------------------------------------


def test_a_tls_upstream_is_verified_against_the_resources_ca(run: Runner, upstream_ca: HostCA, tmp_path: Path) -> None:
    server = Upstream(upstream_ca.server_context("api.example.com"))
    try:
        ca = tmp_path / "upstream-ca" / "tls" / "ca.pem"
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")),
                           policy=policy_text(f"{{tls: {{ca: '{ca}'}}}}")))
        assert served.status == 200 and [path for _, path, _ in server.requests] == ["/v1/reports/q1"]
        assert served.connection.operation is not None and served.connection.operation["upstream_tls"] is True
    finally:
        server.close()


def test_an_unverified_tls_upstream_is_refused_with_502(run: Runner, upstream_ca: HostCA, host_ca: HostCA,
                                                        tmp_path: Path) -> None:
    server = Upstream(upstream_ca.server_context("api.example.com"))
    try:
        other_ca = tmp_path / "host-ca" / "tls" / "ca.pem"  # not the CA that signed the upstream's certificate
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")),
                           policy=policy_text(f"{{tls: {{ca: '{other_ca}'}}}}")))
        assert served.status == 502 and "not verified" in json.loads(served.body)["error"]
        ca = tmp_path / "upstream-ca" / "tls" / "ca.pem"  # the right CA, the wrong name
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")),
                           policy=policy_text(f"{{tls: {{ca: '{ca}', server_name: other.example.com}}}}")))
        assert served.status == 502 and "other.example.com" in json.loads(served.body)["error"]
        assert server.requests == []
    finally:
        server.close()


def client_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a client certificate it issued (extKeyUsage clientAuth) for
    "reports-agent": (CA file, certificate file, key file)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])

    def issued(subject: x509.Name, public: Any, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    paths = directory / "client-ca.pem", directory / "client.pem", directory / "client.key"
    paths[0].write_bytes(issued(ca_name, ca_key.public_key(), True).public_bytes(pem))
    paths[1].write_bytes(issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reports-agent")]),
                                key.public_key(), False).public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_the_credentials_client_certificate_authenticates_to_the_upstream(run: Runner, upstream_ca: HostCA,
                                                                          tmp_path: Path) -> None:
    client_ca, certificate, key = client_certificate(tmp_path)
    context = upstream_ca.server_context("api.example.com")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca))
    server = Upstream(context)
    try:
        policy = policy_text(f"{{tls: {{ca: '{tmp_path / 'upstream-ca' / 'tls' / 'ca.pem'}'}}}}")
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")), policy=policy,
                           credentials=secret(client_certificate=str(certificate), client_key=str(key))))
        assert served.status == 200 and "reports-agent" in repr(server.clients)
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")), policy=policy))
        assert served.status == 502 and len(server.requests) == 1  # without it the upstream refuses the handshake
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1")), policy=policy,
                           credentials=secret(client_certificate=str(tmp_path / "missing.pem"), client_key=str(key))))
        assert served.status == 502 and "client certificate or key cannot be loaded" in json.loads(served.body)["error"]
    finally:
        server.close()


# ---- TLS towards the agent ------------------------------------------------------------------


def test_the_agents_tls_is_answered_with_the_host_ca_for_its_sni(run: Runner, upstream_ca: HostCA, host_ca: HostCA,
                                                                 tmp_path: Path) -> None:
    server = Upstream(upstream_ca.server_context("api.example.com"))
    agent_tls = ssl.create_default_context(cafile=str(tmp_path / "host-ca" / "tls" / "ca.pem"))
    try:
        ca = tmp_path / "upstream-ca" / "tls" / "ca.pem"
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1"), agent_tls,
                                                                   "api.example.com"),
                           policy=policy_text(f"{{tls: {{ca: '{ca}'}}}}"), certificates=host_ca))
        assert served.status == 200 and [path for _, path, _ in server.requests] == ["/v1/reports/q1"]
        operation = served.connection.operation
        assert operation is not None and operation["agent_tls"] is True and operation["sni"] == "api.example.com"
        # the Host must be the name the agent's TLS asked for (421 from the session otherwise)
        served = run(serve(server.port, lambda port: agent_request(port, get("/v1/reports/q1", "evil.example.com"),
                                                                   agent_tls, "api.example.com"),
                           policy=policy_text(f"{{tls: {{ca: '{ca}'}}}}"), certificates=host_ca))
        assert served.status == 421 and len(server.requests) == 1
    finally:
        server.close()


def test_agent_tls_without_a_host_ca_closes_and_records_why(run: Runner, upstream: Upstream) -> None:
    agent_tls = ssl.create_default_context()
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1"), agent_tls,
                                                                 "api.example.com")))
    assert served.response == b"" and upstream.requests == []
    connection = served.connection
    assert connection.decision == "error" and connection.outcome is not None
    assert connection.outcome["fault"] == "enforcer" and "no host CA" in str(connection.reason)


# ---- the agent's bearer token as the flow's identity ------------------------------------------


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.close()


def bearer_policy(keys: KeyServer) -> str:
    return policy_text("{identity: bearer}", f"{{source: none, issuer: '{keys.issuer}', audience: '{AUDIENCE}'}}",
                       "subjects: {groups: [db-readers]},")


def test_a_valid_bearer_token_is_the_flows_identity_and_stays_with_the_enforcer(run: Runner, upstream: Upstream,
                                                                                keys: KeyServer) -> None:
    token = sign(claims(keys.issuer))
    request = get("/v1/reports/q1", "api.example.com", f"Authorization: Bearer {token}")
    served = run(serve(upstream.port, lambda port: agent_request(port, request), policy=bearer_policy(keys)))
    assert served.status == 200 and len(upstream.requests) == 1
    assert token not in repr(upstream.requests) and "authorization" not in dict(upstream.requests[0][2])
    (record,) = served.kind("request")
    assert record.rule == "reports-read" and record.identity is not None
    assert dict(record.identity)["subject"] == "svc-agent"

    outsider = sign(claims(keys.issuer, groups=["others"]))  # valid, but not in the rule's group
    request = get("/v1/reports/q1", "api.example.com", f"Authorization: Bearer {outsider}")
    served = run(serve(upstream.port, lambda port: agent_request(port, request), policy=bearer_policy(keys)))
    assert served.status == 403 and json.loads(served.body)["rule"] == "default-deny"


@pytest.mark.parametrize(("authorization", "reason"), [
    (None, "send one Authorization: Bearer header"),
    ("Basic YTpi", "send one Authorization: Bearer header"),
    ("EXPIRED", "expired"),
    ("AUDIENCE", "aud"),
])
def test_no_valid_bearer_token_is_a_401_recorded(run: Runner, upstream: Upstream, keys: KeyServer,
                                                 authorization: str | None, reason: str) -> None:
    if authorization == "EXPIRED":
        authorization = "Bearer " + sign(claims(keys.issuer, exp=1000, iat=900))
    elif authorization == "AUDIENCE":
        authorization = "Bearer " + sign(claims(keys.issuer, aud="api://other"))
    extra = [f"Authorization: {authorization}"] if authorization else []
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1", "api.example.com",
                                                                           *extra)),
                       policy=bearer_policy(keys)))
    assert served.status == 401 and served.header("www-authenticate") == 'Bearer error="invalid_token"'
    assert reason in json.loads(served.body)["error"] and upstream.requests == []
    connection = served.connection
    assert connection.decision == "deny" and connection.outcome is not None
    assert connection.outcome["status"] == 401 and reason in str(connection.reason)


def test_a_later_request_with_another_token_is_refused(run: Runner, upstream: Upstream, keys: KeyServer) -> None:
    first, other = sign(claims(keys.issuer)), sign(claims(keys.issuer, jti="jti-2"))
    requests = (get("/v1/reports/a", "api.example.com", f"Authorization: Bearer {first}").replace(
        b"Connection: close\r\n", b"") + get("/v1/reports/b", "api.example.com", f"Authorization: Bearer {other}"))
    served = run(serve(upstream.port, lambda port: agent_request(port, requests), policy=bearer_policy(keys)))
    assert [path for _, path, _ in upstream.requests] == ["/v1/reports/a"]
    assert served.response.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 401" in served.response


def test_a_client_certificate_over_clear_text_is_refused(run: Runner, upstream: Upstream) -> None:
    """A resource with `tls: false` and a client certificate is refused, not sent in clear."""
    served = run(serve(upstream.port, lambda port: agent_request(port, get("/v1/reports/q1")),
                       policy=policy_text("{tls: false}"),
                       credentials=secret(client_certificate="/etc/c.pem", client_key="/etc/c.key")))
    assert served.status == 502 and "clear text" in json.loads(served.body)["error"]
    assert upstream.requests == []

