"""Reading a database's catalog over the enforcer's own upstream connection, and the daemon's
cache of what it read (CatalogStore).

The read is one simple Query of several statements: the login role's settings first, then
`SET LOCAL search_path = pg_catalog` for the rest of that implicit transaction, so neither a
name nor an operator the later statements use can be taken over by a schema on the role's
own search_path (every table and function is also written pg_catalog.-qualified). Each
statement's rows start with a one-letter tag, so the rows of the whole answer can be told
apart in the one list `Upstream.simple_query` returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from interceptor.policy.catalog import VOLATILITY, Catalog, CatalogUnavailable, Function, Relation, parse_search_path

if TYPE_CHECKING:  # the handler hands the store its connections (and may import this module)
    from interceptor.handlers.postgres.handler import Upstream

_SKIPPED_SCHEMAS = "n.nspname <> 'pg_toast' AND NOT pg_catalog.pg_is_other_temp_schema(n.oid)"

# The functions a relation's rewrite rules (a view's definition, a rule's action and
# condition; not for the server's own views) or its column defaults and generated columns
# call, directly, as an aggregate or window function, or through an operator: (the
# relation's oid, the function's schema, its name). Found in the stored expression trees,
# not pg_depend, which records no dependency on the server's own (pinned) functions such as
# now() or pg_read_file(). In a tree's text a token's spaces are backslash-escaped, so only
# a node's own field can read ":funcid 123".
_CALLS = """
SELECT 'd', o.relid, pn.nspname, p.proname
FROM (SELECT r.ev_class AS relid, pg_catalog.concat(r.ev_action, r.ev_qual) AS tree
      FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      UNION ALL
      SELECT a.adrelid, a.adbin::pg_catalog.text FROM pg_catalog.pg_attrdef a) o
CROSS JOIN LATERAL pg_catalog.regexp_matches(o.tree, ':(funcid|aggfnoid|winfnoid|opno) ([0-9]+)', 'g') AS m(f)
LEFT JOIN pg_catalog.pg_operator op ON m.f[1] = 'opno' AND op.oid = m.f[2]::pg_catalog.oid
JOIN pg_catalog.pg_proc p
  ON p.oid = CASE WHEN m.f[1] = 'opno' THEN op.oprcode::pg_catalog.oid ELSE m.f[2]::pg_catalog.oid END
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
"""

CATALOG_QUERY = ";\n".join((
    # s: the login role's default search_path (before the SET below), who it is, where
    "SELECT 's', pg_catalog.current_setting('search_path'), current_user, pg_catalog.current_database()",
    "SET LOCAL search_path = pg_catalog",
    # n: every schema, and whether the login role may use it (a search_path skips it if not)
    f"SELECT 'n', n.nspname, pg_catalog.has_schema_privilege(n.oid, 'USAGE') "
    f"FROM pg_catalog.pg_namespace n WHERE {_SKIPPED_SCHEMAS}",
    # o: the schemas that hold operators
    "SELECT DISTINCT 'o', n.nspname FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace",
    # r: oid, schema, name, relkind, [[column, type], ...] of the live columns in attnum order
    "SELECT 'r', c.oid, n.nspname, c.relname, c.relkind, "
    "(SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, "
    "pg_catalog.format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum) "
    "FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c', 'S') AND {_SKIPPED_SCHEMAS}",
    _CALLS.strip(),
    # f: oid, schema, name, [input argument types], provolatile, prosecdef, language,
    # prokind, proretset, whether the last input argument is VARIADIC
    "SELECT 'f', p.oid, n.nspname, p.proname, "
    "(SELECT pg_catalog.json_agg(pg_catalog.format_type(t.oid, NULL) ORDER BY t.i) "
    "FROM pg_catalog.unnest(p.proargtypes) WITH ORDINALITY AS t(oid, i)), "
    "p.provolatile, p.prosecdef, l.lanname, p.prokind, p.proretset, p.provariadic <> 0 "
    "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "JOIN pg_catalog.pg_language l ON l.oid = p.prolang",
))


async def read_catalog(upstream: Upstream, database: str) -> Catalog:
    """The catalog of the database `upstream` is logged in to, with one simple Query.

    Relations of every kind in catalog.RELATION_KINDS (pg_toast and other sessions'
    temporary schemas left out) with their live columns and types in attnum order and,
    outside pg_catalog and information_schema, the functions their rewrite rules (a view's
    definition) or column defaults call (see _CALLS); every pg_proc row; every schema; the login role's
    effective search_path (`current_setting`, so a startup parameter would show in it too),
    current_user and current_database().

    Raises LoginError when the server answers with an error, OSError or ProtocolViolation
    when the connection fails, and CatalogUnavailable when the answer is not a catalog of
    `database` (another database, a search_path that does not parse, malformed rows).
    """
    rows = await upstream.simple_query(CATALOG_QUERY)
    try:
        # ~3,500 rows for an empty database take tens of milliseconds to build into a
        # Catalog: in a thread, so the sessions' event loop is not held up for all of it
        return await asyncio.to_thread(_catalog, rows, database)
    except (ValueError, TypeError, LookupError) as exc:
        raise CatalogUnavailable(f"malformed catalog rows from the server: {exc}") from None


def _catalog(rows: list[list[str | None]], database: str) -> Catalog:
    tagged: dict[str, list[list[str | None]]] = {"s": [], "n": [], "o": [], "r": [], "d": [], "f": []}
    for row in rows:
        tagged[str(row[0])].append(row[1:])
    if len(tagged["s"]) != 1:
        raise CatalogUnavailable(f"expected one settings row, got {len(tagged['s'])}")
    path_setting, user, current = (str(value) for value in tagged["s"][0])
    if current != database:
        raise CatalogUnavailable(f"the catalog connection is to database {current!r}, not {database!r}")
    path = parse_search_path(path_setting)
    if path is None:
        raise CatalogUnavailable(f"the login role's search_path {path_setting!r} does not parse")
    calls: dict[int, set[str]] = {}
    for relid, schema, name in tagged["d"]:
        calls.setdefault(int(str(relid)), set()).add(f"{schema}.{name}")
    relations = []
    for oid, schema, name, kind, columns in tagged["r"]:
        pairs = json.loads(columns) if columns is not None else []
        relations.append(Relation(str(schema), str(name), str(kind), tuple(str(c) for c, _ in pairs),
                                  tuple(str(t) for _, t in pairs), int(str(oid)),
                                  tuple(sorted(calls.get(int(str(oid)), ())))))
    functions = [_function(row) for row in tagged["f"]]
    return Catalog.build(relations, functions, schemas=(str(name) for name, _ in tagged["n"]),
                         default_search_path=path, user=user, database=current,
                         unusable=(str(name) for name, usable in tagged["n"] if usable != "t"),
                         operators=(str(name) for (name,) in tagged["o"]))


def _function(row: list[str | None]) -> Function:
    oid, schema, name, arguments, volatility, definer, language, kind, returns_set, variadic = row
    types = [str(t) for t in json.loads(arguments)] if arguments is not None else []
    if variadic == "t":
        types[-1] = f"VARIADIC {types[-1]}"  # as pg_get_function_identity_arguments lists it
    return Function(str(schema), str(name), tuple(types), VOLATILITY[str(volatility)], definer == "t",
                    str(language), str(kind), returns_set == "t", int(str(oid)))


Key = tuple[str, str]  # (resource, database)


@dataclass(slots=True)
class _Slot:
    """What the store knows of one (resource, database): the last catalog read and when
    (monotonic seconds), the last failure and when, and the read under way, which
    concurrent callers share."""

    catalog: Catalog | None = None
    read_at: float = 0.0
    failure: str | None = None
    failed_at: float = 0.0
    reading: asyncio.Task[Catalog] | None = None


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One key of the store as `catalog show` reports it. `read_at` is epoch seconds and
    `age` seconds (both None before a first successful read); `failure` the last read's
    error while it is remembered."""

    resource: str
    database: str
    catalog: Catalog | None
    read_at: float | None
    age: float | None
    fresh: bool
    failure: str | None
    reading: bool


class CatalogStore:
    """The daemon's catalogs by (resource, database).

    `get` answers from a catalog read less than `ttl` seconds ago, else reads one through a
    connection it opens with the caller's `connect` and closes after; concurrent callers for
    one key share a single read. A read that fails or takes over `timeout` seconds raises
    CatalogUnavailable, and that failure is answered again for `failure_ttl` seconds before
    the next read is tried. At most `max_entries` keys are kept, the least recently used
    dropped first. `clock` is monotonic seconds (injectable for tests).
    """

    def __init__(self, *, ttl: float = 300.0, timeout: float = 10.0, failure_ttl: float = 5.0,
                 max_entries: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.timeout = timeout
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()

    async def get(self, resource: str, database: str, connect: Callable[[], Awaitable[Upstream]]) -> Catalog:
        """The catalog of `database` on `resource`: cached while fresh, else read (or joined
        to the read under way). Raises CatalogUnavailable saying what failed: the login, the
        query, or the timeout; or the failure still remembered from a recent attempt."""
        key = (resource, database)
        now = self.clock()
        slot = self._touch(key)
        if slot is not None and slot.catalog is not None and now - slot.read_at < self.ttl:
            return slot.catalog
        if slot is not None and self._remembered(slot, now) and slot.reading is None:
            raise CatalogUnavailable(f"{slot.failure} ({now - slot.failed_at:.0f}s ago; "
                                     f"tried again {self.failure_ttl:g}s after a failure)")
        if slot is None:
            slot = self._add(key)
        if slot.reading is None:
            slot.reading = asyncio.ensure_future(self._read(key, slot, connect))
        # shielded: a caller giving up does not cancel the read the others wait for
        return await asyncio.shield(slot.reading)

    def peek(self, resource: str, database: str) -> Catalog | None:
        """The last catalog read for the key, even when stale; None when none was. Never blocks."""
        slot = self._touch((resource, database))
        return slot.catalog if slot is not None else None

    def invalidate(self, resource: str, database: str | None = None) -> int:
        """Forget the catalogs of `resource` (of one database, or all): the next `get` reads
        again. A read under way finishes for those already waiting on it, but what it read is
        not kept. Returns how many keys were dropped."""
        keys = [k for k in self._slots if k[0] == resource and (database is None or k[1] == database)]
        for key in keys:
            del self._slots[key]
        return len(keys)

    def entries(self) -> list[StoreEntry]:
        """Every key held, least recently used first."""
        now, wall = self.clock(), time.time()
        return [StoreEntry(resource, database, slot.catalog,
                           wall - (now - slot.read_at) if slot.catalog is not None else None,
                           now - slot.read_at if slot.catalog is not None else None,
                           slot.catalog is not None and now - slot.read_at < self.ttl,
                           slot.failure if self._remembered(slot, now) else None, slot.reading is not None)
                for (resource, database), slot in self._slots.items()]

    def _remembered(self, slot: _Slot, now: float) -> bool:
        return slot.failure is not None and now - slot.failed_at < self.failure_ttl

    def _touch(self, key: Key) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        return slot

    def _add(self, key: Key) -> _Slot:
        slot = self._slots[key] = _Slot()
        while len(self._slots) > self.max_entries:
            self._slots.popitem(last=False)
        return slot

    async def _read(self, key: Key, slot: _Slot, connect: Callable[[], Awaitable[Upstream]]) -> Catalog:
        resource, database = key
        stage = ["logging in"]

        async def read() -> Catalog:
            try:
                upstream = await connect()
            except Exception as exc:  # noqa: BLE001 - whatever stops the login, the catalog is unavailable
                raise CatalogUnavailable(f"login failed: {exc}") from None
            try:
                stage[0] = "querying"
                return await read_catalog(upstream, database)
            except CatalogUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - as above, for the query
                raise CatalogUnavailable(f"query failed: {exc}") from None
            finally:
                upstream.close()

        try:
            catalog = await asyncio.wait_for(read(), self.timeout)
        except CatalogUnavailable as exc:
            failure = str(exc)
        except TimeoutError:
            failure = f"timed out after {self.timeout:g}s {stage[0]}"
        else:
            failure = None
        finally:
            slot.reading = None
        current = self._slots.get(key) is slot  # not invalidated or dropped meanwhile
        if failure is None:
            if current:
                slot.catalog, slot.read_at, slot.failure = catalog, self.clock(), None
            return catalog
        message = f"the catalog of database {database!r} on resource {resource!r} is unavailable: {failure}"
        if current:
            slot.failure, slot.failed_at = message, self.clock()
        raise CatalogUnavailable(message)
