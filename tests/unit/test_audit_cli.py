"""`interceptor audit ...` through click's CliRunner, on real stores tampered with by hand."""

import asyncio
import json
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from audit_fixture import fill_store
from interceptor.audit import AuditEvent, Query, open_sink, open_store, search_all
from interceptor.audit.cli import audit, default_store, parse_time
from interceptor.config import load_settings

AGENTS = ["claude", "cursor"]


def _fill(settings: dict, count: int = 6) -> list[AuditEvent]:
    events = [AuditEvent(kind="statement", agent=AGENTS[n % 2], decision="deny" if n == 4 else "allow",
                         resource="orders-db" if n < 3 else "billing-db", rule=f"rule-{n}",
                         identity={"subject": f"user{n % 3}@example.com"}, operation={"sql": f"SELECT {n}"},
                         time=1_700_000_000 + n * 60)
              for n in range(count)]

    async def run():
        sink = open_sink(settings)
        for event in events:
            await sink.write(event)
        await sink.close()

    asyncio.run(run())
    return events


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.db"
    events = _fill({"store": "sqlite", "path": str(path), "chain_id": "host-a"})
    return str(path), events


def _run(*args: str):
    return CliRunner().invoke(audit, list(args))


def test_verify_passes_on_an_untouched_store(db):
    path, _ = db
    result = _run("verify", "--store", path)
    assert result.exit_code == 0, result.output
    assert "OK: 6 records in 1 chain(s) verified" in result.output


def test_verify_names_a_record_edited_in_the_sqlite_file(db):
    path, events = db
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_records SET event = replace(event, '\"deny\"', '\"allow\"') WHERE seq = 5")
    result = _run("verify", "--store", path)
    assert result.exit_code == 1
    assert f"record seq 5 (event {events[4].event_id}) was edited" in result.output
    report = json.loads(_run("verify", "--store", path, "--json").output)
    assert report["ok"] is False and report["first_bad"] == 5 and report["problem"] == "edited"


def test_verify_names_a_deleted_record(db):
    path, _ = db
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq = 3")
    result = _run("verify", "--store", path)
    assert result.exit_code == 1
    assert "record seq 3 was deleted" in result.output


def test_verify_names_a_truncated_tail(db):
    path, _ = db
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq >= 5")
    result = _run("verify", "--store", path)
    assert result.exit_code == 1 and "record seq 5 was deleted" in result.output


def test_verify_names_reordered_records(db):
    path, events = db
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_records SET id = -1 WHERE seq = 2")
        conn.execute("UPDATE audit_records SET id = 2 WHERE seq = 3")
        conn.execute("UPDATE audit_records SET id = 3 WHERE seq = 2")
    result = _run("verify", "--store", path)
    assert result.exit_code == 1
    assert f"record seq 3 (event {events[2].event_id}) was reordered" in result.output


def test_verify_names_an_edited_jsonl_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    events = _fill({"store": "jsonl", "path": str(path), "chain_id": "host-a"})
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"agent":"cursor"', '"agent":"someone-else"')
    path.write_text("\n".join(lines) + "\n")
    result = _run("verify", "--store", str(path))
    assert result.exit_code == 1
    assert f"record seq 2 (event {events[1].event_id}) was edited" in result.output


def test_a_torn_jsonl_tail_is_cut_and_the_chain_goes_on(tmp_path):
    path = tmp_path / "audit.jsonl"
    settings = {"store": "jsonl", "path": str(path), "chain_id": "host-a"}
    _fill(settings, 2)
    with open(path, "a") as handle:
        handle.write('{"chain_id":"host-a","seq":3,"prev')  # a crash mid-write, never acknowledged
    _fill(settings, 2)
    result = _run("verify", "--store", str(path))
    assert result.exit_code == 0 and "OK: 4 records" in result.output, result.output


def test_tail_prints_the_last_records(db):
    path, events = db
    result = _run("tail", "-n", "2", "--store", path)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) == 2
    assert lines[0].endswith(events[4].event_id) and lines[1].endswith(events[5].event_id)
    assert "host-a#6 statement allow agent=cursor subject=user2@example.com resource=billing-db" in lines[1]


def test_search_filters_combine(db):
    path, events = db
    result = _run("search", "--store", path, "--agent", "claude", "--resource", "billing-db", "--json")
    found = [json.loads(line)["event"]["event_id"] for line in result.output.splitlines()]
    assert found == [events[4].event_id]
    result = _run("search", "--store", path, "--decision", "deny")
    assert result.output.count("\n") == 1 and "deny" in result.output
    result = _run("search", "--store", path, "--subject", "user0@example.com", "--json")
    assert [json.loads(line)["seq"] for line in result.output.splitlines()] == [1, 4]


def test_search_by_time(db):
    path, _ = db
    since, until = str(1_700_000_000 + 60), "2023-11-14T22:17:00+00:00"  # seq 2 .. before seq 5
    result = _run("search", "--store", path, "--since", since, "--until", until, "--json")
    assert [json.loads(line)["seq"] for line in result.output.splitlines()] == [2, 3, 4]


def test_show_prints_one_whole_record(db):
    path, events = db
    result = _run("show", events[3].event_id, "--store", path, "--json")
    record = json.loads(result.output)
    assert record["seq"] == 4 and record["event"]["rule"] == "rule-3" and len(record["hash"]) == 64
    missing = _run("show", "nope", "--store", path)
    assert missing.exit_code == 1 and "no audit record with event id nope" in missing.output


def test_export_jsonl_writes_every_record(db, tmp_path):
    path, events = db
    out = tmp_path / "export.jsonl"
    result = _run("export", "--format", "jsonl", "-o", str(out), "--store", path)
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["event"]["event_id"] for r in exported] == [e.event_id for e in events]
    assert all(set(r) == {"chain_id", "seq", "prev_hash", "hash", "event"} for r in exported)


def test_export_pcap_without_capture_says_so(db, tmp_path):
    path, _ = db
    result = _run("export", "--pcap", "flow-x", "-o", str(tmp_path / "x.pcap"), "--store", path)
    assert result.exit_code == 1 and "no captured bytes for session flow-x" in result.output
    assert "needs -o FILE" in _run("export", "--pcap", "flow-x", "--store", path).output


def test_missing_store_is_a_clear_error(tmp_path):
    result = _run("verify", "--store", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and "cannot open audit store" in result.output and "none.db" in result.output


def test_a_file_that_is_no_audit_store_is_a_clear_error(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    result = _run("tail", "--store", str(other))
    assert result.exit_code == 1 and "audit_records" in result.output


def test_default_store_follows_the_settings_file(tmp_path):
    config = tmp_path / "interceptor.yaml"
    config.write_text("")
    assert default_store(load_settings(config)) == "/var/lib/interceptor/audit.db"
    config.write_text("state_dir: /srv/ic\n")
    assert default_store(load_settings(config)) == "/srv/ic/audit.db"
    config.write_text("audit:\n  store: postgres\n  dsn: postgresql://audit@db/trail\n")
    assert default_store(load_settings(config)) == "postgresql://audit@db/trail"
    config.write_text("audit: {store: jsonl, path: /var/log/ic.jsonl}\n")
    assert default_store(load_settings(config)) == "/var/log/ic.jsonl"


def test_parse_time_forms():
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_time("2h", now=10_000) == 2_800 and parse_time("1.5d", now=200_000) == 70_400
    with pytest.raises(Exception, match="is not a time"):
        parse_time("yesterday")


def test_tail_follow_prints_records_as_they_are_written(db):
    import subprocess
    import sys

    path, events = db
    follower = subprocess.Popen(
        [sys.executable, "-c", "from interceptor.audit.cli import audit; audit()", "tail", "-f", "-n", "1",
         "--interval", "0.05", "--json", "--store", path], stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(follower.stdout.readline())["event"]["event_id"] == events[-1].event_id
        later = _fill({"store": "sqlite", "path": path, "chain_id": "host-a"}, 3)
        seen = [json.loads(follower.stdout.readline()) for _ in later]
    finally:
        follower.kill()
        follower.wait()
    assert [r["event"]["event_id"] for r in seen] == [e.event_id for e in later]
    assert [r["seq"] for r in seen] == [7, 8, 9]


def test_one_line_records_say_what_and_escape_what_an_agent_chose(tmp_path):
    path = tmp_path / "audit.db"
    command = "sudo chmod 0777 /etc '\x1b[20Dsystemctl status nginx\x1b[K' \u202e\x9b" + " x" * 40
    events = [AuditEvent(kind="ssh", agent="claude\x1b]0;t\x07", decision="approve", rule="ops-restart-needs-approval",
                         resource="web-1", operation={"kind": "ssh", "request": "exec", "command": command}),
              AuditEvent(kind="request", decision="allow",
                         operation={"kind": "http", "method": "GET", "path": "/v1/x"}),
              AuditEvent(kind="statement", decision="deny", operation={"sql": "DELETE FROM orders WHERE id = 7"}),
              AuditEvent(kind="ssh", decision="allow", operation={"kind": "ssh", "request": "sftp-open",
                                                                  "path": "/srv/motd"})]
    fill_store(path, events)
    lines = _run("search", "--store", str(path)).output.splitlines()
    assert len(lines) == 4 and all(line.isprintable() for line in lines), lines
    assert f"rule=ops-restart-needs-approval what={'exec ' + command[:60] + '...'!r}" in lines[0]
    assert "agent=claude\\x1b]0;t\\x07" in lines[0]
    assert "what='GET /v1/x'" in lines[1]
    assert "what='DELETE FROM orders WHERE id = 7'" in lines[2]
    assert "what='sftp-open /srv/motd'" in lines[3]


def test_a_reader_that_stops_reading_ends_the_command_quietly(db):
    path, _ = db
    reader = subprocess.Popen([sys.executable, "-c", "from interceptor.audit.cli import audit; audit()", "search",
                               "--store", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # `| head -0`: nobody reads what search prints
    assert reader.wait(60) == 141
    assert reader.stderr.read() == b""


def test_search_all_reads_every_match_a_page_at_a_time(tmp_path):
    path = tmp_path / "audit.db"
    fill_store(path, [AuditEvent(kind="statement", agent="a" if i % 2 else "b", decision="allow", rule=str(i))
                      for i in range(9)])
    store = open_store(str(path))
    try:
        rules = [record.event["rule"] for _, record in search_all(store, Query(agent="a"), page=2)]
    finally:
        store.close()
    assert rules == ["1", "3", "5", "7"]
