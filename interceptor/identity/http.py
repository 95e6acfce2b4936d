"""The HTTP client for the authorization server, on httpx.

The daemon makes a handful of requests a minute (discovery, keys, tokens). Plain http is only
allowed to loopback: tokens and client assertions must not cross a network in clear. TLS is
always verified, responses are capped at MAX_BODY, and every failure to get a response is an
IdentityProviderError.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from interceptor.identity.errors import IdentityConfigError, IdentityProviderError

MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self, what: str) -> dict[str, Any]:
        """Decode the body as a JSON object; `what` names it in the IdentityProviderError."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            raise IdentityProviderError(f"{what}: response is not JSON (HTTP {self.status})") from None
        if not isinstance(doc, dict):
            raise IdentityProviderError(f"{what}: response is not a JSON object (HTTP {self.status})")
        return doc


class HttpClient(Protocol):
    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        """Send one request; raise IdentityProviderError if no response arrives."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> urllib.parse.SplitResult:
    """Refuse URLs that would send credentials in clear or are not URLs at all."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise IdentityProviderError(f"{what}: {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise IdentityProviderError(f"{what}: {url!r} must use https (plain http only to loopback)")
    return parts


class HttpxClient:
    """HttpClient on httpx: one AsyncClient (one connection) per request, as the requests are
    few and far apart; nothing pooled outlives an event loop. No proxy or certificate settings
    are taken from the environment. `timeout` is seconds per connect, read or write.

    Raises IdentityConfigError for an SSL context that would not verify the server."""

    def __init__(self, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or ssl.create_default_context()
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            raise IdentityConfigError("the authorization server's TLS certificate and host name must be verified")
        self.timeout = httpx.Timeout(timeout)
        self.ssl_context = context

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        check_url(url, "request")
        what = f"{method} {url}"
        sent = {"accept": "application/json", "accept-encoding": "identity", **(headers or {})}
        try:
            async with httpx.AsyncClient(verify=self.ssl_context, timeout=self.timeout, trust_env=False) as client:
                async with client.stream(method, url, content=body, headers=sent) as response:
                    data = await _read_capped(response, what)
                    return HttpResponse(response.status_code, {k.lower(): v for k, v in response.headers.items()}, data)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise IdentityProviderError(f"{what}: {type(exc).__name__}: {exc}") from None


async def _read_capped(response: httpx.Response, what: str) -> bytes:
    """The body, refused once it passes MAX_BODY bytes."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > MAX_BODY:
            raise IdentityProviderError(f"{what}: response larger than {MAX_BODY} bytes")
    return bytes(data)


async def get_json(http: HttpClient, url: str, what: str) -> tuple[dict[str, Any], HttpResponse]:
    """GET a JSON document, demanding HTTP 200."""
    response = await http.request("GET", url)
    if response.status != 200:
        raise IdentityProviderError(f"{what}: GET {url} answered HTTP {response.status}")
    return response.json(what), response


async def post_form(http: HttpClient, url: str, form: Mapping[str, str],
                    headers: Mapping[str, str] | None = None) -> HttpResponse:
    body = urllib.parse.urlencode(form).encode()
    return await http.request("POST", url, body=body, headers={
        "content-type": "application/x-www-form-urlencoded", **(headers or {})})
