"""What `audit search`/`tail` ask a store, as SQL for the database stores and as a predicate
for the JSONL store, so every store answers a query the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Searchable columns and where they live in the event; databases derive them from the event
# text (generated columns), so they cannot be edited apart from what the hash covers.
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event_id", ("event_id",)),
    ("time", ("time",)),
    ("kind", ("kind",)),
    ("agent", ("agent",)),
    ("subject", ("identity", "subject")),
    ("resource", ("resource",)),
    ("decision", ("decision",)),
    ("flow_id", ("flow_id",)),
)
_EQUAL = ("agent", "subject", "resource", "decision", "kind", "flow_id", "event_id")


@dataclass(frozen=True, slots=True)
class Query:
    agent: str | None = None
    subject: str | None = None
    resource: str | None = None
    decision: str | None = None
    kind: str | None = None
    flow_id: str | None = None
    event_id: str | None = None
    since: float | None = None
    until: float | None = None
    after_id: int = 0  # storage position: only records stored after it
    limit: int | None = None
    newest: bool = False  # with limit: the last `limit` matches rather than the first


def field_of(event: dict[str, Any], column: str) -> Any:
    path = dict(COLUMNS)[column]
    value: Any = event
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def matches(query: Query, event: dict[str, Any]) -> bool:
    for column in _EQUAL:
        wanted = getattr(query, column)
        if wanted is not None and field_of(event, column) != wanted:
            return False
    when = event.get("time")
    if query.since is not None and not (isinstance(when, (int, float)) and when >= query.since):
        return False
    return query.until is None or isinstance(when, (int, float)) and when < query.until


def where_sql(query: Query, placeholder: str) -> tuple[str, list[Any]]:
    """`WHERE ...` over the generated columns, with parameters in `placeholder` style."""
    clauses = ["id > " + placeholder]
    params: list[Any] = [query.after_id]
    for column in _EQUAL:
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            params.append(value)
    if query.since is not None:
        clauses.append(f"time >= {placeholder}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"time < {placeholder}")
        params.append(query.until)
    return "WHERE " + " AND ".join(clauses), params
