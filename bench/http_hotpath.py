"""What one keep-alive HTTP request costs the daemon's event loop in Python, part by part,
without sockets: the sans-IO HTTP session (the `http` dialect, a judge that allows: the
request head checked and read by h11, forwarded, its 200 JSON answer relayed back, the
record built), the pieces of the session alone (the byte-level head checks, the target,
h11 reading the head), the policy decision, and the audit event built and scrubbed. Set
beside the daemon's measured CPU per request (bench.http), the rest is the event loop,
the relay and the kernel."""

from __future__ import annotations

import ipaddress
import time

import h11

from bench.hotpath import _per_op
from bench.stats import summary
from interceptor.audit.event import AuditEvent
from interceptor.audit.scrub import scrub_event
from interceptor.decision import Decision, Verdict
from interceptor.enforcer.judge import FlowJudge
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.commands import Command, Record, Send, Side
from interceptor.handlers.http.headers import MAX_HEAD, head_end, read_head
from interceptor.handlers.http.plain import PlainDialect
from interceptor.handlers.http.session import HttpSession
from interceptor.handlers.http.target import parse_target
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, Request, Subject
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import load_policy_text

HOST = "127.0.0.1:18080"
REQUEST = (f"GET /v1/items/42?fields=name,price&expand=owner HTTP/1.1\r\nHost: {HOST}\r\n"
           "User-Agent: python-httpx/0.28.1\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate\r\n"
           "Connection: keep-alive\r\nX-Request-Id: 8f14e45f-ceea-4671-9a5c-1b2e3f4a5b6c\r\n\r\n").encode()
BODY = b'{"id": 42, "name": "widget", "price": 9.5, "owner": {"id": 7, "name": "ops"}, "tags": ["a", "b"]}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Mon, 30 Nov 2026 08:00:00 GMT\r\n"
            b"cache-control: no-cache\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
POLICY = f"""
version: 1
agents: {{bench: {{unprotected: deny}}}}
resources: {{api: {{protocol: http, addresses: ["{HOST}"]}}}}
rules:
  - {{name: bench-api-reads, effect: allow, agents: [bench], resources: [api], http: {{methods: [GET], paths: ["/v1/*"]}}}}
"""
IDENTITY = Identity("https://idp.example.com/oauth2/default", "agent-bench", "bench-client", None,
                    frozenset({"api.read"}), frozenset({"agents"}), "jti-1", time.time() + 3600)


class _Allow:
    """A judge that allows every request: the session's own cost, without the policy's."""

    decision = Decision(Verdict.ALLOW, "bench-api-reads")

    def decide(self, operation: object) -> Decision:
        return self.decision


def _exchange(session: HttpSession) -> list[Command]:
    """One request and its answer; checks that the request went upstream and the answer back."""
    out = session.receive(Side.CLIENT, REQUEST)
    if not any(isinstance(c, Send) and c.to is Side.SERVER for c in out):
        raise RuntimeError(f"the request was not forwarded: {out!r}")
    back = session.receive(Side.SERVER, RESPONSE)
    if not any(isinstance(c, Record) for c in back) or session.error is not None:
        raise RuntimeError(f"the response was not relayed and recorded: {back!r}")
    return back


def _session() -> HttpSession:
    return HttpSession(PlainDialect(), _Allow(), server_name=None,
                       credential_headers=(("authorization", "Bearer resource-token"),))


def _services() -> tuple[Services, FlowContext]:
    flow = FlowContext("0123456789abcdef", "bench", ProcessInfo(4242, 123456, 0, 0, "/usr/bin/python3",
                                                                 ("python3", "agent.py"), "/interceptor/bench"),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 18080),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 40000), "api")
    judge = FlowJudge(flow, lambda: PolicyEngine(load_policy_text(POLICY)), lambda: IDENTITY, lambda: True)
    return Services(judge=judge, audit=None, resource=None, credentials=None), flow  # type: ignore[arg-type]


def _h11_head() -> None:
    agent = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    agent.receive_data(REQUEST)
    agent.next_event()
    agent.next_event()


def measure(count: int = 20000) -> dict[str, float]:
    """Microseconds per request for each part."""
    session = _session()
    record = next(c for c in _exchange(session) if isinstance(c, Record))
    services, flow = _services()
    engine = PolicyEngine(load_policy_text(POLICY))
    subject = Subject("bench", IDENTITY, flow.process.exe, 0)
    head = read_head(REQUEST)
    target = parse_target(head.method, head.target)
    operation = HttpRequest(head.method, target.path, target.query, HOST)
    engine.decide(Request(subject, "api", operation))

    def event() -> AuditEvent:
        return services.event(flow, "request", record.decision, operation=record.operation, outcome=record.outcome)

    return {
        "http session (sans-IO: GET head in and forwarded, 200 JSON answer relayed, record)":
            _per_op(lambda: _exchange(session), count),
        "  of which: byte-level head checks (head_end, read_head)":
            _per_op(lambda: read_head(REQUEST[:head_end(REQUEST)]), count),
        "  of which: request-target parsed (parse_target)": _per_op(lambda: parse_target(head.method, head.target),
                                                                     count),
        "  of which: h11 reading the head (a fresh server connection)": _per_op(_h11_head, count),
        "policy decision, cached path": _per_op(lambda: engine.decide(Request(subject, "api", operation)), count),
        "audit event built, scrubbed and normalized": _per_op(lambda: scrub_event(event().to_dict()), count),
    }


def run(rounds: int = 3) -> list[dict[str, object]]:
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for part, us in measure().items():
            samples.setdefault(part, []).append(us)
    return [{"part": part, "us": summary(values)} for part, values in samples.items()]


if __name__ == "__main__":
    for row in run(5):
        us = row["us"]
        assert isinstance(us, dict)
        print(f"{us['median']:8.2f} us  (iqr {us['iqr']:.2f})  {row['part']}")
