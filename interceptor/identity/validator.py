"""Validate Okta access tokens (JWTs from a custom authorization server) into Identities.

Only asymmetric algorithms from an allow-list are accepted, whatever the token header says,
and the key must come from the issuer's own JWKS with a matching type: this is what stops
`alg: none`, HS256-with-the-public-key and keys of other issuers. PyJWT does the crypto.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from interceptor.identity.discovery import ProviderMetadata, check_issuer, discover, org_issuer
from interceptor.identity.errors import IdentityProviderError, InvalidToken
from interceptor.identity.http import HttpClient, HttpxClient
from interceptor.identity.jwks import DEFAULT_JWKS_POLICY, JwksClient, JwksPolicy
from interceptor.identity.model import Identity
from interceptor.identity.oauth import ClientAuth, introspect

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ACCEPTED_TYP = {"jwt", "at+jwt", "application/at+jwt", "application/jwt"}
TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
INTROSPECTION_CACHE_SIZE = 4096

__all__ = ["InvalidToken", "TokenValidator"]


def _segment(data: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed", f"token {what} is not base64url JSON") from None
    if not isinstance(doc, dict):
        raise InvalidToken("malformed", f"token {what} is not a JSON object")
    return doc


def _strings(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _shown(value: Any) -> str:
    """A claim's value for a message: strings and lists of strings as they are, at most 120
    characters; anything else by its type."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ", ".join(value) or "empty"
    elif isinstance(value, str):
        text = value or "empty"
    else:
        text = "missing" if value is None else f"a {type(value).__name__}"
    return text if len(text) <= 120 else text[:117] + "..."


def _when(exp: Any) -> str:
    """An exp claim (epoch s) as UTC ISO 8601 time, or what it is when not a number."""
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        try:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        except (OverflowError, OSError, ValueError):
            return str(exp)
    return _shown(exp)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class TokenValidator:
    """Validates access tokens of one issuer for one audience."""

    def __init__(self, issuer: str, audience: str, algorithms: Iterable[str] = ("RS256", "ES256"),
                 leeway: float = 30, max_token_bytes: int = 16384, groups_claim: str = "groups",
                 http: HttpClient | None = None, introspection: ClientAuth | None = None,
                 introspection_ttl: float = 30.0, jwks_policy: JwksPolicy = DEFAULT_JWKS_POLICY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.algorithms = tuple(algorithms)
        refused = [alg for alg in self.algorithms if alg not in ALLOWED_ALGORITHMS]
        if refused or not self.algorithms:
            raise ValueError(f"algorithms {refused or '[]'} not allowed: only asymmetric signatures "
                             f"({', '.join(sorted(ALLOWED_ALGORITHMS))})")
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience is required")
        if not 0 <= leeway <= 300:
            raise ValueError(f"leeway {leeway} out of range 0..300 seconds")
        self.issuer = check_issuer(issuer)
        self.audience = audience
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        self.groups_claim = groups_claim
        self.http = http or HttpxClient()
        self.introspection = introspection
        self.introspection_ttl = introspection_ttl
        self.jwks_policy = jwks_policy
        self.clock = clock
        self._metadata: ProviderMetadata | None = None
        self._discovery_failed: tuple[float, str] | None = None
        self._jwks: JwksClient | None = None
        self._discovering: asyncio.Lock = asyncio.Lock()
        self._introspected: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()

    async def metadata(self) -> ProviderMetadata:
        """The issuer's metadata, discovered once (retried on the next call after a failure)."""
        async with self._discovering:
            if self._metadata is None:
                failed = self._discovery_failed
                if failed is not None and self.clock() - failed[0] < self.jwks_policy.cooldown:
                    raise IdentityProviderError(failed[1])  # no discovery storm while the issuer is down
                try:
                    self._metadata = await discover(self.http, self.issuer)
                except IdentityProviderError as exc:
                    self._discovery_failed = (self.clock(), str(exc))
                    raise
                self._jwks = JwksClient(self._metadata.jwks_uri, self.http, self.jwks_policy, self.clock)
        return self._metadata

    @property
    def jwks(self) -> JwksClient | None:
        return self._jwks

    async def validate(self, token: str) -> Identity:
        """The Identity `token` proves, or InvalidToken saying why not (never quoting the token)."""
        header, claims = self._structure(token)
        alg = self._check_header(header)
        self._check_not_org_token(claims)
        try:
            await self.metadata()
            assert self._jwks is not None
            jwk = await self._jwks.key(header["kid"])
        except IdentityProviderError as exc:
            raise InvalidToken("keys_unavailable", f"cannot get the issuer's keys: {exc}") from None
        if jwk is None:
            raise InvalidToken("unknown_kid", f"key id {header['kid'][:64]!r} is not published by {self.issuer}")
        verified = self._verify(token, alg, jwk, claims)
        identity = self._identity(verified)
        if self.introspection is not None and not await self._active(token):
            raise InvalidToken("revoked", "the authorization server reports the token inactive (revoked)")
        return identity

    def _structure(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(token, str):
            raise InvalidToken("malformed", f"token must be a string, not {type(token).__name__}")
        if len(token.encode("utf-8", "replace")) > self.max_token_bytes:
            raise InvalidToken("too_large", f"token is larger than {self.max_token_bytes} bytes")
        parts = token.split(".")
        if len(parts) != 3:
            if len(parts) == 1 and len(token) >= 20 and TOKEN_CHARS.fullmatch(token):
                raise InvalidToken("opaque_token", "token is opaque, not a JWT: Okta's org authorization "
                                   "server issues those; use a custom authorization server")
            raise InvalidToken("malformed", "token is not a JWT (header.payload.signature)")
        return _segment(parts[0], "header"), _segment(parts[1], "payload")

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken("alg_not_allowed", f"algorithm {str(alg)[:20]!r} is not allowed "
                               f"(allowed: {', '.join(self.algorithms)})")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
            raise InvalidToken("wrong_type", f"token type {str(typ)[:40]!r} is not an access token")
        if "crit" in header:
            raise InvalidToken("malformed", "token header has unsupported critical extensions")
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise InvalidToken("unknown_kid", "token header names no key id (kid)")
        return str(alg)

    def _check_not_org_token(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") == org_issuer(self.issuer) != self.issuer:
            raise InvalidToken("opaque_token", "token comes from Okta's org authorization server, whose "
                               "tokens are opaque to resource servers; use a custom authorization server")

    def _verify(self, token: str, alg: str, jwk: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
        """The verified claims; InvalidToken naming the failed check. `claims` (unverified) only
        fill the message, and only once the signature held (PyJWT checks it before the claims)."""
        if jwk.get("kty") != KEY_TYPES[alg[:2]] or jwk.get("alg", alg) != alg or (
                alg in EC_CURVES and jwk.get("crv") != EC_CURVES[alg]):
            raise InvalidToken("alg_not_allowed", f"algorithm {alg} does not match key {jwk.get('kid')!r}")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            return jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "sub"], "strict_aud": False})
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(*self._reason(exc, claims)) from None
        except (jwt.PyJWKError, ValueError, TypeError):
            raise InvalidToken("bad_key", f"key {jwk.get('kid')!r} of {self.issuer} is unusable") from None

    def _reason(self, exc: jwt.InvalidTokenError, claims: dict[str, Any]) -> tuple[str, str]:
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "expired", f"token expired at {_when(claims.get('exp'))}"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "not_yet_valid", "token is not valid yet (nbf/iat in the future)"
        if isinstance(exc, jwt.InvalidIssuerError):
            return "wrong_issuer", f"iss is {_shown(claims.get('iss'))}, expected {self.issuer}"
        if isinstance(exc, jwt.InvalidAudienceError):
            return "wrong_audience", f"aud is {_shown(claims.get('aud'))}, expected {self.audience}"
        if isinstance(exc, jwt.InvalidSignatureError):
            return "bad_signature", "signature verification failed"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return "missing_claim", f"token lacks the required {exc.claim!r} claim"
        return "malformed", f"token is invalid: {type(exc).__name__}"

    def _identity(self, claims: dict[str, Any]) -> Identity:
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("exp"), (int, float)):
            raise InvalidToken("malformed", "sub must be a string and exp a number")
        scopes = _strings(claims["scp"]) if "scp" in claims else _strings(claims.get("scope"))
        return Identity(
            issuer=self.issuer, subject=claims["sub"],
            client_id=_optional_str(claims.get("cid")) or _optional_str(claims.get("client_id")),
            user_id=_optional_str(claims.get("uid")), scopes=scopes,
            groups=_strings(claims.get(self.groups_claim)), token_id=_optional_str(claims.get("jti")),
            expires_at=float(claims["exp"]))

    async def _active(self, token: str) -> bool:
        """Ask the introspection endpoint, caching answers briefly by the token's hash."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        cached = self._introspected.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        metadata = await self.metadata()
        if not metadata.introspection_endpoint:
            raise InvalidToken("keys_unavailable", f"{self.issuer} publishes no introspection endpoint")
        assert self.introspection is not None
        try:
            answer = await introspect(self.http, metadata.introspection_endpoint, self.introspection, token)
        except IdentityProviderError as exc:
            raise InvalidToken("introspection_failed", f"cannot check revocation: {exc}") from None
        active = answer.get("active") is True
        self._introspected[digest] = (now + self.introspection_ttl, active)
        while len(self._introspected) > INTROSPECTION_CACHE_SIZE:
            self._introspected.popitem(last=False)
        return active
