"""Server-sent events (`text/event-stream`), sans-IO: an incremental parser that reads the
stream exactly as a browser's EventSource does, and a serializer that writes what it read
back in a form every conforming reader parses to the same events.

Source: WHATWG HTML Living Standard, section 9.2 "Server-sent events": 9.2.5 "Parsing an
event stream" (the grammar: lines end in CRLF, LF or CR; one leading BOM is skipped; UTF-8
with decode errors replaced) and 9.2.6 "Interpreting an event stream" (a line starting with
`:` is a comment; `field: value` loses one space after the colon; a line without a colon is
a field with an empty value; a blank line dispatches; `event`, `data`, `id` and `retry` are
the fields, any other is ignored; an `id` holding NUL is ignored; `retry` counts only when
all ASCII digits; at the end of the stream an incomplete event is discarded).

The parser yields one `Event` per blank line (dispatched or not: a block of only `id:` sets
the reader's last event ID without a message, so it is an Event whose `data` is None) and
one `Comment` per comment line, in stream order. Serializing the items again gives a stream
a reader interprets the same way; fields the standard ignores and the spelling of line
endings are not kept.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from interceptor.errors import ProtocolViolation

CONTENT_TYPE = "text/event-stream"
EVENT_LIMIT = 16 * 1024 * 1024  # characters one event (its lines up to the blank one) may hold
_LINE_END = re.compile(r"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Event:
    """The fields of one block of lines ended by a blank line. `data`: the data lines joined
    with LF, None when the block had no `data` field (a reader dispatches no message then);
    `event`: the type set by the block (None: not set, a reader says "message"); `id`: the
    last event ID the block set (None: unchanged; "" resets it); `retry`: the reconnection
    time in milliseconds the block set, if any."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class Comment:
    """One comment line: its text after the `:` (keep-alives are usually these)."""

    text: str


Item = Event | Comment


class SseParser:
    """Bytes of an event stream in, Events and Comments out, whatever the chunk boundaries
    (inside a UTF-8 sequence, between CR and LF, inside a field name). `limit`: the most
    characters one event's lines may hold; past it `feed` raises ProtocolViolation (the
    caller says whose bytes they were), so a stream without blank lines cannot grow it."""

    def __init__(self, limit: int = EVENT_LIMIT) -> None:
        self._limit = limit
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""  # the start of a line whose end has not arrived
        self._size = 0  # characters of the current event's complete lines
        self._after_cr = False  # the last line ended with a CR: an LF next is part of it
        self._started = False  # the first character (a BOM to skip, or not) was seen
        self._data: list[str] | None = None
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[Item]:
        """The items the stream completed with `data` (possibly none yet)."""
        return self._text(self._decoder.decode(data))

    def end(self) -> list[Item]:
        """The stream ended: what its last bytes completed. An unfinished line or event is
        discarded, as a reader discards it."""
        items = self._text(self._decoder.decode(b"", final=True))
        self._partial = ""
        self._reset()
        return items

    def _text(self, text: str) -> list[Item]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")
        items: list[Item] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line = self._partial + text[start:match.start()]
            self._partial = ""
            start = match.end()
            self._line(line, items)
        self._partial += text[start:]
        if text.endswith("\r"):
            self._after_cr = True
        if self._size + len(self._partial) > self._limit:
            raise ProtocolViolation(f"event stream: an event longer than {self._limit} characters")
        return items

    def _line(self, line: str, items: list[Item]) -> None:
        if not line:
            items.append(Event("\n".join(self._data) if self._data is not None else None,
                               self._event, self._id, self._retry))
            self._reset()
            return
        self._size += len(line) + 1
        name, colon, value = line.partition(":")
        if not name:
            items.append(Comment(value))
            return
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data = [*(self._data or ()), value]
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self._retry = int(value)

    def _reset(self) -> None:
        self._size = 0
        self._data = None
        self._event = None
        self._id = None
        self._retry = None


def serialize(item: Item) -> bytes:
    """The lines of one item, UTF-8, each ended by LF; an Event ends with the blank line that
    dispatches it. Data holding CR, LF or CRLF becomes several `data` lines (a reader joins
    them back with LF). ValueError for an event type or ID holding CR or LF, or an ID
    holding NUL, which no field line can carry."""
    if isinstance(item, Comment):
        if _LINE_END.search(item.text):
            raise ValueError("an event stream comment cannot hold a line break")
        return f":{item.text}\n".encode()
    lines: list[str] = []
    for name, value in (("event", item.event), ("id", item.id)):
        if value is not None:
            if _LINE_END.search(value) or (name == "id" and "\0" in value):
                raise ValueError(f"an event stream {name} cannot hold a line break{' or NUL' * (name == 'id')}")
            lines.append(f"{name}: {value}" if value else name)
    if item.retry is not None:
        lines.append(f"retry: {item.retry}")
    if item.data is not None:
        lines += [f"data: {part}" if part else "data" for part in _LINE_END.split(item.data)]
    return ("\n".join(lines) + "\n\n").encode() if lines else b"\n"
