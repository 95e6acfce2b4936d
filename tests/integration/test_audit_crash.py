"""kill -9 of a strict-mode writer under load: every event whose write returned (and so whose
result a client could have received) is in the store afterwards, and the chain verifies."""

import json
import os
import signal
import subprocess
import sys

import pytest

from interceptor.audit import open_store, verify
from pg_fixture import PgServer

# The "daemon" (asyncio on uvloop, as the real one): 16 concurrent clients; an id is printed only after its write returned.
CHILD = """
import asyncio, json, sys
import uvloop
from interceptor.audit import AuditEvent, open_sink

async def client(sink, n):
    while True:
        event = AuditEvent(kind="statement", agent=f"agent-{n}", decision="allow", operation={"sql": "SELECT 1"})
        await sink.write(event)
        print(event.event_id, flush=True)

async def main():
    sink = open_sink(json.loads(sys.argv[1]))
    await asyncio.gather(*(client(sink, n) for n in range(16)))

uvloop.run(main())
"""
ACKNOWLEDGED_BEFORE_KILL = 2000


def _kill_under_load(settings: dict) -> list[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    printed = []
    try:
        for line in child.stdout:
            printed.append(line.strip())
            if len(printed) >= ACKNOWLEDGED_BEFORE_KILL:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
    rest, errors = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, errors
    printed += [line for line in rest.splitlines() if line]
    assert len(printed) >= ACKNOWLEDGED_BEFORE_KILL, f"writer stopped early: {errors}"
    return printed


def _assert_all_stored(spec: str, printed: list[str]) -> None:
    store = open_store(spec)
    stored = {record.event_id for _, record in store.records()}
    missing = [event_id for event_id in printed if event_id not in stored]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    result = verify(store)
    assert result.ok, result
    assert result.records_checked >= len(printed)


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_kill_9_loses_no_acknowledged_record_in_a_file_store(tmp_path, store):
    path = str(tmp_path / ("audit.jsonl" if store == "jsonl" else "audit.db"))
    printed = _kill_under_load({"store": store, "path": path, "durability": "strict", "chain_id": "crashy"})
    _assert_all_stored(path, printed)


def test_kill_9_loses_no_acknowledged_record_in_postgres():
    with PgServer() as pg:
        printed = _kill_under_load({"store": "postgres", "dsn": pg.dsn(), "durability": "strict",
                                    "chain_id": "crashy"})
        _assert_all_stored(pg.dsn(), printed)


def test_a_writer_restarted_after_kill_9_continues_the_chain(tmp_path):
    path = str(tmp_path / "audit.db")
    settings = {"store": "sqlite", "path": path, "durability": "strict", "chain_id": "crashy"}
    first = _kill_under_load(settings)
    second = _kill_under_load(settings)
    _assert_all_stored(path, first + second)
