"""Issue 20 attacks, second round: across the seams of the learning rule, the runs and what
policy suggest writes from the records."""

from __future__ import annotations

import pytest

import asyncio
from collections.abc import Callable
from pathlib import Path

from test_issue20_attacks_learn import NOW, SQL_POLICY, ask, assert_never_learned, kube
from test_issue20_attacks_suggest import BASE, _learned, _suggest, _verdict
from test_learn_mode import CATALOG, POLICY, ROOT, Runtime, judge

from interceptor.decision import Decision, Verdict
from interceptor.modes import ModeControl
from interceptor.operations import HttpRequest, KubeRequest, Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.catalog import Catalog, Relation
from interceptor.policy.learn import LearnSession, with_learning
from interceptor.policy.shadow import CANDIDATE_ERROR_RULE, ShadowRun
from interceptor.runtime import Modes, Snapshot


def learned_sql(sql: str, catalog: Catalog) -> Decision:
    engine = PolicyEngine(with_learning(load_policy_text(SQL_POLICY), [LearnSession("analyst", "feedfacecafebeef",
                                                                                     NOW)]))
    return engine.decide(Request(Subject("analyst", None), "db", SqlQuery(sql, catalog=catalog)))


# -- a view over what is never learned is not learned either ---------------------------------

VIEWS = Catalog.build(
    [Relation("sales", "orders", "r", ("id", "total")),
     Relation("public", "pg_stat_statements", "v", ("query", "calls")),
     Relation("pg_catalog", "pg_stat_activity", "v", ("pid", "query")),
     Relation("pg_catalog", "pg_stats", "v", ("tablename", "most_common_vals")),
     Relation("public", "slow_queries", "v", ("query", "calls"),
              definition_reads=("public.pg_stat_statements.calls", "public.pg_stat_statements.query")),
     Relation("public", "sessions", "v", ("pid", "query"),
              definition_reads=("pg_catalog.pg_stat_activity.pid", "pg_catalog.pg_stat_activity.query")),
     Relation("public", "busy", "v", ("query",), definition_reads=("public.sessions.query",)),
     Relation("public", "samples", "v", ("vals",), definition_reads=("pg_catalog.pg_stats.most_common_vals",)),
     Relation("public", "order_totals", "v", ("total",), definition_reads=("sales.orders.total",))],
    [], schemas=("public", "sales"), user="analyst")


@pytest.mark.parametrize("sql", [
    "SELECT query FROM public.slow_queries", "SELECT pid, query FROM public.sessions",
    "SELECT query FROM public.busy", "SELECT vals FROM public.samples",
    "SELECT o.id FROM sales.orders o JOIN public.sessions s ON s.pid = o.id",
])
def test_a_view_over_what_is_never_learned_is_not_learned(sql: str) -> None:
    """Other agents' statements (a DBA's `slow_queries` over pg_stat_statements, a `sessions`
    view over pg_stat_activity) or sampled values, read through a view: the learning rule
    allowed them, and the suggestion granted `select public.slow_queries`, a name that looks
    like any table."""
    decision = learned_sql(sql, VIEWS)
    assert decision.verdict is Verdict.DENY and decision.rule != "learn:analyst", decision
    assert "learn mode never learns" in decision.reason


def test_a_view_over_tables_is_learned() -> None:
    decision = learned_sql("SELECT total FROM public.order_totals", VIEWS)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


# -- a run started while a reload takes its agent or resource away ----------------------------

class ReloadingRuntime(Runtime):
    """A runtime whose policy a reload replaces while a run's start waits for its lock
    (Runtime.change_modes runs the change under the lock, after the reload's swap)."""

    def __init__(self, reloaded: str) -> None:
        super().__init__()
        self.reloaded = load_policy_text(reloaded)

    async def change_modes(self, change: Callable[[Modes], Modes]) -> Snapshot:
        if self.snapshot.policy is not self.reloaded:
            await asyncio.sleep(0)
            self.snapshot = Snapshot(self.reloaded, PolicyEngine(self.reloaded), None,  # type: ignore[arg-type]
                                     self.snapshot.modes.within(self.reloaded)[0])
        return await super().change_modes(change)


WITHOUT_DB = POLICY.replace('  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}\n', "")
WITHOUT_ANALYST = POLICY.replace("  analyst: {}\n", "").replace("agents: [analyst]", "agents: [bystander]")


@pytest.mark.parametrize("reloaded, resources", [(WITHOUT_ANALYST, None), (WITHOUT_DB, ["db"])],
                         ids=["agent removed", "resource removed"])
def test_a_run_started_during_a_reload_that_removes_its_agent_or_resource_does_not_start(
        reloaded: str, resources: list[str] | None) -> None:
    """The start checked the agent and the resources against the policy before it waited for
    the reload to finish, then put the run in force under the reloaded policy: a run the
    reload would have ended (its agent or resource gone) stayed running and learning."""
    runtime = ReloadingRuntime(reloaded)
    modes = ModeControl(runtime)  # type: ignore[arg-type]

    async def scenario() -> None:
        with pytest.raises(ValueError, match="unknown"):
            await modes.learn_start(ROOT, "analyst", seconds=60, resources=resources)

    asyncio.run(scenario())
    assert dict(runtime.snapshot.modes.learning) == {} and modes._timers == {} and modes._started == {}
    assert modes.learn_status(ROOT) == {"learning": [], "ended": []}


def test_a_shadow_run_started_during_a_reload_that_removes_its_agent_does_not_start(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICY)
    runtime = ReloadingRuntime(WITHOUT_ANALYST)
    modes = ModeControl(runtime)  # type: ignore[arg-type]

    async def scenario() -> None:
        with pytest.raises(ValueError, match="unknown"):
            await modes.shadow_start(ROOT, "analyst", str(candidate))

    asyncio.run(scenario())
    assert dict(runtime.snapshot.modes.shadows) == {}


# -- Kubernetes: code run in a running pod, a credential issued, every request intercepted ----

@pytest.mark.parametrize("request_", [
    kube("patch", "pods", "ephemeralcontainers"), kube("update", "pods", "ephemeralcontainers"),
    kube("update", "certificatesigningrequests", "status", group="certificates.k8s.io", namespace=""),
    kube("create", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io", namespace=""),
    kube("patch", "validatingwebhookconfigurations", group="admissionregistration.k8s.io", namespace=""),
    kube("delete", "validatingadmissionpolicies", group="admissionregistration.k8s.io", namespace=""),
], ids=repr)
def test_kubernetes_debug_containers_certificates_and_admission_are_never_learned(request_: KubeRequest) -> None:
    """An ephemeral container runs code in a running pod (its service account, its volumes)
    as exec does, a certificate written into a request's status issues a credential, and an
    admission webhook sees (Secrets whole) and rewrites every request it names, and an
    admission policy removed lets in what it refused: all were learned, and suggested as a
    `patch pods/ephemeralcontainers` or `create mutatingwebhookconfigurations` rule."""
    assert_never_learned(request_, "cluster")


@pytest.mark.parametrize("request_", [
    kube("create", "serviceaccounts", "token", name="default"), kube("get", "pods", "ephemeralcontainers"),
    kube("list", "mutatingwebhookconfigurations", group="admissionregistration.k8s.io", namespace="", name=""),
    kube("create", "certificatesigningrequests", group="certificates.k8s.io", namespace="", name=""),
], ids=repr)
def test_kubernetes_reads_of_them_are_learned(request_: KubeRequest) -> None:
    decision = ask(request_, "cluster")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


# -- a candidate too slow to decide is not asked again ---------------------------------------

class CountingEngine(PolicyEngine):
    asked = 0

    def decide(self, request: Request) -> Decision:
        CountingEngine.asked += 1
        return super().decide(request)


def clock(*spans: tuple[float, float]) -> Callable[[], float]:
    """A clock for decisions each taking (enforced, candidate) seconds: the enforced one is
    timed first, then the candidate's."""
    ticks: list[float] = []
    now = 0.0
    for enforced, candidate in spans:
        ticks += [now, now + enforced, now + enforced, now + enforced + candidate]
        now += enforced + candidate
    return iter(ticks).__next__


def shadowed(spans: list[tuple[float, float]], engine: PolicyEngine | None = None) -> tuple[ShadowRun, list[Decision]]:
    run = ShadowRun("analyst", "0123456789abcdef", NOW, "/etc/candidate.yaml",
                    engine or PolicyEngine(load_policy_text(POLICY)), clock=clock(*spans))
    flow_judge = judge(PolicyEngine(load_policy_text(POLICY)), shadow=run)
    return run, [flow_judge.decide(SqlQuery("SELECT id FROM sales.orders", catalog=CATALOG)) for _ in spans]


def test_a_candidate_too_slow_to_decide_is_asked_no_more() -> None:
    """The candidate decides on the event loop every flow shares: 50,000 HTTP rules (an 8 MB
    file, under the 16 MiB a candidate may be; or what policy suggest writes for an agent that
    sent 50,000 paths while learning) took 1.1 s per operation, an ssh glob /**/a/**/b/**/c/**
    52 s for a 2,400-character path; every operation of the shadowed agent stalled every flow."""
    run, (first, second) = shadowed([(0.0001, 5.0), (0.0001, 0.0)], CountingEngine(load_policy_text(POLICY)))
    assert first.shadow is not None and first.shadow.rule == "read-orders"  # decided, slowly
    assert CountingEngine.asked == 1
    assert second.verdict is Verdict.ALLOW and second.shadow is not None
    assert (second.shadow.verdict, second.shadow.rule) == (Verdict.DENY, CANDIDATE_ERROR_RULE)
    assert "5000 ms" in second.shadow.reason and "no longer asked" in second.shadow.reason
    assert run.summary()["too_slow_ms"] == 5000.0


@pytest.mark.parametrize("spans", [[(0.0001, 0.001)] * 3, [(0.3, 0.5)] * 3], ids=["quick", "a long statement"])
def test_a_candidate_as_quick_as_the_policy_is_always_asked(spans: list[tuple[float, float]]) -> None:
    """A long statement's analysis takes both policies a while (an 11 kB query 130 ms)."""
    run, decided = shadowed(spans)
    assert all(d.shadow is not None and d.shadow.rule == "read-orders" for d in decided)
    assert run.summary()["too_slow_ms"] is None


# -- policy suggest: a request without a Host is no request to every host ----------------------

def test_a_request_without_a_host_is_listed_not_granted_on_every_host(tmp_path: Path) -> None:
    """A request that named no host (HTTP/1.0 without Host, behind agent-facing TLS whose SNI
    picked the upstream's Host) was suggested as a rule naming no hosts: the same path on
    every host the resource serves (admin.example.com too), where the agent reached one."""
    events = _learned(BASE, "a", [("api", HttpRequest("GET", "/v1/users")),
                                  ("api", HttpRequest("GET", "/v1/reports", host="api.example.com"))])
    result, out = _suggest(tmp_path, BASE, events, "--effect", "allow")
    assert result.exit_code == 0, result.output
    assert _verdict(out, "a", "api", HttpRequest("GET", "/v1/users", host="admin.example.com")) == "deny"
    assert _verdict(out, "a", "api", HttpRequest("GET", "/v1/users", host="api.example.com")) == "deny"
    assert _verdict(out, "a", "api", HttpRequest("GET", "/v1/reports", host="api.example.com")) == "allow"
    assert "GET /v1/users" in out.read_text() and "no Host" in out.read_text()
