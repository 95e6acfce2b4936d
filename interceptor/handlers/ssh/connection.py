"""The agent's side of one ssh flow: the asyncssh SSHServer the agent's connection lands on,
and the Gate its channels are judged through.

- No authentication (begin_auth answers that none is needed): the agent is who the flow says
  it is, whatever user name it gives (recorded). Login waits for the server connection, so
  an unreachable server, an untrusted host key or unusable credentials end the agent's
  connection with a DISCONNECT naming the reason (OpenSSH prints it), never the credentials.
- Session channels (RFC 4254 section 6) become exec, shell and subsystem requests
  (interceptor.handlers.ssh.process); SFTP goes to SftpProxy (interceptor.handlers.ssh.sftp),
  which reaches this object as its SftpContext; direct-tcpip and tcpip-forward to
  interceptor.handlers.ssh.forwards.
- Refused whatever the policy, and recorded: environment variables (section 6.4: LD_PRELOAD,
  BASH_ENV and the like would change what an allowed command runs; their names go into the
  connection record), agent forwarding, X11 forwarding (section 6.3), subsystems other than
  sftp, a command longer than MAX_COMMAND bytes, a request that would be recorded when the
  daemon has no recordings directory. At most MAX_CHANNELS channels are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import asyncssh
from asyncssh.packet import SSHPacket

from interceptor.approvals.broker import DISCONNECTED
from interceptor.decision import Decision, Verdict
from interceptor.errors import AuditUnavailable, Refused
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.ssh import forwards, process
from interceptor.operations import SshRequest

log = logging.getLogger(__name__)

PROTOCOL_RULE = "ssh-protocol"  # the rule of a record for a request refused whatever the policy
POLICY_ERROR_RULE = "policy-error"
SQLSTATE = "42501"
MAX_COMMAND = 64 * 1024  # bytes of an exec's command (UTF-8); longer ones are refused
MAX_CHANNELS = 64  # channels the agent may have open at once
MAX_ENV_NAMES = 64  # refused environment variable names the connection record lists
AUDIT_COMMAND = 1024  # characters of a refused over-long command its record keeps
WINDOW = 2 * 1024 * 1024  # asyncssh's defaults for a session channel
PACKET = 32 * 1024
DEFAULT_RECORDING_LIMIT = 64 * 1024 * 1024
SFTP_VERSION = 3  # draft-ietf-secsh-filexfer-02, what OpenSSH speaks

Notice = Callable[[str], None]  # tells the agent of one channel something (on its stderr)


def audit_operation(operation: SshRequest) -> dict[str, object]:
    """The record's view of `operation`: its summary, an over-long command cut to
    AUDIT_COMMAND characters with its full size beside it."""
    summary = operation.summary()
    command = operation.command
    if command is not None and len(command) > AUDIT_COMMAND:
        summary["command"] = command[:AUDIT_COMMAND]
        summary["command_bytes"] = len(command.encode())
    return summary


class FlowGate:
    """The Gate of one flow (interceptor.handlers.ssh.gate) on its FlowJudge, the approval
    broker and the audit sink. `notice` tells the agent of one channel that its request waits
    for approval (None: the channel cannot carry it, as SFTP); `recordings` False refuses
    what would be recorded (a shell, a pty)."""

    def __init__(self, flow: FlowContext, services: Services, recordings: bool, notice: Notice | None = None) -> None:
        self.flow = flow
        self.services = services
        self.recordings = recordings
        self.notice = notice

    def for_channel(self, notice: Notice) -> FlowGate:
        """This gate, telling one channel's agent through `notice`."""
        return FlowGate(self.flow, self.services, self.recordings, notice)

    def fixed(self, operation: SshRequest) -> Decision | None:
        """The refusal of a request the handler never serves, whatever the policy says (the
        policy refuses most of these itself, under its own rule names), else None."""
        command = operation.command
        if operation.request == "exec" and command is not None and len(command.encode()) > MAX_COMMAND:
            return Decision.deny(PROTOCOL_RULE, f"the command is {len(command.encode())} bytes, more than the "
                                                f"{MAX_COMMAND} an exec request may have")
        if operation.request == "subsystem":
            return Decision.deny(PROTOCOL_RULE, f"subsystem {command!r} is not served (only sftp is)")
        if operation.request == "forward" and operation.forward in ("agent", "x11"):
            what = "agent forwarding" if operation.forward == "agent" else "X11 forwarding"
            return Decision.deny(PROTOCOL_RULE, f"{what} is never allowed through the interceptor")
        if (operation.request == "shell" or operation.pty) and not self.recordings:
            return Decision.deny(PROTOCOL_RULE, "interactive sessions are recorded, and the daemon has no "
                                                "recordings directory")
        return None

    async def authorize(self, operation: SshRequest) -> Decision:
        try:
            decision = self.services.judge.decide(operation)
        except Exception as exc:  # noqa: BLE001 - a policy failure denies this request, not the flow
            decision = Decision.deny(POLICY_ERROR_RULE, f"policy evaluation failed: {exc}")
        if decision.verdict is not Verdict.DENY:  # the handler's own limits hold whatever the policy says
            decision = self.fixed(operation) or decision
        approval: dict[str, object] | None = None
        if decision.verdict is Verdict.APPROVE:
            decision, approval = await self._hold(operation, decision)
        await self._record("ssh", operation, decision, {"approval": approval} if approval else None)
        if decision.verdict is Verdict.ALLOW or (approval is not None and approval["approved"] is True):
            return decision
        if decision.rule == PROTOCOL_RULE:
            raise Refused(SQLSTATE, decision.reason)
        if approval is not None:
            raise Refused(SQLSTATE, f"not approved (interceptor rule {decision.rule!r}): {decision.reason}")
        raise Refused(SQLSTATE, f"permission denied by interceptor rule {decision.rule!r}: {decision.reason}")

    async def _hold(self, operation: SshRequest, decision: Decision) -> tuple[Decision, dict[str, object]]:
        """Wait for a person's decision; the decision to record (the approve decision itself
        when approved, as every handler records it; a deny otherwise) and the approval's
        summary. Cancelled (the agent left), the request is withdrawn and recorded as never run."""
        broker = self.services.approvals
        if broker is None:
            reason = "approval needed but no approval broker is configured"
            return Decision.deny(decision.rule, reason), {"approved": False, "request_id": None, "reason": reason}
        pending = await broker.open(self.services.judge.request(operation), decision, self.flow.summary())
        if pending.waiting:
            log.info("flow %s of %s: ssh %s held for approval %s", self.flow.flow_id, self.flow.agent,
                     operation.request, pending.request_id)
            if self.notice is not None:
                timeout = decision.approval.timeout_seconds if decision.approval else 0
                self.notice(f"waiting for approval (request ID {pending.request_id}): ask an approver to run "
                            f"`interceptor approvals approve {pending.request_id}` (expires in {timeout} s)")
        try:
            outcome = await pending.wait()
        except asyncio.CancelledError:
            withdrawn = {"approved": False, "request_id": pending.request_id, "reason": DISCONNECTED,
                         "withdrawn": True}
            await self._record("ssh", operation, Decision.deny(decision.rule, DISCONNECTED), {"approval": withdrawn})
            raise
        summary: dict[str, object] = {"approved": outcome.approved, "request_id": outcome.request_id,
                                      "approver": outcome.approver, "reason": outcome.reason}
        if outcome.approved:
            return decision, summary
        return Decision.deny(decision.rule, outcome.reason or "not approved"), summary

    async def refused(self, operation: SshRequest, reason: str) -> None:
        """Record the refusal of a request the channel could not even read (never raises)."""
        try:
            await self._record("ssh", operation, Decision.deny(PROTOCOL_RULE, reason), None)
        except AuditUnavailable as exc:
            log.error("audit unavailable for flow %s: %s", self.flow.flow_id, exc)

    async def finished(self, operation: SshRequest, decision: Decision, outcome: dict[str, object]) -> None:
        try:
            await self._record("ssh-end", operation, decision, outcome)
        except AuditUnavailable as exc:
            log.error("audit unavailable for flow %s: %s", self.flow.flow_id, exc)
        except Exception:  # noqa: BLE001 - the end of a request is recorded or logged, never raised
            log.exception("flow %s: the end of an ssh %s could not be recorded", self.flow.flow_id, operation.request)

    async def _record(self, kind: str, operation: SshRequest, decision: Decision,
                      outcome: dict[str, object] | None) -> None:
        await self.services.audit.write(self.services.event(self.flow, kind, decision,
                                                            operation=audit_operation(operation), outcome=outcome))


class _Channel(asyncssh.SSHServerChannel[bytes]):
    """A session channel carrying bytes, with no line editor (the server's pty does the
    editing), that refuses environment variables, agent and X11 forwarding requests."""

    def __init__(self, conn: asyncssh.SSHServerConnection, owner: AgentConnection) -> None:
        super().__init__(conn, asyncio.get_running_loop(), True, False, False, 0, 1024, None, "strict", WINDOW,
                         PACKET)
        self.owner = owner

    def _process_env_request(self, packet: SSHPacket) -> bool:
        name = packet.get_string()
        packet.get_string()
        packet.check_end()
        self.owner.env_refused(name.decode("utf-8", "backslashreplace"))
        return False

    def _process_exec_request(self, packet: SSHPacket) -> bool:
        return self._readable(packet, "exec", _utf8, "the command is not valid UTF-8", super()._process_exec_request)

    def _process_subsystem_request(self, packet: SSHPacket) -> bool:
        return self._readable(packet, "subsystem", bytes.isascii, "the subsystem name is not ASCII",
                              super()._process_subsystem_request)

    def _readable(self, packet: SSHPacket, request: str, readable: Callable[[bytes], bool], reason: str,
                  then: Callable[[SSHPacket], bool]) -> bool:
        """Pass the request on to asyncssh (`then`) when its string reads; else refuse it, recorded."""
        rest = packet.get_remaining_payload()
        value = packet.get_string()
        if readable(value):
            return then(SSHPacket(rest))
        packet.check_end()
        self.owner.unreadable(SshRequest(request, command=value.decode("utf-8", "backslashreplace")), reason)
        return False

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: SSHPacket) -> None:
        packet.check_end()
        self.owner.refuse("agent")
        self._report_response(False)

    def _process_x11_req_request(self, packet: SSHPacket) -> bool | None:
        self.owner.refuse("x11")
        return False


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class _Session(asyncssh.SSHServerProcess[bytes]):
    """A session channel's process; `lost` is set when the channel closes."""

    def __init__(self, owner: AgentConnection, number: int, sftp_factory: asyncssh.SFTPServerFactory | None) -> None:
        super().__init__(owner.run_process, sftp_factory, SFTP_VERSION, sftp_factory is not None)
        self.owner = owner
        self.number = number  # the connection's channels opened before it, and it
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.is_set():
            self.lost.set()
            self.owner.channel_closed()


class AgentConnection(asyncssh.SSHServer):
    """The agent's SSH connection of one flow. `upstream`: the server connection being made
    (its failure ends the agent's login). Also the SftpContext of SftpProxy: `gate` and
    `open_sftp()`."""

    def __init__(self, flow: FlowContext, services: Services,
                 upstream: asyncio.Future[asyncssh.SSHClientConnection],
                 sftp_factory: asyncssh.SFTPServerFactory | None = None) -> None:
        self.flow = flow
        self.services = services
        self.upstream = upstream
        self.sftp_factory = sftp_factory
        self.gate = FlowGate(flow, services, services.recordings is not None)
        self.user: str | None = None  # the name the agent logged in as
        self.channels = 0  # opened so far
        self.open = 0  # open now
        self.refused_channels = 0  # refused past MAX_CHANNELS
        self.env_names: list[str] = []
        self.env_count = 0
        self.running: set[asyncio.Task[Any]] = set()  # requests being served: cancelled at the end
        self.records: set[asyncio.Task[None]] = set()  # records being written: waited for at the end
        self.conn: asyncssh.SSHServerConnection | None = None
        self.lost: Exception | None = None  # why the agent's connection ended, when not cleanly
        limit = (services.resource.options or {}).get("recording_limit_bytes")
        self.recording_limit = limit if isinstance(limit, int) and limit > 0 else DEFAULT_RECORDING_LIMIT

    # ---- the agent's connection ------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc

    async def begin_auth(self, username: str) -> bool:
        """No authentication: the flow says who the agent is. Waits for the server connection
        first; when it failed, the agent is disconnected with the reason."""
        self.user = username
        try:
            await asyncio.shield(self.upstream)
        except Exception as exc:  # noqa: BLE001 - the handler records the error; the agent is told
            if self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, f"interceptor: {exc}")
            return True
        return False

    async def server(self) -> asyncssh.SSHClientConnection:
        """The server connection (made at login)."""
        return await asyncio.shield(self.upstream)

    async def open_sftp(self) -> asyncssh.SFTPClient:
        """An SFTP client on the server connection, for SftpProxy."""
        return await (await self.server()).start_sftp_client()

    def env_refused(self, name: str) -> None:
        self.env_count += 1
        if len(self.env_names) < MAX_ENV_NAMES:
            self.env_names.append(name[:256])

    def refuse(self, forward: str) -> None:
        """An agent or X11 forwarding ask: refused, and recorded."""
        self.spawn(self._refuse(SshRequest("forward", forward=forward)))

    def unreadable(self, operation: SshRequest, reason: str) -> None:
        """A request refused because it cannot be read: recorded."""
        self.spawn(self.gate.refused(operation, reason))

    async def _refuse(self, operation: SshRequest) -> None:
        try:
            await self.gate.authorize(operation)
        except (Refused, AuditUnavailable):
            pass

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task the connection's end waits for (records still to be written)."""
        task = asyncio.get_running_loop().create_task(work)
        self.records.add(task)
        task.add_done_callback(self.records.discard)

    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        """The current task serves a request: the connection's end cancels it."""
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        try:
            yield
        finally:
            self.running.discard(task)

    def _admit(self) -> None:
        """Count a channel the agent opens; ChannelOpenError past MAX_CHANNELS open."""
        if self.open >= MAX_CHANNELS:
            self.refused_channels += 1
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE,
                                            f"interceptor: at most {MAX_CHANNELS} channels may be open at once")
        self.open += 1
        self.channels += 1

    def channel_closed(self) -> None:
        self.open -= 1

    # ---- channels ----------------------------------------------------------------------

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        assert self.conn is not None
        self._admit()
        return _Channel(self.conn, self), _Session(self, self.channels, self.sftp_factory)

    async def run_process(self, session: asyncssh.SSHServerProcess[bytes]) -> None:
        """The process of an exec, shell or (non-SFTP) subsystem request."""
        assert isinstance(session, _Session)
        gate = self.gate.for_channel(lambda text: process.tell(session, text))
        with self._serving():
            channel = process.Channel(gate, await self.server(), self.services.traffic, self.services.recordings,
                                      f"{self.flow.flow_id}-{session.number}", self.recording_limit)
            await process.serve(session, session.lost, channel)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        self._admit()
        return self._local(dest_host, dest_port, orig_host, orig_port)

    async def _local(self, dest_host: str, dest_port: int, orig_host: str,
                     orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
        with self._serving():
            return await forwards.local(self.gate, await self.server(), self.services.traffic, self.spawn,
                                        self.channel_closed, dest_host, dest_port, orig_host, orig_port)

    async def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        assert self.conn is not None
        with self._serving():
            return await forwards.remote(self.gate, await self.server(), self.conn, self.services.traffic,
                                         self.spawn, listen_host, listen_port)

    # ---- the end -------------------------------------------------------------------------

    async def close(self) -> None:
        """End what is still running (a held request is withdrawn and recorded) and wait for
        the records still to be written."""
        for task in list(self.running):
            task.cancel()
        while self.running or self.records:
            await asyncio.gather(*self.running, *self.records, return_exceptions=True)
