"""One session's catalog: the daemon's cached copy for its database, read again after DDL
the session let through, or for a name it does not hold (at most every REREAD_SECONDS)."""

from __future__ import annotations

import asyncio
import ssl

from interceptor.handlers.postgres.catalog import CatalogStore
from interceptor.handlers.postgres.upstream import Upstream
from interceptor.policy.catalog import Catalog, CatalogUnavailable

REREAD_SECONDS = 2.0  # a name the catalog does not hold has it read again at most this often


class CatalogSource:
    """One session's catalog: taken from the daemon's cache (or read, over a connection of
    the enforcer's own with the resource's credentials) at login, read again after DDL the
    session let through, and following the cache when it holds a newer one. A catalog that
    cannot be read is a CatalogUnavailable: statements that need it are denied, the session
    goes on. With no cache configured (None), statements are judged without a catalog."""

    def __init__(self, store: CatalogStore | None, resource: str, database: str, host: str, port: int,
                 credentials: dict[str, str], tls: ssl.SSLContext | None, server_name: str | None) -> None:
        self.store = store
        self.resource = resource
        self.database = database
        self._params = {"user": credentials["user"], "database": database, "client_encoding": "UTF8"}
        self._dial = (host, port, credentials["password"], tls, server_name)
        self._catalog: Catalog | CatalogUnavailable | None = None
        self._loaded_at = 0.0
        self._reading: asyncio.Task[None] | None = None  # a read after the cache's ttl ran out

    async def _connect(self) -> Upstream:
        host, port, password, tls, server_name = self._dial
        return await Upstream.connect(host, port, self._params, password, tls, server_name)

    async def load(self) -> None:
        if self.store is None:
            return
        self._loaded_at = self.store.clock()
        try:
            self._catalog = await self.store.get(self.resource, self.database, self._connect)
        except CatalogUnavailable as exc:
            self._catalog = exc

    async def refresh(self, after_ddl: bool) -> None:
        """Read again: always after DDL; for a missing name only if the catalog in hand is
        older than REREAD_SECONDS (an agent naming what does not exist must not make the
        enforcer read the catalog for every statement)."""
        if self.store is None:
            return
        age = self.store.age(self.resource, self.database)
        if not after_ddl and age is not None and age < REREAD_SECONDS:
            return
        self.store.invalidate(self.resource, self.database)
        await self.load()

    def current(self) -> Catalog | CatalogUnavailable | None:
        """The newest catalog known now (never waits); past the cache's ttl, or when the
        cache was emptied (`interceptor catalog refresh`), a read starts in the background and
        statements use it once it is in."""
        if self.store is None:
            return None
        cached = self.store.peek(self.resource, self.database)
        if cached is not None:
            self._catalog = cached
        if self._reading is None and (cached is None or self.store.clock() - self._loaded_at > self.store.ttl):
            self._reading = asyncio.get_running_loop().create_task(self._reload())
        return self._catalog

    async def _reload(self) -> None:
        try:
            await self.load()
        finally:
            self._reading = None

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
