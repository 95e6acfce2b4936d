"""`interceptor learn start | status | stop`: learn mode (interceptor.policy.learn), run by
the daemon (interceptor.modes); `interceptor policy suggest` then reads what was learned."""

from __future__ import annotations

import json
from typing import Any

import click

from interceptor.cli_support import call, duration, utc
from interceptor.control import ControlMethod
from interceptor.policy.learn import learn_seconds


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else utc(epoch)


def _run(run: dict[str, Any]) -> str:
    resources = ", ".join(run["resources"]) if run.get("resources") else "every resource"
    line = f"agent {run['agent']}  session {run['session']}  on {resources}  since {_when(run['started'])}"
    if "ended" in run:
        return f"{line}  ended {_when(run['ended'])} ({run['why']})"
    return f"{line}  until {_when(run['until']) if run.get('until') else 'stopped'}"


class _Duration(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = duration(str(value))
        try:
            return learn_seconds(seconds)
        except ValueError:
            self.fail(f"{value!r} is not a duration of at most 366 days: use 90s, 15m, 1h or 2d", param, ctx)


@click.group()
def learn() -> None:
    """Learn mode: an agent's operations that no rule allows are allowed and recorded, so
    that `interceptor policy suggest` can propose the narrowest policy for them.

    Explicit deny rules, approve rules, masks and the built-in refusals (dangerous SQL
    functions, statements the analyser cannot see into) still apply; other agents are
    untouched. Run it on a test or staging copy of the work when you can, and time-box it.
    """


@learn.command()
@click.option("--agent", required=True, help="Agent name from the policy.")
@click.option("--for", "seconds", type=_Duration(), default="1h", show_default=True,
              help="End by itself after this long (90s, 15m, 1h, 2d; at most 366d), or earlier with `learn stop`.")
@click.option("--resource", "resources", multiple=True, help="Learn only on this resource (repeatable) "
                                                             "[default: every resource].")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(ctx: click.Context, agent: str, seconds: float, resources: tuple[str, ...], as_json: bool) -> None:
    """Start learning AGENT's operations."""
    run = call(ctx, ControlMethod.LEARN_START, agent=agent, seconds=seconds, resources=list(resources) or None)
    click.echo(json.dumps(run) if as_json else f"learning: {_run(run)}")


@learn.command()
@click.option("--agent", required=True, help="Agent name from the policy.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stop(ctx: click.Context, agent: str, as_json: bool) -> None:
    """Stop learning AGENT's operations (the policy file alone decides again)."""
    run = call(ctx, ControlMethod.LEARN_STOP, agent=agent)
    click.echo(json.dumps(run) if as_json else f"stopped: {_run(run)}\n"
               f"next: interceptor policy suggest --agent {run['agent']} --session {run['session']} -o FILE")


@learn.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The agents being learned now, and the learn runs that ended (stopped or time ran out)."""
    data = call(ctx, ControlMethod.LEARN_STATUS)
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo("learning:" if data["learning"] else "learning: none")
    for run in data["learning"]:
        click.echo(f"  {_run(run)}")
    if data["ended"]:
        click.echo("ended:")
        for run in data["ended"]:
            click.echo(f"  {_run(run)}")
