"""`interceptor policy diff CURRENT SUGGESTED`: the privilege CURRENT grants that was never
used, and what was used that CURRENT refuses (the logic is interceptor.policy.diff)."""

from __future__ import annotations

import json

import click

from interceptor.cli_support import escaped
from interceptor.policy.diff import AgentDiff, GrantUse, Use, definitions, diff
from interceptor.policy.loader import PolicyError, load_policy
from interceptor.policy.model import Policy

EXIT_REFUSED = 1
EXIT_ERROR = 2


def _load(path: str, which: str) -> Policy:
    try:
        return load_policy(path)
    except (PolicyError, OSError) as exc:
        click.echo(f"{which} {path}: {exc}", err=True)
        raise SystemExit(EXIT_ERROR) from exc


@click.command("diff")
@click.argument("current", type=click.Path(dir_okay=False))
@click.argument("suggested", type=click.Path(dir_okay=False))
@click.option("--agent", help="Only this agent of SUGGESTED [default: each of its agents].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def diff_command(current: str, suggested: str, agent: str | None, as_json: bool) -> None:
    """What CURRENT grants that was never used, and what was used that CURRENT refuses.

    "Used" is the grants of SUGGESTED (its allow and approve rules; `interceptor policy
    suggest` writes them from the audit trail), each read as exact values: every kind on
    every table with its columns, function, command, verb on resource in namespace... CURRENT
    judges each as the engine would; a rule's identity and process conditions count as met.

    Sections: "unused grants in CURRENT" (allow/approve rules about the agent that decided
    no use: never used; or partly used: the kinds, tables matching a glob, columns... left
    over), "used but not allowed by CURRENT", "allowed in one, approved in the other", and
    the grants SUGGESTED keeps exactly as CURRENT has them (`policy suggest` keeps those of
    resources it did not learn: nothing tells whether they were used).

    First, the resources and agents SUGGESTED defines otherwise than CURRENT (addresses,
    credentials, options; cgroups, uids, identity), and the deny and mask rules of CURRENT it
    drops or changes: loading it would change where connections go, who is which agent, or
    refuse or mask less, which a suggestion never should.

    Exit status: 0 when CURRENT allows or approves everything used, whatever it grants
    beyond (the unused grants are listed, not counted), and both define the same resources
    and agents; 1 when CURRENT denies something used or the definitions differ; 2 when a file cannot be loaded, SUGGESTED does not name --agent, or the command
    line is wrong.
    """
    current_policy = _load(current, "CURRENT")
    suggested_policy = _load(suggested, "SUGGESTED")
    if agent is not None and agent not in suggested_policy.agents:
        click.echo(f"SUGGESTED {suggested} names no agent {agent!r}", err=True)
        raise SystemExit(EXIT_ERROR)
    agents = [agent] if agent is not None else list(suggested_policy.agents)
    diffs = [diff(current_policy, suggested_policy, name) for name in agents]
    refused = sum(len(d.refused) for d in diffs)
    changed = definitions(current_policy, suggested_policy)
    if as_json:
        click.echo(json.dumps({
            "current": {"path": current, "version": current_policy.version},
            "suggested": {"path": suggested, "version": suggested_policy.version},
            "refused": refused, "definitions": changed, "agents": [d.to_dict() for d in diffs]}, sort_keys=True))
    else:
        click.echo(f"CURRENT {escaped(current)} (version {current_policy.version}), "
                   f"SUGGESTED {escaped(suggested)} (version {suggested_policy.version})")
        if changed:
            click.echo("\nresources, agents, deny and mask rules SUGGESTED defines otherwise (check before "
                       "loading it):")
            for line in changed:
                click.echo(f"  {escaped(line)}")
        for agent_diff in diffs:
            _print(agent_diff)
    if refused or changed:
        raise SystemExit(EXIT_REFUSED)


def _print(result: AgentDiff) -> None:
    unused = [g for g in result.grants if g.status in ("unused", "partly used")]
    click.echo(f"\nagent {escaped(result.agent)}: {len(result.uses)} operations used, "
               f"{len(result.refused)} refused by CURRENT, {len(unused)} of {len(result.grants)} grants "
               "not fully used")
    click.echo("\nunused grants in CURRENT:")
    for grant in sorted(unused, key=lambda g: g.status != "unused"):
        _print_grant(grant)
    if not unused:
        click.echo("  (none)")
    click.echo("\nused but not allowed by CURRENT:")
    for use in result.refused:
        click.echo(f"  {_use(use)} (SUGGESTED {use.effect}s it by rule {escaped(use.grant)}): denied by "
                   f"{escaped(use.rule)}: {escaped(use.reason)}")
    if not result.refused:
        click.echo("  (none)")
    if result.differs:
        click.echo("\nallowed in one, approved in the other:")
        for use in result.differs:
            click.echo(f"  {_use(use)}: SUGGESTED {use.effect}s it (rule {escaped(use.grant)}), CURRENT "
                       f"{use.verdict}s it (rule {escaped(use.rule)})")
    for status, title in (("used", "fully used grants in CURRENT"),
                          ("kept", "grants SUGGESTED keeps as they are (not learned: no telling whether used)")):
        names = [g.rule for g in result.grants if g.status == status]
        if names:
            click.echo(f"\n{title}: {escaped(', '.join(names))}")
    for note in result.skipped:
        click.echo(f"not compared: {escaped(note)}")


def _print_grant(grant: GrantUse) -> None:
    click.echo(f"  {escaped(grant.rule)} ({grant.effect}): {escaped(grant.grants)}")
    if grant.kept_on:
        click.echo(f"      kept on {escaped(', '.join(grant.kept_on))} (not learned: no telling whether used there)")
    if not grant.uses:
        click.echo("      never used" + (" elsewhere" if grant.kept_on else ""))
        return
    click.echo(f"      partly used: {'; '.join(sorted({escaped(u.what) for u in grant.uses}))}")
    for leftover in grant.leftover:
        click.echo(f"      unused: {escaped(leftover)}")


def _use(use: Use) -> str:
    return f"{escaped(use.what)} on {escaped(use.resource)}"
