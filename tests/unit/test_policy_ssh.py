"""The ssh protocol's policy side: rules about exec commands, shells, files and forwards
judged with deny > approve > allow (interceptor.policy.ssh_rules), the `ssh:` block's
problems, `policy test` cases, the shipped example, and the check of an ssh resource's credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from interceptor.credentials_check import CredentialsCheck, check_resource
from interceptor.decision import Decision
from interceptor.operations import Request, SshRequest, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.cases import run_cases
from interceptor.policy.loader import PolicyError
from interceptor.policy.model import ResourceSpec
from interceptor.policy.ssh_rules import tree_action
from interceptor.protocols.ssh import SPEC

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
version: 1
resources:
  web: {protocol: ssh, addresses: ["10.0.0.7:22"], options: {known_hosts: /etc/interceptor/known_hosts}}
  other: {protocol: ssh, addresses: ["10.0.0.8:22"], options: {known_hosts: /etc/interceptor/known_hosts}}
agents:
  bot: {uids: [1001]}
  admin: {uids: [1002]}
rules:
  - {name: diagnostics, effect: allow, agents: [bot], resources: [web],
     ssh: {commands: [uptime, "df -h", "systemctl status *", "grep **", "tail -n * /var/log/*.log", "rm -i *"]}}
  - {name: restart, effect: approve, agents: [bot], resources: [web], ssh: {commands: ["sudo systemctl restart *"]},
     approval: {groups: [sre]}}
  - {name: files, effect: allow, agents: [bot], resources: [web],
     ssh: {read: ["/var/log/**", "/srv/data/*.csv", "/srv/[ab]x/file"], write: ["/srv/uploads/**", "/home/bot/**"]}}
  - {name: forwards, effect: allow, agents: [bot], resources: [web],
     ssh: {forward: ["db.internal:5432", "10.0.0.9:*", "::2:8080"], remote_forward: ["127.0.0.1:9000"]}}
  - {name: admin-shell, effect: allow, agents: [admin], resources: [web], ssh: {shell: true}}
  - {name: dotfiles, effect: allow, agents: [admin], resources: [web], ssh: {shell: true, write: ["/home/admin/**"]}}
  - {name: everything, effect: allow, agents: [bot], resources: [other]}
  - {name: no-rm, effect: deny, resources: [web], ssh: {commands: ["rm -rf **", "shutdown **"]}}
  - {name: no-secrets, effect: deny, resources: [web], ssh: {read: ["/var/log/secret/**", "/srv/data/private.csv"],
     write: ["/srv/uploads/locked/**"]}}
  - {name: no-metadata, effect: deny, resources: [web], ssh: {forward: ["169.254.169.254:*", "127.0.0.1:*"]}}
  - {name: no-public-listen, effect: deny, resources: [web], ssh: {remote_forward: ["0.0.0.0:*"]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "ssh.yaml"))


def ask(engine: PolicyEngine, operation: SshRequest, agent: str = "bot", resource: str = "web") -> Decision:
    uid = 1001 if agent == "bot" else 1002
    return engine.decide(Request(Subject(agent, None, "/usr/bin/agent", uid), resource, operation))


def run(engine: PolicyEngine, command: str, agent: str = "bot", pty: bool = False) -> tuple[str, str]:
    decision = ask(engine, SshRequest("exec", command=command, pty=pty), agent)
    return decision.verdict.value, decision.rule


def access(engine: PolicyEngine, kind: str, path: str, agent: str = "bot") -> tuple[str, str]:
    decision = ask(engine, SshRequest(kind, path=path, action="open"), agent)
    return decision.verdict.value, decision.rule


def forward(engine: PolicyEngine, target: str, kind: str = "local") -> tuple[str, str]:
    decision = ask(engine, SshRequest("forward", forward=kind, target=target))
    return decision.verdict.value, decision.rule


@pytest.mark.parametrize(("command", "expected"), [
    ("uptime", ("allow", "diagnostics")),
    ("df -h", ("allow", "diagnostics")),
    ("systemctl status nginx", ("allow", "diagnostics")),
    ("grep -r 'a b' /var/log", ("allow", "diagnostics")),
    ("tail -n 20 /var/log/syslog.log", ("allow", "diagnostics")),
    ("tail -n 20 /var/log/../../etc/shadow.log", ("deny", "default-deny")),  # a path word in normal form only
    ("sudo systemctl restart nginx", ("approve", "restart")),
    ("uptime -p", ("deny", "default-deny")),
    ("df", ("deny", "default-deny")),
    ("/usr/bin/uptime", ("deny", "default-deny")),  # allow rules compare argv0 as written
    ("systemctl restart nginx", ("deny", "default-deny")),
    ("rm -i x", ("allow", "diagnostics")),
    ("rm -rf /", ("deny", "no-rm")),
    ("rm -i x; rm -rf /", ("deny", "no-rm")),
    ("sudo rm -rf /", ("deny", "no-rm")),
    ("sudo -u root rm -rf /", ("deny", "no-rm")),
    ("env rm -rf /", ("deny", "no-rm")),
    ("nice -n 5 rm -rf /", ("deny", "no-rm")),
    ("timeout 5 rm -rf /", ("deny", "no-rm")),
    ("/usr/bin/rm -rf /", ("deny", "no-rm")),
    ("\\rm -rf /", ("deny", "no-rm")),
    ("rm -rf $HOME", ("deny", "no-rm")),
    ("rm $FLAGS /", ("deny", "no-rm")),  # $FLAGS may be -rf
    ("sudo shutdown -h now", ("deny", "no-rm")),
    ("bash -c 'shutdown now'", ("deny", "no-rm")),
    ("python3 -c 'print(1)'", ("deny", "no-rm")),  # opaque: every deny rule about commands matches
    ("grep x $(cat /etc/shadow)", ("deny", "no-rm")),
    ("grep x /var/log/syslog; id", ("deny", "default-deny")),  # shell class, no deny rule matches
    ("grep x /var/log/syslog | tee /tmp/x", ("deny", "default-deny")),
    ("grep x /var/log/syslog > /tmp/x", ("deny", "default-deny")),
    ("grep x /var/log/syslog &", ("deny", "default-deny")),
    ("grep x /var/log/*", ("deny", "no-rm")),  # the glob may name a program rm (deny reads any word so)
    ("grep\tx /var/log/syslog", ("deny", "default-deny")),
    ("grep x /var/log/syslog\nid", ("deny", "default-deny")),
    ("FOO=1 uptime", ("deny", "default-deny")),
    ("sudo -s systemctl restart nginx", ("deny", "default-deny")),
    ("sudo systemctl restart nginx; id", ("deny", "default-deny")),
    ("", ("deny", "ssh-bad-command")),  # asyncssh asks the server for a shell when the command is empty
    ("  ", ("deny", "ssh-bad-command")),
    ("# rm -rf /", ("deny", "ssh-bad-command")),
    ("\t\\\n # x\n#y", ("deny", "ssh-bad-command")),
])
def test_exec(engine: PolicyEngine, command: str, expected: tuple[str, str]) -> None:
    assert run(engine, command) == expected


def test_refusals_say_why(engine: PolicyEngine) -> None:
    decision = ask(engine, SshRequest("exec", command="uptime; id"))
    assert "shell class" in decision.reason and ";" in decision.reason and "shell: true" in decision.reason
    assert "no rule allows command 'uptime -p'" in ask(engine, SshRequest("exec", command="uptime -p")).reason
    assert "terminal" in ask(engine, SshRequest("exec", command="uptime", pty=True)).reason
    assert "interactive shell" in ask(engine, SshRequest("shell")).reason
    long = ask(engine, SshRequest("exec", command="x" * 70000))
    assert (long.verdict.value, long.rule) == ("deny", "ssh-bad-command") and "65536" in long.reason
    assert ask(engine, SshRequest("exec", command="ls\0")).rule == "ssh-bad-command"
    opaque = ask(engine, SshRequest("exec", command="python3 -c 'print(1)'"))
    assert opaque.rule == "no-rm" and "cannot be read before it runs: python3 runs code" in opaque.reason
    assert "cannot be read" not in ask(engine, SshRequest("exec", command="sudo rm -rf / $(id)")).reason


def test_a_terminal_makes_an_exec_a_shell(engine: PolicyEngine) -> None:
    assert run(engine, "uptime", pty=True) == ("deny", "default-deny")
    assert run(engine, "uptime", "admin", pty=True) == ("allow", "admin-shell")


def test_shell_rules(engine: PolicyEngine) -> None:
    assert ask(engine, SshRequest("shell"), "admin").rule == "admin-shell"
    assert ask(engine, SshRequest("shell", pty=True), "bot").verdict.value == "deny"
    assert run(engine, "ps aux | grep x", "admin") == ("allow", "admin-shell")
    assert run(engine, "uptime", "admin") == ("allow", "admin-shell")  # a shell rule covers any exec
    assert run(engine, "sh -c 'rm -rf /'", "admin") == ("deny", "no-rm")  # deny still reads into it
    assert run(engine, "echo $(date)", "admin") == ("deny", "no-rm")  # opaque: cannot tell


def test_a_deny_shell_rule() -> None:
    engine = PolicyEngine(load_policy_text(POLICY + """
  - {name: no-shells, effect: deny, agents: [admin], resources: [web], ssh: {shell: true}}
""", "ssh.yaml"))
    assert ask(engine, SshRequest("shell"), "admin").rule == "no-shells"
    assert run(engine, "ls | wc", "admin") == ("deny", "no-shells")
    assert run(engine, "ls", "admin", pty=True) == ("deny", "no-shells")
    assert run(engine, "ls", "admin") == ("allow", "admin-shell")
    assert access(engine, "write", "/home/admin/.bashrc", "admin") == ("deny", "no-shells")
    assert access(engine, "write", "/home/admin/notes.txt", "admin") == ("allow", "dotfiles")


@pytest.mark.parametrize(("kind", "path", "expected"), [
    ("read", "/var/log/syslog", ("allow", "files")),
    ("read", "/var/log/nginx/access.log", ("allow", "files")),
    ("read", "/var/log", ("allow", "files")),  # /** also matches the directory itself
    ("read", "/var/logs", ("deny", "default-deny")),
    ("read", "/srv/data/a.csv", ("allow", "files")),
    ("read", "/srv/data/sub/a.csv", ("deny", "default-deny")),  # * stays within a segment
    ("read", "/srv/ax/file", ("allow", "files")),
    ("read", "/srv/cx/file", ("deny", "default-deny")),
    ("read", "/var/log/secret/key", ("deny", "no-secrets")),
    ("read", "/var/log/SECRET/key", ("deny", "no-secrets")),  # deny globs also case-folded
    ("read", "/srv/data/PRIVATE.csv", ("deny", "no-secrets")),
    ("read", "/var/log/../../etc/shadow", ("deny", "no-secrets")),  # not normal: every deny glob
    ("read", "/var/log//x", ("deny", "no-secrets")),
    ("read", "/var/log/./x", ("deny", "no-secrets")),
    ("read", "var/log/x", ("deny", "no-secrets")),  # not absolute
    ("read", "/var/log/%2e%2e/x", ("deny", "no-secrets")),
    ("read", "/var/log/x\\..\\y", ("deny", "no-secrets")),
    ("read", "/etc/passwd", ("deny", "default-deny")),
    ("write", "/srv/uploads/a.csv", ("allow", "files")),
    ("write", "/srv/uploads/deep/er/a.csv", ("allow", "files")),
    ("write", "/var/log/x", ("deny", "default-deny")),  # read globs do not allow writes
    ("write", "/srv/uploads/locked/x", ("deny", "no-secrets")),
    ("write", "/home/bot/notes.txt", ("allow", "files")),
    ("write", "/home/bot/.ssh/authorized_keys", ("deny", "default-deny")),  # runs code: needs shell: true
    ("write", "/home/bot/.bashrc", ("deny", "default-deny")),
    ("write", "/home/bot/.profile", ("deny", "default-deny")),
    ("write", "/home/bot/.config/autostart/x", ("deny", "default-deny")),
    ("write", "/srv/uploads/.git/hooks/post-merge", ("deny", "default-deny")),
])
def test_files(engine: PolicyEngine, kind: str, path: str, expected: tuple[str, str]) -> None:
    assert access(engine, kind, path) == expected


@pytest.mark.parametrize(("kind", "path", "expected"), [
    ("read", "/var/log/nginx", ("allow", "files")),
    ("read", "/var/log", ("deny", "no-secrets")),  # the tree holds /var/log/secret
    ("read", "/srv/data", ("deny", "no-secrets")),  # ... and /srv/data/private.csv
    ("read", "/SRV/Data", ("deny", "no-secrets")),
    ("read", "/srv/ax", ("deny", "default-deny")),  # /srv/[ab]x/file does not cover a tree
    ("read", "/srv/data/a.csv", ("deny", "default-deny")),  # nor does /srv/data/*.csv
    ("read", "/var/log/x/../secret", ("deny", "no-secrets")),
    ("write", "/srv/uploads/a", ("allow", "files")),
    ("write", "/srv/uploads", ("deny", "no-secrets")),  # the tree holds /srv/uploads/locked
    ("write", "/srv/uploads/Locked", ("deny", "no-secrets")),
    ("write", "/home/bot/.ssh", ("deny", "default-deny")),  # runs code: needs shell: true
])
def test_trees(engine: PolicyEngine, kind: str, path: str, expected: tuple[str, str]) -> None:
    """A read or write of a path and everything below it (a directory moved or linked over
    SFTP): allowed by a glob ending in /** over it, denied by a glob that may match below it."""
    for action in ("rename", "posix-rename", "hardlink", "symlink"):
        decision = ask(engine, SshRequest(kind, path=path, action=tree_action(action)))
        assert (decision.verdict.value, decision.rule) == expected, action


def test_tree_refusals_say_why(engine: PolicyEngine) -> None:
    denied = ask(engine, SshRequest("read", path="/var/log", action="rename-tree")).reason
    assert "/var/log is judged with everything below it" in denied
    inside = ask(engine, SshRequest("read", path="/var/log/secret", action="rename-tree"))
    assert inside.rule == "no-secrets" and "everything below" not in inside.reason
    unmatched = ask(engine, SshRequest("read", path="/srv/ax", action="rename-tree")).reason
    assert "no rule allows read of /srv/ax and everything below it" in unmatched and "/**" in unmatched
    assert tree_action("rename") == "rename-tree"


def test_code_writes_need_a_shell_rule_with_a_write_glob(engine: PolicyEngine) -> None:
    assert access(engine, "write", "/home/admin/.ssh/authorized_keys", "admin") == ("allow", "dotfiles")
    assert access(engine, "write", "/home/bot/.ssh/authorized_keys", "admin") == ("deny", "default-deny")
    reason = ask(engine, SshRequest("write", path="/home/bot/.bashrc", action="open")).reason
    assert "run code" in reason and "shell: true" in reason


@pytest.mark.parametrize(("command", "expected"), [
    ("scp -f /var/log/syslog", ("allow", "files")),
    ("scp -p -f /var/log/syslog", ("allow", "files")),
    ("scp -r -f /var/log/nginx", ("allow", "files")),  # /var/log/** covers all below it
    ("scp -r -f /srv/ax", ("deny", "default-deny")),  # /srv/[ab]x/file does not cover a tree
    ("scp -r -f /srv/data", ("deny", "no-secrets")),  # the tree holds /srv/data/private.csv
    ("scp -f /etc/shadow", ("deny", "default-deny")),
    ("scp -f /var/log/secret/key", ("deny", "no-secrets")),
    ("scp -r -f /var/log", ("deny", "no-secrets")),  # the tree holds /var/log/secret
    ("scp -f /var/log/../../etc/shadow", ("deny", "no-secrets")),
    ("scp -f var/log/x", ("deny", "no-secrets")),
    ("scp -t /srv/uploads/a.csv", ("allow", "files")),  # the proxy judges each file the client names
    ("scp -r -t /srv/uploads/inbox", ("allow", "files")),
    ("scp -d -t /srv/uploads/inbox", ("allow", "files")),
    ("scp -r -t /srv/uploads", ("deny", "no-secrets")),  # the tree holds /srv/uploads/locked
    ("scp -d -t /srv/uploads", ("deny", "no-secrets")),
    ("scp -t /srv/uploads", ("allow", "files")),  # /srv/uploads/** covers the directory itself
    ("scp -r -t /home/bot", ("allow", "files")),  # the proxy refuses .bashrc in it: the write runs code
    ("scp -t /srv/uploads/.bashrc", ("deny", "default-deny")),  # runs code: needs shell: true
    ("scp -t /var/log/x", ("deny", "default-deny")),  # read globs do not allow uploads
    ("scp -t /srv/uploads/locked/a", ("deny", "no-secrets")),
    ("sudo scp -t /srv/uploads/locked/a", ("deny", "no-secrets")),  # deny globs see scp anywhere
    ("scp -f /var/log/*.log", ("deny", "no-rm")),  # the server's shell expands it: any path, any program
    ("scp -S id -f /var/log/x", ("deny", "no-secrets")),  # not a command line scp sends: any path
])
def test_legacy_scp(engine: PolicyEngine, command: str, expected: tuple[str, str]) -> None:
    assert run(engine, command) == expected


def test_commands_patterns_do_not_allow_file_transfers() -> None:
    engine = PolicyEngine(load_policy_text(POLICY + """
  - {name: any-command, effect: allow, agents: [bot], resources: [web], ssh: {commands: ["**"]}}
""", "ssh.yaml"))
    assert run(engine, "uptime -p") == ("allow", "any-command")
    for command in ("scp -t /home/bot/.ssh/authorized_keys", "sudo scp -t /etc/x", "/usr/lib/openssh/sftp-server",
                    "rsync --server -e.Lsfx . /home/bot/.ssh"):
        assert run(engine, command)[0] == "deny", command
    assert run(engine, "scp -f /var/log/syslog") == ("allow", "files")


def test_a_legacy_scp_exec_is_judged_as_its_target_and_by_deny_commands(engine: PolicyEngine) -> None:
    """The handler serves legacy scp through the SFTP proxy (each file judged there): the exec
    is its target read or written, and a deny `commands` rule refuses it as any command."""
    assert run(engine, "scp -t /home/admin/x", "admin") == ("allow", "admin-shell")
    denied = ask(engine, SshRequest("exec", command="scp -r -t /srv/other")).reason
    assert "no rule allows write of /srv/other and everything below it" in denied and "legacy scp upload" in denied
    assert "legacy scp download" in ask(engine, SshRequest("exec", command="scp -f /etc/shadow")).reason
    no_scp = PolicyEngine(load_policy_text(POLICY + """
  - {name: no-scp, effect: deny, resources: [web], ssh: {commands: ["scp **"]}}
""", "ssh.yaml"))
    for command in ("scp -f /var/log/syslog", "scp -t /srv/uploads/a.csv", "sudo scp -f /var/log/syslog"):
        assert run(no_scp, command) == ("deny", "no-scp"), command


@pytest.mark.parametrize(("path", "expected"), [
    ("/srv/uploads/a.csv", ("allow", "files")),  # write-only: an upload's first stat of its target
    ("/var/log/syslog", ("allow", "files")),
    ("/var/log/secret/key", ("deny", "no-secrets")),  # a deny on reading still refuses it
    ("/srv/uploads/locked/a", ("deny", "no-secrets")),  # neither read nor write allowed: the write's deny
    ("/srv/uploads/.bashrc", ("deny", "default-deny")),  # the write runs code: not allowed without shell
    ("/etc/shadow", ("deny", "default-deny")),
    ("/srv/uploads/../../etc/shadow", ("deny", "no-secrets")),  # not in normal form: every deny glob
])
def test_metadata_is_read_where_reading_or_writing_is_allowed(engine: PolicyEngine, path: str,
                                                              expected: tuple[str, str]) -> None:
    for action in ("stat", "lstat", "fstat", "realpath"):
        decision = ask(engine, SshRequest("read", path=path, action=action))
        assert (decision.verdict.value, decision.rule) == expected, action
    assert access(engine, "read", "/srv/uploads/a.csv") == ("deny", "default-deny")  # its content stays unread
    assert "no rule allows read or write of /etc/shadow" in ask(engine, SshRequest("read", path="/etc/shadow",
                                                                                     action="stat")).reason


def test_metadata_takes_the_better_of_read_and_write() -> None:
    engine = PolicyEngine(load_policy_text(POLICY + """
  - {name: held-read, effect: approve, agents: [bot], resources: [web], ssh: {read: ["/data/**"]},
     approval: {groups: [sre]}}
  - {name: opt-write, effect: allow, agents: [bot], resources: [web], ssh: {write: ["/data/drop/**"]}}
""", "ssh.yaml"))
    stat = SshRequest("read", path="/data/drop/x", action="stat")
    assert (ask(engine, stat).verdict.value, ask(engine, stat).rule) == ("allow", "opt-write")
    other = ask(engine, SshRequest("read", path="/data/x", action="stat"))
    assert (other.verdict.value, other.rule) == ("approve", "held-read")


@pytest.mark.parametrize(("target", "kind", "expected"), [
    ("db.internal:5432", "local", ("deny", "no-metadata")),  # a name may resolve to 127.0.0.1 (see test_names)
    ("10.0.0.9:22", "local", ("allow", "forwards")),
    ("10.0.0.09:22", "local", ("deny", "no-metadata")),  # not an address to inet_aton: a name
    ("167772169:22", "local", ("deny", "default-deny")),  # 10.0.0.9 spelled as one number
    ("[::1]:8080", "local", ("deny", "no-metadata")),  # loopback is 127.0.0.1 to a deny rule
    ("[0:0::1]:8080", "local", ("deny", "no-metadata")),
    ("localhost:22", "local", ("deny", "no-metadata")),
    ("0.0.0.0:22", "local", ("deny", "no-metadata")),  # connecting to every address reaches the server
    ("[::]:22", "local", ("deny", "no-metadata")),
    ("0:22", "local", ("deny", "no-metadata")),
    ("127.0.0.2:22", "local", ("deny", "no-metadata")),
    ("[::ffff:169.254.169.254]:80", "local", ("deny", "no-metadata")),  # IPv4-mapped
    ("[::ffff:10.0.0.9]:22", "local", ("deny", "default-deny")),  # not the canonical spelling for allow
    ("[fe80::1]:8080", "local", ("deny", "default-deny")),
    ("[::2]:8080", "local", ("allow", "forwards")),
    ("localhost:9000", "remote", ("deny", "no-public-listen")),  # a name: it may resolve to every address
    ("*:9000", "remote", ("deny", "no-public-listen")),  # sshd reads * as every address
    ("169.254.169.254:80", "local", ("deny", "no-metadata")),
    ("2852039166:80", "local", ("deny", "no-metadata")),  # inet_aton: 169.254.169.254
    ("0xa9.0xfe.0xa9.0xfe:80", "local", ("deny", "no-metadata")),
    ("127.1:22", "local", ("deny", "no-metadata")),
    ("127.0.0.1:9000", "remote", ("allow", "forwards")),  # `forward` globs are about local forwards only
    ("0.0.0.0:9000", "remote", ("deny", "no-public-listen")),
    ("[::]:9000", "remote", ("deny", "no-public-listen")),
    (":9000", "remote", ("deny", "no-public-listen")),
    ("db.internal:5432", "remote", ("deny", "no-public-listen")),
    ("10.0.0.9:5432", "remote", ("deny", "default-deny")),
])
def test_forwards(engine: PolicyEngine, target: str, kind: str, expected: tuple[str, str]) -> None:
    assert forward(engine, target, kind) == expected


NAMES = POLICY[:POLICY.index("rules:")] + """rules:
  - {name: forwards, effect: allow, agents: [bot], resources: [web],
     ssh: {forward: ["db.internal:5432", "*:22", "*:6379", "*:7000"], remote_forward: ["*:9000", "0.0.0.0:9001"]}}
  - {name: no-loopback-ssh, effect: deny, resources: [web], ssh: {forward: ["127.0.0.1:22"]}}
  - {name: no-cache, effect: deny, resources: [web], ssh: {forward: ["cache.internal:6379", "*.prod:6379"]}}
  - {name: no-private, effect: deny, resources: [web], ssh: {forward: ["10.0.*:7000"]}}
  - {name: no-public-listen, effect: deny, resources: [web], ssh: {remote_forward: ["0.0.0.0:9000"]}}
"""


@pytest.mark.parametrize(("target", "kind", "expected"), [
    ("db.internal:5432", "local", ("allow", "forwards")),  # no deny rule names an address on that port
    ("DB.Internal.:5432", "local", ("allow", "forwards")),  # host names are case-insensitive, trailing dot
    ("db.internal:05432", "local", ("allow", "forwards")),  # the port as a number
    ("db.internal:5433", "local", ("deny", "default-deny")),
    ("web.internal:22", "local", ("deny", "no-loopback-ssh")),  # a name may resolve to 127.0.0.1
    ("ip6-localhost:22", "local", ("deny", "no-loopback-ssh")),
    ("anything.localhost:22", "local", ("deny", "no-loopback-ssh")),
    ("[::1]:22", "local", ("deny", "no-loopback-ssh")),
    ("10.0.0.5:22", "local", ("allow", "forwards")),  # an address is not a name
    ("other.internal:6379", "local", ("allow", "forwards")),  # a deny naming a name matches that name only
    ("CACHE.internal.:6379", "local", ("deny", "no-cache")),
    ("redis.prod:6379", "local", ("deny", "no-cache")),
    ("10.0.0.5:6379", "local", ("allow", "forwards")),
    ("app.internal:7000", "local", ("deny", "no-private")),  # an address glob: every name too
    ("10.0.3.4:7000", "local", ("deny", "no-private")),
    ("10.1.3.4:7000", "local", ("allow", "forwards")),
    ("*:9000", "remote", ("deny", "no-public-listen")),  # sshd reads * as every address
    ("[::]:9000", "remote", ("deny", "no-public-listen")),
    ("localhost:9000", "remote", ("deny", "no-public-listen")),  # a name: sshd resolves it
    ("127.0.0.1:9000", "remote", ("allow", "forwards")),
    ("0.0.0.0:9001", "remote", ("allow", "forwards")),
    ("*:9001", "remote", ("deny", "default-deny")),  # an allow glob covers every address only as written
    (":9001", "remote", ("deny", "default-deny")),
])
def test_names(target: str, kind: str, expected: tuple[str, str]) -> None:
    """The server resolves names, the enforcer cannot: a deny rule naming an address (or a
    glob over addresses) matches every name; an allow glob covers a name as written."""
    engine = PolicyEngine(load_policy_text(NAMES, "names.yaml"))
    assert forward(engine, target, kind) == expected


def test_a_name_denied_by_an_address_says_why() -> None:
    engine = PolicyEngine(load_policy_text(NAMES, "names.yaml"))
    reason = ask(engine, SshRequest("forward", forward="local", target="web.internal:22")).reason
    assert "web.internal is a name the server resolves" in reason and "forward to an address" in reason
    assert "name the server resolves" not in ask(engine, SshRequest("forward", forward="local",
                                                                    target="localhost:22")).reason
    unmatched = ask(engine, SshRequest("forward", forward="local", target="db.internal:5433"))
    assert unmatched.rule == "default-deny" and "name the server resolves" not in unmatched.reason


def test_default_deny_gives_no_deny_rule_notes(engine: PolicyEngine) -> None:
    """The notes saying why a deny rule matched are about a rule that matched: none for default deny."""
    opaque = ask(PolicyEngine(load_policy_text(POLICY.split("  - {name: no-rm")[0], "ssh.yaml")),
                 SshRequest("exec", command="grep x $(id)"))
    assert opaque.rule == "default-deny" and "cannot be read before it runs" not in opaque.reason
    tree = ask(engine, SshRequest("read", path="/srv/ax", action="rename-tree"))
    assert tree.rule == "default-deny" and "where the rule may match" not in tree.reason


SUBNET = POLICY[:POLICY.index("rules:")] + """rules:
  - {name: subnet, effect: allow, agents: [bot], resources: [web],
     ssh: {forward: ["10.0.0.*:5432", "fe80::*:80", "10.0.0.9:22", "db*:3306", "*.internal:6379", "1?.*:7000"]}}
"""


@pytest.mark.parametrize(("target", "expected"), [
    ("10.0.0.5:5432", "allow"),
    ("10.0.0.5.nip.io:5432", "deny"),  # a name that resolves anywhere (wildcard DNS)
    ("10.0.0.1.evil.example:5432", "deny"),
    ("10.0.0.metadata.internal:5432", "deny"),
    ("[fe80::1]:80", "allow"),
    ("10.0.0.9:22", "allow"),
    ("db1.internal:3306", "allow"),  # hex letters only: a glob about names
    ("cache.internal:6379", "allow"),
    ("10.1.2.3:7000", "allow"),
    ("1a.example:7000", "deny"),
])
def test_an_allow_glob_written_for_addresses_covers_no_name(target: str, expected: str) -> None:
    engine = PolicyEngine(load_policy_text(SUBNET, "subnet.yaml"))
    assert forward(engine, target)[0] == expected


@pytest.mark.parametrize(("operation", "rule"), [
    (SshRequest("forward", forward="agent"), "ssh-forwarding"),
    (SshRequest("forward", forward="x11"), "ssh-forwarding"),
    (SshRequest("subsystem", command="netconf"), "ssh-subsystem"),
    (SshRequest("forward", forward="local", target="db.internal"), "ssh-bad-request"),
    (SshRequest("forward", forward="local", target="db.internal:99999"), "ssh-bad-request"),
    (SshRequest("forward", forward="local", target="db.internal:http"), "ssh-bad-request"),
    (SshRequest("forward", forward="local", target=":22"), "ssh-bad-request"),
    (SshRequest("forward", forward="sideways", target="a:1"), "ssh-bad-request"),
    (SshRequest("exec"), "ssh-bad-request"),
    (SshRequest("teleport"), "ssh-bad-request"),
    (SshRequest(["exec"]), "ssh-bad-request"),  # type: ignore[arg-type]
    (SshRequest("forward", forward="local", target=22), "ssh-bad-request"),  # type: ignore[arg-type]
    (SshRequest("exec", command=b"ls"), "ssh-bad-request"),  # type: ignore[arg-type]
])
def test_refused_whatever_the_policy(engine: PolicyEngine, operation: SshRequest, rule: str) -> None:
    for resource in ("web", "other"):  # `other` allows every operation
        decision = ask(engine, operation, resource=resource)
        assert (decision.verdict.value, decision.rule) == ("deny", rule)


def test_a_rule_without_an_ssh_block_covers_every_request(engine: PolicyEngine) -> None:
    for operation in (SshRequest("shell", pty=True), SshRequest("exec", command="rm -rf / ; id"),
                      SshRequest("write", path="/root/.ssh/authorized_keys", action="open"),
                      SshRequest("forward", forward="local", target="a:1")):
        assert ask(engine, operation, resource="other").rule == "everything"


def test_block_problems() -> None:
    text = POLICY + """
  - {name: bad-pattern, effect: allow, ssh: {commands: ["grep 'open", "** x"]}}
  - {name: bad-paths, effect: allow, ssh: {read: [var/log/*], write: ["*.txt"]}}
  - {name: bad-forward, effect: allow, ssh: {forward: [db.internal], remote_forward: ["9000"]}}
"""
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, "ssh.yaml")
    problems = "\n".join(error.value.problems)
    assert "command pattern \"grep 'open\"" in problems and "command pattern '** x'" in problems
    assert "path glob 'var/log/*'" in problems and "path glob '*.txt'" in problems
    assert "forward glob 'db.internal'" in problems and "forward glob '9000'" in problems
    assert problems.count("ssh.yaml:") == 6


@pytest.mark.parametrize("block", ["{shell: false}", "{}", "{commands: []}", "{sudo: true}", "{commands: uptime}"])
def test_schema_refuses(block: str) -> None:
    with pytest.raises(PolicyError):
        load_policy_text(POLICY + f"  - {{name: x, effect: allow, ssh: {block}}}\n", "ssh.yaml")


def test_known_hosts_is_required_in_options() -> None:
    with pytest.raises(PolicyError, match="known_hosts"):
        load_policy_text(POLICY.replace("options: {known_hosts: /etc/interceptor/known_hosts}",
                                        "options: {host_key_alias: web}", 1), "ssh.yaml")


def test_mask_rules_are_not_about_ssh() -> None:
    with pytest.raises(PolicyError, match="mask rules apply to"):
        load_policy_text(POLICY + "  - {name: m, effect: mask, ssh: {shell: true}, mask: {classifiers: [email]}}\n")


def test_cases() -> None:
    def case(block: object) -> SshRequest:
        return SPEC.parse_case({"ssh": block}, None)

    assert case({"command": "ls", "pty": True}) == SshRequest("exec", command="ls", pty=True)
    assert case({"shell": True}) == SshRequest("shell")
    assert case({"read": "/x"}) == SshRequest("read", path="/x", action="open")
    assert case({"write": "/x"}) == SshRequest("write", path="/x", action="open")
    assert case({"stat": "/x"}) == SshRequest("read", path="/x", action="stat")
    assert case({"forward": "a:1"}) == SshRequest("forward", forward="local", target="a:1")
    assert case({"remote_forward": "a:1"}) == SshRequest("forward", forward="remote", target="a:1")
    for bad in ({}, {"command": "ls", "shell": True}, {"shell": False}, {"command": 3}, {"read": "/x", "pty": True},
                {"command": "ls", "pty": "yes"}, {"other": 1}, "ls"):
        with pytest.raises((ValueError, TypeError)):
            case(bad)


def test_the_shipped_example_passes() -> None:
    results = run_cases(ROOT / "policy" / "examples" / "ssh.tests.yaml")
    assert len(results) >= 25 and [r.name for r in results if not r.passed] == []


def _check_credentials(tmp_path: Path, text: str) -> CredentialsCheck:
    path = tmp_path / "cred"
    path.write_text(text)
    path.chmod(0o600)
    resource = ResourceSpec("web", "ssh", (), {"from": "file", "path": str(path)})
    result = asyncio.run(check_resource(resource, run_commands=False))
    assert result is not None
    return result


def test_ssh_credentials_are_checked_ahead_of_agents(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id"
    key_file.write_bytes(key.export_private_key())
    encrypted = key.export_private_key("pkcs8-pem", passphrase="pw").decode()
    ok = _check_credentials(tmp_path, f"user: deploy\nprivate_key_file: {key_file}\n")
    assert (ok.ok, ok.detail) == (True, "private_key_file, user for ssh")
    assert _check_credentials(tmp_path, "user: deploy\npassword: pw\n").ok
    assert _check_credentials(tmp_path, f"user: deploy\nprivate_key: |\n  {encrypted.replace(chr(10), chr(10) + '  ')}"
                                        "\npassphrase: pw\n").ok
    for text, detail in [
        (f"private_key_file: {key_file}\n", "need a user"),
        ("user: deploy\n", "need private_key, private_key_file or password"),
        ("user: deploy\npassword: pw\nidentity_file: /x\n", "identity_file are not used by ssh resources"),
        (f"user: deploy\nprivate_key_file: {key_file}\nprivate_key: x\n", "not both"),
        ("user: deploy\npassword: pw\ncertificate_file: /x\n", "need private_key or private_key_file"),
        (f"user: deploy\nprivate_key_file: {tmp_path / 'missing'}\n", "cannot be read"),
        ("user: deploy\nprivate_key: not a key\n", "cannot be used"),
        (f"user: deploy\nprivate_key: |\n  {encrypted.replace(chr(10), chr(10) + '  ')}\npassphrase: no\n",
         "cannot be used"),
    ]:
        result = _check_credentials(tmp_path, text)
        assert not result.ok and detail in result.detail, result
        assert result.fix.startswith("ssh resources take a mapping `user:`")
