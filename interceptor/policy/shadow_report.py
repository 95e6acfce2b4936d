"""`interceptor policy shadow report`: what a candidate policy, run beside the enforced one
(`policy shadow`), would have decided otherwise, from the shadow marks of the audit trail.

Every record of a shadowed agent carries `operation.shadow` = {session, policy (the
candidate's version), verdict, rule, agrees, reason}; the daemon's `shadow-start` record
(kind "policy") names the candidate's file. Per agent and shadow session the report counts
the records judged and those that agree, lists every operation outside the candidate (that
it would deny, whatever the policy in force did), and groups the disagreements by (enforced
decision, candidate verdict, candidate rule); each distinct operation (a SQL statement as
recorded, literals redacted; a Kubernetes request; an SSH request; an HTTP request; an MCP
call) with its count and when it was first and last seen. A record of how an operation ended
(`ssh-end`, ENDS) carries the operation's decision and marks again: it is not counted.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from interceptor.audit import Query, Record, Store, search_all
from interceptor.audit.cli import TimeArg, opened_store
from interceptor.cli_support import escaped
from interceptor.operations import KubeRequest
from interceptor.policy.kube_rules import describe as describe_kube

SHADOW_START = "shadow-start"
# Records of how an operation already recorded ended, carrying its decision (and marks) again
ENDS = frozenset({"ssh-end"})


@dataclass(slots=True)
class Seen:
    """One distinct operation on `resource`, decided `enforced` by the policy in force and
    judged by the candidate's rule `rule`: how many records, first and last time (epoch
    seconds), and the candidate's reason the first time (only recorded where it disagrees)."""

    resource: str
    what: str
    enforced: str
    rule: str
    reason: str
    first: float
    last: float
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "what": self.what, "enforced": self.enforced, "rule": self.rule,
                "reason": self.reason, "count": self.count, "first": self.first, "last": self.last}

    def seen(self, when: float) -> None:
        """One more record, at `when`."""
        self.count += 1
        self.first, self.last = min(self.first, when), max(self.last, when)


@dataclass(slots=True)
class Disagreement:
    """The records whose enforced decision was `enforced` and the candidate's `verdict`
    by its rule `rule`; `operations` by (resource, what)."""

    enforced: str
    verdict: str
    rule: str
    operations: dict[tuple[str, str], Seen] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(seen.count for seen in self.operations.values())

    def to_dict(self) -> dict[str, Any]:
        """enforced, verdict, rule, records, operations (Seen.to_dict, first seen first)."""
        return {"enforced": self.enforced, "verdict": self.verdict, "rule": self.rule, "records": self.records,
                "operations": [s.to_dict() for s in _by_first(self.operations.values())]}


@dataclass(slots=True)
class SessionReport:
    """One shadow session of one agent: the candidate (`policy` version, `path` from the
    shadow-start record, None when the trail read holds none), the records `judged` and how
    many `agree`, the time of the first and last (epoch seconds), the disagreements, and
    `outside`: every operation the candidate would deny, agreeing or not, by (resource,
    what, enforced decision, candidate rule)."""

    agent: str
    session: str
    policy: str
    path: str | None = None
    judged: int = 0
    agree: int = 0
    first: float | None = None
    last: float | None = None
    disagreements: dict[tuple[str, str, str], Disagreement] = field(default_factory=dict)
    outside: dict[tuple[str, str, str, str], Seen] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """agent, session, policy, path, judged, agree, disagree, first, last, disagreements
        (Disagreement.to_dict, the most records first), outside (Seen.to_dict, first seen first)."""
        return {"agent": self.agent, "session": self.session, "policy": self.policy, "path": self.path,
                "judged": self.judged, "agree": self.agree, "disagree": self.judged - self.agree,
                "first": self.first, "last": self.last,
                "disagreements": [d.to_dict() for d in _by_records(self.disagreements.values())],
                "outside": [s.to_dict() for s in _by_first(self.outside.values())]}


def _by_first(operations: Any) -> list[Seen]:
    return sorted(operations, key=lambda s: s.first)


def _by_records(disagreements: Any) -> list[Disagreement]:
    return sorted(disagreements, key=lambda d: (-d.records, d.enforced, d.verdict, d.rule))


def summarise(records: Iterator[Record], session: str | None = None,
              paths: dict[str, str] | None = None) -> list[SessionReport]:
    """The shadow sessions of `records` (only `session` when given), in the order first seen;
    `paths`: the candidate's file by session (`candidates`)."""
    reports: dict[tuple[str, str], SessionReport] = {}
    for record in records:
        event = record.event
        operation = event.get("operation")
        if not isinstance(operation, dict):
            continue
        shadow = operation.get("shadow")
        if not isinstance(shadow, dict) or (session is not None and shadow.get("session") != session) \
                or event.get("kind") in ENDS:
            continue
        key = (str(event.get("agent")), str(shadow.get("session")))
        report = reports.get(key)
        if report is None:
            report = reports[key] = SessionReport(key[0], key[1], str(shadow.get("policy")))
        _count(report, event, operation, shadow)
    for report in reports.values():
        report.path = (paths or {}).get(report.session)
    return list(reports.values())


def candidates(store: Store, agent: str | None) -> dict[str, str]:
    """The candidate policy's file of each shadow session of `agent` (every agent: None), from
    the daemon's shadow-start records, whenever they were written."""
    paths: dict[str, str] = {}
    for _, record in store.search(Query(agent=agent, kind="policy")):
        operation = record.event.get("operation")
        if isinstance(operation, dict) and operation.get("action") == SHADOW_START:
            paths[str(operation.get("session"))] = str(operation.get("path"))
    return paths


def _count(report: SessionReport, event: dict[str, Any], operation: dict[str, Any], shadow: dict[str, Any]) -> None:
    when = event.get("time")
    when = float(when) if isinstance(when, (int, float)) else 0.0
    report.judged += 1
    report.first = when if report.first is None else min(report.first, when)
    report.last = when if report.last is None else max(report.last, when)
    resource, enforced, rule = str(event.get("resource")), str(event.get("decision")), str(shadow.get("rule"))
    what = describe_operation(str(event.get("kind")), operation)
    reason = str(shadow.get("reason", ""))
    if shadow.get("verdict") == "deny":
        _seen(report.outside, (resource, what, enforced, rule),
              Seen(resource, what, enforced, rule, reason, when, when))
    if shadow.get("agrees") is True:
        report.agree += 1
        return
    group = (enforced, str(shadow.get("verdict")), rule)
    disagreement = report.disagreements.get(group)
    if disagreement is None:
        disagreement = report.disagreements[group] = Disagreement(*group)
    _seen(disagreement.operations, (resource, what), Seen(resource, what, enforced, rule, reason, when, when))


def _seen(table: dict[Any, Seen], key: tuple[str, ...], first: Seen) -> None:
    """One more record of the operation `key` names in `table`; `first` when it is the first."""
    table.setdefault(key, first).seen(first.first)


def describe_operation(kind: str, operation: dict[str, Any]) -> str:
    """What a record's operation was, whole: a SQL statement's text as recorded, a Kubernetes
    request as kube_rules.describe says it, an SSH request with its command, path or target,
    an HTTP method and path (and host), an MCP method and tool, a connection's destination;
    else the record's kind and operation as JSON (without its shadow and learn marks)."""
    if isinstance(operation.get("statement"), str):
        return str(operation["statement"])
    summary_kind = operation.get("kind")
    if summary_kind == "kubernetes":
        return describe_kube(_kube_request(operation))
    if summary_kind == "ssh":
        return " ".join(str(operation[k]) for k in ("request", "command", "action", "path", "forward", "target")
                        if operation.get(k) is not None)
    if summary_kind == "mcp":
        return " ".join(str(operation[k]) for k in ("method", "tool") if operation.get(k) is not None)
    if summary_kind == "http":
        host = f" (host {operation['host']})" if operation.get("host") else ""
        return f"{operation.get('method')} {operation.get('path')}{host}"
    if kind == "connection" and "dst" in operation:
        return f"connect {operation.get('protocol')} {operation['dst']}"
    rest = {k: v for k, v in operation.items() if k not in ("shadow", "learn", "analysis")}
    return f"{kind} {json.dumps(rest, sort_keys=True)}"


def _kube_request(operation: dict[str, Any]) -> KubeRequest:
    """The request a Kubernetes record's operation (KubeRequest.summary()) summarises, as far
    as describe() reads it."""
    return KubeRequest(str(operation.get("verb", "")), str(operation.get("path", "")),
                       resource_request="resource" in operation, api_group=str(operation.get("api_group", "")),
                       resource=str(operation.get("resource", "")),
                       subresource=str(operation.get("subresource", "")),
                       namespace=str(operation.get("namespace", "")), name=str(operation.get("name", "")))


def read(store: Store, agent: str | None, since: float | None, until: float | None) -> Iterator[Record]:
    """The store's records of `agent` (every agent: None) between `since` and `until`, a
    page at a time."""
    return (record for _, record in search_all(store, Query(agent=agent, since=since, until=until)))


@click.command("report")
@click.option("--agent", help="Only this agent's records.")
@click.option("--session", help="Only this shadow session (the id `policy shadow start` printed).")
@click.option("--since", type=TimeArg(), help="Only records from this time on (epoch, ISO 8601 or an age: 2h).")
@click.option("--until", type=TimeArg(), help="Only records before this time.")
@click.option("--store", metavar="PATH|DSN", help="SQLite file, .jsonl file or PostgreSQL DSN (default: from "
              "interceptor.yaml)")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def report(agent: str | None, session: str | None, since: float | None, until: float | None, store: str | None,
           as_json: bool) -> None:
    """What the candidate policy of `policy shadow` would have decided otherwise.

    Per agent and shadow session: the records judged, how many the candidate agrees with,
    the operations outside the candidate (it would deny them, whatever was enforced), and
    the disagreements grouped by enforced decision -> candidate verdict and rule; each
    distinct operation (SQL statements with literals redacted, Kubernetes, SSH, HTTP and MCP
    requests) with its count and first and last seen. Exit status 0 when the
    report is printed (disagreements or not: --json gives the counts), 1 when the store
    cannot be read.
    """
    with opened_store(store) as opened:
        reports = summarise(read(opened, agent, since, until), session, candidates(opened, agent))
    if as_json:
        click.echo(json.dumps({"sessions": [r.to_dict() for r in reports]}, sort_keys=True))
        return
    if not reports:
        click.echo("no shadow records" + (f" of session {escaped(session)}" if session else ""))
    for one in reports:
        _print(one)


def _print(one: SessionReport) -> None:
    candidate = f"candidate {escaped(one.policy)}" + (f" ({escaped(one.path)})" if one.path else "")
    click.echo(f"agent {escaped(one.agent)}, shadow session {escaped(one.session)}, {candidate}: "
               f"{one.judged} records judged from {_time(one.first)} to {_time(one.last)}, {one.agree} agree, "
               f"{one.judged - one.agree} disagree")
    outside = _by_first(one.outside.values())
    click.echo(f"  outside the candidate (it would deny them): {sum(s.count for s in outside)} records, "
               f"{len(outside)} distinct")
    _print_seen(outside, True)
    for disagreement in _by_records(one.disagreements.values()):
        click.echo(f"  enforced {escaped(disagreement.enforced)} -> candidate {escaped(disagreement.verdict)} by "
                   f"rule {escaped(disagreement.rule)}: {disagreement.records} records, "
                   f"{len(disagreement.operations)} distinct")
        _print_seen(_by_first(disagreement.operations.values()), False)


def _print_seen(operations: list[Seen], decisions: bool) -> None:
    """Each operation on a line (count, first .. last, resource: what), then, indented, its
    enforced decision and candidate rule when `decisions`, and the candidate's reason."""
    for seen in operations:
        click.echo(f"    {seen.count:>6}x  {_time(seen.first)} .. {_time(seen.last)}  {escaped(seen.resource)}: "
                   f"{escaped(seen.what)}")
        notes = [f"enforced {seen.enforced}, candidate rule {seen.rule}"] if decisions else []
        notes += [seen.reason] if seen.reason else []
        if notes:
            click.echo(f"             {escaped('; '.join(notes))}")


def _time(when: float | None) -> str:
    if when is None:
        return "?"
    return datetime.datetime.fromtimestamp(when).isoformat(timespec="seconds")
