"""The approval stores: conditional transitions, grants, survival across reopen (SQLite; the
PostgreSQL store on a throwaway server for the withdrawn state)."""

import asyncio
from dataclasses import replace

from pg_fixture import PgServer

from interceptor.approvals import ApprovalRequest, Grant, SqliteStore, State
from interceptor.approvals.model import normalize_request_id, new_request_id
from interceptor.approvals.postgres import PostgresStore

NOW = 1_800_000_000.0


def request(request_id: str = "ABCD2345") -> ApprovalRequest:
    return ApprovalRequest(
        request_id=request_id, state=State.PENDING, agent="claude", requester="agent-app", requester_user=None,
        identity=None, process=None, flow_id=None, resource="orders-db", operation={"kind": "sql", "text": "DELETE"},
        rule="prod-writes", reason="", approver_groups=("dba",), grant="one-shot", grant_seconds=0,
        grant_key="k1", created_at=NOW, expires_at=NOW + 300,
    )


def test_request_ids_are_short_and_unambiguous():
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 8 and not set(i) & set("ILOU") for i in ids)
    assert normalize_request_id(" abcdoil ") == "ABCD011"


def test_finish_happens_once_and_survives_reopen(tmp_path):
    async def scenario():
        path = str(tmp_path / "state" / "approvals.db")
        store = await SqliteStore.open(path)
        await store.create(request())
        approved = replace(request(), state=State.APPROVED, approver="bob")
        assert await store.finish(approved, Grant("ABCD2345", "k1", True, NOW + 60, "bob"))
        assert not await store.finish(replace(request(), state=State.DENIED), None)
        await store.close()
        reopened = await SqliteStore.open(path)
        stored = await reopened.get("ABCD2345")
        pending = await reopened.list(pending_only=True)
        everything = await reopened.list(pending_only=False)
        grant = await reopened.take_grant("k1", NOW)
        await reopened.close()
        return stored, pending, everything, grant

    stored, pending, everything, grant = asyncio.run(scenario())
    assert stored.state is State.APPROVED and stored.approver == "bob" and stored.approver_groups == ("dba",)
    assert pending == [] and [r.request_id for r in everything] == ["ABCD2345"]
    assert grant == Grant("ABCD2345", "k1", True, NOW + 60, "bob")


def test_grants_one_shot_consumed_time_boxed_kept_expired_gone(tmp_path):
    async def scenario():
        store = await SqliteStore.open(str(tmp_path / "a.db"))
        for rid, one_shot, until in (("ONE00001", True, NOW + 60), ("BOX00001", False, NOW + 30), ("OLD00001", False, NOW - 1)):
            await store.create(request(rid))
            await store.finish(replace(request(rid), state=State.APPROVED), Grant(rid, "k1", one_shot, until, "bob"))
        taken = [await store.take_grant("k1", NOW) for _ in range(2)]
        after_box = [await store.take_grant("k1", NOW + 40) for _ in range(2)]
        by_id = await store.take_grant("k1", NOW, grant_id="ONE00001")
        other_key = await store.take_grant("k2", NOW)
        await store.close()
        return taken, after_box, by_id, other_key

    taken, after_box, by_id, other_key = asyncio.run(scenario())
    assert [g.grant_id for g in taken] == ["BOX00001", "BOX00001"]  # time-boxed preferred, not consumed
    assert [g and g.grant_id for g in after_box] == ["ONE00001", None]  # one-shot consumed once
    assert by_id is None and other_key is None


def withdraw_round_trip(open_store):
    """Store a withdrawn request in a store `open_store()` opens, then read it back from a fresh one."""

    async def scenario():
        store = await open_store()
        await store.create(request("WDRN0001"))
        withdrawn = replace(request("WDRN0001"), state=State.WITHDRAWN, decided_at=NOW + 5,
                            decision_reason="the client disconnected")
        assert await store.finish(withdrawn, None)
        assert not await store.finish(replace(request("WDRN0001"), state=State.APPROVED), None)
        await store.close()
        again = await open_store()
        try:
            return (await again.get("WDRN0001"), await again.list(pending_only=True),
                    await again.list(pending_only=False), withdrawn)
        finally:
            await again.close()

    stored, pending, everything, withdrawn = asyncio.run(scenario())
    assert stored == withdrawn and pending == [] and everything == [withdrawn]


def test_sqlite_store_keeps_a_withdrawn_request(tmp_path):
    withdraw_round_trip(lambda: SqliteStore.open(str(tmp_path / "approvals.db")))


def test_postgres_store_keeps_a_withdrawn_request():
    with PgServer() as pg:
        withdraw_round_trip(lambda: PostgresStore.open(pg.dsn()))
