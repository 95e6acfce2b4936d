"""Metrics: what the registry counts, the Prometheus text format prometheus_client renders from
it (read back by a strict parser), the enforcer's callbacks, and the /metrics server over loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading

import pytest

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.metrics import CONTENT_TYPE, Gauges, Metrics, MetricsServer, parse_listen
from interceptor.operations import SqlQuery
from interceptor.policy import PolicyEngine, load_policy_text

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE},?)*)\}})? "
                    r"(-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|NaN|\+Inf|-Inf)$")
AUDIT = {"queue_depth": 3, "last_write_latency_ms": 1.25, "written": 40, "failed": 2, "failing": None}


def parse(text: str) -> dict[str, tuple[str, dict[tuple, float]]]:
    """A strict reader of the text format: every sample belongs to a family whose HELP and TYPE
    came first; returns {family: (type, {sorted labels: value})}."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, tuple[str, dict[tuple, float]]] = {}
    helped = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.fullmatch(NAME, name) and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in families and kind in ("counter", "gauge"), line
            families[name] = (kind, {})
        else:
            match = SAMPLE.match(line)
            assert match, f"not a valid sample line: {line!r}"
            name, labels, value = match.groups()
            assert name in families, f"sample {name} before its TYPE"
            key = tuple(re.findall(rf'([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})', labels or ""))
            key = tuple(sorted((k, v[1:-1]) for k, v in key))
            assert key not in families[name][1], f"duplicate sample {line!r}"
            families[name][1][key] = float(value)
    return families


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.connection('we"ird\\na\nme', "db", "deny")
    text = metrics.render(Gauges(0, 0))
    assert 'agent="we\\"ird\\\\na\\nme"' in text
    assert parse(text)["interceptor_connections_total"][1] == {
        (("agent", 'we\\"ird\\\\na\\nme'), ("decision", "deny"), ("resource", "db")): 1}


def test_registry_counts_connections_decisions_masks_and_identity_changes():
    metrics = Metrics("1.2.3")
    metrics.connection("bot", "db", "allow")
    metrics.connection("bot", "db", "allow")
    metrics.connection(None, None, "deny")
    metrics.decision(Decision(Verdict.ALLOW, "read"))
    metrics.decision(Decision(Verdict.ALLOW, "read", masks=(MaskSpec(columns=("public.t.card",)),)))
    metrics.decision(Decision.deny("default-deny", "no rule"))
    metrics.decision(Decision(Verdict.APPROVE, "ops"))
    metrics.identity_change("bot", "valid")
    metrics.identity_change("bot", "expired")
    families = parse(metrics.render(Gauges(sessions=4, approvals_pending=1, audit=AUDIT)))
    assert families["interceptor_build_info"][1] == {(("version", "1.2.3"),): 1}
    assert families["interceptor_connections_total"] == ("counter", {
        (("agent", "bot"), ("decision", "allow"), ("resource", "db")): 2,
        (("agent", ""), ("decision", "deny"), ("resource", "")): 1})
    assert families["interceptor_decisions_total"][1] == {
        (("verdict", "allow"),): 2, (("verdict", "deny"),): 1, (("verdict", "approve"),): 1}
    assert families["interceptor_masked_statements_total"][1] == {(): 1}
    assert families["interceptor_identity_changes_total"][1] == {
        (("agent", "bot"), ("state", "valid")): 1, (("agent", "bot"), ("state", "expired")): 1}
    assert families["interceptor_sessions"] == ("gauge", {(): 4})
    assert families["interceptor_approvals_pending"][1] == {(): 1}
    assert families["interceptor_audit_queue_depth"][1] == {(): 3}
    assert families["interceptor_audit_write_latency_ms"][1] == {(): 1.25}
    assert families["interceptor_audit_written_total"] == ("counter", {(): 40})
    assert families["interceptor_audit_failed_total"][1] == {(): 2}
    assert families["interceptor_audit_failing"][1] == {(): 0}
    assert not any(name.endswith("_created") for name in families), "no _created series"


def test_empty_registry_still_declares_every_family():
    families = parse(Metrics().render(Gauges(sessions=0, approvals_pending=0, audit={"failing": "disk full"})))
    assert families["interceptor_connections_total"] == ("counter", {})
    assert families["interceptor_audit_failing"][1] == {(): 1}
    assert families["interceptor_audit_queue_depth"][1] == {(): 0}


def test_counting_from_many_threads_loses_nothing():
    metrics = Metrics()

    def count() -> None:
        for _ in range(2000):
            metrics.connection("bot", "db", "deny")

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    families = parse(metrics.render(Gauges(0, 0)))
    assert families["interceptor_connections_total"][1] == {
        (("agent", "bot"), ("decision", "deny"), ("resource", "db")): 16000}


POLICY = """
version: 1
resources:
  db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}
agents:
  bot: {}
rules:
  - {name: db-read, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select]}}
  - {name: db-mask, effect: mask, agents: [bot], resources: [db], mask: {columns: [public.t.card]}}
"""


def test_every_operation_decision_is_counted():
    metrics = Metrics()
    policy = load_policy_text(POLICY, "metrics.yaml")
    engine = PolicyEngine(policy)
    required = {"bot": False}
    flow = FlowContext("f1", "bot", ProcessInfo(1, 1, 0, 0, "/usr/bin/agent", ("agent",), "/agents/bot"),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 5432),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 40000), "db")
    judge = FlowJudge(flow, lambda: engine, lambda: None, lambda: required["bot"], metrics.decision,
                      identity_reason=lambda: "identity invalid: wrong_audience: aud is api://a, expected api://b")
    ask = lambda sql: judge.decide(SqlQuery(sql, "app"))  # noqa: E731
    assert ask("SELECT card FROM public.t").verdict is Verdict.ALLOW
    assert ask("DELETE FROM public.t").verdict is Verdict.DENY
    required["bot"] = True  # identity lost mid-flow: denied whatever the rules say, and counted
    denied = ask("SELECT 1")
    assert (denied.rule, denied.reason) == ("identity", "agent has no valid identity: identity invalid: wrong_audience: "
                                                        "aud is api://a, expected api://b")
    families = parse(metrics.render(Gauges(0, 0)))
    assert families["interceptor_decisions_total"][1] == {(("verdict", "allow"),): 1, (("verdict", "deny"),): 2}
    assert families["interceptor_masked_statements_total"][1] == {(): 1}


@pytest.mark.parametrize("listen, expected", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
                                              ("localhost:1", ("localhost", 1)), ("0.0.0.0:65535", ("0.0.0.0", 65535))])
def test_listen_addresses(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "host:http", "[]:1"])
def test_bad_listen_addresses_are_refused_with_the_value(listen):
    with pytest.raises(ValueError, match=re.escape(f"metrics_listen {listen!r}: expected HOST:PORT")):
        parse_listen(listen)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await reader.read()
    writer.close()
    return response


def status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    assert match, response[:80]
    return int(match.group(1))


def test_server_serves_metrics_and_refuses_everything_else():
    metrics = Metrics("9")
    state = {"sessions": 0, "fail": False}

    async def collect() -> Gauges:
        if state["fail"]:
            raise RuntimeError("approval store unreachable")
        return Gauges(state["sessions"], 0, AUDIT)

    async def run() -> dict[str, bytes]:
        port = free_port()
        server = MetricsServer(f"127.0.0.1:{port}", metrics, collect)
        await server.start()
        try:
            assert server.addresses == [("127.0.0.1", port)]
            answers = {"first": await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")}
            metrics.connection("bot", "db", "allow")
            state["sessions"] = 1
            answers["second"] = await exchange(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            answers["404"] = await exchange(port, b"GET / HTTP/1.1\r\n\r\n")
            answers["405"] = await exchange(port, b"DELETE /metrics HTTP/1.1\r\n\r\n")
            answers["garbage"] = await exchange(port, b"\x16\x03\x01 hello\r\n\r\n")
            answers["oversized"] = await exchange(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 3000 + b"\r\n")
            state["fail"] = True
            answers["failing"] = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        finally:
            await server.stop()
        with pytest.raises(OSError):
            await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        return answers

    answers = asyncio.run(run())
    head, body = answers["second"].split(b"\r\n\r\n", 1)
    assert status(answers["second"]) == 200 and f"Content-Type: {CONTENT_TYPE}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head
    families = parse(body.decode())
    assert families["interceptor_sessions"][1] == {(): 1}
    assert families["interceptor_connections_total"][1] == {
        (("agent", "bot"), ("decision", "allow"), ("resource", "db")): 1}
    assert parse(answers["first"].split(b"\r\n\r\n", 1)[1].decode())["interceptor_connections_total"][1] == {}
    assert status(answers["404"]) == 404 and answers["404"].endswith(b"only /metrics is served here\n")
    assert status(answers["405"]) == 405 and b"DELETE" in answers["405"]
    assert b"Error code: 400" in answers["garbage"]  # no status line: http.server answers it as HTTP/0.9
    assert status(answers["oversized"]) == 431
    assert status(answers["failing"]) == 500 and b"approval store unreachable" in answers["failing"]


def answer_of_a_lone_server(collect, request: bytes) -> bytes:
    """What a fresh server answers one client that sends `request` (possibly nothing)."""

    async def run() -> bytes:
        port = free_port()
        server = MetricsServer(f"127.0.0.1:{port}", Metrics(), collect)
        await server.start()
        try:
            return await asyncio.wait_for(exchange(port, request), 5)
        finally:
            await server.stop()

    return asyncio.run(run())


def test_a_client_that_sends_nothing_is_dropped(monkeypatch):
    monkeypatch.setattr("interceptor.metrics._QuietHandler.timeout", 0.2)

    async def collect() -> Gauges:
        return Gauges(0, 0)

    assert answer_of_a_lone_server(collect, b"") == b""


def test_a_scrape_that_gets_no_state_in_time_fails(monkeypatch):
    monkeypatch.setattr("interceptor.metrics.COLLECT_TIMEOUT_S", 0.2)

    async def collect() -> Gauges:
        await asyncio.sleep(5)
        return Gauges(0, 0)

    answer = answer_of_a_lone_server(collect, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status(answer) == 500 and b"no answer within 0.2 s" in answer
