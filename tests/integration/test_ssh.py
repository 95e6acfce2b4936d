"""SSH through the kernel redirect: the real OpenSSH clients (`ssh`, `scp`, `sftp`), run in an
agent's cgroup, connect to Debian's sshd at its real address in a network namespace the test
made; the kernel diverts them to the enforcer, which answers with a host certificate of the SSH
host CA (trusted through the known_hosts file `interceptor trust install` writes), logs in
upstream with the resource's key (the agent has only a key of its own, which sshd refuses),
judges every exec by its argv, every shell, file access and forward, holds what needs an
approval, and records shells for `interceptor audit replay`.

What reached sshd is read from sshd's own log ("Starting session" lines) and from marker files
the commands would have made: the server shares the host's file system, so a refused command
that ran anyway would leave its file behind. tests/integration/test_sshd_direct.py shows the
same sshd honours what is refused here (sent environment, agent and port forwarding).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_setup import decide
from netns import RemoteHost
from ssh_setup import PtySession, SshSite, agent_argv, run_as, running_ssh_site

pytestmark = pytest.mark.root

AGENT, BREAKGLASS = "operator", "breakglass"
REMOVALS = "nothing is removed on web"
README = "read me through the enforcer\n"
SECRET = "not for the operator\n"


@dataclass
class Env:
    site: SshSite
    remote: RemoteHost
    marks: Path  # where the commands' marker files go
    files: Path  # pub/ (readable), upload/ (writable), private/ (neither), on the server
    local: Path  # the agent's side of file copies


def rules(marks: Path, files: Path, remote: RemoteHost) -> list[str]:
    """The operator may run plain commands (and, naively, wrappers and shells: no `shell: true`
    rule lets them run), touch approved-* markers once an approver says so, read pub/, write
    upload/ and forward to the whoami server; removals are denied for everyone; breakglass may
    open a shell."""
    return [
        f"{{name: operator-commands, effect: allow, agents: [{AGENT}], resources: [web], ssh: {{commands: ["
        "'echo **', 'ls **', 'true', 'uname **', 'id **', 'cat', 'printenv **', 'sh -c **', 'bash -c **',"
        " 'env **', 'exec **', 'eval **']}}",
        f"{{name: touch-needs-sre, effect: approve, agents: [{AGENT}], resources: [web], ssh: {{commands: ["
        f"'touch {marks}/approved-*']}}, approval: {{groups: [sre], timeout_seconds: 120}}}}",
        f"{{name: no-removals, effect: deny, resources: [web], reason: '{REMOVALS}', ssh: {{commands: ['rm **']}}}}",
        f"{{name: operator-files, effect: allow, agents: [{AGENT}], resources: [web], ssh: {{"
        f"read: ['{files}/pub', '{files}/pub/**', '{files}/upload', '{files}/upload/**'],"
        f" write: ['{files}/upload/**']}}}}",
        f"{{name: operator-forward, effect: allow, agents: [{AGENT}], resources: [web], ssh: {{"
        f"forward: ['{remote.ip4}:{remote.port}']}}}}",
        f"{{name: breakglass-shell, effect: allow, agents: [{BREAKGLASS}], resources: [web], ssh: {{shell: true}}}}",
    ]


@pytest.fixture(scope="module")
def env(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("ssh")
    marks, files, local = workdir / "marks", workdir / "files", workdir / "local"
    for directory in (marks, files / "pub", files / "upload" / ".ssh", files / "private", local):
        directory.mkdir(parents=True)
    (files / "pub" / "readme.txt").write_text(README)
    (files / "private" / "secret.txt").write_text(SECRET)
    with running_ssh_site(workdir, remote, [AGENT, BREAKGLASS], rules(marks, files, remote)) as site:
        yield Env(site, remote, marks, files, local)


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The enforcer's reason as the client printed it; AssertionError unless it exited non-zero."""
    assert done.returncode != 0, f"not refused: {done}"
    lines = [line for line in done.stderr.splitlines() if line.startswith("interceptor: ")]
    assert lines, f"no reason from the enforcer on stderr: {done.stderr!r}"
    return lines[0]


# ---- exec ----------------------------------------------------------------------------------

def test_an_allowed_command_runs_upstream_with_the_resources_key(env: Env) -> None:
    site = env.site
    before = site.sessions_started()
    done = site.ssh(AGENT, "uname", "-n")
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout == subprocess.run(["ip", "netns", "exec", env.remote.name, "uname", "-n"],
                                         capture_output=True, text=True).stdout
    assert site.sessions_started() == before + 1
    log = site.sshd.log_text()
    assert "Accepted publickey for root from 10.231.0.1" in log  # the enforcer, from the host's side
    [record] = site.wait_records(command="uname -n")
    assert (record["agent"], record["decision"], record["rule"]) == (AGENT, "allow", "operator-commands")
    assert record["operation"] == {"kind": "ssh", "request": "exec", "command": "uname -n"}
    [end] = site.wait_records("ssh-end", command="uname -n")
    assert end["outcome"]["exit_status"] == 0, end
    assert end["outcome"]["bytes_down"] == len(done.stdout.encode()), end


def test_a_failing_commands_exit_status_and_stderr_come_back(env: Env) -> None:
    done = env.site.ssh(AGENT, "ls", "/nonexistent-dir")
    assert done.returncode == 2, done
    assert "No such file or directory" in done.stderr and "interceptor" not in done.stderr, done
    [end] = env.site.wait_records("ssh-end", command="ls /nonexistent-dir")
    assert end["outcome"]["exit_status"] == 2


def test_stdin_is_relayed_to_the_command(env: Env) -> None:
    done = env.site.ssh(AGENT, "cat", stdin="typed into cat\n" * 1000)
    assert (done.returncode, done.stdout) == (0, "typed into cat\n" * 1000), done.stderr
    [end] = env.site.wait_records("ssh-end", command="cat")
    assert end["outcome"]["bytes_up"] == len("typed into cat\n") * 1000


def test_the_login_name_the_agent_asks_for_is_not_the_one_used(env: Env) -> None:
    done = env.site.ssh(AGENT, "id", "-un", options=["-l", "deploy"])
    assert (done.returncode, done.stdout) == (0, "root\n"), done
    connection = env.site.wait_records("connection", lambda e: (e.get("outcome") or {}).get("user") == "deploy")
    assert connection[-1]["agent"] == AGENT


def test_a_denied_command_is_refused_with_the_rule_and_never_runs(env: Env) -> None:
    site = env.site
    keep = env.marks / "keep"
    keep.touch()
    before = site.sessions_started()
    for command in ([f"rm -f {keep}"], ["rm", "-f", str(keep)], [f"sudo rm -rf {keep}"]):
        done = site.ssh(AGENT, *command)
        reason = refused(done)
        assert "no-removals" in reason and REMOVALS in reason, reason
        assert (done.returncode, done.stdout) == (126, ""), done
    assert keep.exists() and site.sessions_started() == before
    records = site.wait_records(predicate=lambda e: e["rule"] == "no-removals", count=3)
    assert {e["decision"] for e in records} == {"deny"}
    assert not site.records("ssh-end", lambda e: "rm " in (e["operation"].get("command") or ""))


def test_a_command_no_rule_allows_is_refused(env: Env) -> None:
    marker = env.marks / "not-allowed"
    done = env.site.ssh(AGENT, "touch", str(marker))
    assert "default-deny" in refused(done)
    assert not marker.exists()


INJECTIONS = {
    "semicolon": "echo hi; touch {marker}",
    "and": "echo hi && touch {marker}",
    "or": "ls /nonexistent-dir || touch {marker}",
    "pipe": "echo {marker} | xargs touch",
    "pipe_tee": "echo hi | tee {marker}",
    "background": "echo hi & touch {marker}",
    "substitution": "echo $(touch {marker})",
    "substitution_quoted": 'echo "$(touch {marker})"',
    "backticks": "echo `touch {marker}`",
    "redirect": "echo hi > {marker}",
    "redirect_append": "echo hi >> {marker}",
    "redirect_fd": "echo hi 2>{marker}",
    "redirect_clobber": "echo hi >| {marker}",
    "newline": "echo hi\ntouch {marker}",
    "bash_c": "bash -c 'touch {marker}'",
    "sh_c": "sh -c 'touch {marker}'",
    "sh_c_allowed_inside": "sh -c 'echo hi; touch {marker}'",
    "env": "env touch {marker}",
    "env_split": "env -S 'touch {marker}'",
    "env_bash_env": "env BASH_ENV={trap} bash -c true",
    "assignment": "BASH_ENV={trap} bash -c true",
    "exec": "exec touch {marker}",
    "eval": "eval touch {marker}",
    "eval_quoted": "eval 'echo hi; touch {marker}'",
    "function": "echo() {{ touch {marker}; }}; echo hi",
    "process_substitution": "echo <(touch {marker})",
}


@pytest.mark.parametrize("shape", list(INJECTIONS))
def test_each_injection_shape_is_refused_and_nothing_runs(env: Env, shape: str) -> None:
    """Each shell construct after an allowed command (or a shell, wrapper or interpreter an
    allow rule names naively): refused, nothing reaches sshd, no marker file."""
    site = env.site
    marker, trap = env.marks / f"injected-{shape}", env.marks / f"trap-{shape}.sh"
    trap.write_text(f"touch {marker}\n")
    command = INJECTIONS[shape].format(marker=marker, trap=trap)
    before = site.sessions_started()
    done = site.ssh(AGENT, command)
    reason = refused(done)
    [record] = site.wait_records(command=command)
    assert record["decision"] == "deny" and record["rule"] in reason, (record, reason)
    assert done.stdout == ""
    time.sleep(0.2)
    assert not marker.exists(), f"{shape} ran"
    assert site.sessions_started() == before


def test_environment_sent_with_the_request_never_reaches_the_server(env: Env) -> None:
    """BASH_ENV (and LD_PRELOAD) in env requests: the allowed command runs, without them."""
    marker, trap = env.marks / "sent-env", env.marks / "sent-env.sh"
    trap.write_text(f"touch {marker}\n")
    done = env.site.ssh(AGENT, "echo", "with-env", options=[
        "-o", f"SetEnv=BASH_ENV={trap} LD_PRELOAD=/nonexistent.so"])
    assert (done.returncode, done.stdout) == (0, "with-env\n"), done
    assert not marker.exists()
    connection = env.site.wait_records("connection", lambda e: {"BASH_ENV", "LD_PRELOAD"} <= set(
        (e.get("outcome") or {}).get("env_refused") or []))
    assert connection[-1]["agent"] == AGENT


# ---- approvals -----------------------------------------------------------------------------

def test_a_command_held_for_approval_runs_once_approved(env: Env) -> None:
    site = env.site
    marker = env.marks / "approved-1"
    command = f"touch {marker}"
    held = site.start_ssh(AGENT, command)
    request = site.daemon.pending_request(AGENT)
    assert request["rule"] == "touch-needs-sre"
    assert request["operation"] == {"kind": "ssh", "request": "exec", "command": command}, request
    listed = site.daemon.cli("approvals", "list").stdout
    assert request["request_id"] in listed, listed
    time.sleep(0.5)
    assert held.poll() is None and not marker.exists(), "ran before it was approved"
    decide(site.daemon, "approve", request["request_id"])
    out, err = held.communicate(timeout=30)
    assert held.returncode == 0, err
    assert "waiting for approval" in err and request["request_id"] in err, err
    assert marker.exists()
    approved = site.wait_records(predicate=lambda e: (e.get("outcome") or {}).get("approval", {}).get(
        "request_id") == request["request_id"])[-1]
    assert (approved["decision"], approved["rule"]) == ("approve", "touch-needs-sre")
    assert approved["outcome"]["approval"]["approved"] is True


def test_a_command_denied_by_the_approver_never_runs(env: Env) -> None:
    site = env.site
    marker = env.marks / "approved-2"
    held = site.start_ssh(AGENT, f"touch {marker}")
    request = site.daemon.pending_request(AGENT)
    site.daemon.call("approvals.deny", request_id=request["request_id"], reason="not during the freeze")
    _, err = held.communicate(timeout=30)
    assert held.returncode != 0
    assert "not during the freeze" in err and "touch-needs-sre" in err, err
    assert not marker.exists()


# ---- shells --------------------------------------------------------------------------------

def test_a_break_glass_shell_is_recorded_and_replayed(env: Env) -> None:
    site = env.site
    session = PtySession(agent_argv(BREAKGLASS, site.ssh_argv()))
    try:
        session.expect("# ")  # root's prompt
        session.send("echo typed-$((6 * 7))\n")
        session.expect("typed-42")
        session.send("exit 0\n")
    finally:
        status = session.close()
    assert status == 0, session.output
    [record] = site.wait_records(predicate=lambda e: e["agent"] == BREAKGLASS, request="shell")
    assert (record["decision"], record["rule"]) == ("allow", "breakglass-shell")
    assert record["operation"]["pty"] is True
    [end] = site.wait_records("ssh-end", predicate=lambda e: e["agent"] == BREAKGLASS, request="shell")
    recording = end["outcome"]["recording"]
    assert "path" not in recording and "/" not in recording["file"]  # the name only: no directory in the trail
    path = site.daemon.workdir / "state" / "recordings" / recording["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recording["sha256"]
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == 0
    header = json.loads(path.read_text().splitlines()[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    replayed = site.daemon.cli("audit", "replay", end["event_id"], "--speed", "0")
    assert "typed-42" in replayed.stdout, replayed.stdout
    assert "echo typed-$((6 * 7))" in replayed.stdout  # the terminal echoed what was typed
    assert end["outcome"]["request_event"] == record["event_id"]  # the end names its request
    by_request = site.daemon.cli("audit", "replay", record["event_id"], "--speed", "0")
    assert by_request.stdout == replayed.stdout


def test_a_shell_is_refused_to_the_ordinary_agent(env: Env) -> None:
    site = env.site
    marker = env.marks / "from-a-shell"
    before = site.sessions_started()
    done = site.ssh(AGENT, options=["-T"], stdin=f"touch {marker}\n")
    reason = refused(done)
    [record] = site.wait_records(predicate=lambda e: e["agent"] == AGENT, request="shell")
    assert record["decision"] == "deny" and record["rule"] in reason
    with_pty = site.ssh(AGENT, "echo", "hi", options=["-tt"])  # an exec with a terminal is a shell's
    assert with_pty.returncode != 0 and "interceptor: " in with_pty.stdout + with_pty.stderr, with_pty
    assert not marker.exists() and site.sessions_started() == before


# ---- files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy"])
def test_scp_uploads_and_downloads_by_path(env: Env, legacy: bool) -> None:
    site, files, local = env.site, env.files, env.local
    mode = ["-O"] if legacy else []
    tag = "legacy" if legacy else "sftp"
    source = local / f"up-{tag}.txt"
    source.write_text(f"uploaded by scp ({tag})\n")
    up = site.scp(AGENT, *mode, str(source), site.remote(files / "upload" / source.name))
    assert up.returncode == 0, up
    assert (files / "upload" / source.name).read_text() == source.read_text()
    down = local / f"down-{tag}.txt"
    got = site.scp(AGENT, *mode, site.remote(files / "pub" / "readme.txt"), str(down))
    assert got.returncode == 0 and down.read_text() == README, got

    # outside upload/, spelt directly or through dot segments; and inside it, files that make
    # the server run code (a shell's startup file, authorized_keys): only `shell: true` allows those
    code = [files / "upload" / ".bashrc", files / "upload" / ".ssh" / "authorized_keys"]
    for target in (f"{files}/pub/{source.name}", f"{files}/upload/../pub/{source.name}",
                   f"{files}/upload/./../private/{source.name}", f"{files}/upload//../pub/{source.name}",
                   *map(str, code)):
        denied = site.scp(AGENT, *mode, str(source), site.remote(target))
        assert denied.returncode != 0, (target, denied)
    assert not (files / "pub" / source.name).exists() and not (files / "private" / source.name).exists()
    assert not [path for path in code if path.exists()]
    stolen = local / f"stolen-{tag}.txt"
    for path in (files / "private" / "secret.txt", f"{files}/pub/../private/secret.txt", "/etc/shadow"):
        denied = site.scp(AGENT, *mode, site.remote(path), str(stolen))
        assert denied.returncode != 0 and SECRET not in denied.stdout + denied.stderr, (path, denied)
        assert not stolen.exists() or stolen.read_text() == "", path
    writes = site.records(request="write", path=str(files / "upload" / source.name))
    assert {e["decision"] for e in writes} == {"allow"}, writes
    [written] = site.records("ssh-end", request="write", path=str(files / "upload" / source.name))
    assert written["outcome"]["bytes_written"] == len(source.read_bytes()), written
    for path in code:
        assert {e["decision"] for e in site.records(request="write", path=str(path))} == {"deny"}, path
    reads = site.records(request="read", path=str(files / "private" / "secret.txt"))
    assert reads and {e["decision"] for e in reads} == {"deny"}, reads


def test_sftp_batch_put_get_ls_and_refusals(env: Env) -> None:
    site, files, local = env.site, env.files, env.local
    source = local / "sftp-put.txt"
    source.write_text("put by sftp\n")
    done = site.sftp(AGENT, f"put {source} {files}/upload/sftp-put.txt\n"
                            f"get {files}/pub/readme.txt {local}/sftp-got.txt\n"
                            f"ls {files}/pub\n")
    assert done.returncode == 0, done
    assert (files / "upload" / "sftp-put.txt").read_text() == "put by sftp\n"
    assert (local / "sftp-got.txt").read_text() == README
    assert f"{files}/pub/readme.txt" in done.stdout, done.stdout
    for batch in (f"get {files}/private/secret.txt {local}/sftp-stolen.txt\n",
                  f"rm {files}/pub/readme.txt\n", f"put {source} {files}/pub/sftp-put.txt\n",
                  f"ls {files}/private\n", f"rename {files}/pub/readme.txt {files}/upload/moved.txt\n",
                  f"symlink /etc/shadow {files}/upload/shadow-link\n"):
        denied = site.sftp(AGENT, batch)
        assert denied.returncode != 0, (batch, denied)
        assert SECRET not in denied.stdout
    assert (files / "pub" / "readme.txt").read_text() == README
    assert not (local / "sftp-stolen.txt").exists() and not (files / "pub" / "sftp-put.txt").exists()
    assert not (files / "upload" / "shadow-link").is_symlink()


# ---- forwards ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def through_forward(port: int, socks: tuple[str, int] | None = None, timeout: float = 10) -> str:
    """What the whoami server said (the peer address it saw) through a local forward on
    `port`, or through a dynamic one (SOCKS5, RFC 1928) to the IPv4 `socks` destination;
    "" when the forward's connection closed without a word, "timeout" when nothing came."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                if socks is not None:
                    conn.sendall(b"\x05\x01\x00")
                    assert conn.recv(2) == b"\x05\x00"
                    conn.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(socks[0]) + socks[1].to_bytes(2, "big"))
                    reply = conn.recv(10)
                    if reply[1:2] != b"\x00":
                        return ""
                return conn.makefile().readline().strip()
        except ConnectionRefusedError:  # ssh is not listening yet
            assert time.monotonic() < deadline, f"nothing listening on {port}"
            time.sleep(0.1)
        except ConnectionResetError:
            return ""
        except TimeoutError:
            return "timeout"


def ended(process: subprocess.Popen[str]) -> None:
    """End `process` (an ssh -N) with SIGKILL: OpenSSH 9.2's client loop can take a SIGTERM
    that arrives just before it enters poll() only when poll() times out, minutes later."""
    process.kill()
    process.communicate(timeout=10)


def test_local_and_dynamic_forwards_are_judged_by_destination(env: Env) -> None:
    site, remote = env.site, env.remote
    allowed_port, refused_port, socks_port = free_port(), free_port(), free_port()
    mark = len(site.records(request="forward"))
    tunnel = site.start_ssh(AGENT, "-N", options=[
        "-L", f"127.0.0.1:{allowed_port}:{remote.ip4}:{remote.port}",
        "-L", f"127.0.0.1:{refused_port}:127.0.0.1:{remote.port}", "-D", f"127.0.0.1:{socks_port}"])
    try:
        # dialed by sshd, from inside the namespace: never from the enforcer's host (10.231.0.1)
        assert through_forward(allowed_port).split()[0] == remote.ip4
        assert through_forward(refused_port) == ""
        assert through_forward(socks_port, (remote.ip4, remote.port)).split()[0] == remote.ip4
        assert through_forward(socks_port, ("127.0.0.1", remote.port)) == ""
    finally:
        ended(tunnel)
    forwards = site.wait_records(request="forward", count=mark + 4)[mark:]
    decisions = [(e["operation"]["target"], e["decision"], e["rule"]) for e in forwards]
    allowed, refused_target = f"{remote.ip4}:{remote.port}", f"127.0.0.1:{remote.port}"
    assert [(target, decision) for target, decision, _ in decisions] == [
        (allowed, "allow"), (refused_target, "deny"), (allowed, "allow"), (refused_target, "deny")], decisions
    assert {rule for target, _, rule in decisions if target == allowed} == {"operator-forward"}


def test_remote_forwards_are_refused(env: Env) -> None:
    done = env.site.ssh(AGENT, "-N", options=["-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22"],
                        timeout=30)
    assert done.returncode == 255 and "remote port forwarding failed" in done.stderr, done
    [record] = env.site.wait_records(predicate=lambda e: e["operation"].get("forward") == "remote")
    assert record["decision"] == "deny"


def test_agent_forwarding_is_refused(env: Env, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        done = env.site.ssh(AGENT, "printenv", "SSH_AUTH_SOCK", options=["-A", "-o", f"IdentityAgent={sock}"])
    finally:
        agent.terminate()
        agent.wait()
    assert (done.returncode, done.stdout) == (1, ""), done  # the command ran, with no agent to reach
    [record] = env.site.wait_records(predicate=lambda e: e["operation"].get("forward") == "agent")
    assert record["decision"] == "deny"


def test_x11_forwarding_and_other_subsystems_are_refused(env: Env) -> None:
    site = env.site
    x11 = site.ssh(AGENT, "echo", "no-display", options=["-X"], env={"DISPLAY": ":99"})
    assert (x11.returncode, x11.stdout) == (0, "no-display\n"), x11  # the command ran, without X11
    assert "X11 forwarding request failed" in x11.stderr, x11.stderr
    [record] = site.wait_records(predicate=lambda e: e["operation"].get("forward") == "x11")
    assert record["decision"] == "deny"
    before = site.sessions_started()
    subsystem = site.ssh(AGENT, "netconf", options=["-s"])
    assert subsystem.returncode != 0, subsystem
    [refusal] = site.wait_records(request="subsystem", command="netconf")
    assert refusal["decision"] == "deny"
    assert site.sessions_started() == before


# ---- the upstream key ----------------------------------------------------------------------

def key_lines(site: SshSite) -> list[str]:
    """The body lines of the upstream private key (what would give it away)."""
    return [line for line in site.sshd.key.read_text().splitlines() if line and not line.startswith("-----")]


def test_a_non_root_agent_logs_in_but_cannot_read_the_upstream_key(env: Env) -> None:
    site = env.site
    key = site.sshd.key
    assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (0, 0o600)
    done = site.ssh(AGENT, "echo", "from-nobody", user="nobody")
    assert (done.returncode, done.stdout) == (0, "from-nobody\n"), done
    for path in (key, site.daemon.workdir / "ssh-credentials"):
        read = run_as(AGENT, ["cat", str(path)], user="nobody")
        assert read.returncode != 0 and "Permission denied" in read.stderr, read
        # this sshd shares the enforcer host's files: asking the server for them is refused too
        copied = env.local / "copied-key"
        assert site.scp(AGENT, site.remote(path), str(copied)).returncode != 0
        assert not copied.exists() or copied.read_text() == ""
        assert site.ssh(AGENT, "cat", str(path)).returncode == 126


def test_the_upstream_key_is_in_no_agent_visible_place(env: Env) -> None:
    """Not in what the agents were shown (known_hosts, everything the clients printed in this
    module, the environment of a command), nor in the audit records or shell recordings."""
    site = env.site
    body = key_lines(site)
    site.ssh(AGENT, "printenv")
    places = {"known_hosts": site.known_hosts.read_text(), "audit": site.daemon.audit_path.read_text(),
              "client output": "\n".join(site.shown)}
    recordings = site.daemon.workdir / "state" / "recordings"
    places.update({str(path): path.read_text(errors="replace") for path in recordings.rglob("*") if path.is_file()})
    for name, text in places.items():
        assert not [line for line in body if line in text], f"the upstream key is in {name}"


def test_the_audit_trail_verifies(env: Env) -> None:
    verified = env.site.daemon.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout
    assert env.site.daemon.call("status")
