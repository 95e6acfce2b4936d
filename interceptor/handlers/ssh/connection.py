"""The agent's side of one ssh flow: the asyncssh SSHServer the agent's connection lands on,
and the Gate its channels are judged through.

- No authentication (begin_auth answers that none is needed): the agent is who the flow says
  it is, whatever user name it gives (recorded). The server connection is started there,
  once the agent has completed its key exchange and asked to log in (a connection that
  never speaks SSH costs the server nothing; the agent's whole login is bounded by the
  handler's login timeout), and login waits for it, so an unreachable server, an untrusted
  host key or unusable credentials end the agent's connection with a DISCONNECT saying what
  failed (upstream.told: OpenSSH prints it) without local paths, user names or credentials;
  the details go to the connection record and the daemon's log.
- Session channels (RFC 4254 section 6) become exec, shell and subsystem requests
  (interceptor.handlers.ssh.process); SFTP goes to SftpProxy (interceptor.handlers.ssh.sftp),
  which reaches this object as its SftpContext; direct-tcpip and tcpip-forward to
  interceptor.handlers.ssh.forwards.
- Refused whatever the policy, and recorded: environment variables (section 6.4: LD_PRELOAD,
  BASH_ENV and the like would change what an allowed command runs; their names go into the
  connection record), agent forwarding, X11 forwarding (section 6.3), Unix socket forwarding
  both ways (direct-streamlocal@openssh.com, streamlocal-forward@openssh.com) and tunnels
  (tun@openssh.com; OpenSSH PROTOCOL sections 2.3 and 2.4), subsystems other than sftp, a
  command longer than MAX_COMMAND bytes, a request that would be recorded when the daemon has
  no recordings directory, an exec with an empty command (asyncssh's client would ask the
  server for a shell), legacy scp on a terminal (scp clients ask for none; it is served by
  the SFTP proxy, interceptor.handlers.ssh.process, which records no terminal).
- What runs is what was judged: once a session channel's exec, shell or subsystem request is
  made, every further request on it is refused and recorded except window-change, signal and
  break (passed on to the server), keepalives and the requests refused at any time above. A
  late pty-req (which would put the judged command on a terminal), a second exec, shell or
  subsystem: an "ssh" record of what it would have run; any other request (and one asyncssh
  does not know, at any time): its name in the connection record.
- At most MAX_CHANNELS channels are open at once and MAX_LISTENERS remote forwards listen at
  once; those refused past the limits are counted in the connection record (a refused remote
  forward also has its "ssh" record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any, NoReturn

import asyncssh
from asyncssh.packet import PacketDecodeError, SSHPacket

from interceptor.approvals.broker import DISCONNECTED
from interceptor.decision import Decision, Verdict
from interceptor.errors import AuditUnavailable, Refused
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services
from interceptor.handlers.ssh import forwards, process, upstream
from interceptor.handlers.ssh.gate import Authorized
from interceptor.operations import SshRequest
from interceptor.policy.ssh_rules import REFUSED_FORWARDS

log = logging.getLogger(__name__)

PROTOCOL_RULE = "ssh-protocol"  # the rule of a record for a request refused whatever the policy
POLICY_ERROR_RULE = "policy-error"
SQLSTATE = "42501"
MAX_COMMAND = 64 * 1024  # bytes of an exec's command (UTF-8); longer ones are refused
MAX_CHANNELS = 64  # channels the agent may have open at once
MAX_LISTENERS = 16  # remote forwards (tcpip-forward) the server may be listening for at once
MAX_NAMES = 64  # refused environment variable names, and refused request names, the connection record lists
AUDIT_COMMAND = 1024  # characters of a refused over-long command its record keeps
WINDOW = 2 * 1024 * 1024  # asyncssh's defaults for a session channel
PACKET = 32 * 1024
DEFAULT_RECORDING_LIMIT = 64 * 1024 * 1024
SFTP_VERSION = 3  # draft-ietf-secsh-filexfer-02, what OpenSSH speaks

Notice = Callable[[str], None]  # tells the agent of one channel something (on its stderr)

# Session channel requests taken at any time: relayed to the server (window-change, signal,
# break), keepalives asyncssh answers with failure as their senders expect (OpenSSH's, PuTTY's
# window probe) and eow@openssh.com, or refused and recorded by _Channel at any time (env,
# x11-req, auth-agent-req@openssh.com).
ANY_TIME_REQUESTS = frozenset({"window-change", "signal", "break", "keepalive@openssh.com",
                               "winadj@putty.projects.tartarus.org", "eow@openssh.com", "env", "x11-req",
                               "auth-agent-req@openssh.com"})
SETUP_REQUESTS = frozenset({"pty-req", "exec", "shell", "subsystem"})  # taken until the session starts


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
        if operation.request == "exec" and not command:
            return Decision.deny(PROTOCOL_RULE, "an exec request with an empty command is not served (use a "
                                                "shell request for a shell)")
        if operation.pty and process.scp_of(operation) is not None:
            return Decision.deny(PROTOCOL_RULE, "legacy scp on a terminal is not served")
        if operation.request == "subsystem":
            return Decision.deny(PROTOCOL_RULE, f"subsystem {command!r} is not served (only sftp is)")
        if operation.request == "forward" and operation.forward in REFUSED_FORWARDS:
            return Decision.deny(PROTOCOL_RULE, never_allowed(operation.forward))
        if process.recorded(operation) and not self.recordings:
            return Decision.deny(PROTOCOL_RULE, "shells, terminals and shell-class commands are recorded, and the "
                                                "daemon has no recordings directory")
        return None

    async def authorize(self, operation: SshRequest) -> Authorized:
        try:
            decision = self.services.judge.decide(operation)
        except Exception as exc:  # noqa: BLE001 - a policy failure denies this request, not the flow
            decision = Decision.deny(POLICY_ERROR_RULE, f"policy evaluation failed: {exc}")
        if decision.verdict is not Verdict.DENY:  # the handler's own limits hold whatever the policy says
            decision = self.fixed(operation) or decision
        approval: dict[str, object] | None = None
        if decision.verdict is Verdict.APPROVE:
            decision, approval = await self._hold(operation, decision)
        event_id = await self._record("ssh", operation, decision, {"approval": approval} if approval else None)
        if decision.verdict is Verdict.ALLOW or (approval is not None and approval["approved"] is True):
            return Authorized(decision, event_id)
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

    async def finished(self, authorized: Authorized, operation: SshRequest, outcome: dict[str, object]) -> None:
        try:
            await self._record("ssh-end", operation, authorized.decision,
                               {**outcome, "request_event": authorized.event_id})
        except AuditUnavailable as exc:
            log.error("audit unavailable for flow %s: %s", self.flow.flow_id, exc)
        except Exception:  # noqa: BLE001 - the end of a request is recorded or logged, never raised
            log.exception("flow %s: the end of an ssh %s could not be recorded", self.flow.flow_id, operation.request)

    async def _record(self, kind: str, operation: SshRequest, decision: Decision,
                      outcome: dict[str, object] | None) -> str:
        """Write the record; its event id."""
        event = self.services.event(self.flow, kind, decision, operation=audit_operation(operation), outcome=outcome)
        await self.services.audit.write(event)
        return event.event_id


def never_allowed(forward: str) -> str:
    """The refusal of a forward in REFUSED_FORWARDS."""
    return f"{REFUSED_FORWARDS[forward]} is never allowed through the interceptor"


class _Channel(asyncssh.SSHServerChannel[bytes]):
    """A session channel carrying bytes, with no line editor (the server's pty does the
    editing), that refuses environment variables, agent and X11 forwarding requests, and
    every request that would change its session once it started (see the module docstring)."""

    def __init__(self, conn: asyncssh.SSHServerConnection, owner: AgentConnection, session: _Session) -> None:
        super().__init__(conn, asyncio.get_running_loop(), True, False, False, 0, 1024, None, "strict", WINDOW,
                         PACKET)
        self.owner = owner
        self.session = session

    def _service_next_request(self) -> None:
        name, packet, _ = self._request_queue[0]
        if name in ANY_TIME_REQUESTS or (name in SETUP_REQUESTS and not self._session_started):
            super()._service_next_request()
            return
        late = self._late_operation(name, packet)
        if late is None:
            self.owner.request_refused(name)
        else:
            self.owner.refused(late, f"a {name!r} request after the channel's {self.session.judged().request} "
                                     "request is refused: what runs is what was judged")
        self._report_response(False)

    def _late_operation(self, name: str, packet: SSHPacket) -> SshRequest | None:
        """What a setup request made after the session started would have run (a pty-req:
        the session's request on a terminal); None for any other request."""
        if name == "pty-req":
            return replace(self.session.judged(), pty=True)
        if name == "shell":
            return SshRequest("shell")
        if name not in ("exec", "subsystem"):
            return None
        try:
            value: str | None = packet.get_string().decode("utf-8", "backslashreplace")
        except PacketDecodeError:
            value = None
        return SshRequest(name, command=value)

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
        self.owner.refused(SshRequest(request, command=value.decode("utf-8", "backslashreplace")), reason)
        return False

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: SSHPacket) -> None:
        packet.check_end()
        self.owner.refuse("agent")
        self._report_response(False)

    def _process_x11_req_request(self, packet: SSHPacket) -> bool | None:
        self.owner.refuse("x11")
        return False


def _note(names: list[str], name: str) -> None:
    """Add `name` (cut to 256 characters) to a list the connection record shows, while it
    holds fewer than MAX_NAMES."""
    if len(names) < MAX_NAMES:
        names.append(name[:256])


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class _Session(asyncssh.SSHServerProcess[bytes]):
    """A session channel's process; `lost` is set when the channel closes."""

    def __init__(self, owner: AgentConnection, number: int, sftp_factory: asyncssh.SFTPServerFactory | None) -> None:
        # allow_scp off: asyncssh would answer an exec starting with `scp ` itself, unjudged;
        # the process judges it as the command it is, then serves it (process._serve_scp)
        super().__init__(owner.run_process, sftp_factory, SFTP_VERSION, False)
        self.owner = owner
        self.number = number  # the connection's channels opened before it, and it
        self.lost = asyncio.Event()

    def judged(self) -> SshRequest:
        """The SshRequest of the session's exec, shell or subsystem request (once made)."""
        return process.request_of(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.is_set():
            self.lost.set()
            self.owner.channel_closed()


Connect = Callable[[], Coroutine[Any, Any, asyncssh.SSHClientConnection]]  # makes the server connection


class AgentConnection(asyncssh.SSHServer):
    """The agent's SSH connection of one flow. `connect` makes the server connection, started
    when the agent asks to log in (`upstream`, None until then; its failure ends the
    agent's login). Also the SftpContext of SftpProxy: `gate` and `open_sftp()`."""

    def __init__(self, flow: FlowContext, services: Services, connect: Connect,
                 sftp_factory: asyncssh.SFTPServerFactory | None = None) -> None:
        self.flow = flow
        self.services = services
        self.connect = connect
        self.upstream: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self.sftp_factory = sftp_factory
        self.gate = FlowGate(flow, services, services.recordings is not None)
        self.user: str | None = None  # the name the agent logged in as
        self.channels = 0  # opened so far
        self.open = 0  # open now
        self.refused_channels = 0  # refused past MAX_CHANNELS
        self.listening = 0  # remote forwards the server listens for now (or is being asked to)
        self.refused_listeners = 0  # refused past MAX_LISTENERS
        self.env_names: list[str] = []
        self.env_count = 0
        self.request_names: list[str] = []  # session channel requests refused by name
        self.request_count = 0
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
        """No authentication: the flow says who the agent is. Starts the server connection
        (once: asyncssh asks again when the agent changes its user name) and waits for it;
        when it failed, the agent is disconnected, told what failed (upstream.told), and the
        details are logged (the handler records them)."""
        self.user = username
        if self.upstream is None:
            self.upstream = asyncio.get_running_loop().create_task(self.connect())
        try:
            await asyncio.shield(self.upstream)
        except Exception as exc:  # noqa: BLE001 - the handler records the error; the agent is told
            log.warning("flow %s of %s: the server connection failed: %s", self.flow.flow_id, self.flow.agent, exc)
            if self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, f"interceptor: {upstream.told(exc)}")
            return True
        return False

    async def server(self) -> asyncssh.SSHClientConnection:
        """The server connection (made at login; channels open only after it)."""
        if self.upstream is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "interceptor: not logged in")
        return await asyncio.shield(self.upstream)

    async def open_sftp(self) -> asyncssh.SFTPClient:
        """An SFTP client on the server connection, for SftpProxy."""
        return await (await self.server()).start_sftp_client()

    def env_refused(self, name: str) -> None:
        self.env_count += 1
        _note(self.env_names, name)

    def request_refused(self, name: str) -> None:
        """A session channel request refused by its name (for the connection record)."""
        self.request_count += 1
        _note(self.request_names, name)

    def summary(self) -> dict[str, object]:
        """The handler's part of the connection record: the user the agent gave, channels
        opened, refused environment variable names and channel request names (the first
        MAX_NAMES; the counts when more), channels and remote forwards refused past their limits."""
        details: dict[str, object] = {"user": self.user, "channels": self.channels, "env_refused": self.env_names}
        if self.env_count > len(self.env_names):
            details["env_refused_count"] = self.env_count
        if self.request_count:
            details["requests_refused"] = self.request_names
        if self.request_count > len(self.request_names):
            details["requests_refused_count"] = self.request_count
        if self.refused_channels:
            details["channels_refused"] = self.refused_channels
        if self.refused_listeners:
            details["listeners_refused"] = self.refused_listeners
        return details

    def refuse(self, forward: str, target: str | None = None) -> None:
        """A forward in REFUSED_FORWARDS: judged (the policy refuses it too), refused, and recorded."""
        self.spawn(self._refuse(SshRequest("forward", forward=forward, target=target)))

    def refused(self, operation: SshRequest, reason: str) -> None:
        """A request refused unjudged (unreadable, or what the channel no longer takes): recorded."""
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
        session = _Session(self, self.channels, self.sftp_factory)
        return _Channel(self.conn, self, session), session

    async def run_process(self, session: asyncssh.SSHServerProcess[bytes]) -> None:
        """The process of an exec, shell or (non-SFTP) subsystem request."""
        assert isinstance(session, _Session)
        gate = self.gate.for_channel(lambda text: process.tell(session, text))
        with self._serving():
            channel = process.Channel(gate, await self.server(), self.services.traffic, self.services.recordings,
                                      f"{self.flow.flow_id}-{session.number}", self.recording_limit,
                                      self.sftp_factory)
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
        """A remote forward: judged and made on the server, at most MAX_LISTENERS at once."""
        assert self.conn is not None
        if self.listening >= MAX_LISTENERS:
            self.refused_listeners += 1
            self.refused(SshRequest("forward", forward="remote", target=forwards.target(listen_host, listen_port)),
                         f"at most {MAX_LISTENERS} remote forwards may listen at once")
            return False
        self.listening += 1
        with self._serving():
            return await forwards.remote(self.gate, await self.server(), self.conn, self.services.traffic,
                                         self.spawn, self._listener_closed, listen_host, listen_port)

    def _listener_closed(self) -> None:
        self.listening -= 1

    def unix_connection_requested(self, dest_path: str) -> NoReturn:
        """`ssh -L PORT:/path/to/socket`: refused and recorded."""
        self.refuse("unix", dest_path)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        f"interceptor: {never_allowed('unix')}")

    def unix_server_requested(self, listen_path: str) -> bool:
        """`ssh -R /path/to/socket:...`: refused and recorded."""
        self.refuse("remote-unix", listen_path)
        return False

    def tun_requested(self, unit: int | None) -> NoReturn:
        """`ssh -w` (layer 3): refused and recorded, target "tun:UNIT" ("tun:any")."""
        self._tunnel("tun", unit)

    def tap_requested(self, unit: int | None) -> NoReturn:
        """`ssh -w` with Tunnel=ethernet (layer 2): refused and recorded, target "tap:UNIT"."""
        self._tunnel("tap", unit)

    def _tunnel(self, mode: str, unit: int | None) -> NoReturn:
        self.refuse("tun", f"{mode}:{'any' if unit is None else unit}")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        f"interceptor: {never_allowed('tun')}")

    # ---- the end -------------------------------------------------------------------------

    async def close(self) -> None:
        """End what is still running (a held request is withdrawn and recorded) and wait for
        the records still to be written."""
        for task in list(self.running):
            task.cancel()
        while self.running or self.records:
            await asyncio.gather(*self.running, *self.records, return_exceptions=True)
