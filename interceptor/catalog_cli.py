"""`interceptor catalog show [RESOURCE] [--database DB] [--json] | refresh RESOURCE [--database DB]`.

The database catalogs the daemon judges SQL with (read over its own connection with the
resource's credentials when an agent's session starts, kept for a few minutes). Commands talk
to the daemon through `ctx.obj["control"]`, a control-socket client with `call(method, **params)`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import click

from interceptor.cli_support import call
from interceptor.control import ControlMethod

_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


def _path(names: list[str] | None) -> str:
    """A search_path as the server would print it: names that need quotes quoted."""
    if names is None:
        return "-"
    return ", ".join(n if _PLAIN_NAME.fullmatch(n) else '"' + n.replace('"', '""') + '"' for n in names) or '""'


def _state(entry: dict[str, Any]) -> str:
    if entry["reading"]:
        return "reading"
    if entry["failure"]:
        return "failed"
    return "fresh" if entry["fresh"] else "stale"


@click.group("catalog")
def catalog() -> None:
    """The database catalogs the daemon judges SQL statements with."""


@catalog.command("show")
@click.argument("resource", required=False)
@click.option("--database", help="Only this database.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON; with RESOURCE and --database, the whole catalog: a dump `policy test` files load.")
@click.pass_context
def show(ctx: click.Context, resource: str | None, database: str | None, as_json: bool) -> None:
    """The catalogs the daemon holds: per resource and database, when read, relations,
    functions, the login role's default search_path and the catalog's version."""
    if as_json and resource is not None and database is not None:
        click.echo(json.dumps(call(ctx, ControlMethod.CATALOG_DUMP, resource=resource, database=database), indent=2))
        return
    entries: list[dict[str, Any]] = call(ctx, ControlMethod.CATALOG_SHOW, resource=resource, database=database)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no catalogs held" + (f" for resource {resource}" if resource else "")
                   + (f" database {database}" if database else "")
                   + ": the daemon reads one when an agent's session starts")
        return
    rows = [[e["resource"], e["database"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["read_at"])) if e["read_at"] else "-",
             f"{e['age_s']:.0f}s" if e["age_s"] is not None else "-",
             str(e["relations"] if e["relations"] is not None else "-"),
             str(e["functions"] if e["functions"] is not None else "-"),
             _path(e["default_search_path"]), e["version"] or "-", _state(e)] for e in entries]
    header = ["RESOURCE", "DATABASE", "READ AT", "AGE", "RELATIONS", "FUNCTIONS", "SEARCH_PATH", "VERSION", "STATE"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for entry in entries:
        if entry["failure"]:
            click.echo(f"{entry['resource']}/{entry['database']}: {entry['failure']}")


@catalog.command("refresh")
@click.argument("resource")
@click.option("--database", help="Only this database [default: all of the resource's].")
@click.pass_context
def refresh(ctx: click.Context, resource: str, database: str | None) -> None:
    """Drop the daemon's catalogs of RESOURCE so they are read again."""
    result = call(ctx, ControlMethod.CATALOG_REFRESH, resource=resource, database=database)
    which = f"database {database}" if database else "every database"
    click.echo(f"dropped {result['dropped']} catalog(s) of {which} on resource {resource}: open sessions read "
               "it again at their next statement (and judge with the new one once it is in), new ones at login")
