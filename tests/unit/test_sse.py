"""The event-stream parser and serializer (WHATWG HTML 9.2.5-9.2.6): line endings, fields,
comments, dispatch, chunk boundaries anywhere, and the serializer's round trip."""

from __future__ import annotations

import pytest

from interceptor.errors import ProtocolViolation
from interceptor.handlers.http.sse import Comment, Event, Item, SseParser, serialize

STREAM = (b"\xef\xbb\xbf: keep-alive\r\n"
          b"event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n"
          b"data: caf\xc3\xa9\rretry: 1500\r\r"
          b"id\nfoo: ignored\ndata\n\n"
          b"data:  two spaces\n\n"
          b"id: bad\x00id\ndata: x\n\n")
EXPECTED: list[Item] = [
    Comment(" keep-alive"),
    Event('{"a":\n1}', "message", "7"),
    Event("café", retry=1500),
    Event("", id=""),
    Event(" two spaces"),
    Event("x"),
]


def parse_all(chunks: list[bytes]) -> list[Item]:
    parser = SseParser()
    items: list[Item] = []
    for chunk in chunks:
        items += parser.feed(chunk)
    return items + parser.end()


def test_whole_stream() -> None:
    assert parse_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_any_chunk_boundary(size: int) -> None:
    chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    assert parse_all(chunks) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF belongs to the CR: not a blank line
    assert parser.feed(b"\r\n") == [Event("a")]


def test_cr_alone_ends_lines() -> None:
    assert parse_all([b"data: a\rdata: b\r\r"]) == [Event("a\nb")]


def test_bom_only_at_the_start() -> None:
    assert parse_all([b"data: \xef\xbb\xbfx\n\n"]) == [Event("\ufeffx")]
    assert parse_all([b"\xef\xbb", b"\xbfdata: y\n\n"]) == [Event("y")]


def test_incomplete_event_and_line_discarded_at_end() -> None:
    assert parse_all([b"data: a\n\ndata: b\n"]) == [Event("a")]
    assert parse_all([b"data: a\n\ndata: b"]) == [Event("a")]


def test_invalid_utf8_replaced() -> None:
    assert parse_all([b"data: \xff\n\n"]) == [Event("\ufffd")]


def test_retry_needs_digits_only() -> None:
    assert parse_all([b"retry: 12a\ndata: x\n\nretry: 30\n\n"]) == [Event("x"), Event(retry=30)]


def test_limit_on_one_event() -> None:
    parser = SseParser(limit=32)
    assert parser.feed(b"data: " + b"x" * 20 + b"\n\n") == [Event("x" * 20)]
    with pytest.raises(ProtocolViolation):
        parser.feed(b"data: " + b"x" * 20 + b"\ndata: " + b"y" * 10)
    with pytest.raises(ProtocolViolation):
        SseParser(limit=32).feed(b"z" * 40)  # one line without end


def test_serialize_round_trip() -> None:
    items: list[Item] = [Comment("ping"), Event("a\nb\r\nc\rd", "message", "id-1", 10), Event(None, id=""),
                         Event(""), Event("x", event=""), Event()]
    stream = b"".join(serialize(item) for item in items)
    expected: list[Item] = [Comment("ping"), Event("a\nb\nc\nd", "message", "id-1", 10), Event(None, id=""),
                            Event(""), Event("x", event=""), Event()]
    assert parse_all([stream]) == expected
    assert serialize(Event("{}", "message")) == b"event: message\ndata: {}\n\n"


@pytest.mark.parametrize("item", [Event("x", event="a\nb"), Event("x", id="a\rb"), Event("x", id="a\0b"),
                                  Comment("a\nb")])
def test_serialize_refuses_what_a_field_cannot_carry(item: Item) -> None:
    with pytest.raises(ValueError):
        serialize(item)
