"""Review of issue 19's audit writer thread, canonical text and compiled hot modules: each test
pins one way a guarantee broke (a record lost or never stored, a sink refusing everything for
good, a chain that no longer verifies, a binary running other code than its source)."""

from __future__ import annotations

import asyncio
import sqlite3
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from interceptor import compiled
from interceptor.audit import AuditEvent, Query, open_sink, open_store, verify
from interceptor.errors import AuditUnavailable
from test_compiled import MODULE, package, quiet  # noqa: F401 - package is a fixture

REPO = Path(__file__).resolve().parents[2]


def _event(n: int, **fields: Any) -> AuditEvent:
    return AuditEvent(kind="statement", agent="bot", decision="allow", resource="orders-db",
                      operation={"sql": f"SELECT {n}"}, **fields)


def _settings(tmp_path: Path, store: str = "sqlite", **extra: Any) -> dict[str, Any]:
    path = tmp_path / ("audit.jsonl" if store == "jsonl" else "audit.db")
    return {"store": store, "path": str(path), "chain_id": "host-a", **extra}


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# Values an event can carry that no store can take as they are: the writer thread failed on each
# after `submit` had accepted it, for good (batched: the sink refused every operation until a
# restart and its backlog was never stored; close then crashed logging it).
UNENCODABLE: dict[str, dict[str, Any]] = {
    "lone surrogate in a member name": {"\udc80key": 1},
    "NUL in a member name": {"a\x00b": 1},
    "integer past json's 4300 digits": {"n": 10 ** 5000},
    "nesting past json's recursion limit": {"deep": _nested(2000)},
}


@pytest.mark.parametrize("durability", ["strict", "batched"])
@pytest.mark.parametrize("outcome", list(UNENCODABLE.values()), ids=list(UNENCODABLE))
def test_an_event_no_store_can_take_is_refused_at_submit_and_the_sink_writes_on(tmp_path, durability, outcome):
    settings = _settings(tmp_path, durability=durability, batch_ms=1, retry_ms=20)

    async def run() -> dict[str, Any]:
        sink = open_sink(settings)
        first = sink.submit(_event(1))
        with pytest.raises(AuditUnavailable, match="not representable"):
            sink.submit(_event(0, outcome=outcome))
        if first is not None:
            await first  # strict: its group is not refused for the bad record's sake
        await sink.write(_event(2))
        await asyncio.sleep(0.05)
        stats = sink.stats()
        await sink.close(timeout=2)
        return stats

    stats = asyncio.run(run())
    assert stats["failing"] is None and stats["written"] == 2 and stats["queue_depth"] == 0
    reader = open_store(settings["path"])
    assert [r.event["operation"]["sql"] for _, r in reader.records()] == ["SELECT 1", "SELECT 2"]
    assert verify(reader).ok


# Text no store can hold as it is (PostgreSQL's text and jsonb refuse NUL: one SSH exec command
# or MCP tool name holding it stopped a PostgreSQL audit store; no store writes a lone surrogate
# as UTF-8), kept with U+FFFD in its place as undecodable bytes are.
UNSTORABLE_TEXT = {"short": "a\x00b", "long": "echo a\x00; rm -rf /", "surrogate": "\ud800",
                   "long surrogate": "cat /tmp/\udcff-file", "argv": ["sh", "-c", "a\x00b", "\udc80"],
                   "flow_id": "f\x00"}
STORED_TEXT = {"short": "a\ufffdb", "long": "echo a\ufffd; rm -rf /", "surrogate": "\ufffd",
               "long surrogate": "cat /tmp/\ufffd-file", "argv": ["sh", "-c", "a\ufffdb", "\ufffd"],
               "flow_id": "f\ufffd"}


def _write_unstorable_text(settings: dict[str, Any]) -> None:
    async def run() -> None:
        for durability in ("strict", "batched"):
            sink = open_sink({**settings, "durability": durability, "batch_ms": 1, "retry_ms": 20})
            await sink.write(_event(1, outcome=UNSTORABLE_TEXT))
            await sink.write(_event(2))
            await asyncio.sleep(0.05)
            assert sink.stats()["failing"] is None
            await sink.close(timeout=2)

    asyncio.run(run())
    reader = open_store(settings.get("path") or settings["dsn"])
    records = [r for _, r in reader.records()]
    assert [r.event.get("outcome") for r in records] == [STORED_TEXT, None, STORED_TEXT, None]
    assert verify(reader).ok


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_text_no_store_can_hold_is_kept_with_replacement_characters(tmp_path, store):
    _write_unstorable_text(_settings(tmp_path, store))


def test_text_postgres_cannot_hold_does_not_stop_a_postgres_store():
    from pg_fixture import PgServer

    with PgServer() as pg:
        _write_unstorable_text({"store": "postgres", "dsn": pg.dsn(), "chain_id": "host-a"})


def test_nesting_deep_enough_to_overflow_the_c_stack_is_refused_not_a_crash(tmp_path):
    """Compiled, the scrubber recursed without Python's recursion limit: the daemon died of SIGSEGV."""
    code = textwrap.dedent(f"""
        import asyncio
        from interceptor.audit import AuditEvent, open_sink
        from interceptor.errors import AuditUnavailable

        async def main():
            sink = open_sink({{"store": "sqlite", "path": {str(tmp_path / 'audit.db')!r}, "chain_id": "h"}})
            value = []
            for _ in range(300_000):
                value = [value]
            try:
                sink.submit(AuditEvent(kind="statement", outcome={{"deep": value}}))
            except AuditUnavailable as exc:
                print("refused:", exc)
            await sink.close()

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: audit event is not representable as JSON" in done.stdout


def test_records_written_by_the_code_before_issue_19_verify(tmp_path):
    """A store written before today's chain and sink (git 104530a^) verifies and is continued."""
    old = tmp_path / "old"
    subprocess.run(f"git -C {REPO} archive 104530a^ interceptor | tar -x -C {tmp_path} --one-top-level=old",
                   shell=True, check=True)
    settings = _settings(tmp_path, durability="batched")
    code = textwrap.dedent(f"""
        import asyncio
        from interceptor.audit import AuditEvent, open_sink
        from interceptor.audit.event import SharedSummary

        async def main():
            sink = open_sink({settings!r})
            process = SharedSummary({{"exe": "/usr/bin/psql", "argv": ["psql", "-c", "x\\u2028y"], "pid": 7}})
            for n, outcome in enumerate([{{"f": 0.1}}, {{"z": -0.0}}, {{"i": 2 ** 70}}, {{"s": "\\x00\\x1f\\u2028é"}},
                                          {{"e": 1e-300, "l": [1, 2.5, None, True]}}]):
                sink.submit(AuditEvent(kind="statement", flow_id="f1", process=process, outcome=outcome,
                                       operation={{"sql": f"SELECT {{n}}"}}))
            await sink.close()

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": str(old)}
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(old)!r})\n" + code],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr

    async def more() -> None:
        sink = open_sink(settings)
        await sink.write(_event(99, outcome={"f": 0.1, "z": -0.0}))
        await sink.close()

    asyncio.run(more())
    reader = open_store(settings["path"])
    assert [r.seq for _, r in reader.records()] == [1, 2, 3, 4, 5, 6]
    assert verify(reader).ok
    assert reader.search(Query(limit=1, newest=True))[0][1].event["outcome"] == {"f": 0.1, "z": -0.0}


def test_a_torn_jsonl_write_is_cut_before_the_retry_so_no_later_record_is_lost(tmp_path, monkeypatch):
    """A short write (a full disk) left part of a group in the file; the retry appended the next
    group right after that fragment, so its first record was glued into an unreadable line."""
    from interceptor.audit import jsonl

    real_write = os.write
    groups: list[bytes] = []

    def short_write(fd: int, data: bytes) -> int:
        groups.append(data)
        if len(groups) == 2:  # the second group: half of it reaches the file
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(jsonl.os, "write", short_write)
    settings = _settings(tmp_path, "jsonl", retry_ms=10)

    async def run() -> None:
        sink = open_sink(settings)
        await sink.write(_event(1))
        with pytest.raises(AuditUnavailable, match="short write"):
            await sink.write(_event(2))
        await asyncio.sleep(0.05)  # past retry_ms: the next write is taken and the store reopened
        await sink.write(_event(3))
        await sink.close()

    asyncio.run(run())
    reader = open_store(settings["path"])
    assert [r.event.get("operation") for _, r in reader.records()] == [{"sql": "SELECT 1"}, {"sql": "SELECT 3"}]
    assert verify(reader).ok


def test_close_against_a_failing_store_retries_at_retry_ms_not_in_a_tight_loop(tmp_path, monkeypatch):
    """Once closing, every failed retry was followed by the next at once: the writer spun on
    the store (reopening it each time) for all of close's timeout."""
    from interceptor.audit.sqlite import SqliteBackend

    calls: list[float] = []
    real_recover = SqliteBackend.recover

    def counting_recover(self, chain_id, event_ids):
        calls.append(time.monotonic())
        return real_recover(self, chain_id, event_ids)

    def failing_append(self, records, chunks, head):
        raise OSError("disk I/O error")

    monkeypatch.setattr(SqliteBackend, "recover", counting_recover)
    monkeypatch.setattr(SqliteBackend, "append", failing_append)

    async def run() -> None:
        sink = open_sink(_settings(tmp_path, durability="batched", batch_ms=1, retry_ms=200))
        sink.submit(_event(1))
        await asyncio.sleep(0.05)  # the first commit failed
        await sink.close(timeout=0.5)

    asyncio.run(run())
    assert 2 <= len(calls) <= 6, f"{len(calls)} store reopenings in 0.55 s with retry_ms=200"


# ---- compiled hot modules --------------------------------------------------------------------

@pytest.fixture
def importable(package: Path) -> Path:
    """test_compiled's one-module package, whose __init__ checks its binaries as the real one does
    (its compiled.py lists the one module)."""
    source = (compiled.PACKAGE / "compiled.py").read_text()
    listed = re.sub(r"^HOT: tuple\[str, \.\.\.\] = \(.*?^\)", f"HOT: tuple[str, ...] = ({MODULE!r},)", source,
                    count=1, flags=re.M | re.S)
    assert listed != source
    (package / "compiled.py").write_text(listed)
    (package / "__init__.py").write_text("from interceptor.compiled import verify\n\nverify()\n")
    return package


def test_a_binary_of_a_module_that_is_not_listed_is_refused(package: Path):
    """A hand-run cythonize (or a module dropped from HOT whose manifest is gone) left a binary
    no check looked at: it ran instead of its source, whatever the source became."""
    (package / "cold.py").write_text("VALUE = 1\n")
    compiled.in_place_path("interceptor.cold", package).write_bytes(b"")
    with pytest.raises(compiled.StaleBuild, match="cold.*was not made by the build"):
        compiled.verify(package)


def test_a_binary_in_a_subpackage_that_is_not_listed_is_refused(package: Path):
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("VALUE = 1\n")
    (package / "sub" / "mod.abi3.so").write_bytes(b"")
    with pytest.raises(compiled.StaleBuild, match="mod.abi3.so was not made by the build"):
        compiled.verify(package)


def _run_in(package: Path, code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter that imports this `interceptor` package, not the checkout's."""
    env = {**os.environ, "PYTHONPATH": str(package.parent), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(package.parent)!r})\n"
                           + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60)


def test_a_binary_imported_after_its_source_changed_is_refused_at_that_import(importable: Path):
    """The check ran once, at `import interceptor`; a hot module imported later (the daemon
    imports a protocol's handler at its first connection) after its source was edited (an
    upgrade while running) ran the old binary silently."""
    compiled.build(importable, jobs=1, say=quiet)
    source = importable / "hot_sample.py"
    done = _run_in(importable, f"""
        import pathlib, interceptor
        pathlib.Path({str(source)!r}).write_text("def double(x: int) -> int:\\n    return 3 * x\\n")
        try:
            import interceptor.hot_sample as hot
        except ImportError as exc:
            print("refused:", type(exc).__name__, exc)
        else:
            print("ran:", hot.double(1), hot.__file__)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: StaleBuild"), done.stdout
    assert f"{source} changed since" in done.stdout


def test_a_current_binary_still_imports_compiled(importable: Path):
    compiled.build(importable, jobs=1, say=quiet)
    done = _run_in(importable, """
        import interceptor.hot_sample as hot
        print(hot.double(21), hot.__file__.endswith(".so"))
    """)
    assert (done.returncode, done.stdout) == (0, "42 True\n"), done.stderr


def test_a_postgres_store_commits_durably_where_the_server_says_synchronous_commit_off():
    """With the server's (or the role's) synchronous_commit off, COMMIT returned before its WAL
    was flushed: strict writers were released before their records were on disk."""
    from pg_fixture import PgServer

    async def run(dsn: str) -> tuple[str, dict[str, str]]:
        sink = open_sink({"store": "postgres", "dsn": dsn, "chain_id": "host-a"})
        await sink.write(_event(1))
        setting: str = sink.backend._conn.execute("SHOW synchronous_commit").fetchone()[0]
        parameters = sink.backend._conn.info.get_parameters()
        await sink.close()
        return setting, parameters

    with PgServer(settings={"synchronous_commit": "off"}) as pg:
        setting, parameters = asyncio.run(run(pg.dsn()))
    assert setting == "on"
    # a server that stops answering fails the commit (strict writers refused, not left waiting)
    assert (parameters["keepalives"], parameters["tcp_user_timeout"]) == ("1", "15000")


# ---- what held (kept as tests) -----------------------------------------------------------------

def test_a_strict_writer_is_released_only_once_its_record_reads_back_from_another_connection(tmp_path):
    settings = _settings(tmp_path)
    seen: list[bool] = []

    async def run() -> None:
        sink = open_sink(settings)
        events = [_event(n) for n in range(50)]
        futures = [sink.submit(event) for event in events]
        for event, future in zip(events, futures):
            assert future is not None

            def released(_: object, event_id: str = event.event_id) -> None:
                with sqlite3.connect(settings["path"]) as conn:
                    seen.append(conn.execute("SELECT count(*) FROM audit_records WHERE event_id = ?",
                                             (event_id,)).fetchone() == (1,))

            future.add_done_callback(released)
        await asyncio.gather(*futures)
        await sink.close()

    asyncio.run(run())
    assert seen == [True] * 50


def test_what_is_done_to_an_event_after_submit_never_reaches_the_trail(tmp_path):
    settings = _settings(tmp_path, durability="batched", batch_ms=50)

    async def run() -> None:
        sink = open_sink(settings)
        event = _event(1, outcome={"rows": [1, 2], "tag": {"name": "SELECT"}})
        sink.submit(event)
        event.operation["sql"] = "DROP TABLE orders"  # type: ignore[index]
        event.outcome["rows"].append(3)  # type: ignore[index]
        event.outcome["tag"]["name"] = "DROP"  # type: ignore[index]
        event.decision = "deny"
        await sink.close()

    asyncio.run(run())
    record = open_store(settings["path"]).search(Query())[0][1]
    assert (record.event["operation"], record.event["outcome"], record.event["decision"]) == (
        {"sql": "SELECT 1"}, {"rows": [1, 2], "tag": {"name": "SELECT"}}, "allow")


def test_a_write_once_close_has_begun_is_refused_and_all_before_it_are_stored(tmp_path):
    settings = _settings(tmp_path, durability="batched", batch_ms=10_000)

    async def run() -> list[str]:
        sink = open_sink(settings)
        events = [_event(n) for n in range(20)]
        for event in events:
            sink.submit(event)
        closing = asyncio.ensure_future(sink.close())
        await asyncio.sleep(0)
        with pytest.raises(AuditUnavailable, match="closed"):
            sink.submit(_event(99))
        await closing
        return [event.event_id for event in events]

    ids = asyncio.run(run())
    reader = open_store(settings["path"])
    assert [r.event_id for _, r in reader.records()] == ids and verify(reader).ok


def test_arguments_as_deep_as_an_mcp_request_can_nest_are_still_scrubbed_not_refused():
    """The depth limit must not let an agent hide an MCP call's arguments from the trail
    (handlers/http/mcp.py records "[not JSON]" for arguments scrub refuses)."""
    from interceptor.audit.scrub import scrub
    from interceptor.handlers.http.mcp import strict_json

    deepest = 1
    while True:
        try:
            strict_json(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":'
                        + b"[" * deepest + b"]" * deepest + b"}}}")
        except ValueError:
            break
        deepest += 1
    arguments = {"a": _nested(deepest), "password": "hunter2"}
    assert scrub(arguments) == {"a": _nested(deepest), "password": "[REDACTED]"}
