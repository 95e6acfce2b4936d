"""Interactive sessions recorded as asciicast v2 files, bounded in size and hash-linked to
the audit record (https://docs.asciinema.org/manual/asciicast/v2/).

A file is one JSON object per line: the header `{"version": 2, "width": COLS, "height": ROWS,
"timestamp": UNIX_SECONDS, "env": {"TERM": ...}}`, then one event per line, `[SECONDS, KIND,
DATA]`: SECONDS a float relative to the start (time.monotonic, microsecond precision), KIND "o"
(what the terminal showed), "i" (what was typed), "r" (a resize, DATA "COLSxROWS") or "m" (a
marker: here only the one that says the size limit was reached), DATA a string. Output and
input are decoded as UTF-8, each with its own incremental decoder, so a character split
across reads stays whole; invalid bytes become U+FFFD.

The ssh handler writes a Recording on the event loop (buffered writes, a running SHA-256, no
fsync before close) and puts the closed recording's summary in the channel's "ssh-end"
record, written after close has synced the file, with the file's name only (`file`, not the
directory's path). `interceptor audit replay` finds it with `recording_path`, reads it back
with `read_verified` and `parse`.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from interceptor.certificates import sync_directory

VERSION = 2
KINDS = ("o", "i", "r", "m")
LIMIT_MARKER = "interceptor: recording size limit reached; the session was ended"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_LATEST = 999_999_999.999999  # the longest timestamp a marker is written with (about 31 years in)
_MARKER_BYTES = len(orjson.dumps([_LATEST, "m", LIMIT_MARKER])) + 1
_BUFFER = 64 * 1024


class RecordingError(Exception):
    """A recording that cannot be played: missing, not the file the audit record names (its
    size or SHA-256 differs), or not asciicast v2. The message says which."""


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    """A closed recording: the file's absolute `path`, the hex SHA-256 and size in `bytes` of
    the whole file, how many `events` lines follow the header (the limit marker included),
    and whether the size limit cut it short (`limited`). The audit record keeps the same
    fields with the file's name (`file`) in place of its path (see `recording_path`)."""

    path: str
    sha256: str
    bytes: int
    events: int
    limited: bool

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict (`path`, `sha256`, `bytes`, `events`, `limited`)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Event:
    """One event line: `time` seconds from the start, `kind` one of KINDS, `data` its text."""

    time: float
    kind: str
    data: str


@dataclass(frozen=True, slots=True)
class Cast:
    """A parsed recording: the header object and the events in file order."""

    header: dict[str, Any]
    events: tuple[Event, ...]


class Recording:
    """One session being recorded; made by `Recording.start`, ended by `close`.

    `output`, `input` and `resize` return True when the event was recorded (or there was
    nothing to record yet: bytes of a character still incomplete), and False when it was not
    because the file would pass its size limit: the limit marker is written instead, nothing
    more is recorded, and the caller must end the session without passing `data` on (all that
    crossed the channel is in the recording). They raise OSError when the file cannot be
    written (the session must end: it cannot be recorded) and ValueError after close."""

    def __init__(self, file: BinaryIO, path: Path, limit: int, header: bytes) -> None:
        self._file = file
        self._path = path
        self._limit = limit
        self._started = time.monotonic()
        self._hash = hashlib.sha256()
        self._bytes = 0
        self._events = 0
        self._limited = False
        self._closed = False
        self._decoders = {kind: codecs.getincrementaldecoder("utf-8")(errors="replace") for kind in ("o", "i")}
        self._write(header)

    @classmethod
    def start(cls, directory: Path, name: str, *, width: int, height: int, term: str | None,
              limit: int) -> Recording:
        """Create `<directory>/<name>.cast` (never an existing file, never through a symlink;
        mode 0600) and write its header. `name`: 1 to 200 of [A-Za-z0-9._-]; `width` and
        `height`: the terminal's columns and rows; `term`: its TERM, None when none was asked
        for; `limit`: the most bytes the file may hold. Raises ValueError for a bad name or a
        limit too small for the header and the limit marker, OSError when the file cannot be
        created (FileExistsError when it exists)."""
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"recording name {name!r} must be 1 to 200 of A-Z a-z 0-9 . _ -")
        fields: dict[str, Any] = {"version": VERSION, "width": width, "height": height, "timestamp": int(time.time())}
        if term is not None:
            fields["env"] = {"TERM": term}
        header = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        if len(header) + _MARKER_BYTES > limit:
            raise ValueError(f"recording limit {limit} bytes leaves no room for the header and the limit marker "
                             f"({len(header) + _MARKER_BYTES} bytes)")
        path = directory / f"{name}.cast"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            file = os.fdopen(fd, "wb", buffering=_BUFFER)
        except BaseException:
            os.close(fd)
            raise
        return cls(file, path, limit, header)

    def output(self, data: bytes) -> bool:
        """Record what the terminal showed (the server's output, stdout and stderr as one stream)."""
        return self._text("o", data, final=False)

    def input(self, data: bytes) -> bool:
        """Record what was typed (the client's input)."""
        return self._text("i", data, final=False)

    def resize(self, width: int, height: int) -> bool:
        """Record a terminal size change to `width` columns and `height` rows."""
        return self._event("r", f"{width}x{height}")

    def close(self) -> RecordingSummary:
        """Write what the decoders still hold (an incomplete character, as U+FFFD), flush,
        fsync the file and its directory, close it. Blocking: one fsync per session. Raises
        OSError when the file cannot be written; ValueError when already closed."""
        self._check_open()
        try:
            for kind in ("o", "i"):
                self._text(kind, b"", final=True)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._closed = True
            self._file.close()
        sync_directory(self._path.parent)
        return RecordingSummary(str(self._path), self._hash.hexdigest(), self._bytes, self._events, self._limited)

    def _text(self, kind: str, data: bytes, final: bool) -> bool:
        self._check_open()
        text = self._decoders[kind].decode(data, final)
        return self._event(kind, text) if text else not self._limited

    def _event(self, kind: str, data: str) -> bool:
        self._check_open()
        if self._limited:
            return False
        seconds = round(time.monotonic() - self._started, 6)
        line = orjson.dumps([seconds, kind, data], option=orjson.OPT_APPEND_NEWLINE)
        if self._bytes + len(line) + _MARKER_BYTES > self._limit:
            self._limited = True
            line = orjson.dumps([min(seconds, _LATEST), "m", LIMIT_MARKER], option=orjson.OPT_APPEND_NEWLINE)
            self._write(line)
            self._events += 1
            return False
        self._write(line)
        self._events += 1
        return True

    def _write(self, line: bytes) -> None:
        self._file.write(line)
        self._hash.update(line)
        self._bytes += len(line)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"recording {self._path} is closed")


def recording_path(directory: Path, file: str) -> Path:
    """`<directory>/<file>` for the `file` an "ssh-end" record names: a name `Recording.start`
    makes (`<name>.cast`, `name` 1 to 200 of [A-Za-z0-9._-]), never a path. Raises
    RecordingError for anything else (a `/`, `..`, NUL, another suffix or character)."""
    name = file.removesuffix(".cast")
    if name == file or not _NAME.fullmatch(name) or ".." in file:
        raise RecordingError(f"recording file {file!r} is not a recording's name (NAME.cast, NAME 1 to 200 of "
                             f"A-Z a-z 0-9 . _ -, no '..'): refusing to look outside the recordings directory")
    return directory / file


def read_verified(path: str, sha256: str, size: int) -> bytes:
    """The whole file at `path` when it is a regular file of `size` bytes whose SHA-256 is
    `sha256` (hex), read once (what is checked is what is played). Raises RecordingError
    naming what differs, or why the file cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
    except OSError as exc:
        raise RecordingError(f"recording {path} cannot be opened: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise RecordingError(f"recording {path} is not a regular file")
        if found.st_size != size:
            raise RecordingError(f"recording {path} is {found.st_size} bytes, the audit record says {size}: "
                                 f"it is not the file that was recorded")
        data = file.read(size + 1)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256.lower():
        raise RecordingError(f"recording {path} has SHA-256 {digest}, the audit record says {sha256}: "
                             f"it is not the file that was recorded")
    return data


def parse(data: bytes) -> Cast:
    """The header and events of an asciicast v2 file. Raises RecordingError naming the first
    line that is not JSON, not the header (an object with version 2 and integer width and
    height) or not an event (an array of a non-negative number no smaller than the one
    before, a kind of KINDS and a string)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise RecordingError("recording is empty: no asciicast header")
    header = _json_line(lines[0], 1)
    if not (isinstance(header, dict) and header.get("version") == VERSION
            and all(type(header.get(key)) is int for key in ("width", "height"))):
        raise RecordingError("recording line 1 is not an asciicast v2 header")
    events: list[Event] = []
    last = 0.0
    for number, line in enumerate(lines[1:], start=2):
        event = _event_of(_json_line(line, number), last, number)
        events.append(event)
        last = event.time
    return Cast(header, tuple(events))


def _json_line(line: bytes, number: int) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"recording line {number} is not JSON: {exc}") from exc


def _event_of(value: Any, last: float, number: int) -> Event:
    if (isinstance(value, list) and len(value) == 3 and type(value[0]) in (int, float) and value[0] >= last
            and value[1] in KINDS and isinstance(value[2], str)):
        return Event(float(value[0]), value[1], value[2])
    raise RecordingError(f"recording line {number} is not an asciicast v2 event [time, kind, data] "
                         f"in time order")
