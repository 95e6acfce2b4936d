"""What the SSH integration tests share: Debian's sshd in the remote host's network namespace
(tests/ssh_fixture.py), the daemon on a policy with one `ssh` resource for it, the host CA
trusted the way an operator does it (`interceptor trust install --root DIR` writes
DIR/etc/ssh/ssh_known_hosts with an @cert-authority line), and the real OpenSSH clients
(`ssh`, `scp`, `sftp`) run as an agent under `interceptor exec`, so their connections to
sshd's address are diverted by the kernel to the enforcer.

    with running_ssh_site(workdir, remote, [AGENT], RULES) as site:
        site.ssh(AGENT, "uname", "-a")          # CompletedProcess of the agent's ssh
        site.scp(AGENT, local, site.remote(path))
        site.records(request="exec")            # the kind "ssh" audit records

The agent has a key of its own (`site.identity`) which sshd does not accept: whatever the
agent logs in with, the enforcer logs in upstream with the resource's key only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import INTERCEPTOR, Daemon
from http_setup import policy_text, resource_block, running_http_daemon
from netns import RemoteHost
from ssh_fixture import CLIENT_OPTIONS, Sshd, keygen, running_sshd

RESOURCE = "web"


def agent_argv(agent: str, argv: Sequence[str], user: str | None = None) -> list[str]:
    """`argv` as agent `agent` (in its cgroup), as `user` when given, under `interceptor exec`."""
    return [INTERCEPTOR, "exec", "--agent", agent, *(["--user", user] if user else []), "--", *argv]


def run_as(agent: str, argv: Sequence[str], user: str | None = None, stdin: str | bytes = "",
           timeout: float = 60, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run as `agent` to its end (with the environment variables `env` added); stdout
    and stderr as text (undecodable bytes replaced)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(agent_argv(agent, argv, user), input=data, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


@dataclass
class SshSite:
    daemon: Daemon
    sshd: Sshd
    trust_root: Path  # `interceptor trust install --root` wrote here; readable by every user
    identity: Path  # the agent's own key (root's, 0600): sshd does not accept it
    shown: list[str] = field(default_factory=list)  # what every command run here printed

    @property
    def known_hosts(self) -> Path:
        """The system known_hosts file `trust install` wrote under the trust root."""
        return self.trust_root / "etc" / "ssh" / "ssh_known_hosts"

    @property
    def target(self) -> str:
        return f"{self.sshd.user}@{self.sshd.host}"

    def remote(self, path: Path | str) -> str:
        """scp's name of `path` on the server: user@host:path."""
        return f"{self.target}:{path}"

    def options(self, extra: Sequence[str] = (), identity: bool = True) -> list[str]:
        """The client options of every agent command: host keys only from the trust root's
        known_hosts (strictly), no configuration file, no agent, the agent's own key (unless
        `identity` is False); `extra` options first, since the first value of an option wins."""
        own = ["-i", str(self.identity)] if identity else ["-o", "IdentityFile=none"]
        return [*extra, *CLIENT_OPTIONS, "-o", f"GlobalKnownHostsFile={self.known_hosts}",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", *own]

    def ssh_argv(self, *command: str, options: Sequence[str] = (), identity: bool = True) -> list[str]:
        return ["ssh", *self.options(options, identity), self.target, *command]

    def ssh(self, agent: str, *command: str, options: Sequence[str] = (), stdin: str | bytes = "",
            user: str | None = None, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`ssh user@host command...` run by `agent` (as `user`, with `env` added) to its end."""
        return self._shown(run_as(agent, self.ssh_argv(*command, options=options, identity=user is None), user,
                                  stdin, timeout, env))

    def start_ssh(self, agent: str, *command: str, options: Sequence[str] = ()) -> subprocess.Popen[str]:
        """`ssh user@host command...` started by `agent`: stdin, stdout and stderr piped (text)."""
        return subprocess.Popen(agent_argv(agent, self.ssh_argv(*command, options=options)), text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def scp(self, agent: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`scp [options] args...` run by `agent` (SFTP mode unless `args` hold -O)."""
        return self._shown(run_as(agent, ["scp", *self.options(), *args], timeout=timeout))

    def sftp(self, agent: str, batch: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`sftp -b -` with the `batch` commands (one a line) run by `agent`."""
        return self._shown(run_as(agent, ["sftp", *self.options(), "-b", "-", self.target], stdin=batch,
                                  timeout=timeout))

    def _shown(self, done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        self.shown += [done.stdout, done.stderr]
        return done

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The audit records (of `kind`), read again while the daemon is mid-way through writing
        one (its last line is not whole yet)."""
        for _ in range(50):
            try:
                return self.daemon.audit_events(kind)
            except json.JSONDecodeError:
                time.sleep(0.02)
        return self.daemon.audit_events(kind)

    def records(self, kind: str = "ssh", predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
                **operation: object) -> list[dict[str, Any]]:
        """The audit records of `kind` ("ssh", "ssh-end", "connection") satisfying `predicate`
        whose operation has the fields `operation`."""
        return [event for event in self.events(kind)
                if predicate(event) and all((event.get("operation") or {}).get(key) == value
                                            for key, value in operation.items())]

    def wait_records(self, kind: str = "ssh", predicate: Callable[[dict[str, Any]], bool] = lambda _: True,
                     count: int = 1, timeout: float = 10, **operation: object) -> list[dict[str, Any]]:
        """At least `count` records as `records` finds them, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(kind, predicate, **operation)
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, (f"{len(found)} of {count} {kind} records {operation}; last: "
                                             f"{self.events()[-5:]}")
                return found
            time.sleep(0.05)

    def sessions_started(self) -> int:
        """How many sessions sshd started (exec, shell, subsystem): its log's "Starting session" lines."""
        return self.sshd.log_text().count("Starting session:")


def ssh_resource(sshd: Sshd, credentials: Path, options: str = "") -> str:
    """The policy's `resources:` entry of the sshd: its address, credentials file and known_hosts."""
    extra = f", {options}" if options else ""
    return resource_block(RESOURCE, "ssh", sshd.address, credentials, f"{{known_hosts: {sshd.known_hosts}{extra}}}")


@contextlib.contextmanager
def trust_root(daemon: Daemon) -> Iterator[Path]:
    """`interceptor trust install --root DIR` for the daemon's host CA, DIR a new directory
    every user may read (a non-root agent reads its known_hosts); removed after."""
    root = Path(tempfile.mkdtemp(prefix="icpt-ssh-trust-"))
    try:
        root.chmod(0o755)
        daemon.cli("trust", "install", "--root", str(root))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_ssh_site(workdir: Path, remote: RemoteHost, agents: Sequence[str], rules: Sequence[str],
                     options: str = "") -> Iterator[SshSite]:
    """sshd in the remote host's namespace on port 22, the daemon on a policy of `agents`, the
    resource `web` (the sshd, with the resource `options` besides known_hosts) and `rules`,
    the host CA trusted under a trust root; all stopped and removed after."""
    with running_sshd(workdir / "sshd", remote.ip4, netns=remote.name) as sshd:
        credentials = sshd.credentials(workdir / "ssh-credentials")
        identity = workdir / "agent_key"
        keygen(identity, "the-agents-own-key")
        policy = policy_text(agents, [ssh_resource(sshd, credentials, options)], rules)
        with running_http_daemon(workdir, policy) as daemon, trust_root(daemon) as root:
            yield SshSite(daemon, sshd, root, identity)


class PtySession:
    """A command on a new pseudo-terminal (what a person's terminal gives ssh): `send` types,
    `expect` reads until a text has appeared."""

    def __init__(self, argv: Sequence[str], rows: int = 24, columns: int = 80) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = b""

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, text: str, timeout: float = 20) -> str:
        """Everything read so far once `text` is in it; AssertionError with it after `timeout` s."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not seen within {timeout}s; got {self.output[-2000:]!r}"
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: every holder of the terminal's other side is gone
                    chunk = b""
                if not chunk:
                    assert text.encode() in self.output, f"{text!r} not seen before the end; got {self.output!r}"
                self.output += chunk
        return self.output.decode(errors="replace")

    def close(self, timeout: float = 20) -> int:
        """Wait for the command's end (reading what it still prints); its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        status = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        os.close(self.master)
        return status
