"""The identity a flow carries: the validated claims, never the token itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """Claims of a validated access token that policy and audit may use.

    The raw token is deliberately absent: an Identity can be logged, shown by
    `interceptor status` and written to the audit trail without leaking it.
    """

    issuer: str
    subject: str
    client_id: str | None = None
    user_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    groups: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None
    expires_at: float | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def summary(self) -> dict[str, object]:
        """What audit records and status output hold about this identity."""
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "client_id": self.client_id,
            "groups": sorted(self.groups),
            "scopes": sorted(self.scopes),
            "jti": self.token_id,
            "expires_at": self.expires_at,
        }
