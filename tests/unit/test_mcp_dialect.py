"""The mcp Dialect (interceptor.handlers.http.mcp): what a POSTed message is (strict JSON, one
JSON-RPC 2.0 message, no batches), refusals as MCP clients read them, tools/list answers
filtered and results masked in JSON and event-stream answers, arguments scrubbed for audit,
request ids in flight across the connections of one MCP session."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import JSONRPCError, TextContent, jsonrpc_message_adapter
from test_approvals_support import ListSink

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.errors import ClientProtocolError, MaskingError, Refused
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.commands import Send, Side
from interceptor.handlers.http.dialect import BodyFilter, RequestHead, ResponseHead
from interceptor.handlers.http.session import HttpSession
from interceptor.handlers.http.mcp import (
    BODY_LIMIT, DENIED_CODE, HANDLER, INVALID_REQUEST, PARSE_ERROR, InFlight, McpDialect,
)
from interceptor.operations import HttpRequest, McpCall
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.model import AddressSpec, ResourceSpec

POLICY = """
version: 1
resources:
  tools: {protocol: mcp, addresses: ["127.0.0.1:8000"]}
agents:
  claude: {uids: [1001]}
rules:
  - {name: search, effect: allow, resources: [tools], mcp: {tools: ["search_*"]}}
  - {name: read-public, effect: allow, resources: [tools], mcp: {tools: [read_file], arguments: {path: ["/srv/*"]}}}
  - {name: no-delete, effect: deny, resources: [tools], mcp: {tools: [delete_file]}}
"""
JSON = (("content-type", "application/json"),)
SSE = (("content-type", "text/event-stream"),)
TOOLS = [{"name": n, "inputSchema": {"type": "object"}}
         for n in ("search_web", "read_file", "delete_file", "Delete_File", "list_dir", "search\u200b_x")]
SHOWN = ["search_web", "read_file"]
CARD = "4111 1111 1111 1111"


class Sink(ListSink):
    """The audit records of the flows, in memory; no session bytes are captured."""

    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        raise AssertionError("no session bytes are captured")


@pytest.fixture
def dialect(request: pytest.FixtureRequest) -> McpDialect:
    engine = PolicyEngine(load_policy_text(POLICY, "mcp.yaml"))
    process = ProcessInfo(os.getpid(), 1, 0, 0, "/usr/bin/agent", ("agent",), "/agents/claude")
    loopback = ipaddress.ip_address("127.0.0.1")
    flow = FlowContext("flow-1", "claude", process, Endpoint(loopback, 8000), Endpoint(loopback, 40000), "tools")

    async def credentials() -> dict[str, str]:
        return {}

    resource = ResourceSpec("tools", "mcp", (AddressSpec(ipaddress.ip_network("127.0.0.1/32"), None, 8000),),
                            options=getattr(request, "param", {}))
    return McpDialect(Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False), audit=Sink(),
                               resource=resource, credentials=credentials), InFlight())


def head(method: str = "POST", headers: tuple[tuple[str, str], ...] = JSON, target: str = "/mcp") -> RequestHead:
    return RequestHead(method, target, target.partition("?")[0], (), headers, "127.0.0.1:8000")


def post(dialect: McpDialect, body: bytes | dict[str, Any] | list[Any],
         headers: tuple[tuple[str, str], ...] = JSON) -> McpCall:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    call = dialect.operation(head(headers=headers), raw)
    assert isinstance(call, McpCall)
    return call


def request(method: str, params: dict[str, Any] | None = None, id: int | str = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def test_messages_and_their_calls(dialect: McpDialect) -> None:
    call = post(dialect, request("tools/call", {"name": "read_file", "arguments": {"z": 1, "path": "/srv/a"}}))
    assert call == McpCall("tools/call", "read_file", '{"path":"/srv/a","z":1}')
    assert post(dialect, request("tools/call", {"name": "x"})) == McpCall("tools/call", "x", "{}")
    assert post(dialect, {"jsonrpc": "2.0", "method": "notifications/initialized"}) == \
        McpCall("notifications/initialized")
    assert post(dialect, request("tools/list", id="a")) == McpCall("tools/list")
    assert post(dialect, {"jsonrpc": "2.0", "id": 3, "result": {}}) == McpCall("rpc.response")
    assert post(dialect, {"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "no"}}) == McpCall("rpc.response")
    assert dialect.operation(head("GET", ()), b"") == McpCall("rpc.listen")
    assert dialect.operation(head("DELETE", ()), b"") == McpCall("rpc.terminate")
    assert post(dialect, orjson.dumps(request("ping")), (("content-type", "Application/JSON; charset=UTF-8"),)) == \
        McpCall("ping")
    assert dialect.body_limit(head()) == BODY_LIMIT and dialect.body_limit(head("GET")) == 0


@pytest.mark.parametrize("body", [
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "name": "delete_file"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": {"p": 1, "p": 2}}}',
    b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]',
    b'[]',
    b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}',
    b'{"id": 1, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "extra": 1}',
    b'{"jsonrpc": "2.0", "id": null, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": true, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "rpc.response"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": ""}',
    b'{"jsonrpc": "2.0", "id": 1, "method": 5}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "Tools/Call", "params": {"name": "delete_file"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call ", "params": {"name": "delete_file"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}}',
    b'{"jsonrpc": "2.0", "id": 1}',
    b'{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}',
    b'{"jsonrpc": "2.0", "result": {}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": null}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": [1]}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": {"n": NaN}}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": {"n": 1e400}}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a", "arguments": {"n": 1' + b"0" * 20
    + b'}}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "\\ud800", "arguments": {}}}',
    b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": 1, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "pi\xffng"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "ping"} x',
    b'',
    b'[' * 100000,
])
def test_what_the_server_could_read_otherwise_is_refused(dialect: McpDialect, body: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        post(dialect, body)


@pytest.mark.parametrize("headers", [(), (("content-type", "text/plain"),),
                                     (("content-type", "application/json; charset=latin-1"),),
                                     (*JSON, ("content-encoding", "gzip"))])
def test_content_type_and_coding(dialect: McpDialect, headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ClientProtocolError):
        post(dialect, request("ping"), headers)


@pytest.mark.parametrize("target", ["/", "/admin/delete", "/mcp/", "/MCP", "/mcp?x=1", "/mcp?"])
def test_only_the_endpoint_is_reached(dialect: McpDialect, target: str) -> None:
    with pytest.raises(Refused, match="the MCP endpoint of this resource is /mcp"):
        dialect.operation(head(target=target), orjson.dumps(request("ping")))
    with pytest.raises(Refused):
        dialect.operation(head("GET", (), target), b"")


@pytest.mark.parametrize("dialect", [{"endpoint": "/v1/tools"}], indirect=True)
def test_the_endpoint_option(dialect: McpDialect) -> None:
    assert dialect.operation(head("GET", (), "/v1/tools"), b"") == McpCall("rpc.listen")
    with pytest.raises(Refused):
        dialect.operation(head("GET", (), "/mcp"), b"")


@pytest.mark.parametrize(("method", "headers"), [
    ("GET", (("upgrade", "websocket"), ("connection", "upgrade"))), ("POST", (*JSON, ("upgrade", "h2c"))),
    ("GET", (("content-length", "5"),)), ("DELETE", (("transfer-encoding", "chunked"),)),
])
def test_no_upgrades_and_no_bodies_on_get_or_delete(dialect: McpDialect, method: str,
                                                    headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ClientProtocolError):
        dialect.operation(head(method, headers), orjson.dumps(request("ping")) if method == "POST" else b"")


def test_other_http_methods_refused(dialect: McpDialect) -> None:
    with pytest.raises(ClientProtocolError, match="POST, GET and DELETE"):
        dialect.operation(head("PUT"), b"{}")


def test_the_request_asks_for_uncoded_answers(dialect: McpDialect) -> None:
    headers = dialect.request_headers(head(headers=(*JSON, ("accept-encoding", "gzip, br"))), McpCall("ping"))
    assert [v for k, v in headers if k == "accept-encoding"] == ["identity"]


def test_a_denied_request_is_a_jsonrpc_error_with_its_id(dialect: McpDialect) -> None:
    body = orjson.dumps(request("tools/call", {"name": "delete_file"}, id="req-7"))
    message = "permission denied by interceptor rule 'no-delete': deny by rule no-delete"
    reply = dialect.refusal(head(), body, 403, message, "no-delete")
    assert reply.status == 200 and dict(reply.headers)["content-type"] == "application/json"
    error = JSONRPCError.model_validate_json(reply.body)
    assert error.id == "req-7" and error.error.code == DENIED_CODE and error.error.message == message
    assert error.error.data == {"rule": "no-delete"}
    assert isinstance(jsonrpc_message_adapter.validate_json(reply.body), JSONRPCError)


def test_a_denied_notification_keeps_its_status(dialect: McpDialect) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    reply = dialect.refusal(head(), body, 403, "denied", "r")
    assert reply.status == 403
    error = JSONRPCError.model_validate_json(reply.body)
    assert error.id is None and error.error.code == DENIED_CODE


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"not json", 400, PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "a", "method": "b"}', 400, PARSE_ERROR),  # duplicate: id not trusted
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', 400, INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}', 413, INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 9, "method": "tools/call"}', 502, -32603),
])
def test_other_refusals(dialect: McpDialect, body: bytes, status: int, code: int) -> None:
    reply = dialect.refusal(head(), body, status, "why", None)
    assert reply.status == status
    error = JSONRPCError.model_validate_json(reply.body)
    assert error.error.code == code and error.error.message == "why"
    assert error.id == (9 if status == 502 else None)


def result(value: dict[str, Any], id: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": value}


def run(body_filter: BodyFilter, chunks: list[bytes]) -> bytes:
    return b"".join(body_filter.feed(chunk) for chunk in chunks) + body_filter.end()


def allowed(masks: tuple[MaskSpec, ...] = ()) -> Decision:
    return Decision(Verdict.ALLOW, "r", masks=masks)


def listing_filter(dialect: McpDialect, headers: tuple[tuple[str, str], ...]) -> BodyFilter:
    body_filter = dialect.response_filter(head(), McpCall("tools/list"), allowed(), ResponseHead(200, headers))
    assert body_filter is not None
    return body_filter


def test_tools_list_filtered_in_json(dialect: McpDialect) -> None:
    body_filter = listing_filter(dialect, JSON)
    out = orjson.loads(run(body_filter, [orjson.dumps(result({"tools": TOOLS, "nextCursor": "c"}))]))
    assert [t["name"] for t in out["result"]["tools"]] == SHOWN and out["result"]["nextCursor"] == "c"
    assert body_filter.masked == len(TOOLS) - len(SHOWN)


def test_tools_list_filtered_in_an_event_stream_split_anywhere(dialect: McpDialect) -> None:
    stream = (b": ping\r\n\r\nid: p1\r\ndata: \r\n\r\n"
              b"event: message\r\nid: e2\r\ndata: " + orjson.dumps(result({"tools": TOOLS})) + b"\r\n\r\n")
    for cut in range(0, len(stream) + 1, 7):
        out = run(listing_filter(dialect, SSE), [stream[:cut], stream[cut:]])
        kept, _, event = out.partition(b"event: message\nid: e2\ndata: ")
        assert kept == b": ping\n\nid: p1\ndata\n\n"  # the comment, its blank line, the priming event
        assert event.endswith(b"\n\n") and event.count(b"\n") == 2
        message = orjson.loads(event)
        assert [t["name"] for t in message["result"]["tools"]] == SHOWN


def test_no_filter_without_masks_or_listing_or_a_body(dialect: McpDialect) -> None:
    call = McpCall("tools/call", "search_web")
    assert dialect.response_filter(head(), call, allowed(), ResponseHead(200, SSE)) is None
    accepted = ResponseHead(202, (("content-length", "0"),))
    assert dialect.response_filter(head(), call, allowed((MaskSpec(rule="m"),)), accepted) is None


def test_masks_on_results(dialect: McpDialect) -> None:
    masks = (MaskSpec(classifiers=("card",), rule="cards"),
             MaskSpec(rule="secret-field", paths=("structuredContent.secret",)))
    body_filter = dialect.response_filter(head(), McpCall("tools/call", "search_web"), allowed(masks),
                                          ResponseHead(200, JSON))
    assert body_filter is not None
    answer = result({"content": [{"type": "text", "text": f"card {CARD} on file"}],
                     "structuredContent": {"secret": "s3cr3t", "card": CARD, "n": 4}})
    out = orjson.loads(run(body_filter, [orjson.dumps(answer)]))["result"]
    assert CARD not in orjson.dumps(out).decode() and "s3cr3t" not in orjson.dumps(out).decode()
    assert out["content"][0]["text"] == "card **** on file" and out["structuredContent"]["n"] == 4
    assert body_filter.masked == 3


def test_masks_in_an_event_stream_cover_notifications(dialect: McpDialect) -> None:
    masks = (MaskSpec(classifiers=("card",), rule="cards"), MaskSpec(rule="only-results", paths=("content",)))
    body_filter = dialect.response_filter(head(), McpCall("tools/call", "search_web"), allowed(masks),
                                          ResponseHead(200, SSE))
    assert body_filter is not None
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": f"saw {CARD}"}}
    stream = b"".join(b"data: " + orjson.dumps(m) + b"\n\n" for m in (log, result({"content": ["x"]})))
    out = run(body_filter, [stream[i:i + 5] for i in range(0, len(stream), 5)])
    messages = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert messages[0]["params"] == {"level": "info", "data": "saw ****"}  # masks without paths only
    assert messages[1]["result"] == {"content": ["****"]}


def test_the_listen_stream_refuses_replayed_responses(dialect: McpDialect) -> None:
    body_filter = dialect.response_filter(head("GET"), McpCall("rpc.listen"), allowed(), ResponseHead(200, SSE))
    assert body_filter is not None
    ping = orjson.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping"})
    assert body_filter.feed(b"data: " + ping + b"\n\n") == b"data: " + ping + b"\n\n"
    with pytest.raises(MaskingError, match="GET stream"):
        body_filter.feed(b"data: " + orjson.dumps(result({"tools": TOOLS})) + b"\n\n")


@pytest.mark.parametrize(("headers", "status"), [
    ((*JSON, ("content-encoding", "gzip")), 200), ((("content-type", "text/html"),), 200), ((), 200),
])
def test_unfilterable_answers(dialect: McpDialect, headers: tuple[tuple[str, str], ...], status: int) -> None:
    with pytest.raises(MaskingError):
        dialect.response_filter(head(), McpCall("tools/list"), allowed(), ResponseHead(status, headers))


def test_an_error_status_in_another_type_is_relayed_when_nothing_is_masked(dialect: McpDialect) -> None:
    text = (("content-type", "text/plain"),)
    assert dialect.response_filter(head("GET"), McpCall("rpc.listen"), allowed(), ResponseHead(405, text)) is None
    with pytest.raises(MaskingError):
        dialect.response_filter(head(), McpCall("tools/call", "x"), allowed((MaskSpec(rule="m"),)),
                                ResponseHead(500, text))


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"data"])
def test_answers_that_are_not_messages(dialect: McpDialect, body: bytes) -> None:
    with pytest.raises(MaskingError):
        run(listing_filter(dialect, JSON), [body])
    with pytest.raises(MaskingError):
        run(listing_filter(dialect, SSE), [b"data: " + body + b"\n\n"])


def test_arguments_scrubbed_for_audit(dialect: McpDialect) -> None:
    token = "ghp_" + "a1B2" * 9
    call = McpCall("tools/call", "login", orjson.dumps({"password": "hunter2", "note": f"use {token}", "n": 1},
                                                         option=orjson.OPT_SORT_KEYS).decode())
    summary = dialect.audit_operation(call)
    arguments = orjson.loads(str(summary["arguments"]))
    assert arguments == {"n": 1, "note": "use [REDACTED]", "password": "[REDACTED]"}
    assert summary["tool"] == "login" and summary["method"] == "tools/call"
    assert dialect.audit_operation(McpCall("ping")) == {"kind": "mcp", "method": "ping"}


def test_only_mcp_calls(dialect: McpDialect) -> None:
    with pytest.raises(TypeError):
        dialect.response_filter(head(), HttpRequest("GET", "/"), allowed(), ResponseHead(200, JSON))


# ---- the mcp client through the handler, on loopback ------------------------------------------

E2E_POLICY = """
version: 1
resources:
  tools: {protocol: mcp, addresses: ["127.0.0.1:PORT"]}
agents:
  claude: {uids: [1001]}
rules:
  - {name: search, effect: allow, resources: [tools], mcp: {tools: [search_docs, get_customer]}}
  - {name: read-docs, effect: allow, resources: [tools], mcp: {tools: [read_file], arguments: {path: ["/srv/docs/*"]}}}
  - {name: no-delete, effect: deny, resources: [tools], mcp: {tools: [delete_file]}}
  - {name: mask-customers, effect: mask, resources: [tools], mcp: {tools: [get_customer]},
     mask: {classifiers: [card, email], style: partial}}
"""


@pytest.fixture(params=["sse", "json"])
def tool_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """tests/mcp_server.py answering with event streams or JSON: its port and its calls log."""
    calls = tmp_path / "calls.jsonl"
    argv = [sys.executable, str(Path(__file__).parents[1] / "mcp_server.py"), "--port", "0", "--calls", str(calls)]
    server = subprocess.Popen(argv + (["--json-response"] if request.param == "json" else []),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline().split()[1]), calls
    finally:
        server.terminate()
        server.wait(10)


async def through_the_enforcer(port: int, session_work: Callable[[ClientSession], Awaitable[None]]) -> Sink:
    """Serve every connection the mcp client opens with the mcp HANDLER, the flow's original
    destination being the tool server; run `session_work` on an initialized client session."""
    engine = PolicyEngine(load_policy_text(E2E_POLICY.replace("PORT", str(port)), "e2e.yaml"))
    sink = Sink()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    flows: list[asyncio.Task[None]] = []

    async def credentials() -> dict[str, str]:
        return {}

    async def accept() -> None:
        loopback = ipaddress.ip_address("127.0.0.1")
        while True:
            conn, peer = await asyncio.get_running_loop().sock_accept(listener)
            process = ProcessInfo(os.getpid(), 1, 1001, 1001, "/usr/bin/agent", ("agent",), "/agents/claude")
            flow = FlowContext(f"flow-{len(flows)}", "claude", process, Endpoint(loopback, port),
                               Endpoint(loopback, peer[1]), "tools", connection_rule="search")
            services = Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False), audit=sink,
                                resource=engine.policy.resources["tools"], credentials=credentials)
            flows.append(asyncio.create_task(HANDLER.serve(flow, conn, services)))

    acceptor = asyncio.create_task(accept())
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session_work(session)
    finally:
        acceptor.cancel()
        listener.close()
        await asyncio.wait(flows, timeout=5)
        for flow_task in flows:
            flow_task.cancel()
    return sink


def test_the_mcp_client_through_the_enforcer(tool_server: tuple[int, Path]) -> None:
    port, calls = tool_server
    seen: dict[str, Any] = {}

    async def work(session: ClientSession) -> None:
        seen["tools"] = [tool.name for tool in (await session.list_tools()).tools]
        seen["search"] = (await session.call_tool("search_docs", {"query": "install"})).content[0]
        seen["customer"] = (await session.call_tool("get_customer", {"id": "42"})).content[0]
        for tool, arguments in (("delete_file", {"path": "/srv/docs/readme.txt"}),
                                ("read_file", {"path": "/srv/docs/../docs/readme.txt"})):
            with pytest.raises(MCPError) as denied:
                await session.call_tool(tool, arguments)
            seen[tool] = denied.value.error

    sink = asyncio.run(asyncio.wait_for(through_the_enforcer(port, work), 60))
    assert seen["tools"] == ["search_docs", "read_file", "get_customer"]  # delete_file is not listed
    assert isinstance(seen["search"], TextContent) and "make setup" in seen["search"].text
    assert isinstance(seen["customer"], TextContent)
    assert seen["customer"].text == "Customer 42: Ada Lovelace, email a***@example.com, card **** **** **** 1111"
    assert seen["delete_file"].code == DENIED_CODE and seen["delete_file"].data == {"rule": "no-delete"}
    assert "permission denied by interceptor rule 'no-delete'" in seen["delete_file"].message
    assert "no rule allows tool read_file with these arguments" in seen["read_file"].message
    assert [json.loads(line)["tool"] for line in calls.read_text().splitlines()] == ["search_docs", "get_customer"]
    requests = [event for event in sink.events if event.kind == "request"]
    assert {(e.decision, e.rule) for e in requests if (e.operation or {}).get("tool") == "delete_file"} == \
        {("deny", "no-delete")}


# ---- request ids in flight across the connections of one MCP session ------------------------

SESSION = (*JSON, ("mcp-session-id", "S1"))


def pair(dialect: McpDialect) -> tuple[McpDialect, McpDialect]:
    """Two flows' dialects of one resource, sharing an InFlight of their own."""
    in_flight = InFlight()
    return McpDialect(dialect.services, in_flight), McpDialect(dialect.services, in_flight)


def posted(dialect: McpDialect, id: int | str, headers: tuple[tuple[str, str], ...] = SESSION) -> McpCall:
    return post(dialect, request("tools/call", {"name": "search_web"}, id=id), headers)


@pytest.mark.parametrize("second", [7, "7"])
def test_an_id_in_flight_in_the_session_is_refused_on_another_flow(dialect: McpDialect, second: int | str) -> None:
    first, other = pair(dialect)
    posted(first, 7)
    with pytest.raises(ClientProtocolError, match="in flight"):
        posted(other, second)
    posted(other, 8)  # another id
    posted(other, 7, (*JSON, ("mcp-session-id", "S2")))  # another session
    posted(other, 7, JSON)  # no session: a transport of its own (initialize, stateless servers)


def test_an_id_is_free_again_once_answered_in_json(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    call = posted(first, 7)
    assert first.response_filter(head(), call, allowed(), ResponseHead(200, JSON)) is None
    posted(other, 7)


def test_an_id_is_free_again_once_its_response_passes_in_an_event_stream(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    call = posted(first, 7)
    body_filter = first.response_filter(head(), call, allowed(), ResponseHead(200, SSE))
    assert body_filter is not None  # followed, though nothing is masked
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 7, "progress": 1}}
    body_filter.feed(b"data: " + orjson.dumps(progress) + b"\n\n")
    with pytest.raises(ClientProtocolError):
        posted(other, 7)
    body_filter.feed(b"data: " + orjson.dumps(result({}, id=7)) + b"\n\n")
    posted(other, 7)


def test_an_id_is_free_again_when_its_stream_ends_or_it_is_refused(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    call = posted(first, 7)
    body_filter = first.response_filter(head(), call, allowed(), ResponseHead(200, SSE))
    assert body_filter is not None and body_filter.end() == b""
    posted(other, 7)
    other.refusal(head(), b"", 403, "denied", "r")
    posted(first, 7)


def test_an_id_is_free_again_when_the_flow_posts_again(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    posted(first, 7)
    posted(first, 8)
    posted(other, 7)


def listing_answer(body_filter: BodyFilter | None) -> list[str]:
    assert body_filter is not None
    out = body_filter.feed(b"data: " + orjson.dumps(result({"tools": TOOLS}, id=7)) + b"\n\n")
    return [tool["name"] for tool in orjson.loads(out.partition(b"data: ")[2])["result"]["tools"]]


def test_a_request_abandoned_in_flight_leaves_its_filters_to_the_next_one_under_its_id(dialect: McpDialect) -> None:
    # the connection of a tools/list ends before its answer; the server may still send that answer to the
    # next POST of the session with id 7 (the SDK re-registers the stream under "7"): it is filtered as a list
    first, other = pair(dialect)
    post(first, request("tools/list", id=7), SESSION)
    del first
    call = posted(other, 7)
    assert listing_answer(other.response_filter(head(headers=SESSION), call, allowed(), ResponseHead(200, SSE))) \
        == SHOWN
    again = posted(other, 7)  # the orphan stays: its answer may still come
    assert listing_answer(other.response_filter(head(headers=SESSION), again, allowed(), ResponseHead(200, SSE))) \
        == SHOWN


def test_the_end_of_the_session_forgets_what_was_abandoned(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    post(first, request("tools/list", id=7), SESSION)
    del first
    delete = RequestHead("DELETE", "/mcp", "/mcp", (), (("mcp-session-id", "S1"),), "127.0.0.1:8000")
    ended = other.operation(delete, b"")
    assert other.response_filter(delete, ended, allowed(), ResponseHead(200, (("content-length", "0"),))) is None
    call = posted(other, 7)
    assert other.response_filter(head(headers=SESSION), call, allowed(), ResponseHead(200, JSON)) is None


def test_a_session_with_too_many_abandoned_requests_is_refused(dialect: McpDialect) -> None:
    in_flight = InFlight(limit=2)
    survivor = McpDialect(dialect.services, in_flight)
    for id in (1, 2, 3):
        gone = McpDialect(dialect.services, in_flight)
        posted(gone, id)
        del gone
    posted(survivor, 1)  # takes the id over; the gone one is an orphan
    posted(survivor, 2)
    with pytest.raises(ClientProtocolError, match="start a new session"):
        posted(survivor, 3)  # a third orphan
    with pytest.raises(ClientProtocolError, match="start a new session"):
        posted(survivor, 4)
    posted(survivor, 4, (*JSON, ("mcp-session-id", "S2")))


def test_a_request_abandoned_and_denied_now_withholds_the_answer(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    posted(first, 7)
    first.inherited = (McpCall("tools/call", "delete_file"),)  # as if a policy reload denied it since
    with pytest.raises(MaskingError, match="denied now"):
        first.response_filter(head(headers=SESSION), McpCall("ping"), allowed(), ResponseHead(200, SSE))


MASKING = POLICY + """  - {name: mask-cards, effect: mask, resources: [tools], mcp: {tools: [read_file]},
     mask: {classifiers: [card]}}
"""


def sent_upstream(session: HttpSession, tool: str) -> bool:
    """POST a tools/call of `tool` with id 7 in MCP session S1: was it forwarded?"""
    message = orjson.dumps(request("tools/call", {"name": tool, "arguments": {"path": "/srv/a"}}, id=7))
    out = session.receive(Side.CLIENT, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nMcp-Session-Id: S1\r\n"
                                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                       % (len(message), message))
    return any(isinstance(c, Send) and c.to is Side.SERVER for c in out)


def test_an_answer_to_an_abandoned_call_is_masked_on_the_next_stream_under_its_id(dialect: McpDialect) -> None:
    # read_file (masked) on one connection, closed before its answer; search_web (unmasked) with the same id on
    # another: the SDK may send read_file's answer to search_web's stream, so that stream gets read_file's masks
    engine = PolicyEngine(load_policy_text(MASKING, "mcp.yaml"))
    judge = FlowJudge(dialect.services.judge.flow, lambda: engine, lambda: None, lambda: False)
    services = Services(judge=judge, audit=Sink(), resource=dialect.services.resource,
                        credentials=dialect.services.credentials)
    in_flight = InFlight()
    first, second = (HttpSession(McpDialect(services, in_flight), judge, server_name=None) for _ in range(2))
    assert sent_upstream(first, "read_file")
    del first  # the first connection ends before its answer: its dialect is gone
    assert sent_upstream(second, "search_web")
    card = b"data: " + orjson.dumps(result({"content": [{"type": "text", "text": CARD}]}, id=7)) + b"\n\n"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
              % (len(card), card))
    to_agent = b"".join(bytes(piece) for c in second.receive(Side.SERVER, answer)
                        if isinstance(c, Send) and c.to is Side.CLIENT for piece in c.data)
    assert b"200 OK" in to_agent and CARD.encode() not in to_agent


def test_a_response_on_a_stream_must_answer_its_request(dialect: McpDialect) -> None:
    call = posted(dialect, 7)
    body_filter = dialect.response_filter(head(), call, allowed((MaskSpec(rule="m"),)), ResponseHead(200, SSE))
    assert body_filter is not None
    sampling = {"jsonrpc": "2.0", "id": 0, "method": "sampling/createMessage", "params": {}}
    assert body_filter.feed(b"data: " + orjson.dumps(sampling) + b"\n\n")  # the server's own request passes
    with pytest.raises(MaskingError, match="on the stream of request"):
        body_filter.feed(b"data: " + orjson.dumps(result({}, id="7")) + b"\n\n")  # "7" is not 7


def test_a_null_id_error_passes(dialect: McpDialect) -> None:
    call = posted(dialect, 7)
    masks = (MaskSpec(rule="m", paths=("content",)),)
    body_filter = dialect.response_filter(head(), call, allowed(masks), ResponseHead(400, JSON))
    assert body_filter is not None
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad"}}
    assert orjson.loads(run(body_filter, [orjson.dumps(error)])) == error


@pytest.mark.parametrize("id", ["_GET_stream"])
def test_ids_the_server_keys_its_own_streams_by_are_refused(dialect: McpDialect, id: str) -> None:
    with pytest.raises(ClientProtocolError, match="reserved"):
        posted(dialect, id)


def test_one_session_header(dialect: McpDialect) -> None:
    with pytest.raises(ClientProtocolError, match="Mcp-Session-Id"):
        posted(dialect, 1, (*SESSION, ("mcp-session-id", "S2")))


def test_responses_the_agent_sends_keep_the_servers_ids(dialect: McpDialect) -> None:
    first, other = pair(dialect)
    posted(first, 0)
    response = {"jsonrpc": "2.0", "id": 0, "result": {"role": "assistant"}}
    assert post(other, response, SESSION) == McpCall("rpc.response")  # the server's id 0, not in flight
