"""What goes upstream from a resource's credentials (interceptor.secrets: a mapping of
strings), for every protocol over HTTP:

- `token`: `Authorization: Bearer TOKEN` (RFC 6750 section 2.1), or the header the resource's
  `token_header` option names, with the token as its value (an API key header);
- `user` and `password`: `Authorization: Basic base64(user:password)` (RFC 7617 section 2);
  what a credentials file's one line `user:password` gives;
- `client_certificate` and `client_key`: paths of PEM files, the TLS client certificate and
  its key for the upstream connection (mTLS).

A token and a user are refused together (which would go up is ambiguous), and so is any
other key: a misspelt `tokne` must not send requests unauthenticated. Errors never quote a
value.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass

from interceptor.errors import Fault, InterceptorError
from interceptor.operations import Pairs

KEYS = frozenset({"token", "user", "password", "client_certificate", "client_key"})
_FIELD_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")  # RFC 9110 section 5.5, ASCII only


class CredentialsError(InterceptorError, ValueError):
    """The resource's credentials cannot be had or used for HTTP (answered 502); the message
    names keys, never values."""

    fault = Fault.ENFORCER
    status = 502


@dataclass(frozen=True, slots=True)
class UpstreamCredentials:
    """`headers`: sent with every request upstream (names lower-cased); `client_certificate`:
    (certificate PEM path, key PEM path) for TLS client authentication, None without."""

    headers: Pairs = ()
    client_certificate: tuple[str, str] | None = None


def upstream_credentials(credentials: Mapping[str, str], token_header: str | None = None) -> UpstreamCredentials:
    """The headers and client certificate `credentials` give; `token_header`: the header a
    token goes in instead of `Authorization: Bearer`. Raises CredentialsError for unknown
    keys, a half pair (user without password, certificate without key), a token beside a
    user, and values a header cannot carry (control characters, non-ASCII)."""
    unknown = sorted(set(credentials) - KEYS)
    if unknown:
        raise CredentialsError(f"credentials key(s) {', '.join(unknown)} are not used over HTTP (expected token, "
                               "user and password, client_certificate and client_key)")
    for one, other in (("user", "password"), ("client_certificate", "client_key")):
        if (one in credentials) != (other in credentials):
            raise CredentialsError(f"credentials give {one if one in credentials else other} without "
                                   f"{other if one in credentials else one}")
    if "token" in credentials and "user" in credentials:
        raise CredentialsError("credentials give both a token and a user: which one goes upstream is ambiguous")
    headers: Pairs = ()
    if "token" in credentials:
        token = _header_value("token", credentials["token"])
        headers = ((token_header.lower(), token),) if token_header else (("authorization", f"Bearer {token}"),)
    elif "user" in credentials:
        user, password = credentials["user"], credentials["password"]
        if ":" in user:
            raise CredentialsError("credentials user holds ':', which HTTP Basic cannot carry (RFC 7617)")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers = (("authorization", f"Basic {basic}"),)
    certificate = None
    if "client_certificate" in credentials:
        certificate = (credentials["client_certificate"], credentials["client_key"])
    return UpstreamCredentials(headers, certificate)


def _header_value(key: str, value: str) -> str:
    if not _FIELD_VALUE.fullmatch(value):
        raise CredentialsError(f"credentials {key} is empty or holds characters a header cannot carry (control "
                               "characters, non-ASCII, leading or trailing spaces)")
    return value
