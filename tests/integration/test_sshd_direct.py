"""The SSH test server against the real OpenSSH clients, directly (no enforcer): Debian's sshd
(tests/ssh_fixture.py) in the remote host's network namespace runs commands with their exit
status, honours the environment a client sends (so BASH_ENV would run code), forwards the
client's agent and TCP ports, and serves scp (SFTP and legacy) and sftp. These prove that what
the SSH tests show refused through the enforcer is the enforcer's refusal, not the server's."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import RemoteHost
from ssh_fixture import Sshd, running_sshd

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def sshd(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd-direct") / "sshd", remote.ip4, netns=remote.name) as server:
        yield server


def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=60)


def test_sshd_fixture_direct(sshd: Sshd, tmp_path: Path) -> None:
    done = run(sshd.client_argv("echo", "direct;", "exit", "3"))
    assert (done.returncode, done.stdout, done.stderr) == (3, "direct\n", ""), done
    assert "Accepted publickey for root" in sshd.log_text()
    unknown = run(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
                   "IdentityFile=none", "-o", f"UserKnownHostsFile={sshd.known_hosts}", sshd.target, "true"])
    assert unknown.returncode == 255 and "Permission denied (publickey)" in unknown.stderr, unknown


def test_the_environment_a_client_sends_reaches_the_shell(sshd: Sshd, tmp_path: Path) -> None:
    """BASH_ENV sent with the request (SetEnv) makes the server's bash run a file first."""
    marker, trap = tmp_path / "marker", tmp_path / "trap.sh"
    trap.write_text(f"touch {marker}\n")
    done = run(sshd.client_argv("echo", "hi", options=["-o", f"SetEnv=BASH_ENV={trap}"]))
    assert done.returncode == 0 and marker.exists(), done


def test_agent_and_port_forwarding(sshd: Sshd, remote: RemoteHost, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_for(sock.exists)
        forwarded = run(sshd.client_argv("printenv", "SSH_AUTH_SOCK", options=["-A", "-o", f"IdentityAgent={sock}"]))
        assert forwarded.returncode == 0 and forwarded.stdout.startswith("/tmp/ssh-"), forwarded
    finally:
        agent.terminate()
        agent.wait()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tunnel = subprocess.Popen(sshd.client_argv("-N", options=["-L", f"127.0.0.1:{port}:127.0.0.1:{remote.port}"]),
                              stderr=subprocess.PIPE, text=True)
    try:
        assert forwarded_peer(port) == "127.0.0.1"  # dialed by the server, inside its namespace
    finally:
        tunnel.kill()  # not SIGTERM: OpenSSH 9.2's client may take it only at its next poll() timeout
        tunnel.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{condition} still false after {timeout}s"
        time.sleep(0.05)


def forwarded_peer(port: int, timeout: float = 10) -> str:
    """The address the whoami server saw, through a local forward listening on `port`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                return conn.makefile().readline().split()[0]
        except (OSError, IndexError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy"])
def test_scp_both_ways(sshd: Sshd, tmp_path: Path, legacy: bool) -> None:
    source, copied, back = tmp_path / "source.txt", tmp_path / "remote.txt", tmp_path / "back.txt"
    source.write_text("scp payload\n")
    scp = ["scp", *sshd.client_options(["-O"] if legacy else [])]
    assert run([*scp, str(source), f"{sshd.target}:{copied}"]).returncode == 0
    assert copied.read_text() == "scp payload\n"
    assert run([*scp, f"{sshd.target}:{copied}", str(back)]).returncode == 0
    assert back.read_text() == "scp payload\n"


def test_sftp_batch(sshd: Sshd, tmp_path: Path) -> None:
    source = tmp_path / "put.txt"
    source.write_text("sftp payload\n")
    sftp = ["sftp", *sshd.client_options(), "-b", "-", sshd.target]
    done = run(sftp, stdin=f"put {source} {tmp_path}/stored.txt\nget {tmp_path}/stored.txt {tmp_path}/got.txt\n"
                          f"ls {tmp_path}\n")
    assert done.returncode == 0, done
    assert (tmp_path / "got.txt").read_text() == "sftp payload\n"
    assert f"{tmp_path}/stored.txt" in done.stdout
