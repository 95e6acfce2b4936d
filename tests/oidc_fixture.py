"""Start the local Okta-like OpenID provider (tests/oidc/server.mjs) on a free loopback port.

Use `with running_oidc_provider(workdir) as op:` from any test or demo, or the `oidc_provider`
pytest fixture (`from tests.oidc_fixture import oidc_provider_fixture` in a test module). `op`
knows the issuer, audience, client ids, the credential files (root-only modes) and drives the
provider's test-only routes.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
AUDIENCE = "api://interceptor"
SCOPES = ["db.read", "db.write", "k8s.read"]
SERVICE_CLIENT = "svc-agent"  # private_key_jwt, client_credentials
SECRET_CLIENT = "svc-secret"  # client_secret_basic, client_credentials
DEVICE_CLIENT = "interceptor-cli"  # public, device flow + refresh tokens
ACCOUNTS = {"alice@example.com": {"uid": "00ualice", "groups": ["dba", "oncall"]},
            "bob@example.com": {"uid": "00ubob", "groups": ["developers"]}}
SERVICE_GROUPS = ["agents", "db-readers"]
START_TIMEOUT = 10.0  # one start normally takes ~0.3 s
START_ATTEMPTS = 3  # about 1 start in 25 here never prints READY (cause not found): it is killed, and retried


class OidcProviderError(RuntimeError):
    """The provider could not be started or refused a test request."""


@dataclass
class OidcProvider:
    issuer: str
    port: int
    audience: str
    private_key_file: Path
    client_secret_file: Path
    process: subprocess.Popen[bytes]
    service_client: str = SERVICE_CLIENT
    secret_client: str = SECRET_CLIENT
    device_client: str = DEVICE_CLIENT

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise OidcProviderError(f"{method} {path}: HTTP {exc.code} {exc.read()[:200]!r}") from None

    def identity(self, kind: str) -> str:
        """An agent's `identity:` block (flow YAML) for this provider: `service` (private_key_jwt),
        `secret` (client secret) or `login` (a person's device flow)."""
        common = f"issuer: '{self.issuer}', audience: '{self.audience}'"
        if kind == "login":
            return (f"{{source: login, {common}, client_id: {self.device_client}, "
                    "scopes: [openid, offline_access, db.read]}")
        credential = (f"private_key_file: '{self.private_key_file}'" if kind == "service"
                      else f"client_secret_file: '{self.client_secret_file}'")
        client = self.service_client if kind == "service" else self.secret_client
        return f"{{source: client_credentials, {common}, client_id: {client}, {credential}, scopes: [db.read]}}"

    def rotate(self) -> str:
        """Publish a new signing key and sign with it from now on; returns its kid."""
        return self.admin("POST", "/__test/rotate", {})["kid"]

    def set_ttl(self, seconds: int) -> None:
        self.admin("POST", "/__test/ttl", {"seconds": seconds})

    def outage(self, token: bool = False, keys: bool = False) -> None:
        """Make the token and/or keys endpoint answer 503 until called again with False."""
        self.admin("POST", "/__test/outage", {"token": token, "keys": keys})

    def approve_device(self, user_code: str, account: str = "alice@example.com") -> None:
        self.admin("POST", "/__test/device/approve", {"user_code": user_code, "account": account})

    def stats(self) -> dict[str, int]:
        return self.admin("GET", "/__test/stats")

    def _form(self, route: str, form: dict[str, str]) -> dict[str, Any]:
        secret = self.client_secret_file.read_text().strip()
        auth = base64.b64encode(f"{self.secret_client}:{secret}".encode()).decode()
        request = urllib.request.Request(
            f"{self.issuer}{route}", data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"authorization": f"Basic {auth}", "content-type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return json.loads(body) if body else {}
        except urllib.error.HTTPError as exc:
            raise OidcProviderError(f"POST {route}: HTTP {exc.code} {exc.read()[:200]!r}") from None

    def token(self, scopes: str = "db.read") -> str:
        """A fresh access token for the secret client, e.g. for a launcher's token file."""
        return self._form("/v1/token", {"grant_type": "client_credentials", "scope": scopes})["access_token"]

    def revoke(self, token: str) -> None:
        """Revoke a token the secret client obtained."""
        self._form("/v1/revoke", {"token": token, "token_type_hint": "access_token"})


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _config(workdir: Path, access_token_ttl: int) -> tuple[Path, Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = _write_private(workdir / "svc-agent.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    secret_file = _write_private(workdir / "svc-secret.txt", secret.encode())
    public = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "svc-agent-1", "use": "sig"}
    config = {
        "audience": AUDIENCE, "scopes": SCOPES, "access_token_ttl": access_token_ttl, "accounts": ACCOUNTS,
        "clients": [
            {"client_id": SERVICE_CLIENT, "token_endpoint_auth_method": "private_key_jwt",
             "jwks": {"keys": [public]}, "grant_types": ["client_credentials"], "scope": "db.read k8s.read",
             "groups": SERVICE_GROUPS},
            {"client_id": SECRET_CLIENT, "token_endpoint_auth_method": "client_secret_basic",
             "client_secret": secret, "grant_types": ["client_credentials"], "scope": "db.read db.write",
             "groups": ["agents"]},
            {"client_id": DEVICE_CLIENT, "token_endpoint_auth_method": "none",
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
             "scope": "openid offline_access db.read db.write"},
        ],
    }
    config_file = workdir / "oidc-config.json"
    config_file.write_text(json.dumps(config))
    return config_file, key_file, secret_file


def _wait_ready(process: subprocess.Popen[bytes], log: Path) -> int:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            if selector.select(remaining):
                line = process.stdout.readline().decode()
                if line.startswith("READY "):
                    return int(line.split()[1])
                if not line:
                    break
    process.kill()
    raise OidcProviderError(f"OpenID provider did not start; its log {log}:\n{log.read_text()[-2000:]}")


def _start(node: str, config_file: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The provider's process and port; OidcProviderError when no attempt got to READY."""
    attempts = 1
    while True:
        with open(log, "ab") as log_handle:
            process = subprocess.Popen([node, str(OIDC_DIR / "server.mjs"), str(config_file)], cwd=OIDC_DIR,
                                       stdout=subprocess.PIPE, stderr=log_handle, stdin=subprocess.DEVNULL)
        try:
            return process, _wait_ready(process, log)
        except OidcProviderError:
            process.wait()
            if process.stdout:
                process.stdout.close()
            if attempts == START_ATTEMPTS:
                raise
            attempts += 1


@contextmanager
def running_oidc_provider(workdir: Path, access_token_ttl: int = 300) -> Iterator[OidcProvider]:
    """Run tests/oidc/server.mjs on a free 127.0.0.1 port for the duration of the block."""
    node = shutil.which("node")
    if node is None:
        raise OidcProviderError("node is not installed: the OpenID provider for tests needs Node.js 20+")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise OidcProviderError(f"oidc-provider is not installed: run `npm install` in {OIDC_DIR}")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file, key_file, secret_file = _config(workdir, access_token_ttl)
    log = workdir / "oidc-provider.log"
    process, port = _start(node, config_file, log)
    try:
        yield OidcProvider(f"http://127.0.0.1:{port}/oauth2/default", port, AUDIENCE, key_file, secret_file,
                           process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture(name="oidc_provider")
def oidc_provider_fixture(tmp_path: Path) -> Iterator[OidcProvider]:
    """The provider, for one test. Import `oidc_provider_fixture` into a test module to use it."""
    with running_oidc_provider(tmp_path / "oidc") as provider:
        yield provider
