"""`interceptor approvals list | approve ID [--for 15m] | deny ID --reason TEXT`.

Commands talk to the daemon through `ctx.obj["control"]`, a control-socket client with
`call(method, **params) -> dict`; the daemon's broker decides and says who may.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import click

from interceptor.cli_support import call, escaped
from interceptor.control import ControlMethod
from interceptor.identity.approver import read_token

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HEADER = ("ID", "STATE", "EXPIRES", "AGENT", "REQUESTER", "RESOURCE", "RULE", "OPERATION")


def parse_duration(text: str) -> int:
    """'90s', '15m', '2h', '1d' or plain seconds, as seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} is not a positive duration like 90s, 15m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _operation(operation: dict[str, Any]) -> str:
    """The held operation on one line, whole (what is cut cannot be judged) and escaped: its
    kind, then its fields' values; an agent's control characters are shown as `\\x1b`."""
    shown = {k: v for k, v in operation.items() if k not in ("kind", "search_path") and v not in (None, "")}
    text = " ".join(str(v) for v in shown.values())
    if operation.get("search_path") is not None:
        text += f" (search_path {operation['search_path']})"
    return escaped(f"{operation.get('kind')}: {text}")


def _decision(request: dict[str, Any]) -> str:
    """How a decided request ended: 'approved by bob@example.com', 'denied by bob: not now',
    'withdrawn: the client cancelled the statement', 'expired: no decision before ...'."""
    text = str(request["state"]) + (f" by {request['approver']}" if request.get("approver") else "")
    return escaped(text + (f": {request['decision_reason']}" if request.get("decision_reason") else ""))


@click.group("approvals")
def approvals() -> None:
    """Just-in-time approval of held operations."""


@approvals.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Include decided, expired and withdrawn requests, each with how it ended.")
@click.option("--json", "as_json", is_flag=True, help="Print the requests as JSON.")
@click.pass_context
def list_requests(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Requests waiting for a decision (or all of them; a decided one has a second line
    saying how it ended, e.g. 'withdrawn: the client cancelled the statement'). Every cell is
    shown whole, columns as wide as their widest cell, control characters escaped."""
    requests = call(ctx, ControlMethod.APPROVALS_LIST, pending_only=not show_all)["requests"]
    if as_json:
        click.echo(json.dumps(requests, indent=2, sort_keys=True))
        return
    if not requests:
        click.echo("no pending approval requests" if not show_all else "no approval requests")
        return
    rows = [_row(r) for r in requests]
    widths = [max(len(row[column]) for row in [_HEADER, *rows]) for column in range(len(_HEADER) - 1)]
    for row, request in zip([_HEADER, *rows], [None, *requests], strict=True):
        click.echo("  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]))
        if request is not None and request["state"] != "pending":
            click.echo(f"{'':10}{_decision(request)}")


def _row(request: dict[str, Any]) -> tuple[str, ...]:
    """One request's cells, whole and escaped (columns are as wide as their widest cell)."""
    requester = request["requester_user"] or request["requester"] or "-"
    cells = (request["request_id"], request["state"], _when(request["expires_at"]), request["agent"], requester,
             request["resource"], request["rule"])
    return (*(escaped(str(cell)) for cell in cells), _operation(request["operation"]))


@approvals.command("approve")
@click.argument("request_id")
@click.option("--for", "duration", metavar="DURATION", help="Also allow identical operations for this long (e.g. 15m).")
@click.pass_context
def approve(ctx: click.Context, request_id: str, duration: str | None) -> None:
    """Approve a held operation."""
    for_seconds = parse_duration(duration) if duration is not None else None
    request = call(ctx, ControlMethod.APPROVALS_APPROVE, request_id=request_id, for_seconds=for_seconds,
                    token=read_token())["request"]
    until = f" (identical operations allowed until {_when(request['granted_until'])})" if request["granted_until"] else ""
    glass = " as break-glass root" if request["break_glass"] else ""
    click.echo(escaped(f"approved {request['request_id']}{glass}{until}"))


@approvals.command("deny")
@click.argument("request_id")
@click.option("--reason", required=True, help="Why; recorded in the audit log and sent to the requester.")
@click.pass_context
def deny(ctx: click.Context, request_id: str, reason: str) -> None:
    """Deny a held operation."""
    request = call(ctx, ControlMethod.APPROVALS_DENY, request_id=request_id, reason=reason,
                    token=read_token())["request"]
    click.echo(escaped(f"denied {request['request_id']}: {request['decision_reason']}"))
