"""OAuth 2.0 client side: client authentication and the token, device and introspection
endpoints. Parsing is pure; the three request helpers are the only I/O."""

from __future__ import annotations

import asyncio

import base64
import os
import stat
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from interceptor.identity.errors import IdentityConfigError, IdentityProviderError
from interceptor.identity.http import HttpClient, HttpResponse, post_form

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class OAuthError(IdentityProviderError):
    """The server answered with an OAuth error code (RFC 6749 section 5.2)."""

    def __init__(self, endpoint: str, error: str, description: str = "") -> None:
        super().__init__(f"{endpoint}: {error}" + (f" ({description})" if description else ""))
        self.error = error


def read_protected_file(path: str | Path, what: str) -> bytes:
    """Read a credential file that only its owner (root, for the daemon) may read."""
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityConfigError(
                f"{what} {path} is accessible to group or others (mode {stat.S_IMODE(info.st_mode):o}); "
                "chmod 600 it")
        if info.st_uid != os.geteuid():
            raise IdentityConfigError(f"{what} {path} is owned by uid {info.st_uid}, not by the daemon's user")
        return Path(path).read_bytes()
    except OSError as exc:
        raise IdentityConfigError(f"{what} {path}: {exc.strerror}") from None


class ClientAuth(Protocol):
    @property
    def client_id(self) -> str:
        """The client's id at the authorization server."""

    def credentials(self, endpoint: str) -> tuple[dict[str, str], dict[str, str]]:
        """Form fields and headers that authenticate this client to `endpoint`."""


@dataclass(frozen=True, slots=True)
class PublicClient:
    """A client without a secret (device flow from the CLI), identified by client_id only."""

    client_id: str

    def credentials(self, endpoint: str) -> tuple[dict[str, str], dict[str, str]]:
        return {"client_id": self.client_id}, {}


@dataclass(frozen=True, slots=True)
class ClientSecret:
    """client_secret_basic, the secret read from a root-only file."""

    client_id: str
    secret: str = field(repr=False)

    @classmethod
    def from_file(cls, client_id: str, path: str | Path) -> ClientSecret:
        secret = read_protected_file(path, "client_secret_file").decode("utf-8", "replace").strip()
        if not secret:
            raise IdentityConfigError(f"client_secret_file {path} is empty")
        return cls(client_id, secret)

    def credentials(self, endpoint: str) -> tuple[dict[str, str], dict[str, str]]:
        pair = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self.secret, safe='')}"
        return {}, {"authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


@dataclass(frozen=True, slots=True)
class PrivateKeyJwt:
    """private_key_jwt: a short-lived assertion signed with a root-only private key."""

    client_id: str
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    algorithm: str
    key_id: str | None = None
    lifetime: int = 60

    @classmethod
    def from_file(cls, client_id: str, path: str | Path, key_id: str | None = None) -> PrivateKeyJwt:
        data = read_protected_file(path, "private_key_file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise IdentityConfigError(f"private_key_file {path} is not an unencrypted PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise IdentityConfigError(f"private_key_file {path}: RSA key of {key.key_size} bits, need 2048+")
            return cls(client_id, key, "RS256", key_id)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(client_id, key, "ES256", key_id)
        raise IdentityConfigError(f"private_key_file {path}: need an RSA or P-256 EC key")

    def credentials(self, endpoint: str) -> tuple[dict[str, str], dict[str, str]]:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": endpoint, "iat": now,
                  "exp": now + self.lifetime, "jti": uuid.uuid4().hex}
        headers = {"kid": self.key_id} if self.key_id else None
        assertion = jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)
        return {"client_id": self.client_id, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}, {}


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str = field(repr=False)
    expires_in: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """What the person is shown (user code, where to enter it) and how the daemon polls."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def oauth_error(endpoint: str, response: HttpResponse) -> IdentityProviderError:
    """The error an endpoint's non-200 answer means; OAuthError when it names an OAuth error."""
    try:
        doc = response.json(endpoint)
    except IdentityProviderError:
        return IdentityProviderError(f"{endpoint}: HTTP {response.status}")
    error = doc.get("error")
    if not isinstance(error, str):
        return IdentityProviderError(f"{endpoint}: HTTP {response.status}")
    description = doc.get("error_description")
    return OAuthError(endpoint, error, description if isinstance(description, str) else "")


def parse_token_response(endpoint: str, response: HttpResponse) -> TokenResponse:
    if response.status != 200:
        raise oauth_error(endpoint, response)
    doc = response.json(endpoint)
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise IdentityProviderError(f"{endpoint}: response has no access_token")
    if str(doc.get("token_type", "")).lower() not in ("bearer", "dpop"):
        raise IdentityProviderError(f"{endpoint}: unsupported token_type {doc.get('token_type')!r}")
    expires_in = doc.get("expires_in")
    refresh = doc.get("refresh_token")
    scope = doc.get("scope")
    return TokenResponse(token, float(expires_in) if isinstance(expires_in, (int, float)) else None,
                         refresh if isinstance(refresh, str) else None, scope if isinstance(scope, str) else None)


def parse_device_authorization(endpoint: str, response: HttpResponse) -> DeviceAuthorization:
    if response.status != 200:
        raise oauth_error(endpoint, response)
    doc = response.json(endpoint)
    try:
        return DeviceAuthorization(
            device_code=_string(doc, "device_code"), user_code=_string(doc, "user_code"),
            verification_uri=_string(doc, "verification_uri"),
            verification_uri_complete=doc.get("verification_uri_complete"),
            expires_in=float(doc["expires_in"]), interval=float(doc.get("interval", 5)))
    except (KeyError, TypeError, ValueError):
        raise IdentityProviderError(f"{endpoint}: incomplete device authorization response") from None


def _string(doc: dict[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise TypeError(name)
    return value


async def request_token(http: HttpClient, endpoint: str, auth: ClientAuth, form: dict[str, str]) -> TokenResponse:
    fields, headers = auth.credentials(endpoint)
    return parse_token_response(endpoint, await post_form(http, endpoint, {**form, **fields}, headers))


async def device_authorization(http: HttpClient, endpoint: str, auth: ClientAuth,
                               scopes: tuple[str, ...]) -> DeviceAuthorization:
    fields, headers = auth.credentials(endpoint)
    form = {"scope": " ".join(scopes), **fields}
    return parse_device_authorization(endpoint, await post_form(http, endpoint, form, headers))


async def introspect(http: HttpClient, endpoint: str, auth: ClientAuth, token: str) -> dict[str, Any]:
    fields, headers = auth.credentials(endpoint)
    form = {"token": token, "token_type_hint": "access_token", **fields}
    response = await post_form(http, endpoint, form, headers)
    if response.status != 200:
        raise oauth_error(endpoint, response)
    return response.json(endpoint)


async def poll_device_token(http: HttpClient, endpoint: str, auth: ClientAuth,
                            authorization: DeviceAuthorization, who: str) -> TokenResponse:
    """Poll the token endpoint until the person approves the device code (RFC 8628 3.4-3.5);
    IdentityProviderError when they deny it or the code expires."""
    deadline = time.monotonic() + authorization.expires_in
    interval = authorization.interval
    form = {"grant_type": DEVICE_GRANT, "device_code": authorization.device_code}
    while True:
        try:
            return await request_token(http, endpoint, auth, form)
        except OAuthError as exc:
            if exc.error not in ("authorization_pending", "slow_down"):
                raise IdentityProviderError(f"device login for {who}: {exc}") from None
            interval += 5 if exc.error == "slow_down" else 0
        if time.monotonic() + interval > deadline:
            raise IdentityProviderError(f"device login for {who}: code expired")
        await asyncio.sleep(interval)
