"""Metrics: the Prometheus text format, the registry's counting, the enforcer's callbacks,
and the /metrics server over loopback."""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.server import Enforcer, Snapshot
from interceptor.metrics import (CONTENT_TYPE, BadRequest, Family, Gauges, Metrics, MetricsServer, Sample,
                                 exposition, http_response, parse_listen, parse_request_head, route)
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy import PolicyEngine, load_policy_text

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE},?)*)\}})? "
                    r"(-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|NaN|\+Inf|-Inf)$")
AUDIT = {"queue_depth": 3, "last_write_latency_ms": 1.25, "written": 40, "failed": 2, "failing": None}


def parse(text: str) -> dict[str, tuple[str, dict[tuple, str]]]:
    """A strict reader of the text format: every sample belongs to a family whose HELP and TYPE
    came first; returns {family: (type, {labels: value})}."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, tuple[str, dict[tuple, str]]] = {}
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
            key = tuple((k, v[1:-1]) for k, v in key)
            assert key not in families[name][1], f"duplicate sample {line!r}"
            families[name][1][key] = value
    return families


def test_exposition_escapes_labels_and_help_and_formats_numbers():
    text = exposition([
        Family("x_total", "counter", "a\\b\nc", (Sample((("agent", 'we"ird\\na\nme'),), 3),)),
        Family("y", "gauge", "numbers", (Sample((("k", "int"),), 2.0), Sample((("k", "float"),), 0.5),
                                         Sample((("k", "nan"),), float("nan")), Sample((("k", "inf"),), float("inf")))),
        Family("z", "gauge", "no labels", (Sample((), 7),)),
    ])
    assert "# HELP x_total a\\\\b\\nc\n" in text
    assert 'x_total{agent="we\\"ird\\\\na\\nme"} 3\n' in text
    families = parse(text)
    assert families["y"][1] == {(("k", "int"),): "2", (("k", "float"),): "0.5", (("k", "nan"),): "NaN",
                                (("k", "inf"),): "+Inf"}
    assert families["z"] == ("gauge", {(): "7"})


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
    assert families["interceptor_build_info"][1] == {(("version", "1.2.3"),): "1"}
    assert families["interceptor_connections_total"] == ("counter", {
        (("agent", "bot"), ("resource", "db"), ("decision", "allow")): "2",
        (("agent", ""), ("resource", ""), ("decision", "deny")): "1"})
    assert families["interceptor_decisions_total"][1] == {
        (("verdict", "allow"),): "2", (("verdict", "deny"),): "1", (("verdict", "approve"),): "1"}
    assert families["interceptor_masked_statements_total"][1] == {(): "1"}
    assert families["interceptor_identity_changes_total"][1] == {
        (("agent", "bot"), ("state", "valid")): "1", (("agent", "bot"), ("state", "expired")): "1"}
    assert families["interceptor_sessions"] == ("gauge", {(): "4"})
    assert families["interceptor_approvals_pending"][1] == {(): "1"}
    assert families["interceptor_audit_queue_depth"][1] == {(): "3"}
    assert families["interceptor_audit_write_latency_ms"][1] == {(): "1.25"}
    assert families["interceptor_audit_written_total"] == ("counter", {(): "40"})
    assert families["interceptor_audit_failed_total"][1] == {(): "2"}
    assert families["interceptor_audit_failing"][1] == {(): "0"}


def test_empty_registry_still_declares_every_family():
    families = parse(Metrics().render(Gauges(sessions=0, approvals_pending=0, audit={"failing": "disk full"})))
    assert families["interceptor_connections_total"] == ("counter", {})
    assert families["interceptor_audit_failing"][1] == {(): "1"}
    assert families["interceptor_audit_queue_depth"][1] == {(): "0"}


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
        (("agent", "bot"), ("resource", "db"), ("decision", "deny")): "16000"}


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


def test_enforcer_reports_every_operation_decision():
    metrics = Metrics()
    policy = load_policy_text(POLICY, "metrics.yaml")
    snapshot = Snapshot(policy, PolicyEngine(policy), None)
    required = {"bot": False}
    enforcer = Enforcer(None, None, lambda: snapshot, lambda agent: None, lambda agent: required[agent], None,
                        on_decision=metrics.decision)
    ask = lambda sql: enforcer._decide("bot", Request(Subject("bot", None), "db", SqlQuery(sql, "app")))  # noqa: E731
    assert ask("SELECT card FROM public.t").verdict is Verdict.ALLOW
    assert ask("DELETE FROM public.t").verdict is Verdict.DENY
    required["bot"] = True  # identity lost mid-flow: denied whatever the rules say, and counted
    assert ask("SELECT 1").rule == "identity"
    families = parse(metrics.render(Gauges(0, 0)))
    assert families["interceptor_decisions_total"][1] == {(("verdict", "allow"),): "1", (("verdict", "deny"),): "2"}
    assert families["interceptor_masked_statements_total"][1] == {(): "1"}


def test_request_head_parsing_names_the_problem():
    assert parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n") == ("GET", "/metrics")
    with pytest.raises(BadRequest, match="malformed request line"):
        parse_request_head(b"GET\r\n\r\n")
    with pytest.raises(BadRequest, match="malformed request line"):
        parse_request_head(b"G\xffT / HTTP/1.1\r\n\r\n")
    with pytest.raises(BadRequest, match="unsupported protocol"):
        parse_request_head(b"GET / SPDY/3\r\n\r\n")


def test_routing_and_response_framing():
    assert route("GET", "/metrics") is None and route("HEAD", "/metrics") is None
    assert route("GET", "/").startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert route("POST", "/metrics").startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    response = http_response(200, b"abc", CONTENT_TYPE)
    head, body = response.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 3" in head and b"Connection: close" in head and body == b"abc"
    assert http_response(200, b"abc", head_only=True).endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")


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
            answers["second"] = await exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            answers["head"] = await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            answers["404"] = await exchange(port, b"GET / HTTP/1.1\r\n\r\n")
            answers["405"] = await exchange(port, b"DELETE /metrics HTTP/1.1\r\n\r\n")
            answers["garbage"] = await exchange(port, b"\x16\x03\x01 hello\r\n\r\n")
            answers["oversized"] = await exchange(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 3000 + b"\r\n")
            state["fail"] = True
            answers["failing"] = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        finally:
            await server.stop()
        return answers

    answers = asyncio.run(run())
    head, body = answers["second"].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and f"Content-Type: {CONTENT_TYPE}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head
    families = parse(body.decode())
    assert families["interceptor_sessions"][1] == {(): "1"}
    assert families["interceptor_connections_total"][1] == {
        (("agent", "bot"), ("resource", "db"), ("decision", "allow")): "1"}
    assert parse(answers["first"].split(b"\r\n\r\n", 1)[1].decode())["interceptor_connections_total"][1] == {}
    assert answers["head"].startswith(b"HTTP/1.1 200 OK") and answers["head"].endswith(b"\r\n\r\n")
    assert answers["404"].startswith(b"HTTP/1.1 404 ")
    assert answers["405"].startswith(b"HTTP/1.1 405 ") and b"method DELETE not allowed" in answers["405"]
    assert answers["garbage"].startswith(b"HTTP/1.1 400 ") and b"malformed request line" in answers["garbage"]
    assert answers["oversized"].startswith(b"HTTP/1.1 400 ")
    assert answers["failing"].startswith(b"HTTP/1.1 500 ") and b"approval store unreachable" in answers["failing"]
