"""Where approval requests and grants live: SQLite on one host, PostgreSQL for a fleet.

Both stores share one schema and one set of statements (written with %s placeholders),
run on a single worker thread per store so the event loop never waits on disk or
network, and every state change is one conditional transaction: a request leaves
`pending` exactly once, whichever host of a fleet decides it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from interceptor.approvals.model import ApprovalRequest, Grant, State, StoreError

DEFAULT_SQLITE_PATH = "/var/lib/interceptor/approvals.db"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS approval_requests (
        request_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS approval_requests_state ON approval_requests (state, created_at)",
    """CREATE TABLE IF NOT EXISTS approval_grants (
        grant_id TEXT PRIMARY KEY,
        grant_key TEXT NOT NULL,
        one_shot INTEGER NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        approver TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS approval_grants_key ON approval_grants (grant_key, expires_at)",
)

T = TypeVar("T")


class ApprovalStore(Protocol):
    async def create(self, request: ApprovalRequest) -> None: ...

    async def finish(self, request: ApprovalRequest, grant: Grant | None) -> bool:
        """Store the decided request (and its grant) only if it is still pending."""

    async def get(self, request_id: str) -> ApprovalRequest | None: ...

    async def list(self, pending_only: bool) -> list[ApprovalRequest]: ...

    async def take_grant(self, grant_key: str, now: float, grant_id: str | None = None) -> Grant | None:
        """A live grant for the key (consuming it when one-shot); time-boxed ones are preferred."""

    async def close(self) -> None: ...


class SqlStore:
    """The statements both stores run, over a DB-API connection owned by one thread."""

    placeholder = "%s"
    errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        self._connection: Any = None

    def _connect(self) -> Any:
        raise NotImplementedError

    def _transaction(self, connection: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    async def _run(self, work: Callable[[Any], T]) -> T:
        def job() -> T:
            if self._connection is None or getattr(self._connection, "closed", False):
                self._connection = self._connect()
            with self._transaction(self._connection):
                return work(self._connection)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job)
        except self.errors as exc:
            raise StoreError(f"{type(self).__name__}: {exc}") from exc

    def _sql(self, statement: str) -> str:
        return statement.replace("%s", self.placeholder)

    async def initialize(self) -> None:
        def work(connection: Any) -> None:
            for statement in SCHEMA:
                connection.execute(statement)

        await self._run(work)

    async def create(self, request: ApprovalRequest) -> None:
        sql = self._sql("INSERT INTO approval_requests VALUES (%s, %s, %s, %s, %s)")
        row = (request.request_id, request.state.value, request.created_at, request.expires_at, _body(request))
        await self._run(lambda connection: connection.execute(sql, row))

    async def finish(self, request: ApprovalRequest, grant: Grant | None) -> bool:
        update = self._sql("UPDATE approval_requests SET state = %s, body = %s WHERE request_id = %s AND state = %s")
        insert = self._sql("INSERT INTO approval_grants VALUES (%s, %s, %s, %s, %s)")

        def work(connection: Any) -> bool:
            params = (request.state.value, _body(request), request.request_id, State.PENDING.value)
            if connection.execute(update, params).rowcount != 1:
                return False
            if grant is not None:
                connection.execute(insert, (grant.grant_id, grant.grant_key, int(grant.one_shot), grant.expires_at, grant.approver))
            return True

        return await self._run(work)

    async def get(self, request_id: str) -> ApprovalRequest | None:
        sql = self._sql("SELECT body FROM approval_requests WHERE request_id = %s")
        row = await self._run(lambda connection: connection.execute(sql, (request_id,)).fetchone())
        return ApprovalRequest.from_dict(json.loads(row[0])) if row else None

    async def list(self, pending_only: bool) -> list[ApprovalRequest]:
        where = "WHERE state = %s " if pending_only else ""
        sql = self._sql(f"SELECT body FROM approval_requests {where}ORDER BY created_at")
        params = (State.PENDING.value,) if pending_only else ()
        rows = await self._run(lambda connection: connection.execute(sql, params).fetchall())
        return [ApprovalRequest.from_dict(json.loads(row[0])) for row in rows]

    async def take_grant(self, grant_key: str, now: float, grant_id: str | None = None) -> Grant | None:
        purge = self._sql("DELETE FROM approval_grants WHERE expires_at <= %s")
        select = self._sql(
            "SELECT grant_id, grant_key, one_shot, expires_at, approver FROM approval_grants "
            "WHERE grant_key = %s AND expires_at > %s" + (" AND grant_id = %s" if grant_id else "")
            + " ORDER BY one_shot, expires_at DESC LIMIT 1"
        )
        consume = self._sql("DELETE FROM approval_grants WHERE grant_id = %s")

        def work(connection: Any) -> Grant | None:
            connection.execute(purge, (now,))
            params = (grant_key, now, grant_id) if grant_id else (grant_key, now)
            row = connection.execute(select, params).fetchone()
            if row is None:
                return None
            grant = Grant(row[0], row[1], bool(row[2]), row[3], row[4])
            if grant.one_shot and connection.execute(consume, (grant.grant_id,)).rowcount != 1:
                return None  # another host consumed it first
            return grant

        return await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._executor, work)
        self._executor.shutdown(wait=True)


def _body(request: ApprovalRequest) -> str:
    return json.dumps(request.to_dict(), sort_keys=True)


class SqliteStore(SqlStore):
    """The single-host default: one SQLite file, WAL, synchronous commits."""

    placeholder = "?"
    errors = (sqlite3.Error,)

    def __init__(self, path: str = DEFAULT_SQLITE_PATH) -> None:
        super().__init__()
        self.path = path

    @classmethod
    async def open(cls, path: str = DEFAULT_SQLITE_PATH) -> SqliteStore:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        store = cls(path)
        await store.initialize()
        return store

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def _transaction(self, connection: sqlite3.Connection) -> AbstractContextManager[Any]:
        return _SqliteTransaction(connection)


class _SqliteTransaction(AbstractContextManager["_SqliteTransaction"]):
    """BEGIN IMMEDIATE so a read-then-write (take_grant) holds the write lock throughout."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> _SqliteTransaction:
        self.connection.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.connection.execute("ROLLBACK" if exc_type else "COMMIT")
