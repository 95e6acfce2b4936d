"""Issue 20 attacks, second round: across the seams of the learning rule, the runs and what
policy suggest writes from the records."""

from __future__ import annotations

import pytest

from test_issue20_attacks_learn import NOW, SQL_POLICY

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.catalog import Catalog, Relation
from interceptor.policy.learn import LearnSession, with_learning


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
