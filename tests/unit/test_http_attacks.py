"""Attacks on the HTTP, Kubernetes and MCP enforcement: each test is one place where the
enforcer's reading of a request could differ from what the server runs (the server's reading
is the truth). A test marked `# BYPASS:` fails while the hole is open; the others guard holes
that are closed. Sans-IO only: the HttpSession, the dialects and the policy engine are driven
directly; where the server's reading matters, the server's own code (the `mcp` SDK's argument
validation) is run to show it."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from conversation import Judging
from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.errors import ClientProtocolError
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.commands import Command, Send, Side
from interceptor.handlers.http.bearer import FlowDialect
from interceptor.handlers.http.dialect import Dialect, RequestHead, ResponseHead
from interceptor.handlers.http.kubernetes import KubernetesDialect
from interceptor.handlers.http.mcp import HANDLER as MCP_HANDLER
from interceptor.handlers.http.mcp import McpDialect
from interceptor.handlers.http.plain import PlainDialect
from interceptor.handlers.http.session import HttpSession
from interceptor.operations import HttpRequest, McpCall, Operation, Request, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.kube_rules import SECRET_RULE, SECRETS_REQUEST_PATHS
from interceptor.policy.model import AddressSpec, ResourceSpec
from test_mcp_dialect import Sink

# ---- helpers ---------------------------------------------------------------------------------


def sent(commands: list[Command], to: Side) -> bytes:
    """Every byte the session sent to `to`."""
    return b"".join(bytes(piece) for c in commands if isinstance(c, Send) and c.to is to for piece in c.data)


def request_head(method: str, target: str, headers: tuple[tuple[str, str], ...] = (),
                 host: str = "api.example.com") -> RequestHead:
    from interceptor.handlers.http.target import parse_target
    parsed = parse_target(method, target)
    return RequestHead(method, target, parsed.path, parsed.query, headers, host)


# ---- Kubernetes ------------------------------------------------------------------------------

KUBE_POLICY = """
version: 1
resources:
  k8s: {protocol: kubernetes, addresses: ["10.0.0.1:6443"]}
agents:
  bot: {uids: [1001]}
rules:
  - name: read-only
    effect: allow
    kubernetes: {verbs: [get, list, watch], resources: ["*"], namespaces: [dev, ""]}
  - name: no-exec
    effect: deny
    reason: no shells, port-forwards or attaches
    kubernetes: {verbs: [create], resources: [pods/exec, pods/attach, pods/portforward, nodes/proxy]}
"""
UPGRADE = (("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13"),
           ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
           ("sec-websocket-protocol", "v4.channel.k8s.io"))


@pytest.fixture(scope="module")
def kube() -> PolicyEngine:
    return PolicyEngine(load_policy_text(KUBE_POLICY, "k.yaml"))


def kube_decide(engine: PolicyEngine, head: RequestHead) -> Decision:
    operation = KubernetesDialect().operation(head, b"")
    return engine.decide(Request(Subject("bot"), "k8s", operation))


@pytest.mark.parametrize("target", [
    "/api/v1/namespaces/dev/pods/web/exec?command=sh&stdin=true&tty=true",
    "/api/v1/namespaces/dev/pods/web/attach?stdin=true",
    "/api/v1/namespaces/dev/pods/web/portforward?ports=5432",
    "/api/v1/nodes/n1/proxy/exec/dev/web/app?command=sh",  # the kubelet's exec, through the node proxy
])
def test_websocket_exec_by_get_is_judged_as_a_write(kube: PolicyEngine, target: str) -> None:
    # Was a bypass (fixed): a WebSocket upgrade GET to exec/attach/portforward (and the kubelet through
    # nodes/proxy) was judged as verb `get`, so a read-only rule allowed running commands and a deny on
    # `create` missed it (kubectl uses POST+SPDY, the python client and kubectl 1.30+ use GET+WebSocket;
    # the API server since 1.31 also requires `create` for these upgrades,
    # AuthorizePodWebsocketUpgradeCreatePermission). Every connect subresource is now judged `create`.
    decision = kube_decide(kube, request_head("GET", target, UPGRADE))
    assert decision.verdict is Verdict.DENY and decision.rule == "no-exec"


def test_post_exec_is_denied_as_create(kube: PolicyEngine) -> None:
    head = request_head("POST", "/api/v1/namespaces/dev/pods/web/exec?command=sh",
                        (("connection", "Upgrade"), ("upgrade", "SPDY/3.1")))
    assert kube_decide(kube, head).rule == "no-exec"


@pytest.mark.parametrize(("target", "verb", "name"), [
    ("/api/v1/namespaces/dev/secrets?watch=TRUE", "watch", ""),
    ("/api/v1/namespaces/dev/secrets?watch=", "watch", ""),
    ("/api/v1/namespaces/dev/secrets?watch=0&watch=1", "list", ""),
    ("/api/v1/namespaces/dev/secrets?watch=False", "list", ""),
    ("/api/v1/watch/namespaces/dev/secrets?fieldSelector=metadata.name%3Ddb", "watch", ""),
    ("/api/v1/namespaces/dev/secrets?fieldSelector=metadata.name%3D%3Ddb", "list", "db"),
    ("/api/v1/namespaces/dev/secrets?fieldSelector=metadata.name%21%3Ddb", "list", ""),
    ("/api/v1/namespaces/dev/secrets?fieldSelector=metadata.name%3Db,metadata.name%3Da", "list", "a"),
])
def test_verbs_and_names_from_the_query_as_the_api_server_reads_them(target: str, verb: str, name: str) -> None:
    operation = KubernetesDialect().operation(request_head("GET", target), b"")
    assert (operation.verb, operation.name) == (verb, name)


def test_delete_without_a_name_is_deletecollection() -> None:
    operation = KubernetesDialect().operation(request_head("DELETE", "/api/v1/namespaces/prod/pods/"), b"")
    assert operation.verb == "deletecollection"


@pytest.mark.parametrize("body", [
    b'{"kind":"Secret","data":{"p":"aHVudGVyMg=="},"data":{"p":"aHVudGVyMw=="}}',
    b'{"kind":"Secret","d\\u0061ta":{"p":"aHVudGVyMg=="}}',
    b'{"kind":"SecretList","items":[{"metadata":{"name":"a"},"data":{"p":"aHVudGVyMg=="}}]}',
    b'{"kind":"Table","rows":[{"cells":["a"],"object":{"kind":"Secret","data":{"p":"aHVudGVyMg=="}}}]}',
])
def test_secret_values_cannot_hide_behind_json_spelling(body: bytes) -> None:
    dialect = KubernetesDialect()
    head = request_head("GET", "/api/v1/namespaces/dev/secrets/db")
    decision = Decision(Verdict.ALLOW, "r", masks=(MaskSpec(paths=SECRETS_REQUEST_PATHS, rule=SECRET_RULE),))
    flt = dialect.response_filter(head, dialect.operation(head, b""), decision,
                                  ResponseHead(200, (("content-type", "application/json"),)))
    assert flt is not None
    out = flt.feed(body) + flt.end()
    assert b"aHVudGVy" not in out  # base64 of "hunter": neither copy of a duplicate key, nor an escaped key


def test_a_watch_judged_as_such_masks_each_event() -> None:
    dialect = KubernetesDialect()
    head = request_head("GET", "/api/v1/namespaces/dev/secrets?watch=1")
    decision = Decision(Verdict.ALLOW, "r", masks=(MaskSpec(paths=SECRETS_REQUEST_PATHS, rule=SECRET_RULE),))
    flt = dialect.response_filter(head, dialect.operation(head, b""), decision,
                                  ResponseHead(200, (("content-type", "application/json;stream=watch"),)))
    assert flt is not None
    event = b'{"type":"ADDED","object":{"kind":"Secret","data":{"p":"aHVudGVyMg=="}}}\n'
    assert b"aHVudGVy" not in flt.feed(event[:20]) + flt.feed(event[20:]) + flt.end()


# ---- MCP ---------------------------------------------------------------------------------------

MCP_POLICY = """
version: 1
resources:
  tools: {protocol: mcp, addresses: ["127.0.0.1:8000"]}
agents:
  claude: {uids: [1001]}
rules:
  - {name: copy, effect: allow, resources: [tools], mcp: {tools: [copy_tree]}}
  - {name: no-recursive-copy, effect: deny, resources: [tools],
     mcp: {tools: [copy_tree], arguments: {"options.recursive": [true], force: [true], depth: [0]}}}
  - {name: customers, effect: allow, resources: [tools], mcp: {tools: [get_customer, search_web, read_any]}}
  - {name: no-etc, effect: deny, resources: [tools], mcp: {tools: [read_any], arguments: {path: ["/etc/*"]}}}
  - {name: mask-cards, effect: mask, resources: [tools], mcp: {tools: [get_customer]},
     mask: {classifiers: [card]}}
"""
CARD = "4111 1111 1111 1111"


class CopyOptions(BaseModel):
    recursive: bool = False


def copy_tree(src: str, options: CopyOptions, force: bool = False, depth: int = 1) -> None:
    """The tool as an MCP server written with the `mcp` SDK declares it."""


@pytest.fixture(scope="module")
def mcp_engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(MCP_POLICY, "mcp.yaml"))


def mcp_services(engine: PolicyEngine, flow_id: str = "flow-1") -> Services:
    process = ProcessInfo(os.getpid(), 1, 0, 0, "/usr/bin/agent", ("agent",), "/agents/claude")
    loopback = ipaddress.ip_address("127.0.0.1")
    flow = FlowContext(flow_id, "claude", process, Endpoint(loopback, 8000), Endpoint(loopback, 40000), "tools")

    async def credentials() -> dict[str, str]:
        return {}

    resource = ResourceSpec("tools", "mcp", (AddressSpec(ipaddress.ip_network("127.0.0.1/32"), None, 8000),))
    return Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False), audit=Sink(),
                    resource=resource, credentials=credentials)


def mcp_call(engine: PolicyEngine, message: dict[str, Any]) -> Decision:
    dialect = McpDialect(mcp_services(engine))
    head = RequestHead("POST", "/mcp", "/mcp", (), (("content-type", "application/json"),), "127.0.0.1:8000")
    call = dialect.operation(head, orjson.dumps(message))
    return engine.decide(Request(Subject("claude"), "tools", call))


def server_reads(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments the `mcp` SDK's MCPServer hands the tool function (its pre-parse of JSON in
    strings, then pydantic's lax validation)."""
    from mcp.server.mcpserver.utilities.func_metadata import func_metadata
    validated = func_metadata(copy_tree).validate_arguments(arguments)
    options = validated["options"]
    return {"recursive": options.recursive, "force": validated["force"], "depth": validated["depth"]}


def copy_call(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "copy_tree", "arguments": arguments}}


def test_a_deny_condition_catches_the_plain_json_shape(mcp_engine: PolicyEngine) -> None:
    arguments = {"src": "/srv", "options": {"recursive": True}}
    assert server_reads(arguments)["recursive"] is True
    assert mcp_call(mcp_engine, copy_call(arguments)).rule == "no-recursive-copy"


def test_a_deny_condition_sees_json_inside_a_string_as_the_server_does(mcp_engine: PolicyEngine) -> None:
    # Was a bypass (fixed): the mcp SDK's MCPServer json.loads a string argument whose parameter is not `str`
    # (FuncMetadata.pre_parse_json), so `"options": "{\"recursive\": true}"` runs recursively while the
    # deny condition options.recursive selects nothing in a string.
    arguments = {"src": "/srv", "options": '{"recursive": true}'}
    assert server_reads(arguments)["recursive"] is True
    assert mcp_call(mcp_engine, copy_call(arguments)).verdict is Verdict.DENY


@pytest.mark.parametrize("arguments", [
    {"src": "/srv", "options": {"recursive": "true"}},
    {"src": "/srv", "options": {"recursive": 1}},
    {"src": "/srv", "options": {}, "force": "on"},
    {"src": "/srv", "options": {}, "depth": "0"},
])
def test_a_deny_condition_sees_scalars_as_the_servers_lax_validation_does(mcp_engine: PolicyEngine,
                                                                           arguments: dict[str, Any]) -> None:
    # Was a bypass (fixed): pydantic (lax mode, what MCP servers built on the SDK validate with) reads "true", 1,
    # "on" as true and "0" as 0; deny conditions compare JSON types strictly, so they do not match.
    read = server_reads(arguments)
    assert read["recursive"] is True or read["force"] is True or read["depth"] == 0
    assert mcp_call(mcp_engine, copy_call(arguments)).verdict is Verdict.DENY


@pytest.mark.parametrize("path", ["//etc/shadow", "///etc/shadow", "/srv/../etc/shadow", "/etc/./shadow"])
def test_a_deny_path_condition_holds_for_every_spelling_of_the_path(mcp_engine: PolicyEngine, path: str) -> None:
    # Was a bypass (fixed) (the `//` ones): a value with an empty segment is "normal" to the matcher, so
    # `//etc/shadow` escapes the deny glob /etc/*, while every file system (POSIX: `//` at the start
    # may be implementation-defined, Linux reads it as `/`) opens /etc/shadow.
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "read_any", "arguments": {"path": path}}}
    assert mcp_call(mcp_engine, call).verdict is Verdict.DENY


def post_mcp(session: HttpSession, message: dict[str, Any], session_id: str = "S1") -> list[Command]:
    body = orjson.dumps(message)
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return session.receive(Side.CLIENT, head + body)


def mcp_session(engine: PolicyEngine, flow_id: str) -> HttpSession:
    services = mcp_services(engine, flow_id)
    dialect = MCP_HANDLER.dialect_factory(services)
    return HttpSession(dialect, services.judge, server_name=None)


@pytest.mark.parametrize("second_id", [7, "7"], ids=["int", "str"])
def test_a_json_rpc_id_in_flight_is_not_reused_by_another_connection(mcp_engine: PolicyEngine,
                                                                      second_id: int | str) -> None:
    # Was a bypass (fixed): the mcp SDK's StreamableHTTPServerTransport routes each response to the POST stream
    # registered under str(id) (_request_streams[str(message.id)]), the latest one registered. A
    # masked call (get_customer, id 7) and an unmasked one (search_web, id 7 or "7") posted on two
    # connections of one MCP session: get_customer's result goes out on the second POST's stream,
    # through its filter without masks, and the card number reaches the agent in clear. The
    # upstream must never see a second request whose str(id) is in flight in the same session
    # (refused, or ids rewritten by the enforcer).
    first, second = mcp_session(mcp_engine, "flow-1"), mcp_session(mcp_engine, "flow-2")
    customer = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "get_customer", "arguments": {"id": 1}}}
    assert b'"id":7' in sent(post_mcp(first, customer), Side.SERVER)
    search = {"jsonrpc": "2.0", "id": second_id, "method": "tools/call",
              "params": {"name": "search_web", "arguments": {"q": "x"}}}
    upstream = sent(post_mcp(second, search), Side.SERVER)
    assert b'"id":7' not in upstream and b'"id":"7"' not in upstream


def test_a_masked_result_on_its_own_stream_is_masked(mcp_engine: PolicyEngine) -> None:
    session = mcp_session(mcp_engine, "flow-1")
    post_mcp(session, {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "get_customer", "arguments": {"id": 1}}})
    body = orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": CARD}]}})
    answer = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
              ).encode() + body
    out = sent(session.receive(Side.SERVER, answer), Side.CLIENT)
    assert b"200 OK" in out and CARD.encode() not in out


@pytest.mark.parametrize("stream", [
    b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"text\":\"CARD\"}}\r\r",  # CR line ends
    b"\xef\xbb\xbfdata:{\"jsonrpc\":\"2.0\",\"id\":7,\r\ndata:\"result\":{\"text\":\"CARD\"}}\n\n",
    b": data: {\"x\":1}\nid: 1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":"
    b"{\"text\":\"CARD\"}}\n\n",
])
def test_an_event_stream_result_is_masked_whatever_its_framing(mcp_engine: PolicyEngine, stream: bytes) -> None:
    session = mcp_session(mcp_engine, "flow-1")
    post_mcp(session, {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "get_customer", "arguments": {"id": 1}}})
    body = stream.replace(b"CARD", CARD.encode())
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5]) for i in range(0, len(body), 5))
    out = sent(session.receive(Side.SERVER, head + chunks + b"0\r\n\r\n"), Side.CLIENT)
    assert b"200 OK" in out and b'"text":"****"' in out and b"4111" not in out


def test_a_tool_call_posted_as_a_response_is_not_a_call(mcp_engine: PolicyEngine) -> None:
    message = {"jsonrpc": "2.0", "id": 9, "result": {"method": "tools/call", "params": {"name": "copy_tree"}}}
    decision = mcp_call(mcp_engine, message)
    assert decision.verdict is Verdict.DENY


@pytest.mark.parametrize(("body", "refused"), [
    (b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"copy_tree",'
     b'"arguments":{"src":"/","options":{"recursive":true}}}}', False),
    (b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"copy_tree"}}', True),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","n\\u0061me":"copy_tree"}}', True),
    (b'{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"copy_tree"}}', True),
])
def test_method_spellings_are_read_once(mcp_engine: PolicyEngine, body: bytes, refused: bool) -> None:
    dialect = McpDialect(mcp_services(mcp_engine))
    head = RequestHead("POST", "/mcp", "/mcp", (), (("content-type", "application/json"),), "127.0.0.1:8000")
    if refused:
        with pytest.raises(ClientProtocolError):
            dialect.operation(head, body)
        return
    call = dialect.operation(head, body)
    assert isinstance(call, McpCall) and call.method == "tools/call"
    assert mcp_engine.decide(Request(Subject("claude"), "tools", call)).rule == "no-recursive-copy"


# ---- plain HTTP ----------------------------------------------------------------------------------

HTTP_POLICY = """
version: 1
resources:
  api: {protocol: http, addresses: ["api.example.com:443"], options: {tls: true}}
agents:
  bot: {uids: [1001]}
rules:
  - {name: anything, effect: allow, resources: [api], http: {methods: [GET, HEAD, POST]}}
  - {name: no-report-reads, effect: deny, resources: [api], http: {methods: [GET], paths: ["/reports/*"]}}
  - {name: no-admin, effect: deny, resources: [api], http: {paths: ["/admin/*", "/internal/export"]}}
  - {name: no-deletes, effect: deny, resources: [api], http: {methods: [DELETE]}}
"""


@pytest.fixture(scope="module")
def http_engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(HTTP_POLICY, "http.yaml"))


def http_judge(engine: PolicyEngine) -> Judging:
    return Judging(lambda operation: engine.decide(Request(Subject("bot"), "api", operation)))


def http_decide(engine: PolicyEngine, method: str, target: str) -> Decision | None:
    """The decision on the request; None when the dialect refuses it (400) before judging."""
    try:
        operation = PlainDialect().operation(request_head(method, target), b"")
    except ClientProtocolError:
        return None
    return engine.decide(Request(Subject("bot"), "api", operation))


@pytest.mark.parametrize("target", ["/Admin/users", "/ADMIN/users", "/internal/EXPORT"])
def test_deny_path_rules_hold_whatever_the_case(http_engine: PolicyEngine, target: str) -> None:
    # Was a bypass (fixed): deny path globs compare case-sensitively; Express (default caseSensitive: false),
    # ASP.NET Core and IIS route /Admin/users to the /admin handler.
    decision = http_decide(http_engine, "GET", target)
    assert decision is None or decision.verdict is Verdict.DENY


def test_deny_path_rules_hold_with_a_trailing_slash(http_engine: PolicyEngine) -> None:
    # Was a bypass (fixed): /internal/export/ escapes the deny on /internal/export; Express (strict: false by
    # default) and Spring MVC before 6 (trailing slash match) serve it with the same handler.
    decision = http_decide(http_engine, "GET", "/internal/export/")
    assert decision is None or decision.verdict is Verdict.DENY


def test_a_deny_on_get_holds_for_head(http_engine: PolicyEngine) -> None:
    # Was a bypass (fixed): HEAD runs the GET handler on Go net/http, Starlette, Express, Flask and Django (the
    # body is dropped, its headers and side effects are not); a deny on GET does not cover HEAD.
    # Kubernetes requests already read HEAD as get.
    assert http_engine.decide(Request(Subject("bot"), "api", HttpRequest("GET", "/reports/x", (), "api.example.com"))
                              ).rule == "no-report-reads"
    decision = http_engine.decide(Request(Subject("bot"), "api", HttpRequest("HEAD", "/reports/x", (),
                                                                              "api.example.com")))
    assert decision.verdict is Verdict.DENY


@pytest.mark.parametrize("target", ["/items/1?_method=DELETE", "/items/1?_method=delete&x=1"])
def test_a_method_override_parameter_is_not_taken_as_post(http_engine: PolicyEngine, target: str) -> None:
    # Was a bypass (fixed): Symfony (Request::getMethod with httpMethodParameterOverride, which Laravel enables)
    # reads ?_method=DELETE on a POST as DELETE; the override headers are dropped, the query
    # parameter is judged as POST and forwarded.
    decision = http_decide(http_engine, "POST", target)
    assert decision is None or decision.verdict is Verdict.DENY


def test_a_method_override_in_a_form_body_is_not_taken_as_post(http_engine: PolicyEngine) -> None:
    # Was a bypass (fixed): Rails (Rack::MethodOverride) and Laravel/Symfony read `_method` in an urlencoded POST
    # body as the method; the body is never read (body_limit 0), so a DELETE runs as an allowed POST.
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    body = b"_method=delete&confirm=1"
    out = session.receive(Side.CLIENT, b"POST /items/1 HTTP/1.1\r\nHost: api.example.com\r\n"
                                       b"Content-Type: application/x-www-form-urlencoded\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert b"_method=delete" not in sent(out, Side.SERVER)


def test_the_override_headers_are_dropped(http_engine: PolicyEngine) -> None:
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    out = session.receive(Side.CLIENT, b"POST /items/1 HTTP/1.1\r\nHost: api.example.com\r\n"
                                       b"X-HTTP-Method-Override: DELETE\r\nX_HTTP_Method: DELETE\r\n"
                                       b"X-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n")
    upstream = sent(out, Side.SERVER).lower()
    assert upstream.startswith(b"post /items/1 ") and b"delete" not in upstream


def test_an_agent_credential_header_spelled_with_underscores_is_dropped(http_engine: PolicyEngine) -> None:
    # Was a bypass (closed by 7041729): with token_header x-api-key, the agent's `X_Api_Key`
    # survived (FlowDialect dropped exact names only) beside the resource's key, first; CGI/WSGI
    # servers (wsgiref, gunicorn before 22) read both as HTTP_X_API_KEY.
    dialect: Dialect = FlowDialect(PlainDialect(), frozenset({"x-api-key"}))
    session = HttpSession(dialect, http_judge(http_engine), server_name="api.example.com",
                          credential_headers=(("x-api-key", "resource-key"),))
    out = session.receive(Side.CLIENT, b"GET /v1 HTTP/1.1\r\nHost: api.example.com\r\nX-Api-Key: agent-key-1\r\n"
                                       b"X_Api_Key: agent-key-2\r\n\r\n")
    upstream = sent(out, Side.SERVER)
    assert b"resource-key" in upstream
    assert b"agent-key" not in upstream


@pytest.mark.parametrize("raw", [
    b"GET /v1 HTTP/1.1\r\nHost : api.example.com\r\n\r\n",  # whitespace before the colon
    b"POST /v1 HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1 HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST /v1 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST /v1 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: +1\r\n\r\nx",
    b"POST /v1 HTTP/1.0\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: api.example.com\r\nX-A: 1\r\n b\r\n\r\n",  # obs-fold
    b"GET /v1 HTTP/1.1\nHost: api.example.com\r\n\r\n",  # bare LF
    b"GET /admin;x=/../v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET /v1/%2e%2e/admin/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET /v1/%c0%ae%c0%ae/admin/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",  # overlong UTF-8 dots
    b"GET /v1%2fadmin HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET /v1?a=1;_method=DELETE HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET http://user@api.example.com/v1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET http://other.example.com/admin/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: other.example.com\r\n\r\n",  # not the SNI
    b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
])
def test_shapes_read_otherwise_are_refused_and_never_forwarded(http_engine: PolicyEngine, raw: bytes) -> None:
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    out = session.receive(Side.CLIENT, raw)
    assert sent(out, Side.SERVER) == b""
    assert sent(out, Side.CLIENT).startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 421 "))


def test_trailers_carry_no_headers_upstream(http_engine: PolicyEngine) -> None:
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    out = session.receive(Side.CLIENT, b"POST /v1 HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n"
                                       b"\r\n1;ext=1\r\na\r\n0\r\nAuthorization: Bearer agent\r\n"
                                       b"Impersonate-User: admin\r\n\r\n")
    upstream = sent(out, Side.SERVER)
    assert upstream.endswith(b"\r\n1\r\na\r\n0\r\n\r\n")
    assert b"agent" not in upstream and b"admin" not in upstream.lower()


def test_a_request_pipelined_behind_a_denied_one_is_judged_itself(http_engine: PolicyEngine) -> None:
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    out = session.receive(Side.CLIENT, b"GET /admin/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
                                       b"DELETE /v1/y HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
                                       b"GET /admin/z HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert sent(out, Side.SERVER) == b""
    assert sent(out, Side.CLIENT).count(b"HTTP/1.1 403 ") == 3


def test_an_upgrade_other_than_websocket_or_spdy_is_not_forwarded(http_engine: PolicyEngine) -> None:
    session = HttpSession(PlainDialect(), http_judge(http_engine), server_name="api.example.com")
    out = session.receive(Side.CLIENT, b"GET /v1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade, "
                                       b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    upstream = sent(out, Side.SERVER).lower()
    assert upstream.startswith(b"get /v1 ") and b"upgrade" not in upstream and b"h2c" not in upstream


def test_an_agent_authorization_and_impersonation_never_reach_the_api_server(kube: PolicyEngine) -> None:
    judge = Judging(lambda operation: kube.decide(Request(Subject("bot"), "k8s", operation)))
    session = HttpSession(KubernetesDialect(), judge, server_name="k8s.example.com",
                          credential_headers=(("authorization", "Bearer resource"),))
    out = session.receive(Side.CLIENT, b"GET /api/v1/namespaces/dev/pods HTTP/1.1\r\nHost: k8s.example.com\r\n"
                                       b"Authorization: Bearer agent\r\nImpersonate_User: admin\r\n"
                                       b"impersonate-extra-scopes: x\r\nImpersonate-Uid: 0\r\n"
                                       b"X-Remote-User: admin\r\nProxy-Authorization: Basic eA==\r\n\r\n")
    upstream = sent(out, Side.SERVER).lower()
    assert b"bearer resource" in upstream
    assert all(word not in upstream for word in (b"agent", b"admin", b"impersonate", b"eA==".lower()))


def test_an_agent_token_in_the_websocket_subprotocol_never_reaches_the_api_server(kube: PolicyEngine) -> None:
    # Was a bypass (closed by 7041729): the API server authenticates a WebSocket request by a
    # bearer token in Sec-WebSocket-Protocol (base64url.bearer.authorization.k8s.io.<token>,
    # k8s.io/apiserver authentication/request/websocket) when the Authorization header's token
    # fails (the union authenticator goes on to the next); the agent's token survived.
    judge = Judging(lambda operation: kube.decide(Request(Subject("bot"), "k8s", operation)))
    session = HttpSession(KubernetesDialect(), judge, server_name="k8s.example.com",
                          credential_headers=(("authorization", "Bearer resource"),))
    out = session.receive(Side.CLIENT, b"GET /api/v1/namespaces/dev/pods?watch=1 HTTP/1.1\r\nHost: k8s.example.com\r\n"
                                       b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: "
                                       b"base64url.bearer.authorization.k8s.io.YWdlbnQtdG9rZW4, "
                                       b"v4.channel.k8s.io\r\n\r\n")
    upstream = sent(out, Side.SERVER)
    assert upstream.startswith(b"GET /api/v1/namespaces/dev/pods?watch=1 ")
    assert b"bearer.authorization.k8s.io" not in upstream and b"YWdlbnQtdG9rZW4" not in upstream


def websocket_text(payload: bytes) -> bytes:
    """One unmasked WebSocket text frame, as a server sends it (RFC 6455 section 5.2)."""
    if len(payload) < 126:
        return bytes([0x81, len(payload)]) + payload
    return bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload


def test_a_secret_watch_over_websocket_is_not_relayed_unmasked(kube: PolicyEngine) -> None:
    # BYPASS: the API server serves a watch over WebSocket (k8s.io/apiserver endpoints/handlers
    # watch.go: wsstream.IsWebSocketRequest). The upgrade GET of secrets?watch=1 is allowed with the
    # Secret masks, then the 101 turns the flow into a byte relay and the events reach the agent
    # unmasked. Any upgrade whose decision carries masks must be refused (a relay cannot be masked).
    judge = Judging(lambda operation: kube.decide(Request(Subject("bot"), "k8s", operation)))
    session = HttpSession(KubernetesDialect(), judge, server_name="k8s.example.com",
                          credential_headers=(("authorization", "Bearer resource"),))
    out = session.receive(Side.CLIENT, b"GET /api/v1/namespaces/dev/secrets?watch=1 HTTP/1.1\r\n"
                                       b"Host: k8s.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                       b"Sec-WebSocket-Version: 13\r\n"
                                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    if sent(out, Side.SERVER) == b"":
        return  # refused before the server saw it: closed
    event = orjson.dumps({"type": "ADDED", "object": {"kind": "Secret", "metadata": {"name": "db"},
                                                      "data": {"password": "aHVudGVyMg=="}}})
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n") + websocket_text(event)
    to_agent = sent(session.receive(Side.SERVER, answer), Side.CLIENT)
    assert b"aHVudGVyMg==" not in to_agent


def test_plain_operation_is_the_decoded_path(http_engine: PolicyEngine) -> None:
    operation: Operation = PlainDialect().operation(request_head("GET", "/%61dmin/x"), b"")
    assert isinstance(operation, HttpRequest) and operation.path == "/admin/x"
    assert http_engine.decide(Request(Subject("bot"), "api", operation)).rule == "no-admin"


def test_tool_listing_judges_each_name(mcp_engine: PolicyEngine) -> None:
    assert mcp_engine.decide(Request(Subject("claude"), "tools", McpCall("tools/list", "copy_tree"))).allowed
    assert not mcp_engine.decide(Request(Subject("claude"), "tools", McpCall("tools/list", "Copy_Tree"))).allowed

