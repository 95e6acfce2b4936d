"""The daemon side of `interceptor approvals ...`: control-socket methods onto the broker.

The control server authenticates the caller and passes the Approver (local root by
SO_PEERCRED uid 0, or the Okta identity of the CLI's validated login token; None when
neither). Results are plain dicts; refusals are `{"error": message}`, never a traceback.
"""

from __future__ import annotations

from typing import Any

from interceptor.approvals.broker import ApprovalBroker
from interceptor.approvals.model import ApprovalError, Approver, StoreError
from interceptor.audit.event import AuditUnavailable

METHODS = ("approvals.list", "approvals.approve", "approvals.deny")


async def dispatch(broker: ApprovalBroker, method: str, params: dict[str, Any], approver: Approver | None) -> dict[str, Any]:
    try:
        if method == "approvals.list":
            requests = await broker.list(pending_only=bool(params.get("pending_only", True)))
            return {"requests": [request.to_dict() for request in requests]}
        if method not in METHODS:
            return {"error": f"unknown method {method!r}"}
        if approver is None:
            return {"error": "deciding a request needs an approver: run `interceptor login` (without --agent) or act as root"}
        request_id = str(params.get("request_id", ""))
        if method == "approvals.approve":
            decided = await broker.approve(request_id, approver, params.get("for_seconds"))
        else:
            decided = await broker.deny(request_id, approver, str(params.get("reason", "")))
        return {"request": decided.to_dict()}
    except (ApprovalError, StoreError, AuditUnavailable) as exc:
        return {"error": str(exc)}
