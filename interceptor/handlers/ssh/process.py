"""One exec or shell channel of the ssh handler (RFC 4254 section 6): the request judged
through the Gate, then run on the server and relayed both ways until it exits.

- Refused (the policy, a limit, a held request not approved): the agent's stderr gets
  "interceptor: <reason>" and the channel exits with status 126 (as a shell reports a command
  it cannot run), so `ssh host cmd` prints the reason and fails; nothing reaches the server.
- Allowed: the server runs the request as judged (the command as sent, the terminal type,
  size and modes the channel had when it was judged; no environment variables: the channel
  refuses whatever would change the request once it is made, interceptor.handlers.ssh.
  connection). Standard input,
  output and error are relayed byte for byte with their EOFs; window changes (section 6.7),
  signals (6.9) and breaks (RFC 4335) go on to the server; its exit status or signal
  (6.10) comes back. The "ssh-end" record holds the exit, the bytes each way and the time.
- An exec with an empty command is never run: asyncssh's client would ask the server for a
  shell instead (the Gate refuses it; `_run` will not start it whatever the Gate says).
- Legacy scp: an exec the policy reads as a transfer (`scp [-v -r -p -d] -t|-f [--] PATH`,
  interceptor.policy.ssh_command.read_command's `scp`), once allowed as the command it is,
  is served by asyncssh's scp server on the channel's SFTP server (the proxy,
  interceptor.handlers.ssh.sftp, which judges every file by path) from the words the policy
  read; it never runs on the server as a command. Its "ssh-end" record holds the exit status
  asyncssh's scp server sends (0 once the transfer ends, a refused file being told to the
  client in the scp protocol; 1 when it cannot read the command), the bytes each way and the
  time.
- An interactive shell, any request with a pty, and an exec of a shell-class command (a
  shell or interpreter reading what the agent types, `ssh host bash`: what only a `shell:
  true` rule allows, interceptor.policy.ssh_command) are recorded (asciicast v2, input and
  output; interceptor.audit.recording) into the recordings directory; the summary (the
  file's name in that directory, its SHA-256, size, events and whether it was cut short)
  goes into the "ssh-end" record. A session that passes the recording's size limit is ended, the
  agent told why on stderr.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.scp import run_scp_server

from interceptor.audit.recording import Recording
from interceptor.errors import InterceptorError
from interceptor.handlers.base import Traffic
from interceptor.handlers.ssh.gate import Authorized, Gate
from interceptor.operations import SshRequest
from interceptor.policy.ssh_command import ScpAccess, read_command

log = logging.getLogger(__name__)

CHUNK = 32 * 1024
REFUSED_STATUS = 126  # POSIX shells' status for a command found but not executable
LOST_STATUS = 255  # what OpenSSH's client exits with when the connection failed
LIMIT_MESSAGE = "the session reached its recording size limit (recording_limit_bytes) and was ended"


@dataclass(slots=True)
class Channel:
    """What a process channel needs of its connection: its gate (which tells this channel's
    agent when a request waits for approval), the server connection, the flow's traffic
    counters, where and how large a recording may be (`recordings` None: no directory,
    the Gate refuses what would be recorded), and the SFTP server legacy scp is served on
    (None: an scp exec is refused)."""

    gate: Gate
    server: asyncssh.SSHClientConnection
    traffic: Traffic
    recordings: Path | None
    recording_name: str
    recording_limit: int
    sftp_factory: asyncssh.SFTPServerFactory | None = None


@dataclass(frozen=True, slots=True)
class Terminal:
    """A channel's terminal as it was judged: its type (None: no pty was asked for), size
    (columns, rows, pixel width, pixel height; zeros when never given) and modes (RFC 4254
    section 8)."""

    type: str | None
    size: tuple[int, int, int, int]
    modes: dict[int, int]

    @classmethod
    def of(cls, process: asyncssh.SSHServerProcess[bytes]) -> Terminal:
        return cls(process.term_type, process.term_size, dict(process.term_modes))


def recorded(operation: SshRequest) -> bool:
    """Is `operation` recorded when it runs: a shell, a request with a pty, or an exec whose
    command is shell class (ssh_command.read_command's `shell`, the reading by which the
    policy lets only `shell: true` allow it)?"""
    if operation.request == "shell" or operation.pty:
        return True
    return operation.request == "exec" and operation.command is not None and bool(
        read_command(operation.command).shell)


def scp_of(operation: SshRequest) -> ScpAccess | None:
    """The legacy scp transfer an exec is, as the policy reads it; None for any other request."""
    if operation.request != "exec" or not operation.command:
        return None
    return read_command(operation.command).scp


def request_of(process: asyncssh.SSHServerProcess[bytes]) -> SshRequest:
    """The SshRequest of a session channel's request: exec (the command), a subsystem other
    than sftp (its name), or a shell; `pty` when the agent asked for a terminal."""
    pty = process.term_type is not None
    if process.subsystem is not None:
        return SshRequest("subsystem", command=process.subsystem, pty=pty)
    if process.command is not None:
        return SshRequest("exec", command=process.command, pty=pty)
    return SshRequest("shell", pty=pty)


@dataclass(slots=True)
class _Relay:
    """The byte counts and the end of one allowed request."""

    up: int = 0
    down: int = 0
    ended: str | None = None  # why the interceptor ended the session (the agent is told)
    error: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def count_up(self, traffic: Traffic, size: int) -> None:
        """`size` bytes went from the agent to the server."""
        self.up += size
        traffic.up += size

    def count_down(self, traffic: Traffic, size: int) -> None:
        """`size` bytes went from the server to the agent."""
        self.down += size
        traffic.down += size


async def serve(process: asyncssh.SSHServerProcess[bytes], lost: asyncio.Event, channel: Channel) -> None:
    """Serve one exec, shell or subsystem request until it ends (`lost`: the agent's channel
    closed). Never raises for what the agent or the server does."""
    operation = request_of(process)
    terminal = Terminal.of(process)  # what is judged is what runs, whatever the channel says later
    try:
        authorized = await channel.gate.authorize(operation)
    except InterceptorError as exc:
        _refuse(process, str(exc))
        return
    if scp_of(operation) is not None:
        await _serve_scp(process, channel, operation, authorized)
        return
    started = time.monotonic()
    relay = _Relay()
    recording: Recording | None = None
    exit_status: int | None = None
    exit_signal: tuple[str, bool, str, str] | None = None
    try:
        if recorded(operation):
            recording = _start_recording(terminal, channel, relay)
        if relay.ended is None:
            exit_status, exit_signal = await _run(process, lost, channel, operation, terminal, relay, recording)
    finally:
        outcome: dict[str, object] = {"exit_status": exit_status, "exit_signal": exit_signal[0] if exit_signal else None,
                                      "bytes_up": relay.up, "bytes_down": relay.down,
                                      "seconds": round(time.monotonic() - started, 3)}
        if relay.error is not None:
            outcome["error"] = relay.error
        if recording is not None:
            outcome["recording"] = _close_recording(recording)
        await channel.gate.finished(authorized, operation, outcome)
    if lost.is_set():
        return
    if relay.ended is not None:
        _refuse(process, relay.ended)
    elif exit_signal is not None:
        quietly(lambda: process.exit_with_signal(*exit_signal))
    elif exit_status is not None:
        quietly(lambda: process.exit(exit_status))
    else:
        _refuse(process, f"the server ended the session without an exit status ({relay.error or 'connection lost'})",
                LOST_STATUS)


Count = Callable[[int], None]  # counts bytes relayed one way


class _CountedReader(asyncssh.SSHReader[bytes]):
    """The agent's standard input, what is read of it counted."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], count: Count) -> None:
        super().__init__(process, process.channel)
        self.count = count

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self.count(len(data))
        return data

    async def readline(self) -> bytes:
        data = await super().readline()
        self.count(len(data))
        return data


class _CountedWriter(asyncssh.SSHWriter[bytes]):
    """The agent's standard output, what is written to it counted."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], count: Count) -> None:
        super().__init__(process, process.channel)
        self.count = count

    def write(self, data: bytes) -> None:
        self.count(len(data))
        super().write(data)


async def _serve_scp(process: asyncssh.SSHServerProcess[bytes], channel: Channel, operation: SshRequest,
                     authorized: Authorized) -> None:
    """Serve an allowed legacy scp exec with asyncssh's scp server on the channel's SFTP
    server, from the words the policy read (so asyncssh reads the transfer the policy
    judged), then record its end. asyncssh's scp server sends the exit status itself."""
    assert operation.command is not None
    started = time.monotonic()
    relay = _Relay()
    exit_status: int | None = None
    try:
        if channel.sftp_factory is None:
            relay.error = "legacy scp is not served: no SFTP server"
            _refuse(process, relay.error)
            return
        words = shlex.join(read_command(operation.command).argv)
        served = run_scp_server(channel.sftp_factory(process.channel), words,
                                _CountedReader(process, lambda size: relay.count_up(channel.traffic, size)),
                                _CountedWriter(process, lambda size: relay.count_down(channel.traffic, size)),
                                process.stderr)
        if inspect.isawaitable(served):
            await served
        exit_status = 1 if served is None else 0  # None: it could not read the command, and said so
    except (asyncssh.Error, OSError) as exc:  # the scp server tells of each file's failure itself
        relay.error = _reason(exc)
        exit_status = 1
        _refuse(process, f"legacy scp failed: {relay.error}", exit_status)
    finally:
        outcome: dict[str, object] = {"exit_status": exit_status, "exit_signal": None, "bytes_up": relay.up,
                                      "bytes_down": relay.down, "seconds": round(time.monotonic() - started, 3)}
        if relay.error is not None:
            outcome["error"] = relay.error
        await channel.gate.finished(authorized, operation, outcome)


def _start_recording(terminal: Terminal, channel: Channel, relay: _Relay) -> Recording | None:
    """The recording of a session that is recorded; None (and the session ends) when it cannot be made."""
    if channel.recordings is None:  # the gate refuses what would be recorded without a directory
        _end(relay, "the session cannot be recorded: no recordings directory")
        return None
    width, height, _, _ = terminal.size
    try:
        return Recording.start(channel.recordings, channel.recording_name, width=width or 80, height=height or 24,
                               term=terminal.type, limit=channel.recording_limit)
    except (OSError, ValueError) as exc:
        _end(relay, f"the session cannot be recorded: {_local(exc)}")
        return None


def _close_recording(recording: Recording) -> dict[str, object]:
    """The recording's summary for the "ssh-end" record: its `file` name in the recordings
    directory (never the directory: `audit replay` looks the name up in the daemon's own,
    and a path could reveal or, when its directory name looks random, be scrubbed as a
    token), `sha256`, `bytes`, `events`, `limited` (interceptor.audit.recording)."""
    try:
        summary = recording.close()
    except (OSError, ValueError) as exc:
        return {"error": f"the recording could not be completed: {exc}"}
    return {"file": Path(summary.path).name, "sha256": summary.sha256, "bytes": summary.bytes,
            "events": summary.events, "limited": summary.limited}


def _refuse(process: asyncssh.SSHServerProcess[bytes], message: str, status: int = REFUSED_STATUS) -> None:
    """Tell the agent why and exit with `status`."""
    tell(process, message)
    quietly(lambda: process.exit(status))


def tell(process: asyncssh.SSHServerProcess[bytes], message: str) -> None:
    """"interceptor: MESSAGE" on the agent's stderr (CR LF on a terminal, whose output is not
    translated in raw mode)."""
    newline = b"\r\n" if process.term_type is not None else b"\n"
    quietly(lambda: process.stderr.write(b"interceptor: " + message.encode() + newline))


def quietly(action: Callable[[], None]) -> None:
    """`action` on the agent's channel, which may have closed meanwhile (then nothing)."""
    try:
        action()
    except (BrokenPipeError, OSError, asyncssh.Error):
        pass


async def _run(process: asyncssh.SSHServerProcess[bytes], lost: asyncio.Event, channel: Channel,
               operation: SshRequest, terminal: Terminal, relay: _Relay,
               recording: Recording | None) -> tuple[int | None, tuple[str, bool, str, str] | None]:
    """Run the request on the server, on the terminal it was judged with, and relay until
    both of its outputs end (then its exit) or the agent's channel closes or the recording
    limit is passed (then it is closed). An exec without a command is not started (asyncssh
    would ask the server for a shell)."""
    if operation.request == "exec" and not operation.command:
        relay.error = "an exec request with an empty command is not run (the server would start a shell)"
        return None, None
    try:
        remote = await channel.server.create_process(
            operation.command, term_type=terminal.type, term_size=terminal.size, term_modes=terminal.modes,
            encoding=None)
    except (asyncssh.Error, OSError) as exc:
        relay.error = f"the server refused the session: {_reason(exc)}"
        return None, None
    outputs: asyncio.Future[Any] = asyncio.gather(
        _copy(remote.stdout, process.stdout, relay, channel.traffic, recording),
        _copy(remote.stderr, process.stderr, relay, channel.traffic, recording))
    inputs: asyncio.Future[Any] = asyncio.ensure_future(_agent_input(process, remote, relay, channel.traffic,
                                                                      recording))
    watchers: list[asyncio.Future[Any]] = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(relay.stop.wait())]
    try:
        await asyncio.wait([outputs, *watchers], return_when=asyncio.FIRST_COMPLETED)
        if outputs.done():
            await remote.wait_closed()
            return remote.exit_status, remote.exit_signal
        return None, None
    finally:
        for task in (outputs, inputs, *watchers):
            task.cancel()
        await asyncio.gather(outputs, inputs, *watchers, return_exceptions=True)
        remote.close()


async def _copy(source: asyncssh.SSHReader[bytes], sink: asyncssh.SSHWriter[bytes], relay: _Relay,
                traffic: Traffic, recording: Recording | None) -> None:
    """The server's output to the agent until its EOF (or an error), counted and recorded;
    waits while the agent does not take it (its window)."""
    try:
        while data := await source.read(CHUNK):
            if not _recorded(relay, recording, "output", data):
                return
            relay.count_down(traffic, len(data))
            sink.write(data)
            await sink.drain()
    except (asyncssh.Error, OSError) as exc:
        relay.error = relay.error or _reason(exc)


async def _agent_input(process: asyncssh.SSHServerProcess[bytes], remote: asyncssh.SSHClientProcess[bytes],
                       relay: _Relay, traffic: Traffic, recording: Recording | None) -> None:
    """The agent's input to the server, with its EOF, window changes, signals and breaks,
    until the agent's EOF or either channel fails."""
    try:
        while await _agent_event(process, remote, relay, traffic, recording):
            pass
    except (asyncssh.Error, OSError) as exc:
        relay.error = relay.error or _reason(exc)


async def _agent_event(process: asyncssh.SSHServerProcess[bytes], remote: asyncssh.SSHClientProcess[bytes],
                       relay: _Relay, traffic: Traffic, recording: Recording | None) -> bool:
    """Relay what the agent sent next; False when that was the last."""
    try:
        data = await process.stdin.read(CHUNK)
    except asyncssh.TerminalSizeChanged as change:
        remote.change_terminal_size(change.width, change.height, change.pixwidth, change.pixheight)
        return recording is None or _kept(relay, lambda: recording.resize(change.width, change.height))
    except asyncssh.SignalReceived as signal:
        remote.send_signal(signal.signal)
        return True
    except asyncssh.BreakReceived as pause:
        remote.send_break(pause.msec)
        return True
    if not data:
        remote.stdin.write_eof()
        return False
    if not _recorded(relay, recording, "input", data):
        return False
    relay.count_up(traffic, len(data))
    remote.stdin.write(data)
    await remote.stdin.drain()
    return True


def _end(relay: _Relay, reason: str) -> None:
    """End the session: the agent is told `reason`."""
    relay.ended = relay.ended or reason
    relay.stop.set()


def _recorded(relay: _Relay, recording: Recording | None, kind: str, data: bytes) -> bool:
    """Record `data` as output or input; False (the session ends) past the limit or when
    the recording fails."""
    if recording is None:
        return True
    return _kept(relay, lambda: recording.output(data) if kind == "output" else recording.input(data))


def _kept(relay: _Relay, event: Callable[[], bool]) -> bool:
    try:
        if event():
            return True
        _end(relay, LIMIT_MESSAGE)
    except OSError as exc:
        _end(relay, f"the session can no longer be recorded: {_local(exc)}")
    except ValueError:
        _end(relay, "the session can no longer be recorded: its recording was closed")
    return False


def _local(exc: OSError | ValueError) -> str:
    """What a local failure the agent is told of says, without the file's path."""
    return (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)


def _reason(exc: BaseException) -> str:
    """What an asyncssh or socket error says, without a traceback."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"

