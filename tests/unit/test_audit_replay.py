"""`interceptor audit replay` through click's CliRunner, on a real SQLite audit store holding
the "ssh" and "ssh-end" records the ssh handler writes (the recording named by its file name,
found in the recordings directory), and recordings tampered with by hand."""

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_fixture import fill_store
from interceptor.audit import AuditEvent
from interceptor.audit import cli as audit_cli
from interceptor.audit.cli import audit
from interceptor.audit.recording import Recording
from interceptor.config import Settings

SHELL = {"kind": "ssh", "request": "shell", "pty": True}
OUTPUT = [b"\x1b[1;32muser@web1\x1b[0m:~$ ", "ls -l café\r\n".encode(), "😀 ok".encode()[:2],
          "😀 ok".encode()[2:] + b"\r\n"]


def _record(tmp_path, name: str, typed: bytes = b"ls -l caf\xc3\xa9\r") -> dict:
    """A recording made in `tmp_path`/recordings, summed up as the ssh handler's "ssh-end"
    record names it: its file name, never its directory."""
    directory = tmp_path / "recordings"
    directory.mkdir(exist_ok=True)
    rec = Recording.start(directory, name, width=80, height=24, term="xterm", limit=1 << 20)
    rec.output(OUTPUT[0])
    rec.input(typed)
    for chunk in OUTPUT[1:]:
        rec.output(chunk)
    rec.resize(100, 30)
    summary = rec.close()
    return {"file": f"{name}.cast", "sha256": summary.sha256, "bytes": summary.bytes, "events": summary.events,
            "limited": summary.limited}


def _pair(flow: str, recording: dict | None, operation: dict = SHELL) -> tuple[AuditEvent, AuditEvent]:
    request = AuditEvent(kind="ssh", agent="claude", decision="allow", rule="shells", resource="web1",
                         flow_id=flow, operation=operation)
    outcome = {"exit_status": 0, "bytes_up": 12, "bytes_down": 60, "request_event": request.event_id}
    if recording is not None:
        outcome["recording"] = recording
    end = AuditEvent(kind="ssh-end", agent="claude", decision="allow", rule="shells", resource="web1",
                     flow_id=flow, operation=operation, outcome=outcome)
    return request, end


@pytest.fixture
def session(tmp_path):
    store = str(tmp_path / "audit.db")
    recording = _record(tmp_path, "flow-a-0")
    request, end = _pair("flow-a", recording)
    fill_store(store, [AuditEvent(kind="connection", decision="allow", flow_id="flow-a"), request, end])
    return store, request, end, recording


def _run(*args: str, state_dir=None):
    """`audit replay ARGS` with the settings of a daemon whose state_dir is `state_dir`
    (default: the test's, found from the store's `--store` directory)."""
    store = args[args.index("--store") + 1] if "--store" in args else "."
    settings = Settings(state_dir=state_dir or Path(store).parent)
    return CliRunner().invoke(audit, ["replay", *args], obj={"settings": settings})


@pytest.mark.parametrize("by", ["ssh-end", "ssh"])
def test_speed_0_writes_the_output_exactly(session, by):
    store, request, end, recording = session
    result = _run((end if by == "ssh-end" else request).event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"".join(OUTPUT)
    recordings = Path(store).parent / "recordings"
    assert f"replaying event {end.event_id}: {recordings / recording['file']} (SHA-256 verified), 80x24" \
        in result.stderr


def test_input_is_shown_marked_and_escaped(tmp_path):
    store = str(tmp_path / "audit.db")
    request, end = _pair("flow-b", _record(tmp_path, "flow-b-0", typed=b"\x1b[A\x03q\xc2\x9b"))
    fill_store(store, [request, end])
    shown = _run(end.event_id, "--speed", "0", "--input", "--store", store).stdout_bytes.decode()
    assert shown.startswith("\x1b[1;32muser@web1\x1b[0m:~$ [input: \\x1b[A\\x03q\\x9b]ls -l café\r\n")
    assert "[input" not in _run(end.event_id, "--speed", "0", "--store", store).stdout


def test_json_prints_header_and_summary_without_playing(session):
    store, _, end, recording = session
    result = _run(end.event_id, "--json", "--store", store)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["event_id"] == end.event_id and summary["flow_id"] == "flow-a"
    assert summary["recording"] == recording
    assert summary["header"]["width"] == 80 and summary["header"]["env"] == {"TERM": "xterm"}
    assert summary["events"] == {"o": 3, "i": 1, "r": 1, "m": 0}  # half an emoji is no event of its own
    assert summary["seconds"] >= 0


def test_an_edited_recording_is_refused(session):
    store, _, end, recording = session
    with open(Path(store).parent / "recordings" / recording["file"], "r+b") as file:
        data = file.read()
        file.seek(data.index(b"ls -l caf"))
        file.write(b"rm -rf /")
    result = _run(end.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 1
    assert result.stdout_bytes == b""
    assert f"refusing to replay event {end.event_id}" in result.stderr and "SHA-256" in result.stderr


def test_a_truncated_recording_is_refused(session):
    store, _, end, recording = session
    with open(Path(store).parent / "recordings" / recording["file"], "r+b") as file:
        file.truncate(recording["bytes"] - 10)
    result = _run(end.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert f"is {recording['bytes'] - 10} bytes, the audit record says {recording['bytes']}" in result.stderr


def test_a_missing_recording_is_refused(session, tmp_path):
    store, request, _, recording = session
    (tmp_path / "recordings" / "flow-a-0.cast").unlink()
    result = _run(request.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert f"recording {tmp_path / 'recordings' / recording['file']} cannot be opened" in result.stderr


def test_a_file_put_in_place_with_the_record_edited_too_is_found_by_verify(session):
    store, _, end, recording = session

    forged = b'{"version":2,"width":80,"height":24}\n[0.1,"o","nothing happened"]\n'
    with open(Path(store).parent / "recordings" / recording["file"], "wb") as file:
        file.write(forged)
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE audit_records SET event = replace(replace(event, ?, ?), ?, ?)",
                     (recording["sha256"], hashlib.sha256(forged).hexdigest(),
                      f'"bytes":{recording["bytes"]}', f'"bytes":{len(forged)}'))
    assert _run(end.event_id, "--speed", "0", "--store", store).stdout == "nothing happened"
    verified = CliRunner().invoke(audit, ["verify", "--store", store])
    assert verified.exit_code == 1 and "was edited" in verified.output


def test_waits_follow_the_recording_scaled_and_capped(tmp_path, monkeypatch):
    cast = (b'{"version":2,"width":80,"height":24,"timestamp":1700000000}\n'
            b'[0.5,"o","a"]\n[1.0,"i","x"]\n[1.5,"r","90x30"]\n[11.5,"o","b"]\n[12.0,"m","mark"]\n[12.25,"o","c"]\n')
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "manual.cast").write_bytes(cast)
    store = str(tmp_path / "audit.db")
    recording = {"file": "manual.cast", "sha256": hashlib.sha256(cast).hexdigest(), "bytes": len(cast),
                 "limited": False}
    request, end = _pair("flow-c", recording)
    fill_store(store, [request, end])
    waits: list[float] = []
    monkeypatch.setattr(audit_cli.time, "sleep", waits.append)
    result = _run(end.event_id, "--speed", "2", "--max-wait", "3", "--store", store)
    assert result.exit_code == 0, result.output
    assert result.stdout == "abc" and "[12.0 s: mark]" in result.stderr
    assert waits == [0.25, 3, 0.375]
    waits.clear()
    assert _run(end.event_id, "--input", "--store", store).stdout == "a[input: x]bc"
    assert waits == [0.5, 0.5, 2.0, 0.75]
    waits.clear()
    _run(end.event_id, "--speed", "0", "--store", store)
    assert waits == []


def test_two_shells_in_one_flow_are_each_found_by_their_ssh_record(tmp_path):
    store = str(tmp_path / "audit.db")
    first_request, first_end = _pair("flow-d", _record(tmp_path, "flow-d-0"))
    second_request, second_end = _pair("flow-d", _record(tmp_path, "flow-d-1", typed=b"exit\r"))
    exec_request, exec_end = _pair("flow-d", None, {"kind": "ssh", "request": "exec", "command": "uptime"})
    fill_store(store, [first_request, second_request, exec_request, exec_end, second_end, first_end])
    for request, end, typed in ((first_request, first_end, "ls -l café"), (second_request, second_end, "exit")):
        played = _run(request.event_id, "--speed", "0", "--input", "--store", store)
        assert played.exit_code == 0 and played.stdout.startswith(OUTPUT[0].decode())
        assert f"replaying event {end.event_id}" in played.stderr and f"[input: {typed}" in played.stdout
        assert _run(end.event_id, "--speed", "0", "--input", "--store", store).stdout == played.stdout


def test_an_end_naming_no_request_is_not_taken_for_one(tmp_path):
    """An "ssh-end" that names no request (or another one) is never matched by its operation."""
    store = str(tmp_path / "audit.db")
    request, end = _pair("flow-j", _record(tmp_path, "flow-j-0"))
    other, _ = _pair("flow-j", None)
    unnamed = AuditEvent(kind="ssh-end", decision="allow", rule="shells", flow_id="flow-j", operation=SHELL,
                         outcome={key: value for key, value in (end.outcome or {}).items() if key != "request_event"})
    fill_store(store, [request, other, unnamed, AuditEvent(kind="ssh-end", decision="allow", rule="shells",
                                                       flow_id="flow-j", operation=SHELL,
                                                       outcome={**(end.outcome or {}), "request_event": other.event_id})])
    result = _run(request.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert f"no \"ssh-end\" record in flow flow-j names event {request.event_id} as its request" in result.stderr
    assert _run(unnamed.event_id, "--speed", "0", "--store", store).exit_code == 0


def test_an_end_named_in_another_flow_is_not_taken(tmp_path):
    store = str(tmp_path / "audit.db")
    request, end = _pair("flow-k", _record(tmp_path, "flow-k-0"))
    elsewhere = AuditEvent(kind="ssh-end", decision="allow", rule="shells", flow_id="flow-l", operation=SHELL,
                           outcome=end.outcome)
    fill_store(store, [request, elsewhere])
    result = _run(request.event_id, "--store", store)
    assert result.exit_code == 1 and "no \"ssh-end\" record in flow flow-k" in result.stderr


def test_two_ends_naming_one_request_are_refused(tmp_path):
    store = str(tmp_path / "audit.db")
    request, end = _pair("flow-m", _record(tmp_path, "flow-m-0"))
    twin = AuditEvent(kind="ssh-end", decision="allow", rule="shells", flow_id="flow-m", operation=SHELL,
                      outcome=end.outcome)
    fill_store(store, [request, end, twin])
    result = _run(request.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert f"is named by 2 \"ssh-end\" records in flow flow-m ({end.event_id}; {twin.event_id})" in result.stderr


def test_an_exec_and_a_shell_in_one_flow_are_told_apart(tmp_path):
    store = str(tmp_path / "audit.db")
    exec_request, exec_end = _pair("flow-e", None, {"kind": "ssh", "request": "exec", "command": "uptime"})
    request, end = _pair("flow-e", _record(tmp_path, "flow-e-0"))
    fill_store(store, [exec_request, request, exec_end, end])
    result = _run(request.event_id, "--speed", "0", "--store", store)
    assert result.exit_code == 0 and f"replaying event {end.event_id}" in result.stderr
    refused = _run(exec_request.event_id, "--store", store)
    assert refused.exit_code == 1
    assert f"event {exec_end.event_id} has no recording: only shells and commands run with a terminal" \
        in refused.stderr


def test_a_shell_whose_end_is_not_recorded_yet(tmp_path):
    store = str(tmp_path / "audit.db")
    request, _ = _pair("flow-f", None)
    fill_store(store, [request])
    result = _run(request.event_id, "--store", store)
    assert result.exit_code == 1
    assert f"no \"ssh-end\" record in flow flow-f names event {request.event_id} as its request: it has not " \
           f"ended yet" in result.stderr


def test_an_ssh_record_without_a_flow_is_not_matched_across_flows(tmp_path):
    store = str(tmp_path / "audit.db")
    request = AuditEvent(kind="ssh", decision="allow", rule="shells", operation=SHELL)
    _, end = _pair("flow-i", _record(tmp_path, "flow-i-0"))
    fill_store(store, [request, end])
    result = _run(request.event_id, "--store", store)
    assert result.exit_code == 1 and "names no flow: replay its \"ssh-end\" record" in result.stderr


def test_a_denied_shell_has_nothing_to_replay(tmp_path):
    store = str(tmp_path / "audit.db")
    denied = AuditEvent(kind="ssh", decision="deny", rule="default-deny", flow_id="flow-g", operation=SHELL)
    fill_store(store, [denied])
    result = _run(denied.event_id, "--store", store)
    assert result.exit_code == 1 and "was denied (default-deny): nothing ran, nothing was recorded" in result.stderr


def test_other_records_and_unknown_ids_are_refused(session):
    store, _, _, _ = session
    other = AuditEvent(kind="statement", decision="allow", operation={"sql": "SELECT 1"})
    fill_store(store, [other])
    result = _run(other.event_id, "--store", store)
    assert result.exit_code == 1 and "is a statement record: replay takes the \"ssh\" or \"ssh-end\"" in result.stderr
    missing = _run("0" * 32, "--store", store)
    assert missing.exit_code == 1 and f"no audit record with event id {'0' * 32}" in missing.stderr


@pytest.mark.parametrize("recording", [{"file": "x.cast", "sha256": "ab"}, {"file": 3, "sha256": "ab", "bytes": 1},
                                       {"file": "x.cast", "sha256": "ab", "bytes": "1"}, "file",
                                       {"path": "/x.cast", "sha256": "ab", "bytes": 1}])
def test_a_malformed_recording_field_is_refused(tmp_path, recording):
    store = str(tmp_path / "audit.db")
    _, end = _pair("flow-h", recording)
    fill_store(store, [end])
    result = _run(end.event_id, "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert f"event {end.event_id}" in result.stderr


def test_negative_speed_is_a_usage_error(session):
    store, _, end, _ = session
    assert _run(end.event_id, "--speed", "-1", "--store", store).exit_code == 2


def test_the_recordings_directory_can_be_named(session, tmp_path):
    store, _, end, recording = session
    moved = tmp_path / "elsewhere"
    (tmp_path / "recordings").rename(moved)
    assert _run(end.event_id, "--speed", "0", "--store", store).exit_code == 1
    result = _run(end.event_id, "--speed", "0", "--store", store, "--recordings", str(moved))
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"".join(OUTPUT) and str(moved / recording["file"]) in result.stderr


@pytest.mark.parametrize("file", ["../audit.db", "/etc/passwd", "..cast", "a/../b.cast", "x.cast\x00", "x.txt",
                                  ".cast", "a b.cast", "x\x1b[2J.cast", "../recordings/flow-a-0.cast",
                                  "x" * 201 + ".cast"])
def test_a_file_name_that_is_not_a_recordings_is_refused(tmp_path, file):
    """The record names a file in the recordings directory; a name that could reach outside
    it, or that no recording has, is refused before anything is opened."""
    store = str(tmp_path / "audit.db")
    (tmp_path / "recordings").mkdir()
    _, end = _pair("flow-j", {"file": file, "sha256": "ab", "bytes": 1})
    fill_store(store, [end])
    result = _run(end.event_id, "--store", store)
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert "is not a recording's name" in result.stderr and "\x1b" not in result.stderr
