"""`interceptor approvals ...` against a real broker behind a control adapter."""

import asyncio
import json
import threading

import pytest
from click.testing import CliRunner
from test_approvals_support import FLOW, Clock, ListSink, approve_decision, sql_request

from interceptor.approvals import ApprovalBroker, Approver, SqliteStore
from interceptor.approvals.cli import approvals, parse_duration
from interceptor.approvals.control import ApprovalControl
from interceptor.control import ControlError, ControlMethod, Peer

DBA = Approver("okta", "bob@example.com", frozenset({"dba"}))


class Daemon:
    """The broker on its own event loop thread, as in the daemon; `call` is the control
    server's part: the method by name, and an exception answered as an error."""

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = self.run(SqliteStore.open(path))
        self.clock = Clock()
        self.broker = ApprovalBroker(self.store, ListSink(), clock=self.clock)
        self.approver: Approver | None = DBA
        self.control = ApprovalControl(self.broker, self.approver_of)
        self.waits: list = []

    async def approver_of(self, peer: Peer, token: str | None) -> Approver | None:
        return self.approver

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def call(self, method: ControlMethod, **params) -> dict:
        try:
            return self.run(self.control.methods()[method](peer=Peer(1, 0, 0), **params))
        except Exception as exc:
            raise ControlError(str(exc)) from None

    def hold(self, text: str = "DELETE FROM orders WHERE id = 7"):
        pending = self.run(self.broker.open(sql_request(text), approve_decision(), FLOW))
        self.waits.append(asyncio.run_coroutine_threadsafe(pending.wait(), self.loop))
        return pending, self.waits[-1]

    def stop(self) -> None:
        for wait in self.waits:
            wait.cancel()
        self.run(self.broker.close())
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(str(tmp_path / "approvals.db"))
    yield daemon
    daemon.stop()


def invoke(daemon, *args):
    return CliRunner().invoke(approvals, list(args), obj={"control": daemon})


def test_list_then_approve_for_a_while(daemon):
    assert invoke(daemon, "list").output == "no pending approval requests\n"
    pending, outcome = daemon.hold()
    listing = invoke(daemon, "list")
    assert listing.exit_code == 0
    header, row = listing.output.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "EXPIRES"]
    assert row.startswith(f"{pending.request_id}  pending") and "alice@example.com" in row
    assert "sql: orders DELETE FROM orders WHERE id = 7" in row
    result = invoke(daemon, "approve", pending.request_id.lower(), "--for", "15m")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"approved {pending.request_id} (identical operations allowed until ")
    assert outcome.result(30).approved
    everything = json.loads(invoke(daemon, "list", "--all", "--json").output)
    assert [(r["request_id"], r["state"]) for r in everything] == [(pending.request_id, "approved")]
    assert everything[0]["granted_until"] == everything[0]["decided_at"] + 900


def test_deny_needs_a_reason_and_tells_the_requester(daemon):
    pending, outcome = daemon.hold()
    missing = invoke(daemon, "deny", pending.request_id)
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.output
    result = invoke(daemon, "deny", pending.request_id, "--reason", "use the replica")
    assert result.exit_code == 0 and result.output == f"denied {pending.request_id}: use the replica\n"
    assert outcome.result(30).reason == "use the replica"


def test_refusals_are_clear_messages(daemon):
    pending, _ = daemon.hold()
    unknown = invoke(daemon, "approve", "ZZZZZZZZ")
    assert unknown.exit_code == 1 and "Error: no approval request 'ZZZZZZZZ'" in unknown.output
    bad = invoke(daemon, "approve", pending.request_id, "--for", "soon")
    assert bad.exit_code == 2 and "'soon' is not a positive duration" in bad.output
    daemon.approver = Approver("okta", "alice@example.com", frozenset({"dba"}))
    own = invoke(daemon, "approve", pending.request_id)
    assert own.exit_code == 1 and "cannot approve their own request" in own.output
    daemon.approver = None
    anonymous = invoke(daemon, "approve", pending.request_id)
    assert anonymous.exit_code == 1 and "run `interceptor login`" in anonymous.output
    assert CliRunner().invoke(approvals, ["list"], obj={}).output == "Error: no control connection to the interceptor daemon\n"
    daemon.approver = Approver("root", "root@host-1")
    glass = invoke(daemon, "approve", pending.request_id)
    assert glass.output == f"approved {pending.request_id} as break-glass root\n"


def test_a_withdrawn_request_is_listed_with_why_and_cannot_be_approved(daemon):
    pending, outcome = daemon.hold()
    daemon.run(daemon.broker.withdraw(pending.request_id, "the client cancelled the statement"))
    assert outcome.result(30).withdrawn
    assert invoke(daemon, "list").output == "no pending approval requests\n"
    header, row, how = invoke(daemon, "list", "--all").output.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "EXPIRES"]
    assert row.startswith(f"{pending.request_id}  withdrawn  ")
    assert how.strip() == "withdrawn: the client cancelled the statement"
    refused = invoke(daemon, "approve", pending.request_id)
    assert refused.exit_code == 1
    assert refused.output == (f"Error: request {pending.request_id} was withdrawn (the client cancelled the "
                              "statement): nothing waits for a decision any more\n")


def test_list_all_says_how_each_request_ended(daemon):
    approved, _ = daemon.hold()
    invoke(daemon, "approve", approved.request_id)
    denied, _ = daemon.hold("DELETE FROM orders WHERE id = 8")
    invoke(daemon, "deny", denied.request_id, "--reason", "use the replica")
    lines = invoke(daemon, "list", "--all").output.splitlines()
    assert [line.strip() for line in lines[2::2]] == ["approved by bob@example.com",
                                                      "denied by bob@example.com: use the replica"]


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1D", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


class Listing:
    """A control client whose daemon holds `requests` (as APPROVALS_LIST answers them)."""

    def __init__(self, *requests: dict) -> None:
        self.requests = list(requests)

    def call(self, method: ControlMethod, **params) -> dict:
        assert method is ControlMethod.APPROVALS_LIST
        return {"requests": self.requests}


def held(**fields) -> dict:
    request = {"request_id": "A1B2C3D4", "state": "pending", "expires_at": 1_800_000_000.0, "agent": "claude",
               "requester_user": "alice@example.com", "requester": None, "resource": "web-1",
               "rule": "ops-restart-needs-approval", "approver": None, "decision_reason": None,
               "operation": {"kind": "ssh", "request": "exec", "command": "systemctl restart nginx"}}
    return request | fields


def test_list_escapes_what_the_agent_chose_and_cuts_nothing():
    command = "sudo chmod -R 0777 /etc '\x1b[20Dsystemctl status nginx\x1b[K\x1b' \u202e\x9b\x7f" + " x" * 60
    rows = [held(operation={"kind": "ssh", "request": "exec", "command": command}),
            held(request_id="E5F6G7H8", state="denied", agent="a\x1b]0;t\x07", approver="bob",
                 decision_reason="no\x1b[2J")]
    output = CliRunner().invoke(approvals, ["list", "--all"], obj={"control": Listing(*rows)}).output
    assert not [c for c in output if not c.isprintable() and c != "\n"], repr(output)
    assert "'\\x1b[20Dsystemctl status nginx\\x1b[K\\x1b' \\u202e\\x9b\\x7f" + " x" * 60 in output
    assert "ops-restart-needs-approval" in output and "a\\x1b]0;t\\x07" in output
    assert output.splitlines()[-1].strip() == "denied by bob: no\\x1b[2J"


def test_list_columns_are_as_wide_as_their_widest_cell():
    rows = [held(), held(request_id="E5F6G7H8", rule="r", resource="a-very-long-resource-name")]
    header, first, second = CliRunner().invoke(approvals, ["list"], obj={"control": Listing(*rows)}).output.splitlines()
    assert header.index("RULE") == first.index("ops-restart-needs-approval") == second.index("r  ")
    assert header.index("OPERATION") == first.index("ssh: exec") == second.index("ssh: exec")
    assert "a-very-long-resource-name" in second
