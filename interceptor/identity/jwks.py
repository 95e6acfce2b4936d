"""The issuer's signing keys: cached per Cache-Control, refetched on an unknown kid at most
once per cooldown (single-flight), and kept for a bounded time while the endpoint is down.

`KeyCache` holds the decisions and takes the clock as an argument (sans-IO); `JwksClient`
adds the fetching.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from interceptor.identity.errors import IdentityProviderError
from interceptor.identity.http import HttpClient, get_json

log = logging.getLogger(__name__)

MAX_AGE_RE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*\"?(\d+)\"?", re.I)


@dataclass(frozen=True, slots=True)
class JwksPolicy:
    default_max_age: float = 300.0  # when the response says nothing
    min_max_age: float = 30.0  # never trust a shorter lifetime (no refetch storm on max-age=0)
    max_max_age: float = 86400.0
    cooldown: float = 30.0  # least time between two fetches triggered by unknown kids
    stale_bound: float = 3600.0  # how long past expiry the last good keys stay usable on failures


DEFAULT_JWKS_POLICY = JwksPolicy()


def max_age(cache_control: str | None, policy: JwksPolicy) -> float:
    """Seconds a JWKS response may be reused, clamped to the policy's bounds."""
    if cache_control and re.search(r"(^|,)\s*(no-store|no-cache)\s*(,|$)", cache_control, re.I):
        return policy.min_max_age
    found = MAX_AGE_RE.findall(cache_control or "")
    seconds = float(found[0][1]) if found else policy.default_max_age
    return min(max(seconds, policy.min_max_age), policy.max_max_age)


def parse_jwks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Signing keys by kid; keys without a kid or meant for encryption are left out."""
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise IdentityProviderError("jwks: document has no 'keys' list")
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        if isinstance(key, dict) and isinstance(key.get("kid"), str) and key.get("use", "sig") == "sig":
            if any(name in key for name in ("d", "p", "q", "k")):
                raise IdentityProviderError(f"jwks: key {key['kid']!r} holds private or secret material")
            found[key["kid"]] = key
    return found


class KeyCache:
    """What keys are known, until when they are fresh, and whether a fetch is due."""

    def __init__(self, policy: JwksPolicy) -> None:
        self.policy = policy
        self.keys: dict[str, dict[str, Any]] = {}
        self.fresh_until = 0.0
        self.usable_until = 0.0
        self.last_attempt: float | None = None

    def accept(self, keys: dict[str, dict[str, Any]], cache_control: str | None, now: float) -> None:
        self.keys = keys
        self.fresh_until = now + max_age(cache_control, self.policy)
        self.usable_until = self.fresh_until + self.policy.stale_bound
        self.last_attempt = now

    def failed(self, now: float) -> None:
        self.last_attempt = now

    def lookup(self, kid: str, now: float) -> dict[str, Any] | None:
        return self.keys.get(kid) if now < self.usable_until else None

    def fetch_due(self, kid: str, now: float) -> bool:
        """Fetch when stale, or for an unknown kid once the cooldown since the last attempt is over."""
        cooled = self.last_attempt is None or now - self.last_attempt >= self.policy.cooldown
        return cooled and (now >= self.fresh_until or kid not in self.keys)


class JwksClient:
    """Keys of one issuer, fetched from its jwks_uri with a single fetch in flight at a time."""

    def __init__(self, uri: str, http: HttpClient, policy: JwksPolicy = DEFAULT_JWKS_POLICY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self.http = http
        self.clock = clock
        self.cache = KeyCache(policy)
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK for `kid`, or None if the issuer does not publish it.

        Raises IdentityProviderError when no usable keys are left at all (fail closed).
        """
        if self.cache.fetch_due(kid, self.clock()):
            await self._refresh()
        key = self.cache.lookup(kid, self.clock())
        if key is None and self.clock() >= self.cache.usable_until:
            raise IdentityProviderError(f"jwks: no usable keys from {self.uri}")
        return key

    async def _refresh(self) -> None:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear)
        try:
            await asyncio.shield(self._inflight)
        except IdentityProviderError as exc:
            log.warning("%s", exc)

    def _clear(self, _: asyncio.Future[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            doc, response = await get_json(self.http, self.uri, "jwks")
            keys = parse_jwks(doc)
        except IdentityProviderError:
            self.cache.failed(self.clock())
            raise
        self.cache.accept(keys, response.headers.get("cache-control"), self.clock())
