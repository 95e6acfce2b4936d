"""TcpSession, the sans-IO relay of plain TCP, as conversations (tests/conversation.py)."""

import pytest

from conversation import Script, script
from interceptor.handlers.commands import HoldOutcome, Shutdown, Side
from interceptor.handlers.tcp import DONE, TcpSession

REFUSED = "upstream 127.0.0.1:5432: Connection refused"


def opened(session: TcpSession) -> Script:
    """The conversation once the handler has opened the upstream."""
    return script(session, session.start()).expect_open(stream=0).opened()


def test_bytes_are_relayed_each_way_on_the_stream_of_their_input() -> None:
    (opened(TcpSession())
     .agent(b"GET / HTTP/1.0\r\n\r\n")
     .expect_server(b"GET / HTTP/1.0\r\n\r\n", stream=0)  # the client's stream: it waited for the Open
     .server(b"HTTP/1.0 200 OK\r\n")
     .expect_agent(b"HTTP/1.0 200 OK\r\n", stream=1)
     .done())


def test_the_client_stream_is_the_one_the_open_holds() -> None:
    session = TcpSession()
    assert (session.input_stream(Side.CLIENT), session.input_stream(Side.SERVER)) == (0, 1)


def test_a_half_close_is_passed_on_and_the_other_way_goes_on() -> None:
    (opened(TcpSession())
     .ends(Side.CLIENT)
     .expect(Shutdown(Side.SERVER))
     .server(b"the rest of the answer")
     .expect_agent(b"the rest of the answer")
     .done())


def test_the_flow_closes_once_both_ends_have_closed() -> None:
    (opened(TcpSession())
     .ends(Side.SERVER)
     .expect(Shutdown(Side.CLIENT))
     .agent(b"late")
     .expect_server(b"late")
     .ends(Side.CLIENT)
     .expect_close(DONE)
     .done())


def test_an_upstream_that_cannot_be_reached_closes_the_flow_with_why() -> None:
    session = TcpSession()
    script(session, session.start()).expect_open(stream=0).opened(REFUSED).expect_close(REFUSED).done()
    assert session.error == REFUSED


def test_a_tcp_session_holds_nothing() -> None:
    session = TcpSession()
    with pytest.raises(TypeError, match="holds no operations"):
        session.approval(0, HoldOutcome(True, "R1", "ok", "bob"))
    with pytest.raises(TypeError, match="holds no operations"):
        session.waiting(0, "R1", 300)
    assert session.abandoned(0, "R1", "the client disconnected") is None
