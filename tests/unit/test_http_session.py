"""HttpSession, the sans-IO HTTP/1.1 session, as conversations (tests/conversation.py): the
agent sends a request, the upstream receives what the enforcer forwards, the agent gets the
answer, the record names the rule."""

from __future__ import annotations

import http
import random
from dataclasses import dataclass, field

import h11
import pytest

from conversation import Judging, Script, script
from interceptor.decision import ApprovalSpec, Decision, MaskSpec, Verdict
from interceptor.errors import ClientProtocolError, Fault, MaskingError
from interceptor.handlers.commands import Send, Shutdown, Side
from interceptor.handlers.http.dialect import BodyFilter, Reply, RequestHead, ResponseHead
from interceptor.handlers.http.headers import HeadError, _field, read_head
from interceptor.handlers.http.session import DONE, PROTOCOL_RULE, HttpSession
from interceptor.handlers.http.target import parse_target
from interceptor.operations import HttpRequest, Operation, Pairs

TOKEN = "Bearer resource-token"
CREDENTIAL: Pairs = (("authorization", TOKEN),)
UPSTREAM_TAIL = f"authorization: {TOKEN}\r\naccept-encoding: identity\r\n".encode()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Upper:
    """A body filter that upper-cases the body and counts the pieces it changed."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.masked = 0
        self.fail_after = fail_after

    def feed(self, data: bytes) -> bytes:
        if self.fail_after is not None and self.masked >= self.fail_after:
            raise MaskingError("cannot mask this piece")
        self.masked += 1
        return data.upper()

    def end(self) -> bytes:
        return b"<end>"


@dataclass
class FakeDialect:
    """A Dialect (interceptor.handlers.http.dialect) whose answers the test sets."""

    name: str = "http"
    limit: int = 0
    filter: BodyFilter | None = None
    filter_error: bool = False
    bodies: list[bytes] = field(default_factory=list)  # the bodies operation() was given

    def body_limit(self, head: RequestHead) -> int:
        return self.limit

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        self.bodies.append(body)
        if head.path == "/invalid":
            raise ClientProtocolError("the dialect cannot read this request")
        return HttpRequest(head.method, head.path, head.query, head.host)

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        return head.headers

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        return Reply(status, (("content-type", "text/plain"),), message.encode())

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        if self.filter_error:
            raise MaskingError("masks cannot be applied to application/x-gzip")
        return self.filter

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        return operation.summary()


def decide(operation: Operation) -> Decision:
    """A small policy: /secret denied, DELETE needs approval, /boom cannot be evaluated."""
    assert isinstance(operation, HttpRequest)
    if operation.path.startswith("/secret"):
        return Decision.deny("no-secrets", "secrets are off limits")
    if operation.path == "/boom":
        raise RuntimeError("the engine broke")
    if operation.method == "DELETE":
        return Decision(Verdict.APPROVE, "deletes", "deletes need approval", approval=ApprovalSpec(("ops",)))
    return Decision(Verdict.ALLOW, "reads")


def session(dialect: FakeDialect | None = None, server_name: str | None = None,
            upstream_authority: str | None = None) -> HttpSession:
    return HttpSession(dialect or FakeDialect(), Judging(decide), server_name=server_name,
                       credential_headers=CREDENTIAL, upstream_authority=upstream_authority)


def talk(s: HttpSession | None = None) -> Script:
    s = s or session()
    return script(s, s.start())


def upstream(request_line: str, *headers: str, host: str = "api") -> bytes:
    """The head the upstream receives: Host first, the kept headers, the credential."""
    lines = "".join(f"{header}\r\n" for header in headers)
    return f"{request_line}\r\nhost: {host}\r\n{lines}".encode("latin-1") + UPSTREAM_TAIL


def agent_reply(status: int, message: str, close: bool = False) -> bytes:
    reason = http.HTTPStatus(status).phrase
    body = message.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


def record(method: str, target: str, query: list[list[str]] | None = None,
           host: str | None = "api") -> dict[str, object]:
    """The audit operation of a request the fake dialect read."""
    path = target.partition("?")[0]
    return {"kind": "http", "method": method, "host": host, "path": path, "query": query or [], "target": target}


# ---- keep-alive, framing, streaming ---------------------------------------------------------

def test_requests_on_one_connection_are_each_judged_forwarded_and_recorded() -> None:
    s = session()
    (talk(s)
     .agent(b"GET /a?x=1&x=2 HTTP/1.1\r\nHost: api\r\nUser-Agent: t\r\n\r\n")
     .expect_server(upstream("GET /a?x=1&x=2 HTTP/1.1", "user-agent: t"), b"\r\n", stream=0)
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", stream=1)
     .expect_record("reads", "allow", operation=record("GET", "/a?x=1&x=2", [["x", "1"], ["x", "2"]]),
                    outcome={"status": 200, "bytes_up": 0, "bytes_down": 2, "error": None})
     .agent(b"POST /b HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc")
     .expect_server(upstream("POST /b HTTP/1.1"), b"content-length: 3\r\n\r\n", b"abc")
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_up": 3})
     .done())
    assert (s.error, s.fault, s.cut_short) == (None, None, False)


def test_chunked_bodies_are_reframed_both_ways_and_trailers_dropped() -> None:
    (talk()
     .agent(b"PUT /c HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
     .expect_server(upstream("PUT /c HTTP/1.1"), b"transfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n")
     .agent(b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
     .expect_server(b"2\r\nde\r\n", b"0\r\n\r\n")
     .server(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nmade\r\n0\r\n\r\n")
     .expect_agent(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", b"4\r\nmade\r\n")
     .expect_record("reads", "allow", outcome={"status": 201, "bytes_up": 5, "bytes_down": 4})
     .expect_agent(b"0\r\n\r\n")
     .done())


def test_a_watch_streams_each_event_as_it_comes() -> None:
    (talk()
     .agent(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /api/v1/pods?watch=true HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
     .server(b"8\r\n{\"a\":1}\n\r\n")
     .expect_agent(b"8\r\n{\"a\":1}\n\r\n")
     .server(b"8\r\n{\"a\":2}")
     .expect_agent(b"7\r\n{\"a\":2}\r\n")
     .server(b"\n\r\n")
     .expect_agent(b"1\r\n\n\r\n")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 16}, error="incomplete chunked read")
     .expect_close(says="the upstream broke HTTP/1.1")
     .done())


def test_an_agent_that_leaves_a_watch_ends_the_flow_and_the_watch_is_recorded_then() -> None:
    (talk()
     .agent(b"GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /api/v1/pods?watch=true HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"a\":1}\n\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"8\r\n{\"a\":1}\n\r\n")
     .ends(Side.CLIENT)
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 8,
                                               "error": "the client closed the connection before the response ended"})
     .expect_close(DONE)
     .done())


def test_a_close_delimited_response_ends_with_the_upstream_and_closes_the_flow() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.0 200 OK\r\n\r\nall of it")
     .expect_agent(b"HTTP/1.1 200 OK\r\nconnection: close\r\nTransfer-Encoding: chunked\r\n\r\n", b"9\r\nall of it\r\n")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 9, "error": None})
     .expect_agent(b"0\r\n\r\n")
     .expect_close(DONE)
     .done())


def test_head_and_not_modified_answers_have_no_body() -> None:
    (talk()
     .agent(b"HEAD /h HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("HEAD /h HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 0})
     .agent(b"GET /h HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /h HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
     .expect_agent(b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n")
     .expect_record("reads", "allow", outcome={"status": 304})
     .done())


def test_a_request_that_names_no_host_is_refused_when_the_resource_names_none() -> None:
    (talk()
     .agent(b"GET /old HTTP/1.0\r\n\r\n")
     .expect_record(PROTOCOL_RULE, "deny", operation={"method": "GET", "target": "/old"})
     .expect_agent(agent_reply(400, "the request names no host (no Host header)", close=True))
     .expect_close(says="names no host")
     .done())


def test_a_request_without_host_goes_upstream_with_the_resource_authority() -> None:
    (talk(session(upstream_authority="kube.internal:6443"))
     .agent(b"GET /old HTTP/1.0\r\n\r\n")
     .expect_server(upstream("GET /old HTTP/1.1", host="kube.internal:6443"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\n\r\nbye")
     .expect_agent(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"bye")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", operation=record("GET", "/old", host=None))
     .expect_close(DONE)
     .done())


def test_pipelined_requests_wait_for_the_response_before_them() -> None:
    (talk()
     .agent(b"GET /1 HTTP/1.1\r\nHost: api\r\n\r\nGET /secret HTTP/1.1\r\nHost: api\r\n\r\nGET /3 HTTP/1.1\r\nHo")
     .expect_server(upstream("GET /1 HTTP/1.1"), b"\r\n")
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow", operation=record("GET", "/1"))
     .expect_record("no-secrets", "deny", operation=record("GET", "/secret"))
     .expect_agent(agent_reply(403, DENIED))
     .agent(b"st: api\r\n\r\n")
     .expect_server(upstream("GET /3 HTTP/1.1"), b"\r\n")
     .done())


def test_a_head_sent_a_byte_at_a_time_is_read_in_linear_time() -> None:
    s = session()
    data = b"GET / HTTP/1.1\r\nHost: api\r\nX-Pad: " + b"p" * 60_000 + b"\r\n\r\n"
    for index in range(len(data) - 1):
        assert s.receive(Side.CLIENT, data[index:index + 1]) == []
    (script(s, s.receive(Side.CLIENT, data[-1:]))
     .expect_server(upstream("GET / HTTP/1.1", "x-pad: " + "p" * 60_000), b"\r\n")
     .done())


def test_bytes_the_upstream_sends_after_its_response_close_the_flow_instead_of_answering_the_next_request() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow", outcome={"status": 200})
     .expect_close(DONE)
     .done())
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow")
     .server(b"HTTP/1.1 200 OK\r\n")
     .expect_close("the upstream sent bytes while no request was outstanding")
     .done())


# ---- request heads that two parsers could read differently ----------------------------------

SMUGGLING = {
    "content-length and transfer-encoding":
        (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         "both Content-Length and Transfer-Encoding"),
    "two equal content-lengths":
        (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
         "more than one Content-Length"),
    "a content-length list": (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 1, 1\r\n\r\nx", "is not a number"),
    "a signed content-length": (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: +1\r\n\r\nx", "is not a number"),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
                 "obsolete line folding"),
    "a bare LF": (b"GET / HTTP/1.1\nHost: api\n\n", "bare LF"),
    "a bare LF inside a header line": (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\nX-B: 2\r\n\r\n", "bare LF"),
    "a bare CR": (b"GET / HTTP/1.1\r\nHost: api\rX-A: 1\r\n\r\n", "bare CR"),
    "transfer-encoding gzip": (b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip\r\n\r\n", "only 'chunked'"),
    "transfer-encoding gzip, chunked":
        (b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "only 'chunked'"),
    "two transfer-encodings": (b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n", "only 'chunked'"),
    "transfer-encoding from HTTP/1.0":
        (b"POST / HTTP/1.0\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n", "in an HTTP/1.0 request"),
    "a space before the colon": (b"GET / HTTP/1.1\r\nHost: api\r\nContent-Length : 0\r\n\r\n", "malformed header"),
    "a NUL in a value": (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: a\x00b\r\n\r\n", "control character"),
    "a control character in a value": (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: a\x01b\r\n\r\n", "control character"),
    "no host": (b"GET / HTTP/1.1\r\n\r\n", "exactly one Host"),
    "two hosts": (b"GET / HTTP/1.1\r\nHost: api\r\nHost: evil\r\n\r\n", "exactly one Host"),
    "a host with a path": (b"GET / HTTP/1.1\r\nHost: api/x\r\n\r\n", "malformed Host"),
    "two spaces in the request line": (b"GET  / HTTP/1.1\r\nHost: api\r\n\r\n", "malformed request line"),
    "a leading empty line": (b"\r\nGET / HTTP/1.1\r\nHost: api\r\n\r\n", "malformed request line"),
    "a dot segment": (b"GET /a/../secret HTTP/1.1\r\nHost: api\r\n\r\n", "dot segment"),
    "an encoded slash": (b"GET /a%2Fb HTTP/1.1\r\nHost: api\r\n\r\n", "encoded '/'"),
    "an absolute-form for another host":
        (b"GET http://evil/x HTTP/1.1\r\nHost: api\r\n\r\n", "authority 'evil' and Host 'api' differ"),
    "CONNECT": (b"CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n\r\n", "CONNECT is not supported"),
}


def refused_head(data: bytes, status: int, says: str) -> None:
    """The agent sends `data`: answered `status` with a message containing `says`, recorded
    under PROTOCOL_RULE, the connection closed, nothing forwarded."""
    s = session()
    talk_ = talk(s).agent(data)
    message = (s.error or "").removeprefix("bad request: ")
    assert says in message
    (talk_
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": status, "error": message})
     .expect_agent(agent_reply(status, message, close=True))
     .expect_close(f"bad request: {message}")
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")  # closed: nothing more is read
     .done())
    assert (s.fault, s.cut_short) == (Fault.CLIENT, False)  # answered whole: the connection closes gracefully


@pytest.mark.parametrize("name", SMUGGLING)
def test_a_request_head_servers_could_read_differently_is_refused_and_nothing_forwarded(name: str) -> None:
    refused_head(*SMUGGLING[name][:1], 400, SMUGGLING[name][1])


@pytest.mark.parametrize(("data", "says"), [
    (b"GET / HTTP/1.1\r\nHost: api\nX: 1\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: api\rX: 1\r\n\r\n", "bare CR"),
])
def test_a_bare_line_ending_is_found_when_the_head_comes_a_byte_at_a_time(data: bytes, says: str) -> None:
    s = session()
    commands = []
    for index in range(len(data)):
        commands = s.receive(Side.CLIENT, data[index:index + 1])
        if commands:
            break
    assert s.error is not None and says in s.error
    assert index == data.index(b"X") - (1 if says == "bare LF" else 0)  # refused at the byte that shows it


def test_a_header_section_over_64_kib_is_refused_431_before_it_ends() -> None:
    s = session()
    talk_ = talk(s).agent(b"GET / HTTP/1.1\r\nHost: api\r\n")
    for _ in range(160):  # 10 MB in 64 KiB pieces: refused at the first piece past the limit
        talk_ = talk_.agent(b"X-Big: " + b"a" * (64 * 1024) + b"\r\n")
    message = "the request head is larger than 65536 bytes"
    (talk_
     .expect_record(PROTOCOL_RULE, "deny", operation={"method": "GET", "target": "/"}, outcome={"status": 431})
     .expect_agent(agent_reply(431, message, close=True))
     .expect_close(f"bad request: {message}")
     .done())


def test_a_request_line_over_8_kib_is_refused_414() -> None:
    refused_head(b"GET /" + b"a" * 9000, 414, "the request line is longer than 8192 bytes")


def test_a_host_that_is_not_the_tls_server_name_is_refused_421() -> None:
    s = session(server_name="api.example.com")
    (talk(s)
     .agent(b"GET / HTTP/1.1\r\nHost: API.example.com:443\r\n\r\n")  # the same host: case and port aside
     .expect_server(upstream("GET / HTTP/1.1", host="API.example.com:443"), b"\r\n"))
    message = "Host 'evil.example.com' is not the TLS server name 'api.example.com'"
    (talk(session(server_name="api.example.com"))
     .agent(b"GET / HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": 421})
     .expect_agent(agent_reply(421, message, close=True))
     .expect_close(f"bad request: {message}")
     .done())


def test_an_absolute_form_target_is_forwarded_in_origin_form() -> None:
    (talk()
     .agent(b"GET http://API:80/x?y=1 HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /x?y=1 HTTP/1.1", host="API"), b"\r\n")
     .done())


# ---- the policy's answers --------------------------------------------------------------------

DENIED = "permission denied by interceptor rule 'no-secrets': secrets are off limits"


def test_a_denied_request_gets_403_naming_the_rule_and_the_connection_goes_on() -> None:
    (talk()
     .agent(b"GET /secret/x HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_record("no-secrets", "deny", operation=record("GET", "/secret/x"),
                    outcome={"status": 403, "error": DENIED})
     .expect_agent(agent_reply(403, DENIED))
     .agent(b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /ok HTTP/1.1"), b"\r\n")
     .done())


def test_a_refusal_of_a_head_request_has_no_body() -> None:
    head = agent_reply(403, DENIED)
    (talk()
     .agent(b"HEAD /secret HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_record("no-secrets", "deny")
     .expect_agent(head[:head.index(b"\r\n\r\n") + 4])
     .done())


def test_a_request_refused_before_it_was_an_operation_keeps_256_characters_of_its_target() -> None:
    target = "/invalid?" + "q=1&" * 200
    (talk()
     .agent(f"GET {target} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
     .expect_record(PROTOCOL_RULE, "deny", operation={"method": "GET", "target": target[:256]})
     .expect_agent(agent_reply(400, "the dialect cannot read this request"))
     .done())


def test_a_denied_request_whose_body_was_not_read_closes_the_connection() -> None:
    (talk()
     .agent(b"POST /secret HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\n")
     .expect_record("no-secrets", "deny")
     .expect_agent(agent_reply(403, "permission denied by interceptor rule 'no-secrets': secrets are off limits",
                               close=True))
     .expect_close(DONE)
     .agent(b"0123456789")
     .done())


def test_a_policy_that_cannot_be_evaluated_denies() -> None:
    message = "permission denied by interceptor rule 'policy-error': policy evaluation failed: the engine broke"
    (talk()
     .agent(b"GET /boom HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_record("policy-error", "deny", outcome={"status": 403})
     .expect_agent(agent_reply(403, message))
     .done())


def test_a_request_the_dialect_cannot_read_is_refused_400() -> None:
    (talk()
     .agent(b"GET /invalid HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": 400})
     .expect_agent(agent_reply(400, "the dialect cannot read this request"))
     .done())


def test_a_request_held_for_approval_runs_once_approved() -> None:
    (talk()
     .agent(b"DELETE /pods/x HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_hold("deletes")
     .waiting("R1")
     .approve("R1", approver="bob")
     .expect_server(upstream("DELETE /pods/x HTTP/1.1"), b"\r\n", stream=0)
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("deletes", "approve", outcome={"status": 200, "approval": {
         "approved": True, "request_id": "R1", "approver": "bob", "reason": ""}})
     .done())


def test_a_request_not_approved_gets_403_and_the_connection_goes_on() -> None:
    message = "request not approved (rule 'deletes'): expired"
    (talk()
     .agent(b"DELETE /pods/x HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_hold("deletes")
     .deny("expired")
     .expect_record("deletes", "deny", outcome={"status": 403, "error": message})
     .expect_agent(agent_reply(403, message))
     .agent(b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /ok HTTP/1.1"), b"\r\n")
     .done())


def test_a_held_request_abandoned_by_the_flow_is_recorded_as_never_run() -> None:
    s = session()
    talk(s).agent(b"DELETE /pods/x HTTP/1.1\r\nHost: api\r\n\r\n").expect_hold("deletes").done()
    abandoned = s.abandoned(0, "R1", "the client disconnected")
    assert abandoned is not None
    assert (abandoned.decision.verdict, abandoned.decision.rule) == (Verdict.DENY, "deletes")
    assert abandoned.outcome["error"] == "the client disconnected"
    assert abandoned.outcome["approval"] == {"approved": False, "request_id": "R1",
                                             "reason": "the client disconnected", "withdrawn": True}
    assert s.abandoned(0, "R1", "again") is None
    assert s.unrecorded("flow ended") == []


def test_a_held_request_the_handler_ends_is_recorded_denied_once() -> None:
    s = session()
    talk(s).agent(b"DELETE /pods/x HTTP/1.1\r\nHost: api\r\n\r\n").expect_hold("deletes").done()
    [unrecorded] = s.unrecorded("connection reset")
    assert (unrecorded.decision.verdict, unrecorded.decision.rule) == (Verdict.DENY, "deletes")
    assert unrecorded.outcome["error"] == "connection reset"
    assert s.abandoned(0, "R1", "the client disconnected") is None


def test_a_request_in_flight_when_the_flow_ends_is_recorded_once() -> None:
    s = session()
    talk(s).agent(b"GET /slow HTTP/1.1\r\nHost: api\r\n\r\n").expect_server(upstream("GET /slow HTTP/1.1"), b"\r\n")
    [unrecorded] = s.unrecorded("timed out")
    assert unrecorded.outcome["error"] == "timed out" and unrecorded.decision.rule == "reads"
    assert s.unrecorded("timed out") == []


def test_an_upstream_gone_while_a_request_was_held_answers_502_once_approved() -> None:
    message = "the upstream closed the connection before the request was sent"
    (talk()
     .agent(b"DELETE /pods/x HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_hold("deletes")
     .ends(Side.SERVER)
     .approve("R1")
     .expect_record("deletes", "approve", outcome={"status": 502, "error": message})
     .expect_agent(agent_reply(502, message, close=True))
     .expect_close(message)
     .done())


def test_an_operation_with_its_own_method_keeps_it_in_the_record_beside_the_http_method() -> None:
    class Rpc(FakeDialect):
        def audit_operation(self, operation: Operation) -> dict[str, object]:
            return {"kind": "mcp", "method": "tools/call", "tool": "search"}

    (talk(session(Rpc()))
     .agent(b"POST /mcp HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\n{}")
     .expect_server(upstream("POST /mcp HTTP/1.1"), b"content-length: 2\r\n\r\n", b"{}")
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow", operation={"kind": "mcp", "method": "tools/call", "tool": "search",
                                                 "http_method": "POST", "target": "/mcp"})
     .done())


# ---- headers ---------------------------------------------------------------------------------

def test_credential_identity_override_and_hop_by_hop_headers_never_reach_the_upstream() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer agent\r\nProxy-Authorization: Basic x\r\n"
            b"Impersonate-User: admin\r\nImpersonate-Group: system:masters\r\nImpersonate-Uid: 0\r\n"
            b"Impersonate-Extra-Scopes: all\r\nX-Remote-User: admin\r\nX-Remote-Group: system:masters\r\n"
            b"X-Remote-Extra-Scopes: all\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\n"
            b"X-Forwarded-User: admin\r\nX-Real-IP: 10.0.0.1\r\nX-Auth-Request-User: admin\r\nRemote-User: admin\r\n"
            b"X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /secret\r\nX-Rewrite-URL: /secret\r\n"
            b"Impersonate_User: admin\r\nX_Remote_User: admin\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
            b"Accept-Encoding: gzip\r\nCookie: session=1\r\nAccept: application/json\r\nRange: bytes=0-1\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1", "cookie: session=1", "accept: application/json", "range: bytes=0-1"),
                    b"\r\n")
     .done())


def test_header_values_with_obs_text_pass_as_they_came() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\nX-Name: caf\xe9\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1", "x-name: caf\xe9"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nX-Name: \xff\r\nContent-Length: 0\r\n\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\nx-name: \xff\r\ncontent-length: 0\r\n\r\n")
     .expect_record("reads", "allow")
     .done())


def test_the_agents_own_credential_headers_and_websocket_tokens_never_reach_the_upstream() -> None:
    s = HttpSession(FakeDialect(), Judging(decide), server_name=None,
                    credential_headers=(("X-Api-Key", "resource-key"),))
    (talk(s)
     .agent(b"GET /ws HTTP/1.1\r\nHost: api\r\nX-Api-Key: agent-1\r\nX_Api_Key: agent-2\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.dG9rZW4, "
            b"v4.channel.k8s.io\r\n\r\n")
     .expect_server(b"GET /ws HTTP/1.1\r\nhost: api\r\nsec-websocket-protocol: v4.channel.k8s.io\r\n"
                    b"X-Api-Key: resource-key\r\naccept-encoding: identity\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\n\r\n")
     .done())


# ---- bodies read for judging, Expect: 100-continue --------------------------------------------

def test_a_body_the_dialect_reads_is_judged_whole_after_a_100_continue() -> None:
    dialect = FakeDialect(limit=10)
    (talk(session(dialect))
     .agent(b"POST /rpc HTTP/1.1\r\nHost: api\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
     .expect_agent(b"HTTP/1.1 100 Continue\r\n\r\n", stream=1)
     .agent(b"he")
     .agent(b"llo")
     .expect_server(upstream("POST /rpc HTTP/1.1"), b"content-length: 5\r\n\r\n", b"hello")
     .done())
    assert dialect.bodies == [b"hello"]


def test_expect_100_continue_is_answered_after_the_request_is_allowed_and_never_forwarded() -> None:
    (talk()
     .agent(b"PUT /f HTTP/1.1\r\nHost: api\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
     .expect_server(upstream("PUT /f HTTP/1.1"), b"content-length: 3\r\n\r\n")
     .expect_agent(b"HTTP/1.1 100 Continue\r\n\r\n")
     .agent(b"abc")
     .expect_server(b"abc")
     .server(b"HTTP/1.1 100 Continue\r\n\r\n", OK)  # the upstream's own 100 is not relayed: the agent had one
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow", outcome={"bytes_up": 3})
     .done())


def test_a_body_longer_than_the_dialect_reads_is_refused_413() -> None:
    message = "the request body is larger than the 4 bytes the enforcer reads to judge it"
    (talk(session(FakeDialect(limit=4)))
     .agent(b"POST /rpc HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\n")
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": 413})
     .expect_agent(agent_reply(413, message, close=True))
     .expect_close(DONE)
     .done())
    (talk(session(FakeDialect(limit=4)))
     .agent(b"POST /rpc HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
     .agent(b"3\r\ndef\r\n")
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": 413})
     .expect_agent(agent_reply(413, message, close=True))
     .expect_close(DONE)
     .done())


# ---- broken bodies ---------------------------------------------------------------------------

def test_a_malformed_chunk_from_the_agent_is_refused_and_the_upstream_never_gets_an_end() -> None:
    message = "malformed request body: illegal chunk header: bytearray(b'zz\\r\\n')"
    (talk()
     .agent(b"POST /u HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
     .expect_server(upstream("POST /u HTTP/1.1"), b"transfer-encoding: chunked\r\n\r\n", b"3\r\nabc\r\n")
     .agent(b"zz\r\nnot a chunk\r\n")
     .expect_record(PROTOCOL_RULE, "deny", operation=record("POST", "/u"),
                    outcome={"status": 400, "bytes_up": 3, "error": message})
     .expect_agent(agent_reply(400, message, close=True))
     .expect_close(message)
     .done())


def test_an_agent_that_ends_mid_chunk_is_recorded_and_the_flow_closed() -> None:
    message = ("malformed request body: peer closed connection without sending complete message body "
               "(incomplete chunked read)")
    (talk()
     .agent(b"POST /u HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
     .expect_server(upstream("POST /u HTTP/1.1"), b"transfer-encoding: chunked\r\n\r\n", b"2\r\nab\r\n")
     .ends(Side.CLIENT)
     .expect_record(PROTOCOL_RULE, "deny", outcome={"status": 400, "bytes_up": 2, "error": message})
     .expect_agent(agent_reply(400, message, close=True))
     .expect_close(message)
     .done())


def test_a_truncated_chunk_from_the_upstream_ends_the_flow_with_the_response_cut_short() -> None:
    s = session()
    (talk(s)
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
     .expect_agent(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nab\r\n")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 2}, error="incomplete chunked read")
     .expect_close(says="incomplete chunked read")
     .done())
    assert (s.fault, s.cut_short) == (Fault.SERVER, True)


def test_an_upstream_that_breaks_http_before_answering_gets_the_agent_a_502() -> None:
    s = session()
    (talk(s)
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(b"SSH-2.0-OpenSSH\r\n\r\n")
     .expect_record("reads", "allow", outcome={"status": 502}, error="the upstream broke HTTP/1.1")
     .expect_agent(agent_reply(502, s.error or "", close=True))
     .expect_close(s.error)
     .done())
    assert (s.fault, s.cut_short) == (Fault.SERVER, False)


def test_an_upstream_that_closes_before_answering_gets_the_agent_a_502() -> None:
    s = session()
    (talk(s)
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", outcome={"status": 502})
     .expect_agent(agent_reply(502, s.error or "", close=True))
     .expect_close(s.error)
     .done())


def test_informational_answers_other_than_100_reach_an_http_1_1_agent() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
     .expect_agent(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
     .done())


def test_an_upstream_response_with_both_framings_is_reframed_by_its_transfer_encoding() -> None:
    (talk()
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nhi\r\n")
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 2})
     .expect_agent(b"0\r\n\r\n")
     .done())


# ---- upgrades --------------------------------------------------------------------------------

EXEC = (b"GET /api/v1/namespaces/a/pods/p/exec?command=sh HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\n"
        b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
EXEC_UP = upstream("GET /api/v1/namespaces/a/pods/p/exec?command=sh HTTP/1.1",
                   "x-stream-protocol-version: v4.channel.k8s.io") + b"connection: upgrade\r\nupgrade: SPDY/3.1\r\n\r\n"


def test_an_upgrade_is_judged_then_relayed_with_the_early_bytes_and_its_byte_counts_recorded() -> None:
    (talk()
     .agent(EXEC, b"early")
     .expect_server(EXEC_UP)
     .agent(b"-more")
     .server(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nhello")
     .expect_agent(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: SPDY/3.1\r\n\r\n")
     .expect_server(b"early-more", stream=0)
     .expect_agent(b"hello", stream=1)
     .agent(b"ls\n")
     .expect_server(b"ls\n")
     .server(b"a b c\n")
     .expect_agent(b"a b c\n")
     .ends(Side.CLIENT)
     .expect(Shutdown(Side.SERVER, stream=0))
     .server(b"bye")
     .expect_agent(b"bye")
     .ends(Side.SERVER)
     .expect_record("reads", "allow", outcome={"status": 101, "error": None, "upgrade": {
         "protocol": "spdy/3.1", "bytes_up": 13, "bytes_down": 14}})
     .expect_close(DONE)
     .done())


def test_a_websocket_upgrade_is_relayed_and_other_upgrades_are_dropped() -> None:
    (talk()
     .agent(b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
     .expect_server(upstream("GET /ws HTTP/1.1", "sec-websocket-key: k", "sec-websocket-version: 13"),
                    b"connection: upgrade\r\nupgrade: websocket\r\n\r\n")
     .server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: a\r\n\r\n")
     .expect_agent(b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: a\r\nconnection: upgrade\r\n"
                   b"upgrade: websocket\r\n\r\n")
     .agent(b"\x81\x00")
     .expect_server(b"\x81\x00")
     .done())
    (talk()  # h2c would leave HTTP/1.1, and its requests unjudged: the upstream never sees the offer
     .agent(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
     .expect_server(upstream("GET / HTTP/1.1"), b"\r\n")
     .server(OK)
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
     .expect_record("reads", "allow")
     .agent(b"GET /2 HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /2 HTTP/1.1"), b"\r\n")
     .done())


def test_an_upgrade_the_upstream_refuses_is_answered_then_closed_and_the_early_bytes_dropped() -> None:
    (talk()
     .agent(EXEC, b"early")
     .expect_server(EXEC_UP)
     .server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
     .expect_agent(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno")
     .expect_record("reads", "allow", outcome={"status": 403})
     .expect_close(DONE)
     .done())


def test_an_upgrade_whose_decision_masks_or_to_another_protocol_is_not_relayed() -> None:
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nout"
    message = ("rule(s) of 'reads' mask this response, but it switches to spdy/3.1, a stream no mask applies to; "
               "withheld")
    (talk(session(FakeDialect(filter=Upper())))
     .agent(EXEC)
     .expect_server(EXEC_UP)
     .server(switched)
     .expect_record("reads", "deny", outcome={"status": 502, "error": message})
     .expect_agent(agent_reply(502, message, close=True))
     .expect_close(DONE)
     .done())
    message = "the upstream switched to 'h2c', not the 'spdy/3.1' asked for"
    (talk()
     .agent(EXEC)
     .expect_server(EXEC_UP)
     .server(switched.replace(b"SPDY/3.1", b"h2c"))
     .expect_record("reads", "allow", outcome={"status": 502, "error": message})
     .expect_agent(agent_reply(502, message, close=True))
     .expect_close(message)
     .done())


def test_too_many_early_bytes_after_an_upgrade_request_end_the_flow() -> None:
    (talk()
     .agent(EXEC)
     .expect_server(EXEC_UP)
     .agent(b"x" * (64 * 1024 + 1))
     .expect_record("reads", "allow", error="more than 65536 bytes after an upgrade request")
     .expect_close(says="more than 65536 bytes after an upgrade request")
     .done())
    s = session()
    (talk(s)  # sent with the request, in one piece
     .agent(EXEC, b"x" * (64 * 1024 + 1))
     .expect_server(EXEC_UP)
     .expect_record("reads", "allow", error="more than 65536 bytes after an upgrade request")
     .expect_close(says="more than 65536 bytes after an upgrade request")
     .server(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
     .done())
    assert (s.fault, s.cut_short) == (Fault.CLIENT, True)


def test_a_denied_upgrade_is_never_forwarded() -> None:
    (talk()
     .agent(EXEC.replace(b"/api/v1/namespaces", b"/secret"), b"early")
     .expect_record("no-secrets", "deny")
     .expect_agent(agent_reply(403, DENIED))
     .done())


# ---- response filters ------------------------------------------------------------------------

def test_a_filtered_body_goes_chunked_without_content_length_or_digests_and_counts_its_masks() -> None:
    (talk(session(FakeDialect(filter=Upper())))
     .agent(b"GET /s HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /s HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nETag: \"md5-of-it\"\r\n"
             b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\nDigest: sha-256=X48E9q\r\n\r\nabc")
     .expect_agent(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
                   b"3\r\nABC\r\n")
     .server(b"def")
     .expect_agent(b"3\r\nDEF\r\n")
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 11, "masked": 2})
     .expect_agent(b"5\r\n<end>\r\n0\r\n\r\n")
     .done())


def test_a_filtered_body_to_an_http_1_0_agent_is_close_delimited() -> None:
    (talk(session(FakeDialect(filter=Upper())))
     .agent(b"GET /s HTTP/1.0\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /s HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
     .expect_agent(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"ABC")
     .expect_record("reads", "allow", outcome={"masked": 1})
     .expect_agent(b"<end>")
     .expect_close(DONE)
     .done())


def masking(decision: Decision) -> Decision:
    return Decision(Verdict.ALLOW, decision.rule, masks=(MaskSpec(paths=("$.data",)),))


def test_a_masked_request_asks_for_the_whole_body_and_a_partial_answer_is_refused() -> None:
    message = "a partial response (206, Content-Range) cannot be masked"
    s = HttpSession(FakeDialect(filter=Upper()), Judging(lambda op: masking(decide(op))), server_name=None,
                    credential_headers=CREDENTIAL)
    (talk(s)
     .agent(b"GET /s HTTP/1.1\r\nHost: api\r\nRange: bytes=10-20\r\nIf-Range: \"x\"\r\n\r\n")
     .expect_server(upstream("GET /s HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-20/100\r\nContent-Length: 11\r\n\r\n")
     .expect_record("reads", "deny", outcome={"status": 502, "error": message})
     .expect_agent(agent_reply(502, message, close=True))
     .expect_close(DONE)
     .done())


def test_a_response_that_cannot_be_masked_is_answered_502_before_its_head() -> None:
    message = "masks cannot be applied to application/x-gzip"
    (talk(session(FakeDialect(filter_error=True)))
     .agent(b"GET /s HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /s HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc")
     .expect_record("reads", outcome={"status": 502, "error": message})
     .expect_agent(agent_reply(502, message, close=True))
     .expect_close(DONE)
     .done())


def test_a_masking_error_mid_body_cuts_the_response_short_and_closes() -> None:
    s = session(FakeDialect(filter=Upper(fail_after=1)))
    (talk(s)
     .agent(b"GET /s HTTP/1.1\r\nHost: api\r\n\r\n")
     .expect_server(upstream("GET /s HTTP/1.1"), b"\r\n")
     .server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
     .expect_agent(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nABC\r\n")
     .server(b"3\r\ndef\r\n")
     .expect_record("reads", "allow", outcome={"status": 200, "bytes_down": 3, "masked": 1},
                    error="cannot mask this piece")
     .expect_close("masking failed, the response is cut short: cannot mask this piece")
     .done())
    assert s.error == "masking failed, the response is cut short: cannot mask this piece"
    assert (s.fault, s.cut_short) == (Fault.MASKING, True)


# ---- any bytes: never an exception, never an unjudged request upstream -----------------------

REQUESTS = (b"GET /a?x=1 HTTP/1.1\r\nHost: api\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            b"PUT /c HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"DELETE /d HTTP/1.1\r\nHost: api\r\n\r\n", b"GET /secret HTTP/1.1\r\nHost: api\r\n\r\n",
            b"HEAD /h HTTP/1.0\r\n\r\n")
RESPONSES = (OK, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
             b"HTTP/1.0 200 OK\r\n\r\nbody", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")


def mutated(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` with a few bytes deleted, inserted or changed, cut into random pieces."""
    changed = bytearray(data)
    for _ in range(rng.randint(0, 6)):
        at = rng.randint(0, len(changed))
        kind = rng.randint(0, 2)
        if kind == 0:
            del changed[at:at + 1]
        elif kind == 1:
            changed.insert(at, rng.choice(b"\r\n \t:;%/.\x00\x7f\xff0aZ,"))
        else:
            changed[at:at] = changed[rng.randint(0, len(changed)):][:20]
    cuts = sorted(rng.sample(range(1, len(changed)), min(3, len(changed) - 1))) if len(changed) > 1 else []
    return [bytes(changed[a:b]) for a, b in zip([0, *cuts], [*cuts, len(changed)])]


def upstream_requests(data: bytes) -> list[tuple[str, str]]:
    """The (method, path) of each request in what the upstream received, read by a strict
    h11 server; AssertionError when the bytes are not HTTP/1.1."""
    server, requests = h11.Connection(h11.SERVER), list[tuple[str, str]]()
    if not data:
        return requests
    server.receive_data(data)
    for _ in range(1000):
        event = server.next_event()
        if isinstance(event, h11.Request):
            requests.append((event.method.decode(), parse_target(event.method.decode(), event.target.decode()).path))
        elif isinstance(event, h11.EndOfMessage):
            server.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            server.send(h11.EndOfMessage())
            server.start_next_cycle()
        elif event is h11.NEED_DATA:
            return requests
    raise AssertionError("the upstream's bytes never end")


@pytest.mark.parametrize("seed", range(200))
def test_mutated_conversations_raise_nothing_and_send_upstream_only_allowed_requests(seed: int) -> None:
    rng = random.Random(seed)
    allowed: list[tuple[str, str]] = []

    def judge(operation: Operation) -> Decision:
        decision = decide(operation)
        if decision.verdict is Verdict.ALLOW and isinstance(operation, HttpRequest):
            allowed.append((operation.method, operation.path))
        return decision

    s = HttpSession(FakeDialect(limit=rng.choice([0, 4, 100])), Judging(judge), server_name=None)
    sent = bytearray()
    for _ in range(rng.randint(1, 8)):
        side, data = (Side.CLIENT, rng.choice(REQUESTS)) if rng.random() < 0.5 else (Side.SERVER, rng.choice(RESPONSES))
        for piece in mutated(rng, data):
            sent += b"".join(bytes(p) for c in s.receive(side, piece)
                             if isinstance(c, Send) and c.to is Side.SERVER for p in c.data)
    s.unrecorded("the test ended")
    for request in upstream_requests(bytes(sent)):
        assert request in allowed
        allowed.remove(request)


@pytest.mark.parametrize("seed", range(20))
def test_read_head_reads_every_header_line_as_the_line_by_line_check_does(seed: int) -> None:
    """read_head takes a well-formed header section in one pass and any other line by line:
    both read the same headers, and a head one of them refuses the other refuses too."""
    rng = random.Random(seed)
    pieces = [b"a", b"B", b"-", b":", b" ", b"\t", b"\x01", b"\x7f", b"\x80", b"\xff", b"=", b"\x00", b"~"]
    for _ in range(2000):
        lines = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))]
        raw = b"GET / HTTP/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
        try:
            expected: object = tuple(_field(line) for line in lines)
        except HeadError:
            expected = HeadError
        try:
            got: object = read_head(raw).headers
        except HeadError:  # no piece spells Host, Content-Length or Transfer-Encoding: a line's error
            got = HeadError
        assert got == expected, raw
