"""A person's sign-in for the CLI (`interceptor login` without --agent), so approvals are
decided by an Okta identity the daemon checks, not by whoever can reach the socket.

The CLI runs the device flow itself and keeps the access token in the person's config
directory (mode 0600); it sends it with approve/deny, and the daemon validates it against
the approvals issuer before trusting the subject and groups in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from interceptor.identity.discovery import discover
from interceptor.identity.errors import IdentityConfigError, IdentityProviderError
from interceptor.identity.http import HttpxClient
from interceptor.identity.model import Identity
from interceptor.identity.oauth import PublicClient, device_authorization, poll_device_token
from interceptor.identity.validator import TokenValidator

DEFAULT_SCOPES = ("openid", "offline_access")


def token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "interceptor" / "approver-token"


def read_token() -> str | None:
    try:
        return token_path().read_text().strip() or None
    except OSError:
        return None


def _settings(approvals: Mapping[str, Any]) -> tuple[str, str, str, tuple[str, ...]]:
    missing = [k for k in ("issuer", "audience", "client_id") if not approvals.get(k)]
    if missing:
        raise IdentityConfigError(f"approver sign-in needs approvals.{', approvals.'.join(missing)} in the daemon "
                                  "settings (the Okta authorization server and a Native app with device flow)")
    return (approvals["issuer"], approvals["audience"], approvals["client_id"],
            tuple(approvals.get("scopes") or DEFAULT_SCOPES))


def validator_for(approvals: Mapping[str, Any]) -> TokenValidator:
    issuer, audience, _, _ = _settings(approvals)
    return TokenValidator(issuer, audience, groups_claim=approvals.get("groups_claim", "groups"))


async def sign_in(approvals: Mapping[str, Any], show: Callable[[dict[str, Any]], None]) -> Identity:
    """Device flow for a person; stores the validated token for later CLI calls."""
    issuer, audience, client_id, scopes = _settings(approvals)
    http = HttpxClient()
    metadata = await discover(http, issuer)
    if not metadata.device_authorization_endpoint or not metadata.token_endpoint:
        raise IdentityProviderError(f"{issuer} offers no device authorization grant")
    client = PublicClient(client_id)
    authorization = await device_authorization(http, metadata.device_authorization_endpoint, client, scopes)
    show({"user_code": authorization.user_code, "verification_uri": authorization.verification_uri,
          "verification_uri_complete": authorization.verification_uri_complete,
          "expires_in": authorization.expires_in})
    response = await poll_device_token(http, metadata.token_endpoint, client, authorization, "the CLI")
    identity = await TokenValidator(issuer, audience, http=http,
                                    groups_claim=approvals.get("groups_claim", "groups")).validate(response.access_token)
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(response.access_token)
    return identity
