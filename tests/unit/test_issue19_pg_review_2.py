"""Second review of issue 19's PostgreSQL changes: more ways the enforcer's model of what the
server skipped, and of its portals and cursors, may differ from the server's. Each test is a
conversation that ends on what reached the server or the agent, or on what was recorded."""

from __future__ import annotations

from interceptor.handlers.commands import Hold, HoldOutcome, Record
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.session import FRONTEND
from test_issue19_pg_review import bind, execute, prepared
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
