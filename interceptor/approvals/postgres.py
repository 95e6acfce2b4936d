"""The fleet store: one PostgreSQL shared by every host, same schema as SQLite, so an
approver on any host sees and decides every host's requests."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import psycopg

from interceptor.approvals.store import SqlStore


class PostgresStore(SqlStore):
    """psycopg 3 on the store's worker thread; a lost connection is reopened on next use."""

    errors = (psycopg.Error,)

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        store = cls(dsn)
        await store.initialize()
        return store

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)

    def _transaction(self, connection: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        return connection.transaction()
