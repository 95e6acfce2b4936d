"""CatalogStore: the daemon's catalogs by (resource, database), read through a fake upstream
connection that answers the catalog query with canned rows; the daemon's catalog control
methods and `interceptor catalog show | refresh`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from interceptor.catalog_cli import catalog
from interceptor.control import ControlClient, ControlError, ControlMethod, Peer
from interceptor.control_api import CatalogControl
from interceptor.errors import LoginError
from interceptor.handlers.postgres.catalog import CATALOG_QUERY, CatalogStore, read_catalog
from interceptor.policy import load_policy_text
from interceptor.policy.catalog import Catalog, CatalogUnavailable

ROWS: list[list[str | None]] = [
    ["s", '"$user", public', "owner", "app"],
    ["n", "public", "t"],
    ["n", "sales", "t"],
    ["r", "16384", "sales", "orders", "r", '[["id", "integer", 23, 1], ["total", "numeric(10,2)", 1700, 2]]'],
    ["r", "16390", "sales", "report", "v", '[["id", "integer", 23, 1]]'],
    ["r", "16395", "public", "empty", "c", None],
    ["c", "16390", "rule:1", "public", "audit_hit", None],
    ["c", "16390", "rule:1", "public", "audit_hit", None],
    ["f", "16400", "public", "audit_hit", '["integer", "text[]"]', "v", "t", "plpgsql", "f", "f", "t"],
    ["f", "16401", "public", "now_ish", None, "s", "f", "sql", "f", "t", "f"],
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeUpstream:
    """Answers the catalog query once `gate` is set (at once without one), or fails."""

    def __init__(self, rows: list[list[str | None]], gate: asyncio.Event | None = None,
                 error: Exception | None = None) -> None:
        self.rows, self.gate, self.error = rows, gate, error
        self.closed = False

    async def simple_query(self, sql: str) -> list[list[str | None]]:
        assert sql == CATALOG_QUERY
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.rows

    def close(self) -> None:
        self.closed = True


class Server:
    """connect() for the store: counts logins, hands out FakeUpstreams."""

    def __init__(self, rows: list[list[str | None]] = ROWS, *, gate: asyncio.Event | None = None,
                 login_error: Exception | None = None, query_error: Exception | None = None,
                 login_hangs: bool = False) -> None:
        self.rows, self.gate = rows, gate
        self.login_error, self.query_error, self.login_hangs = login_error, query_error, login_hangs
        self.logins = 0
        self.upstreams: list[FakeUpstream] = []

    def to(self, database: str) -> Callable[[], Awaitable[Any]]:
        """connect() to `database` (the rows' settings row names it)."""

        async def connect() -> Any:
            self.logins += 1
            if self.login_hangs:
                await asyncio.Event().wait()
            if self.login_error is not None:
                raise self.login_error
            rows = [row if row[0] != "s" else [*row[:3], database] for row in self.rows]
            upstream = FakeUpstream(rows, self.gate, self.query_error)
            self.upstreams.append(upstream)
            return upstream

        return connect


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def test_read_catalog_builds_relations_functions_and_calls() -> None:
    catalog = run(lambda: read_catalog(FakeUpstream(ROWS), "app"))  # type: ignore[arg-type]
    assert catalog.database == "app" and catalog.user == "owner"
    assert catalog.default_search_path == ("$user", "public")
    orders = catalog.relation("sales", "orders")
    assert orders is not None and orders.columns == ("id", "total") and orders.types == ("integer", "numeric(10,2)")
    assert orders.oid == 16384 and orders.kind == "r" and orders.functions == ()
    report = catalog.relation("sales", "report")
    assert report is not None and report.kind == "v" and report.functions == ("public.audit_hit",)
    assert catalog.columns("public", "empty") == ()
    (hit,) = catalog.functions_named("public", "audit_hit")
    assert hit.arguments == ("integer", "VARIADIC text[]") and hit.volatility == "volatile"
    assert hit.security_definer and hit.language == "plpgsql" and hit.oid == 16400 and not hit.returns_set
    (now_ish,) = catalog.functions_named("public", "now_ish")
    assert now_ish.arguments == () and now_ish.volatility == "stable" and now_ish.returns_set
    assert {"public", "sales", "pg_catalog"} <= catalog.schemas


HIDDEN_CODE_ROWS: list[list[str | None]] = [
    ["s", "public", "owner", "app"],
    ["r", "100", "sales", "t", "r", '[["id", "integer", 23, 1], ["c", "sales.d", 300, 2]]'],
    ["r", "110", "sales", "parted", "p", '[["id", "integer", 23, 1]]'],
    ["r", "120", "sales", "ruled", "r", '[["id", "integer", 23, 1]]'],
    ["r", "200", "sales", "v", "v", '[["id", "integer", 23, 1]]'],
    ["c", "100", "using:*", "sales", "bump", None],
    ["c", "100", "with_check:a", "sales", "purge", None],
    ["c", "100", "check", "sales", "chk", None],
    ["c", "100", "default", "sales", "def", None],
    ["c", "100", "default", None, None, "301"],  # the default coerces to the domain sales.d2
    ["c", "100", "index", "sales", "imm", None],
    ["c", "300", "domain", "sales", "dchk", None],
    ["t", "100", "5", "sales", "trg"],  # ROW | INSERT
    ["t", "100", "34", "sales", "on_truncate"],  # BEFORE | TRUNCATE
    ["v", "200", "1", "100"],
    ["v", "200", "1", "200"],  # a view's definition names the view itself (OLD, NEW)
    ["v", "120", "4", "100"],  # ON DELETE TO ruled DO ALSO ... sales.t
    ["i", "110", "100"],
    ["r", "130", "sales", "guarded", "r", '[["id", "integer", 23, 1]]'],
    ["q", "130", "d", "100"],  # a DELETE policy of guarded reads sales.t
    ["q", "130", "r", "200"],  # a SELECT policy of guarded reads sales.v
    ["y", "23", "pg_catalog", "int4", "b", "0", "0", "0", None],
    ["y", "300", "sales", "d", "d", "23", "0", "0", None],
    ["y", "301", "sales", "d2", "d", "300", "0", "0", None],
    ["y", "302", "sales", "_d2", "b", "0", "301", "0", None],
    ["y", "303", "sales", "t", "c", "0", "0", "100", None],
    ["x", "301", "sales", "to_d"],
    ["p", "sales", "##", "sales", "plus"],
    ["p", "sales", "##", "sales", "plus_numeric"],
]


def test_read_catalog_finds_the_code_relations_and_types_run() -> None:
    catalog = run(lambda: read_catalog(FakeUpstream(HIDDEN_CODE_ROWS), "app"))  # type: ignore[arg-type]
    t, view, parted, ruled = (catalog.relations[("sales", name)] for name in ("t", "v", "parted", "ruled"))
    domain_checks = {("insert", "sales.dchk"), ("update", "sales.dchk")}
    assert t.functions == ("sales.bump",)
    assert set(t.write_functions) == {
        ("update", "sales.bump"), ("delete", "sales.bump"), ("insert", "sales.purge"), ("insert", "sales.chk"),
        ("update", "sales.chk"), ("default", "sales.def"), ("default", "sales.dchk"), ("default", "sales.to_d"),
        ("insert", "sales.imm"), ("update", "sales.imm"), ("insert", "sales.trg"),
        ("truncate", "sales.on_truncate"), *domain_checks}
    assert view.functions == t.functions and view.write_functions == t.write_functions
    assert parted.functions == () and parted.write_functions == t.write_functions
    assert set(ruled.write_functions) == {("delete", f) for f in ("sales.bump", "sales.purge", "sales.chk", "sales.def",
                                                                  "sales.dchk", "sales.to_d", "sales.imm", "sales.trg",
                                                                  "sales.on_truncate")}
    assert ruled.functions == ()
    guarded = catalog.relations[("sales", "guarded")]
    assert guarded.functions == ("sales.bump",) and guarded.write_functions == (("delete", "sales.bump"),)
    assert [catalog.types[("sales", name)].functions for name in ("d", "d2", "_d2", "t")] == [
        ("sales.dchk",), ("sales.dchk", "sales.to_d"), ("sales.dchk", "sales.to_d"), ("sales.dchk",)]
    assert catalog.types[("pg_catalog", "int4")].functions == () and catalog.complete
    assert catalog.operator_functions == {("sales", "##"): ("sales.plus", "sales.plus_numeric")}
    assert Catalog.from_dict(json.loads(json.dumps(catalog.to_dict()))) == catalog


VALUE_ROWS: list[list[str | None]] = [
    ["s", "public", "owner", "app"],
    ["r", "100", "sales", "shapes", "r", '[["ps", "point[]", 1017, 1]]'],
    ["r", "110", "sales", "plain", "r", '[["id", "integer", 23, 1]]'],
    ["r", "120", "sales", "pairs", "c", '[["a", "sales.spot", 300, 1]]'],
    ["r", "130", "sales", "nested", "v", '[["x", "sales.pairs", 400, 1]]'],
    ["y", "23", "pg_catalog", "int4", "b", "0", "0", "0", None],
    ["y", "600", "pg_catalog", "point", "b", "0", "701", "0", None],
    ["y", "1017", "pg_catalog", "_point", "b", "0", "600", "0", None],
    ["y", "300", "sales", "spot", "d", "600", "0", "0", None],
    ["y", "400", "sales", "pairs", "c", "0", "0", "120", None],
    ["y", "500", "sales", "pair", "c", "0", "0", "0", None],
    ["y", "510", "sales", "span", "r", "0", "0", "0", "23"],
    ["r", "140", "sales", "spans", "r", '[["s", "sales.span", 510, 1]]'],
    ["u", "o", "600", "sales.pt_ops", "sales", "pcmp"],  # sales' default btree operator class for point
    ["u", "m", "600", None, "sales", "pcmp"],
    ["u", "o", "600", "sales.pt_ops", "sales", "peq"],
    ["u", "m", "600", None, "sales", "peq"],
    ["u", "o", "500", "sales.pair_ops", "sales", "paircmp"],  # a default one for a type of sales'
    ["u", "r", "510", None, "sales", "intcmp"],  # the range's subtype_opclass
    ["u", "r", "510", None, "sales", "span_diff"],
    ["k", "110", "sales", "consistent"],  # an index of sales.plain with an operator class of sales'
]


def test_a_relation_runs_what_values_of_its_columns_types_and_its_indexes_run() -> None:
    catalog = run(lambda: read_catalog(FakeUpstream(VALUE_ROWS), "app"))  # type: ignore[arg-type]
    found = {name: (r.functions, r.write_functions) for (_, name), r in catalog.relations.items()}
    compared = (("sales.pcmp", "sales.peq"), ())
    indexed = (("sales.consistent",), (("insert", "sales.consistent"), ("update", "sales.consistent")))
    ranged = (("sales.intcmp", "sales.span_diff"), tuple((event, f) for f in ("sales.intcmp", "sales.span_diff")
                                                         for event in ("insert", "update")))
    assert found == {"shapes": compared, "pairs": compared, "nested": compared, "plain": indexed,
                     "spans": (ranged[0], tuple(sorted(ranged[1])))}
    assert catalog.types[("sales", "spot")].functions == ()  # a cast to the domain runs none of them
    assert catalog.types[("sales", "pair")].functions == ("sales.paircmp",)
    assert catalog.types[("sales", "span")].functions == ("sales.intcmp", "sales.span_diff")
    assert catalog.types[("pg_catalog", "point")].functions == ()
    assert catalog.opclass_functions == {("pg_catalog.point", "sales.pt_ops"): ("sales.pcmp", "sales.peq")}
    again = Catalog.from_dict(json.loads(json.dumps(catalog.to_dict())))
    assert again == catalog and again.version == catalog.version
    without = Catalog.build(catalog.relations.values(), types=catalog.types.values())
    assert without.version != Catalog.build(catalog.relations.values(), types=catalog.types.values(),
                                            opclass_functions=catalog.opclass_functions).version


@pytest.mark.parametrize("rows, database, message", [
    (ROWS, "other", "is to database 'app', not 'other'"),
    ([["s", "public, ", "owner", "app"]], "app", "does not parse"),
    ([["n", "public", "t"]], "app", "expected one settings row"),
    ([*ROWS, ["r", "x", "public", "t", "r", None]], "app", "malformed catalog rows"),
    ([*ROWS, ["z", "?"]], "app", "malformed catalog rows"),
    ([*ROWS, ["c", "16384", "using:?", "public", "audit_hit", None]], "app", "malformed catalog rows"),
])
def test_read_catalog_refuses_what_is_not_this_databases_catalog(rows: list[list[str | None]], database: str,
                                                                 message: str) -> None:
    with pytest.raises(CatalogUnavailable, match=message):
        run(lambda: read_catalog(FakeUpstream(rows), database))  # type: ignore[arg-type]


def test_concurrent_gets_share_one_read_and_the_connection_is_closed() -> None:
    async def scenario() -> tuple[list[Catalog], Server]:
        server = Server(gate=asyncio.Event())
        store = CatalogStore()
        waiting = [asyncio.ensure_future(store.get("db", "app", server.to("app"))) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert server.logins == 1 and not any(w.done() for w in waiting)
        assert server.gate is not None
        server.gate.set()
        return list(await asyncio.gather(*waiting)), server

    catalogs, server = run(scenario)
    assert server.logins == 1 and all(c is catalogs[0] for c in catalogs)
    assert [u.closed for u in server.upstreams] == [True]


def test_a_caller_giving_up_does_not_cancel_the_shared_read() -> None:
    async def scenario() -> tuple[Catalog, Server]:
        server = Server(gate=asyncio.Event())
        store = CatalogStore()
        impatient = asyncio.ensure_future(store.get("db", "app", server.to("app")))
        patient = asyncio.ensure_future(store.get("db", "app", server.to("app")))
        await asyncio.sleep(0.01)
        impatient.cancel()
        await asyncio.sleep(0.01)
        assert server.gate is not None
        server.gate.set()
        return await patient, server

    catalog, server = run(scenario)
    assert catalog.relation("sales", "orders") is not None and server.logins == 1


def test_entries_expire_after_ttl_and_peek_still_returns_the_stale_one() -> None:
    async def scenario() -> None:
        clock, server = Clock(), Server()
        store = CatalogStore(ttl=300, clock=clock)
        assert store.peek("db", "app") is None and store.age("db", "app") is None
        first = await store.get("db", "app", server.to("app"))
        clock.now += 299
        assert store.age("db", "app") == pytest.approx(299)
        assert await store.get("db", "app", server.to("app")) is first and server.logins == 1
        clock.now += 2
        assert store.peek("db", "app") is first  # stale, and peek does not read
        (entry,) = store.entries()
        assert not entry.fresh and entry.age == pytest.approx(301) and entry.catalog is first
        second = await store.get("db", "app", server.to("app"))
        assert server.logins == 2 and second == first and store.entries()[0].fresh

    run(scenario)


def test_a_failed_login_is_remembered_then_retried() -> None:
    async def scenario() -> None:
        clock = Clock()
        server = Server(login_error=OSError("connection refused"))
        store = CatalogStore(failure_ttl=5, clock=clock)
        with pytest.raises(CatalogUnavailable, match="database 'app' on resource 'db'.*login failed: connection refused"):
            await store.get("db", "app", server.to("app"))
        clock.now += 4
        with pytest.raises(CatalogUnavailable, match=r"login failed: connection refused \(4s ago"):
            await store.get("db", "app", server.to("app"))
        assert server.logins == 1 and store.entries()[0].failure is not None
        clock.now += 2
        server.login_error = None
        catalog = await store.get("db", "app", server.to("app"))
        assert server.logins == 2 and catalog.database == "app" and store.entries()[0].failure is None

    run(scenario)


def test_a_failed_query_says_so_and_closes_the_connection() -> None:
    async def scenario() -> None:
        server = Server(query_error=LoginError("query failed: permission denied for table pg_proc"))
        with pytest.raises(CatalogUnavailable, match="query failed: .*permission denied"):
            await CatalogStore().get("db", "app", server.to("app"))
        assert [u.closed for u in server.upstreams] == [True]

    run(scenario)


def test_a_read_that_takes_too_long_is_unavailable() -> None:
    async def scenario() -> None:
        store = CatalogStore(timeout=0.05)
        with pytest.raises(CatalogUnavailable, match=r"timed out after 0.05s logging in"):
            await store.get("db", "app", Server(login_hangs=True).to("app"))
        stuck = Server(gate=asyncio.Event())
        with pytest.raises(CatalogUnavailable, match=r"timed out after 0.05s querying"):
            await store.get("db", "other", stuck.to("other"))
        assert [u.closed for u in stuck.upstreams] == [True]

    run(scenario)


def test_invalidate_drops_entries_so_the_next_get_reads_again() -> None:
    async def scenario() -> None:
        server = Server()
        store = CatalogStore()
        for resource, database in (("db", "app"), ("db", "app2"), ("other", "app")):
            await store.get(resource, database, server.to(database))
        assert store.invalidate("db", "app2") == 1
        assert [(e.resource, e.database) for e in store.entries()] == [("db", "app"), ("other", "app")]
        assert store.invalidate("db") == 1 and store.invalidate("db") == 0
        assert store.peek("db", "app") is None and store.peek("other", "app") is not None
        await store.get("db", "app", server.to("app"))
        assert server.logins == 4

    run(scenario)


def test_what_a_read_under_way_returns_after_an_invalidate_is_not_kept() -> None:
    async def scenario() -> None:
        server = Server(gate=asyncio.Event())
        store = CatalogStore()
        before_ddl = asyncio.ensure_future(store.get("db", "app", server.to("app")))
        await asyncio.sleep(0.01)
        store.invalidate("db", "app")
        assert server.gate is not None
        server.gate.set()
        assert (await before_ddl).database == "app"  # its waiter gets it
        assert store.peek("db", "app") is None and store.entries() == []

    run(scenario)


def test_at_most_max_entries_keys_least_recently_used_dropped() -> None:
    async def scenario() -> None:
        server = Server()
        store = CatalogStore(max_entries=2)
        await store.get("db", "a", server.to("a"))
        await store.get("db", "b", server.to("b"))
        await store.get("db", "a", server.to("a"))  # a is now the most recently used
        await store.get("db", "c", server.to("c"))
        assert [e.database for e in store.entries()] == ["a", "c"]
        assert store.peek("db", "b") is None and server.logins == 3

    run(scenario)


POLICY = """version: 1
resources:
  db: {protocol: postgres, addresses: ["10.0.0.5:5432"]}
  echo: {protocol: tcp, addresses: ["10.0.0.6:7"]}
agents:
  bot: {uids: [1001]}
rules:
  - {name: r1, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select]}}
"""


class Control:
    """The daemon's catalog control methods behind the control client's interface."""

    def __init__(self, store: CatalogStore) -> None:
        policy = load_policy_text(POLICY, "p.yaml")
        self.methods = CatalogControl(store, lambda: policy.resources).methods()

    def call(self, method: ControlMethod, **params: Any) -> Any:
        try:
            return self.methods[method](peer=Peer(1, 0, 0), **params)
        except ValueError as exc:  # what the control server answers as {"error": ...}
            raise ControlError(str(exc)) from None


def cli(store: CatalogStore, *args: str) -> Result:
    return CliRunner().invoke(catalog, list(args), obj={"control": Control(store)})


def held(*keys: tuple[str, str]) -> CatalogStore:
    server = Server()
    store = CatalogStore()

    async def fill() -> None:
        for resource, database in keys:
            await store.get(resource, database, server.to(database))

    asyncio.run(fill())
    return store


def test_catalog_show_lists_what_the_daemon_holds() -> None:
    store = held(("db", "app"), ("db", "other"))
    shown = cli(store, "show")
    assert shown.exit_code == 0, shown.output
    header, *rows = shown.output.splitlines()
    assert header.split()[:4] == ["RESOURCE", "DATABASE", "READ", "AT"] and len(rows) == 2
    assert rows[0].split()[:2] == ["db", "app"] and "3" in rows[0].split() and "fresh" in rows[0]
    assert '"$user", public' in rows[0]
    as_json = json.loads(cli(store, "show", "--database", "other", "--json").output)
    assert [(e["database"], e["relations"], e["functions"], e["default_search_path"]) for e in as_json] == [
        ("other", 3, 2, ["$user", "public"])]
    assert "no catalogs held for resource db database nope" in cli(store, "show", "db", "--database", "nope").output


def test_catalog_show_json_of_one_database_is_a_dump_policy_tests_load() -> None:
    store = held(("db", "app"))
    shown = cli(store, "show", "db", "--database", "app", "--json")
    assert shown.exit_code == 0, shown.output
    assert Catalog.from_dict(json.loads(shown.output)) == store.peek("db", "app")
    missing = cli(store, "show", "db", "--database", "other", "--json")
    assert missing.exit_code == 1 and "no catalog of database 'other' on resource 'db' is held" in missing.output


def test_catalog_refresh_drops_so_the_next_session_reads_again() -> None:
    store = held(("db", "app"), ("db", "other"))
    one = cli(store, "refresh", "db", "--database", "app")
    assert one.exit_code == 0 and "dropped 1 catalog(s) of database app on resource db" in one.output
    assert "read it again" in one.output and store.peek("db", "app") is None
    every = cli(store, "refresh", "db")
    assert "dropped 1 catalog(s) of every database" in every.output and store.entries() == []


@pytest.mark.parametrize("args, message", [
    (("refresh", "nope"), "unknown resource 'nope' (the policy has: db, echo)"),
    (("show", "nope"), "unknown resource 'nope'"),
    (("show", "echo", "--database", "x", "--json"), "resource 'echo' is tcp, which has no database catalog"),
])
def test_catalog_commands_name_a_bad_resource(args: tuple[str, ...], message: str) -> None:
    result = cli(CatalogStore(), *args)
    assert result.exit_code == 1 and message in result.output


def test_catalog_commands_say_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(catalog, ["show"], obj={"control": ControlClient(tmp_path / "control.sock")})
    assert result.exit_code == 1 and "the interceptor daemon is not running" in result.output
