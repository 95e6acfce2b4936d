"""What the server does with the client's messages while it copies in (the second issue 19
review): the facts tests/unit/test_issue19_pg_review_2.py scripts, checked against a real
PostgreSQL over the v3 protocol: a Sync sent after the Execute of COPY FROM STDIN is ignored
(only the one after CopyDone is answered), and a Query sent before CopyDone is taken as the
copy's protocol error (the server ends the connection), never run."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from pg_fixture import PgServer
from test_pg_portal_server_facts import SYNC, Conversation, bind, execute, message, query


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with PgServer(auth="trust") as pg:
        pg.psql("create table t (v text); create table marks (v text)")
        yield pg


@pytest.fixture
def conversation(server: PgServer) -> Iterator[Conversation]:
    talk = Conversation(server)
    yield talk
    talk.sock.close()


def test_a_sync_pipelined_after_an_extended_copy_from_stdin_is_ignored(conversation: Conversation) -> None:
    conversation.sock.sendall(message(b"P", b"c\0copy t from stdin\0\0\0") + bind(b"", b"c") + execute(b"") + SYNC)
    assert [kind for kind, _ in until_copy_in(conversation)] == [b"1", b"2", b"G"]
    answers = conversation.send(message(b"d", b"x\n") + message(b"c") + SYNC, 1)
    assert [kind for kind, _ in answers] == [b"C", b"Z"]  # one ReadyForQuery: the first Sync was ignored
    assert conversation.send(query("select count(*) from t"), 1)[1][1].endswith(b"1")


def test_a_query_sent_during_copy_in_is_taken_as_the_copys_protocol_error_and_never_runs(
        server: PgServer, conversation: Conversation) -> None:
    conversation.sock.sendall(query("copy t from stdin") + query("insert into marks values ('ran')"))
    with pytest.raises(AssertionError, match="closed the connection"):
        conversation.answers(1)  # the server ends the connection on the unexpected message
    counted = Conversation(server).send(query("select count(*) from marks"), 1)
    assert [body for kind, body in counted if kind == b"D"][0].endswith(b"0")


def until_copy_in(conversation: Conversation) -> list[tuple[bytes, bytes]]:
    """The server's messages up to its CopyInResponse (no ReadyForQuery comes before it)."""
    out: list[tuple[bytes, bytes]] = []
    while not out or out[-1][0] != b"G":
        buffer = conversation.buffer
        if len(buffer) < 5 or len(buffer) < 1 + struct.unpack_from("!i", buffer, 1)[0]:
            chunk = conversation.sock.recv(65536)
            assert chunk, "the server closed the connection"
            conversation.buffer += chunk
            continue
        end = 1 + struct.unpack_from("!i", buffer, 1)[0]
        out.append((buffer[:1], buffer[5:end]))
        conversation.buffer = buffer[end:]
    return out
