"""The daemon side of `interceptor approvals ...`: the control socket's approvals methods,
typed, onto the broker.

Who decides comes from `approver(peer, token)` (ApproverCheck in the daemon): the Okta
identity of the CLI's validated sign-in token; else local root (SO_PEERCRED uid 0), recorded
as break-glass; else nobody, who may list requests but not decide them. Refusals raise
ApprovalError (StoreError, AuditUnavailable when the stores fail); the control server answers
any of them as `{"error": message}`, never a traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from interceptor.approvals.broker import ApprovalBroker
from interceptor.approvals.model import ApprovalError, Approver
from interceptor.control import ControlMethod, Method, Peer
from interceptor.identity.approver import validator_for
from interceptor.identity.validator import TokenValidator

NO_APPROVER = "deciding a request needs an approver: run `interceptor login` (without --agent) or act as root"

ApproverOf = Callable[[Peer, str | None], Awaitable[Approver | None]]


class ApproverCheck:
    """Who decides, from the caller and the sign-in token its CLI sent. `settings` is the
    daemon's `approvals:` section (issuer, audience, groups_claim)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self._validator: TokenValidator | None = None

    async def __call__(self, peer: Peer, token: str | None) -> Approver | None:
        """The Okta approver of a valid token (InvalidToken, IdentityConfigError otherwise);
        without a token, local root as break-glass, or None."""
        if token:
            if self._validator is None:
                self._validator = validator_for(self.settings)
            identity = await self._validator.validate(token)
            return Approver("okta", identity.subject, frozenset(identity.groups))
        return Approver("root", f"root@{socket.gethostname()}") if peer.uid == 0 else None


class ApprovalControl:
    """`approvals.list`, `approvals.approve` and `approvals.deny` on `broker`."""

    def __init__(self, broker: ApprovalBroker, approver: ApproverOf) -> None:
        self.broker = broker
        self.approver = approver

    def methods(self) -> dict[ControlMethod, Method]:
        """The control methods this serves, by name."""
        return {ControlMethod.APPROVALS_LIST: self.requests, ControlMethod.APPROVALS_APPROVE: self.approve,
                ControlMethod.APPROVALS_DENY: self.deny}

    async def requests(self, peer: Peer, pending_only: bool = True) -> dict[str, Any]:
        """{"requests": [ApprovalRequest.to_dict(), ...]}: the pending ones, or all of them."""
        requests = await self.broker.list(pending_only=pending_only)
        return {"requests": [request.to_dict() for request in requests]}

    async def approve(self, peer: Peer, request_id: str, for_seconds: int | None = None,
                      token: str | None = None) -> dict[str, Any]:
        """Approve a held operation, and identical ones for `for_seconds` when given:
        {"request": ApprovalRequest.to_dict()}."""
        decided = await self.broker.approve(str(request_id), await self._decider(peer, token), for_seconds)
        return {"request": decided.to_dict()}

    async def deny(self, peer: Peer, request_id: str, reason: str, token: str | None = None) -> dict[str, Any]:
        """Deny a held operation, telling the requester why: {"request": ApprovalRequest.to_dict()}."""
        decided = await self.broker.deny(str(request_id), await self._decider(peer, token), str(reason))
        return {"request": decided.to_dict()}

    async def _decider(self, peer: Peer, token: str | None) -> Approver:
        """The caller as an approver; ApprovalError when it is nobody who may decide."""
        approver = await self.approver(peer, token)
        if approver is None:
            raise ApprovalError(NO_APPROVER)
        return approver
