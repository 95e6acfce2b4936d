"""The fleet store: the same records in a central PostgreSQL, one chain per daemon.

Many hosts share the tables; each daemon appends only to its own chain (`chain_id`,
default the hostname) and holds a session advisory lock on it, so two daemons configured
with the same chain id cannot interleave and break each other's chain. A group is one
transaction, durable when its COMMIT returns: a session whose synchronous_commit the server or
role sets off has it set on (a stronger setting, such as remote_apply, is kept).
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import make_conninfo

from interceptor.audit.chain import Head, Record
from interceptor.audit.sink import Chunk
from interceptor.audit.sql import POSTGRES, SqlReader, chunk_rows, record_rows

_SCHEMA_LOCK = 0x6175646974  # "audit": serializes CREATE ... IF NOT EXISTS between daemons
# A server that stops answering (a network black hole) must fail the commit, so strict writers are
# refused rather than left waiting: TCP keepalives notice a silent peer after ~11 s, and
# tcp_user_timeout (ms) ends a send the peer never acknowledges (libpq connection parameters).
LIVENESS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": 15_000}


class ChainBusy(RuntimeError):
    pass


class PostgresBackend:
    """Backend for ChainedSink: blocking psycopg calls, made from the sink's writer thread."""

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None

    def _connect(self, chain_id: str) -> psycopg.Connection:
        self.close()
        conn = psycopg.connect(make_conninfo(self.dsn, **LIVENESS), autocommit=True,
                               connect_timeout=self.connect_timeout)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in POSTGRES.schema():
                    conn.execute(statement)
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (chain_id,)).fetchone()
            if not row or not row[0]:
                raise ChainBusy(f"audit chain {chain_id!r} is held by another daemon; give each daemon its own chain_id")
            if conn.execute("SHOW synchronous_commit").fetchone() == ("off",):
                conn.execute("SET synchronous_commit TO on")  # else COMMIT returns before its WAL is on disk
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def recover(self, chain_id: str, event_ids: list[str]) -> tuple[Head, set[str]]:
        conn = self._connect(chain_id)
        row = conn.execute(POSTGRES.select_head(), (chain_id,)).fetchone()
        stored: set[str] = set()
        if event_ids:
            cursor = conn.execute(POSTGRES.select_stored(len(event_ids)), (chain_id, *event_ids))
            stored = {r[0] for r in cursor.fetchall()}
        return (Head(row[0], row[1]) if row else Head()), stored

    def append(self, records: list[Record], chunks: list[Chunk], head: Head) -> None:
        if self._conn is None or self._conn.broken or self._conn.closed:
            raise psycopg.OperationalError("no connection to the audit database")
        with self._conn.transaction(), self._conn.cursor() as cursor:
            if records:
                cursor.executemany(POSTGRES.insert_record(), record_rows(records))
                cursor.execute(POSTGRES.upsert_head(), (records[0].chain_id, head.seq, head.hash))
            if chunks:
                cursor.executemany(POSTGRES.insert_chunk(), chunk_rows(chunks))

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


def open_reader(dsn: str) -> SqlReader:
    return SqlReader(psycopg.connect(dsn, autocommit=True, connect_timeout=10), POSTGRES)
