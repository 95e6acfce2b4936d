"""ProxySession driven directly: client and server bytes in, commands out; the core
conversations as scripts (tests/conversation.py)."""

from collections.abc import Sequence
from typing import Any

import pytest

from interceptor.decision import ApprovalSpec, Decision, MaskSpec, Verdict
from interceptor.errors import MaskingError
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import INT16, INT32, Column
from interceptor.handlers.postgres.masks import Origin, RowMask
from conversation import Judging, script
from interceptor.enforcer.driver import CANCELLED
from interceptor.handlers.commands import Close, Command, Record, Send
from interceptor.handlers.postgres.session import (
    CLIENT_TERMINATED,
    FRONTEND,
    ProxySession,
    RefreshCatalog,
    redact_literals,
)
from interceptor.operations import SqlQuery
from interceptor.policy.catalog import Catalog, Relation

NONCE = "n0nce"
SENTINEL = f"interceptor_denied_{NONCE}"


def decide(query: SqlQuery) -> Decision:
    """A small real policy: no DROP, approval for DELETE, mask users, everything else allowed."""
    lowered = query.text.lower()
    if "drop" in lowered:
        return Decision.deny("no-drop", "DROP is never allowed")
    if "delete" in lowered:
        return Decision(Verdict.APPROVE, "prod-deletes", "deletes need a DBA", approval=ApprovalSpec(("dba",)))
    if "users" in lowered:
        return Decision(Verdict.ALLOW, "masked-users", masks=(MaskSpec(columns=("public.users.email",)),))
    return Decision(Verdict.ALLOW, "reads")


def session(**kwargs: Any) -> ProxySession:
    return ProxySession(judge=Judging(decide), database="app", nonce=NONCE, clock=lambda: 100.0, **kwargs)


def sent(commands: Sequence[Command], to: str) -> bytes:
    return b"".join(bytes(piece) for c in commands if isinstance(c, Send) and c.to == to for piece in c.data)


def audits(commands: Sequence[Command]) -> list[Record]:
    return [c for c in commands if isinstance(c, Record)]


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        length = INT32.unpack_from(data, pos + 1)[0]
        out.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return codec.message(kind, body)


def syntax_error(token: str) -> bytes:
    return codec.error_response("42601", f'syntax error at or near "{token}"')


def data_row(*values: bytes) -> bytes:
    return msg(b"D", INT16.pack(len(values)) + b"".join(INT32.pack(len(v)) + v for v in values))


def row_description(*columns: tuple[str, int, int]) -> bytes:
    body = INT16.pack(len(columns))
    for name, table, attnum in columns:
        body += name.encode() + b"\0" + INT32.pack(table) + INT16.pack(attnum) + INT32.pack(25) + INT16.pack(-1) \
            + INT32.pack(-1) + INT16.pack(0)
    return msg(b"T", body)


SELECTED = {"protocol": "postgres", "database": "app", "via": "simple", "statement": "SELECT ?"}
EXTENDED = {"protocol": "postgres", "database": "app", "via": "extended", "statement": "SELECT ?"}
DENIED = "permission denied by interceptor rule 'no-drop': DROP is never allowed"


def run(statement: str = "") -> bytes:
    """Bind the statement `statement` to the unnamed portal, Describe, Execute and Sync it."""
    bind = msg(b"B", b"\0" + statement.encode() + b"\0" + INT16.pack(0) + INT16.pack(0) + INT16.pack(0))
    return bind + msg(b"D", b"P\0") + msg(b"E", b"\0" + INT32.pack(0)) + msg(b"S")


def extended(name: str, sql: str) -> bytes:
    return codec.parse(name, sql) + run(name)


def one_row(value: bytes) -> bytes:
    """An extended segment's answer up to its CommandComplete: ParseComplete, BindComplete, NoData, a row."""
    return msg(b"1") + msg(b"2") + msg(b"n") + data_row(value)


COMPLETE = msg(b"C", b"SELECT 1\0")


def test_allowed_query_is_forwarded_unchanged_and_audited_before_ready_for_query() -> None:
    (script(session())
     .agent(codec.query("SELECT 1"))
     .expect_server(codec.query("SELECT 1"))
     .server(row_description(("x", 0, 0)), data_row(b"1"), COMPLETE, codec.ready_for_query(b"I"))
     .expect_agent(row_description(("x", 0, 0)), data_row(b"1"), COMPLETE)
     .expect_record(rule="reads", verdict="allow", operation=SELECTED, outcome={"rows": 1, "command": "SELECT 1"})
     .expect_ready(b"I")
     .done())


def test_denied_query_sends_the_sentinel_and_rewrites_its_error() -> None:
    s = session()
    (script(s)
     .agent(codec.query("DROP TABLE t"))
     .expect_server(codec.query(SENTINEL))
     .server(syntax_error(SENTINEL), codec.ready_for_query(b"E"))
     .expect_agent_error("42501", rule="no-drop", says="DROP is never allowed")
     .expect_record(rule="no-drop", verdict="deny", error="DROP is never allowed")
     .expect_ready(b"E")  # the status exactly as the server reports it
     .done())
    assert s.status == b"E"


def test_real_errors_are_not_rewritten() -> None:
    (script(session())
     .agent(codec.query("DROP TABLE t"))
     .expect_server(codec.query(SENTINEL))
     .server(syntax_error("DROPP"), codec.ready_for_query(b"I"))
     .expect_agent(syntax_error("DROPP"))
     .expect_record(rule="no-drop", verdict="deny", error='syntax error at or near "DROPP"')
     .expect_ready(b"I")
     .done())


def test_pipelined_queries_are_judged_each_and_answered_in_order() -> None:
    (script(session())
     .agent(codec.query("SELECT 1"), codec.query("DROP TABLE t"), codec.query("SELECT 2"))
     .expect_server(codec.query("SELECT 1"), codec.query(SENTINEL), codec.query("SELECT 2"))
     .server(data_row(b"1"), COMPLETE, codec.ready_for_query(b"I"),
             syntax_error(SENTINEL), codec.ready_for_query(b"I"),
             data_row(b"2"), COMPLETE, codec.ready_for_query(b"I"))
     .expect_agent(data_row(b"1"), COMPLETE)
     .expect_record(rule="reads", operation=SELECTED, outcome={"rows": 1})
     .expect_ready(b"I")
     .expect_agent_error("42501", rule="no-drop")
     .expect_record(rule="no-drop", verdict="deny", operation={**SELECTED, "statement": "DROP TABLE t"},
                    outcome={"error": DENIED})
     .expect_ready(b"I")
     .expect_agent(data_row(b"2"), COMPLETE)
     .expect_record(rule="reads", operation=SELECTED, outcome={"rows": 1})
     .expect_ready(b"I")
     .done())


def test_extended_query_is_audited_before_its_command_complete() -> None:
    (script(session())
     .agent(extended("", "SELECT 1"))
     .expect_server(extended("", "SELECT 1"))
     .server(one_row(b"1"), COMPLETE, codec.ready_for_query(b"I"))
     .expect_agent(one_row(b"1"))
     .expect_record(rule="reads", verdict="allow", operation=EXTENDED, outcome={"rows": 1, "command": "SELECT 1"})
     .expect_agent(COMPLETE)
     .expect_ready(b"I")
     .done())


def test_extended_pipeline_denial_skips_to_sync_with_one_ready_for_query() -> None:
    (script(session())
     .agent(extended("", "SELECT 1"), extended("s2", "DROP TABLE t"), extended("", "SELECT 2"))
     .expect_server(extended("", "SELECT 1"), codec.parse("s2", SENTINEL), run("s2"), extended("", "SELECT 2"))
     .server(one_row(b"1"), COMPLETE, codec.ready_for_query(b"I"),
             syntax_error(SENTINEL), codec.ready_for_query(b"I"),
             one_row(b"2"), COMPLETE, codec.ready_for_query(b"I"))
     .expect_agent(one_row(b"1"))
     .expect_record(rule="reads", operation=EXTENDED)
     .expect_agent(COMPLETE)
     .expect_ready(b"I")
     .expect_record(rule="no-drop", verdict="deny", operation={**EXTENDED, "statement": "DROP TABLE t"},
                    outcome={"error": DENIED})
     .expect_agent_error("42501", rule="no-drop")
     .expect_ready(b"I")  # one ReadyForQuery for the denied segment: the server skipped to its Sync
     .expect_agent(one_row(b"2"))
     .expect_record(rule="reads", operation=EXTENDED)
     .expect_agent(COMPLETE)
     .expect_ready(b"I")
     .done())


def test_denial_inside_a_pipeline_after_a_real_error_keeps_the_real_error() -> None:
    (script(session())
     .agent(extended("", "SELECT nope"), extended("", "DROP TABLE t"))
     .expect_server(extended("", "SELECT nope"), codec.parse("", SENTINEL), run())
     .server(syntax_error("nope"), codec.ready_for_query(b"I"), syntax_error(SENTINEL), codec.ready_for_query(b"I"))
     .expect_agent(syntax_error("nope"))  # a Parse that failed: no statement ran, nothing to record
     .expect_ready(b"I")
     .expect_record(rule="no-drop", verdict="deny", outcome={"error": DENIED})
     .expect_agent_error("42501", rule="no-drop")
     .expect_ready(b"I")
     .done())


def test_approval_holds_the_statement_and_later_bytes_until_answered() -> None:
    (script(session())
     .agent(codec.query("SELECT 1"), codec.query("DELETE FROM t"), codec.query("SELECT 2"))
     .expect_server(codec.query("SELECT 1"))
     .expect_hold(rule="prod-deletes", text="DELETE FROM t")
     .done()
     .agent(b"")  # nudged, the session still holds what follows the DELETE
     .done()
     .waiting("ABCD1234", 300)
     .expect_notice("request ABCD1234")
     .approve("ABCD1234", "bob")
     .expect_server(codec.query("DELETE FROM t"), codec.query("SELECT 2"))
     .done())


def test_rejected_approval_becomes_a_denial() -> None:
    (script(session())
     .agent(codec.query("DELETE FROM t"))
     .expect_hold(rule="prod-deletes", text="DELETE FROM t")
     .deny("expired", "ABCD1234")
     .expect_server(codec.query(SENTINEL))
     .server(syntax_error(SENTINEL), codec.ready_for_query(b"I"))
     .expect_agent_error("42501", rule="prod-deletes", says="expired")
     .expect_record(rule="prod-deletes", verdict="deny", outcome={
         "approval": {"approved": False, "request_id": "ABCD1234", "approver": None, "reason": "expired"}})
     .expect_ready(b"I")
     .done())


def test_a_cancelled_approval_answers_query_canceled_and_the_session_goes_on() -> None:
    (script(session())
     .agent(codec.query("DELETE FROM t"), codec.query("SELECT 2"))
     .expect_hold(rule="prod-deletes", text="DELETE FROM t")
     .cancel("ABCD1234")
     .expect_server(codec.query(SENTINEL), codec.query("SELECT 2"))
     .server(syntax_error(SENTINEL), codec.ready_for_query(b"I"), data_row(b"2"), COMPLETE, codec.ready_for_query(b"I"))
     .expect_agent_error("57014", rule="prod-deletes", says="the request is withdrawn")
     .expect_record(rule="prod-deletes", verdict="deny", outcome={
         "approval": {"approved": False, "request_id": "ABCD1234", "approver": None, "reason": CANCELLED,
                      "cancelled": True}})
     .expect_ready(b"I")
     .expect_agent(data_row(b"2"), COMPLETE)
     .expect_record(rule="reads", operation=SELECTED)
     .expect_ready(b"I")
     .done())


def test_notice_waits_for_a_server_frame_boundary() -> None:
    s = session()
    s.from_client(codec.query("SELECT 1") + codec.query("DELETE FROM t"))
    row = data_row(b"x" * 1000)
    first = s.from_server(row_description(("x", 0, 0)) + row[:500])
    assert s.waiting(FRONTEND, "R1", 60) == []  # mid-DataRow: inserting now would corrupt the stream
    rest = s.from_server(row[500:])
    stream = sent(first, "client") + sent(rest, "client")
    kinds = [k for k, _ in frames(stream)]
    assert kinds == [b"T", b"D", b"N"]


def test_large_rows_stream_in_pieces_without_buffering() -> None:
    s = session()
    s.from_client(codec.query("SELECT big"))
    row = data_row(b"y" * 1_000_000)
    forwarded = b""
    for i in range(0, len(row), 65536):
        forwarded += sent(s.from_server(row[i:i + 65536]), "client")
        assert len(s._server.data) <= 65536  # only the latest chunk is held
    assert forwarded == row


USERS = Relation("public", "users", "r", ("id", "email"), oid=16400)


def test_masked_columns_are_named_by_the_catalog_read_again_for_a_table_it_did_not_hold() -> None:
    calls = []
    catalogs = [Catalog.build([]), Catalog.build([USERS])]

    def factory(specs: Sequence[MaskSpec], columns: tuple[Column, ...], origins: Sequence[Origin],
                encoding: str) -> RowMask | None:
        names = tuple(o.column for o in origins)
        calls.append(names)
        if names.index("public.users.email") != 1:
            return None
        return lambda body: body.tobytes().replace(b"alice@example.com", b"****").replace(
            INT32.pack(17) + b"****", INT32.pack(4) + b"****")

    s = session(mask_factory=factory, catalog=lambda: catalogs[0])
    s.from_client(codec.query("SELECT id, email FROM users"))
    head = row_description(("id", 16400, 1), ("email", 16400, 2))
    commands = s.from_server(head + data_row(b"1", b"alice@example.com"))
    assert commands == [RefreshCatalog(after_ddl=False, for_result=True)]
    catalogs.pop(0)
    resumed = s.tables_read()
    resumed += s.from_server(msg(b"C", b"SELECT 1\0") + codec.ready_for_query(b"I"))
    assert calls == [("public.users.id", "public.users.email")]
    out = sent(resumed, "client")
    assert b"alice" not in out and frames(out)[1] == (b"D", data_row(b"1", b"****")[5:])


def test_the_same_description_is_checked_again_against_a_new_catalog() -> None:
    catalogs = [Catalog.build([USERS]), Catalog.build([])]  # the table was dropped between two runs
    s = session(mask_factory=lambda specs, columns, origins, encoding: None, catalog=lambda: catalogs[0])
    head = row_description(("id", 16400, 1), ("email", 16400, 2))
    s.from_client(codec.query("SELECT id, email FROM users"))
    assert not any(isinstance(c, RefreshCatalog) for c in s.from_server(head + msg(b"C", b"SELECT 0\0")
                                                                        + codec.ready_for_query(b"I")))
    catalogs.pop(0)
    s.from_client(codec.query("SELECT id, email FROM users"))
    assert s.from_server(head) == [RefreshCatalog(after_ddl=False, for_result=True)]


def test_masking_failure_withholds_the_row_and_closes() -> None:
    def factory(specs: Sequence[MaskSpec], columns: tuple[Column, ...], origins: Sequence[Origin],
                encoding: str) -> RowMask:
        def refuse(body: memoryview) -> bytes:
            raise MaskingError("cannot mask binary int")
        return refuse

    s = session(mask_factory=factory)
    s.from_client(codec.query("SELECT * FROM users"))
    s.from_server(row_description(("email", 0, 0)))
    commands = s.from_server(data_row(b"secret@example.com"))
    out = sent(commands, "client")
    assert b"secret" not in out and "result withheld" in codec.read_fields(frames(out)[0][1])["M"]
    assert isinstance(commands[-1], Close)


def test_masks_without_a_masker_fail_closed() -> None:
    s = session()
    s.from_client(codec.query("SELECT * FROM users"))
    s.from_server(row_description(("email", 0, 0)))
    commands = s.from_server(data_row(b"secret@example.com"))
    assert b"secret" not in sent(commands, "client") and isinstance(commands[-1], Close)


@pytest.mark.parametrize("data, problem", [
    (b"Y" + INT32.pack(4), "invalid frontend message type 'Y'"),
    (b"Q" + INT32.pack(0), "invalid length 0"),
    (b"Q" + INT32.pack(2**31 - 1), "invalid length"),
    (codec.query("SELECT '\udcff'".encode("utf-8", "surrogateescape").decode("latin-1")), None),
    (b"Q" + INT32.pack(12) + b"SELECT\xff\0", "not valid UTF-8"),
])
def test_bad_client_input_gets_an_error_and_a_close(data: bytes, problem: str | None) -> None:
    conversation = script(session()).agent(data)
    if problem is None:  # latin-1 round trip above is valid UTF-8 text: forwarded
        conversation.expect_server(data).done()
        return
    conversation.expect_agent_error("08P01", says=problem, severity="FATAL").expect_close(says=problem).done()


def test_fastpath_function_call_is_denied_through_the_server() -> None:
    s = session()
    assert sent(s.from_client(msg(b"F", INT32.pack(764) + INT16.pack(0))), "server") == codec.query(SENTINEL)


def test_policy_failure_denies() -> None:
    def failing(query: SqlQuery) -> Decision:
        raise ZeroDivisionError("the policy failed")

    s = ProxySession(judge=Judging(failing), database="app", nonce=NONCE)
    assert sent(s.from_client(codec.query("SELECT 1")), "server") == codec.query(SENTINEL)


def test_copy_data_from_the_client_streams() -> None:
    s = session()
    s.from_client(codec.query("COPY t FROM STDIN"))
    chunk = msg(b"d", b"z" * 200_000)
    out = sent(s.from_client(chunk[:70_000]), "server") + sent(s.from_client(chunk[70_000:]), "server")
    assert out == chunk


def test_terminate_is_forwarded_and_closes() -> None:
    script(session()).agent(msg(b"X")).expect_server(msg(b"X")).expect_close(CLIENT_TERMINATED).done()


def test_literals_are_redacted_for_audit() -> None:
    assert redact_literals("SELECT * FROM t1 WHERE a = 'x''y' AND b = 42 AND c = $$z$$ AND d = 1.5e3") == \
        "SELECT * FROM t1 WHERE a = ? AND b = ? AND c = ? AND d = ?"


def test_a_table_the_catalog_still_does_not_hold_withholds_the_result() -> None:
    s = session(mask_factory=lambda specs, columns, origins, encoding: None, catalog=lambda: Catalog.build([]))
    s.from_client(codec.query("SELECT * FROM users"))
    s.from_server(row_description(("email", 16400, 2)))
    out = sent(s.tables_read() + s.from_server(data_row(b"secret@example.com")), "client")
    assert b"secret" not in out and s.closed and "table oid 16400" in codec.read_fields(frames(out)[-1][1])["M"]


def test_frames_before_a_paused_row_description_keep_their_order() -> None:
    catalogs = [Catalog.build([]), Catalog.build([USERS])]
    s = session(mask_factory=lambda specs, columns, origins, encoding: None, catalog=lambda: catalogs[0])
    prepare = codec.parse("s1", "SELECT email FROM users WHERE id = $1") + msg(b"D", b"Ss1\0") + msg(b"S")
    before = msg(b"1") + msg(b"t", INT16.pack(1) + INT32.pack(23))
    conversation = (script(s)
                    .agent(prepare)
                    .expect_server(prepare)
                    .server(before, row_description(("email", 16400, 2)), codec.ready_for_query(b"I"))
                    .expect_agent(before)  # what came before the paused RowDescription goes first
                    .expect_refresh(after_ddl=False, for_result=True)
                    .done())
    catalogs.pop(0)
    conversation.refreshed().expect_agent(row_description(("email", 16400, 2))).expect_ready(b"I").done()


def test_computed_columns_derived_from_a_masked_column_are_masked_as_computed() -> None:
    """Expressions carry no table OID; the policy's lineage names their source column."""
    seen: list[tuple[Origin, ...]] = []
    lineage = Decision(Verdict.ALLOW, "reads", masks=(MaskSpec(columns=("public.users.email",)),), details=(
        {"masked_outputs": [{"position": 1, "name": "upper", "columns": ["public.users.email"], "rules": ["m"]}],
         "output_count": 2},))

    def factory(specs: Sequence[MaskSpec], columns: tuple[Column, ...], origins: Sequence[Origin],
                encoding: str) -> RowMask | None:
        seen.append(tuple(origins))
        return None

    s = ProxySession(judge=Judging(lambda query: lineage), database="app", nonce=NONCE, mask_factory=factory)
    s.from_client(codec.query("SELECT id, upper(email) FROM users"))
    s.from_server(row_description(("id", 0, 0), ("upper", 0, 0)))
    assert seen == [(Origin(), Origin(derived=("public.users.email",)))]


def test_a_prepared_statement_executed_again_shares_one_operation_summary() -> None:
    s = session()
    s.from_client(codec.parse("p1", "SELECT $1") + msg(b"S"))
    s.from_server(msg(b"1") + codec.ready_for_query(b"I"))

    def execute(values: int) -> Record:
        bind = msg(b"B", b"\0p1\0" + INT16.pack(0) + INT16.pack(values) + b"".join(INT32.pack(1) + b"7"
                                                                                    for _ in range(values))
                   + INT16.pack(0))
        s.from_client(bind + msg(b"E", b"\0" + INT32.pack(0)) + msg(b"S"))
        (audit,) = audits(s.from_server(msg(b"2") + data_row(b"7") + msg(b"C", b"SELECT 1\0")
                                        + codec.ready_for_query(b"I")))
        return audit

    first, second, other = execute(1), execute(1), execute(2)
    assert first.operation == {"protocol": "postgres", "database": "app", "via": "extended",
                               "statement": "SELECT $1", "parameters": 1}
    assert second.operation is first.operation  # scrubbed and encoded once for every execution
    assert other.operation["parameters"] == 2 and other.operation is not first.operation
    with pytest.raises(TypeError):
        first.operation["statement"] = "changed"
