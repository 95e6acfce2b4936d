"""A small async HTTP/1.1 client on the stdlib, for talking to the authorization server.

The daemon makes a handful of requests a minute (discovery, keys, tokens), so a blocking
`http.client` call in a worker thread is plenty and adds no dependency. Plain http is only
allowed to loopback: tokens and client assertions must not cross a network in clear.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from interceptor.identity.errors import IdentityProviderError

MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self, what: str) -> Any:
        """Decode the body as a JSON object; `what` names it in the error."""
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


class StdlibHttp:
    """HttpClient on http.client, one connection per request, run in a thread."""

    def __init__(self, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        return await asyncio.to_thread(self._request, method, url, body, dict(headers or {}))

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> HttpResponse:
        parts = check_url(url, "request")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request(method, target, body=body, headers={"accept": "application/json", **headers})
            response = conn.getresponse()
            data = response.read(MAX_BODY + 1)
            if len(data) > MAX_BODY:
                raise IdentityProviderError(f"{method} {url}: response larger than {MAX_BODY} bytes")
            return HttpResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        except (OSError, http.client.HTTPException) as exc:
            raise IdentityProviderError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()


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
