"""The audit trail: every action recorded, hash-chained, never silently dropped.

The daemon opens its sink with `open_sink(settings["audit"])`; the CLI reads a store with
`open_store(PATH_OR_DSN)` and proves it with `verify(store)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from interceptor.audit.chain import Head, Problem, Record, VerifyResult, verify_records
from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.audit.query import Query
from interceptor.audit.sink import Backend, ChainedSink, Chunk, SinkOptions
from interceptor.errors import AuditUnavailable

DEFAULT_PATH = Path("/var/lib/interceptor/audit.db")
STORES = ("sqlite", "postgres", "jsonl")
_COMMON = {"store", "durability", "batch_ms", "chain_id", "host_id", "max_queue", "max_batch", "retry_ms", "capture"}
# `path` is tolerated for postgres: the daemon fills it in from state_dir whatever the store.
_KEYS = {"sqlite": _COMMON | {"path", "max_mb"}, "postgres": _COMMON | {"dsn", "connect_timeout", "path"},
         "jsonl": _COMMON | {"path"}}

__all__ = ["AuditEvent", "AuditSink", "AuditUnavailable", "ChainedSink", "Chunk", "Head", "Problem", "Query",
           "Record", "Store", "VerifyResult", "open_sink", "open_store", "search_all", "verify"]


class Store(Protocol):
    """What the CLI reads from any store (SqlReader, JsonlReader)."""

    def records(self, after_id: int = 0) -> Any: ...
    def heads(self) -> dict[str, Head] | None: ...
    def search(self, query: Query) -> list[tuple[int, Record]]: ...
    def chunks(self, flow_id: str) -> list[Chunk]: ...
    def close(self) -> None: ...


def _backend(store: str, settings: dict[str, Any], durability: str) -> Backend:
    if store == "sqlite":
        from interceptor.audit.sqlite import SqliteBackend

        return SqliteBackend(settings.get("path", DEFAULT_PATH), durability, settings.get("max_mb"))
    if store == "jsonl":
        from interceptor.audit.jsonl import JsonlBackend

        if not settings.get("path"):
            raise ValueError("audit store jsonl needs a path")
        return JsonlBackend(settings["path"])
    from interceptor.audit.postgres import PostgresBackend

    if not settings.get("dsn"):
        raise ValueError("audit store postgres needs a dsn")
    return PostgresBackend(settings["dsn"], int(settings.get("connect_timeout", 5)))


def open_sink(settings: dict[str, Any]) -> ChainedSink:
    """The daemon's sink for an `audit:` settings section; ValueError names a bad setting."""
    store = settings.get("store", "sqlite")
    if store not in STORES:
        raise ValueError(f"audit store must be one of {', '.join(STORES)}, not {store!r}")
    unknown = sorted(set(settings) - _KEYS[store])
    if unknown:
        raise ValueError(f"unknown audit settings for store {store}: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_KEYS[store]))})")
    options: dict[str, Any] = {key: settings[key] for key in ("durability", "batch_ms", "max_queue", "max_batch", "retry_ms", "capture")
               if key in settings}
    chain_id = settings.get("chain_id") or settings.get("host_id")
    if chain_id:
        options["chain_id"] = str(chain_id)
    sink_options = SinkOptions(**options)
    return ChainedSink(_backend(store, settings, sink_options.durability), sink_options)


def open_store(spec: str | Path) -> Store:
    """A reader for a store named by a PostgreSQL DSN, a `.jsonl` path or an SQLite path."""
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")) or "dbname=" in text or "host=" in text:
        from interceptor.audit.postgres import open_reader as open_postgres

        return open_postgres(text)
    if text.endswith(".jsonl"):
        from interceptor.audit.jsonl import JsonlReader

        return JsonlReader(text)
    from interceptor.audit.sqlite import open_reader as open_sqlite

    return open_sqlite(text)


def search_all(store: Store, query: Query, page: int = 5000) -> Iterator[tuple[int, Record]]:
    """Every (storage position, record) `query` matches (its after_id and limit aside), read
    `page` records at a time so a large trail is never held whole."""
    after = query.after_id
    while True:
        found = store.search(replace(query, after_id=after, limit=page))
        yield from found
        if len(found) < page:
            return
        after = found[-1][0]


def verify(store: Store) -> VerifyResult:
    """Prove every chain in the store; names the first record edited, deleted or reordered."""
    return verify_records((record for _, record in store.records()), store.heads())
