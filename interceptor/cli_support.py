"""What every CLI command group shares: calling the daemon over the control socket, and
printing text an agent chose where a person reads it.

A group finds its control client in `ctx.obj["control"]` (set by `interceptor.cli.main`, or by
a test that invokes the group alone), an object with `call(method, **params)`.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import click

from interceptor.control import ControlError, ControlMethod


def call(ctx: click.Context, method: ControlMethod, **params: Any) -> Any:
    """The daemon's answer to `method`; a click.ClickException (exit status 1 with the
    daemon's message) when there is no control connection or the daemon refuses."""
    client = (ctx.obj or {}).get("control")
    if client is None:
        raise click.ClickException("no control connection to the interceptor daemon")
    try:
        return client.call(method, **params)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from exc


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float | None:
    """Seconds of a duration written `90s`, `15m`, `2h` or `7d`; None when `text` is not one."""
    match = _DURATION.match(text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def utc(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC to the second: `2026-11-30T14:55:02Z`."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def escaped(text: str) -> str:
    """`text` with every character that is not printable written as a Python escape (`\\x1b`,
    `\\x9b`, `\\u202e`): C0 and C1 controls, DEL, ESC, Unicode format characters (bidi
    overrides, zero-width ones), separators other than the space, unassigned and private-use
    code points (str.isprintable); and a backslash as `\\\\`, so the escaping is one-to-one (a
    real newline reads `\\n`, a typed backslash-n `\\\\n`). Text an agent supplied cannot move
    a reader's cursor, erase or reorder what the terminal shows, nor pass for other text."""
    return "".join(char if char.isprintable() and char != "\\" else repr(char)[1:-1] for char in text)
