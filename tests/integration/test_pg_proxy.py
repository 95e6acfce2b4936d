"""The PostgreSQL handler between real clients (psql, psycopg 3, asyncpg) and a real
PostgreSQL 15, driven from a loopback listener in the test (no kernel redirect)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import asyncpg
import psycopg
import pytest
from pg_fixture import PgServer
from unit.test_approvals_support import (
    ListSink,  # in-memory AuditSink; `down` fails like a full disk
)

from interceptor.approvals import ApprovalBroker, Approver, SqliteStore
from interceptor.audit.event import AuditEvent
from interceptor.decision import ApprovalSpec, Decision, MaskSpec, Verdict
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.enforcer.judge import FlowJudge
from interceptor.handlers.base import Services
from interceptor.handlers.postgres import HANDLER, codec
from interceptor.handlers.postgres.catalog import CatalogStore
from interceptor.operations import Request
from interceptor.policy.model import AddressSpec, ResourceSpec

DBA = Approver("okta", "dba@example.com", frozenset({"dba"}))


def decide(request: Request) -> Decision:
    """The test policy: judged on the whole query string, as the engine does."""
    text = request.operation.text.lower()
    if "secrets" in text:
        return Decision.deny("no-secrets", "the secrets table is off limits")
    if "program" in text:
        return Decision.deny("no-copy-program", "COPY ... PROGRAM runs commands on the server")
    if text.startswith("delete"):
        return Decision(Verdict.APPROVE, "deletes-need-dba", "deletes need a DBA",
                        approval=ApprovalSpec(("dba",), timeout_seconds=60))
    if "users" in text:
        return Decision(Verdict.ALLOW, "users-masked", masks=(MaskSpec(columns=("public.users.email",),
                                                                       rule="users-masked"),))
    return Decision(Verdict.ALLOW, "reads-and-writes")


class RequestPolicy:
    """The policy engine's one method, answered by `decide`."""

    def decide(self, request: Request) -> Decision:
        return decide(request)


def statements(sink: ListSink) -> list[AuditEvent]:
    return [e for e in sink.events if e.kind == "statement"]


class Proxy:
    """HANDLER.serve() behind a loopback listener, on its own event loop thread."""

    def __init__(self, pg: PgServer, tmp_path, *, databases=("app", "postgres"), agent: str = "claude") -> None:
        self.pg, self.sink, self.agent = pg, ListSink(), agent
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.resource = ResourceSpec("orders-db", "postgres", (AddressSpec(ipaddress.ip_network("127.0.0.1/32"), None, pg.port),),
                                     options={"databases": list(databases)})
        self.broker = self.call(self._broker(str(tmp_path / "approvals.db")))
        self.catalogs = CatalogStore()  # as the daemon's: result columns are named by the server's catalog
        self.tasks: set[asyncio.Task] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepting = asyncio.run_coroutine_threadsafe(self._accept(), self.loop)

    async def _broker(self, path: str) -> ApprovalBroker:
        return ApprovalBroker(await SqliteStore.open(path), self.sink, poll_seconds=0.05)

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.listener)
            flow = FlowContext(f"flow-{peer[1]}", self.agent, ProcessInfo(os.getpid(), 1, 0, 0, "/usr/bin/agent",
                                                                         ("agent",), "/agents/claude"),
                               Endpoint(ipaddress.ip_address("127.0.0.1"), self.pg.port),
                               Endpoint(ipaddress.ip_address(peer[0]), peer[1]), "orders-db")
            task = loop.create_task(HANDLER.serve(flow, conn, self.services(flow)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def services(self, flow: FlowContext) -> Services:
        async def credentials() -> dict[str, str]:
            return {"user": self.pg.user, "password": self.pg.password}

        judge = FlowJudge(flow, lambda: RequestPolicy(), lambda: None, lambda: False)
        self.last_services = Services(judge=judge, audit=self.sink, resource=self.resource, credentials=credentials,
                                      approvals=self.broker, catalogs=self.catalogs)
        return self.last_services

    def dsn(self, dbname: str = "app", user: str = "agent") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}?sslmode=prefer"

    async def _stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.broker.close()
        await self.broker.store.close()

    def close(self) -> None:
        self.accepting.cancel()
        self.listener.close()
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def pg():
    with PgServer() as server:
        server.psql("CREATE DATABASE app")
        server.psql("CREATE TABLE orders (id int PRIMARY KEY, item text);"
                    "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('s3cr3t');"
                    "CREATE TABLE users (id int, email text, name text);"
                    "INSERT INTO users VALUES (1, 'alice@example.com', 'Alice'), (2, 'bob@example.com', 'Bob')",
                    dbname="app")
        yield server


@pytest.fixture
def proxy(pg, tmp_path):
    pg.psql("TRUNCATE orders", dbname="app")
    server = Proxy(pg, tmp_path)
    yield server
    server.close()


def psql(proxy: Proxy, *commands: str) -> subprocess.CompletedProcess[str]:
    args = ["psql", proxy.dsn(), "-X", "-A", "-t"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_psql_allowed_and_denied_statements(proxy, pg):
    done = psql(proxy, "SELECT count(*) FROM orders", "DROP TABLE secrets", "SELECT 40 + 2")
    assert done.stdout.split() == ["0", "42"]
    assert "permission denied by interceptor rule 'no-secrets'" in done.stderr
    assert pg.psql("SELECT v FROM secrets", dbname="app") == "s3cr3t"
    records = [(e.decision, e.rule, e.operation["statement"]) for e in statements(proxy.sink)]
    assert records == [("allow", "reads-and-writes", "SELECT count(*) FROM orders"),
                       ("deny", "no-secrets", "DROP TABLE secrets"),
                       ("allow", "reads-and-writes", "SELECT ? + ?")]
    [connection] = [e for e in proxy.sink.events if e.kind == "connection"]
    assert connection.operation["upstream_user"] == pg.user and connection.outcome["statements"] == 3


def test_denial_inside_a_transaction_fails_it_and_commit_rolls_back(proxy, pg):
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO orders VALUES (1, 'book')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-secrets"):
            conn.execute("SELECT * FROM secrets")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 7").fetchone() == (7,)  # the session stays usable
    assert pg.psql("SELECT count(*) FROM orders", dbname="app") == "0"


def test_denial_outside_a_transaction_leaves_it_idle(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE secrets")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("INSERT INTO orders VALUES (2, 'pen')")
        assert conn.execute("SELECT item FROM orders").fetchall() == [("pen",)]


def test_psycopg_pipeline_with_a_denied_statement(proxy, pg):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-secrets"):
            with conn.pipeline():
                conn.execute("INSERT INTO orders VALUES (%s, %s)", (10, "a"))
                conn.execute("INSERT INTO orders VALUES (%s, %s)", (11, "b"))
                conn.execute("UPDATE secrets SET v = 'pwned'")
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(5)]
        assert [c.fetchone()[0] for c in cursors] == [0, 2, 4, 6, 8]
    # One Sync closes the pipeline: like any error, the denial rolls back its implicit transaction.
    assert pg.psql("SELECT count(*) FROM orders", dbname="app") == "0"
    assert pg.psql("SELECT v FROM secrets", dbname="app") == "s3cr3t"
    inserts = [e for e in statements(proxy.sink) if e.operation["statement"].startswith("INSERT")]
    assert [(e.operation["via"], e.operation["parameters"], e.outcome["rows"]) for e in inserts] == \
        [("extended", 2, 1), ("extended", 2, 1)]


def test_psycopg_binary_results_and_prepared_statements(proxy):
    with psycopg.connect(proxy.dsn(), prepare_threshold=0) as conn:
        for i in range(3):
            row = conn.cursor(binary=True).execute("SELECT %s::int + 1, 'x'::text", (i,)).fetchone()
            assert row == (i + 1, "x")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM secrets WHERE v = %s", ("a",))


def test_asyncpg_prepared_statements(proxy, pg):
    async def scenario():
        conn = await asyncpg.connect(proxy.dsn())
        try:
            stmt = await conn.prepare("SELECT $1::int * 3")
            values = [await stmt.fetchval(i) for i in range(3)]
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no-secrets"):
                await conn.fetch("SELECT * FROM secrets")
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES ($1, $2)", 30, "asyncpg")
            return values, await conn.fetchval("SELECT count(*) FROM orders")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == ([0, 3, 6], 1)
    assert pg.psql("SELECT item FROM orders", dbname="app") == "asyncpg"


def test_masked_column_in_simple_and_extended_protocols(proxy):
    done = psql(proxy, "SELECT id, email, name FROM users ORDER BY id")
    assert done.stdout.split() == ["1|****|Alice", "2|****|Bob"], done.stderr
    with psycopg.connect(proxy.dsn()) as conn:
        rows = conn.execute("SELECT email, name FROM users WHERE id = %s", (1,)).fetchall()
        binary = conn.cursor(binary=True).execute("SELECT email FROM users WHERE id = %s", (2,)).fetchall()
    assert rows == [("****", "Alice")] and binary == [("****",)]

    async def prepared():
        conn = await asyncpg.connect(proxy.dsn())
        try:
            stmt = await conn.prepare("SELECT name, email FROM users WHERE id = $1")
            return [tuple(await stmt.fetchrow(i)) for i in (1, 2)]
        finally:
            await conn.close()

    assert asyncio.run(prepared()) == [("Alice", "****"), ("Bob", "****")]


def test_approval_holds_without_blocking_other_sessions(proxy, pg):
    pg.psql("INSERT INTO orders VALUES (5, 'old')", dbname="app")
    notices: list[str] = []
    result: Future = Future()

    def agent() -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.add_notice_handler(lambda d: notices.append(d.message_primary))
                result.set_result(conn.execute("DELETE FROM orders WHERE id = 5").rowcount)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result.set_exception(exc)

    threading.Thread(target=agent, daemon=True).start()
    pending = _wait_for(lambda: proxy.call(proxy.broker.list()))
    with psycopg.connect(proxy.dsn()) as other:  # another session runs while the DELETE waits
        assert other.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    proxy.call(proxy.broker.approve(pending[0].request_id, DBA))
    assert result.result(30) == 1
    assert notices and pending[0].request_id in notices[0]
    assert pg.psql("SELECT count(*) FROM orders", dbname="app") == "0"
    [record] = [e for e in statements(proxy.sink) if e.operation["statement"].startswith("DELETE")]
    assert record.decision == "approve" and record.outcome["approval"]["approved"]


def test_denied_approval_is_an_error_and_nothing_runs(proxy, pg):
    pg.psql("INSERT INTO orders VALUES (6, 'keep')", dbname="app")
    result: Future = Future()

    def agent() -> None:
        try:
            with psycopg.connect(proxy.dsn()) as conn:
                conn.execute("DELETE FROM orders")
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result.set_result(exc)

    threading.Thread(target=agent, daemon=True).start()
    pending = _wait_for(lambda: proxy.call(proxy.broker.list()))
    proxy.call(proxy.broker.deny(pending[0].request_id, DBA, "not during business hours"))
    error = result.result(30)
    assert isinstance(error, psycopg.errors.InsufficientPrivilege) and "business hours" in str(error)
    assert pg.psql("SELECT item FROM orders", dbname="app") == "keep"


def test_cancel_reaches_the_right_backend(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        threading.Timer(0.5, conn.cancel_safe).start()  # cancel() blocks holding the GIL
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
    cancels = [e for e in proxy.sink.events if e.kind == "connection" and e.operation.get("cancel")]
    assert [e.decision for e in cancels] == ["allow"]


def test_cancel_with_an_unknown_key_is_refused(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(codec.cancel_request(1234, b"\0\0\0\1"))
        assert sock.recv(100) == b""
    _wait_for(lambda: [e for e in proxy.sink.events if e.operation and e.operation.get("cancel")])
    [refused] = [e for e in proxy.sink.events if e.operation and e.operation.get("cancel")]
    assert refused.decision == "deny"


def test_copy_out_and_in_and_program_denied(proxy, pg):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY orders (id, item) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"item-{i}"))
        with conn.cursor().copy("COPY (SELECT id FROM orders ORDER BY id) TO STDOUT") as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
        assert out.split(b"\n")[:3] == [b"0", b"1", b"2"] and out.count(b"\n") == 1000
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-copy-program"):
            conn.execute("COPY orders TO PROGRAM 'touch /tmp/pwned-by-agent'")
    assert not os.path.exists("/tmp/pwned-by-agent")
    copies = [e for e in statements(proxy.sink) if e.operation["statement"].startswith("COPY orders (id")]
    assert copies[0].outcome["rows"] == 1000


def test_listen_notify_and_notices_pass_through(proxy):
    with psycopg.connect(proxy.dsn(), autocommit=True) as listener, \
            psycopg.connect(proxy.dsn(), autocommit=True) as sender:
        notices: list[str] = []
        listener.add_notice_handler(lambda d: notices.append(d.message_primary))
        listener.execute("LISTEN jobs")
        sender.execute("NOTIFY jobs, 'ready'")
        listener.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        gen = listener.notifies(timeout=10, stop_after=1)
        assert [(n.channel, n.payload) for n in gen] == [("jobs", "ready")]
        assert notices == ["hello from plpgsql"]
        assert listener.info.parameter_status("server_version").startswith("15")


def test_large_result_streams_through(proxy):
    with psycopg.connect(proxy.dsn()) as conn:
        rows = conn.cursor().stream("SELECT repeat('x', 1000) FROM generate_series(1, 20000)")  # row by row
        total = sum(len(row[0]) for row in rows)
        one = conn.execute("SELECT repeat('y', 50000000)").fetchone()[0]
    assert total == 20_000_000 and len(one) == 50_000_000


def test_database_not_allowed_is_refused(proxy):
    with pytest.raises(psycopg.OperationalError, match="database 'template1' is not allowed"):
        psycopg.connect(proxy.dsn(dbname="template1"))


def _logged_in(proxy: Proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(codec.startup_message({"user": "agent", "database": "app"}))
    sock.settimeout(30)
    greeting = b""
    while not greeting.endswith(codec.ready_for_query(b"I")):
        greeting += sock.recv(65536)
    return sock


def _received_within(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(1 << 20):
            got += chunk
    except TimeoutError:
        pass
    return got


def test_a_client_that_stops_reading_stops_the_server_side_too(proxy):
    """Backpressure: with the agent not reading a 200 MB result, the enforcer stops reading
    the server instead of buffering the result in memory."""
    with _logged_in(proxy) as sock:
        sock.sendall(codec.query("SELECT repeat('x', 1000) FROM generate_series(1, 200000)"))
        first = sock.recv(65536)
        assert first[:1] == b"T", first[:50]
        time.sleep(2)  # the agent reads nothing meanwhile
        stalled = proxy.last_services.traffic.down
        time.sleep(1)
        assert proxy.last_services.traffic.down == stalled, "the enforcer kept reading a result nobody takes"
        assert stalled < 32 << 20, f"{stalled} bytes read from the server for a client that reads nothing"
        received = len(first)
        while received < 50 << 20:  # reading again resumes the flow
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert proxy.last_services.traffic.down > stalled


class HeldSink(ListSink):
    """A strict sink whose records become durable only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future] = []

    def submit(self, event: AuditEvent) -> asyncio.Future | None:
        super().submit(event)
        if event.kind != "statement":
            return None
        done = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        return done

    def release(self) -> None:
        for done in self.pending:
            if not done.done():
                done.set_result(None)


def test_strict_audit_holds_a_small_result_whole_until_its_record_is_durable(proxy):
    proxy.sink = HeldSink()
    with _logged_in(proxy) as sock:
        sock.sendall(codec.query("SELECT 1 AS one"))
        assert _received_within(sock, 0.5) == b"", "rows left before their audit record was durable"
        proxy.loop.call_soon_threadsafe(proxy.sink.release)
        reply = _received_within(sock, 2)
        assert reply[:1] == b"T" and b"D" in reply and reply.endswith(codec.ready_for_query(b"I"))


def test_strict_audit_streams_a_large_result_but_holds_its_end(proxy):
    proxy.sink = HeldSink()
    with _logged_in(proxy) as sock:
        sock.sendall(codec.query("SELECT repeat('x', 1000) FROM generate_series(1, 1000)"))
        early = _received_within(sock, 1)
        assert len(early) > 64 * 1024, "a large result is streamed, not buffered whole"
        assert codec.ready_for_query(b"I") not in early  # the query is not over for the client yet
        proxy.loop.call_soon_threadsafe(proxy.sink.release)
        assert (early + _received_within(sock, 2)).endswith(codec.ready_for_query(b"I"))


def raw_session(proxy: Proxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # a truncated frame is then followed by EOF
        sock.settimeout(30)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("data, problem", [
    (codec.INT32.pack(16) + codec.INT32.pack(2 << 16) + b"user\0a\0\0", b"unsupported frontend protocol 2.0"),
    (codec.startup_message({"database": "app"}), b"no PostgreSQL user name"),
    (codec.INT32.pack(0) + b"\0" * 8, b"invalid length 0"),
    (codec.INT32.pack(2**31 - 1) + b"\0" * 8, b"exceeds the limit"),
    (codec.startup_message({"user": "a", "options": "-c session_replication_role=replica"}), b"session_replication_role"),
])
def test_bad_startups_get_an_error_and_a_close(proxy, data, problem):
    with psycopg.connect(proxy.dsn()) as bystander:
        reply = raw_session(proxy, data)
        assert reply[:1] == b"E" and problem in reply
        assert bystander.execute("SELECT 1").fetchone() == (1,)  # other sessions are untouched


@pytest.mark.parametrize("message, problem", [
    (b"Y" + codec.INT32.pack(4), b"invalid frontend message type 'Y'"),
    (b"Q" + codec.INT32.pack(0), b"invalid length 0"),
    (b"Q" + codec.INT32.pack(2**31 - 1), b"invalid length"),
    (b"Q" + codec.INT32.pack(12) + b"SELECT\xff\0", b"not valid UTF-8"),
    (b"Q" + codec.INT32.pack(100) + b"SEL", None),  # truncated, then EOF: just closed
])
def test_bad_messages_after_login_get_an_error_and_a_close(proxy, message, problem):
    reply = raw_session(proxy, codec.startup_message({"user": "agent", "database": "app"}) + message)
    assert reply.startswith(codec.authentication_ok())
    assert reply.endswith(b"") and (problem is None or problem in reply.rsplit(b"Z\0\0\0\5I", 1)[1])
    assert reply.count(b"FATAL") == (0 if problem is None else 2)  # S and V fields of one error


def test_audit_outage_closes_the_session_fail_closed(proxy, pg):
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        proxy.sink.down = True
        with pytest.raises(psycopg.OperationalError, match="audit unavailable"):
            conn.execute("SELECT 1")
    proxy.sink.down = False


def test_md5_upstream_login(tmp_path):
    with PgServer(auth="md5") as server:
        proxy = Proxy(server, tmp_path, databases=("postgres",))
        try:
            with psycopg.connect(proxy.dsn(dbname="postgres")) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (server.user,)
        finally:
            proxy.close()


def _wait_for(probe, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _certificates(directory) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key) paths."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test ca")).issuer_name(name("test ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    paths = tuple(str(directory / f) for f in ("ca.pem", "server.pem", "server.key"))
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                  cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as out:
            out.write(data)
        os.chmod(path, 0o644 if not path.endswith(".key") else 0o600)
        if os.geteuid() == 0:  # PgServer runs the server as `postgres`; the key must be its own
            account = pwd.getpwnam("postgres")
            os.chown(path, account.pw_uid, account.pw_gid)
    return paths


def test_upstream_tls_is_verified_against_the_configured_ca(tmp_path):
    certs = Path(tempfile.mkdtemp(prefix="pgtls-"))  # the server's OS user must reach it
    os.chmod(certs, 0o755)
    ca, cert, key = _certificates(certs)
    with PgServer(settings={"ssl": "on", "ssl_cert_file": cert, "ssl_key_file": key}) as server:
        (server.data / "pg_hba.conf").write_text("local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        server._run("pg_ctl", "-D", str(server.data), "reload")
        proxy = Proxy(server, tmp_path, databases=("postgres",))
        try:
            proxy.resource = ResourceSpec("orders-db", "postgres", proxy.resource.addresses,
                                          options={"databases": ["postgres"], "tls": {"ca": ca}})
            with psycopg.connect(proxy.dsn(dbname="postgres")) as conn:
                assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
            proxy.resource = ResourceSpec("orders-db", "postgres", proxy.resource.addresses,
                                          options={"databases": ["postgres"], "tls": True})  # system CAs only
            with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
                psycopg.connect(proxy.dsn(dbname="postgres"))
        finally:
            proxy.close()
            shutil.rmtree(certs)
