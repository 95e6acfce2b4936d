"""What every CLI command group shares: calling the daemon over the control socket.

A group finds its control client in `ctx.obj["control"]` (set by `interceptor.cli.main`, or by
a test that invokes the group alone), an object with `call(method, **params)`.
"""

from __future__ import annotations

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
