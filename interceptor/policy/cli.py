"""`interceptor policy check FILE` and `interceptor policy test FILE`."""

from __future__ import annotations

import json

import click

from interceptor.policy.cases import run_cases
from interceptor.policy.loader import PolicyError, load_policy


def _fail(exc: PolicyError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "errors": exc.problems}))
    else:
        click.echo(str(exc), err=True)
    raise SystemExit(1)


@click.group()
def policy() -> None:
    """Check policy files and run their tests."""


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(file: str, as_json: bool) -> None:
    """Validate FILE: schema, names, addresses; errors as file:line:col."""
    try:
        loaded = load_policy(file)
    except PolicyError as exc:
        _fail(exc, as_json)
    summary = {"ok": True, "version": loaded.version, "resources": len(loaded.resources),
               "agents": len(loaded.agents), "rules": len(loaded.rules)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{file}: ok (version {loaded.version}; {summary['resources']} resources, "
                   f"{summary['agents']} agents, {summary['rules']} rules)")


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def test(file: str, as_json: bool) -> None:
    """Run the table-driven cases in FILE against the policy it names."""
    try:
        results = run_cases(file)
    except PolicyError as exc:
        _fail(exc, as_json)
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "passed": len(results) - len(failed), "failed": len(failed),
                               "cases": [{"name": r.name, "passed": r.passed, "where": r.where,
                                          "expected": r.expected, "got": r.got} for r in results]}))
    else:
        for r in results:
            click.echo(f"{'PASS' if r.passed else 'FAIL'} {r.name}")
            if not r.passed:
                click.echo(f"  {r.where}: expected {r.expected}, got {r.got}")
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise SystemExit(1)


# The commands defined in modules of their own.
from interceptor.policy.diff_cli import diff_command  # noqa: E402
from interceptor.policy.suggest_cli import suggest_command  # noqa: E402

policy.add_command(diff_command)
policy.add_command(suggest_command)
