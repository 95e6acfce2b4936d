"""The SQL both database stores share: schema, statements and the reader the CLI uses.

SQLite and PostgreSQL differ only in the dialect below (placeholder, id type, how a column
is derived from the event's JSON text), so a record means the same thing in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from interceptor.audit.chain import Head, Record
from interceptor.audit.query import COLUMNS, Query, where_sql
from interceptor.audit.sink import Chunk

_INDEXED = ("event_id", "time", "agent", "subject", "resource", "flow_id")
ROW_FIELDS = ("chain_id", "seq", "prev_hash", "hash", "event")  # one record's values in an INSERT
_RECORD_COLUMNS = ", ".join(("id", *ROW_FIELDS))
PAGE = 5000


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str  # sqlite | postgres
    placeholder: str
    id_type: str
    blob_type: str
    real_type: str

    def derived(self, column: str, path: tuple[str, ...]) -> str:
        """A column computed from the event text: it cannot be edited apart from the hashed event."""
        if self.name == "sqlite":
            return f"{column} {'REAL' if column == 'time' else 'TEXT'} " \
                   f"GENERATED ALWAYS AS (json_extract(event, '$.{'.'.join(path)}')) VIRTUAL"
        expr = f"(event::jsonb #>> '{{{','.join(path)}}}')"
        if column == "time":
            return f"{column} DOUBLE PRECISION GENERATED ALWAYS AS ({expr}::double precision) STORED"
        return f"{column} TEXT GENERATED ALWAYS AS {expr} STORED"

    def schema(self) -> list[str]:
        derived = ",\n  ".join(self.derived(column, path) for column, path in COLUMNS)
        statements = [
            f"""CREATE TABLE IF NOT EXISTS audit_records (
  id {self.id_type} PRIMARY KEY,
  chain_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  event TEXT NOT NULL,
  {derived},
  UNIQUE (chain_id, seq))""",
            "CREATE TABLE IF NOT EXISTS audit_heads (chain_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS audit_session_bytes (
  id {self.id_type} PRIMARY KEY, flow_id TEXT NOT NULL, direction TEXT NOT NULL,
  ts {self.real_type} NOT NULL, data {self.blob_type} NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS audit_session_bytes_flow ON audit_session_bytes (flow_id, id)",
        ]
        statements += [f"CREATE INDEX IF NOT EXISTS audit_records_{column} ON audit_records ({column})"
                       for column in _INDEXED]
        return statements

    def insert_record(self) -> str:
        return self.insert_records(1)

    def insert_records(self, count: int) -> str:
        """One INSERT for `count` records: a store that runs it in a thread gives up the GIL
        once per statement, not once per record."""
        p = self.placeholder
        row = f"({', '.join([p] * len(ROW_FIELDS))})"
        return f"INSERT INTO audit_records ({', '.join(ROW_FIELDS)}) VALUES {', '.join([row] * count)}"

    def insert_chunk(self) -> str:
        p = self.placeholder
        return f"INSERT INTO audit_session_bytes (flow_id, direction, ts, data) VALUES ({p}, {p}, {p}, {p})"

    def upsert_head(self) -> str:
        p = self.placeholder
        return (f"INSERT INTO audit_heads (chain_id, seq, hash) VALUES ({p}, {p}, {p}) "
                "ON CONFLICT (chain_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash")

    def select_head(self) -> str:
        return f"SELECT seq, hash FROM audit_heads WHERE chain_id = {self.placeholder}"

    def select_stored(self, count: int) -> str:
        p = self.placeholder
        return (f"SELECT event_id FROM audit_records WHERE chain_id = {p} "
                f"AND event_id IN ({', '.join([p] * count)})")


SQLITE = Dialect("sqlite", "?", "INTEGER", "BLOB", "REAL")
POSTGRES = Dialect("postgres", "%s", "BIGSERIAL", "BYTEA", "DOUBLE PRECISION")


def record_rows(records: list[Record]) -> list[tuple[Any, ...]]:
    return [(r.chain_id, r.seq, r.prev_hash, r.hash, r.event_text) for r in records]


def chunk_rows(chunks: list[Chunk]) -> list[tuple[Any, ...]]:
    return [(c.flow_id, c.direction, c.ts, c.data) for c in chunks]


def parse_event(text: str) -> dict[str, Any]:
    """The stored event; text that no longer parses is kept whole so verify reports it edited."""
    try:
        event = json.loads(text)
    except ValueError:
        return {"unparseable": text}
    return event if isinstance(event, dict) else {"unparseable": text}


def _record(row: tuple[Any, ...]) -> tuple[int, Record]:
    return row[0], Record(row[1], row[2], row[3], row[4], parse_event(row[5]))


class SqlReader:
    """Reads either database store through a DB-API connection (sqlite3 or psycopg)."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows
        finally:
            cursor.close()

    def records(self, after_id: int = 0) -> Iterator[tuple[int, Record]]:
        """Every record in storage order, a page at a time."""
        p = self.dialect.placeholder
        while True:
            rows = self._rows(f"SELECT {_RECORD_COLUMNS} FROM audit_records WHERE id > {p} ORDER BY id LIMIT {PAGE}",
                              [after_id])
            for row in rows:
                yield _record(row)
            if len(rows) < PAGE:
                return
            after_id = rows[-1][0]

    def heads(self) -> dict[str, Head]:
        return {chain_id: Head(seq, digest) for chain_id, seq, digest in self._rows("SELECT chain_id, seq, hash FROM audit_heads")}

    def search(self, query: Query) -> list[tuple[int, Record]]:
        where, params = where_sql(query, self.dialect.placeholder)
        order = "DESC" if query.newest else "ASC"
        limit = f" LIMIT {int(query.limit)}" if query.limit is not None else ""
        found = [_record(row) for row in self._rows(
            f"SELECT {_RECORD_COLUMNS} FROM audit_records {where} ORDER BY id {order}{limit}", params)]
        return found[::-1] if query.newest else found

    def chunks(self, flow_id: str) -> list[Chunk]:
        rows = self._rows("SELECT flow_id, direction, ts, data FROM audit_session_bytes "
                          f"WHERE flow_id = {self.dialect.placeholder} ORDER BY id", [flow_id])
        return [Chunk(f, d, float(ts), bytes(data)) for f, d, ts, data in rows]

    def close(self) -> None:
        self.conn.close()
