"""Attacks on the ssh enforcement (issue 17), each a test: the handler over loopback (the lab of
test_ssh_handler: an agent -> SshHandler.serve -> an in-process upstream server), the policy
(interceptor.policy.ssh_rules on a policy written as an operator would), and, where a claim is
that a program runs code, the real program on this host.

Two parts:

- FINDINGS: each test fails now and passes once the kind of bypass it names is closed; the first
  line of its docstring starts with `attack:`, the rest says the expected secure behaviour.
- GUARDS: attacks that are stopped today; they pass, and keep them stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import cast

import asyncssh
import pytest
from asyncssh.constants import PTY_OP_END
from asyncssh.packet import Byte, String, UInt32

from interceptor.handlers.ssh.connection import MAX_CHANNELS, MAX_LISTENERS, PROTOCOL_RULE
from interceptor.operations import Request, SshRequest, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.ssh_command import read_command, runs_code
from test_ssh_handler import POLICY, ROOT, SHELLS, Lab, broker, scenario

# A policy as an operator writes one: tools allowed with any arguments (`X **`), which the
# module promises still refuses when an argument makes the tool run a command; a deny rule on rm
# "however it is wrapped" (policy/examples/ssh.yaml); a break-glass agent allowed shells; files
# and forwards by glob.
OPERATOR = """
version: 1
resources:
  web: {protocol: ssh, addresses: ["10.0.0.7:22"], options: {known_hosts: /etc/interceptor/known_hosts}}
agents:
  ops: {uids: [1001]}
  breakglass: {uids: [1002]}
rules:
  - name: tools
    effect: allow
    agents: [ops]
    resources: [web]
    ssh:
      commands: ["tar **", "git **", "split **", "sort **", "diff3 **", "sdiff **", "openssl **", "gcc **",
                 "setarch **", "choom **", "ip **", "ssh-agent **", "cat **", "tail **"]
  - {name: breakglass-shell, effect: allow, agents: [breakglass], resources: [web], ssh: {shell: true}}
  - name: ops-files
    effect: allow
    agents: [ops]
    resources: [web]
    ssh: {read: ["/var/log/**", "/home/deploy/**"], write: ["/srv/uploads/**", "/home/deploy/**"]}
  - name: ops-forwards
    effect: allow
    agents: [ops]
    resources: [web]
    ssh: {forward: ["*:8080", "*:22"], remote_forward: ["*:8080"]}
  - {name: no-rm, effect: deny, reason: files are removed by cleanup jobs, resources: [web],
     ssh: {commands: ["rm **", "cat /etc/shadow"]}}
  - {name: no-stops, effect: deny, resources: [web], ssh: {commands: ["systemctl stop **", "git push **", "rm -rf **"]}}
  - {name: no-server-itself, effect: deny, resources: [web], ssh: {forward: ["127.0.0.1:*", "::1:*"]}}
  - {name: no-public-listen, effect: deny, resources: [web], ssh: {remote_forward: ["0.0.0.0:*", "::*"]}}
  - {name: no-secret-dir, effect: deny, resources: [web], ssh: {write: ["/srv/uploads/locked/**"]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(OPERATOR, "operator.yaml"))


def decide(engine: PolicyEngine, operation: SshRequest, agent: str = "ops") -> tuple[str, str]:
    uid = 1001 if agent == "ops" else 1002
    decision = engine.decide(Request(Subject(agent, None, "/usr/bin/agent", uid), "web", operation))
    return decision.verdict.value, decision.rule


def exec_verdict(engine: PolicyEngine, command: str, agent: str = "ops") -> str:
    return decide(engine, SshRequest("exec", command=command), agent)[0]


def runs_in_bash(command: str, cwd: Path) -> bool:
    """Does `bash -c COMMAND` (what sshd runs for an exec) in `cwd` create the marker file M in
    the test's directory (cwd or its parent)?"""
    markers = [cwd / "M", cwd.parent / "M"]
    subprocess.run(["bash", "-c", command], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                   check=False)
    return any(marker.exists() for marker in markers)


# ==== FINDINGS ===================================================================================
# ---- the handler ------------------------------------------------------------------------------


async def _send_pty_req(chan: asyncssh.SSHClientChannel[bytes]) -> bool:
    """A pty-req (RFC 4254 section 6.2) sent on a channel whose exec request was already made:
    OpenSSH's sshd takes one at any time before the command starts."""
    return bool(await chan._make_request(b"pty-req", String("xterm"), UInt32(80), UInt32(24), UInt32(0), UInt32(0),
                                         String(Byte(PTY_OP_END))))


def test_a_pty_asked_for_after_the_exec_reaches_the_server_unjudged_and_unrecorded(tmp_path: Path) -> None:
    """was an attack (closed): exec judged without a terminal, then a pty-req on the same channel before the
    command starts upstream (here while the request is held for approval): the server runs the
    command on a terminal, so a pager or editor in it (systemctl status, journalctl, git log
    -> less -> `!sh`) is a shell, and nothing is recorded.

    Expected: what runs upstream is exactly what was judged. A terminal request arriving after
    the exec/shell/subsystem request is refused (or the channel's terminal is fixed when it is
    judged: request_of's pty is what is passed to create_process), so the server sees no pty
    and the command's ssh-end record has no terminal it was not judged with."""
    async def test(lab: Lab) -> None:
        async with broker(lab) as approvals, lab.agent() as conn:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "reboot", encoding=None)
            for _ in range(100):
                if await approvals.list():
                    break
                await asyncio.sleep(0.05)
            (pending,) = await approvals.list()
            assert not await _send_pty_req(cast("asyncssh.SSHClientChannel[bytes]", chan))
            await approvals.approve(pending.request_id, ROOT)
            await asyncio.wait_for(chan.wait_closed(), 10)
        records = {e.decision: e for e in lab.kind("ssh")}
        judged, refused = records["approve"], records["deny"]
        assert judged.operation is not None and "pty" not in judged.operation  # judged as an exec without one
        assert (refused.rule, refused.operation) == (PROTOCOL_RULE, {"kind": "ssh", "request": "exec",
                                                                     "command": "reboot", "pty": True})
        assert lab.upstream.terminals == [None] and lab.upstream.commands == ["reboot"], (
            f"the server ran {lab.upstream.commands} on terminal {lab.upstream.terminals} the policy never judged")

    scenario(test, tmp_path)


def test_an_exec_allowed_only_as_a_shell_is_not_recorded(tmp_path: Path) -> None:
    """was an attack (closed): an agent allowed `shell: true` (break-glass: shells are recorded) runs
    `ssh host bash` (no pty: OpenSSH's default for a command) and types its commands on stdin:
    an interactive session, none of it in any recording; the audit has `bash` and byte counts.

    (With a deny `commands` rule in the policy a shell reading stdin is opaque and denied; a
    policy with none, as here, allows it.)

    Expected: every exec that only a `shell: true` rule allows (shell class: a shell or an
    interpreter reading stdin, `sh -s`, `python3 -`, `cat | sh`, ...) is recorded like a shell,
    input and output, and its ssh-end record carries the recording summary."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await conn.run("bash")  # the lab's server exits at once; sshd's bash would read stdin
            assert result.exit_status == 0
        (end,) = lab.kind("ssh-end")
        assert end.operation is not None and end.operation["command"] == "bash"
        assert end.outcome is not None and "recording" in end.outcome, (
            "a shell run as an exec without a pty was allowed by `shell: true` and not recorded")

    no_deny_rules = "\n".join(line for line in POLICY.splitlines() if "no-rm" not in line)
    scenario(test, tmp_path, policy=no_deny_rules + SHELLS)


def test_a_refused_unix_socket_forward_is_recorded(tmp_path: Path) -> None:
    """was an attack (closed): `ssh -L 9000:/var/run/docker.sock` (direct-streamlocal@openssh.com, OpenSSH
    PROTOCOL 2.4) is refused by asyncssh's default, but no record says the agent tried: a refused
    request missing from the audit.

    Expected: every channel or forward the agent asks for and is refused is in the audit (kind
    "ssh", verdict deny, naming the socket path), as agent and X11 forwarding are."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_unix_connection("/var/run/docker.sock")
        judged = [e for e in lab.kind("ssh") if e.decision == "deny"]
        assert any("docker.sock" in str(e.operation) for e in judged), (
            f"the refused streamlocal forward left no record: {[e.operation for e in lab.sink.events]}")

    scenario(test, tmp_path)


# ---- commands: options and subcommands that run a command --------------------------------------

GIT_SETUP = "git init -q r && cd r && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m x && echo hi > f"
RUNS_A_COMMAND = [  # {M}: the marker file the command run creates
    # GNU getopt_long takes any unambiguous prefix of a long option: CODE_OPTIONS names whole ones
    ("tar -cf /dev/null /etc/hostname --checkpoint=1 --checkpoint-act=exec='touch {M}'", "tar", ""),
    ("tar -cf x.tar --use-comp='touch {M}' /etc/hostname", "tar", ""),
    ("tar -xf a.tgz --to-comm='touch {M}'", "tar", "tar -czf a.tgz -C /etc hostname"),
    # git: options of subcommands (abbreviated or short forms) and subcommands that run commands
    ("git fetch --upload-p='touch {M};' .", "git", GIT_SETUP),
    ("git clone -q -u 'touch {M};' . ../c", "git", GIT_SETUP),
    ("git grep -O'touch {M}' hi", "git", GIT_SETUP + " && git add f"),
    ("git push --exec='touch {M};' . HEAD:refs/heads/z", "git", GIT_SETUP),
    ("git difftool -y -x 'touch {M}' HEAD", "git",
     GIT_SETUP + " && git add f && git -c user.email=a@b -c user.name=a commit -qm y && echo b > f"),
    # coreutils, diffutils and gcc options that run a program or a shell string
    ("split --filter='touch {M}' /etc/hostname", "split", ""),
    ("sort -S 16K --compress-program=./c.sh big", "sort",
     "seq 1 200000 > big && printf '#!/bin/sh\\ntouch M; cat\\n' > c.sh && chmod +x c.sh"),
    ("sdiff --diff-program=./d.sh f1 f2", "sdiff",
     "printf 'a\\n' > f1 && printf 'b\\n' > f2 && printf '#!/bin/sh\\ntouch M\\n' > d.sh && chmod +x d.sh"),
    # a library loaded by name: the agent uploads it (any file name: `.so` writes are refused by name only)
    ("openssl req -engine ./e.so", "openssl",
     "printf '#include <stdlib.h>\\n__attribute__((constructor)) static void c(void){system(\"touch M\");}\\n' > e.c"
     " && gcc -shared -fPIC -o e.so e.c"),
    # a repository whose config the agent wrote (SFTP, /srv/uploads/**): git runs its textconv driver
    ("git -C ./bare log -p", "git", GIT_SETUP + " && git add f && git -c user.email=a@b -c user.name=a commit -qm y"
     " && cd .. && git clone -q --bare r r/bare && printf '[diff \"x\"]\\n\\ttextconv = \"touch ../M; cat\"\\n' >> "
     "r/bare/config && echo '* diff=x' > r/bare/info/attributes"),
    ("gcc -wrapper ./d.sh,x -c x.c", "gcc",
     "printf '#!/bin/sh\\ntouch M\\n' > d.sh && chmod +x d.sh && echo 'int x;' > x.c"),
]


@pytest.mark.parametrize(("command", "program", "setup"), RUNS_A_COMMAND)
def test_options_that_run_a_command_are_shell_class(engine: PolicyEngine, tmp_path: Path, command: str,
                                                    program: str, setup: str) -> None:
    """was an attack (closed): a tool allowed with any arguments (`tar **`, `git **`, `split **`, ...) given an
    option or subcommand that runs a command of the agent's choosing, in a spelling the reader
    does not know (an abbreviated long option, a short form, another subcommand's option):
    `tar --to-comm=`, `git fetch --upload-p=`, `git clone -u`, `git grep -O`, `git push --exec`,
    `git difftool -x`, `split --filter`, `sort --compress-program`, `sdiff --diff-program`,
    `gcc -wrapper`; options that load a library or read code from a file or directory the agent
    can write (`openssl -engine FILE`, `git -C DIR` on a repository uploaded with its config).
    The real program runs the command (checked here with bash).

    Expected: shell class (only `shell: true` allows it) for every option spelling the program
    accepts (GNU getopt_long and git's parse-options take unique prefixes), and every option or
    subcommand that runs a program; and opaque for deny rules (the command it runs is not read)."""
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    if setup:
        subprocess.run(["bash", "-c", setup], cwd=tmp_path, check=True, capture_output=True)
    command = command.format(M=tmp_path / "M")
    assert runs_in_bash(command, tmp_path / "r" if program == "git" else tmp_path), f"{command!r} ran no code here"
    reading = read_command(command)
    assert reading.shell, f"{command!r} runs a command and reads as plain words {reading.argv}"
    assert exec_verdict(engine, command) == "deny"


def test_a_command_run_by_an_option_is_opaque_to_deny_rules(engine: PolicyEngine) -> None:
    """was an attack (closed): the break-glass agent (any exec allowed; `rm` denied "however it is wrapped")
    runs rm through an option that runs a shell string: `split --filter='rm -rf /srv' ...`,
    `tar ... --to-comm='rm -rf /srv'`, `git grep -O'rm -rf /srv' x`.

    Expected: the command an option runs is read (a shell string, recursively) or, when it
    cannot be, makes the command opaque: every deny `commands` rule matches it."""
    for command in ("split --filter='rm -rf /srv' /etc/hostname", "tar -xf a.tgz --to-comm='rm -rf /srv'",
                    "git grep -O'rm -rf /srv' x", "sort --compress-program=rm /etc/hostname"):
        assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-rm"), command


# ---- deny rules: wrappers and path spellings -----------------------------------------------------

@pytest.mark.parametrize("command", [
    "setarch x86_64 rm -rf /srv",  # util-linux, runs its arguments
    "linux64 rm -rf /srv",
    "choom -n 0 -- rm -rf /srv",  # util-linux
    "ip netns exec blue rm -rf /srv",  # iproute2
    "ip vrf exec red rm -rf /srv",
    "ssh-agent rm -rf /srv",  # runs the command as its child
    "eatmydata rm -rf /srv",  # Debian's eatmydata
    "rlwrap rm -rf /srv",
    "chronic rm -rf /srv",  # moreutils
    "gosu root rm -rf /srv",
])
def test_deny_rules_see_commands_run_by_any_wrapper(engine: PolicyEngine, command: str) -> None:
    """was an attack (closed): a deny rule `rm **` ("however it is wrapped", policy/examples/ssh.yaml) evaded by
    a program that runs its arguments as a command and is not in WRAPPERS/SPAWNERS.

    Expected: the lax reading is lax about wrappers it does not know: any word of a simple
    command that names a denied program (by basename) may start the command that runs (every
    suffix of the argv is a candidate command), so the deny rule matches."""
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-rm")


@pytest.mark.parametrize("path", ["/proc/self/root/etc/shadow", "/proc/1/root/etc/shadow",
                                  "/proc/thread-self/root/etc/shadow"])
def test_deny_path_words_see_kernel_aliases_of_the_root(engine: PolicyEngine, path: str) -> None:
    """was an attack (closed): deny `cat /etc/shadow` evaded by naming the same file through the kernel's view
    of a process's root directory, `/proc/self/root/etc/shadow` (in normal form, absolute, not
    the pattern's spelling).

    Expected: a deny path word also matches an argument through /proc/<pid|self|thread-self>/
    root (and cwd, fd, map_files: anything under /proc or /dev/fd names files elsewhere), so the
    deny rule holds for every spelling the kernel resolves to its path."""
    assert decide(engine, SshRequest("exec", command=f"cat {path}")) == ("deny", "no-rm")


@pytest.mark.parametrize(("command", "rule"), [
    ("systemctl --no-block stop nginx", "no-stops"),  # an option before the subcommand
    ("systemctl -q stop nginx", "no-stops"),
    ("git -C /srv/app push origin main", "no-stops"),  # git's global options before the subcommand
    ("git --no-pager push", "no-stops"),
])
def test_deny_patterns_see_options_wherever_the_program_reads_them(engine: PolicyEngine, command: str,
                                                                   rule: str) -> None:
    """was an attack (closed): a deny pattern is matched word by word at fixed positions (`systemctl stop **`,
    `git push **`), but programs read options anywhere: before the subcommand, permuted
    after operands (GNU getopt), clustered (`-fr` for `-rf`), long (`--recursive --force`).
    `systemctl --no-block stop nginx` is the denied stop, and passes.

    Expected: deny patterns are read laxly about options too: a pattern matches when the
    command's operands (words not starting with `-`) match the pattern's in order with option
    words allowed anywhere between them, and a pattern's option cluster matches any spelling
    holding its letters (or long names)."""
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", rule)


def test_deny_rm_rf_pattern_sees_its_options_in_any_spelling() -> None:
    """was an attack (closed): deny `rm -rf **` (tests/unit/test_policy_ssh.py's policy writes this) evaded by
    `rm -fr /srv`, `rm -r -f /srv`, `rm --recursive --force /srv`, `rm /srv -rf`: the same
    command for rm (GNU getopt: clusters, long names, permutation).

    Expected: as test_deny_patterns_see_options_wherever_the_program_reads_them: every
    spelling of the pattern's options matches a deny pattern."""
    engine = PolicyEngine(load_policy_text(OPERATOR.replace('"rm **", ', ""), "operator.yaml"))
    for command in ("rm -fr /srv", "rm -r -f /srv", "rm --recursive --force /srv", "rm /srv -rf", "rm -Rf /srv"):
        assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-stops"), command


def test_a_glob_word_for_a_value_does_not_cover_an_option() -> None:
    """was an attack (closed): policy/examples/ssh.yaml allows `systemctl status *` and `journalctl -u * -n *`;
    the `*` meant for a unit or a line count also covers an option word:
    `systemctl status -Hroot@10.0.0.9` (systemctl -H runs ssh to another host with the login's
    own keys: lateral movement), `journalctl -u nginx -n --vacuum-size=1K` (journalctl's `-n`
    takes an optional argument only when attached, so `--vacuum-size` is an option: it deletes
    the journal), `journalctl -u nginx -n --file=/etc/shadow`.

    Expected: a pattern word that is a glob not starting with `-` does not cover an argv word
    starting with `-` (an option is not a value unless the pattern says so: `-n *` covers
    `-n 100`, and `--lines=*` would name the option), for allow and approve rules."""
    example = PolicyEngine(load_policy_text((Path(__file__).resolve().parents[2] / "policy" / "examples" /
                                             "ssh.yaml").read_text(), "ssh.yaml"))
    for command in ("systemctl status -Hroot@10.0.0.9", "journalctl -u nginx -n --vacuum-size=1K",
                    "journalctl -u nginx -n --directory=/home/deploy"):
        decision = example.decide(Request(Subject("ops", None, "/usr/bin/agent", 1001), "web1",
                                          SshRequest("exec", command=command)))
        assert decision.verdict.value == "deny", f"{command!r} allowed by {decision.rule}"


# ---- forwards -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["ip6-localhost", "ip6-loopback", "localhost.localdomain", "localhost6",
                                  "anything.localhost"])
def test_forward_deny_by_address_sees_names_of_that_address(engine: PolicyEngine, host: str) -> None:
    """was an attack (closed): deny `127.0.0.1:*` and `::1:*` (not the server itself) evaded by a name the
    server resolves to loopback: Debian's /etc/hosts has `ip6-localhost ip6-loopback` for ::1,
    RHEL's `localhost.localdomain localhost6`, and `*.localhost` is loopback (RFC 6761;
    systemd-resolved, nss-myhostname). `ssh -L 9:ip6-localhost:22` reaches the server's sshd.

    Expected: a deny forward glob naming an address matches every destination given by a name
    (the server resolves names, the enforcer cannot tell where one goes: fail closed), or at
    the least every name that is loopback by convention."""
    assert decide(engine, SshRequest("forward", forward="local", target=f"{host}:22"))[0] == "deny"


def test_remote_forward_deny_of_every_address_sees_the_star(engine: PolicyEngine) -> None:
    """was an attack (closed): deny remote_forward `0.0.0.0:*` and `::*` (no public listener) evaded by
    `ssh -R '*:8080:...'`: OpenSSH's sshd reads a listen address `*` as every address
    (channels.c channel_fwd_bind_addr, with GatewayPorts clientspecified), like "" and 0.0.0.0.

    Expected: `*` is a spelling of every address for remote forwards (in _EVERY), matched by a
    deny of 0.0.0.0 or ::."""
    assert decide(engine, SshRequest("forward", forward="remote", target="*:8080"))[0] == "deny"


# ---- files that run code --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".bash_completion", ".psqlrc", ".my.cnf", ".sqliterc", ".gdbinit", ".hgrc",
                                  ".irbrc", ".muttrc", ".selected_editor", ".vim/plugin/x.vim",
                                  ".emacs.d/init.el", ".ipython/profile_default/startup/x.py",
                                  ".gradle/init.gradle", ".Rprofile"])
def test_writes_of_any_startup_file_need_a_shell_rule(engine: PolicyEngine, name: str) -> None:
    """was an attack (closed): SFTP write (allowed: /home/deploy/**) of a file a program reads at start and runs
    commands from, not in CODE_NAMES/CODE_SEGMENTS: ~/.bash_completion (sourced by every
    interactive bash through bash-completion, which Debian's /etc/skel/.bashrc loads), psql's
    `\\!` in ~/.psqlrc, mysql's pager in ~/.my.cnf, gdb, mercurial hooks, vim plugins,
    IPython startup, Gradle init scripts, R.

    Expected: runs_code is true by kind, not by list: any path with a segment that starts with
    `.` under a home directory (dotfiles and dot-directories configure what runs) is code,
    covered only by a rule with `shell: true` and a write glob."""
    path = f"/home/deploy/{name}"
    assert runs_code(path), f"writing {path} makes the server run code"
    assert decide(engine, SshRequest("write", path=path, action="open"))[0] == "deny"


# ---- SFTP -------------------------------------------------------------------------------------------

SFTP_RULES = """
  - {name: srv-files, effect: allow, agents: [bot], resources: [web1], ssh: {read: ["/srv/**"], write: ["/srv/**"]}}
  - {name: no-app-secret, effect: deny, resources: [web1], ssh: {read: ["/srv/config/secret.env"]}}
"""


def test_renaming_a_directory_moves_a_denied_file_out_from_under_its_deny_glob(tmp_path: Path) -> None:
    """was an attack (closed): a deny glob on a file (`read: /srv/config/secret.env`) while the agent may write
    the tree (`/srv/**`): SFTP rename of the directory (/srv/config -> /srv/moved) is judged on
    the directory's two paths only, and the file is then read as /srv/moved/secret.env.

    Expected: a rename (or posix-rename) of a directory is refused when a deny glob may match a
    path below its source or its destination (ssh_rules._below, as for a recursive scp), so no
    deny glob can be stepped around by moving a directory above it."""
    async def test(lab: Lab) -> None:
        (lab.tmp / "server" / "srv" / "config").mkdir()
        (lab.tmp / "server" / "srv" / "config" / "secret.env").write_text("DB_PASSWORD=hunter2\n")
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.open("/srv/config/secret.env", "rb")  # the deny glob holds by name
            try:
                await sftp.rename("/srv/config", "/srv/moved")
            except asyncssh.SFTPPermissionDenied:
                return
            async with sftp.open("/srv/moved/secret.env", "rb") as file:
                stolen = await file.read()
        raise AssertionError(f"the denied file was read after its directory was renamed: {stolen!r}")

    scenario(test, tmp_path, policy=POLICY + SFTP_RULES)


def test_realpath_answers_what_readlink_and_stat_refuse(tmp_path: Path) -> None:
    """was an attack (closed): SFTP realpath is passed upstream unjudged, so it tells where a symlink points
    and whether a path exists in a directory the agent may not read, which readlink and stat
    (judged as reads) refuse: an oracle around the read globs.

    Expected: realpath is judged as a read of the path (both readings) like stat and readlink,
    except for the home directory query `.` a client makes first."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.readlink("/private/link")
            try:
                answer = await sftp.realpath("/private/link")
            except asyncssh.SFTPPermissionDenied:
                return
        raise AssertionError(f"realpath told the agent what readlink refused: {answer!r}")

    private = tmp_path / "server" / "private"
    private.mkdir(parents=True)
    (private / "q3-layoffs.xlsx").write_text("names\n")
    (private / "link").symlink_to("q3-layoffs.xlsx")
    scenario(test, tmp_path)


# ==== GUARDS: attacks stopped today ================================================================

@pytest.mark.parametrize("command", [
    "cat /etc/hostname; id", "cat /etc/hostname && id", "cat /etc/hostname || id", "cat /etc/hostname | sh",
    "cat /etc/hostname & id", "cat $(id)", "cat `id`", "cat /etc/hostname > /tmp/x", "cat < /etc/shadow",
    "cat /etc/hostname\nid", "cat /etc/hostname\rid", "cat /etc/hostname\tid", "cat\u00a0/etc/hostname",
    "cat /etc/hostname\u2028id", "cat /etc/hostname\\\nid", "cat /etc/hostname # x", "IFS=/ cat x",
    "cat${IFS}/etc/shadow", "cat \"$HOME\"", "cat ~root/.ssh/id_rsa", "cat /etc/*", "cat {a,b}", "cat 'x' \"$(id)\"",
    "cat $'\\x2fetc'", "cat /etc/hostname '", "tail -n 1 x <<EOF\nEOF", "cat !!", "tail -f x &",
    "tar --to-command=id -xf a", "tar xIf id a", "tar -cf x --checkpoint-action=exec=id y", "git -c core.pager=id log",
    "git --exec-path=/tmp log", "git config --global core.pager id", "tail -n1 x --pid=1", "/proc/self/exe -c id",
])
def test_guard_shell_constructs_and_known_code_options_are_shell_class(engine: PolicyEngine, command: str) -> None:
    """An allowed tool (`cat **`, `tail **`, `tar **`, `git **`) with a shell construct, a
    Unicode or control character, or an option known to run a command: not allowed without
    `shell: true`."""
    if command == "tail -n1 x --pid=1":  # plain words: allowed, and harmless
        assert exec_verdict(engine, command) == "allow"
        return
    assert exec_verdict(engine, command) == "deny", command


@pytest.mark.parametrize("command", [
    "/usr/bin/../bin/rm -rf /srv", "//bin/rm -rf /srv", "./rm -rf /srv", "\\rm -rf /srv", "r''m -rf /srv",
    "\"rm\" -rf /srv", "sudo rm -rf /srv", "sudo -u root -- rm -rf /srv", "env -i rm -rf /srv", "nice -n 5 rm -rf /srv",
    "timeout 5 rm -rf /srv", "nohup rm -rf /srv", "xargs rm -rf", "sh -c 'rm -rf /srv'", "bash -lc 'rm -rf /srv'",
    "busybox rm -rf /srv", "find / -exec rm -rf {} +", "$(echo rm) -rf /srv", "eval rm -rf /srv",
    "cat /etc//shadow", "cat /etc/./shadow", "cat ../../etc/shadow", "cat /etc/sha*", "cat shadow",
    "echo x | sudo xargs rm", "watch rm -rf /srv", "su -c 'rm -rf /srv'", "command rm -rf /srv", "exec rm -rf /srv",
    "/lib64/ld-linux-x86-64.so.2 /bin/rm -rf /srv", "sudo sh -c \"rm -rf /srv\"", "setsid -f rm -rf /srv",
])
def test_guard_deny_rules_see_through_known_spellings_and_wrappers(engine: PolicyEngine, command: str) -> None:
    """The break-glass agent (any exec allowed) against `rm **` and `cat /etc/shadow` denies:
    path spellings of argv0, quoting, known wrappers, `sh -c`, substitutions, path spellings
    of arguments."""
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-rm"), command


def test_guard_a_command_with_nul_or_past_the_limit_is_refused(engine: PolicyEngine) -> None:
    assert decide(engine, SshRequest("exec", command="cat /etc/hostname\0; id"), "breakglass")[1] == "ssh-bad-command"
    assert decide(engine, SshRequest("exec", command="cat " + "x" * 70000), "breakglass")[1] == "ssh-bad-command"


def test_guard_an_exec_with_a_terminal_is_a_shell(engine: PolicyEngine) -> None:
    assert decide(engine, SshRequest("exec", command="cat /etc/hostname", pty=True))[0] == "deny"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "0x7f.1", "2130706433", "017700000001", "127.0.0.2", "0",
                                  "0.0.0.0", "::1", "[::1]", "::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:0:0:1",
                                  "localhost", "LOCALHOST.", "::"])
def test_guard_forward_deny_sees_address_spellings(engine: PolicyEngine, host: str) -> None:
    """Every numeric spelling of loopback (and of every address) and `localhost` are denied."""
    assert decide(engine, SshRequest("forward", forward="local", target=f"{host}:22"))[0] == "deny", host


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "0"])
def test_guard_remote_forward_deny_sees_every_address_spellings(engine: PolicyEngine, host: str) -> None:
    assert decide(engine, SshRequest("forward", forward="remote", target=f"{host}:8080"))[0] == "deny", host


@pytest.mark.parametrize("forward", ["agent", "x11"])
def test_guard_agent_and_x11_forwarding_are_refused(engine: PolicyEngine, forward: str) -> None:
    assert decide(engine, SshRequest("forward", forward=forward), "breakglass") == ("deny", "ssh-forwarding")


@pytest.mark.parametrize("name", ["SFTP", "sftp ", "shell", "exec", "netconf"])
def test_guard_subsystems_other_than_sftp_are_refused(engine: PolicyEngine, name: str) -> None:
    assert decide(engine, SshRequest("subsystem", command=name), "breakglass") == ("deny", "ssh-subsystem")


@pytest.mark.parametrize("path", [
    "/home/deploy/.ssh/authorized_keys", "/home/deploy/.bashrc", "/home/deploy/.profile", "/etc/cron.d/x",
    "/home/deploy/.config/systemd/user/x.service", "/home/deploy//.bashrc", "/home/deploy/x/../.bashrc",
    "/home/deploy/.SSH/authorized_keys", "/home/deploy/./.ssh/rc", "/home/deploy/.gitconfig", "home/deploy/.bashrc",
    "/srv/uploads/locked/x", "/srv/uploads/LOCKED/x", "/srv/uploads/x.php", "/home/deploy/.local/bin/ls",
])
def test_guard_writes_that_run_code_or_are_denied(engine: PolicyEngine, path: str) -> None:
    """Writes allowed under /srv/uploads/** and /home/deploy/** without `shell: true`: the
    startup files on the list, every spelling of them, and deny globs case-folded."""
    assert decide(engine, SshRequest("write", path=path, action="open"))[0] == "deny", path


def test_guard_refused_environment_values_are_never_recorded(tmp_path: Path) -> None:
    """An env request's value may be a secret (a token passed with SendEnv): the records name
    the variable (test_ssh_handler checks that), never its value."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            await conn.run("echo hi", env={"LD_PRELOAD": "/tmp/evil.so", "TOKEN": "s3cr3t-value"})
        values = [str(event) for event in lab.sink.events if "s3cr3t-value" in str(event) or "evil.so" in str(event)]
        assert values == [] and lab.kind("connection")

    scenario(test, tmp_path)


def test_guard_a_second_exec_on_one_channel_is_refused(tmp_path: Path) -> None:
    """exec then another exec (or a shell) on the same session channel: asyncssh answers the
    second with failure, so only the judged command runs."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, "pause", encoding=None)
            client = cast("asyncssh.SSHClientChannel[bytes]", chan)
            assert not await client._make_request(b"exec", String("echo second"))
            assert not await client._make_request(b"shell")
            client.send_signal("INT")
            await asyncio.wait_for(client.wait_closed(), 10)
        assert lab.upstream.commands == ["pause"]

    scenario(test, tmp_path, policy=POLICY + SHELLS)


def test_guard_legacy_scp_download_is_judged_by_path_and_runs_nothing_upstream(tmp_path: Path) -> None:
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            process = await conn.create_process("scp -f /etc/shadow", encoding=None)
            try:  # the exec is refused as the read it is: the channel may close before the input goes
                process.stdin.write(b"\0\0\0")
            except BrokenPipeError:
                pass
            result = await asyncio.wait_for(process.wait(), 10)
            assert b"permission denied" in cast(bytes, result.stderr) and b"root:" not in cast(bytes, result.stdout)
        assert lab.upstream.commands == []
        assert any(e.decision == "deny" and (e.operation or {}).get("command") == "scp -f /etc/shadow"
                   for e in lab.kind("ssh"))

    scenario(test, tmp_path)


def test_guard_recording_names_and_files_are_private(tmp_path: Path) -> None:
    """A shell's recording is created 0600, never through a symlink, named by flow and channel."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            process = await conn.create_process(term_type="xterm")
            await process.stdout.readexactly(2)
            process.stdin.write("exit\r")
            await process.wait()
        (end,) = lab.kind("ssh-end")
        summary = cast("dict[str, object]", (end.outcome or {})["recording"])
        path = lab.tmp / "recordings" / str(summary["file"])
        assert path.name == "flow1-1.cast" and (os.stat(path).st_mode & 0o777) == 0o600

    scenario(test, tmp_path, policy=POLICY + SHELLS)


def test_remote_forward_listeners_are_bounded(tmp_path: Path) -> None:
    """was an attack (closed): resource exhaustion on the server: remote forwards (tcpip-forward) are judged
    but never counted, so one connection can make the server open listeners without bound
    (each a socket and a port on the server), while channels are capped at MAX_CHANNELS.

    Expected: listeners per connection are capped like channels (refused past the limit,
    counted in the connection record)."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            listening = 0
            for _ in range(MAX_CHANNELS + 16):
                try:
                    await conn.forward_remote_port("127.0.0.1", 0, "localhost", 22)
                except asyncssh.ChannelListenError:
                    break
                listening += 1
        assert listening == MAX_LISTENERS, f"{listening} listeners opened on the server by one connection"

    scenario(test, tmp_path)
