"""A real OpenSSH server for tests: Debian's /usr/sbin/sshd (openssh-server, installed by
scripts/install.sh) with a configuration of its own in a work directory, optionally inside a
network namespace the test made (tests/integration/netns.py's RemoteHost: pass its `name`).

    with running_sshd(workdir, host="10.231.0.2", netns=remote.name) as sshd:
        sshd.address                      # "10.231.0.2:22"
        sshd.known_hosts                  # its host key for `host`, for a resource's known_hosts option
        sshd.credentials(workdir / "c")   # {user, private_key_file} (0600) for a resource's credentials
        sshd.client_argv("uname")         # ssh logging in directly with the key sshd accepts
        sshd.log_text()                   # what sshd logged (-D -E log, LogLevel DEBUG1)

It accepts exactly one key, made here (`key`, 0600, in a directory only root may enter): the
one the enforcer logs in with. It logs in root (sshd as root in a test needs no other user;
UsePAM no, so nothing of the host's PAM stack is involved) and allows every kind of forward, and
takes every environment variable a client sends (AcceptEnv *), so what the enforcer refuses
is the enforcer's doing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT = 20.0
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it
# The client options every test's ssh uses: no user or system configuration, no agent, no
# keys but the ones named, nothing asked on a terminal.
CLIENT_OPTIONS = ("-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                  "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=10")


class SshdError(RuntimeError):
    """sshd or ssh-keygen is missing, or sshd did not start; the message says how to fix it."""


def require_openssh() -> None:
    """Raises SshdError naming the fix when Debian's openssh-server or openssh-client is missing."""
    missing = [name for name, path in (("openssh-server", str(SSHD)), ("openssh-client", shutil.which("ssh")),
                                       ("openssh-client", shutil.which("ssh-keygen")))
               if not path or not Path(path).exists()]
    if missing:
        raise SshdError(f"{' and '.join(sorted(set(missing)))} not installed: run `make setup` "
                        "(scripts/install.sh) or `apt-get install openssh-server openssh-client`")


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at `path` (private, 0600) and `path`.pub; returns the public
    key line ("ssh-ed25519 AAAA... comment")."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   capture_output=True, timeout=30)
    return path.with_name(path.name + ".pub").read_text().strip()


def write_private(path: Path, text: str) -> Path:
    """`text` into `path`, made 0600 (owner only) before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


@dataclass
class Sshd:
    """A running sshd at host:port, logging in `user` with the key `key` (and nothing else)."""

    host: str
    port: int
    user: str
    workdir: Path
    key: Path  # the private key sshd accepts: the resource's upstream key
    host_public: str  # its host key, "ssh-ed25519 AAAA..."
    known_hosts: Path  # `host_public` for `host` (and host:port when not 22), one line
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def credentials(self, path: Path, **extra: str) -> Path:
        """A resource's `credentials: {from: file}` file (YAML, 0600): `user` and
        `private_key_file`, plus `extra` keys as given."""
        values = {"user": self.user, "private_key_file": str(self.key), **extra}
        return write_private(path, "".join(f"{name}: {value}\n" for name, value in values.items()))

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    def client_options(self, options: Sequence[str] = ()) -> list[str]:
        """Options for ssh, scp or sftp straight to this server (not through an enforcer):
        `user`'s `key`, its host key checked against `known_hosts`; `options` first (the first
        value given of an option is the one used)."""
        return [*options, *CLIENT_OPTIONS, "-o", f"UserKnownHostsFile={self.known_hosts}", "-o",
                "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-i", str(self.key),
                "-o", f"Port={self.port}"]

    def client_argv(self, *command: str, options: Sequence[str] = ()) -> list[str]:
        """ssh straight to this server running `command` (client_options with `options`)."""
        return ["ssh", *self.client_options(options), self.target, *command]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None


def _config(workdir: Path, host: str, port: int, host_key: Path, authorized: Path) -> Path:
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"ListenAddress {listen}", f"HostKey {host_key}", f"AuthorizedKeysFile {authorized}",
        "PidFile none", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no", "PermitUserEnvironment no", "PermitUserRC no", "UseDNS no", "PrintMotd no",
        "PrintLastLog no", "AllowTcpForwarding yes", "AllowAgentForwarding yes", "X11Forwarding no",
        "PermitTunnel no", "AcceptEnv *", "MaxStartups 200:30:400", "MaxSessions 64", "LoginGraceTime 30",
        "LogLevel DEBUG1",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
    ]
    path = workdir / "sshd_config"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
    """Until sshd accepts a connection (a namespace's address is reachable from the host)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise SshdError(f"sshd did not start on {host}:{port}; its log {log}:\n{text}")


@contextmanager
def running_sshd(workdir: Path, host: str, port: int = 22, netns: str | None = None,
                 user: str = "root") -> Iterator[Sshd]:
    """Debian's sshd on host:port for the block, inside network namespace `netns` when given,
    its configuration, keys and log in `workdir` (made 0700). Raises SshdError when it is not
    installed or does not start."""
    require_openssh()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    host_public = " ".join(keygen(host_key, "sshd-fixture-host").split()[:2])
    key = workdir / "upstream_key"
    authorized = workdir / "authorized_keys"
    authorized.write_text(keygen(key, "interceptor-upstream") + "\n")
    known_hosts = workdir / "known_hosts"
    name = host if port == 22 else f"[{host}]:{port}"
    known_hosts.write_text(f"{name} {host_public}\n")
    config = _config(workdir, host, port, host_key, authorized)
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise SshdError(f"sshd refuses the test configuration {config}: {check.stderr.strip()}")
    log = workdir / "sshd.log"
    prefix = ["ip", "netns", "exec", netns] if netns else []
    with open(log, "ab") as handle:
        process = subprocess.Popen([*prefix, str(SSHD), "-D", "-E", str(log), "-f", str(config)], stdout=handle,
                                   stderr=handle, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(process, host, port, log)
        yield Sshd(host, port, user, workdir, key, host_public, known_hosts, log, process)
    finally:
        process.terminate()  # sshd -D ends at once (its sessions' processes end with their connections)
        process.wait(timeout=10)
