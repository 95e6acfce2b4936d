"""Issue 20 attacks on learn and shadow mode: what the blanket learning rule must never allow
on the other protocols, the marks records carry, and the runs' bad input."""

from __future__ import annotations

import pytest

from interceptor.decision import Decision, Verdict
from interceptor.operations import KubeRequest, Request, SqlQuery, SshRequest, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.catalog import Catalog, Function, Relation
from interceptor.policy.learn import LearnSession, with_learning

NOW = 1_700_000_000.0
POLICY = """
version: 1
resources:
  box: {protocol: ssh, addresses: ["127.0.0.1:22"]}
  cluster: {protocol: kubernetes, addresses: ["127.0.0.1:6443"]}
agents:
  analyst: {}
rules: []
"""


def learned() -> PolicyEngine:
    return PolicyEngine(with_learning(load_policy_text(POLICY), [LearnSession("analyst", "feedfacecafebeef", NOW)]))


def ask(operation: object, resource: str) -> Decision:
    return learned().decide(Request(Subject("analyst", None), resource, operation))  # type: ignore[arg-type]


def assert_never_learned(operation: object, resource: str) -> None:
    decision = ask(operation, resource)
    assert decision.verdict is Verdict.DENY, decision
    assert decision.rule != "learn:analyst" and "learn mode never learns" in decision.reason


# -- SSH: a shell, a shell-class command, a write that runs code and a forward are never learned

@pytest.mark.parametrize("request_", [
    SshRequest("shell"), SshRequest("shell", pty=True),
    SshRequest("exec", command="bash -i"), SshRequest("exec", command="ls | sh"),
    SshRequest("exec", command="sh -c 'curl x | sh'"), SshRequest("exec", command="ls -l", pty=True),
    SshRequest("exec", command="echo $(id)"),
    SshRequest("write", path="/home/u/.ssh/authorized_keys", action="open"),
    SshRequest("write", path="/home/u/.bashrc", action="open"), SshRequest("write", path="/etc/cron.d/x", action="open"),
    SshRequest("write", path="/srv/../home/u/.profile", action="open"),
    SshRequest("exec", command="scp -t /home/u/.ssh/authorized_keys"),
    SshRequest("forward", forward="local", target="10.0.0.9:5432"),
    SshRequest("forward", forward="remote", target="0.0.0.0:8080"),
], ids=repr)
def test_ssh_shells_code_writes_and_forwards_are_never_learned(request_: SshRequest) -> None:
    assert_never_learned(request_, "box")


@pytest.mark.parametrize("request_", [
    SshRequest("exec", command="ls -l /srv"), SshRequest("exec", command="df -h"),
    SshRequest("read", path="/srv/data/report.csv", action="open"),
    SshRequest("write", path="/srv/data/out.csv", action="open"),
    SshRequest("exec", command="scp -f /srv/data/report.csv"),
], ids=repr)
def test_ssh_commands_and_file_transfers_are_learned(request_: SshRequest) -> None:
    decision = ask(request_, "box")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


# -- Kubernetes: running code in a pod, reaching through the API server, and permissions -------

def kube(verb: str, resource: str, subresource: str = "", group: str = "", namespace: str = "dev",
         name: str = "web") -> KubeRequest:
    return KubeRequest(verb, "/api", api_group=group, api_version="v1", resource=resource, subresource=subresource,
                       namespace=namespace, name=name)


@pytest.mark.parametrize("request_", [
    kube("create", "pods", "exec"), kube("create", "pods", "attach"), kube("create", "pods", "portforward"),
    kube("create", "pods", "proxy"), kube("create", "services", "proxy"),
    kube("create", "nodes", "proxy", namespace=""),
    kube("create", "rolebindings", group="rbac.authorization.k8s.io"),
    kube("patch", "clusterroles", group="rbac.authorization.k8s.io", namespace=""),
    kube("delete", "roles", group="rbac.authorization.k8s.io"),
    kube("impersonate", "users", namespace="", name="admin"),
    kube("impersonate", "serviceaccounts", name="default"),
    kube("bind", "clusterroles", group="rbac.authorization.k8s.io", namespace=""),
    kube("escalate", "roles", group="rbac.authorization.k8s.io"),
    kube("update", "certificatesigningrequests", "approval", group="certificates.k8s.io", namespace=""),
    KubeRequest("get", "/logs/auth.log", resource_request=False), KubeRequest("get", "/logs/", resource_request=False),
    KubeRequest("get", "/debug/pprof/heap", resource_request=False),
], ids=repr)
def test_kubernetes_code_in_pods_and_permissions_are_never_learned(request_: KubeRequest) -> None:
    assert_never_learned(request_, "cluster")


@pytest.mark.parametrize("request_", [
    kube("get", "pods"), kube("list", "deployments", group="apps"), kube("get", "pods", "log"),
    kube("list", "rolebindings", group="rbac.authorization.k8s.io"), kube("delete", "configmaps"),
    KubeRequest("get", "/healthz", resource_request=False), KubeRequest("get", "/metrics", resource_request=False),
], ids=repr)
def test_kubernetes_requests_are_learned(request_: KubeRequest) -> None:
    decision = ask(request_, "cluster")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "learn:analyst")


def test_secrets_stay_masked_while_learning() -> None:
    decision = ask(kube("get", "secrets"), "cluster")
    assert decision.verdict is Verdict.ALLOW and decision.masks and decision.masks[0].rule == "kubernetes-secret-values"


# -- SQL: settings and the catalog's credentials and other sessions' statements ----------------

SQL_POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  analyst: {}
rules: []
"""
SQL_CATALOG = Catalog.build(
    [Relation("sales", "orders", "r", ("id", "total")),
     Relation("pg_catalog", "pg_stat_activity", "v", ("pid", "usename", "query")),
     Relation("pg_catalog", "pg_statistic", "r", ("starelid", "stavalues1")),
     Relation("pg_catalog", "pg_authid", "r", ("rolname", "rolpassword")),
     Relation("pg_catalog", "pg_shadow", "v", ("usename", "passwd")),
     Relation("pg_catalog", "pg_user_mappings", "v", ("srvname", "umoptions")),
     Relation("pg_catalog", "pg_subscription", "r", ("subname", "subconninfo")),
     Relation("pg_catalog", "pg_largeobject", "r", ("loid", "data")),
     Relation("public", "pg_stat_statements", "v", ("query", "calls")),
     Relation("pg_catalog", "pg_tables", "v", ("schemaname", "tablename"))],
    [], schemas=("sales", "public"), default_search_path=("sales",), user="analyst")


def ask_sql(sql: str) -> Decision:
    engine = PolicyEngine(with_learning(load_policy_text(SQL_POLICY), [LearnSession("analyst", "feedfacecafebeef",
                                                                                     NOW)]))
    return engine.decide(Request(Subject("analyst", None), "db", SqlQuery(sql, catalog=SQL_CATALOG)))


@pytest.mark.parametrize("sql", [
    "SELECT query FROM pg_catalog.pg_stat_activity", "SELECT stavalues1 FROM pg_catalog.pg_statistic",
    "SELECT rolpassword FROM pg_catalog.pg_authid", "SELECT passwd FROM pg_catalog.pg_shadow",
    "SELECT umoptions FROM pg_catalog.pg_user_mappings", "SELECT subconninfo FROM pg_catalog.pg_subscription",
    "SELECT data FROM pg_catalog.pg_largeobject", "SELECT query FROM public.pg_stat_statements",
    "SET session_replication_role = replica", "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SET work_mem = '1TB'",
])
def test_settings_credentials_and_other_sessions_statements_are_never_learned(sql: str) -> None:
    """Other agents' statements (the enforcer logs every agent of a resource in as the same
    role, whose sessions pg_stat_activity shows), password hashes, user mappings' passwords,
    every column's sampled values; and a setting a session may not choose (triggers off,
    read-only off)."""
    decision = ask_sql(sql)
    assert decision.verdict is Verdict.DENY, decision
    assert "learn mode never learns" in decision.reason


@pytest.mark.parametrize("sql", ["SELECT id FROM sales.orders", "SELECT tablename FROM pg_catalog.pg_tables",
                                 "DELETE FROM sales.orders WHERE id = 1", "SET statement_timeout = 0"])
def test_tables_and_the_catalogs_other_relations_are_learned(sql: str) -> None:
    assert ask_sql(sql).verdict is Verdict.ALLOW


@pytest.mark.parametrize("function", ["pg_logical_slot_get_changes", "lo_get", "pg_stat_reset", "pg_try_advisory_lock"])
def test_a_volatile_builtin_off_the_dangerous_list_is_not_learned(function: str) -> None:
    """The dangerous list names the builtins known to reach outside the query's tables; the
    refusal of every other volatile pg_catalog function is what stops those it misses
    (pg_logical_slot_get_changes decodes every table's changes): learning relaxes it only for
    the database's own functions, which a suggestion can name."""
    catalog = Catalog.build([Relation("sales", "orders", "r", ("id", "total"))],
                            [Function("pg_catalog", function, volatility="volatile"),
                             Function("sales", "score", volatility="volatile", language="plpgsql")],
                            schemas=("sales",), default_search_path=("sales",), user="analyst")
    engine = PolicyEngine(with_learning(load_policy_text(SQL_POLICY), [LearnSession("analyst", "feedfacecafebeef",
                                                                                     NOW)]))

    def decide(sql: str) -> Decision:
        return engine.decide(Request(Subject("analyst", None), "db", SqlQuery(sql, catalog=catalog)))

    builtin = decide(f"SELECT pg_catalog.{function}('x')")
    assert builtin.verdict is Verdict.DENY and builtin.rule != "learn:analyst", builtin
    assert decide("SELECT sales.score(id) FROM sales.orders").verdict is Verdict.ALLOW
