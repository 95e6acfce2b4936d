"""`interceptor audit ...`: prove, read, export the trail and replay recorded SSH sessions.

Every command takes `--store PATH|DSN` (default: the `audit:` section of
/etc/interceptor/interceptor.yaml, else /var/lib/interceptor/audit.db) and, where it prints
records, `--json` (one JSON object per line). Text from the trail is printed with control
characters escaped; a reader that stops reading (`audit search | head`) ends the command
quietly with status 141, as a program killed by SIGPIPE.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from interceptor.audit import Query, Record, Store, open_store, search_all, verify
from interceptor.audit.chain import canonical_json
from interceptor.audit.recording import Cast, RecordingError, parse, read_verified, recording_path
from interceptor.cli_support import duration, escaped
from interceptor.config import ConfigError, Settings, load_settings



def default_store(settings: Settings) -> str:
    """The store the daemon writes, as its settings say."""
    audit = settings.audit
    if audit.get("store") == "postgres" and audit.get("dsn"):
        return str(audit["dsn"])
    if audit.get("path"):
        return str(audit["path"])
    return str(settings.state_dir / "audit.db")


def cli_settings() -> Settings:
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
    age = duration(text)
    if age is not None:
        return (time.time() if now is None else now) - age
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a time: use epoch seconds, ISO 8601 or an age like 15m, 2h, 7d")


class TimeArg(click.ParamType[float]):
    """A command line's TIME: what parse_time reads, as epoch seconds."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return value if isinstance(value, float) else parse_time(value)


@contextmanager
def opened_store(spec: str | None) -> Iterator[Store]:
    """The audit store `spec` names (a path or DSN; None: the one the settings name), closed
    after; a click.ClickException (DSN password hidden) when it cannot be opened or read."""
    spec = spec or default_store(cli_settings())
    try:
        store = open_store(spec)
    except Exception as exc:  # a missing file, a refused connection, a file that is no audit store
        raise click.ClickException(f"cannot open audit store {_redact_dsn(spec)}: {exc}") from exc
    try:
        yield store
    except (click.ClickException, BrokenPipeError):
        raise
    except Exception as exc:
        raise click.ClickException(f"reading audit store {_redact_dsn(spec)} failed: {exc}") from exc
    finally:
        store.close()


def _redact_dsn(spec: str) -> str:
    return re.sub(r"(://[^/:@]+:)[^@/]+@", r"\1***@", spec)


def store_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The `--store PATH|DSN` option every command reading the trail takes."""
    return click.option("--store", metavar="PATH|DSN",
                        help="SQLite file, .jsonl file or PostgreSQL DSN (default: from interceptor.yaml)")(command)


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(command)


_VERBS = ("request", "method", "verb")  # an operation's verb, shown first in a line's "what"
_OBJECTS = ("command", "path", "target", "action", "tool", "statement", "sql", "text", "resource")
_WHAT = 60  # characters of an operation's object a line shows


def _line(record: Record) -> str:
    """One record on one line: time, chain#seq, kind, decision, agent, subject, resource, rule,
    what (the operation's verb and object, cut to _WHAT characters), reason, event id; every
    value escaped (an agent's text cannot drive the reader's terminal)."""
    event = record.event
    when = event.get("time")
    stamp = datetime.datetime.fromtimestamp(when).isoformat(timespec="milliseconds") \
        if isinstance(when, (int, float)) else "?"
    subject = (event.get("identity") or {}).get("subject") if isinstance(event.get("identity"), dict) else None
    parts = [stamp, f"{record.chain_id}#{record.seq}", str(event.get("kind")), str(event.get("decision") or "-")]
    parts += [f"{key}={value}" for key, value in (("agent", event.get("agent")), ("subject", subject),
                                                   ("resource", event.get("resource")), ("rule", event.get("rule")))
              if value]
    parts = [escaped(part) for part in parts]
    what = _what(event.get("operation"))
    if what:  # repr escapes what is not printable, and the backslash, itself
        parts.append(f"what={what!r}")
    if event.get("reason"):
        parts.append(f"reason={event['reason']!r}")
    parts.append(escaped(str(event.get("event_id"))))
    return " ".join(parts)


def _what(operation: object) -> str:
    """What a record's operation was about: its verb (an ssh request, HTTP method, Kubernetes
    verb) and its first object (command, path, target, tool, statement text...), the object
    cut to _WHAT characters with "..." after."""
    if not isinstance(operation, dict):
        return ""
    verb = next((str(operation[key]) for key in _VERBS if operation.get(key)), "")
    thing = next((str(operation[key]) for key in _OBJECTS if operation.get(key)), "")
    if len(thing) > _WHAT:
        thing = thing[:_WHAT] + "..."
    return " ".join(part for part in (verb, thing) if part)


def _print(records: list[tuple[int, Record]], as_json: bool) -> None:
    for _, record in records:
        click.echo(canonical_json(record.to_dict()) if as_json else _line(record))


class _AuditGroup(click.Group):
    """The `audit` group: a command whose stdout's reader has gone ends quietly."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _reader_gone()


def _reader_gone() -> NoReturn:
    """stdout's reader stopped reading (`audit search | head -5`): no store failed, nothing to
    say. What is still buffered goes to /dev/null (else the interpreter's last flush would
    complain), and the status is 141, a program killed by SIGPIPE's (as `git log | head`)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture)
        fd = -1
    if fd >= 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    sys.exit(141)


@click.group(cls=_AuditGroup)
def audit() -> None:
    """Prove, read and export the audit trail."""


@audit.command("verify")
@store_option
@_json_option
def verify_command(store: str | None, as_json: bool) -> None:
    """Prove every hash chain; name the first record edited, deleted or reordered (exit 1)."""
    with opened_store(store) as opened:
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
@store_option
@_json_option
def tail(count: int, follow: bool, interval: float, store: str | None, as_json: bool) -> None:
    """Print the last records (and, with -f, new ones as they arrive)."""
    with opened_store(store) as opened:
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
        command = click.option(f"--{name}", type=TimeArg(), help=help_text)(command)
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
@store_option
@_json_option
def search(limit: int | None, store: str | None, as_json: bool, **filters: Any) -> None:
    """Records by agent, identity subject, resource, decision, kind, flow and time."""
    with opened_store(store) as opened:
        _print(opened.search(_query(filters, limit=limit, newest=limit is not None)), as_json)


@audit.command()
@click.argument("event_id")
@store_option
@_json_option
def show(event_id: str, store: str | None, as_json: bool) -> None:
    """One record, whole, with its place in its chain."""
    with opened_store(store) as opened:
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
@store_option
def export(fmt: str, session: str | None, output: str | None, store: str | None, **filters: Any) -> None:
    """Records as JSON Lines, or one session's bytes as pcap (--pcap SESSION -o FILE)."""
    with opened_store(store) as opened:
        if session is not None:
            _export_pcap(opened, session, output)
            return
        out = click.open_file(output or "-", "w")
        try:
            for _, record in search_all(opened, _query(filters)):
                out.write(canonical_json(record.to_dict()) + "\n")
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


@audit.command()
@click.argument("event_id")
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Play this many times faster; 0: no waiting at all.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=2.0, show_default=True, metavar="SECONDS",
              help="Never wait longer than this between two events.")
@click.option("--input/--no-input", "show_input", default=False, show_default=True,
              help="Show what was typed too, marked [input: ...] with control characters escaped.")
@click.option("--recordings", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the recordings are (default: the recordings directory in the settings' state_dir).")
@store_option
@_json_option
def replay(event_id: str, speed: float, max_wait: float, show_input: bool, recordings: Path | None,
           store: str | None, as_json: bool) -> None:
    """Play a recorded SSH shell back (EVENT_ID: its "ssh" or "ssh-end" record), after checking
    the file's size and SHA-256 against the record (exit 1 when it differs or is missing).

    The record names the file (NAME.cast), looked up in the recordings directory
    (`<state_dir>/recordings`, or --recordings DIR); a name that is not a recording's (a `/`,
    `..`, NUL) is refused. The terminal output goes to stdout with its timing; size changes
    are not replayed; the limit marker goes to stderr. --json prints the file's header and a
    summary instead. `audit verify` proves the record itself."""
    with opened_store(store) as opened:
        end = _ssh_end(opened, event_id)
    recording = _recording_of(end)
    directory = recordings if recordings is not None else cli_settings().state_dir / "recordings"
    try:
        path = recording_path(directory, recording["file"])
        cast = parse(read_verified(str(path), recording["sha256"], recording["bytes"]))
    except RecordingError as exc:
        raise click.ClickException(f"refusing to replay event {end.event_id}: {escaped(str(exc))}") from exc
    if as_json:
        click.echo(json.dumps(_cast_summary(end, recording, cast), sort_keys=True))
        return
    click.echo(f"replaying event {end.event_id}: {path} (SHA-256 verified), "
               f"{cast.header['width']}x{cast.header['height']}, {_seconds(cast):.1f} s", err=True)
    _play(cast, speed, max_wait, show_input)


def _ssh_end(store: Store, event_id: str) -> Record:
    """The "ssh-end" record `event_id` names, itself or through its "ssh" record."""
    found = store.search(Query(event_id=event_id, limit=1))
    if not found:
        raise click.ClickException(f"no audit record with event id {event_id}")
    record = found[0][1]
    kind = record.event.get("kind")
    if kind == "ssh-end":
        return record
    if kind == "ssh":
        return _end_of_request(store, record)
    raise click.ClickException(f"event {event_id} is a {kind} record: replay takes the \"ssh\" or \"ssh-end\" "
                               f"record of a recorded SSH shell")


def _end_of_request(store: Store, request: Record) -> Record:
    """The "ssh-end" record of the channel whose "ssh" record is `request`: the one of its flow
    whose outcome names it ("request_event", written by the ssh handler's FlowGate.finished).
    Nothing else is taken for it: none (not ended yet, or written before ends named their
    request) or more than one (the store was written by something else) is refused."""
    event = request.event
    if event.get("decision") == "deny":
        raise click.ClickException(f"event {request.event_id} was denied ({escaped(str(event.get('rule')))}): "
                                   f"nothing ran, nothing was recorded")
    flow = event.get("flow_id")
    if not isinstance(flow, str):
        raise click.ClickException(f"event {request.event_id} names no flow: replay its \"ssh-end\" record")
    ends = [r for _, r in store.search(Query(flow_id=flow, kind="ssh-end"))
            if isinstance(r.event.get("outcome"), dict) and r.event["outcome"].get("request_event") == request.event_id]
    if len(ends) == 1:
        return ends[0]
    if ends:
        listed = "; ".join(str(r.event_id) for r in ends)
        raise click.ClickException(f"event {request.event_id} is named by {len(ends)} \"ssh-end\" records in flow "
                                   f"{flow} ({listed}): the audit store holds records the ssh handler did not "
                                   f"write; replay one of them by its id after `interceptor audit verify`")
    raise click.ClickException(f"no \"ssh-end\" record in flow {flow} names event {request.event_id} as its "
                               f"request: it has not ended yet, or its end was recorded before ends named their "
                               f"request; replay its \"ssh-end\" record")


def _recording_of(end: Record) -> dict[str, Any]:
    outcome = end.event.get("outcome")
    recording = outcome.get("recording") if isinstance(outcome, dict) else None
    if not isinstance(recording, dict):
        raise click.ClickException(f"event {end.event_id} has no recording: only shells and commands run with "
                                   f"a terminal are recorded")
    if not (isinstance(recording.get("file"), str) and isinstance(recording.get("sha256"), str)
            and type(recording.get("bytes")) is int):
        raise click.ClickException(f"event {end.event_id} names its recording without a file, sha256 and bytes: "
                                   f"{recording!r}")
    return recording


def _cast_summary(end: Record, recording: dict[str, Any], cast: Cast) -> dict[str, Any]:
    counts = {kind: sum(1 for event in cast.events if event.kind == kind) for kind in ("o", "i", "r", "m")}
    return {"event_id": end.event_id, "flow_id": end.event.get("flow_id"), "recording": recording,
            "header": cast.header, "events": counts, "seconds": _seconds(cast)}


def _seconds(cast: Cast) -> float:
    return cast.events[-1].time if cast.events else 0.0


def _play(cast: Cast, speed: float, max_wait: float, show_input: bool) -> None:
    """Each output event (and input event, marked, with `show_input`) to stdout, after the
    recorded gap since the last one shown divided by `speed` (0: none), at most `max_wait`."""
    out = sys.stdout.buffer
    shown = 0.0
    for event in cast.events:
        if event.kind == "m":
            out.flush()
            click.echo(f"\r\n[{event.time:.1f} s: {event.data}]", err=True)
            continue
        if event.kind == "r" or event.kind == "i" and not show_input:
            continue
        if speed:
            time.sleep(min((event.time - shown) / speed, max_wait))
        shown = event.time
        text = event.data if event.kind == "o" else f"[input: {escaped(event.data)}]"
        out.write(text.encode("utf-8", "replace"))
        out.flush()

