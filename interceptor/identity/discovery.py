"""Authorization server metadata (RFC 8414 / OpenID discovery) and issuer sanity checks."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from interceptor.identity.errors import IdentityConfigError, IdentityProviderError
from interceptor.identity.http import HttpClient, check_url, get_json, is_loopback

OKTA_DOMAINS = (".okta.com", ".oktapreview.com", ".okta-emea.com", ".okta-gov.com", ".okta.mil")


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    jwks_uri: str
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None


def check_issuer(issuer: str) -> str:
    """Validate an issuer URL from configuration, refusing Okta's org authorization server.

    The org server (issuer without /oauth2/...) issues access tokens that only Okta itself
    can validate; a custom authorization server issues JWTs with published keys.
    """
    parts = urllib.parse.urlsplit(issuer) if isinstance(issuer, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise IdentityConfigError(f"issuer {issuer!r} is not an https URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise IdentityConfigError(f"issuer {issuer!r} must use https (plain http only to loopback)")
    if parts.query or parts.fragment:
        raise IdentityConfigError(f"issuer {issuer!r} must not have a query or fragment")
    if parts.hostname.endswith(OKTA_DOMAINS) and not parts.path.startswith("/oauth2/"):
        raise IdentityConfigError(
            f"issuer {issuer!r} is Okta's org authorization server, whose access tokens cannot be "
            "validated outside Okta; use a custom authorization server (https://<org>/oauth2/<id>)")
    return issuer


def org_issuer(issuer: str) -> str:
    """The org authorization server's issuer on the same Okta host (scheme://host)."""
    parts = urllib.parse.urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}"


def parse_metadata(issuer: str, doc: dict[str, Any]) -> ProviderMetadata:
    """Check a metadata document really is the configured issuer's and extract endpoints."""
    if doc.get("issuer") != issuer:
        raise IdentityProviderError(
            f"discovery: metadata names issuer {doc.get('issuer')!r}, expected exactly {issuer!r}")
    urls: dict[str, str | None] = {}
    for name in ("jwks_uri", "token_endpoint", "device_authorization_endpoint",
                 "introspection_endpoint", "revocation_endpoint"):
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise IdentityProviderError(f"discovery: {name} is not a string")
            check_url(value, f"discovery {name}")
        urls[name] = value
    jwks_uri = urls["jwks_uri"]
    if not jwks_uri:
        raise IdentityProviderError(f"discovery: {issuer} publishes no jwks_uri")
    return ProviderMetadata(issuer, jwks_uri, urls["token_endpoint"], urls["device_authorization_endpoint"],
                            urls["introspection_endpoint"], urls["revocation_endpoint"])


async def discover(http: HttpClient, issuer: str) -> ProviderMetadata:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc, _ = await get_json(http, url, "discovery")
    return parse_metadata(issuer, doc)
