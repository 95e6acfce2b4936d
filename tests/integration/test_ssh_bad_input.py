"""Bad SSH input through the kernel redirect: raw sockets from the agent's cgroup send
malformed binary packets after a valid version banner (a length past any limit, padding longer
than the packet, a truncated KEXINIT, random bytes), a flood of lines before the version and
one huge line, and the real ssh client sends a command of 100 KB and of 1 MB. Each ends with a
clear error (the client's stderr, or the flow closed and recorded with why); nothing of it runs
on the server (sshd's log starts no session); another agent's ssh session relaying lines
meanwhile is neither broken nor slowed; and the daemon goes on serving.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_setup import last_json
from netns import RemoteHost
from ssh_setup import SshSite, agent_argv, run_as, running_ssh_site

pytestmark = pytest.mark.root

AGENT, BYSTANDER = "fuzzer", "bystander"
COMMAND_LIMIT = 64 * 1024  # interceptor.handlers.ssh: longer exec commands are refused
RULES = [
    f"{{name: plain-commands, effect: allow, agents: [{AGENT}, {BYSTANDER}], resources: [web], ssh: {{"
    "commands: ['echo **', 'cat']}}",
]

# Run by the agent: argv = host; stdin = the cases as JSON: [{"name", "banner" (send our version
# line first, after reading the server's), "data" (Latin-1 text), "repeat" (times it is sent)}].
# Each on its own connection; reported: the server's first line, bytes received after it,
# whether the enforcer closed the connection (or reset it) and how long it took.
RAW = """
import json, socket, sys, time

host, cases = sys.argv[1], json.load(sys.stdin)
out = {}
for case in cases:
    started = time.monotonic()
    sock = socket.create_connection((host, 22), timeout=20)
    reader = sock.makefile("rb")
    server_line = reader.readline(1024).decode("latin-1").strip()
    closed, error, received = False, None, 0
    try:
        if case.get("banner"):
            sock.sendall(b"SSH-2.0-OpenSSH_9.2p1 fuzz\\r\\n")
        data = case["data"].encode("latin-1")
        for _ in range(case.get("repeat", 1)):
            sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            received += len(chunk)
    except OSError as exc:
        error = type(exc).__name__
    out[case["name"]] = {"server_line": server_line, "received": received, "closed": closed, "error": error,
                         "seconds": time.monotonic() - started}
    sock.close()
print(json.dumps(out))
"""

# Run by the bystander: argv = the ssh argv (JSON) running `cat`, the stop file. A line every
# 50 ms, each read back before the next, until the stop file exists.
BYSTANDING = """
import json, os, subprocess, sys, time

ssh = subprocess.Popen(json.loads(sys.argv[1]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
count, slowest, wrong = 0, 0.0, []
while not os.path.exists(sys.argv[2]):
    line = f"line {count}\\n"
    started = time.monotonic()
    ssh.stdin.write(line)
    ssh.stdin.flush()
    echoed = ssh.stdout.readline()
    slowest = max(slowest, time.monotonic() - started)
    if echoed != line:
        wrong.append([line, echoed])
        break
    count += 1
    time.sleep(0.05)
ssh.stdin.close()
print(json.dumps({"count": count, "slowest": slowest, "wrong": wrong, "status": ssh.wait(timeout=20)}))
"""


def packet(payload: bytes, padding: int | None = None) -> str:
    """A binary packet (RFC 4253 section 6) before any key exchange (no MAC), as Latin-1;
    `padding` overrides the padding length byte."""
    pad = 8 - (len(payload) + 5) % 8 + 8
    body = bytes([pad if padding is None else padding]) + payload + b"\x00" * pad
    return (len(body).to_bytes(4, "big") + body).decode("latin-1")


def name_list(text: str) -> bytes:
    return len(text).to_bytes(4, "big") + text.encode()


TRUNCATED_KEXINIT = packet(bytes([20]) + b"\x11" * 16 + name_list("curve25519-sha256")[:-6])
MALFORMED = {
    "huge_length": "\xff\xff\xff\xf0" + "\x00" * 64,
    "zero_length": "\x00" * 64,
    "padding_past_the_packet": packet(bytes([20]) + b"\x00" * 16, padding=200),
    "truncated_kexinit": TRUNCATED_KEXINIT,
    "unknown_message": packet(bytes([250]) + b"\x00" * 32),
    "channel_data_before_key_exchange": packet(bytes([94]) + b"\x00\x00\x00\x00" + name_list("ls")),
    "noise": ("\x7f" + random.Random(17).randbytes(65535).decode("latin-1")),
}


@pytest.fixture(scope="module")
def site(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshSite]:
    with running_ssh_site(tmp_path_factory.mktemp("ssh-bad-input"), remote, [AGENT, BYSTANDER], RULES) as running:
        yield running


@pytest.fixture
def bystander(site: SshSite, tmp_path: Path) -> Iterator[None]:
    """Another agent's ssh session relaying a line every 50 ms through `cat` while the test
    runs: every line back intact, none slower than a second."""
    stop = tmp_path / "stop"
    agent = subprocess.Popen(agent_argv(BYSTANDER, [sys.executable, "-c", BYSTANDING,
                                                    json.dumps(site.ssh_argv("cat")), str(stop)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    yield
    stop.touch()
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["wrong"] == [] and report["status"] == 0, report
    assert report["count"] >= 20 and report["slowest"] < 1.0, report


def send(site: SshSite, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = last_json(run_as(AGENT, [sys.executable, "-c", RAW, site.sshd.host],
                                                         stdin=json.dumps(cases), timeout=180))
    return report


def connection_errors(site: SshSite, since: int, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The connection records after the first `since` that carry an error, once there are
    `count` of them (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        records = site.events("connection")[since:]
        errors = [e for e in records if (e.get("outcome") or {}).get("error")]
        if len(errors) >= count:
            return errors
        assert time.monotonic() < deadline, f"{len(errors)} of {count} connection records with an error: {records}"
        time.sleep(0.05)


def test_malformed_packets_after_a_valid_banner_close_the_flow(site: SshSite, bystander: None) -> None:
    before, mark = site.sessions_started(), len(site.events("connection"))
    report = send(site, [{"name": name, "banner": True, "data": data} for name, data in MALFORMED.items()])
    for name, answer in report.items():
        assert answer["server_line"].startswith("SSH-2.0-"), (name, answer)
        assert answer["closed"] or answer["error"] == "ConnectionResetError", (name, answer)
        assert answer["seconds"] < 15, (name, answer)
    errors = connection_errors(site, mark, len(MALFORMED))
    assert {(e["agent"], e["decision"], e["outcome"]["fault"]) for e in errors} == {(AGENT, "deny", "client")}, errors
    assert site.sessions_started() == before


def test_a_version_banner_flood_closes_the_flow(site: SshSite, bystander: None) -> None:
    """RFC 4253 section 4.2 lets only the server send lines before its version: a client's
    100,000 lines, or one line of 1 MB, end the flow."""
    mark = len(site.events("connection"))
    report = send(site, [{"name": "many_lines", "data": "not a version line\r\n", "repeat": 100_000},
                         {"name": "huge_line", "data": "SSH-2.0-" + "x" * 65536, "repeat": 16}])
    for name, answer in report.items():
        assert answer["closed"] or answer["error"] in ("ConnectionResetError", "BrokenPipeError"), (name, answer)
        assert answer["received"] < 4096, (name, answer)  # no key exchange was started with it
    errors = connection_errors(site, mark, 2)
    assert {e["outcome"]["fault"] for e in errors} == {"client"}, errors


def test_a_command_past_the_limit_is_refused(site: SshSite, bystander: None) -> None:
    before = site.sessions_started()
    words = ["a" * 999] * 100  # 100 KB
    done = site.ssh(AGENT, "echo", *words)
    assert done.returncode != 0 and done.stdout == "", done
    assert "interceptor: " in done.stderr and str(COMMAND_LIMIT) in done.stderr, done.stderr
    assert site.sessions_started() == before


def test_a_1_mb_command_is_refused(site: SshSite, bystander: None) -> None:
    """Past the largest packet SSH implementations take (256 KiB, asyncssh's and OpenSSH's):
    the agent's connection ends, recorded as the agent's fault."""
    before, mark = site.sessions_started(), len(site.events("connection"))
    done = site.ssh(AGENT, "echo", *(["a" * 999] * 1000))
    assert done.returncode == 255 and done.stdout == "", done
    assert site.sessions_started() == before
    [record] = connection_errors(site, mark, 1)
    assert (record["agent"], record["decision"], record["outcome"]["fault"]) == (AGENT, "deny", "client"), record
    assert "Max packet size exceeded" in record["outcome"]["error"], record


def test_the_daemon_still_serves_after_the_bad_input(site: SshSite) -> None:
    assert site.daemon.call("status")
    done = site.ssh(AGENT, "echo", "still", "serving")
    assert (done.returncode, done.stdout) == (0, "still serving\n"), done
    assert site.daemon.cli("audit", "verify").returncode == 0
