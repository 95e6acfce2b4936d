"""`interceptor audit ...`: prove, read and export the trail.

Every command takes `--store PATH|DSN` (default: the `audit:` section of
/etc/interceptor/interceptor.yaml, else /var/lib/interceptor/audit.db) and, where it prints
records, `--json` (one JSON object per line).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from interceptor.audit import Query, Record, Store, open_store, verify
from interceptor.audit.chain import canonical_json
from interceptor.config import ConfigError, Settings, load_settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def default_store(settings: Settings) -> str:
    """The store the daemon writes, as its settings say."""
    audit = settings.audit
    if audit.get("store") == "postgres" and audit.get("dsn"):
        return str(audit["dsn"])
    if audit.get("path"):
        return str(audit["path"])
    return str(settings.state_dir / "audit.db")


def _settings() -> Settings:
    """The settings `interceptor --config` loaded; the default file when run on its own."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    if isinstance(obj, dict) and "settings" in obj:
        settings: Settings = obj["settings"]
        return settings
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds, ISO 8601 (`2024-05-01T12:00:00Z`; no zone: local time) or an age (`15m`, `2h`, `7d`)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return (time.time() if now is None else now) - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a time: use epoch seconds, ISO 8601 or an age like 15m, 2h, 7d")


class _Time(click.ParamType[float]):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return value if isinstance(value, float) else parse_time(value)


@contextmanager
def _opened(spec: str | None) -> Iterator[Store]:
    spec = spec or default_store(_settings())
    try:
        store = open_store(spec)
    except Exception as exc:  # a missing file, a refused connection, a file that is no audit store
        raise click.ClickException(f"cannot open audit store {_redact_dsn(spec)}: {exc}") from exc
    try:
        yield store
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f"reading audit store {_redact_dsn(spec)} failed: {exc}") from exc
    finally:
        store.close()


def _redact_dsn(spec: str) -> str:
    return re.sub(r"(://[^/:@]+:)[^@/]+@", r"\1***@", spec)


def _store_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--store", metavar="PATH|DSN",
                        help="SQLite file, .jsonl file or PostgreSQL DSN (default: from interceptor.yaml)")(command)


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(command)


def _line(record: Record) -> str:
    event = record.event
    when = event.get("time")
    stamp = datetime.datetime.fromtimestamp(when).isoformat(timespec="milliseconds") \
        if isinstance(when, (int, float)) else "?"
    subject = (event.get("identity") or {}).get("subject") if isinstance(event.get("identity"), dict) else None
    parts = [stamp, f"{record.chain_id}#{record.seq}", str(event.get("kind")), str(event.get("decision") or "-")]
    parts += [f"{key}={value}" for key, value in (("agent", event.get("agent")), ("subject", subject),
                                                   ("resource", event.get("resource")), ("rule", event.get("rule")))
              if value]
    if event.get("reason"):
        parts.append(f"reason={event['reason']!r}")
    parts.append(str(event.get("event_id")))
    return " ".join(parts)


def _print(records: list[tuple[int, Record]], as_json: bool) -> None:
    for _, record in records:
        click.echo(canonical_json(record.to_dict()) if as_json else _line(record))


@click.group()
def audit() -> None:
    """Prove, read and export the audit trail."""


@audit.command("verify")
@_store_option
@_json_option
def verify_command(store: str | None, as_json: bool) -> None:
    """Prove every hash chain; name the first record edited, deleted or reordered (exit 1)."""
    with _opened(store) as opened:
        result = verify(opened)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif result.ok:
        click.echo(f"OK: {result.records_checked} records in {result.chains} chain(s) verified")
    else:
        event = f" (event {result.event_id})" if result.event_id else ""
        click.echo(f"FAILED: chain {result.chain_id} record seq {result.first_bad}{event} was {result.problem}: "
                   f"{result.detail}", err=True)
    if not result.ok:
        sys.exit(1)


@audit.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help="How many records.")
@click.option("-f", "follow", is_flag=True, help="Keep printing records as they are written.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, hidden=True)
@_store_option
@_json_option
def tail(count: int, follow: bool, interval: float, store: str | None, as_json: bool) -> None:
    """Print the last records (and, with -f, new ones as they arrive)."""
    with _opened(store) as opened:
        found = opened.search(Query(limit=count, newest=True))
        _print(found, as_json)
        last = found[-1][0] if found else 0
        while follow:
            time.sleep(interval)
            found = opened.search(Query(after_id=last, limit=1000))
            _print(found, as_json)
            sys.stdout.flush()
            last = found[-1][0] if found else last


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, help_text in (("until", "Only records before this time."), ("since", "Only records from this time on.")):
        command = click.option(f"--{name}", type=_Time(), help=help_text)(command)
    for name in ("flow", "kind", "decision", "resource", "subject", "agent"):
        command = click.option(f"--{name}", help=f"Only records with this {name}.")(command)
    return command


def _query(filters: dict[str, Any], **extra: Any) -> Query:
    return Query(agent=filters["agent"], subject=filters["subject"], resource=filters["resource"],
                 decision=filters["decision"], kind=filters["kind"], flow_id=filters["flow"],
                 since=filters["since"], until=filters["until"], **extra)


@audit.command()
@_filters
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (the newest).")
@_store_option
@_json_option
def search(limit: int | None, store: str | None, as_json: bool, **filters: Any) -> None:
    """Records by agent, identity subject, resource, decision, kind, flow and time."""
    with _opened(store) as opened:
        _print(opened.search(_query(filters, limit=limit, newest=limit is not None)), as_json)


@audit.command()
@click.argument("event_id")
@_store_option
@_json_option
def show(event_id: str, store: str | None, as_json: bool) -> None:
    """One record, whole, with its place in its chain."""
    with _opened(store) as opened:
        found = opened.search(Query(event_id=event_id, limit=1))
    if not found:
        raise click.ClickException(f"no audit record with event id {event_id}")
    record = found[0][1].to_dict()
    click.echo(canonical_json(record) if as_json else json.dumps(record, indent=2, sort_keys=True))


@audit.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--pcap", "session", metavar="SESSION", help="Write this flow's captured bytes as a pcap file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
@_filters
@_store_option
def export(fmt: str, session: str | None, output: str | None, store: str | None, **filters: Any) -> None:
    """Records as JSON Lines, or one session's bytes as pcap (--pcap SESSION -o FILE)."""
    with _opened(store) as opened:
        if session is not None:
            _export_pcap(opened, session, output)
            return
        out = click.open_file(output or "-", "w")
        try:
            after = 0
            while True:
                page = opened.search(_query(filters, after_id=after, limit=5000))
                for _, record in page:
                    out.write(canonical_json(record.to_dict()) + "\n")
                if len(page) < 5000:
                    break
                after = page[-1][0]
        finally:
            if output:
                out.close()


def _export_pcap(store: Store, session: str, output: str | None) -> None:
    from interceptor.audit.pcap import write_pcap

    if not output:
        raise click.UsageError("--pcap needs -o FILE (pcap is binary)")
    chunks = store.chunks(session)
    if not chunks:
        raise click.ClickException(f"no captured bytes for session {session} (capture is off unless configured)")
    packets = write_pcap(output, chunks)
    click.echo(f"wrote {packets} packets ({sum(len(c.data) for c in chunks)} payload bytes) to {output}", err=True)
