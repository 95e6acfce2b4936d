"""The fleet store against a real PostgreSQL 15 (tests/pg_fixture.py): shared tables, one chain
per daemon, an outage survived without losing a batched record, tampering named."""

import asyncio

import psycopg
import pytest
from click.testing import CliRunner

from interceptor.audit import AuditEvent, Query, open_sink, open_store, verify
from interceptor.audit.cli import audit
from interceptor.errors import AuditUnavailable
from pg_fixture import PgServer


@pytest.fixture
def pg():
    with PgServer() as server:
        yield server


def _sink(pg: PgServer, chain_id: str, **extra):
    return open_sink({"store": "postgres", "dsn": pg.dsn(), "chain_id": chain_id, **extra})


def _event(agent: str, n: int) -> AuditEvent:
    return AuditEvent(kind="statement", agent=agent, decision="allow", resource="orders-db",
                      operation={"sql": f"SELECT {n}"})


async def _daemon(pg: PgServer, chain_id: str, count: int) -> list[str]:
    sink = _sink(pg, chain_id)
    events = [_event(chain_id, n) for n in range(count)]
    for start in range(0, count, 25):
        await asyncio.gather(*(sink.write(e) for e in events[start:start + 25]))
    await sink.close()
    return [e.event_id for e in events]


def test_two_daemons_keep_separate_valid_chains(pg):
    async def run():
        return await asyncio.gather(_daemon(pg, "host-a", 300), _daemon(pg, "host-b", 200))

    ids_a, ids_b = asyncio.run(run())
    store = open_store(pg.dsn())
    result = verify(store)
    assert result.ok and result.records_checked == 500 and result.chains == 2
    for chain_id, ids in (("host-a", ids_a), ("host-b", ids_b)):
        records = [r for _, r in store.search(Query(agent=chain_id))]
        assert [r.event_id for r in records] == ids
        assert {r.chain_id for r in records} == {chain_id}
        assert [r.seq for r in records] == list(range(1, len(ids) + 1))
    assert pg.psql("SELECT chain_id || ':' || seq FROM audit_heads ORDER BY chain_id").split() == \
        ["host-a:300", "host-b:200"]


def test_a_second_daemon_on_the_same_chain_is_refused(pg):
    async def run():
        first, second = _sink(pg, "host-a"), _sink(pg, "host-a")
        await first.write(_event("a", 1))
        with pytest.raises(AuditUnavailable, match="held by another daemon"):
            await second.write(_event("b", 1))
        await first.write(_event("a", 2))
        await first.close()
        await second.close()

    asyncio.run(run())
    assert verify(open_store(pg.dsn())).ok


def test_batched_records_survive_a_database_outage(pg):
    async def until(condition, what):
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"audit writer never reached: {what}")

    async def run():
        sink = _sink(pg, "host-a", durability="batched", batch_ms=5, retry_ms=50, connect_timeout=2)
        before = [_event("a", n) for n in range(10)]
        for event in before:
            await sink.write(event)
        await until(lambda: sink.stats()["written"] == 10, "first records written")
        pg.shutdown()
        during = [_event("a", n) for n in range(10, 20)]
        for event in during:
            await sink.write(event)  # accepted: the writer has not failed yet
        await until(lambda: sink.stats()["failing"], "outage noticed")
        with pytest.raises(AuditUnavailable, match="failing"):
            await sink.write(_event("a", 99))  # fail closed while the store is down
        assert sink.stats()["queue_depth"] == 10
        pg.start()
        await until(lambda: sink.stats()["queue_depth"] == 0, "backlog written after the outage")
        await sink.close()
        return [e.event_id for e in before + during]

    ids = asyncio.run(run())
    store = open_store(pg.dsn())
    assert [r.event_id for _, r in store.records()] == ids
    assert verify(store).ok


def test_strict_write_is_refused_while_the_database_is_down(pg):
    async def run():
        sink = _sink(pg, "host-a", connect_timeout=2)
        await sink.write(_event("a", 1))
        pg.shutdown()
        with pytest.raises(AuditUnavailable, match="not written"):
            await sink.write(_event("a", 2))
        stats = sink.stats()
        pg.start()
        await sink.close()
        return stats

    stats = asyncio.run(run())
    assert stats["failed"] == 1 and stats["written"] == 1


def test_tampering_in_postgres_is_named(pg):
    asyncio.run(_daemon(pg, "host-a", 5))
    asyncio.run(_daemon(pg, "host-b", 5))
    pg.psql("UPDATE audit_records SET event = replace(event, '\"allow\"', '\"deny\"') "
            "WHERE chain_id = 'host-b' AND seq = 4")
    result = CliRunner().invoke(audit, ["verify", "--store", pg.dsn()])
    assert result.exit_code == 1
    assert "chain host-b record seq 4" in result.output and "edited" in result.output
    with pytest.raises(psycopg.errors.GeneratedAlways):
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("UPDATE audit_records SET decision = 'deny'")
