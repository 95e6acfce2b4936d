"""interceptor.audit.recording: asciicast v2 files written bounded and read back verified."""

import hashlib
import json
import os
import stat
import time

import pytest

from interceptor.audit import recording as recording_module
from interceptor.audit.recording import LIMIT_MARKER, Recording, RecordingError, parse, read_verified

LIMIT = 1 << 20


def _start(tmp_path, name="flow1-ch0", limit=LIMIT, term="xterm-256color"):
    return Recording.start(tmp_path, name, width=120, height=40, term=term, limit=limit)


def _lines(path):
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def _text_of(path, kind):
    return "".join(event[2] for event in _lines(path)[1:] if event[1] == kind)


def test_a_session_is_a_valid_asciicast_v2_file(tmp_path):
    before = int(time.time())
    rec = _start(tmp_path)
    assert rec.output(b"$ ") and rec.input(b"ls\r") and rec.output(b"ls\r\nfile\r\n$ ") and rec.resize(100, 30)
    summary = rec.close()
    header, *events = _lines(tmp_path / "flow1-ch0.cast")
    assert header == {"version": 2, "width": 120, "height": 40, "timestamp": header["timestamp"],
                      "env": {"TERM": "xterm-256color"}}
    assert before <= header["timestamp"] <= time.time()
    assert [(kind, data) for _, kind, data in events] == [("o", "$ "), ("i", "ls\r"), ("o", "ls\r\nfile\r\n$ "),
                                                          ("r", "100x30")]
    times = [event[0] for event in events]
    assert all(isinstance(t, float) and t >= 0 for t in times) and times == sorted(times)
    assert summary.events == 4 and not summary.limited


def test_timestamps_are_seconds_since_the_start(tmp_path, monkeypatch):
    clock = iter([100.0, 101.25, 103.5000004])
    monkeypatch.setattr(recording_module.time, "monotonic", lambda: next(clock))
    rec = _start(tmp_path)
    rec.output(b"a")
    rec.output(b"b")
    rec.close()
    assert [event[0] for event in _lines(tmp_path / "flow1-ch0.cast")[1:]] == [1.25, 3.5]


def test_no_terminal_type_means_no_env(tmp_path):
    _start(tmp_path, term=None).close()
    assert "env" not in _lines(tmp_path / "flow1-ch0.cast")[0]


@pytest.mark.parametrize("text", ["é", "€", "😀", "aé€😀z"])
def test_a_character_split_across_chunks_stays_whole(tmp_path, text):
    data = text.encode("utf-8")
    for cut in range(1, len(data)):
        name = f"split{cut}"
        rec = _start(tmp_path, name)
        assert rec.output(data[:cut]) and rec.output(data[cut:])
        rec.close()
        assert _text_of(tmp_path / f"{name}.cast", "o") == text


def test_output_and_input_decode_apart(tmp_path):
    rec = _start(tmp_path)
    euro = "€".encode("utf-8")
    rec.output(euro[:1])
    rec.input("ü".encode("utf-8"))
    rec.output(euro[1:])
    rec.close()
    path = tmp_path / "flow1-ch0.cast"
    assert _text_of(path, "o") == "€" and _text_of(path, "i") == "ü"


def test_invalid_bytes_become_replacement_characters(tmp_path):
    rec = _start(tmp_path)
    rec.output(b"a\xffb\xc3(")
    rec.output(b"\xe2\x82")  # an incomplete character still held at close
    rec.close()
    assert _text_of(tmp_path / "flow1-ch0.cast", "o") == "a\ufffdb\ufffd(\ufffd"


def test_the_limit_bounds_the_file_and_ends_with_a_marker(tmp_path):
    limit = 2000
    rec = _start(tmp_path, limit=limit)
    results = [rec.output(b"x" * 100) for _ in range(40)]
    assert results[:10] == [True] * 10 and results[-1] is False
    first_refused = results.index(False)
    assert results[first_refused:] == [False] * (40 - first_refused)
    assert not rec.input(b"more") and not rec.resize(1, 1)
    summary = rec.close()
    path = tmp_path / "flow1-ch0.cast"
    assert summary.limited and summary.bytes == path.stat().st_size <= limit
    events = _lines(path)[1:]
    assert events[-1][1:] == ["m", LIMIT_MARKER]
    assert [event[1] for event in events[:-1]] == ["o"] * first_refused
    assert summary.events == first_refused + 1  # the input and resize after the refusal are not in it


def test_the_limit_holds_for_one_large_chunk_and_for_the_bytes_held_at_close(tmp_path):
    rec = _start(tmp_path, limit=600)
    assert not rec.output(b"y" * 10_000)
    summary = rec.close()
    assert summary.limited and summary.bytes <= 600
    assert [event[1] for event in _lines(tmp_path / "flow1-ch0.cast")[1:]] == ["m"]


def test_a_limit_too_small_for_header_and_marker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no room"):
        _start(tmp_path, limit=100)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_exists_is_never_opened(tmp_path):
    (tmp_path / "taken.cast").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        _start(tmp_path, "taken")
    assert (tmp_path / "taken.cast").read_bytes() == b"keep"


def test_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "link.cast").symlink_to(target)
    with pytest.raises(FileExistsError):
        _start(tmp_path, "link")
    assert not target.exists()


@pytest.mark.parametrize("umask", [0, 0o277])
def test_the_file_is_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _start(tmp_path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "flow1-ch0.cast").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a b", "é", ".", "..", "x\n", "x" * 201, "a\0b"])
def test_names_outside_the_safe_alphabet_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="recording name"):
        _start(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_the_summary_hashes_the_whole_file(tmp_path):
    rec = _start(tmp_path)
    rec.output("héllo\r\n".encode("utf-8"))
    rec.input(b"\x03")
    summary = rec.close()
    data = (tmp_path / "flow1-ch0.cast").read_bytes()
    assert summary.sha256 == hashlib.sha256(data).hexdigest() and summary.bytes == len(data)
    assert summary.as_dict() == {"path": str(tmp_path / "flow1-ch0.cast"), "sha256": summary.sha256,
                                 "bytes": len(data), "events": 2, "limited": False}


def test_a_closed_recording_refuses_more(tmp_path):
    rec = _start(tmp_path)
    rec.close()
    for call in (lambda: rec.output(b"x"), lambda: rec.input(b""), lambda: rec.resize(1, 1), rec.close):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_read_verified_returns_the_file_it_checked(tmp_path):
    rec = _start(tmp_path)
    rec.output(b"hello")
    summary = rec.close()
    data = read_verified(summary.path, summary.sha256, summary.bytes)
    assert parse(data).events[0].data == "hello"


@pytest.mark.parametrize("edit", [lambda d: d.replace(b"hello", b"jello"), lambda d: d + b"\n", lambda d: d[:-1]])
def test_read_verified_refuses_an_edited_file(tmp_path, edit):
    rec = _start(tmp_path)
    rec.output(b"hello")
    summary = rec.close()
    path = tmp_path / "flow1-ch0.cast"
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(RecordingError, match="not the file that was recorded"):
        read_verified(summary.path, summary.sha256, summary.bytes)


def test_read_verified_refuses_a_missing_file_and_a_fifo(tmp_path):
    with pytest.raises(RecordingError, match="cannot be opened"):
        read_verified(str(tmp_path / "gone.cast"), "0" * 64, 10)
    os.mkfifo(tmp_path / "pipe.cast")
    with pytest.raises(RecordingError, match="not a regular file"):
        read_verified(str(tmp_path / "pipe.cast"), "0" * 64, 10)


@pytest.mark.parametrize("data, line", [
    (b"", 1),
    (b"not json\n", 1),
    (b'{"version": 1, "width": 80, "height": 24}\n', 1),
    (b'{"version": 2, "width": "80", "height": 24}\n', 1),
    (b'{"version": 2, "width": 80, "height": 24}\n[0.5, "x", "a"]\n', 2),
    (b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", 3]\n', 2),
    (b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "a"]\n[0.4, "o", "b"]\n', 3),
    (b'{"version": 2, "width": 80, "height": 24}\n[-1, "o", "a"]\n', 2),
    (b'{"version": 2, "width": 80, "height": 24}\n[true, "o", "a"]\n', 2),
    (b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o"]\n', 2),
    (b'{"version": 2, "width": 80, "height": 24}\n\n', 2),
])
def test_parse_names_the_first_bad_line(data, line):
    with pytest.raises(RecordingError, match="empty" if not data else f"line {line} "):
        parse(data)
