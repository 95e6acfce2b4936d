"""The embedded store: one SQLite file in WAL mode under /var/lib/interceptor.

Strict durability uses synchronous=FULL (each group commit is fsynced before writers are
released); batched uses NORMAL (fsync at checkpoints; a daemon crash loses nothing, a power
loss at most the last groups). `max_mb` caps the file so a full audit store denies
operations instead of filling the disk the host needs.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from interceptor.audit.chain import Head, Record
from interceptor.audit.sink import Chunk
from interceptor.audit.sql import ROW_FIELDS, SQLITE, SqlReader, chunk_rows, record_rows


def connect(path: str | Path, *, durability: str = "strict", max_mb: int | None = None,
            create: bool = True) -> sqlite3.Connection:
    """A connection with the audit schema; `create=False` refuses a missing file (readers)."""
    path = Path(path)
    if not create and not path.exists():
        raise FileNotFoundError(f"no audit store at {path}")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'strict' else 'NORMAL'}")
    if max_mb is not None:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(1, int(max_mb * 1024 * 1024 // page_size))}")
    if create:
        for statement in (*SQLITE.schema(), HEAD_FOLLOWS):
            conn.execute(statement)
        os.chmod(path, 0o640)
    return conn


# The chain's head moves with every record inserted, in the same statement: a group of
# records is then one INSERT, its own transaction, and the writer thread takes the GIL back
# once per group instead of once per BEGIN, INSERT, head update and COMMIT.
HEAD_FOLLOWS = """CREATE TRIGGER IF NOT EXISTS audit_head_follows AFTER INSERT ON audit_records BEGIN
  INSERT INTO audit_heads (chain_id, seq, hash) VALUES (NEW.chain_id, NEW.seq, NEW.hash)
  ON CONFLICT (chain_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
END"""
MAX_ROWS_PER_INSERT = 1000


class SqliteBackend:
    """Backend for ChainedSink: blocking SQLite calls, made from the sink's writer thread."""

    def __init__(self, path: str | Path, durability: str = "strict", max_mb: int | None = None) -> None:
        self.path = Path(path)
        self.durability = durability
        self.max_mb = max_mb
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, durability=self.durability, max_mb=self.max_mb)
        return self._conn

    def recover(self, chain_id: str, event_ids: list[str]) -> tuple[Head, set[str]]:
        """Reopens the file (with the settings as they are now: an operator may have raised
        max_mb after the store filled up)."""
        self.close()
        conn = self._connection()
        row = conn.execute(SQLITE.select_head(), (chain_id,)).fetchone()
        stored = {r[0] for r in conn.execute(SQLITE.select_stored(len(event_ids)), (chain_id, *event_ids))} \
            if event_ids else set()
        return (Head(row[0], row[1]) if row else Head()), stored

    def append(self, records: list[Record], chunks: list[Chunk], head: Head) -> None:
        """The head follows the records by trigger (HEAD_FOLLOWS), so `head` is not written."""
        conn = self._connection()
        rows = record_rows(records)
        per_insert = min(MAX_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(ROW_FIELDS))
        if rows and not chunks and len(rows) <= per_insert:
            conn.execute(SQLITE.insert_records(len(rows)), [value for row in rows for value in row])
            return  # one statement, one transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(rows), per_insert):
                group = rows[start:start + per_insert]
                conn.execute(SQLITE.insert_records(len(group)), [value for row in group for value in row])
            conn.executemany(SQLITE.insert_chunk(), chunk_rows(chunks))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_reader(path: str | Path) -> SqlReader:
    return SqlReader(connect(path, create=False), SQLITE)
