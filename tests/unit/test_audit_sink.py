"""The group-commit sink over real SQLite and JSONL stores: durability modes, failure, masking."""

import asyncio
import sqlite3
import time

import pytest

from interceptor.audit import AuditEvent, Query, open_sink, open_store, verify
from interceptor.errors import AuditUnavailable


def _event(n: int, **fields) -> AuditEvent:
    return AuditEvent(kind="statement", agent="bot", decision="allow", resource="orders-db",
                      identity={"subject": "alice@example.com"}, operation={"sql": f"SELECT {n}"}, **fields)


def _settings(tmp_path, store: str, **extra) -> dict:
    path = tmp_path / ("audit.jsonl" if store == "jsonl" else "audit.db")
    return {"store": store, "path": str(path), "chain_id": "host-a", **extra}


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_strict_writes_are_stored_chained_and_grouped(tmp_path, store):
    settings = _settings(tmp_path, store)

    async def run():
        sink = open_sink(settings)
        events = [_event(n) for n in range(200)]
        await asyncio.gather(*(sink.write(event) for event in events))
        stats = sink.stats()
        await sink.close()
        return events, stats

    events, stats = asyncio.run(run())
    assert stats["written"] == 200 and stats["queue_depth"] == 0 and stats["failing"] is None
    assert stats["groups"] < 200  # concurrent writers shared commits
    reader = open_store(settings["path"])
    stored = reader.search(Query())
    assert [r.event_id for _, r in stored] == [e.event_id for e in events]
    assert [r.seq for _, r in stored] == list(range(1, 201))
    assert verify(reader).ok


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_a_reopened_sink_continues_its_chain(tmp_path, store):
    settings = _settings(tmp_path, store)

    async def session(n: int):
        sink = open_sink(settings)
        for i in range(n):
            await sink.write(_event(i))
        await sink.close()

    asyncio.run(session(3))
    asyncio.run(session(2))
    reader = open_store(settings["path"])
    assert [r.seq for _, r in reader.records()] == [1, 2, 3, 4, 5]
    assert verify(reader).records_checked == 5 and verify(reader).ok


def test_sqlite_head_follows_groups_split_over_statements_and_stores_without_the_trigger(tmp_path, monkeypatch):
    monkeypatch.setattr("interceptor.audit.sqlite.MAX_ROWS_PER_INSERT", 3)
    settings = _settings(tmp_path, "sqlite", durability="batched", capture=True)

    async def session(n: int, start: int):
        sink = open_sink(settings)
        for i in range(n):  # one group: 10 records in four statements, with session bytes
            sink.submit(_event(start + i))
            sink.write_session_bytes("flow-1", "up", b"Q", ts=float(i))
        await sink.close()

    asyncio.run(session(10, 0))
    with sqlite3.connect(settings["path"]) as conn:  # a store made before the head followed by trigger
        assert conn.execute("SELECT seq FROM audit_heads").fetchall() == [(10,)]
        conn.execute("DROP TRIGGER audit_head_follows")
    asyncio.run(session(4, 10))
    reader = open_store(settings["path"])
    assert [r.seq for _, r in reader.records()] == list(range(1, 15))
    assert reader.heads()["host-a"].seq == 14 and verify(reader).ok
    assert len(reader.chunks("flow-1")) == 14


def test_batched_write_returns_once_queued_and_close_flushes(tmp_path):
    settings = _settings(tmp_path, "sqlite", durability="batched", batch_ms=10_000)

    async def run():
        sink = open_sink(settings)
        await sink.write(_event(1))
        queued = sink.stats()["queue_depth"]
        await sink.close()
        return queued, sink.stats()

    queued, after = asyncio.run(run())
    assert queued == 1
    assert after["written"] == 1 and after["queue_depth"] == 0
    assert len(open_store(settings["path"]).search(Query())) == 1


def test_batched_writes_full_batches_and_flushes_on_close_without_waiting(tmp_path):
    settings = _settings(tmp_path, "sqlite", durability="batched", batch_ms=60_000, max_batch=5)

    async def run():
        sink = open_sink(settings)
        for n in range(9):
            sink.submit(_event(n))
        await asyncio.sleep(0.5)
        sink.submit(_event(9))  # the second batch fills while the writer waits
        await asyncio.sleep(0.5)
        sink.submit(_event(10))
        sink.submit(_event(11))
        await asyncio.sleep(0.2)  # the writer waits for batch_ms again
        during = sink.stats()
        await sink.close()  # ends that wait: nothing is left to close's timeout and abandoned
        return during, sink.stats()

    during, after = asyncio.run(run())
    assert (during["written"], during["queue_depth"], during["groups"]) == (10, 2, 2)
    assert after["written"] == 12 and verify(open_store(settings["path"])).ok


def test_the_next_group_commits_while_the_loop_runs_on(tmp_path, monkeypatch):
    """Records queued while a group commits make the next group, written by the writer thread
    the moment the one before is stored; each group's writers are released as soon as it is."""
    from interceptor.audit.sqlite import SqliteBackend

    appended: list[int] = []
    real_append = SqliteBackend.append

    def slow_append(self, records, chunks, head):
        appended.append(len(records))
        time.sleep(0.2)
        real_append(self, records, chunks, head)

    monkeypatch.setattr(SqliteBackend, "append", slow_append)
    settings = _settings(tmp_path, "sqlite")

    async def run():
        sink = open_sink(settings)
        first = sink.submit(_event(0))
        while not appended:  # the first group is being stored
            await asyncio.sleep(0.001)
        later = [sink.submit(_event(n)) for n in range(1, 6)]
        await first
        released_alone = not any(future.done() for future in later)  # the next group is still being stored
        await asyncio.gather(*later)
        await sink.close()
        return released_alone

    assert asyncio.run(run())
    assert appended == [1, 5]
    assert verify(open_store(settings["path"])).ok


class _Bug(BaseException):
    """Not an Exception: what the writer's store-failure handling does not catch."""


def test_a_crashed_writer_fails_closed(tmp_path, monkeypatch):
    from interceptor.audit.sqlite import SqliteBackend

    def broken(self, records, chunks, head):
        raise _Bug("writer bug")

    monkeypatch.setattr(SqliteBackend, "append", broken)

    async def run():
        sink = open_sink(_settings(tmp_path, "sqlite"))
        with pytest.raises(AuditUnavailable, match="closed before the record was written"):
            await sink.write(_event(1))
        with pytest.raises(AuditUnavailable, match="closed"):
            await sink.write(_event(2))  # nothing more is taken
        stats = sink.stats()
        await sink.close()
        return stats

    assert "audit writer crashed" in asyncio.run(run())["failing"]


def test_close_gives_up_on_a_store_that_hangs_and_refuses_what_waits(tmp_path, monkeypatch):
    from interceptor.audit.sqlite import SqliteBackend

    real_append = SqliteBackend.append

    def hanging(self, records, chunks, head):
        time.sleep(1)
        real_append(self, records, chunks, head)

    monkeypatch.setattr(SqliteBackend, "append", hanging)

    async def run():
        sink = open_sink(_settings(tmp_path, "sqlite"))
        waiting = sink.submit(_event(1))
        started = time.monotonic()
        await sink.close(timeout=0.1)
        took = time.monotonic() - started
        with pytest.raises(AuditUnavailable, match="closed before the record was written"):
            await waiting
        return took

    assert asyncio.run(run()) < 0.5


def test_full_store_fails_closed_and_keeps_what_was_written(tmp_path):
    settings = _settings(tmp_path, "sqlite", max_mb=1, retry_ms=60_000)
    big = "x" * 20_000

    async def run():
        sink = open_sink(settings)
        written = []
        with pytest.raises(AuditUnavailable, match="full") as refused:
            for n in range(1000):
                event = _event(n, reason=big + str(n))
                await sink.write(event)
                written.append(event.event_id)
        with pytest.raises(AuditUnavailable, match="failing"):
            await sink.write(_event(-1))  # refused at once while the store is failing
        stats = sink.stats()
        await sink.close()
        return written, stats, refused.value

    written, stats, refused = asyncio.run(run())
    assert written and stats["failed"] >= 1 and "full" in stats["failing"]
    assert "not written" in str(refused)
    reader = open_store(settings["path"])
    assert [r.event_id for _, r in reader.records()] == written
    assert verify(reader).ok


async def _until(condition, what: str) -> None:
    """Wait (bounded) for the writer task to reach a state; fail naming it otherwise."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"audit writer never reached: {what}")


def test_batched_backlog_is_kept_and_written_when_the_store_recovers(tmp_path):
    # the batch is written once all 100 are queued (max_batch), however slow the host: 2 MB for a 1 MB store
    settings = _settings(tmp_path, "sqlite", durability="batched", batch_ms=60_000, max_batch=100, max_mb=1,
                         retry_ms=20)

    async def run():
        sink = open_sink(settings)
        accepted = [_event(n, reason="y" * 20_000 + str(n)) for n in range(100)]
        for event in accepted:
            await sink.write(event)
        await _until(lambda: sink.stats()["failing"], "store failing")
        with pytest.raises(AuditUnavailable, match="full"):
            await sink.write(_event(-1))
        failing = sink.stats()
        sink.backend.max_mb = 100  # the operator made room; the writer's retry reopens the store
        await _until(lambda: sink.stats()["queue_depth"] == 0, "backlog written")
        await sink.close()
        return [e.event_id for e in accepted], failing, sink.stats()

    accepted, failing, after = asyncio.run(run())
    assert failing["queue_depth"] >= 1
    assert after["failing"] is None and after["written"] == 100
    reader = open_store(settings["path"])
    assert [r.event_id for _, r in reader.records()] == accepted
    assert verify(reader).ok


def test_secrets_are_masked_before_they_are_stored(tmp_path):
    settings = _settings(tmp_path, "sqlite")

    async def run():
        sink = open_sink(settings)
        await sink.write(AuditEvent(kind="statement", operation={"sql": "CREATE ROLE x PASSWORD 'hunter2'"},
                                    outcome={"password": "hunter2"}))
        await sink.close()

    asyncio.run(run())
    raw = (tmp_path / "audit.db").read_bytes() + (tmp_path / "audit.db-wal").read_bytes() \
        if (tmp_path / "audit.db-wal").exists() else (tmp_path / "audit.db").read_bytes()
    assert b"hunter2" not in raw
    event = open_store(settings["path"]).search(Query())[0][1].event
    assert event["operation"]["sql"] == "CREATE ROLE x PASSWORD '[REDACTED]'"


def test_unrepresentable_event_is_refused_not_crashed(tmp_path):
    async def run():
        sink = open_sink(_settings(tmp_path, "sqlite"))
        try:
            await sink.write(AuditEvent(kind="statement", outcome={"ms": float("inf")}))
        finally:
            await sink.close()

    with pytest.raises(AuditUnavailable, match="not representable"):
        asyncio.run(run())


def test_session_bytes_are_stored_per_flow(tmp_path):
    settings = _settings(tmp_path, "sqlite", capture=True)

    async def run():
        sink = open_sink(settings)
        assert sink.capture
        sink.write_session_bytes("flow-1", "up", b"Q\x00", ts=1.0)
        sink.write_session_bytes("flow-2", "up", b"other", ts=1.5)
        sink.write_session_bytes("flow-1", "down", b"T\x01", ts=2.0)
        with pytest.raises(ValueError, match="direction"):
            sink.write_session_bytes("flow-1", "sideways", b"")
        await sink.close()

    asyncio.run(run())
    chunks = open_store(settings["path"]).chunks("flow-1")
    assert [(c.direction, c.ts, c.data) for c in chunks] == [("up", 1.0, b"Q\x00"), ("down", 2.0, b"T\x01")]


def test_derived_columns_cannot_be_edited_apart_from_the_event(tmp_path):
    settings = _settings(tmp_path, "sqlite")

    async def run():
        sink = open_sink(settings)
        await sink.write(_event(1))
        await sink.close()

    asyncio.run(run())
    with sqlite3.connect(settings["path"]) as conn, pytest.raises(sqlite3.OperationalError, match="generated"):
        conn.execute("UPDATE audit_records SET decision = 'deny'")


@pytest.mark.parametrize("settings, problem", [
    ({"store": "mysql"}, "store must be one of"),
    ({"store": "sqlite", "durability": "eventually"}, "durability must be strict or batched"),
    ({"store": "sqlite", "batch_ms": -5}, "batch_ms must be a positive integer"),
    ({"store": "sqlite", "dsn": "x"}, "unknown audit settings for store sqlite: dsn"),
    ({"store": "postgres"}, "needs a dsn"),
    ({"store": "jsonl"}, "needs a path"),
    ({"store": "sqlite", "capture": "yes"}, "capture must be true or false"),
])
def test_bad_settings_are_named(settings, problem):
    with pytest.raises(ValueError, match=problem):
        open_sink(settings)


def test_postgres_settings_as_the_daemon_fills_them_in_are_accepted(tmp_path):
    sink = open_sink({"store": "postgres", "dsn": "postgresql://audit@127.0.0.1/trail", "durability": "batched",
                      "path": str(tmp_path / "audit.db")})
    assert sink.options.durability == "batched" and sink.backend.dsn.endswith("/trail")


def test_chain_id_defaults_to_the_hostname_and_accepts_host_id(tmp_path):
    import socket

    assert open_sink({"path": str(tmp_path / "a.db")}).options.chain_id == socket.gethostname()
    assert open_sink({"path": str(tmp_path / "a.db"), "host_id": "web-7"}).options.chain_id == "web-7"
