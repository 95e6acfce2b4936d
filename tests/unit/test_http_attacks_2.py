"""Second round of attacks on the HTTP, Kubernetes and MCP enforcement: variations of each hole
test_http_attacks closed (other spellings, other servers' readings, other encodings). Every test
here guards a variation that the fixes hold against. Sans-IO, with test_http_attacks' helpers."""

from __future__ import annotations

from typing import Any

import pytest

from interceptor.decision import Verdict
from interceptor.errors import ClientProtocolError
from interceptor.handlers.http.session import HttpSession
from interceptor.handlers.http.plain import PlainDialect
from interceptor.handlers.commands import Side
from interceptor.policy import PolicyEngine
from test_http_attacks import (  # noqa: F401 - fixtures
    KUBE_POLICY, http_decide, http_engine, http_judge, kube, kube_decide, mcp_call, mcp_engine, copy_call, request_head,
    sent, server_reads,
)

# ---- Kubernetes: connect subresources --------------------------------------------------------


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/api/v1/namespaces/dev/pods/web/exec"),
    ("HEAD", "/api/v1/namespaces/dev/pods/web/attach"),
    ("PUT", "/api/v1/namespaces/dev/pods/web/portforward"),
    ("GET", "/api/v1/nodes/n1/proxy"),
    ("GET", "/api/v1/nodes/n1:10250/proxy/run/dev/web/app"),
    ("DELETE", "/api/v1/nodes/https:n1:10250/proxy/exec/dev/web/app"),
    ("PATCH", "/api/v1/nodes/n1/proxy/attach/dev/web/app"),
])
def test_every_method_on_a_connect_subresource_is_denied(kube: PolicyEngine, method: str, target: str) -> None:
    decision = kube_decide(kube, request_head(method, target))
    assert decision.verdict is Verdict.DENY


@pytest.mark.parametrize("target", [
    "/api/v1/namespaces/dev/pods/web:8080/proxy/x",
    "/api/v1/namespaces/dev/services/https:web:443/proxy/admin",
])
def test_pod_and_service_proxy_with_a_port_are_create(target: str) -> None:
    from interceptor.handlers.http.kubernetes import KubernetesDialect
    operation = KubernetesDialect().operation(request_head("GET", target), b"")
    assert (operation.verb, operation.subresource) == ("create", "proxy")


@pytest.mark.parametrize("method", ["get", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"])
def test_kube_methods_the_server_does_not_serve_are_refused(kube: PolicyEngine, method: str) -> None:
    with pytest.raises(ClientProtocolError):
        kube_decide(kube, request_head(method, "/api/v1/namespaces/dev/pods/web/exec"))


def test_kube_exec_path_with_dot_or_empty_segment_is_refused(kube: PolicyEngine) -> None:
    for target in ("/api/v1/namespaces/dev/pods/web/./exec", "/api/v1/namespaces/dev//pods/web/exec"):
        with pytest.raises(ClientProtocolError):
            kube_decide(kube, request_head("GET", target))


# ---- HTTP deny paths -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/%41dmin/users"),
    ("GET", "/%61dmin/users"),
    ("GET", "/ADMIN.json/"),
    ("GET", "/internal/export.json"),
    ("GET", "/internal/EXPORT.JSON/"),
    ("GET", "/internal/export."),
    ("GET", "/admin/."),
    ("GET", "/admin;x/users"),
    ("GET", "/admin//users"),
    ("GET", "//admin/users"),
    ("GET", "/%2561dmin/users"),
    ("GET", "/\u0130nternal/export"),
    ("GET", "/%C4%B0nternal/export"),
    ("GET", "/%E2%84%AAdmin"),
    ("GET", "/%EF%BD%81dmin/users"),
    ("get", "/reports/x"),
    ("head", "/reports/x"),
    ("OPTIONS", "/admin/users"),
    ("TRACE", "/admin/users"),
    ("PROPFIND", "/admin/users"),
    ("DELETE", "/v1/x"),
    ("delete", "/v1/x"),
])
def test_deny_rules_hold_for_more_spellings(http_engine: PolicyEngine, method: str, target: str) -> None:
    try:
        decision = http_decide(http_engine, method, target)
    except ClientProtocolError:  # the target parser refuses it
        return
    assert decision is None or decision.verdict is Verdict.DENY


# ---- HTTP method override ----------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/items/1?_METHOD=DELETE", "/items/1?_method[]=DELETE", "/items/1?%5Fmethod=DELETE",
    "/items/1?x-http-method-override=DELETE", "/items/1?X.HTTP.Method=DELETE", "/items/1?+_method=DELETE",
    "/items/1?_httpmethod=DELETE", "/items/1?_method%00=DELETE", "/items/1?_m%C3%A9thod=x&_method=DELETE",
])
def test_override_query_parameter_spellings_are_refused(http_engine: PolicyEngine, target: str) -> None:
    try:
        decision = http_decide(http_engine, "POST", target)
    except ClientProtocolError:
        return
    assert decision is None or decision.verdict is Verdict.DENY


def post_body(engine: PolicyEngine, content_type: str | None, body: bytes, chunked: bool = False,
              method: bytes = b"POST", chunk: int = 3) -> bytes:
    session = HttpSession(PlainDialect(), http_judge(engine), server_name="api.example.com")
    head = method + b" /items/1 HTTP/1.1\r\nHost: api.example.com\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type.encode() + b"\r\n"
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk])
                         for i in range(0, len(body), chunk))
        raw = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    else:
        raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return sent(session.receive(Side.CLIENT, raw), Side.SERVER)


@pytest.mark.parametrize(("content_type", "body", "chunked"), [
    ("application/x-www-form-urlencoded; charset=utf-8", b"_method=DELETE", False),
    ("application/x-www-form-urlencoded; charset=utf-16", b"_\x00m\x00e\x00t\x00h\x00o\x00d\x00=\x00D\x00", False),
    ("APPLICATION/X-WWW-FORM-URLENCODED", b"_METHOD=DELETE", False),
    ("application/x-www-form-urlencoded, text/plain", b"_method=DELETE", False),
    (None, b"_method=DELETE", False),
    ("", b"_method=DELETE", False),
    ("application/x-www-form-urlencoded", b"a=1&_method=DELETE", True),
    ("application/x-www-form-urlencoded", b"a=1;_method=DELETE", False),
    ("application/x-www-form-urlencoded", b"%5Fmethod=DELETE", False),
    ("application/x-www-form-urlencoded", b"_method%5B%5D=DELETE", False),
    ("application/x-www-form-urlencoded", b"__method=x&_method.=x&_method=DELETE", False),
    ("application/json", b'{"a":1,"_method":"DELETE"}', True),
    ("application/vnd.api+json", b'{"_method":"DELETE"}', False),
    ("text/json", b'{"_method":"DELETE"}', False),
    ("application/json", b'{"_m\\u0065thod":"DELETE"}', False),
    ("application/json", b'{"a":1,"_method":"x","_method":"DELETE"}', False),
    ("multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="_method"\r\n\r\n'
                                        b'DELETE\r\n--B--\r\n', True),
    ("multipart/form-data; boundary=B", b'--B\r\ncontent-disposition:form-data;NAME=_method\r\n\r\n'
                                        b'DELETE\r\n--B--\r\n', False),
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name*=UTF-8''_method\r\n\r\n"
                                        b'DELETE\r\n--B--\r\n', False),
])
def test_override_body_spellings_are_not_forwarded(http_engine: PolicyEngine, content_type: str | None,
                                                   body: bytes, chunked: bool) -> None:
    upstream = post_body(http_engine, content_type, body, chunked)
    assert b"DELETE" not in upstream.upper()


def test_a_put_with_an_override_streams_unread_as_put(http_engine: PolicyEngine) -> None:
    # PUT is not overridden by any framework (they override POST only); the allow rule does not list PUT.
    upstream = post_body(http_engine, "application/x-www-form-urlencoded", b"_method=DELETE", method=b"PUT")
    assert upstream == b""


# ---- MCP argument conditions -------------------------------------------------------------------


def read_call(path: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "read_any", "arguments": {"path": path}}}


@pytest.mark.parametrize("path", [
    "/etc/shadow/", "/etc//shadow", "/etc/shadow/.", "/etc/%2e/shadow", "\\etc\\shadow", "/etc\\shadow",
    "~/../../etc/shadow", ["/srv/x", "/etc/shadow"], '["/etc/shadow"]', '{"p": "/etc/shadow"}',
    ['["/srv", "[\\"/etc/shadow\\"]"]'], "/etc/shadow\x00.txt", {"path": "/etc/shadow"},
    "/srv/%2E%2E/etc/shadow", "//etc/shadow",
])
def test_deny_path_holds_for_more_spellings(mcp_engine: PolicyEngine, path: Any) -> None:
    assert mcp_call(mcp_engine, read_call(path)).verdict is Verdict.DENY


@pytest.mark.parametrize("arguments", [
    {"src": "/srv", "options": {"recursive": "True "}},
    {"src": "/srv", "options": {"recursive": "YES"}},
    {"src": "/srv", "options": {"recursive": 1.0}},
    {"src": "/srv", "options": '{"recursive": "on"}'},
    {"src": "/srv", "options": ' \n{"recursive": 1}'},
    {"src": "/srv", "options": '{"recursive": false, "recursive": true}'},
    {"src": "/srv", "options": {}, "depth": "-0"},
    {"src": "/srv", "options": {}, "depth": "0.0"},
    {"src": "/srv", "options": {}, "depth": " 0 "},
    {"src": "/srv", "options": {}, "depth": False},
    {"src": "/srv", "options": {}, "depth": "0_0"},
    {"src": "/srv", "options": {}, "depth": 0.0},
    {"src": "/srv", "options": {}, "depth": "0e0"},
    {"src": "/srv", "options": {}, "force": "1"},
    {"src": "/srv", "options": {}, "force": "t"},
])
def test_lax_variants_the_server_reads_as_denied_values_are_denied(mcp_engine: PolicyEngine,
                                                                    arguments: dict[str, Any]) -> None:
    try:
        read = server_reads(arguments)
    except Exception:  # the server refuses it: nothing runs
        return
    if read["recursive"] is True or read["force"] is True or read["depth"] == 0:
        assert mcp_call(mcp_engine, copy_call(arguments)).verdict is Verdict.DENY


# ---- MCP: one id in flight per session -------------------------------------------------------


@pytest.mark.parametrize(("first_id", "second_id", "second_session"), [
    ("7", 7, "S1"), (7, 7, "S1"), ("7", "7", "S1 \t"), (2 ** 62, str(2 ** 62), "S1"),
    ("x" * 5000, "x" * 5000, "S1"),
])
def test_an_id_in_flight_is_not_reused_whatever_its_spelling(mcp_engine: PolicyEngine, first_id: Any,
                                                              second_id: Any, second_session: str) -> None:
    from test_http_attacks import mcp_session, post_mcp
    import orjson
    first, second = mcp_session(mcp_engine, "flow-1"), mcp_session(mcp_engine, "flow-2")
    customer = {"jsonrpc": "2.0", "id": first_id, "method": "tools/call",
                "params": {"name": "get_customer", "arguments": {"id": 1}}}
    assert orjson.dumps(first_id) in sent(post_mcp(first, customer), Side.SERVER)
    search = {"jsonrpc": "2.0", "id": second_id, "method": "tools/call",
              "params": {"name": "search_web", "arguments": {"q": "x"}}}
    upstream = sent(post_mcp(second, search, second_session), Side.SERVER)
    assert upstream == b""


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":7.0,"method":"tools/call","params":{"name":"search_web"}}',
    b'{"jsonrpc":"2.0","id":7e0,"method":"tools/call","params":{"name":"search_web"}}',
    b'{"jsonrpc":"2.0","id":true,"method":"tools/call","params":{"name":"search_web"}}',
    b'{"jsonrpc":"2.0","id":"7","id":8,"method":"tools/call","params":{"name":"search_web"}}',
    b'[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_web"}}]',
    b'{"jsonrpc":"2.0","id":"_GET_stream","method":"tools/call","params":{"name":"search_web"}}',
])
def test_ids_a_server_could_read_otherwise_are_refused(mcp_engine: PolicyEngine, body: bytes) -> None:
    from interceptor.handlers.http.dialect import RequestHead
    from interceptor.handlers.http.mcp import McpDialect
    from test_http_attacks import mcp_services
    head = RequestHead("POST", "/mcp", "/mcp", (), (("content-type", "application/json"),), "127.0.0.1:8000")
    with pytest.raises(ClientProtocolError):
        McpDialect(mcp_services(mcp_engine)).operation(head, body)


def test_duplicate_argument_keys_are_refused_or_denied(mcp_engine: PolicyEngine) -> None:
    from interceptor.handlers.http.dialect import RequestHead
    from interceptor.handlers.http.mcp import McpDialect
    from interceptor.operations import Request, Subject
    from test_http_attacks import mcp_services
    head = RequestHead("POST", "/mcp", "/mcp", (), (("content-type", "application/json"),), "127.0.0.1:8000")
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"copy_tree","arguments":'
            b'{"src":"/","options":{"recursive":false,"recursive":true}}}}')
    try:
        call = McpDialect(mcp_services(mcp_engine)).operation(head, body)
    except ClientProtocolError:
        return
    assert mcp_engine.decide(Request(Subject("claude"), "tools", call)).verdict is Verdict.DENY


# ---- Kubernetes: credentials in responses ------------------------------------------------------

# the read-only policy, allowing creates too (a TokenRequest is a create)
TOKEN_POLICY = KUBE_POLICY.replace("verbs: [get, list, watch]", "verbs: [get, list, watch, create]")
LAST = "kubectl.kubernetes.io/last-applied-configuration"


def kube_filtered(target: str, body: bytes, content_type: str = "application/json", method: str = "GET") -> bytes:
    from interceptor.handlers.http.dialect import ResponseHead
    from interceptor.handlers.http.kubernetes import KubernetesDialect
    from interceptor.operations import Request, Subject
    from interceptor.policy import load_policy_text
    engine = PolicyEngine(load_policy_text(TOKEN_POLICY, "t.yaml"))
    dialect = KubernetesDialect()
    head = request_head(method, target)
    operation = dialect.operation(head, b"")
    decision = engine.decide(Request(Subject("bot"), "k8s", operation))
    assert decision.verdict is Verdict.ALLOW
    flt = dialect.response_filter(head, operation, decision, ResponseHead(200, (("content-type", content_type),)))
    assert flt is not None
    return flt.feed(body[:17]) + flt.feed(body[17:]) + flt.end()


@pytest.mark.parametrize(("target", "body", "content_type"), [
    ("/api/v1/watch/namespaces/dev/secrets",
     b'{"type":"ADDED","object":{"kind":"Secret","data":{"p":"aHVudGVyMg=="}}}\n', "application/json"),
    ("/api/v1/namespaces/dev/secrets?watch=yes",
     b'{"type":"BOOKMARK","object":{"kind":"Secret","data":{"p":"aHVudGVyMg=="}}}\n', "application/json"),
    ("/api/v1/namespaces/dev/configmaps",
     b'{"kind":"List","items":[{"kind":"ConfigMap"},{"apiVersion":"v1","kind":"Secret",'
     b'"metadata":{"annotations":{"' + LAST.encode() + b'":"{\\"data\\":{\\"p\\":\\"aHVudGVyMg==\\"}}"}},'
     b'"data":{"p":"aHVudGVyMg=="},"stringData":{"q":"aHVudGVyMg=="}}]}', "application/json"),
    ("/api/v1/namespaces/dev/serviceaccounts/sa/token?dryRun=All",
     b'{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","status":{"token":"aHVudGVyMg=="}}',
     "application/json"),
    ("/api/v1/namespaces/dev/secrets",
     b'{"kind":"SecretList","items":[{"metadata":{"annotations":{"' + LAST.encode() + b'":"aHVudGVyMg=="}}}]}',
     "application/json; charset=utf-8"),
])
def test_credentials_are_masked_in_more_shapes(target: str, body: bytes, content_type: str) -> None:
    method = "POST" if "/token" in target else "GET"
    assert b"aHVudGVy" not in kube_filtered(target, body, content_type, method)


@pytest.mark.parametrize("content_type", ["application/vnd.kubernetes.protobuf", "application/yaml",
                                          "application/json+x", ""])
def test_credentials_in_other_encodings_are_withheld(content_type: str) -> None:
    from interceptor.errors import MaskingError
    with pytest.raises(MaskingError):
        kube_filtered("/api/v1/namespaces/dev/secrets/db", b"k8s\x00aHVudGVyMg==", content_type)


def test_kube_accept_asks_json_only() -> None:
    from interceptor.handlers.http.kubernetes import KubernetesDialect
    head = request_head("GET", "/api/v1/namespaces/dev/secrets/db",
                        (("accept", "application/vnd.kubernetes.protobuf, application/yaml;q=0.9"),))
    dialect = KubernetesDialect()
    headers = dict(dialect.request_headers(head, dialect.operation(head, b"")))
    assert headers["accept"] == "application/json"


def test_a_form_body_past_the_limit_is_not_forwarded(http_engine: PolicyEngine) -> None:
    from interceptor.handlers.http.plain import FORM_BODY_LIMIT
    body = b"a=" + b"x" * FORM_BODY_LIMIT + b"&_method=DELETE"
    for chunked in (False, True):
        assert b"_method" not in post_body(http_engine, "application/x-www-form-urlencoded", body, chunked,
                                              chunk=1 << 16)


@pytest.mark.parametrize("target", [
    "/api/v1/proxy/namespaces/dev/pods/web/exec",
    "/api/v1/proxy/nodes/n1/exec/dev/web/app",
    "/api/v1/namespaces/dev/pods/web/exec/",
])
def test_deprecated_proxy_prefix_and_trailing_slash_are_not_allowed_as_reads(kube: PolicyEngine, target: str) -> None:
    assert kube_decide(kube, request_head("GET", target)).verdict is Verdict.DENY


@pytest.mark.parametrize(("content_type", "body"), [
    # Was a bypass (fixed): PHP (so Symfony/Laravel) registers a form field name as a C string (php_register_variable_ex:
    # var_len = strlen(var_name)), so `_method%00x` is the parameter `_method`; is_override sees "_method\x00x".
    ("application/x-www-form-urlencoded", b"_method%00x=DELETE"),
    # Was a bypass (fixed): PHP's multipart parser (main/rfc1867.c php_ap_getword_conf) takes a value quoted with ' too:
    # name='_method' is `_method`; _NAME_PARAM only unquotes "...".
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name='_method'\r\n\r\n"
                                        b"DELETE\r\n--B--\r\n"),
    # Was a bypass (fixed): the same NUL truncation for a multipart name.
    ("multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="_method\x00x"\r\n\r\n'
                                        b"DELETE\r\n--B--\r\n"),
])
def test_php_override_spellings_are_not_forwarded(http_engine: PolicyEngine, content_type: str, body: bytes) -> None:
    upstream = post_body(http_engine, content_type, body)
    assert b"DELETE" not in upstream


@pytest.mark.parametrize("path", ["file:///etc/shadow", "file://localhost/etc/shadow", "file:/etc/shadow",
                                  "file:///%65tc/shadow"])
def test_a_deny_path_holds_for_a_file_uri(mcp_engine: PolicyEngine, path: str) -> None:
    # Was a bypass (fixed): a file URI names /etc/shadow to any tool that accepts URIs (MCP resources are file:// URIs);
    # the deny glob /etc/* is matched against the whole string.
    assert mcp_call(mcp_engine, read_call(path)).verdict is Verdict.DENY
