"""`interceptor policy shadow [start] --agent NAME FILE | stop | status | report`: a candidate
policy judged beside the enforced one on live traffic (interceptor.policy.shadow), run by the
daemon (interceptor.modes); `report` summarises what the trail recorded of it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from interceptor.cli_support import call
from interceptor.control import ControlMethod
from interceptor.policy.shadow_report import report


class _StartByDefault(click.Group):
    """A group whose first argument, when it names no command, is `start`'s: `policy shadow
    --agent A FILE` is `policy shadow start --agent A FILE`."""

    default_command = "start"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_StartByDefault)
def shadow() -> None:
    """Try a candidate policy on live traffic before enforcing it.

    `interceptor policy shadow --agent NAME FILE` judges NAME's operations by FILE too (it
    decides nothing): every record of NAME then says what FILE would have decided, and
    where the two disagree, why (`operation.shadow`). `policy shadow report` summarises it.
    """


@shadow.command()
@click.option("--agent", required=True, help="Agent name from the enforced policy (FILE must name it too).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(ctx: click.Context, agent: str, file: Path, as_json: bool) -> None:
    """Judge AGENT's operations by FILE too (replacing a shadow run of AGENT)."""
    run = call(ctx, ControlMethod.SHADOW_START, agent=agent, path=str(file.resolve()))
    click.echo(json.dumps(run) if as_json else
               f"shadowing agent {run['agent']} with policy {run['version']} ({run['path']}), session "
               f"{run['session']}\nsee: interceptor policy shadow report --session {run['session']}")


@shadow.command()
@click.option("--agent", required=True, help="Agent name.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stop(ctx: click.Context, agent: str, as_json: bool) -> None:
    """End AGENT's shadow run."""
    run = call(ctx, ControlMethod.SHADOW_STOP, agent=agent)
    click.echo(json.dumps(run) if as_json else f"shadow run {run['session']} of agent {run['agent']} ended")


@shadow.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The shadow runs now: agent, session, candidate version and file, and whether the
    candidate was too slow to be asked any more."""
    runs = call(ctx, ControlMethod.SHADOW_STATUS)
    if as_json:
        click.echo(json.dumps(runs))
        return
    if not runs:
        click.echo("no shadow run")
    for run in runs:
        slow = f"  too slow ({run['too_slow_ms']} ms): no longer asked" if run.get("too_slow_ms") else ""
        click.echo(f"agent {run['agent']}  session {run['session']}  policy {run['version']}  {run['path']}{slow}")


shadow.add_command(report)
