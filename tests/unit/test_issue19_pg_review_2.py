"""Second review of issue 19's PostgreSQL changes: more ways the enforcer's model of what the
server skipped, and of its portals and cursors, may differ from the server's. Each test is a
conversation that ends on what reached the server or the agent, or on what was recorded."""

from __future__ import annotations

from interceptor.handlers.commands import Hold, HoldOutcome, Record
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.session import FRONTEND
from test_issue19_pg_review import DECLARE_CARDS, bind, execute, prepared, simple
from test_pg_masking_session import session
from test_pg_session import SENTINEL, frames, msg, sent
from test_pg_session import session as pg_session


def _records(commands: list) -> list[tuple[object, object]]:
    return [(c.operation["statement"], c.outcome["command"]) for c in commands if isinstance(c, Record)]


def test_a_statement_approved_after_the_server_failed_its_segment_is_skipped_as_the_server_skips_it():
    """Parse of a statement held for approval; the messages before it reach the server and one
    fails (the server then discards the rest of the segment, the held Parse included). Approved
    afterwards, the Parse must not be owed a ParseComplete nor its name recorded: else the Sync's
    ReadyForQuery is taken for it and every later answer for another statement's."""
    s = pg_session()
    prepared(s, b"s1", "select 1")
    commands = s.from_client(codec.parse("s1", "select 2") + codec.parse("d", "delete from t") + msg(b"S"))
    assert any(isinstance(c, Hold) for c in commands)
    assert [kind for kind, _ in frames(sent(commands, "server"))] == [b"P"]
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists'))
    s.approval(FRONTEND, HoldOutcome(True, "R1", "ok", "bob"))
    s.from_server(codec.ready_for_query(b"I"))
    assert SENTINEL.encode() in sent(s.from_client(bind(b"", b"d") + execute(b"") + msg(b"S")), "server")
    s.from_server(codec.error_response("42601", "x") + codec.ready_for_query(b"I"))
    assert sent(s.from_client(codec.query("select 1")), "server") == codec.query("select 1")
    assert _records(s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I"))) == [("select ?", "SELECT 1")]


# ---- COPY FROM STDIN: the server reads the client's next messages as the copy's ----------------


def test_a_message_pipelined_after_copy_from_stdin_is_not_taken_for_a_statement_the_server_runs():
    """The server in copy-in mode reads every message as the copy's: a Query consumes itself as
    the copy's error (docs 55.2.6), so it is never run nor answered. A session that owes it an
    answer takes the next statement's rows for it: a masked table's rows pass as `select 1`'s."""
    s = pg_session()
    assert sent(s.from_client(codec.query("copy t from stdin") + codec.query("select 1")), "server")
    s.from_server(msg(b"G", b"\0" + codec.INT16.pack(0)))
    assert s.closed  # fail closed: which of the client's messages the server runs cannot be told


def test_a_sync_sent_during_copy_in_is_ignored_by_the_server_and_owed_no_answer():
    """libpq's extended COPY: Parse, Bind, Execute, Sync at once; the server ignores the Sync in
    copy-in mode, and answers the one sent after CopyDone. The session owes one ReadyForQuery."""
    s = pg_session()
    prepared(s, b"c", "copy t from stdin")
    s.from_client(bind(b"", b"c") + execute(b"") + msg(b"S"))
    s.from_server(msg(b"2") + msg(b"G", b"\0" + codec.INT16.pack(0)))
    assert not s.closed
    s.from_client(msg(b"d", b"1\n") + msg(b"c") + msg(b"S"))
    copied = s.from_server(msg(b"C", b"COPY 1\0") + codec.ready_for_query(b"I"))
    assert _records(copied) == [("copy t from stdin", "COPY 1")]
    assert sent(s.from_client(codec.query("select 1")), "server") == codec.query("select 1")
    assert _records(s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I"))) == [("select ?", "SELECT 1")]


def test_the_client_may_send_anything_once_its_copydone_is_sent():
    """Messages after the client's CopyDone are the server's to run again, whenever G arrives."""
    s = pg_session()
    s.from_client(codec.query("copy t from stdin") + msg(b"d", b"1\n") + msg(b"c") + codec.query("select 1"))
    s.from_server(msg(b"G", b"\0" + codec.INT16.pack(0)))
    assert not s.closed
    assert _records(s.from_server(msg(b"C", b"COPY 1\0") + codec.ready_for_query(b"I"))) == [("copy t from stdin", "COPY 1")]
    assert _records(s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I"))) == [("select ?", "SELECT 1")]


def test_a_message_sent_while_the_server_copies_in_is_refused_and_copydone_ends_the_copy():
    """After CopyInResponse, a Query before CopyDone is the copy's error to the server: refused."""
    s = pg_session()
    s.from_client(codec.query("copy t from stdin"))
    s.from_server(msg(b"G", b"\0" + codec.INT16.pack(0)))
    s.from_client(msg(b"d", b"1\n") + msg(b"H"))
    assert not s.closed
    s.from_client(codec.query("select 1"))
    assert s.closed
    t = pg_session()
    t.from_client(codec.query("copy t from stdin"))
    t.from_server(msg(b"G", b"\0" + codec.INT16.pack(0)))
    t.from_client(msg(b"d", b"1\n") + msg(b"c"))
    t.from_server(msg(b"C", b"COPY 1\0") + codec.ready_for_query(b"I"))
    assert sent(t.from_client(codec.query("select 1")), "server") == codec.query("select 1")


# ---- the cursors' and portals' one namespace -------------------------------------------------------


def test_a_cursor_closed_by_a_protocol_close_is_not_fetched_from_as_the_enforcer_judged_it():
    """Close of portal p closes the cursor DECLAREd as p (one namespace): the enforcer forgets
    it, so a FETCH of p reads no cursor the enforcer holds and is refused."""
    s = session()
    simple(s, "begin", b"BEGIN")
    simple(s, DECLARE_CARDS, b"DECLARE CURSOR")
    s.from_client(msg(b"C", b"Pp\0") + msg(b"S"))
    s.from_server(msg(b"3") + codec.ready_for_query(b"T"))
    assert sent(s.from_client(codec.query("fetch all from p")), "server") == codec.query(SENTINEL)


# ---- what held -----------------------------------------------------------------------------------


def test_an_error_answered_to_a_query_inside_an_extended_segment_skips_nothing_after_it():
    """A Query's error ends with its own ReadyForQuery and puts the server in no skip mode (the
    skip is for extended messages' errors): the Execute sent after it is owed its answer."""
    s = pg_session()
    prepared(s, b"s1", "select 1")
    to_server = sent(s.from_client(bind(b"", b"s1") + codec.query("select nothing") + bind(b"", b"s1")
                                   + execute(b"") + msg(b"S")), "server")
    assert execute(b"") in to_server
    s.from_server(msg(b"2") + codec.error_response("42703", "column nothing does not exist")
                  + codec.ready_for_query(b"I") + msg(b"2"))
    records = s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I"))
    assert _records(records) == [("select ?", "SELECT 1")]


def test_move_or_fetch_naming_a_protocol_portal_is_refused():
    """FETCH and MOVE read a cursor the enforcer judged; a protocol portal's name is not one."""
    for sql in ("fetch all from p", "move all in p"):
        s = session()
        prepared(s, b"s1", "select 1")
        s.from_client(codec.query("begin"))
        s.from_server(msg(b"C", b"BEGIN\0") + codec.ready_for_query(b"T"))
        s.from_client(bind(b"p", b"s1") + msg(b"S"))
        s.from_server(msg(b"2") + codec.ready_for_query(b"T"))
        assert sent(s.from_client(codec.query(sql)), "server") == codec.query(SENTINEL)
