"""A plain, hash-chained JSON Lines file: for hosts without SQLite, or for shipping by log tools.

One record per line (`chain_id`, `seq`, `prev_hash`, `hash`, `event`); captured session
bytes are lines holding `session_bytes` (data in base64) that verify skips. Each group is
written with one write() and fsynced. A torn last line (a crash or a failed write mid-group,
never acknowledged) is cut off when the file is reopened: at start and before each retry.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interceptor.audit.chain import Head, Record, canonical_json
from interceptor.audit.query import Query, matches
from interceptor.audit.sink import Chunk

log = logging.getLogger("interceptor.audit")


def _cut_torn_tail(path: Path) -> None:
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        log.warning("audit file %s ends in a torn line (%d bytes): cut off", path, size - position)
        handle.truncate(position)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                value = json.loads(line)
            except ValueError:
                value = {"unparseable": line.decode("utf-8", "replace")}
            yield number, value if isinstance(value, dict) else {"unparseable": line.decode("utf-8", "replace")}


def _record(value: dict[str, Any]) -> Record:
    """A record from a line; damaged fields become values that fail the hash check."""
    event = value.get("event")
    seq = value.get("seq")
    return Record(str(value.get("chain_id", "")), seq if isinstance(seq, int) else -1, str(value.get("prev_hash", "")),
                  str(value.get("hash", "")), event if isinstance(event, dict) else {"unparseable": value})


class JsonlBackend:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            _cut_torn_tail(self.path)
        return self._fd

    def recover(self, chain_id: str, event_ids: list[str]) -> tuple[Head, set[str]]:
        """Reopens the file, so what a failed append left of its group (a short write on a full
        disk) is cut off before the retry appends after it, not glued to its first line."""
        self.close()
        self._open()
        head, wanted, stored = Head(), set(event_ids), set()
        for _, value in _lines(self.path):
            if value.get("chain_id") == chain_id and "event" in value:
                record = _record(value)
                head = Head(record.seq, record.hash)
                if record.event_id in wanted:
                    stored.add(record.event_id)
        return head, stored

    def append(self, records: list[Record], chunks: list[Chunk], head: Head) -> None:
        lines = [canonical_json({"session_bytes": {"flow_id": c.flow_id, "direction": c.direction, "ts": c.ts,
                                                   "data": base64.b64encode(c.data).decode()}}) for c in chunks]
        lines += [canonical_json(record.to_dict()) for record in records]
        data = "".join(line + "\n" for line in lines).encode()
        fd = self._open()
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JsonlReader:
    """The reader API of SqlReader over a JSONL file; storage position is the line number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no audit store at {self.path}")

    def records(self, after_id: int = 0) -> Iterator[tuple[int, Record]]:
        for number, value in _lines(self.path):
            if number > after_id and "session_bytes" not in value:
                yield number, _record(value)

    def heads(self) -> None:
        """A JSONL file keeps no separate head: a cut-off tail looks like a shorter chain."""
        return None

    def search(self, query: Query) -> list[tuple[int, Record]]:
        found = [(n, r) for n, r in self.records(query.after_id) if matches(query, r.event)]
        if query.limit is None:
            return found
        return found[-query.limit:] if query.newest else found[: query.limit]

    def chunks(self, flow_id: str) -> list[Chunk]:
        found = []
        for _, value in _lines(self.path):
            chunk = value.get("session_bytes")
            if isinstance(chunk, dict) and chunk.get("flow_id") == flow_id:
                found.append(Chunk(flow_id, chunk["direction"], float(chunk["ts"]), base64.b64decode(chunk["data"])))
        return found

    def close(self) -> None:
        """Nothing held open between reads."""
