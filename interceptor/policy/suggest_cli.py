"""`interceptor policy suggest --agent NAME`: the least-privilege policy for what NAME did while
learning, read from the audit trail (interceptor.policy.suggest makes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from interceptor.audit import Query
from interceptor.audit.cli import TimeArg, cli_settings, opened_store, store_option
from interceptor.cli_support import escaped
from interceptor.control import ControlError, ControlMethod
from interceptor.policy.loader import PolicyError, load_policy_text
from interceptor.policy.suggest import SuggestError, suggest


def _running_policy(ctx: click.Context) -> tuple[str, str] | None:
    """The running daemon's policy: (the file it was loaded from, its version); None when no
    daemon answers."""
    client = (ctx.find_root().obj or {}).get("control")
    if client is None:
        return None
    try:
        policy = client.call(ControlMethod.STATUS)["policy"]
    except ControlError:
        return None
    return str(policy["path"]), str(policy["version"])


def _version(text: str, name: str) -> str | None:
    """The version of the policy `text`; None when it does not load (suggest says why)."""
    try:
        return load_policy_text(text, name).version
    except PolicyError:
        return None


def tests_path(output: Path) -> Path:
    """The tests file written beside the policy file `output`: `<stem>.tests.yaml`."""
    return output.with_name(f"{output.stem}.tests.yaml")


@click.command("suggest")
@click.option("--agent", metavar="NAME", required=True, help="The agent that learned (a name of the base policy).")
@click.option("--since", type=TimeArg(), help="Only records from this time (epoch, ISO 8601 or an age: 2h).")
@click.option("--until", type=TimeArg(), help="Only records before this time.")
@click.option("--session", metavar="ID", help="Only this learn session's records (default: every session).")
@click.option("--policy", "base", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Base policy [default: the file the running daemon loaded its policy from; without a "
                   "daemon, the settings' policy].")
@click.option("--effect", type=click.Choice(["approve", "allow"]), default="approve", show_default=True,
              help="Effect of the suggested rules.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Policy file to write, its tests beside it as <stem>.tests.yaml [default: the policy on stdout].")
@store_option
@click.pass_context
def suggest_command(ctx: click.Context, agent: str, since: float | None, until: float | None, session: str | None,
                    base: Path | None, effect: str, output: Path | None, store: str | None) -> None:
    """Write the smallest policy that allows what NAME did while learning: the base policy without
    its grants of NAME on the learned resources, plus approve rules by default (what a base
    approve rule held stays approve), with a tests file of cases drawn from what happened; both
    are checked before they are written."""
    running = _running_policy(ctx) if base is None else None
    base = base or (Path(running[0]) if running else cli_settings().policy)
    try:
        base_text = base.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the base policy {base}: {exc}") from exc
    if running is not None and _version(base_text, str(base)) != running[1]:
        click.echo(f"warning: {base} changed since the daemon loaded it (running version {running[1]}); the "
                   "suggestion is based on the file as it is now", err=True)
    elif running is None and ctx.params.get("base") is None:
        click.echo(f"note: no daemon answers; the base is the settings' policy {base} (give --policy FILE)", err=True)
    with opened_store(store) as opened:
        events: list[Any] = [record.event for _, record in opened.search(Query(agent=agent, since=since, until=until))]
        # the learn-start records say what each session learned; they may precede the window
        events += [record.event for _, record in opened.search(Query(agent=agent, kind="policy"))]
    name = output.name if output is not None else "suggested.yaml"
    try:
        made = suggest(events, base_text, str(base), agent, effect=effect, session=session, policy_name=name)
    except SuggestError as exc:  # it may quote what the agent sent (a case's reason): escaped, line by line
        raise click.ClickException("\n".join(escaped(line) for line in str(exc).splitlines())) from exc
    summary = f"{made.used} records used, {sum(made.skipped.values())} skipped"
    if output is None:
        click.echo(made.policy, nl=False)
        click.echo(f"policy suggest: {summary}; tests not written (give -o FILE to write FILE and its "
                   f"<stem>.tests.yaml)", err=True)
        return
    tests = tests_path(output)
    try:
        output.write_text(made.policy, encoding="utf-8")
        tests.write_text(made.tests, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename}: {exc.strerror}") from exc
    click.echo(f"policy suggest: {summary}; wrote {output} and its tests {tests} "
               f"(check: interceptor policy test {tests})", err=True)
