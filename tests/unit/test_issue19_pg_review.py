"""Review of issue 19's PostgreSQL hot-path changes: where the enforcer's model of the server
(its portals, cursors and descriptions) and the server's may differ. Each test is a
conversation that ends on what reached the server or the agent."""

from __future__ import annotations

from interceptor.handlers.commands import Hold, HoldOutcome, Record
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import INT16, INT32
from interceptor.policy import PolicyEngine, load_policy_text
from test_pg_masking_session import (
    CUSTOMERS_OID, EMAIL, POLICY, data_row, engine_judge, row_description, session, values,
)
from interceptor.handlers.postgres.session import FRONTEND, ProxySession, RefreshCatalog
from test_pg_session import SENTINEL, frames, msg, sent
from test_pg_session import session as pg_session


def bind(portal: bytes, statement: bytes) -> bytes:
    return msg(b"B", portal + b"\0" + statement + b"\0" + INT16.pack(0) + INT16.pack(0) + INT16.pack(0))


def execute(portal: bytes) -> bytes:
    return msg(b"E", portal + b"\0" + INT32.pack(0))


def prepared(s, name: bytes, sql: str) -> None:
    s.from_client(codec.parse(name.decode(), sql) + msg(b"S"))
    s.from_server(msg(b"1") + codec.ready_for_query(b"I"))


def simple(s, sql: str, tag: bytes, status: bytes = b"T") -> None:
    assert sent(s.from_client(codec.query(sql)), "server") == codec.query(sql), f"{sql!r} was refused"
    s.from_server(msg(b"C", tag + b"\0") + codec.ready_for_query(status))


DECLARE_CARDS = "declare p cursor for select card_number from customers"


def test_a_portal_ended_with_its_transaction_is_not_executed_as_the_cursor_declared_after_it():
    """Bind p; Sync (the implicit transaction ends, and p with it); BEGIN; DECLARE p CURSOR;
    Execute p, in one pipeline: the server would run the cursor under p, judged and recorded as
    the statement the enforcer bound under p. Refused: p is not the enforcer's portal any more."""
    s = session()
    prepared(s, b"s1", "select 1")
    pipeline = (bind(b"p", b"s1") + msg(b"S") + codec.query("begin") + codec.query(DECLARE_CARDS)
                + execute(b"p") + msg(b"S"))
    to_server = sent(s.from_client(pipeline), "server")
    assert execute(b"p") not in to_server and to_server.count(SENTINEL.encode()) == 2


def test_the_clients_describe_of_an_ended_portal_does_not_describe_the_cursor_that_reuses_its_name():
    """As above, with libpq's Describe of the portal before its transaction ends (a983842): the
    description is of another portal than the one the Execute would run."""
    s = session()
    prepared(s, b"s1", "select id from customers")
    pipeline = (bind(b"p", b"s1") + msg(b"D", b"Pp\0") + msg(b"S") + codec.query("begin") + codec.query(DECLARE_CARDS)
                + execute(b"p") + msg(b"S"))
    to_server = sent(s.from_client(pipeline), "server")
    assert execute(b"p") not in to_server


def test_a_portal_closed_by_sql_close_is_not_executed_as_the_cursor_declared_after_it():
    """SQL CLOSE closes a protocol portal too (one namespace), and CLOSE ALL every one; a DECLARE
    then takes the name."""
    for close in ("close p", "close all"):
        s = session()
        prepared(s, b"s1", "select 1")
        simple(s, "begin", b"BEGIN")
        s.from_client(bind(b"p", b"s1") + msg(b"S"))
        s.from_server(msg(b"2") + codec.ready_for_query(b"T"))
        simple(s, close, b"CLOSE CURSOR")
        simple(s, DECLARE_CARDS, b"DECLARE CURSOR")
        assert execute(b"p") not in sent(s.from_client(execute(b"p") + msg(b"S")), "server")


def test_a_describe_the_server_skipped_describes_nothing():
    """The client's Describe of p is skipped after an error (the server answers nothing); a
    ROLLBACK TO SAVEPOINT keeps p (bound before the savepoint): its Execute is described by the
    enforcer, not withheld as never described (a983842 counted the skipped Describe)."""
    s = session()
    prepared(s, b"s1", "select email from customers")
    simple(s, "begin", b"BEGIN")
    s.from_client(bind(b"p", b"s1") + msg(b"S"))
    s.from_server(msg(b"2") + codec.ready_for_query(b"T"))
    simple(s, "savepoint s", b"SAVEPOINT")
    s.from_client(codec.parse("s1", "select 1") + msg(b"D", b"Pp\0") + msg(b"S"))  # s1 exists: the Parse fails
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists') + codec.ready_for_query(b"E"))
    simple(s, "rollback to savepoint s", b"ROLLBACK")
    to_server = sent(s.from_client(execute(b"p") + msg(b"S")), "server")
    assert [kind for kind, _ in frames(to_server)] == [b"D", b"E", b"S"]
    out = sent(s.from_server(row_description(("email", CUSTOMERS_OID, 3, 25, 0)) + data_row(EMAIL)
                             + msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"T")), "client")
    assert values(out) == [[b"****"]]


# ---- what held: the client's Describe stands only for the very portal it described ----------


EMAIL_COLUMN = ("email", CUSTOMERS_OID, 3, 25, 0)


def test_a_describe_of_one_portal_does_not_stand_for_another_or_for_the_same_name_bound_again():
    for pipeline in (bind(b"a", b"s1") + msg(b"D", b"Pa\0") + bind(b"b", b"s1") + execute(b"b") + msg(b"S"),
                     bind(b"", b"s1") + msg(b"D", b"P\0") + bind(b"", b"s1") + execute(b"") + msg(b"S"),
                     msg(b"D", b"Pp\0") + bind(b"p", b"s1") + execute(b"p") + msg(b"S")):
        s = session()
        prepared(s, b"s1", "select email from customers")
        kinds = [kind for kind, _ in frames(sent(s.from_client(pipeline), "server"))]
        assert kinds[-3:] == [b"D", b"E", b"S"] and kinds.count(b"D") == 2


def test_a_policy_reload_between_the_clients_describe_and_the_execute_has_the_enforcer_describe_again():
    epoch = [1]
    engines = {1: PolicyEngine(load_policy_text(POLICY)), 2: PolicyEngine(load_policy_text(POLICY))}  # a reload
    s = session(lambda query: engine_judge(engines[epoch[0]])(query))
    s.epoch = lambda: epoch[0]
    prepared(s, b"s1", "select email from customers")
    s.from_client(bind(b"p", b"s1") + msg(b"D", b"Pp\0"))
    epoch[0] = 2
    kinds = [kind for kind, _ in frames(sent(s.from_client(execute(b"p") + msg(b"S")), "server"))]
    assert kinds == [b"D", b"E", b"S"]
    out = sent(s.from_server(msg(b"2") + row_description(EMAIL_COLUMN) + row_description(EMAIL_COLUMN)
                             + data_row(EMAIL) + msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I")), "client")
    assert values(out) == [[b"****"]] and out.count(b"T\0") == 1


def test_an_execute_pipelined_after_its_portals_sync_waits_for_the_server_to_say_whether_the_portal_lives():
    """Bind p; Sync; Execute p: if the Sync ended p's transaction, the name may be another portal's
    by the time the Execute runs (a cursor a function OPENed under it). The Execute waits for the
    ReadyForQuery; an idle one ended p, and the Execute is refused; in a transaction it goes on."""
    for status in (b"I", b"T"):
        s = session()
        prepared(s, b"s1", "select 1")
        to_server = sent(s.from_client(bind(b"p", b"s1") + msg(b"S") + execute(b"p") + msg(b"S")), "server")
        assert [kind for kind, _ in frames(to_server)] == [b"B", b"S", b"H"]  # a Flush: the answers come
        later = sent(s.from_server(msg(b"2") + codec.ready_for_query(status)), "server")
        assert (execute(b"p") in later) is (status == b"T")


def test_a_message_that_waited_while_the_server_failed_its_segment_is_skipped_as_the_server_skips_it():
    """The Execute waits (above) while an earlier message of its segment fails: the server then
    discards everything to the Sync, so the Execute must not be owed an answer, or every answer
    after it is taken for another statement's (rows masked or recorded as someone else's)."""
    s = session()
    prepared(s, b"s1", "select email from customers")
    simple(s, "begin", b"BEGIN")
    s.from_client(bind(b"p", b"s1") + msg(b"S"))
    s.from_server(msg(b"2") + codec.ready_for_query(b"T"))
    to_server = sent(s.from_client(codec.parse("s1", "select 1") + execute(b"p") + msg(b"S")), "server")
    assert [kind for kind, _ in frames(to_server)] == [b"P", b"H"]
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists'))
    s.from_server(codec.ready_for_query(b"E"))
    assert sent(s.from_client(codec.query("rollback")), "server") == codec.query("rollback")
    records = [c for c in s.from_server(msg(b"C", b"ROLLBACK\0") + codec.ready_for_query(b"I")) if isinstance(c, Record)]
    assert [(r.operation["statement"], r.outcome["command"]) for r in records] == [("rollback", "ROLLBACK")]


def assert_in_step(s: ProxySession) -> None:
    """The session and the server agree again: the next Query goes up as sent, and its answer is
    recorded as its own."""
    assert sent(s.from_client(codec.query("select 1")), "server") == codec.query("select 1")
    records = [c for c in s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I")) if isinstance(c, Record)]
    assert [(r.operation["statement"], r.outcome["command"]) for r in records] == [("select ?", "SELECT 1")]


def test_a_parse_that_waited_for_the_catalog_while_the_server_failed_its_segment_is_skipped_too():
    """The same kind with the catalog read again for a name it does not hold (mid-segment)."""
    s = session()
    prepared(s, b"s1", "select 1")
    commands = s.from_client(codec.parse("s1", "select 2") + codec.parse("s2", "select * from nowhere") + msg(b"S"))
    refresh = [c for c in commands if isinstance(c, RefreshCatalog)]
    assert refresh and [kind for kind, _ in frames(sent(commands, "server"))] == [b"P", b"H"]
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists'))
    s.catalog_refreshed(refresh[0])
    s.from_server(codec.ready_for_query(b"I"))
    assert_in_step(s)


def test_messages_sent_after_an_error_answered_on_a_flush_are_skipped_to_the_sync():
    """Flush without Sync: the server answers an error at once and discards what the client sends
    after it until Sync; the session expects no answer for those either."""
    s = session()
    prepared(s, b"s1", "select 1")
    s.from_client(codec.parse("s1", "select 2") + msg(b"H"))
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists'))
    s.from_client(bind(b"", b"s1") + execute(b"") + msg(b"S"))
    s.from_server(codec.ready_for_query(b"I"))
    assert_in_step(s)


# ---- what held: a one-shot approval covers one execution ----------------------------------


def test_a_one_shot_approval_at_parse_covers_one_execution_whatever_the_portals():
    s = pg_session()
    assert any(isinstance(c, Hold) for c in s.from_client(codec.parse("d", "delete from t") + msg(b"S")))
    s.approval(FRONTEND, HoldOutcome(True, "R1", "ok", "bob"))
    s.from_server(msg(b"1") + codec.ready_for_query(b"I"))
    to_server = sent(s.from_client(bind(b"a", b"d") + bind(b"b", b"d") + execute(b"a") + execute(b"b") + msg(b"S")),
                     "server")
    assert to_server.count(execute(b"a")) == 1 and execute(b"b") not in to_server and SENTINEL.encode() in to_server
    s.from_server(msg(b"2") + msg(b"2") + msg(b"C", b"DELETE 1\0") + codec.error_response("42601", SENTINEL)
                  + codec.ready_for_query(b"I"))
    again = sent(s.from_client(bind(b"", b"d") + execute(b"") + msg(b"S")), "server")
    assert execute(b"") not in again
