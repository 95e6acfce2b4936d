"""The session follows the server's state: names, settings, encodings, decisions that go
stale. Driven as a conversation: agent bytes in, what reaches the server and the agent out."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import INT16, INT32
from conversation import Judging
from interceptor.handlers.commands import Close, Command, Hold, Record, Side
from interceptor.handlers.postgres.session import FRONTEND, ProxySession, RefreshCatalog
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.operations import SqlQuery
from interceptor.policy.settings import Effect, SessionSettings
from test_pg_masking_session import CATALOG, engine_judge
from test_pg_session import frames, msg, sent

NONCE = "n0nce"
SENTINEL = f"interceptor_denied_{NONCE}"


def bind(statement: str, portal: str = "") -> bytes:
    return msg(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + INT16.pack(0) + INT16.pack(0)
               + INT16.pack(0))


def execute(portal: str = "") -> bytes:
    return msg(b"E", portal.encode() + b"\0" + INT32.pack(0))


SYNC = msg(b"S")


def ready(status: bytes = b"I") -> bytes:
    return codec.ready_for_query(status)


def complete(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


def parses(data: bytes) -> list[codec.Parse]:
    return [codec.read_parse(body) for kind, body in frames(data) if kind == b"P"]


class Policy:
    """A judge that reads its verdict from the text and records what it was asked: SET
    search_path is followed; `secret` is denied under search_path `sales`; DROP is denied."""

    def __init__(self) -> None:
        self.asked: list[SqlQuery] = []
        self.deny: set[str] = set()

    def __call__(self, query: SqlQuery) -> Decision:
        self.asked.append(query)
        details = []
        for text in [t.strip() for t in query.text.split(";") if t.strip()]:
            effects = []
            lowered = text.lower()
            if lowered.startswith("set search_path"):
                effects.append(Effect("set", "search_path", text.split("=", 1)[1].strip()).to_dict())
            elif lowered.startswith("set local search_path"):
                effects.append(Effect("set", "search_path", text.split("=", 1)[1].strip(), local=True).to_dict())
            elif lowered.startswith("set client_encoding"):
                effects.append(Effect("set", "client_encoding", text.split("=", 1)[1].strip()).to_dict())
            elif lowered in ("begin", "commit", "rollback", "end"):
                effects.append(Effect("commit" if lowered == "end" else lowered).to_dict())
            elif lowered.startswith("deallocate"):
                effects.append(Effect("deallocate", text.split()[-1]).to_dict())
            kind = lowered.split()[0]
            details.append({"kind": kind, "effects": effects})
        path = dict(query.settings).get("search_path")
        if "drop" in query.text.lower() or query.text in self.deny or ("secret" in query.text and path == "sales"):
            return Decision(Verdict.DENY, "no", "denied", details=tuple(details))
        return Decision(Verdict.ALLOW, "reads", details=tuple(details))


def session(policy: Policy | None = None, **kwargs) -> ProxySession:
    return ProxySession(judge=Judging(policy or Policy()), database="app", nonce=NONCE, clock=lambda: 1.0, **kwargs)


# ---- names: the enforcer's table of statements and portals is the server's ----------


def test_a_denied_parse_over_an_existing_name_cannot_run_what_the_server_still_holds():
    """The server keeps `s1` (the sentinel Parse fails), so the enforcer must keep judging
    `s1` as what the server holds, not forget it nor take the denied text for it."""
    s = session()
    s.from_client(codec.parse("s1", "SELECT 1") + SYNC)
    s.from_server(msg(b"1") + ready())
    s.from_client(codec.parse("s1", "DROP TABLE t") + SYNC)
    s.from_server(codec.error_response("42601", f'syntax error at or near "{SENTINEL}"') + ready())
    out = s.from_client(bind("s1") + execute() + SYNC)
    assert sent(out, "server") == bind("s1") + execute() + SYNC  # still SELECT 1, judged as such
    done = s.from_server(msg(b"2") + complete("SELECT 1") + ready())
    [record] = [c for c in done if isinstance(c, Record)]
    assert record.operation["statement"] == "SELECT ?"


def test_a_parse_the_server_refuses_leaves_the_old_statement_in_place():
    """Parse of an existing name fails with 42P05 on the server: the old text stays."""
    policy = Policy()
    s = session(policy)
    s.from_client(codec.parse("s1", "SELECT 1") + SYNC)
    s.from_server(msg(b"1") + ready())
    s.from_client(codec.parse("s1", "SELECT secret") + SYNC)
    s.from_server(codec.error_response("42P05", 'prepared statement "s1" already exists') + ready())
    s.from_client(codec.query("SET search_path = sales"))
    s.from_server(complete("SET") + ready())
    out = s.from_client(bind("s1") + execute() + SYNC)
    assert parses(sent(out, "server")) == []  # s1 is SELECT 1: allowed under sales too


def test_bind_of_a_statement_the_enforcer_never_judged_is_refused():
    """A name made by SQL PREPARE, or never made at all, is not run on the server's word."""
    s = session()
    out = s.from_client(bind("from_sql_prepare") + execute() + SYNC)
    [refusal] = parses(sent(out, "server"))
    assert refusal == codec.Parse(SENTINEL, SENTINEL)
    reply = s.from_server(codec.error_response("42601", f'syntax error at or near "{SENTINEL}"') + ready())
    error = codec.read_fields(frames(sent(reply, "client"))[0][1])
    assert error["C"] == "42501" and "unknown-statement" in error["M"]


def test_execute_of_a_portal_that_ended_with_its_transaction_is_refused():
    s = session()
    s.from_client(codec.parse("", "SELECT 1") + bind("") + SYNC)
    s.from_server(msg(b"1") + msg(b"2") + ready())
    out = s.from_client(execute() + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]


def test_messages_skipped_after_an_error_are_undone_last_first():
    s = session()
    s.from_client(codec.parse("a", "SELECT 1") + SYNC)
    s.from_server(msg(b"1") + ready())
    # in one segment: a failing statement, then a re-Parse of `a` and a Close of it
    s.from_client(codec.parse("", "SELECT nope") + codec.parse("b", "SELECT 2") + msg(b"C", b"Sa\0") + SYNC)
    s.from_server(codec.error_response("42703", "column nope does not exist") + ready())
    out = s.from_client(bind("a") + execute() + SYNC)
    assert parses(sent(out, "server")) == []  # `a` is back: the Close never ran
    out = s.from_client(bind("b") + execute() + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]  # `b` was never made


def test_after_a_refusal_the_rest_of_the_segment_is_left_to_the_server_to_skip():
    s = session()
    client = codec.parse("x", "DROP TABLE t") + bind("x") + execute() + SYNC
    out = s.from_client(client)
    assert sent(out, "server") == codec.parse("x", SENTINEL) + bind("x") + execute() + SYNC


def test_what_the_server_discards_after_a_refusal_is_still_never_forwarded_unjudged():
    s = session()
    fastpath = msg(b"F", INT32.pack(764) + INT16.pack(0))
    client = (codec.parse("x", "DROP TABLE t") + codec.parse("y", "DROP TABLE u") + codec.query("DROP TABLE v")
              + fastpath + bind("never") + execute("nowhere") + codec.parse("z", "SELECT 1") + SYNC)
    upstream = sent(s.from_client(client), "server")
    refused = codec.parse(SENTINEL, SENTINEL)
    assert upstream == (codec.parse("x", SENTINEL) + refused + refused + refused + bind("never")
                        + execute("nowhere") + codec.parse("z", "SELECT 1") + SYNC)
    s.from_server(codec.error_response("42601", f'syntax error at or near "{SENTINEL}"') + ready())
    assert "z" not in s._statements  # discarded by the server: never made


def test_deallocate_forgets_the_name():
    s = session()
    s.from_client(codec.parse("p", "SELECT 1") + SYNC)
    s.from_server(msg(b"1") + ready())
    s.from_client(codec.query("DEALLOCATE p"))
    s.from_server(complete("DEALLOCATE") + ready())
    out = s.from_client(bind("p") + execute() + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]


# ---- settings: judged with the search_path the server will use ----------------------


def test_a_prepared_statement_is_judged_again_when_search_path_changed():
    """The server re-analyses a prepared statement under the new search_path (PREPARE, Notes)."""
    policy = Policy()
    s = session(policy)
    s.from_client(codec.parse("q", "SELECT secret") + SYNC)
    s.from_server(msg(b"1") + ready())
    s.from_client(codec.query("SET search_path = sales"))
    s.from_server(complete("SET") + ready())
    out = s.from_client(bind("q") + execute() + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]
    assert dict(policy.asked[-1].settings)["search_path"] == "sales"


def test_statements_after_a_set_in_the_same_query_string_are_judged_by_the_policy_as_one():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("SET search_path = sales; SELECT secret"))
    assert len(policy.asked) == 1  # the analysis threads the SET through the string itself


def test_a_pipelined_statement_after_a_set_waits_for_the_server():
    policy = Policy()
    s = session(policy)
    out = s.from_client(codec.query("SET search_path = sales") + codec.query("SELECT secret"))
    assert sent(out, "server") == codec.query("SET search_path = sales") + msg(b"H")  # SELECT waits
    out = s.from_server(complete("SET") + ready())
    assert sent(out, "server") == codec.query(SENTINEL)  # judged under sales, after the server said so


def test_a_set_rolled_back_with_its_transaction_is_undone():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("BEGIN"))
    s.from_server(complete("BEGIN") + ready(b"T"))
    s.from_client(codec.query("SET search_path = sales"))
    s.from_server(complete("SET") + ready(b"T"))
    s.from_client(codec.query("ROLLBACK"))
    s.from_server(complete("ROLLBACK") + ready())
    out = s.from_client(codec.query("SELECT secret"))
    assert sent(out, "server") == codec.query("SELECT secret")
    assert dict(policy.asked[-1].settings)["search_path"] is None


def test_an_error_in_an_implicit_transaction_undoes_its_set():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("SET search_path = sales; SELECT 1/0"))
    s.from_server(complete("SET") + codec.error_response("22012", "division by zero") + ready())
    s.from_client(codec.query("SELECT secret"))
    assert dict(policy.asked[-1].settings)["search_path"] is None


@pytest.mark.parametrize("ending", ["COMMIT", "END"])
def test_commit_of_a_failed_transaction_undoes_its_set(ending):
    """The server answers COMMIT of a failed transaction with ROLLBACK: the SET is gone."""
    policy = Policy()
    s = session(policy)
    for text, reply in (("BEGIN", complete("BEGIN") + ready(b"T")), ("SET search_path = sales", complete("SET") + ready(b"T")),
                        ("SELECT 1/0", codec.error_response("22012", "division by zero") + ready(b"E")),
                        (ending, complete("ROLLBACK") + ready())):
        s.from_client(codec.query(text))
        s.from_server(reply)
    out = s.from_client(codec.query("SELECT secret"))
    assert dict(policy.asked[-1].settings)["search_path"] is None
    assert sent(out, "server") == codec.query("SELECT secret")


def test_set_local_ends_with_the_transaction():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("BEGIN"))
    s.from_server(complete("BEGIN") + ready(b"T"))
    s.from_client(codec.query("SET LOCAL search_path = sales"))
    s.from_server(complete("SET") + ready(b"T"))
    s.from_client(codec.query("SELECT secret"))
    assert dict(policy.asked[-1].settings)["search_path"] == "sales"
    s.from_server(complete("SELECT 0") + ready(b"T"))
    s.from_client(codec.query("COMMIT"))
    s.from_server(complete("COMMIT") + ready())
    s.from_client(codec.query("SELECT 1"))
    assert dict(policy.asked[-1].settings)["search_path"] is None


def test_the_startup_search_path_is_the_default_reset_returns_to():
    policy = Policy()
    start = SessionSettings.start({"search_path": "sales", "client_encoding": "UTF8", "role": None})
    s = session(policy, settings=start)
    s.from_client(codec.query("SELECT secret"))
    assert dict(policy.asked[-1].settings)["search_path"] == "sales"
    assert dict(policy.asked[-1].defaults)["search_path"] == "sales"


def test_the_server_running_more_statements_than_were_judged_closes_the_session():
    s = session()
    s.from_client(codec.query("SELECT 1"))
    out = s.from_server(complete("SELECT 1") + complete("DELETE 5") + ready())
    assert isinstance(out[-1], Close)


# ---- encodings ------------------------------------------------------------------------


def test_statements_are_decoded_in_the_client_encoding():
    policy = Policy()
    start = SessionSettings.start({"client_encoding": "LATIN1"})
    s = session(policy, settings=start)
    s.from_client(b"Q" + INT32.pack(4 + 11) + "SELECT 'é'".encode("latin-1") + b"\0")
    assert policy.asked[-1].text == "SELECT 'é'"


def test_a_switch_of_client_encoding_applies_to_later_statements():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("SET client_encoding = LATIN1"))
    s.from_server(msg(b"S", b"client_encoding\0LATIN1\0") + complete("SET") + ready())
    s.from_client(b"Q" + INT32.pack(4 + 11) + "SELECT 'é'".encode("latin-1") + b"\0")
    assert policy.asked[-1].text == "SELECT 'é'"


def test_the_server_reporting_a_client_only_encoding_closes_the_session():
    s = session()
    s.from_client(codec.query("SELECT 1"))
    out = s.from_server(msg(b"S", b"client_encoding\0SJIS\0") + complete("SELECT 1") + ready())
    assert isinstance(out[-1], Close) and b"SJIS" in sent(out, "client")


def test_the_server_turning_standard_conforming_strings_off_closes_the_session():
    s = session()
    s.from_client(codec.query("SELECT 1"))
    out = s.from_server(msg(b"S", b"standard_conforming_strings\0off\0") + complete("SELECT 1") + ready())
    assert isinstance(out[-1], Close) and b"standard_conforming_strings" in sent(out, "client")


def test_a_client_encoding_the_enforcer_did_not_expect_closes_the_session():
    s = session()
    s.from_client(codec.query("SELECT 1"))
    out = s.from_server(msg(b"S", b"client_encoding\0LATIN1\0") + complete("SELECT 1") + ready())
    assert isinstance(out[-1], Close)


# ---- decisions follow the policy, the identity and the catalog ------------------------


def test_a_prepared_statement_is_judged_again_after_a_policy_reload():
    policy = Policy()
    epoch = ["v1"]
    s = session(policy, epoch=lambda: epoch[0])
    s.from_client(codec.parse("q", "SELECT 7") + SYNC)
    s.from_server(msg(b"1") + ready())
    assert sent(s.from_client(bind("q") + execute() + SYNC), "server") == bind("q") + execute() + SYNC
    s.from_server(msg(b"2") + complete("SELECT 1") + ready())
    asked = len(policy.asked)
    s.from_client(bind("q") + execute() + SYNC)
    s.from_server(msg(b"2") + complete("SELECT 1") + ready())
    assert len(policy.asked) == asked  # nothing changed: the decision is reused
    epoch[0] = "v2"
    policy.deny.add("SELECT 7")
    out = s.from_client(bind("q") + execute() + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]


def test_a_reload_between_bind_and_execute_is_seen_at_execute():
    policy = Policy()
    epoch = ["v1"]
    s = session(policy, epoch=lambda: epoch[0])
    s.from_client(codec.query("BEGIN"))
    s.from_server(complete("BEGIN") + ready(b"T"))
    s.from_client(codec.parse("q", "SELECT 7") + bind("q", "p") + SYNC)
    s.from_server(msg(b"1") + msg(b"2") + ready(b"T"))
    epoch[0] = "v2"
    policy.deny.add("SELECT 7")
    out = s.from_client(execute("p") + SYNC)
    assert parses(sent(out, "server")) == [codec.Parse(SENTINEL, SENTINEL)]


def test_ddl_let_through_makes_the_next_statement_wait_for_a_new_catalog():
    policy = Policy()
    s = session(policy)
    s.from_client(codec.query("CREATE TABLE t (a int)"))
    s.from_server(complete("CREATE TABLE") + ready())
    out = s.from_client(codec.query("SELECT * FROM t"))
    assert out[-1] == RefreshCatalog(after_ddl=True) and sent(out, "server") == b""
    out = s.catalog_read()
    assert sent(out, "server") == codec.query("SELECT * FROM t")


def test_a_name_the_catalog_does_not_hold_has_it_read_again_once():
    """A table made outside the enforcer (a migration) is in the next read of the catalog."""
    known = {"fresh": False}

    def judge(query: SqlQuery) -> Decision:
        if "new_table" in query.text and not known["fresh"]:
            return Decision.deny("catalog-unknown-relation", 'relation "new_table" is not in the catalog')
        return Decision(Verdict.ALLOW, "reads")

    s = ProxySession(judge=Judging(judge), database="app", nonce=NONCE)
    out = s.from_client(codec.query("SELECT * FROM new_table"))
    assert out[-1] == RefreshCatalog(after_ddl=False) and sent(out, "server") == b""
    known["fresh"] = True
    assert sent(s.catalog_read(), "server") == codec.query("SELECT * FROM new_table")
    known["fresh"] = False
    out = s.from_client(codec.query("SELECT * FROM new_table_2"))  # still missing after the read: refused
    assert isinstance(out[-1], RefreshCatalog)
    assert sent(s.catalog_read(), "server") == codec.query(SENTINEL)


@pytest.mark.parametrize("limit_exceeded", [True, False])
def test_what_an_agent_pipelines_during_a_wait_is_bounded(limit_exceeded):
    s = session()
    s.from_client(codec.query("SET search_path = sales") + codec.query("SELECT 1"))
    size = (17 << 20) if limit_exceeded else 1024
    out = s.from_client(msg(b"Q", b"x" * size + b"\0"))
    assert any(isinstance(c, Close) for c in out) is limit_exceeded


# ---- the session with the real policy engine and a catalog, as the daemon runs it --------

CATALOG_POLICY = """
version: 1
agents: {analyst: {}}
resources: {db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}}
rules:
  - {name: read-sales, effect: allow, sql: {kinds: [select], tables: ["sales.*"]}}
  - {name: set-path, effect: allow, sql: {kinds: [set]}}
  - {name: no-activity, effect: deny, sql: {tables: [pg_catalog.pg_stat_activity]}}
  - {name: mask-card, effect: mask, mask: {columns: [sales.customers.card], style: redact}}
"""


def real_session(**kwargs) -> tuple[ProxySession, list[SqlQuery]]:
    from interceptor.operations import Request, Subject
    from interceptor.policy import PolicyEngine, load_policy_text
    from interceptor.policy.catalog import Catalog, Function, Relation

    catalog = Catalog.build([Relation("sales", "customers", columns=("id", "name", "card")),
                             Relation("sales", "orders", columns=("id", "total")),
                             Relation("public", "orders", columns=("id", "total")),
                             Relation("pg_catalog", "pg_stat_activity", kind="v", columns=("pid", "query"))],
                            [Function("sales", "purge", volatility="volatile", language="plpgsql")],
                            default_search_path=("$user", "public"), user="app")
    engine = PolicyEngine(load_policy_text(CATALOG_POLICY, "catalog.yaml"))
    asked: list[SqlQuery] = []

    def judge(query: SqlQuery) -> Decision:
        asked.append(query)
        return engine.decide(Request(Subject("analyst"), "db", query))

    return ProxySession(judge=Judging(judge), database="app", catalog=lambda: catalog, nonce=NONCE, **kwargs), asked


def test_with_the_catalog_star_expands_and_the_masked_column_is_known():
    s, _ = real_session()
    assert sent(s.from_client(codec.query("SELECT * FROM sales.customers")), "server") == \
        codec.query("SELECT * FROM sales.customers")
    [(_, expect)] = [(e.kind, e.statement) for e in s._expect]
    assert expect.decision.masks[0].columns == ("sales.customers.card",)


@pytest.mark.parametrize("text", ["SELECT sales.purge()", "SELECT * FROM sales.purge()",
                                  "SELECT id FROM sales.orders WHERE sales.purge() IS NULL",
                                  "WITH p AS (SELECT sales.purge()) SELECT * FROM p"])
def test_a_user_function_anywhere_is_refused(text):
    s, _ = real_session()
    assert sent(s.from_client(codec.query(text)), "server") == codec.query(SENTINEL)


def test_unqualified_names_resolve_by_the_session_search_path():
    s, asked = real_session()
    assert sent(s.from_client(codec.query("SELECT id FROM orders")), "server") == codec.query(SENTINEL)  # public
    s.from_server(codec.error_response("42601", f'syntax error at or near "{SENTINEL}"') + ready())
    s.from_client(codec.query("SET search_path = sales"))
    s.from_server(complete("SET") + ready())
    assert sent(s.from_client(codec.query("SELECT id FROM orders")), "server") == codec.query("SELECT id FROM orders")
    assert dict(asked[-1].settings)["search_path"] == "sales"


def test_pg_catalog_is_searched_first_so_a_deny_on_it_holds_unqualified():
    s, _ = real_session(settings=SessionSettings.start({"search_path": "sales"}))
    assert sent(s.from_client(codec.query("SELECT query FROM pg_stat_activity")), "server") == codec.query(SENTINEL)
    reply = s.from_server(codec.error_response("42601", f'syntax error at or near "{SENTINEL}"') + ready())
    assert "no-activity" in codec.read_fields(frames(sent(reply, "client"))[0][1])["M"]


HELD_POLICY = """
version: 1
agents: {agent: {unprotected: deny}}
resources: {db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}}
rules:
  - {name: read, effect: allow, sql: {kinds: [select, set], tables: ["public.*"]}}
  - {name: del, effect: approve, sql: {kinds: [delete], tables: ["public.*"]}, approval: {groups: [dba]}}
"""


def held_after_a_setting() -> tuple[ProxySession, Hold]:
    """A DELETE pipelined behind a SET waits for the server's answer, then is held."""
    s = ProxySession(judge=Judging(engine_judge(PolicyEngine(load_policy_text(HELD_POLICY)))), database="app",
                     catalog=lambda: CATALOG, nonce=NONCE)
    s.receive(Side.CLIENT, codec.query("SET search_path TO public") + codec.query("DELETE FROM customers WHERE id = 1"))
    [hold] = [c for c in s.receive(Side.SERVER, msg(b"C", b"SET\0") + codec.ready_for_query(b"I"))
              if isinstance(c, Hold)]
    return s, hold


def test_a_statement_held_when_the_server_answers_holds_the_clients_stream() -> None:
    _, hold = held_after_a_setting()
    assert hold.stream == FRONTEND  # the driver stops reading the client, not the server


def test_bytes_pipelined_behind_a_held_statement_are_bounded() -> None:
    s, _ = held_after_a_setting()
    chunk = codec.query("SELECT 1") * 100_000
    out: list[Command] = []
    for _ in range(14):
        out = s.receive(Side.CLIENT, chunk)
        if out:
            break
    [close] = [c for c in out if isinstance(c, Close)]
    assert "pipelined while the enforcer waits (a statement held for approval)" in close.reason
    [(kind, body)] = frames(sent(out, "client"))
    assert kind == b"E" and codec.read_fields(body)["C"] == "08P01"
