"""What one prepared-statement transaction costs the daemon's event loop in Python, part by
part, without sockets: the sans-IO PostgreSQL session, the audit record (event, scrub,
canonical JSON, hash chain, rows for the store) and the policy decision (also for the simple
protocol, where each statement comes with its own numbers, and for a statement never seen). Set beside the
daemon's measured CPU per transaction, the rest is the event loop and the kernel."""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections.abc import Callable

from bench.stats import summary
from interceptor.audit.chain import Head, link
from interceptor.audit.event import AuditEvent
from interceptor.audit.scrub import scrub_event
from interceptor.audit.sql import record_rows
from interceptor.decision import Decision, Verdict
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.enforcer.judge import FlowJudge
from interceptor.handlers.base import Services
from interceptor.handlers.postgres.codec import INT16, INT32, message
from interceptor.handlers.commands import Record
from interceptor.handlers.postgres.session import ProxySession
from interceptor.identity.model import Identity
from interceptor.operations import Request, SqlQuery, Subject
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import load_policy_text

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
SIMPLE = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
POLICY = """
version: 1
agents: {bench: {unprotected: deny}}
resources: {db: {protocol: postgres, addresses: ["127.0.0.1:5432"]}}
rules:
  - {name: reads, effect: allow, agents: [bench], resources: [db], sql: {kinds: [select], tables: ["public.*"]}}
"""
IDENTITY = Identity("https://idp.example.com/oauth2/default", "agent-bench", "bench-client", None,
                    frozenset({"db.read"}), frozenset({"agents", "readers"}), "jti-1", time.time() + 3600)


def _traffic() -> tuple[bytes, bytes]:
    """What pgbench -M prepared (libpq's PQexecPrepared: Bind, Describe of the portal, Execute, Sync) sends
    and gets back for one -S transaction."""
    bind = message(b"B", b"\0P0_1\0" + INT16.pack(0) + INT16.pack(1) + INT32.pack(5) + b"12345" + INT16.pack(1)
                + INT16.pack(0))
    client = bind + message(b"D", b"P\0") + message(b"E", b"\0" + INT32.pack(0)) + message(b"S")  # PQexecPrepared
    described = message(b"T", INT16.pack(1) + b"abalance\0" + INT32.pack(16390) + INT16.pack(3) + INT32.pack(23)
                        + INT16.pack(4) + INT32.pack(-1) + INT16.pack(0))
    server = (message(b"2") + described + message(b"D", INT16.pack(1) + INT32.pack(4) + b"1234")
              + message(b"C", b"SELECT 1\0") + message(b"Z", b"I"))
    return client, server


class _Allow:
    """A judge that allows every statement: the session's own cost, without the policy's."""

    decision = Decision(Verdict.ALLOW, "reads")

    def decide(self, operation: object) -> Decision:
        return self.decision


def _session() -> ProxySession:
    session = ProxySession(judge=_Allow(), database="bench")
    session.from_client(message(b"P", b"P0_1\0" + SQL.encode() + b"\0" + INT16.pack(0)) + message(b"S"))
    session.from_server(message(b"1") + message(b"Z", b"I"))
    return session


def _services() -> tuple[Services, FlowContext]:
    flow = FlowContext("0123456789abcdef", "bench", ProcessInfo(4242, 123456, 0, 0, "/usr/lib/postgresql/15/bin/pgbench",
                                                                 ("pgbench", "-S", "-M", "prepared", "bench"),
                                                                 "/interceptor/bench"),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 5432),
                       Endpoint(ipaddress.ip_address("127.0.0.1"), 40000), "db")
    judge = FlowJudge(flow, lambda: PolicyEngine(load_policy_text(POLICY)), lambda: IDENTITY, lambda: True)
    return Services(judge=judge, audit=None, resource=None, credentials=None), flow


def _per_op(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - started) / count * 1e6


def measure(count: int = 20000) -> dict[str, float]:
    """Microseconds per transaction for each part."""
    client, server = _traffic()
    session = _session()
    services, flow = _services()
    audits = [c for c in (session.from_client(client), session.from_server(server))[1] if isinstance(c, Record)]
    audit = audits[0]

    def event() -> AuditEvent:
        return services.event(flow, "statement", audit.decision, operation=audit.operation, outcome=audit.outcome)

    body = scrub_event(event().to_dict())
    engine = PolicyEngine(load_policy_text(POLICY))
    subject = Subject("bench", IDENTITY, flow.process.exe, 0)
    engine.decide(Request(subject, "db", SqlQuery(SQL, "bench")))
    simple = (SIMPLE.format(n) for n in itertools.cycle(range(10000, 100000)))
    unseen = (f"SELECT abalance FROM pgbench_accounts_{n} WHERE aid = $1" for n in itertools.count())
    return {
        "postgres session (sans-IO: Bind/Describe/Execute/Sync in, 5 messages out)":
            _per_op(lambda: (session.from_client(client), session.from_server(server)), count),
        "audit event built (who, what, outcome)": _per_op(event, count),
        "audit event scrubbed and normalized": _per_op(lambda: scrub_event(event().to_dict()), count)
            - _per_op(event, count),
        "audit record chained (canonical JSON, SHA-256) with its store row":
            _per_op(lambda: record_rows(link(Head(), "bench-host", [body])[0]), count),
        "policy decision, cached (extended and simple protocol; prepared reuses it)":
            _per_op(lambda: engine.decide(Request(subject, "db", SqlQuery(SQL, "bench"))), count),
        "policy decision, simple protocol, a number not seen before (numeric shape cached)":
            _per_op(lambda: engine.decide(Request(subject, "db", SqlQuery(next(simple), "bench"))), count),
        "policy decision, a statement never seen (sqlglot parse and analysis)":
            _per_op(lambda: engine.decide(Request(subject, "db", SqlQuery(next(unseen), "bench"))), count // 10),
    }


def run(rounds: int = 3) -> list[dict]:
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for part, us in measure().items():
            samples.setdefault(part, []).append(us)
    return [{"part": part, "us": summary(values)} for part, values in samples.items()]
