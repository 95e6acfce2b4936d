"""What the server does with the portal names the enforcer follows (issue 19's review): the
facts tests/unit/test_issue19_pg_review.py scripts, checked against a real PostgreSQL over
the v3 protocol: a DECLAREd cursor is a portal an Execute runs, a portal ends with its
implicit transaction while later messages of the same pipeline go on, SQL CLOSE closes a
protocol portal, and a portal bound before a savepoint outlives ROLLBACK TO it."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from pg_fixture import PgServer

CARD = b"4111 1111 1111 1111"
Message = tuple[bytes, bytes]


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def bind(portal: bytes, statement: bytes) -> bytes:
    return message(b"B", portal + b"\0" + statement + b"\0" + b"\0" * 6)


def execute(portal: bytes) -> bytes:
    return message(b"E", portal + b"\0" + b"\0" * 4)


SYNC = message(b"S")


class Conversation:
    """One raw v3 connection (trust login): `send` bytes, `answers` up to the n-th ReadyForQuery."""

    def __init__(self, pg: PgServer) -> None:
        self.sock = socket.create_connection((pg.host, pg.port), timeout=10)
        params = f"user\0{pg.user}\0database\0postgres\0\0".encode()
        self.sock.sendall(struct.pack("!ii", len(params) + 8, 3 << 16) + params)
        self.buffer = b""
        self.answers(1)

    def answers(self, ready: int) -> list[Message]:
        out: list[Message] = []
        while ready:
            while len(self.buffer) < 5 or len(self.buffer) < 1 + struct.unpack_from("!i", self.buffer, 1)[0]:
                chunk = self.sock.recv(65536)
                assert chunk, "the server closed the connection"
                self.buffer += chunk
            end = 1 + struct.unpack_from("!i", self.buffer, 1)[0]
            kind, body, self.buffer = self.buffer[:1], self.buffer[5:end], self.buffer[end:]
            out.append((kind, body))
            ready -= kind == b"Z"
        return out

    def send(self, data: bytes, ready: int) -> list[Message]:
        self.sock.sendall(data)
        return self.answers(ready)


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    with PgServer(auth="trust") as pg:
        pg.psql("create table customers (id int, card_number text); "
                f"insert into customers values (1, '{CARD.decode()}')")
        yield pg


@pytest.fixture
def conversation(server: PgServer) -> Iterator[Conversation]:
    talk = Conversation(server)
    talk.send(message(b"P", b"s1\0select 1\0\0\0") + SYNC, 1)
    yield talk
    talk.sock.close()


def rows(answers: list[Message]) -> list[bytes]:
    return [body for kind, body in answers if kind == b"D"]


def test_a_pipelined_execute_runs_the_cursor_declared_under_the_name_of_a_portal_whose_transaction_ended(
        conversation: Conversation) -> None:
    answers = conversation.send(bind(b"p", b"s1") + message(b"D", b"Pp\0") + SYNC + query("begin")
                                + query("declare p cursor for select card_number from customers") + execute(b"p")
                                + SYNC, 4)
    described = [body for kind, body in answers if kind == b"T"]
    assert described and b"?column?" in described[0]  # the client's Describe: of the portal that ended
    assert any(CARD in row for row in rows(answers))  # what the Execute ran: the cursor


def test_sql_close_closes_a_protocol_portal(conversation: Conversation) -> None:
    answers = conversation.send(query("begin") + bind(b"p", b"s1") + SYNC + query("close p") + execute(b"p") + SYNC, 4)
    assert (b"C", b"CLOSE CURSOR\0") in answers
    assert any(kind == b"E" and b"34000" in body for kind, body in answers)  # invalid_cursor_name


def test_a_portal_bound_before_a_savepoint_outlives_rollback_to_it(conversation: Conversation) -> None:
    answers = conversation.send(query("begin") + bind(b"p", b"s1") + SYNC + query("savepoint s")
                                + message(b"P", b"s1\0select 2\0\0\0") + message(b"D", b"Pp\0") + SYNC
                                + query("rollback to savepoint s") + execute(b"p") + SYNC, 6)
    skipped = answers[answers.index((b"Z", b"T"), 4):]
    assert [kind for kind, _ in skipped[:3]] == [b"Z", b"E", b"Z"]  # the Describe after the error: skipped
    assert rows(answers) and rows(answers)[-1].endswith(b"1")
