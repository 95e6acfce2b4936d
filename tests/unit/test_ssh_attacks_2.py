"""Attacks on the ssh enforcement (issue 17), second round: variations of the kinds the first
round (test_ssh_attacks) closed by example, and places it did not reach (SFTP error oracles,
what an approver's terminal shows). The lab, policies and helpers are the first round's.

Two parts:

- FINDINGS: each test fails now and passes once the kind of bypass it names is closed; the first
  line of its docstring starts with `attack:`, the rest says the expected secure behaviour.
- GUARDS: attacks that are stopped today; they pass, and keep them stopped.

Real programs (git, ipython3) run only in the test's temporary directory, under `env -i`, and
only create a marker file there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import cast

import asyncssh
import pytest
from asyncssh.packet import String

from interceptor.approvals.cli import _operation
from interceptor.audit.scrub import scrub_event
from interceptor.handlers.ssh.process import recorded
from interceptor.operations import SshRequest
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.ssh_command import read_command, runs_code
from test_ssh_attacks import OPERATOR, decide, exec_verdict
from test_ssh_handler import POLICY, SHELLS, Lab, UpstreamServer, scenario


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(OPERATOR, "operator.yaml"))


def run_isolated(command: str, cwd: Path, path: str = "/usr/bin:/bin") -> None:
    """`bash -c COMMAND` in `cwd` with an empty environment (HOME is `cwd`: no user config)."""
    subprocess.run(["env", "-i", f"PATH={path}", f"HOME={cwd}", "bash", "-c", command], cwd=cwd,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)


# ==== FINDINGS ===================================================================================
# ---- git: a repository the agent writes without a dot -------------------------------------------

GIT_BARE_HOME = (  # a bare repository laid out in a directory, its config running a textconv driver
    "git init -q w && cd w && echo hi > f && git add f && git -c user.email=a@b -c user.name=a commit -qm x && "
    "echo there >> f && git -c user.email=a@b -c user.name=a commit -qam y && cd .. && "
    "git clone -q --bare w home && rm -rf home/hooks home/description home/info/exclude && "
    "printf '[diff \"x\"]\\n\\ttextconv = \"touch ../M; cat\"\\n' >> home/config && "
    "echo '* diff=x' > home/info/attributes")


def test_a_bare_repository_written_into_the_home_directory_makes_plain_git_run_code(engine: PolicyEngine,
                                                                                     tmp_path: Path) -> None:
    """was an attack (closed): git runs what a repository's configuration says (the first round closed `git -C
    DIR` and writes under `.git/`), but git also finds a *bare* repository in its working
    directory, and an exec runs in the login's home directory: an agent allowed to write
    `/home/deploy/**` (without `shell: true`) uploads `config`, `HEAD`, `objects/...`,
    `packed-refs` and `info/attributes` (no dot anywhere, so runs_code says no), then runs
    the read-only, plain `git log -p` (allowed by `git **`): git reads the home directory as a
    bare repository and runs the textconv driver of its config (checked here with real git).

    Expected: writing a file git reads as a repository's configuration or hooks makes the server
    run code (runs_code: a last segment `config` next to `HEAD`, anything under `hooks/` or
    `info/`, `HEAD`, `commondir`, `gitdir`... in any directory, not only `.git/`), or git is
    plain only where no write glob covers its working directory; in either case the chain
    write + `git log -p` is not allowed without `shell: true`."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run_isolated(GIT_BARE_HOME, tmp_path)
    run_isolated("cd home && git log -p", tmp_path)
    assert (tmp_path / "M").exists(), "git log -p in a bare repository ran no textconv driver here"
    written = sorted(str(p.relative_to(tmp_path / "home")) for p in (tmp_path / "home").rglob("*") if p.is_file())
    writes = {name: decide(engine, SshRequest("write", path=f"/home/deploy/{name}", action="open"))[0]
              for name in written}
    log = exec_verdict(engine, "git log -p")
    assert not (set(writes.values()) == {"allow"} and log == "allow"), (
        f"every file of a bare repository may be written into the home directory ({writes}) and `git log -p` "
        f"is {log}: git runs the uploaded config's commands")


# ---- interpreters and multi-call programs: a list, not a kind ------------------------------------

def test_ipython_runs_code_and_is_neither_shell_class_nor_opaque(engine: PolicyEngine, tmp_path: Path) -> None:
    """was an attack (closed): the first round made `ssh host bash` (an interpreter reading stdin, allowed by
    `shell: true`) recorded and shell class; the interpreter list (_INTERPRETER) names
    `python*` but not `ipython3`, which is on this host and runs Python given with `-c` or on
    standard input: `ipython3 -c "import os; os.system('rm -rf /srv')"` is plain words to the
    strict reading (an allow of `ipython3 -c *`... or of `ipython3 **` is a Python shell), not
    recorded when the break-glass agent runs it, and not opaque to deny rules (no-rm is
    evaded).

    Expected: interpreters are recognised by kind, not only by the listed names (ipython,
    bpython, jython, micropython, python3-dbg, php-cgi, ...): shell class, recorded, opaque."""
    if shutil.which("ipython3", path="/root/.pyenv/shims:/usr/local/bin:/usr/bin:/bin") is None:
        pytest.skip("ipython3 is not installed")
    run_isolated("ipython3 -c \"open('M', 'w')\"", tmp_path, path="/root/.pyenv/shims:/usr/local/bin:/usr/bin:/bin")
    assert (tmp_path / "M").exists(), "ipython3 -c ran no code here"
    command = "ipython3 -c \"import os; os.system('rm -rf /srv')\""
    reading = read_command(command)
    assert reading.shell, f"{command!r} runs interpreter code and reads as plain words {reading.argv}"
    assert recorded(SshRequest("exec", command="ipython3")), "an interactive ipython3 on stdin is not recorded"
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-rm")


@pytest.mark.parametrize("command", [
    "ipython -c 'import os'", "bpython", "jython -c 'import os'", "micropython -c 'import os'",
    "python3-dbg -c 'import os'", "php-cgi -r 'system(1);'", "m4 x.m4",  # m4's syscmd/esyscmd
    "dc -e 1",  # GNU dc runs `!command`
    "gnuplot -e 'system(1)'", "lftp -c 'x'", "smbclient //h/s -c x", "pwsh -c x", "bpftrace -e x",
    "toybox sh -c x", "erl -eval x", "ocaml x.ml", "sqlplus x", "duckdb -c x",
])
def test_unlisted_interpreters_are_shell_class(command: str) -> None:
    """was an attack (closed): as test_ipython_runs_code_and_is_neither_shell_class_nor_opaque, for programs that
    run commands or code from their arguments or standard input and are in no list
    (SHELLS, _INTERPRETER, SPAWNERS, CODE_OPTIONS): m4 (`syscmd(rm -rf /srv)`), GNU dc
    (`!rm -rf /srv`), gnuplot (`system`), lftp and smbclient (`!`), PowerShell, bpftrace
    (`system()`), toybox (a multi-call binary like busybox: `toybox sh`), Erlang, OCaml,
    SQL*Plus (`host`), DuckDB (`.shell`).

    Expected: shell class (only `shell: true` allows them, and they are recorded) and opaque
    to deny rules."""
    reading = read_command(command)
    assert reading.shell and reading.opaque, f"{command!r} reads as plain words {reading.argv}: {reading}"


def test_a_multi_call_binary_naming_its_program_in_an_option_evades_deny(engine: PolicyEngine) -> None:
    """was an attack (closed): the first round made deny rules see a denied program named by any word (unknown
    wrappers: `setarch x86_64 rm`); a multi-call binary names it inside an option:
    `coreutils --coreutils-prog=rm -rf /srv` (the single-binary coreutils of Fedora and
    `./configure --enable-single-binary`) runs rm, and no word is `rm`.

    Expected: a word whose value (after `=`) names a denied program starts a command for deny
    rules too (or `coreutils` is a wrapper whose `--coreutils-prog=` is the program)."""
    assert decide(engine, SshRequest("exec", command="coreutils --coreutils-prog=rm -rf /srv"),
                  "breakglass") == ("deny", "no-rm")


# ---- SFTP: what the server's answers tell before the judgement -----------------------------------

def strict_realpath(server: asyncssh.SFTPServer, path: bytes) -> bytes:
    """OpenSSH sftp-server's realpath (realpath(3)): no such file when the path does not exist,
    where asyncssh's own server answers the lexical resolution."""
    local = os.path.realpath(server.map_path(path), strict=False)
    if not os.path.lexists(local):
        raise asyncssh.SFTPNoSuchFile(f"No such file: {path!r}")
    return server.reverse_map_path(os.fsencode(local))


def test_sftp_errors_before_the_judgement_tell_which_private_paths_exist(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """was an attack (closed): the first round closed realpath as an oracle by judging it; but every SFTP
    request resolves its path on the server (realpath of the path, then of its parent) before
    the judgement, and the server's error goes back as it came: `stat /private/reports/x` is
    "permission denied" when /private/reports exists and "no such file" when it does not, so
    an agent with no read on /private lists its directory tree by probing, and the probes that
    failed upstream are in no record.

    Expected: a path no rule may read is refused (FX_PERMISSION_DENIED, recorded) whatever
    the server would say about it: the normal form is judged before the server is asked
    anything, and a resolution failure is never told to the agent for a path it may not read."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            answers = {}
            for path in ("/private/reports/q3.xlsx", "/private/nothing-here/q3.xlsx"):
                try:
                    await sftp.stat(path)
                except asyncssh.SFTPError as exc:
                    answers[path] = type(exc).__name__
            assert set(answers.values()) == {"SFTPPermissionDenied"}, (
                f"the answers differ by whether a private directory exists: {answers}")

    (tmp_path / "server" / "private" / "reports").mkdir(parents=True)
    monkeypatch.setattr(asyncssh.SFTPServer, "realpath", strict_realpath)  # the upstream's; the proxy has its own
    scenario(test, tmp_path)


# ---- approvals: what the approver's terminal shows ------------------------------------------------

APPROVE_SUDO = """
  - {name: sudo-needs-approval, effect: approve, agents: [ops], resources: [web], ssh: {commands: ["sudo **"]},
     approval: {groups: [admins], timeout_seconds: 600}}
"""


def test_terminal_escapes_in_a_held_command_rewrite_what_the_approver_sees() -> None:
    """was an attack (closed): a command's single-quoted words may hold any character (the strict reading checks
    only unquoted ones), so a plain command held for approval (`sudo **`) can carry terminal
    control sequences: `sudo chmod -R 0777 /etc '<ESC>[20Dsystemctl status nginx<ESC>[K<ESC>'` is printed
    by `interceptor approvals list` as is (60 characters: not cut), and the cursor movement, the
    erase and the ESC that swallows the closing quote make the row read
    `ssh: exec sudo systemctl status nginx`; the approver approves `chmod -R 0777 /etc`.

    Expected: what an approver is shown holds no control characters from the request (escaped,
    e.g. as `\\x1b`), in the list, `--json` aside, and in every other human-readable view of
    agent-supplied text."""
    command = "sudo chmod -R 0777 /etc '\x1b[20Dsystemctl status nginx\x1b[K\x1b'"
    policy = PolicyEngine(load_policy_text(OPERATOR + APPROVE_SUDO, "approve.yaml"))
    assert decide(policy, SshRequest("exec", command=command))[0] == "approve", "plain words, held for approval"
    shown = _operation(SshRequest("exec", command=command).summary())
    controls = sorted({hex(ord(c)) for c in shown if unicodedata.category(c) == "Cc"})
    assert not controls, f"the approval list prints control characters {controls} the agent chose: {shown!r}"


# ==== GUARDS: attacks stopped today ================================================================

@pytest.mark.parametrize("command", [
    "toybox rm -rf /srv", "echo $\"$(rm -rf /srv)\"", "sudo --preserve-env rm -rf /srv",
    "timeout -s KILL 5 rm -rf /srv", "sudo -u root -- sh -c 'rm -rf /srv'", "busybox ash -c 'rm -rf /srv'",
    "nice -5 rm -rf /srv", "env -u X rm -rf /srv", "xargs -I{} rm {}", "cat /proc/self/root/etc/shadow",
])
def test_guard_deny_sees_more_wrappers_and_spellings(engine: PolicyEngine, command: str) -> None:
    """The break-glass agent (any exec) against `rm **` / `cat /etc/shadow`: more wrapper and
    quoting spellings than the first round's guards."""
    assert decide(engine, SshRequest("exec", command=command), "breakglass") == ("deny", "no-rm"), command


@pytest.mark.parametrize("command", [
    "sudo -s", "sudo --sh", "sudo -u root --shell", "sudo -i", "sudo --log", "sudo -e /etc/sudoers",
    "less +!id /etc/hostname", "man -P id ls", "zip -TT id x.zip y", "rsync --rsh=id a b:c", "scp -S id a b:c",
    "wget --exec=x http://x", "mysql --pager=id", "crontab -", "busybox ash", "ssh-keygen -D x",
    "tar -cf x --use-compress-prog=id y", "git log --ext-diff", "ex -c x", "rvim x",
])
def test_guard_more_code_options_and_spawners_are_shell_class(command: str) -> None:
    assert read_command(command).shell, command


@pytest.mark.parametrize("host", ["::1%lo", "[::1%lo]", "127.0.0.1%lo", "[::ffff:127.0.0.1]", "127.000.000.001",
                                  "0177.1", "127.0.0.1 ", " 127.0.0.1", "LocalHost"])
def test_guard_forward_deny_sees_zone_ids_and_padding(engine: PolicyEngine, host: str) -> None:
    assert decide(engine, SshRequest("forward", forward="local", target=f"{host}:22"))[0] == "deny", host


@pytest.mark.parametrize("port", ["+22", " 22", "22 ", "0x16", "65536", "-1", "２２"])
def test_guard_forward_ports_in_odd_spellings_are_refused(engine: PolicyEngine, port: str) -> None:
    assert decide(engine, SshRequest("forward", forward="local", target=f"db.internal:{port}"))[0] == "deny", port


@pytest.mark.parametrize("path", ["/home/deploy/.git/config", "/home/deploy/x/.git/hooks/post-checkout",
                                  "/srv/uploads/x.so", "/home/deploy/bin/ls", "/var/spool/cron/crontabs/deploy"])
def test_guard_git_and_loader_files_with_dots_or_names_run_code(path: str) -> None:
    assert runs_code(path), path


def test_guard_sftp_copy_data_needs_a_handle_opened_for_writing(tmp_path: Path) -> None:
    """copy-data (asyncssh's extension) reads one handle and writes another through the proxy's
    own read and write: a handle opened for reading cannot be written through it."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/srv/motd", "rb") as source, sftp.open("/srv/motd", "rb") as target:
                with pytest.raises(asyncssh.SFTPError):
                    await sftp._handler.copy_data(cast(bytes, source._handle), 0, 0,  # noqa: SLF001
                                                  cast(bytes, target._handle), 0)

    scenario(test, tmp_path, policy=POLICY)


# ---- legacy scp: where asyncssh's scp server and the policy's reading differ ----------------------

def private_link(lab: Lab) -> None:
    """/srv/link (readable by POLICY's /srv/**) -> /private/q3-layoffs.xlsx (no rule reads it)."""
    private = lab.tmp / "server" / "private"
    private.mkdir()
    (private / "q3-layoffs.xlsx").write_text("names\n")
    (lab.tmp / "server" / "srv" / "link").symlink_to("../private/q3-layoffs.xlsx")

def test_legacy_scp_with_a_leading_space_runs_on_the_server_judged_by_the_link_name(tmp_path: Path) -> None:
    """was an attack (closed): legacy scp is judged by its path as written (ssh_rules: `scp -f PATH` is a read
    of PATH) and served by asyncssh's scp server through the SFTP proxy, which judges the
    server's resolution too (symlinks). asyncssh takes a command for scp only when it starts
    with `scp ` (asyncssh.stream: `command.startswith('scp ')`), while the policy's reading
    skips leading spaces: ` scp -f /srv/link` is judged as a read of /srv/link (allowed by
    `/srv/**`), then run by the real server, whose scp opens what the link points to
    (`/private/...`): the symlink resolution the SFTP proxy judges is never judged.

    Expected: every exec the policy reads as legacy scp is served by the proxy (every file
    judged by both readings) and never reaches the server as a command, or is refused."""
    async def test(lab: Lab) -> None:
        private_link(lab)
        async with lab.agent() as conn:
            await asyncio.wait_for(conn.run(" scp -f /srv/link", input=b"\0\0\0", encoding=None), 10)
        judged = [(e.decision, (e.operation or {}).get("path")) for e in lab.kind("ssh")]
        assert lab.upstream.commands == [], (
            f"the server ran {lab.upstream.commands} after the policy judged {judged}: its scp follows /srv/link "
            f"to /private/q3-layoffs.xlsx, which no rule allows reading")

    scenario(test, tmp_path)


def test_guard_legacy_scp_through_the_proxy_judges_where_a_link_points(tmp_path: Path) -> None:
    """`scp -f /srv/link` (as OpenSSH's client sends it) is served by the proxy: the link's
    resolution, /private/..., is judged and refused; nothing runs on the server."""
    async def test(lab: Lab) -> None:
        private_link(lab)
        async with lab.agent() as conn:
            result = await asyncio.wait_for(conn.run("scp -f /srv/link", input=b"\0\0\0", encoding=None), 10)
        assert b"names" not in cast(bytes, result.stdout) and lab.upstream.commands == []
        assert any(e.decision == "deny" and (e.operation or {}).get("path") == "/private/q3-layoffs.xlsx"
                   for e in lab.kind("ssh"))

    scenario(test, tmp_path)


NO_SCP = """
  - {name: no-scp, effect: deny, reason: use SFTP, resources: [web1], ssh: {commands: ["scp **"]}}
"""


def test_a_legacy_scp_exec_is_never_judged_as_a_command(tmp_path: Path) -> None:
    """was an attack (closed): asyncssh answers an exec starting with `scp ` with its own scp server before the
    handler's process runs, so the exec itself never reaches the Gate: a deny rule on the
    command (`scp **`: "no legacy scp here") is not applied (the file is sent), there is no
    "ssh" record of the exec, and an upload (`scp -t`), which the policy lets only `shell:
    true` allow (ssh_rules: the client names its files), runs with a `write` glob alone.

    Expected: a legacy scp exec is judged as the exec it is (the policy's reading: deny
    `commands`, the read/write of its path, `shell: true` for an upload) before asyncssh's scp
    server starts, and recorded; only then is each file judged by the proxy."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await asyncio.wait_for(run_refusable(conn, "scp -f /srv/motd", b"\0\0\0"), 10)
        assert b"welcome" not in cast(bytes, result.stdout), "the scp the policy denies sent the file"
        assert b"no-scp" in cast(bytes, result.stderr) and result.exit_status == 126, result
        [judged] = [e for e in lab.kind("ssh") if (e.operation or {}).get("request") == "exec"]
        assert (judged.decision, judged.rule) == ("deny", "no-scp")

    scenario(test, tmp_path, policy=POLICY + NO_SCP)


# ---- forwards: an allow glob over addresses covers names ------------------------------------------

@pytest.mark.parametrize("host", ["10.0.0.5.nip.io", "10.0.0.1.evil.example", "10.0.0.metadata.internal"])
def test_an_allow_glob_over_addresses_covers_names_that_resolve_anywhere(host: str) -> None:
    """was an attack (closed): `forward: ["10.0.0.*:5432"]` means the databases of one subnet; fnmatch's `*`
    matches dots and letters, so it also covers `10.0.0.5.nip.io`, `10.0.0.1.evil.example`:
    names the server resolves (the agent's DNS, wildcard services such as nip.io) to any
    address, 169.254.169.254 or the server's own 127.0.0.1 among them. The deny side was made
    to read names widely (a deny naming an address matches every name); the allow side reads
    this glob narrowly only when the host is an address in another spelling. (The operator
    policy's deny of 127.0.0.1 hides this; a policy with the allow alone, as here, does not.)

    Expected: an allow glob whose host is made of address characters (an address or an
    address glob) covers addresses only, never a name."""
    forwards = 'ssh: {forward: ["*:8080", "*:22"], remote_forward: ["*:8080"]}'
    assert forwards in OPERATOR
    policy = "\n".join(line for line in OPERATOR.replace(forwards, 'ssh: {forward: ["10.0.0.*:5432"]}').splitlines()
                       if "no-server-itself" not in line)
    engine = PolicyEngine(load_policy_text(policy, "subnet.yaml"))
    assert decide(engine, SshRequest("forward", forward="local", target="10.0.0.5:5432"))[0] == "allow"
    assert decide(engine, SshRequest("forward", forward="local", target=f"{host}:5432"))[0] == "deny", host


# ---- audit: secrets on a command line -------------------------------------------------------------

@pytest.mark.parametrize("command", ["mysqldump --password=hunter2 --all-databases", "curl -u admin:hunter2 https://x",
                                     "openssl rsa -passin pass:hunter2 -in key.pem", "redis-cli --pass hunter2 ping",
                                     "mysql -phunter2 db", "redis-cli -a hunter2 ping", "sshpass -p hunter2 ssh h",
                                     "PGPASSWORD=hunter2 psql", "tool --token=hunter2", "tool --api-key hunter2",
                                     "curl -H 'Authorization: Bearer hunter2' https://x"])
def test_a_password_on_an_exec_command_line_reaches_the_trail(command: str) -> None:
    """was an attack (closed) (secret disclosure): the audit trail is scrubbed before it is chained (a chained
    record can never be cleaned: interceptor.audit.scrub) of SQL password literals, URL
    passwords and tokens; an SSH exec's command line is the SSH form of the same thing, and
    its common credential spellings (`--password=X`, `-u user:X`, `pass:X`, `--pass X`) go into
    the "ssh" and "ssh-end" records as sent, for every reader of the trail.

    Expected: the scrub knows command-line credentials (a `--password`/`--pass`/`--passwd`
    option's value, `-u USER:PASS`, openssl's `pass:`), as it knows SQL's `PASSWORD '...'`."""
    event = {"kind": "ssh", "operation": SshRequest("exec", command=command).summary()}
    assert "hunter2" not in str(scrub_event(event)), f"the trail keeps the password of {command!r}"


# ---- deny path words: the file system's own aliases -----------------------------------------------

NO_SECRETS = """
  - {name: no-secrets, effect: deny, resources: [web], ssh: {commands: ["cat /run/secrets/*"]}}
"""


@pytest.mark.parametrize("path", ["/var/run/secrets/db_password"])
def test_deny_path_words_miss_the_systems_own_symlinks(path: str) -> None:
    """was an attack (closed): the first round made a deny path word match the kernel's aliases (/proc/*/root,
    /dev/fd) and relative paths ending the same way; an absolute path through a symlink every
    Debian and RHEL system has (`/var/run` -> `/run`, `/var/lock` -> `/run/lock`, merged /usr:
    `/bin`, `/lib`, `/sbin` -> `/usr/...`; checked on this host), or one the agent makes
    (`ln -s /run/secrets /tmp/s`), is neither: `cat /var/run/secrets/db_password` reads what
    deny `cat /run/secrets/*` names.

    Expected: as for relative paths, an absolute path whose last segments match the deny
    word's last segments is touched (the enforcer cannot see the server's symlinks: fail
    closed), so every path that may name the file matches."""
    if not Path("/var/run").is_symlink():
        pytest.skip("/var/run is not a symlink on this host")
    assert Path("/var/run").resolve() == Path("/run")
    engine = PolicyEngine(load_policy_text(OPERATOR + NO_SECRETS, "secrets.yaml"))
    assert decide(engine, SshRequest("exec", command=f"cat {path}"), "breakglass")[0] == "deny", path


# ---- resources: what a connection that says nothing costs the server -----------------------------

def test_a_tcp_connection_that_never_speaks_ssh_logs_in_to_the_server(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """was an attack (closed) (resource exhaustion, amplification): the handler starts the server connection
    (TCP, key exchange, login with the resource's credentials) as soon as the agent's TCP
    connection is accepted, before the agent has sent a single SSH byte: an agent that opens
    connections and stays silent makes the enforcer hold one logged-in server session per
    connection for LOGIN_SECONDS (60 s), each a sshd process on the server and a login in its
    auth log that no client asked for; a loop of connect() calls exhausts the server for every
    other user of it.

    Expected: the server login starts only once the agent has completed its key exchange and
    asked to authenticate (begin_auth), or the logins a flow (and an agent) may have pending
    are bounded."""
    logins: list[str] = []

    def counted(self: asyncssh.SSHServer, username: str) -> bool:
        logins.append(username)
        return True

    monkeypatch.setattr(UpstreamServer, "begin_auth", counted, raising=False)

    async def test(lab: Lab) -> None:
        serving = await lab._serve()  # noqa: SLF001 - the lab's accepted flow, without an SSH client
        _, writer = await asyncio.open_connection("127.0.0.1", serving.port)
        for _ in range(40):
            if logins:
                break
            await asyncio.sleep(0.05)
        writer.close()
        await serving.done()
        assert logins == [], f"the enforcer logged in to the server as {logins} for a connection that sent nothing"

    scenario(test, tmp_path)


# ---- an exec of nothing: a shell upstream ------------------------------------------------------

ANY_PLAIN = """
  - {name: any-plain-command, effect: allow, agents: [bot], resources: [web1], ssh: {commands: ["**"]}}
"""


async def run_refusable(conn: asyncssh.SSHClientConnection, command: str | None,
                        data: bytes) -> asyncssh.SSHCompletedProcess:
    """conn.run(command, input=data), where the handler may refuse the request and close the
    channel before the input is written (asyncssh's run then raises BrokenPipeError)."""
    process = await conn.create_process(command, encoding=None)
    try:
        process.stdin.write(data)
        process.stdin.write_eof()
    except BrokenPipeError:
        pass
    return await process.wait()


async def exec_empty(conn: asyncssh.SSHClientConnection, monkeypatch: pytest.MonkeyPatch) -> asyncssh.SSHCompletedProcess:
    """`exec ""` on a session channel (RFC 4254 section 6.5: any string), which asyncssh's
    client never sends itself (it asks for a shell when the command is empty): this agent's
    shell request is rewritten to one, then `exit` is typed on its standard input."""
    original = asyncssh.SSHClientChannel._make_request  # noqa: SLF001

    async def rewritten(self: asyncssh.SSHClientChannel[bytes], request: bytes, *args: bytes) -> bool | None:
        if request == b"shell" and self.get_connection() is conn:
            request, args = b"exec", (String(""),)
        return await original(self, request, *args)

    monkeypatch.setattr(asyncssh.SSHClientChannel, "_make_request", rewritten)
    return await asyncio.wait_for(run_refusable(conn, None, b"echo hi\nexit\n"), 10)


def test_an_exec_of_the_empty_command_is_an_unjudged_unrecorded_shell(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """was an attack (closed): an exec request whose command is "" is judged as an exec of nothing (no words:
    plain, nothing for deny rules to match, not recorded) and allowed by a rule covering any
    plain command (`commands: ["**"]`, which covers zero words); the handler then calls
    asyncssh's create_process(""), and asyncssh asks the server for an interactive *shell*
    when the command is empty (channel.py: `if command: exec ... else: shell`): the agent
    types commands to a login shell that no `shell: true` rule allowed, and nothing records it.

    Expected: what runs upstream is what was judged: an exec of "" is run as an exec of ""
    (sshd: `$SHELL -c ''`, nothing) or refused (bad request), and never becomes a shell
    upstream; a shell is only ever run when a `shell` request was judged."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            result = await exec_empty(conn, monkeypatch)
        judged = [(e.decision, e.rule, e.operation) for e in lab.kind("ssh")]
        assert result.exit_status == 126 and [decision for decision, _, _ in judged] == ["deny"], (result, judged)
        assert None not in lab.upstream.commands, (
            f"the server ran an interactive shell ({lab.upstream.commands}) after the policy judged {judged}")

    scenario(test, tmp_path, policy=POLICY + ANY_PLAIN)


def test_an_exec_of_the_empty_command_allowed_by_a_shell_rule_is_not_recorded(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """was an attack (closed): as test_an_exec_of_the_empty_command_is_an_unjudged_unrecorded_shell, for the
    break-glass agent (`shell: true`): the first round made execs that only `shell: true`
    allows recorded like shells, but `exec ""` reads as no words, not shell class, so the
    interactive shell it becomes upstream is not recorded.

    Expected: every session that runs a shell upstream is recorded (its ssh-end record has
    the recording)."""
    async def test(lab: Lab) -> None:
        async with lab.agent() as conn:
            await exec_empty(conn, monkeypatch)
        ends = [e.outcome or {} for e in lab.kind("ssh-end")]
        if None in lab.upstream.commands:
            assert all("recording" in end for end in ends), f"a shell ran on the server unrecorded: {ends}"

    no_deny_rules = "\n".join(line for line in POLICY.splitlines() if "no-rm" not in line)
    scenario(test, tmp_path, policy=no_deny_rules + SHELLS)


# ---- options that write a file of the agent's choosing -------------------------------------------

@pytest.mark.parametrize(("command", "program"), [
    ("sort -o {T} /srv/uploads/key.pub", "sort"),
    ("sort --output={T} /srv/uploads/key.pub", "sort"),
    ("sort --out={T} /srv/uploads/key.pub", "sort"),
    ("sed --sandbox -i '$a ssh-ed25519 AAAA agent' {T}", "sed"),
])
def test_options_that_write_a_file_are_plain(engine: PolicyEngine, tmp_path: Path, command: str,
                                             program: str) -> None:
    """was an attack (closed) (writes that run code, through an exec): the first round's code options include
    options that *write* a file the agent names (`git --output`, find's `-fprint`/`-fls`;
    sed's `w` is why sed needs `--sandbox`), since the written file may be one the server runs
    (`~/.ssh/authorized_keys`, `~/.bashrc`: the SFTP side needs `shell: true` for these). The
    same kind is plain elsewhere: `sort -o FILE` / `--output` / `--out` (allowed by the
    operator's `sort **`) copies an uploaded public key into ~/.ssh/authorized_keys (a login
    that bypasses the enforcer), and `sed --sandbox -i` (the spelling the guide makes plain)
    edits any file in place (checked here: both write the file named).

    Expected: an option that makes a program write a file it names is shell class (as
    `git --output` and `find -fprint`), in every spelling (unique prefixes)."""
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    uploads = tmp_path / "srv" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "key.pub").write_text("ssh-ed25519 AAAA agent\n")
    target = tmp_path / "authorized_keys"
    target.write_text("# keys\n")
    local = command.replace("/srv/uploads", str(uploads)).format(T=target)
    run_isolated(local, tmp_path)
    assert "AAAA agent" in target.read_text(), f"{local!r} wrote nothing here"
    remote = command.format(T="/home/deploy/.ssh/authorized_keys")
    assert read_command(remote).shell, f"{remote!r} writes the server's authorized_keys and reads as plain words"


# ---- options that load code: binutils plugins and response files ---------------------------------

LIBRARY = ("printf '#include <stdlib.h>\\n__attribute__((constructor)) static void c(void){system(\"touch M\");}\\n'"
           " > e.c && gcc -shared -fPIC -o e.so e.c && echo 'int x;' > x.c && gcc -c x.c && "
           "printf -- '--plugin ./e.so\\n' > opts")


@pytest.mark.parametrize("command", ["nm --plugin ./e.so x.o", "nm --plug=./e.so x.o", "nm @opts x.o"])
def test_binutils_plugins_and_response_files_load_code(tmp_path: Path, command: str) -> None:
    """was an attack (closed): the first round made options that load a library shell class for openssl
    (`-engine FILE`); GNU binutils' nm, ar and ranlib load a plugin (a shared library: its
    constructor runs) with `--plugin FILE` (any unique prefix), and every binutils program
    reads more options from a response file named `@FILE` (libiberty expandargv), so an
    uploaded file can hold `--plugin` where no pattern or reader sees it. `nm **` (a read-only
    symbol lister) runs the agent's code (checked here with real nm and gcc; the library may be
    uploaded under any name, `.so` is refused by name only).

    Expected: `--plugin` of nm/ar/ranlib (and of every program with one) is a code option, and
    a word starting with `@` for a program that expands response files (binutils, gcc, ...)
    is shell class (its options cannot be read)."""
    if shutil.which("nm") is None or shutil.which("gcc") is None:
        pytest.skip("nm or gcc is not installed")
    run_isolated(LIBRARY, tmp_path)
    run_isolated(command, tmp_path)
    assert (tmp_path / "M").exists(), f"{command!r} loaded no plugin here"
    assert read_command(command).shell, f"{command!r} loads the agent's library and reads as plain words"
