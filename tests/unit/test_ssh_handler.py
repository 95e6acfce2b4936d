"""The ssh handler over loopback, no daemon and no root: an agent (an asyncssh client trusting
the SSH host CA by an @cert-authority line) -> SshHandler.serve on an accepted socket -> an
upstream asyncssh server in this process (its host key in the resource's known_hosts, the
enforcer's key authorized) that runs a few commands itself: `echo WORDS`, `exit N`, `cat`,
`err TEXT` (to stderr), `kill` (exits by SIGTERM) and, for a shell, echoes lines until `exit`.

Services as a flow gets them: a FlowJudge over RULES (an SshRequest judged by a small table,
until the ssh protocol's policy module is registered), an in-memory audit sink, the
resource's credentials, the SSH host CA, a recordings directory and, where a test holds a
request, the real ApprovalBroker on SQLite."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest
import uvloop
from click.testing import CliRunner
from asyncssh.packet import Boolean, String, UInt32

from interceptor.approvals import ApprovalBroker, Approver, SqliteStore
from interceptor.audit import open_sink
from interceptor.audit.cli import audit
from interceptor.audit.event import AuditEvent
from interceptor.audit.recording import Cast, parse, read_verified
from interceptor.audit.scrub import scrub_event, scrub_text
from interceptor.config import Settings
from interceptor.enforcer.judge import FlowJudge
from interceptor.flow import Endpoint, FlowContext, ProcessInfo
from interceptor.handlers.base import Services
from interceptor.handlers.ssh import HANDLER, handler
from interceptor.handlers.ssh.connection import MAX_CHANNELS, MAX_COMMAND, MAX_LISTENERS, PROTOCOL_RULE, FlowGate
from interceptor.handlers.ssh.process import recorded as is_recorded
from interceptor.handlers.ssh.upstream import HOST_KEY_TOLD, HandshakeFailed, SshCredentialsError, login, told
from interceptor.operations import SshRequest
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.model import AddressSpec, ResourceSpec
from interceptor.ssh_certificates import SshHostCA
from test_approvals_support import ListSink

LOOPBACK = ipaddress.ip_address("127.0.0.1")
ROOT = Approver("root", "root@host-1")
UPSTREAM_USER = "deploy"
PASSWORD = "s3cret-upstream-password"


class Sink(ListSink):
    def write_session_bytes(self, flow_id: str, direction: str, data: bytes, ts: float | None = None) -> None:
        raise AssertionError("no session bytes are captured")


POLICY = """
version: 1
resources:
  web1:
    protocol: ssh
    addresses: ["web1.internal:2222"]
    options: {known_hosts: /etc/ssh/ssh_known_hosts}
agents:
  bot: {uids: [1001]}
rules:
  - {name: commands, effect: allow, agents: [bot], resources: [web1],
     ssh: {commands: ["echo **", "exit *", "cat", "err **", "kill", "pause"]}}
  - {name: reboots, effect: approve, agents: [bot], resources: [web1], ssh: {commands: [reboot]},
     approval: {groups: [ops], timeout_seconds: 60}}
  - {name: srv-read, effect: allow, agents: [bot], resources: [web1], ssh: {read: ["/srv/**"]}}
  - {name: loopback-forwards, effect: allow, agents: [bot], resources: [web1],
     ssh: {forward: ["127.0.0.1:*"], remote_forward: ["127.0.0.1:*"]}}
  - {name: no-rm, effect: deny, reason: removing files is not allowed, resources: [web1], ssh: {commands: ["rm **"]}}
"""
SHELLS = """
  - {name: shells, effect: allow, agents: [bot], resources: [web1], ssh: {shell: true}}
"""


class UpstreamServer(asyncssh.SSHServer):
    """Forwards are the server's to allow: it allows them, local and remote."""

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True


@dataclass
class Upstream:
    """The server side: its listener, key and what it was asked to run."""

    server: asyncssh.SSHAcceptor
    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey
    commands: list[str | None] = field(default_factory=list)
    terminals: list[str | None] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # window changes a shell received
    events: list[str] = field(default_factory=list)  # signals and breaks a command received

    @property
    def port(self) -> int:
        return self.server.get_port()


async def start_upstream(root: Path) -> Upstream:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    commands: list[str | None] = []
    terminals: list[str | None] = []
    sizes: list[tuple[int, int]] = []
    events: list[str] = []

    async def run(process: asyncssh.SSHServerProcess[bytes]) -> None:
        commands.append(process.command)
        terminals.append(process.term_type)
        if process.command is None:
            await shell(process)
            return
        words = process.command.split()
        if words[0] == "echo":
            process.stdout.write(" ".join(words[1:]).encode() + b"\n")
            process.exit(0)
        elif words[0] == "exit":
            process.exit(int(words[1]))
        elif words[0] == "cat":
            process.stdout.write(await process.stdin.read())
            process.exit(0)
        elif words[0] == "err":
            process.stderr.write(" ".join(words[1:]).encode() + b"\n")
            process.exit(1)
        elif words[0] == "kill":
            process.exit_with_signal("TERM")
        elif words[0] == "pause":  # until a signal or a break comes, then exits 130
            try:
                await process.stdin.read()
            except asyncssh.SignalReceived as signal:
                events.append(f"signal {signal.signal}")
            except asyncssh.BreakReceived as pause:
                events.append(f"break {pause.msec}")
            process.exit(130)
        else:
            process.exit(0)

    async def shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
        process.stdout.write(b"$ ")
        line = b""
        while True:
            try:
                data = await process.stdin.read(1)
            except asyncssh.TerminalSizeChanged as change:
                sizes.append((change.width, change.height))
                continue
            if not data:
                break
            line += data
            if data == b"\r" or data == b"\n":
                if line.strip() == b"exit":
                    process.exit(0)
                    return
                process.stdout.write(b"you said " + line.strip() + b"\r\n$ ")
                line = b""
        process.exit(0)

    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
                                   process_factory=run, encoding=None, line_editor=False,
                                   server_factory=UpstreamServer,
                                   sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=os.fsencode(root)))
    return Upstream(server, host_key, client_key, commands, terminals, sizes, events)


@dataclass
class Lab:
    """One test's world: the upstream, the host CA, the files and the policy."""

    tmp: Path
    upstream: Upstream
    host_ca: SshHostCA | None
    policy: str = POLICY
    credentials: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    broker: ApprovalBroker | None = None
    sink: Sink = field(default_factory=Sink)
    errors: list[BaseException] = field(default_factory=list)
    flow_id: str = "flow1"

    def known_hosts(self, key: asyncssh.SSHKey | None = None, name: str = "web1.internal") -> str:
        path = self.tmp / f"known_hosts-{len(os.listdir(self.tmp))}"
        line = (key or self.upstream.host_key).export_public_key().decode().strip()
        path.write_text(f"[{name}]:{self.upstream.port} {line}\n")
        return str(path)

    def agent_trust(self) -> asyncssh.SSHKnownHosts:
        assert self.host_ca is not None
        return asyncssh.import_known_hosts(self.host_ca.known_hosts_line(["*"]) + "\n")

    def services(self, flow: FlowContext) -> Services:
        engine = PolicyEngine(load_policy_text(self.policy, "ssh-handler.yaml"))
        resource = ResourceSpec("web1", "ssh", (AddressSpec(None, "web1.internal", self.upstream.port),),
                                {"from": "env", "name": "WEB1_SSH"}, self.options)
        secrets = self.credentials

        async def credentials() -> dict[str, str]:
            return dict(secrets)

        recordings = self.tmp / "recordings"
        recordings.mkdir(exist_ok=True, mode=0o700)
        return Services(judge=FlowJudge(flow, lambda: engine, lambda: None, lambda: False),
                        audit=self.sink, resource=resource, credentials=credentials, approvals=self.broker,
                        ssh_host_ca=self.host_ca, recordings=recordings)

    @asynccontextmanager
    async def agent(self, **options: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """An agent connected through the handler; on exit it disconnects and the flow ends."""
        serving = await self._serve()
        try:
            settings: dict[str, Any] = {"username": "agent", "client_keys": None, "agent_path": None, **options}
            async with asyncssh.connect("127.0.0.1", serving.port, known_hosts=self.agent_trust(), config=None,
                                        **settings) as conn:
                yield conn
        finally:
            await serving.done()

    async def refused_agent(self) -> asyncssh.Error:
        """What an agent gets when its connection is refused at login."""
        serving = await self._serve()
        try:
            await asyncssh.connect("127.0.0.1", serving.port, known_hosts=self.agent_trust(), username="agent",
                                   client_keys=None, agent_path=None, config=None)
        except asyncssh.Error as exc:
            return exc
        finally:
            await serving.done()
        raise AssertionError("the agent's connection was not refused")

    async def _serve(self) -> Serving:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]

        async def accept_and_serve() -> None:
            conn, peer = await asyncio.get_running_loop().sock_accept(listener)
            listener.close()
            process = ProcessInfo(os.getpid(), 1, 1001, 1001, "/usr/bin/agent", ("agent",), "/agents/bot")
            flow = FlowContext(self.flow_id, "bot", process, Endpoint(LOOPBACK, self.upstream.port),
                               Endpoint(LOOPBACK, peer[1]), "web1", connection_rule="web1-ssh")
            await HANDLER.serve(flow, conn, self.services(flow))

        return Serving(port, asyncio.get_running_loop().create_task(accept_and_serve()))

    def recording(self, summary: dict[str, Any]) -> Cast:
        """The recording an "ssh-end" record's summary names, verified."""
        path = self.tmp / "recordings" / str(summary["file"])
        return parse(read_verified(str(path), summary["sha256"], summary["bytes"]))

    def kind(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.sink.events if event.kind == kind]

    @property
    def connection(self) -> AuditEvent:
        (record,) = self.kind("connection")
        return record


@dataclass
class Serving:
    port: int
    task: asyncio.Task[None]

    async def done(self) -> None:
        await asyncio.wait_for(self.task, 10)


Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}
loop_run: Runner = asyncio.run  # the loop of the test running now (the `loop` fixture sets it)


@pytest.fixture(autouse=True, params=list(LOOPS))
def loop(request: pytest.FixtureRequest) -> None:
    """Every flow runs on asyncio's own loop, and on uvloop (the daemon's)."""
    global loop_run
    loop_run = LOOPS[request.param]


def scenario(test: Callable[[Lab], Coroutine[Any, Any, None]], tmp: Path, **lab: Any) -> None:
    async def main() -> None:
        (tmp / "server" / "srv").mkdir(parents=True)
        (tmp / "server" / "srv" / "motd").write_text("welcome\n")
        upstream = await start_upstream(tmp / "server")
        lab.setdefault("host_ca", SshHostCA.open(tmp / "state"))
        world = Lab(tmp, upstream, **lab)
        if not world.credentials:
            key_file = tmp / "id_upstream"
            key_file.write_bytes(upstream.client_key.export_private_key())
            key_file.chmod(0o600)
            world.credentials = {"user": UPSTREAM_USER, "private_key_file": str(key_file)}
        world.options.setdefault("known_hosts", world.known_hosts())
        try:
            await test(world)
        finally:
            upstream.server.close()
            await upstream.server.wait_closed()

    loop_run(asyncio.wait_for(main(), 30))


# ---- exec ------------------------------------------------------------------------------


def test_an_allowed_command_runs_and_its_end_is_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("echo hello world")
            assert (result.stdout, result.stderr, result.exit_status) == ("hello world\n", "", 0)
        assert lab.upstream.commands == ["echo hello world"]
        (judged,) = lab.kind("ssh")
        assert (judged.decision, judged.rule) == ("allow", "commands")
        assert judged.operation == {"kind": "ssh", "request": "exec", "command": "echo hello world"}
        (end,) = lab.kind("ssh-end")
        assert end.outcome is not None
        assert (end.outcome["exit_status"], end.outcome["bytes_up"], end.outcome["bytes_down"]) == (0, 0, 12)
        assert "recording" not in end.outcome
        connection = lab.connection
        assert connection.decision == "allow" and connection.rule == "web1-ssh"
        assert connection.outcome is not None and connection.operation is not None
        assert connection.operation == {"protocol": "ssh", "dst": f"127.0.0.1:{lab.upstream.port}"}
        assert (connection.outcome["user"], connection.outcome["channels"], connection.outcome["error"]) == (
            "agent", 1, None)
        assert (connection.outcome["bytes_up"], connection.outcome["bytes_down"]) == (0, 12)

    scenario(test, tmp_path)


def test_exit_status_signal_stdin_and_stderr_are_relayed(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            assert (await conn.run("exit 3")).exit_status == 3
            cat = await conn.run("cat", input="typed by the agent")
            assert (cat.stdout, cat.exit_status) == ("typed by the agent", 0)
            err = await conn.run("err on stderr")
            assert (err.stdout, err.stderr, err.exit_status) == ("", "on stderr\n", 1)
            killed = await conn.run("kill")
            assert killed.exit_signal is not None and killed.exit_signal[0] == "TERM"
            for signal in ("INT", None):
                waiting = await conn.create_process("pause")  # a signal sent before it runs upstream waits for it
                if signal is None:
                    waiting.send_break(250)
                else:
                    waiting.send_signal(signal)
                assert (await waiting.wait()).exit_status == 130
        assert lab.upstream.events == ["signal INT", "break 250"]
        assert lab.upstream.terminals == [None] * 6  # no pty asked for, none asked upstream
        ends = {str(e.operation["command"]): e.outcome for e in lab.kind("ssh-end") if e.operation and e.outcome}
        assert ends["exit 3"]["exit_status"] == 3
        assert (ends["cat"]["bytes_up"], ends["cat"]["bytes_down"]) == (18, 18)
        assert ends["err on stderr"]["bytes_down"] == 10
        assert ends["kill"]["exit_signal"] == "TERM"
        assert lab.connection.outcome is not None and lab.connection.outcome["channels"] == 6

    scenario(test, tmp_path)


def test_a_denied_command_gets_the_reason_on_stderr_and_status_126(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("rm -rf /srv")
            assert result.exit_status == 126
            assert result.stderr == ("interceptor: permission denied by interceptor rule 'no-rm': removing files is "
                                     "not allowed\n")
            assert result.stdout == ""
        assert lab.upstream.commands == []
        (judged,) = lab.kind("ssh")
        assert (judged.decision, judged.rule, judged.reason) == ("deny", "no-rm", "removing files is not allowed")
        assert lab.kind("ssh-end") == []

    scenario(test, tmp_path)


def test_a_command_past_the_limits_is_refused_and_recorded_cut(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        long_ascii = "echo " + "x" * (MAX_COMMAND + 10)  # the policy's limit, in characters
        long_utf8 = "echo " + "\u00e9" * (MAX_COMMAND // 2 + 10)  # the handler's, in bytes
        async with lab.agent() as conn:
            for command in (long_ascii, long_utf8):
                result = await conn.run(command)
                assert result.exit_status == 126
        assert lab.upstream.commands == []
        by_policy, by_handler = lab.kind("ssh")
        assert (by_policy.decision, by_policy.rule) == ("deny", "ssh-bad-command")
        assert (by_handler.decision, by_handler.rule) == ("deny", PROTOCOL_RULE)
        assert by_handler.reason == (f"the command is {len(long_utf8.encode())} bytes, more than the {MAX_COMMAND} "
                                     "an exec request may have")
        for record, command in ((by_policy, long_ascii), (by_handler, long_utf8)):
            assert record.operation is not None and record.operation["command_bytes"] == len(command.encode())
            assert len(str(record.operation["command"])) == 1024

    scenario(test, tmp_path, policy=POLICY + SHELLS)  # a shell rule allows the non-ASCII one (shell class)


def test_a_one_megabyte_command_ends_only_that_flow_with_a_clear_record(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        with pytest.raises((asyncssh.Error, OSError)):
            async with lab.agent() as conn:
                await conn.run("echo " + "x" * 1024 * 1024)
        connection = lab.connection
        assert connection.decision == "deny" and connection.outcome is not None
        assert connection.outcome["fault"] == "client"
        assert "packet" in str(connection.outcome["error"]).lower()
        assert lab.upstream.commands == []
        async with lab.agent() as conn:  # the next flow is served as usual
            assert (await conn.run("echo again")).stdout == "again\n"

    scenario(test, tmp_path)


def test_environment_variables_are_refused_and_named_in_the_connection_record(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("echo hi", env={"LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "/tmp/x"})
            assert result.stdout == "hi\n"
        assert lab.connection.outcome is not None
        assert sorted(cast(list[str], lab.connection.outcome["env_refused"])) == ["BASH_ENV", "LD_PRELOAD"]

    scenario(test, tmp_path)


# ---- approvals -------------------------------------------------------------------------


@asynccontextmanager
async def broker(lab: Lab) -> AsyncIterator[ApprovalBroker]:
    """The real approval broker on SQLite, lent to the lab's flows."""
    lab.broker = ApprovalBroker(await SqliteStore.open(str(lab.tmp / "approvals.db")), lab.sink, poll_seconds=0.05)
    try:
        yield lab.broker
    finally:
        await lab.broker.close()
        await lab.broker.store.close()


def test_a_held_command_waits_tells_the_agent_and_runs_once_approved(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with broker(lab) as approvals, lab.agent() as conn:
            process = await conn.create_process("reboot")
            notice = await asyncio.wait_for(process.stderr.readline(), 5)
            assert notice.startswith("interceptor: waiting for approval (request ID ")
            (pending,) = await approvals.list()
            assert pending.request_id in notice
            await approvals.approve(pending.request_id, ROOT)
            finished = await process.wait()
            assert finished.exit_status == 0
        assert lab.upstream.commands == ["reboot"]
        (end,) = lab.kind("ssh-end")
        assert (end.decision, end.rule) == ("approve", "reboots")
        (judged,) = lab.kind("ssh")
        assert (judged.decision, judged.rule) == ("approve", "reboots")
        assert judged.outcome is not None
        approval = cast(dict[str, object], judged.outcome["approval"])
        assert (approval["approved"], approval["request_id"]) == (True, pending.request_id)

    scenario(test, tmp_path)


def test_a_held_command_whose_agent_leaves_is_withdrawn_and_recorded_as_never_run(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with broker(lab):
            async with lab.agent() as conn:
                process = await conn.create_process("reboot")
                await asyncio.wait_for(process.stderr.readline(), 5)
            assert lab.upstream.commands == []
            (judged,) = lab.kind("ssh")
            assert (judged.decision, judged.reason) == ("deny", "the client disconnected")
        assert lab.sink.states() == ["pending", "withdrawn"]  # the broker's close waits for the withdrawal

    scenario(test, tmp_path)


def test_a_held_command_without_a_broker_is_refused(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("reboot")
            assert result.exit_status == 126
            assert "not approved (interceptor rule 'reboots'): approval needed but no approval broker" in str(
                result.stderr)
        assert lab.upstream.commands == []

    scenario(test, tmp_path)


# ---- shells ----------------------------------------------------------------------------


def test_a_shell_is_recorded_input_and_output(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            process = await conn.create_process(term_type="xterm", term_size=(100, 30))
            assert await process.stdout.readexactly(2) == "$ "
            process.stdin.write("hello\r")
            assert await process.stdout.readuntil("$ ") == "you said hello\r\n$ "
            process.change_terminal_size(120, 40)
            process.stdin.write("exit\r")
            assert (await process.wait()).exit_status == 0
        assert (lab.upstream.terminals, lab.upstream.sizes) == (["xterm"], [(120, 40)])
        (end,) = lab.kind("ssh-end")
        assert end.operation == {"kind": "ssh", "request": "shell", "pty": True}
        assert end.outcome is not None
        summary = cast(dict[str, Any], end.outcome["recording"])
        assert summary["file"] == f"{lab.flow_id}-1.cast" and "path" not in summary
        assert scrub_event({"outcome": end.outcome}) == {"outcome": end.outcome}, "the trail keeps the file's name"
        cast_file = lab.recording(summary)
        assert (cast_file.header["width"], cast_file.header["height"]) == (100, 30)
        kinds = "".join(str(event.data) for event in cast_file.events if event.kind == "i")
        assert kinds == "hello\rexit\r"
        assert any(event.kind == "r" and event.data == "120x40" for event in cast_file.events)
        assert "you said hello" in "".join(str(event.data) for event in cast_file.events if event.kind == "o")

    scenario(test, tmp_path, policy=POLICY + SHELLS, flow_id=uuid.uuid4().hex[:16])  # as the daemon names flows


def test_recording_file_names_never_look_like_tokens_to_the_scrub() -> None:
    """`<flow>-<channel>.cast`, the flow named as the daemon names flows (16 hex digits): too
    short for a hex or base64 token, and hex never starts a known token's prefix."""
    for channel in (1, 64):
        names = [f"{uuid.uuid4().hex[:16]}-{channel}.cast" for _ in range(2000)]
        assert [name for name in names if scrub_text(name) != name] == []


def test_shells_opened_together_are_recorded_apart(tmp_path: Path) -> None:
    """Each shell's "ssh-end" names its "ssh" record, so `audit replay` finds each shell's
    recording from its "ssh" record's id."""
    ends: dict[str, str] = {}  # "ssh" record's id -> its "ssh-end" record's id

    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            shells = [await conn.create_process(term_type="vt100") for _ in range(2)]
            for number, shell in enumerate(shells):
                await shell.stdout.readexactly(2)
                shell.stdin.write(f"shell {number}\rexit\r")
                assert (await shell.wait()).exit_status == 0
        names = {str(cast(dict[str, Any], (end.outcome or {})["recording"])["file"]) for end in lab.kind("ssh-end")}
        assert len(names) == 2 and all((lab.tmp / "recordings" / name).exists() for name in names)
        ends.update({str((end.outcome or {})["request_event"]): end.event_id for end in lab.kind("ssh-end")})
        assert sorted(ends) == sorted(request.event_id for request in lab.kind("ssh"))
        store = open_sink({"store": "sqlite", "path": str(lab.tmp / "audit.db"), "chain_id": "host-a"})
        for event in lab.sink.events:
            await store.write(event)
        await store.close()

    scenario(test, tmp_path, policy=POLICY + SHELLS)
    said = []
    for request, end in ends.items():
        result = CliRunner().invoke(audit, ["replay", request, "--speed", "0", "--store", str(tmp_path / "audit.db")],
                                    obj={"settings": Settings(state_dir=tmp_path)})
        assert result.exit_code == 0, result.output
        assert f"replaying event {end}:" in result.stderr
        said.append([number for number in (0, 1) if f"you said shell {number}" in result.stdout])
    assert sorted(said) == [[0], [1]]


def test_a_shell_past_its_recording_limit_is_ended_and_the_agent_told(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            process = await conn.create_process(term_type="xterm", term_size=(80, 24))
            await process.stdout.readexactly(2)
            process.stdin.write("x" * 2000 + "\r")
            finished = await process.wait()
            assert finished.exit_status == 126
            assert "recording size limit" in str(finished.stderr)
        (end,) = lab.kind("ssh-end")
        assert end.outcome is not None
        assert cast(dict[str, Any], end.outcome["recording"])["limited"] is True

    scenario(test, tmp_path, options={"recording_limit_bytes": 1024}, policy=POLICY + SHELLS)


# ---- SFTP ------------------------------------------------------------------------------


def test_sftp_is_served_by_the_proxy_and_judged_by_path(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/srv/motd", "rb") as file:
                data: object = await file.read()  # bytes: opened in binary mode
                assert data == b"welcome\n"
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="interceptor: .*'default-deny'"):
                await sftp.open("/srv/new", "wb")
        assert not (lab.tmp / "server" / "srv" / "new").exists()
        judged = {(e.decision, str((e.operation or {}).get("path"))) for e in lab.kind("ssh")}
        assert ("allow", "/srv/motd") in judged and ("deny", "/srv/new") in judged

    scenario(test, tmp_path)


def test_legacy_scp_is_judged_as_its_exec_then_served_by_the_proxy(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            await asyncssh.scp((conn, "/srv/motd"), tmp_path / "got")
            with pytest.raises(asyncssh.SFTPError):
                await asyncssh.scp((conn, "/srv/../private.txt"), tmp_path / "stolen")
            unread = await conn.run("scp -q -f /srv/motd", encoding=None)  # -q: the policy's, not asyncssh's
            assert unread.exit_status == 1 and b"scp: " in cast(bytes, unread.stderr), unread
        assert (tmp_path / "got").read_text() == "welcome\n" and not (tmp_path / "stolen").exists()
        assert lab.upstream.commands == []  # no scp ran on the server
        execs = [e for e in lab.kind("ssh") if (e.operation or {}).get("request") == "exec"]
        assert [(e.decision, (e.operation or {})["command"]) for e in execs] == [
            ("allow", "scp -f /srv/motd"), ("deny", "scp -f /srv/../private.txt"), ("allow", "scp -q -f /srv/motd")]
        reads = [(e.decision, (e.operation or {}).get("path")) for e in lab.kind("ssh")
                 if (e.operation or {}).get("request") == "read"]
        assert ("allow", "/srv/motd") in reads
        end, unread_end = [e for e in lab.kind("ssh-end") if (e.operation or {}).get("request") == "exec"]
        assert unread_end.outcome is not None and unread_end.outcome["exit_status"] == 1
        assert end.outcome is not None and end.outcome["exit_status"] == 0
        assert cast(int, end.outcome["bytes_down"]) > len("welcome\n") and cast(int, end.outcome["bytes_up"]) > 0

    scenario(test, tmp_path)


@pytest.mark.parametrize(("operation", "reason"), [
    (SshRequest("exec", command=""), "empty command"),
    (SshRequest("exec", command="scp -f /srv/motd", pty=True), "legacy scp on a terminal"),
])
def test_requests_the_handler_never_serves_whatever_the_policy(operation: SshRequest, reason: str) -> None:
    refusal = FlowGate(cast(FlowContext, None), cast(Services, None), recordings=True).fixed(operation)
    assert refusal is not None and refusal.rule == PROTOCOL_RULE and reason in refusal.reason


# ---- forwards --------------------------------------------------------------------------


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_an_allowed_forward_goes_through_the_server_connection(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        echo = await echo_server()
        port = echo.sockets[0].getsockname()[1]
        try:
            async with lab.agent() as conn:
                reader, writer = await conn.open_connection("127.0.0.1", port)
                writer.write(b"ping")
                assert await reader.read(100) == b"ping"
                writer.close()
        finally:
            echo.close()
        judged = [e for e in lab.kind("ssh") if e.operation and e.operation["request"] == "forward"]
        assert [(e.decision, e.rule, e.operation) for e in judged] == [
            ("allow", "loopback-forwards", {"kind": "ssh", "request": "forward", "forward": "local",
                                       "target": f"127.0.0.1:{port}"})]
        (end,) = lab.kind("ssh-end")
        assert end.outcome is not None and (end.outcome["bytes_up"], end.outcome["bytes_down"]) == (4, 4)

    scenario(test, tmp_path)


def test_a_refused_forward_is_not_opened_and_is_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.open_connection("10.9.9.9", 5432)
            assert refused.value.reason.startswith("interceptor: permission denied by interceptor rule "
                                                   "'default-deny': ")
            assert (await conn.run("echo still here")).exit_status == 0
        (judged, _) = lab.kind("ssh")
        assert (judged.decision, judged.operation) == ("deny", {"kind": "ssh", "request": "forward", "forward": "local",
                                                                "target": "10.9.9.9:5432"})

    scenario(test, tmp_path)


def test_an_allowed_remote_forward_listens_on_the_server_and_bridges_to_the_agent(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            async def answer(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
                writer.write(b"agent got " + await reader.read(100))
                writer.close()

            listener = await conn.start_server(lambda host, port: answer, "127.0.0.1", 0, encoding=None)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(b"hi")
            assert await reader.read(100) == b"agent got hi"
            writer.close()
            listener.close()
        (judged,) = lab.kind("ssh")
        assert (judged.decision, judged.rule, cast(dict[str, object], judged.operation)["target"]) == (
            "allow", "loopback-forwards", "127.0.0.1:0")
        (end,) = lab.kind("ssh-end")
        assert end.outcome is not None and (end.outcome["bytes_up"], end.outcome["bytes_down"]) == (12, 2)

    scenario(test, tmp_path)


def test_an_allowed_remote_forward_the_server_cannot_listen_for_is_recorded_failed(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        try:
            async with lab.agent() as conn:
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port("127.0.0.1", taken.getsockname()[1], "localhost", 22)
        finally:
            taken.close()
        (end,) = lab.kind("ssh-end")
        assert end.decision == "allow" and end.outcome is not None
        assert str(end.outcome["error"]).startswith("the server would not listen there: ")

    scenario(test, tmp_path)


def test_a_remote_forward_refused_by_the_policy(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("", 8022, "localhost", 22)
        (judged,) = lab.kind("ssh")
        assert (judged.decision, judged.operation) == ("deny", {"kind": "ssh", "request": "forward",
                                                                "forward": "remote", "target": ":8022"})

    scenario(test, tmp_path)


# ---- refused whatever the policy, limits, bad input -----------------------------------


def test_agent_forwarding_and_other_subsystems_are_refused_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent(agent_forwarding=True, agent_path=str(lab.tmp / "no-agent")) as conn:
            result = await conn.run("echo hi")
            assert result.stdout == "hi\n"
            other = await conn.run(subsystem="netconf")
            assert (other.exit_status, other.stderr) == (
                126, "interceptor: permission denied by interceptor rule 'ssh-subsystem': subsystem 'netconf' is "
                     "refused: only sftp is served\n")
        refused = {(e.rule, str((e.operation or {}).get("forward") or (e.operation or {}).get("request")))
                   for e in lab.kind("ssh") if e.decision == "deny"}
        assert refused == {("ssh-forwarding", "agent"), ("ssh-subsystem", "subsystem")}
        assert lab.upstream.commands == ["echo hi"]

    scenario(test, tmp_path)


def test_a_command_that_is_not_utf8_is_refused_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            with pytest.raises(asyncssh.ChannelOpenError):  # asyncssh's client: the exec request failed
                await conn.create_process(cast(str, b"echo \xff"))  # the bytes as sent on the wire
            assert (await conn.run("echo next")).exit_status == 0
        refused, _ = lab.kind("ssh")
        assert (refused.decision, refused.rule, refused.reason) == ("deny", PROTOCOL_RULE,
                                                                    "the command is not valid UTF-8")
        assert refused.operation == {"kind": "ssh", "request": "exec", "command": "echo \\xff"}

    scenario(test, tmp_path)


def test_channels_past_the_limit_are_refused(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            open_ones = [await conn.create_process("cat") for _ in range(MAX_CHANNELS)]
            with pytest.raises(asyncssh.ChannelOpenError, match=f"at most {MAX_CHANNELS} channels"):
                await conn.create_process("cat")
            open_ones[0].stdin.write_eof()
            await open_ones[0].wait()
            assert (await conn.run("echo room again")).exit_status == 0
            for process in open_ones[1:]:
                process.stdin.write_eof()
                await process.wait()
        assert lab.connection.outcome is not None
        assert (lab.connection.outcome["channels"], lab.connection.outcome["channels_refused"]) == (MAX_CHANNELS + 1, 1)

    scenario(test, tmp_path)


def test_requests_after_the_session_started_are_refused_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "pause", encoding=None)
            client = cast("asyncssh.SSHClientChannel[bytes]", chan)
            late: list[tuple[bytes, bytes]] = [
                (b"pty-req", String("xterm") + UInt32(80) + UInt32(24) + UInt32(0) + UInt32(0) + String(b"\0")),
                (b"exec", String("echo second")), (b"shell", b""), (b"subsystem", String("sftp")),
                (b"env", String("LD_PRELOAD") + String("/tmp/x.so")),
                (b"x11-req", Boolean(False) + String("MIT-MAGIC-COOKIE-1") + String("00") + UInt32(0)),
                (b"auth-agent-req@openssh.com", b""), (b"made-up@example.com", String("x"))]
            for name, data in late:
                assert not await client._make_request(name, data), name
            client.send_signal("INT")  # still relayed
            await asyncio.wait_for(client.wait_closed(), 10)
        assert (lab.upstream.commands, lab.upstream.terminals, lab.upstream.events) == (["pause"], [None],
                                                                                         ["signal INT"])
        refused = [(e.rule, e.operation) for e in lab.kind("ssh") if e.decision == "deny"]
        late_one = {"kind": "ssh", "request": "exec", "command": "pause", "pty": True}
        assert sorted(refused, key=str) == sorted([
            (PROTOCOL_RULE, late_one), (PROTOCOL_RULE, {"kind": "ssh", "request": "exec", "command": "echo second"}),
            (PROTOCOL_RULE, {"kind": "ssh", "request": "shell"}),
            (PROTOCOL_RULE, {"kind": "ssh", "request": "subsystem", "command": "sftp"}),
            ("ssh-forwarding", {"kind": "ssh", "request": "forward", "forward": "x11"}),
            ("ssh-forwarding", {"kind": "ssh", "request": "forward", "forward": "agent"})], key=str)
        (pty,) = [e for e in lab.kind("ssh") if e.operation == late_one]
        assert pty.reason == "a 'pty-req' request after the channel's exec request is refused: what runs is what " \
                             "was judged"
        assert lab.connection.outcome is not None and lab.connection.outcome["env_refused"] == ["LD_PRELOAD"]
        assert lab.connection.outcome["requests_refused"] == ["made-up@example.com"]

    scenario(test, tmp_path, policy=POLICY + SHELLS)


def test_a_shell_class_exec_is_recorded_like_a_shell(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("cat | cat", input="typed by the agent")
            assert (result.stdout, result.exit_status) == ("typed by the agent", 0)
            assert (await conn.run("echo plain")).exit_status == 0
        ends = {str((e.operation or {})["command"]): e.outcome or {} for e in lab.kind("ssh-end")}
        assert "recording" not in ends["echo plain"]
        summary = cast(dict[str, Any], ends["cat | cat"]["recording"])
        recorded = lab.recording(summary)
        assert "env" not in recorded.header  # no terminal: none in the recording either
        assert "".join(str(e.data) for e in recorded.events if e.kind == "i") == "typed by the agent"
        assert "".join(str(e.data) for e in recorded.events if e.kind == "o") == "typed by the agent"

    scenario(test, tmp_path, policy=POLICY + SHELLS)


@pytest.mark.parametrize(("operation", "recorded"), [
    (SshRequest("exec", command="bash"), True), (SshRequest("exec", command="python3 -"), True),
    (SshRequest("exec", command="echo a; id"), True), (SshRequest("exec", command="echo hi", pty=True), True),
    (SshRequest("shell"), True), (SshRequest("exec", command="echo hi"), False),
    (SshRequest("subsystem", command="netconf"), False)])
def test_without_a_recordings_directory_what_would_be_recorded_is_refused(operation: SshRequest,
                                                                          recorded: bool) -> None:
    assert is_recorded(operation) is recorded
    gate = FlowGate(cast(FlowContext, None), cast(Services, None), recordings=False)
    refusal = gate.fixed(operation)
    if operation.request == "subsystem":
        assert refusal is not None and "not served" in refusal.reason
    else:
        assert (refusal is not None and refusal.rule == PROTOCOL_RULE) is recorded
        assert (refusal is not None and "recordings directory" in refusal.reason) is recorded


def test_unix_socket_forwards_and_tunnels_are_refused_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            with pytest.raises(asyncssh.ChannelOpenError, match="Unix socket .* never allowed"):
                await conn.open_unix_connection("/var/run/docker.sock")
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_path("/run/agent.sock", str(lab.tmp / "local.sock"))
            with pytest.raises(asyncssh.ChannelOpenError, match="tunnel forwarding .* never allowed"):
                await conn.open_tun()
            assert (await conn.run("echo still here")).exit_status == 0
        assert {e.rule for e in lab.kind("ssh") if e.decision == "deny"} == {"ssh-forwarding"}
        refused = [e.operation for e in lab.kind("ssh") if e.decision == "deny"]
        forward = {"kind": "ssh", "request": "forward"}
        assert refused == [{**forward, "forward": "unix", "target": "/var/run/docker.sock"},
                           {**forward, "forward": "remote-unix", "target": "/run/agent.sock"},
                           {**forward, "forward": "tun", "target": "tun:any"}]

    scenario(test, tmp_path)


def test_remote_forwards_past_the_limit_are_refused_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            listeners = [await conn.forward_remote_port("127.0.0.1", 0, "localhost", 22)
                         for _ in range(MAX_LISTENERS)]
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "localhost", 22)
            listeners[0].close()  # cancel-tcpip-forward: room for one more
            await listeners[0].wait_closed()
            listeners.append(await conn.forward_remote_port("127.0.0.1", 0, "localhost", 22))
        refused = [e for e in lab.kind("ssh") if e.decision == "deny"]
        assert [(e.rule, e.reason) for e in refused] == [
            (PROTOCOL_RULE, f"at most {MAX_LISTENERS} remote forwards may listen at once")]
        assert len([e for e in lab.kind("ssh") if e.decision == "allow"]) == MAX_LISTENERS + 1
        assert lab.connection.outcome is not None and lab.connection.outcome["listeners_refused"] == 1

    scenario(test, tmp_path)


@pytest.mark.parametrize("garbage", [
    b"".join(b"banner line %d\r\n" % i for i in range(2000)),  # a version banner flood
    b"SSH-2.0-agent\r\n" + b"\x00\x00\x00\x0c\xc8" + os.urandom(11),  # padding longer than the packet
    b"SSH-2.0-agent\r\n" + b"\xff\xff\xff\xff" + os.urandom(11),  # a packet of 4 GiB
], ids=["banner-flood", "malformed-packet", "oversized-packet"])
def test_bad_input_ends_that_flow_with_a_clear_record(tmp_path: Path, garbage: bytes) -> None:
    async def test(lab: Lab) -> None:
        serving = await lab._serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", serving.port)
        writer.write(garbage)
        await reader.read()  # the enforcer closes the connection
        writer.close()
        await serving.done()
        connection = lab.connection
        assert (connection.decision, cast(dict[str, object], connection.outcome)["fault"]) == ("deny", "client")
        assert str(connection.reason).startswith("agent connection: ")
        async with lab.agent() as conn:  # the next flow is served as usual
            assert (await conn.run("echo fine")).stdout == "fine\n"

    scenario(test, tmp_path)


# ---- the upstream ----------------------------------------------------------------------


def test_an_untrusted_upstream_host_key_refuses_the_flow(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def test(lab: Lab) -> None:
        known_hosts = lab.options["known_hosts"] = lab.known_hosts(asyncssh.generate_private_key("ssh-ed25519"))
        refused = await lab.refused_agent()
        assert str(getattr(refused, "reason", refused)) == f"interceptor: {HOST_KEY_TOLD}"  # no path, no name
        connection = lab.connection
        assert connection.decision == "error" and connection.outcome is not None
        assert connection.outcome["fault"] == "server"
        error = str(connection.outcome["error"])
        assert f"its host key is not trusted for 'web1.internal' by known_hosts {known_hosts}" in error
        assert f"ssh-keyscan -t ed25519 -p {lab.upstream.port} web1.internal >> {known_hosts}" in error
        assert f"by known_hosts {known_hosts}" in caplog.text  # the daemon's log has the details too

    scenario(test, tmp_path)


def test_the_host_key_alias_option_is_the_name_looked_up(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        lab.options["known_hosts"] = lab.known_hosts(name="alias.example")
        lab.options["host_key_alias"] = "alias.example"
        async with lab.agent() as conn:
            assert (await conn.run("echo aliased")).stdout == "aliased\n"

    scenario(test, tmp_path)


def test_an_unreachable_upstream_refuses_the_flow(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        lab.upstream.server.close()
        await lab.upstream.server.wait_closed()
        refused = await lab.refused_agent()
        assert f"upstream 127.0.0.1:{lab.upstream.port} is unreachable" in str(getattr(refused, "reason", refused))
        assert lab.connection.outcome is not None and lab.connection.outcome["fault"] == "server"

    scenario(test, tmp_path)


def test_an_agent_that_never_completes_its_handshake_costs_no_login(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends its version and then nothing is disconnected after the login
    timeout; the server is never logged in to."""
    logins: list[str] = []

    def counted(self: asyncssh.SSHServer, username: str) -> bool:
        logins.append(username)
        return True

    monkeypatch.setattr(UpstreamServer, "begin_auth", counted, raising=False)
    monkeypatch.setattr(handler, "LOGIN_SECONDS", 0.5)

    async def test(lab: Lab) -> None:
        serving = await lab._serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", serving.port)
        writer.write(b"SSH-2.0-silent\r\n")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
        await asyncio.wait_for(reader.read(), 5)  # the enforcer hangs up (after its key exchange offer)
        writer.close()
        await serving.done()
        assert logins == [] and lab.connection.decision != "allow"
        assert "Login timeout expired" in str(lab.connection.reason)

    scenario(test, tmp_path)


def test_without_an_ssh_host_ca_the_flow_is_closed_and_recorded(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        serving = await lab._serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", serving.port)
        assert await reader.read() == b""  # closed before any banner
        writer.close()
        await serving.done()
        assert lab.connection.decision == "error" and lab.connection.outcome is not None
        assert lab.connection.outcome["fault"] == "enforcer"
        assert "no SSH host CA" in str(lab.connection.reason)

    scenario(test, tmp_path, host_ca=None)


def test_no_known_hosts_option_refuses_the_flow(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        del lab.options["known_hosts"]
        refused = await lab.refused_agent()
        assert "has no known_hosts option" in str(getattr(refused, "reason", refused))
        assert lab.connection.outcome is not None and lab.connection.outcome["fault"] == "policy"
        assert lab.upstream.commands == []

    scenario(test, tmp_path, options={})


def test_an_unreadable_known_hosts_file_is_named_in_the_record_only(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        missing = lab.options["known_hosts"] = str(lab.tmp / "private-dir" / "known_hosts")
        refused = str(getattr(await lab.refused_agent(), "reason", None))
        assert "private-dir" not in refused and "known_hosts for this resource cannot be used" in refused
        assert f"known_hosts file {missing} cannot be read" in str(lab.connection.reason)
        assert lab.connection.outcome is not None and lab.connection.outcome["fault"] == "policy"

    scenario(test, tmp_path)


def test_unusable_credentials_are_named_in_the_record_only(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        refused = str(getattr(await lab.refused_agent(), "reason", None))
        assert refused == "interceptor: the credentials of this resource cannot be used for the server login; see " \
                          "the audit trail"
        assert "private_key_file cannot be read" in str(lab.connection.reason)

    scenario(test, tmp_path, credentials={"user": UPSTREAM_USER, "private_key_file": str(tmp_path / "none")})


def test_what_the_agent_is_told_of_an_upstream_failure_holds_no_local_detail() -> None:
    detail = "upstream 10.0.0.1:22: SSH handshake failed: PermissionDenied: no more methods for user deploy"
    assert told(HandshakeFailed(detail, "upstream 10.0.0.1:22: SSH handshake failed (PermissionDenied)")) == \
        "upstream 10.0.0.1:22: SSH handshake failed (PermissionDenied)"
    assert told(SshCredentialsError("private_key_file /root/keys/web1 cannot be read")).startswith(
        "the credentials of this resource cannot be used")
    assert "/etc" not in told(RuntimeError("/etc/interceptor/x")), "an unexpected failure is told by kind only"


def test_a_refused_login_never_shows_the_password(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        refused = await lab.refused_agent()
        reason = str(getattr(refused, "reason", refused))
        assert "refused the login with the credentials of resource 'web1'" in reason
        assert PASSWORD not in reason and UPSTREAM_USER not in reason
        assert PASSWORD not in repr(lab.sink.events)

    scenario(test, tmp_path, credentials={"user": UPSTREAM_USER, "password": PASSWORD})


def test_credentials_of_the_wrong_shape_are_refused_without_their_values() -> None:
    with pytest.raises(SshCredentialsError, match="token"):
        login({"user": "u", "token": "abc"})
    with pytest.raises(SshCredentialsError, match="need private_key, private_key_file or password"):
        login({"user": "u"})
    with pytest.raises(SshCredentialsError, match="private key cannot be used") as bad:
        login({"user": "u", "private_key": "not-a-key-SECRETVALUE"})
    assert "SECRETVALUE" not in str(bad.value)
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    cert = other.generate_user_certificate(other, "u", principals=["u"])
    with pytest.raises(SshCredentialsError, match="not for the private key"):
        login({"user": "u", "private_key": key.export_private_key().decode(),
               "certificate": cert.export_certificate().decode()})
    account = login({"user": "u", "private_key": key.export_private_key().decode(), "password": "unused"})
    assert account.key is not None and account.password is None
