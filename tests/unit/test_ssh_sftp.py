"""SftpProxy between a real asyncssh SFTP client and an in-process asyncssh server acting as
the upstream (asyncssh's own SFTPServer chrooted to a tmp dir, home /home/u), served by a
second in-process asyncssh server whose connection owner implements SftpContext with a
fake Gate (allows by a callable, records every call). No root needed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, cast

import asyncssh
import pytest
from asyncssh.constants import FX_NO_SUCH_FILE, FX_PERMISSION_DENIED

from interceptor.decision import Decision, Verdict
from interceptor.errors import AuditUnavailable, Refused
from interceptor.handlers.ssh.gate import Authorized
from interceptor.handlers.ssh.sftp import SftpProxy, normal_form
from interceptor.operations import Request, SshRequest, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from test_policy_ssh import POLICY as SSH_POLICY

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SECRET = b"top secret\n"
NOTES = b"hello notes\n"


def outside_secret(op: SshRequest) -> bool:
    return not (op.path or "").startswith("/secret")


@dataclass
class FakeGate:
    allow: Callable[[SshRequest], bool] = outside_secret
    asked: list[SshRequest] = field(default_factory=list)
    ended: list[tuple[SshRequest, dict[str, object]]] = field(default_factory=list)
    unavailable: bool = False

    async def authorize(self, operation: SshRequest) -> Authorized:
        self.asked.append(operation)
        if self.unavailable:
            raise AuditUnavailable("the audit trail is unavailable")
        if self.allow(operation):
            return Authorized(Decision(Verdict.ALLOW, "allow-test"), f"event-{len(self.asked)}")
        raise Refused("42501", f"rule deny-test refuses {operation.request} of {operation.path}")

    async def finished(self, authorized: Authorized, operation: SshRequest, outcome: dict[str, object]) -> None:
        self.ended.append((operation, outcome))

    def paths(self, request: str | None = None) -> list[str | None]:
        return [op.path for op in self.asked if request is None or op.request == request]


class OpenServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


class Upstream(asyncssh.SFTPServer):
    """asyncssh's SFTP server chrooted to the test's root, relative paths against /home/u;
    `strict`: realpath fails for a path that does not exist, as realpath(3) does."""

    strict = False

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], root: Path) -> None:
        super().__init__(chan, chroot=bytes(root))

    def map_path(self, path: bytes) -> bytes:
        return super().map_path(path if path.startswith(b"/") else b"/home/u/" + path)

    def realpath(self, path: bytes) -> bytes:
        if self.strict and not os.path.exists(self.map_path(path)):
            raise asyncssh.SFTPNoSuchFile("no such file")
        return super().realpath(path)  # type: ignore[return-value]


class StrictUpstream(Upstream):
    strict = True


class CountingUpstream(StrictUpstream):
    """A strict upstream that keeps every path it was asked to resolve (class-wide)."""

    resolved: ClassVar[list[bytes]] = []

    def realpath(self, path: bytes) -> bytes:
        self.resolved.append(path)
        return super().realpath(path)


class Connection(OpenServer):
    """The agent's connection as the ssh handler's would be: SftpContext."""

    def __init__(self, gate: FakeGate, upstream: asyncssh.SSHClientConnection, opened: list[asyncssh.SFTPClient],
                 over_exec: bool):
        self.gate = gate
        self._upstream = upstream
        self._opened = opened
        self._over_exec = over_exec

    async def open_sftp(self) -> asyncssh.SFTPClient:
        if self._over_exec:  # the test's OpenSSH sftp-server upstream runs as a command
            writer, reader, _ = await self._upstream.open_session(command="sftp-server", encoding=None)
            sftp = await asyncssh.sftp.start_sftp_client(self._upstream, asyncio.get_running_loop(), "strict",
                                                         reader, writer, None, "strict", 3)
        else:
            sftp = await self._upstream.start_sftp_client()
        self._opened.append(sftp)
        return sftp


@dataclass
class Setup:
    sftp: asyncssh.SFTPClient
    agent: asyncssh.SSHClientConnection
    gate: FakeGate
    root: Path
    proxy_port: int
    opened: list[asyncssh.SFTPClient]


def make_tree(root: Path) -> None:
    (root / "home/u").mkdir(parents=True)
    (root / "home/u/notes.txt").write_bytes(NOTES)
    (root / "public").mkdir()
    (root / "public/readme.txt").write_bytes(b"readme\n")
    (root / "secret").mkdir()
    (root / "secret/key.txt").write_bytes(SECRET)
    (root / "public/link").symlink_to("../secret/key.txt")
    (root / "public/dirlink").symlink_to("../secret")
    (root / "home/u/dangling").symlink_to("../../secret/new.txt")


def chrooted(root: Path, upstream_class: type[Upstream]) -> dict[str, object]:
    """The upstream's listen() arguments for asyncssh's own SFTP server in `root`."""
    return {"sftp_factory": lambda chan: upstream_class(chan, root)}


def openssh_sftp_server(home: Path) -> dict[str, object]:
    """The upstream's listen() arguments for OpenSSH's sftp-server, started in `home`, on the
    real file system (no chroot: paths are the tmp dir's). asyncssh serves the sftp subsystem
    only with an SFTPServer, so it runs as an exec command (Connection's `over_exec`)."""
    async def serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
        local = await asyncio.create_subprocess_exec(SFTP_SERVER, "-d", str(home), stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE)
        await process.redirect(stdin=local.stdin, stdout=local.stdout)
        process.exit(await local.wait())
        await process.wait_closed()
    # the version that tells asyncssh's client to send SSH_FXP_SYMLINK's paths in OpenSSH's order
    return {"process_factory": serve, "encoding": None, "server_version": "OpenSSH_9.2"}


@asynccontextmanager
async def proxied(gate: FakeGate, upstream_options: dict[str, object], over_exec: bool,
                  allow_scp: bool) -> AsyncIterator[Setup]:
    upstream_server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[HOST_KEY], server_factory=OpenServer,
                                            **upstream_options)
    upstream = await asyncssh.connect("127.0.0.1", upstream_server.sockets[0].getsockname()[1], known_hosts=None,
                                      username="enforcer", client_keys=None, config=None)
    opened: list[asyncssh.SFTPClient] = []
    proxy_server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[HOST_KEY],
                                         server_factory=lambda: Connection(gate, upstream, opened, over_exec),
                                         sftp_factory=SftpProxy, allow_scp=allow_scp)
    port = proxy_server.sockets[0].getsockname()[1]
    agent = await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="agent", client_keys=None,
                                   config=None)
    try:
        async with agent.start_sftp_client() as sftp:
            yield Setup(sftp, agent, gate, Path(), port, opened)
    finally:
        agent.close()
        await agent.wait_closed()
        for session in opened:  # the proxy ends its upstream sessions with the agent's
            await asyncio.wait_for(session.wait_closed(), 5)
        proxy_server.close()
        await proxy_server.wait_closed()
        upstream.close()
        await upstream.wait_closed()
        upstream_server.close()
        await upstream_server.wait_closed()


def run(tmp_path: Path, scenario: Callable[[Setup], object], gate: FakeGate | None = None,
        upstream_class: type[Upstream] = Upstream, openssh: bool = False, allow_scp: bool = False) -> FakeGate:
    """Runs `scenario` against the proxy, in front of asyncssh's SFTP server chrooted to
    tmp_path/server (or, `openssh`, OpenSSH's sftp-server on the real tree, home
    tmp_path/server/home/u); `allow_scp`: the proxy serves legacy scp too (asyncssh runs it
    on the SftpProxy)."""
    root = tmp_path / "server"
    root.mkdir()
    make_tree(root)
    gate = gate or FakeGate()
    options = openssh_sftp_server(root / "home/u") if openssh else chrooted(root, upstream_class)

    async def main() -> None:
        async with proxied(gate, options, openssh, allow_scp) as setup:
            setup.root = root
            result = scenario(setup)
            if asyncio.iscoroutine(result):
                await result

    asyncio.run(main())
    return gate


def test_normal_form_resolves_dot_segments_as_text() -> None:
    assert normal_form("/a//b/./c/../d/") == "/a/b/d"
    assert normal_form("/../../etc") == "/etc"
    assert normal_form("//") == "/"
    assert normal_form("/a/..") == "/"


def test_put_then_get_round_trip_judged_and_counted(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    back = tmp_path / "back.bin"

    async def scenario(s: Setup) -> None:
        await s.sftp.put(str(local), "/home/u/up.bin")
        assert (s.root / "home/u/up.bin").read_bytes() == data
        await s.sftp.get("/home/u/up.bin", str(back))

    gate = run(tmp_path, scenario)
    assert back.read_bytes() == data
    assert SshRequest("write", path="/home/u/up.bin", action="open") in gate.asked
    assert SshRequest("read", path="/home/u/up.bin", action="open") in gate.asked
    outcomes = [(op.request, outcome) for op, outcome in gate.ended]
    assert ("write", {"bytes_read": 0, "bytes_written": len(data)}) in outcomes
    assert ("read", {"bytes_read": len(data), "bytes_written": 0}) in outcomes


def test_listdir_mkdir_rmdir_remove(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        await s.sftp.mkdir("/home/u/d")
        assert sorted(await s.sftp.listdir("/home/u")) == [".", "..", "d", "dangling", "notes.txt"]
        await s.sftp.rmdir("/home/u/d")
        await s.sftp.remove("/home/u/notes.txt")
        assert sorted(os.listdir(s.root / "home/u")) == ["dangling"]

    gate = run(tmp_path, scenario)
    assert [(op.request, op.action, op.path) for op in gate.asked] == [
        ("write", "mkdir", "/home/u/d"), ("read", "readdir", "/home/u"), ("write", "rmdir", "/home/u/d"),
        ("write", "remove", "/home/u/notes.txt")]


def test_rename_judges_the_source_as_read_and_write_and_the_destination_as_write(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        await s.sftp.rename("/home/u/notes.txt", "/home/u/moved.txt")
        await s.sftp.posix_rename("/home/u/moved.txt", "/home/u/again.txt")
        assert (s.root / "home/u/again.txt").read_bytes() == NOTES
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="interceptor: rule deny-test"):
            await s.sftp.rename("/secret/key.txt", "/home/u/stolen.txt")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.rename("/home/u/again.txt", "/secret/planted.txt")

    gate = run(tmp_path, scenario)
    assert [(op.request, op.action, op.path) for op in gate.asked[:3]] == [
        ("read", "rename", "/home/u/notes.txt"), ("write", "rename", "/home/u/notes.txt"),
        ("write", "rename", "/home/u/moved.txt")]
    assert ("write", "posix-rename", "/home/u/again.txt") in [(op.request, op.action, op.path) for op in gate.asked]
    assert not (tmp_path / "server/home/u/stolen.txt").exists()
    assert not (tmp_path / "server/secret/planted.txt").exists()


def test_symlink_link_path_is_a_write_and_its_target_a_read(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        await s.sftp.symlink("notes.txt", "/home/u/ln")
        assert os.readlink(s.root / "home/u/ln") == "notes.txt"  # the link's text as the agent wrote it
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="interceptor: "):
            await s.sftp.symlink("../../secret/key.txt", "/home/u/peek")
        assert not (s.root / "home/u/peek").is_symlink()

    gate = run(tmp_path, scenario)
    assert [(op.request, op.path) for op in gate.asked[:2]] == [("write", "/home/u/ln"), ("read", "/home/u/notes.txt")]
    assert ("read", "/secret/key.txt") in [(op.request, op.path) for op in gate.asked]


def test_hardlink_judges_both_paths_as_writes(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        await s.sftp.link("/home/u/notes.txt", "/home/u/hard")
        assert (s.root / "home/u/hard").stat().st_ino == (s.root / "home/u/notes.txt").stat().st_ino
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.link("/secret/key.txt", "/home/u/hard2")

    gate = run(tmp_path, scenario)
    judged = [(op.request, op.action, op.path) for op in gate.asked]
    assert ("write", "hardlink", "/home/u/notes.txt") in judged and ("write", "hardlink", "/home/u/hard") in judged
    assert not (tmp_path / "server/home/u/hard2").exists()


def test_denied_read_and_write_answer_permission_denied_with_the_reason(tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"planted")

    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied) as denied:
            await s.sftp.get("/secret/key.txt", str(tmp_path / "got"))
        assert denied.value.code == FX_PERMISSION_DENIED
        assert denied.value.reason == "interceptor: rule deny-test refuses read of /secret/key.txt"
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses write of /secret/new.txt"):
            await s.sftp.put(str(local), "/secret/new.txt")
        assert await s.sftp.listdir("/public")  # the session goes on
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.listdir("/secret")

    run(tmp_path, scenario)
    assert not (tmp_path / "got").exists()
    assert not (tmp_path / "server/secret/new.txt").exists()


def test_dot_dot_is_judged_where_it_leads(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        for path in ("/public/../secret/key.txt", "/home/u/../../secret/./key.txt", "../../secret//key.txt",
                     "/../../secret/key.txt"):
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await s.sftp.stat(path)

    gate = run(tmp_path, scenario)
    assert set(gate.paths()) == {"/secret/key.txt"}


def test_a_symlink_is_judged_by_its_real_target_too(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        for path, mode in (("/public/link", "rb"), ("/public/dirlink/key.txt", "rb"), ("/public/dirlink/new.txt", "wb")):
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await s.sftp.open(path, mode)
        # acting on the link itself does not touch what it points to
        assert (await s.sftp.lstat("/public/link")).type == asyncssh.FILEXFER_TYPE_SYMLINK
        (s.root / "public/abs").symlink_to(s.root / "home/u/notes.txt")  # asyncssh's chroot reads absolute links only
        assert await s.sftp.readlink("/public/abs") == "/home/u/notes.txt"

    gate = run(tmp_path, scenario)
    assert gate.paths()[:4] == ["/public/link", "/secret/key.txt", "/public/dirlink/key.txt", "/secret/key.txt"]
    assert gate.paths()[4:6] == ["/public/dirlink/new.txt", "/secret/new.txt"]
    assert gate.paths()[6:] == ["/public/link", "/public/abs"]
    assert not (tmp_path / "server/secret/new.txt").exists()


def test_allow_must_cover_both_readings_and_a_deny_on_either_refuses(tmp_path: Path) -> None:
    only_public = FakeGate(allow=lambda op: (op.path or "").startswith("/public"))

    async def through_link(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="/secret/key.txt"):
            await s.sftp.stat("/public/link")
        assert (await s.sftp.stat("/public/readme.txt")).size == 7

    (tmp_path / "a").mkdir()
    run(tmp_path / "a", through_link, only_public)
    deny_the_name = FakeGate(allow=lambda op: op.path != "/public/link")

    async def by_name(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="/public/link"):
            await s.sftp.stat("/public/link")
        assert (await s.sftp.stat("/secret/key.txt")).size == len(SECRET)

    (tmp_path / "b").mkdir()
    run(tmp_path / "b", by_name, deny_the_name)


def test_relative_paths_are_taken_against_the_upstream_home(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        async with s.sftp.open("notes.txt", "rb") as f:
            assert cast(bytes, await f.read()) == NOTES  # opened "rb": bytes
        await s.sftp.mkdir("sub")
        assert (s.root / "home/u/sub").is_dir()
        assert await s.sftp.realpath(".") == "/home/u"

    gate = run(tmp_path, scenario)
    assert gate.paths() == ["/home/u/notes.txt", "/home/u/sub"]  # realpath of the home directory is not judged


def test_realpath_is_a_read_except_of_the_home_directory(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        for home in (".", "", "/home/u", "/home/u/../u/.", "./"):
            assert await s.sftp.realpath(home) == "/home/u", home
        assert await s.sftp.realpath("notes.txt") == "/home/u/notes.txt"
        assert await s.sftp.realpath("/public/../public/readme.txt") == "/public/readme.txt"
        for path in ("/public/link", "/public/dirlink", "/secret", "/public/../secret/key.txt", "../../secret"):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="rule deny-test refuses read of /secret"):
                await s.sftp.realpath(path)

    gate = run(tmp_path, scenario)
    judged = [(op.request, op.action, op.path) for op in gate.asked]
    assert judged[:3] == [("read", "realpath", "/home/u/notes.txt"), ("read", "realpath", "/public/readme.txt"),
                          ("read", "realpath", "/public/link")]
    assert ("read", "realpath", "/secret/key.txt") in judged and "/home/u" not in gate.paths()


def test_a_directory_moved_or_linked_is_judged_as_a_tree(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        (s.root / "home/u/d").mkdir()
        await s.sftp.rename("/home/u/d", "/home/u/e")
        await s.sftp.posix_rename("/home/u/e", "/home/u/f")
        await s.sftp.rename("/home/u/notes.txt", "/home/u/n.txt")
        await s.sftp.symlink("/public", "/home/u/pub")
        await s.sftp.symlink("n.txt", "/home/u/ln")
        await s.sftp.symlink("missing", "/home/u/later")  # may become a directory

    gate = run(tmp_path, scenario)
    # the normal forms first (the server is asked nothing before), then the trees once it says
    # the source may be a directory
    assert [(op.request, op.action, op.path) for op in gate.asked] == [
        ("read", "rename", "/home/u/d"), ("write", "rename", "/home/u/d"), ("write", "rename", "/home/u/e"),
        ("read", "rename-tree", "/home/u/d"), ("write", "rename-tree", "/home/u/d"),
        ("write", "rename-tree", "/home/u/e"),
        ("read", "posix-rename", "/home/u/e"), ("write", "posix-rename", "/home/u/e"),
        ("write", "posix-rename", "/home/u/f"),
        ("read", "posix-rename-tree", "/home/u/e"), ("write", "posix-rename-tree", "/home/u/e"),
        ("write", "posix-rename-tree", "/home/u/f"),
        ("read", "rename", "/home/u/notes.txt"), ("write", "rename", "/home/u/notes.txt"),
        ("write", "rename", "/home/u/n.txt"),
        ("write", "symlink", "/home/u/pub"), ("read", "symlink", "/public"),
        ("write", "symlink-tree", "/home/u/pub"), ("read", "symlink-tree", "/public"),
        ("write", "symlink", "/home/u/ln"), ("read", "symlink", "/home/u/n.txt"),
        ("write", "symlink", "/home/u/later"), ("read", "symlink", "/home/u/missing"),
        ("write", "symlink-tree", "/home/u/later"), ("read", "symlink-tree", "/home/u/missing")]


def test_a_refused_tree_moves_nothing(tmp_path: Path) -> None:
    no_trees = FakeGate(allow=lambda op: not (op.action or "").endswith("-tree"))

    async def scenario(s: Setup) -> None:
        for move in (s.sftp.rename, s.sftp.posix_rename, s.sftp.link):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses read of /public"):
                await move("/public", "/home/u/moved")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses write of /home/u/pub"):
            await s.sftp.symlink("/public", "/home/u/pub")
        await s.sftp.rename("/home/u/notes.txt", "/home/u/n.txt")  # a file is no tree

    run(tmp_path, scenario, no_trees)
    assert (tmp_path / "server/public/readme.txt").exists() and not (tmp_path / "server/home/u/moved").exists()
    assert not (tmp_path / "server/home/u/pub").is_symlink() and (tmp_path / "server/home/u/n.txt").exists()


def test_a_handle_opened_for_reading_cannot_write_nor_one_for_writing_read(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        async with s.sftp.open("/home/u/notes.txt", "rb") as f:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="opened for reading only"):
                await f.write(b"overwritten", 0)
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="opened for reading only"):
                await f.chmod(0o777)
            assert (await f.stat()).size == len(NOTES)
        async with s.sftp.open("/home/u/out.txt", "wb") as f:
            await f.write(b"abc")
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="opened for writing only"):
                await f.read(3, 0)
        assert (s.root / "home/u/notes.txt").read_bytes() == NOTES
        assert (s.root / "home/u/out.txt").read_bytes() == b"abc"

    gate = run(tmp_path, scenario)
    assert [outcome for _, outcome in gate.ended] == [{"bytes_read": 0, "bytes_written": 0},
                                                      {"bytes_read": 0, "bytes_written": 3}]


def test_an_open_for_reading_and_writing_needs_both(tmp_path: Path) -> None:
    read_only = FakeGate(allow=lambda op: op.request == "read")

    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses write of /home/u/notes.txt"):
            await s.sftp.open("/home/u/notes.txt", "r+b")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.open("/home/u/notes.txt", "ab")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.chmod("/home/u/notes.txt", 0o777)

    gate = run(tmp_path, scenario, read_only)
    assert [(op.request, op.action) for op in gate.asked[:2]] == [("read", "open"), ("write", "open")]
    assert ("write", "setstat") == (gate.asked[-1].request, gate.asked[-1].action)


def test_paths_with_nul_or_not_utf8_are_refused_unjudged(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="NUL"):
            await s.sftp.stat(b"/home/u/notes.txt\x00/../../secret/key.txt")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="not UTF-8"):
            await s.sftp.stat(b"/home/u/\xff")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="not UTF-8"):
            await s.sftp.symlink(b"\xfe", b"/home/u/l")

    gate = run(tmp_path, scenario)
    assert gate.paths() == []


def test_upstream_errors_pass_through_with_their_code(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPNoSuchFile) as missing:
            await s.sftp.stat("/home/u/missing")
        assert missing.value.code == FX_NO_SUCH_FILE
        with pytest.raises(asyncssh.SFTPError):
            await s.sftp.rmdir("/home/u/notes.txt")

    run(tmp_path, scenario)


def test_an_unavailable_audit_fails_the_request(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPFailure, match="interceptor: the audit trail is unavailable"):
            await s.sftp.remove("/home/u/notes.txt")
        assert (s.root / "home/u/notes.txt").exists()

    run(tmp_path, scenario, FakeGate(unavailable=True))


def test_the_normal_form_is_judged_before_the_server_is_asked(tmp_path: Path) -> None:
    """A path no rule lets the agent read is refused before the server resolves it: whether
    /secret/sub exists or not, the agent gets the same refusal."""
    CountingUpstream.resolved.clear()

    async def scenario(s: Setup) -> None:
        for path in ("/secret/key.txt", "/secret/sub/x.txt", "/public/../secret/nothing", "/secret"):
            for probe in (s.sftp.stat, s.sftp.lstat, s.sftp.realpath, s.sftp.listdir, s.sftp.remove):
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="rule deny-test"):
                    await probe(path)
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="rule deny-test"):
            await s.sftp.rename("/secret/sub/x.txt", "/home/u/x.txt")

    gate = run(tmp_path, scenario, upstream_class=CountingUpstream)
    assert not [p for p in CountingUpstream.resolved if b"secret" in p], CountingUpstream.resolved
    assert {path for path in gate.paths() if path} == {"/secret/key.txt", "/secret/sub/x.txt", "/secret/nothing",
                                                       "/secret"}


def test_a_failed_resolution_is_told_only_where_the_agent_may_read(tmp_path: Path) -> None:
    """When the server cannot resolve a path whose normal form was allowed, its "no such file"
    reaches the agent only if the agent may read the path: after a read, or a read judged then
    (action resolve, recorded); else the refusal of that read."""
    writes_and_public = FakeGate(allow=lambda op: op.request == "write" or op.action == "stat"
                                 or (op.path or "").startswith("/public"))

    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses read of /home/u/missing/x.txt"):
            await s.sftp.open("/home/u/missing/x.txt", "wb")  # write-only: the server's answer is not told
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="refuses read of /home/u/missing/x.txt"):
            await s.sftp.stat("/home/u/missing/x.txt")  # metadata, allowed by the write: no more
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await s.sftp.stat("/public/missing/x.txt")  # the read of it is allowed: told
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await s.sftp.open("/public/missing/x.txt", "rb")

    gate = run(tmp_path, scenario, writes_and_public, upstream_class=StrictUpstream)
    resolves = [(op.path, op.action) for op in gate.asked if op.action == "resolve"]
    assert resolves == [("/home/u/missing/x.txt", "resolve")] * 2 + [("/public/missing/x.txt", "resolve")]
    assert SshRequest("read", path="/public/missing/x.txt", action="open") in gate.asked


UPLOADS_ONLY = SSH_POLICY[:SSH_POLICY.index("rules:")] + """rules:
  - {name: uploads, effect: allow, agents: [bot], resources: [web], ssh: {write: ["/home/u/**"]}}
"""


def test_uploads_into_a_write_only_glob_see_their_target(tmp_path: Path) -> None:
    """scp and sftp clients stat an upload's target first: with the real policy, a write-only
    glob lets them (metadata), refuses reading the content, and records no false denial."""
    engine = PolicyEngine(load_policy_text(UPLOADS_ONLY, "uploads.yaml"))
    verdicts: list[tuple[str | None, str | None, str]] = []

    def judged(op: SshRequest) -> bool:
        decision = engine.decide(Request(Subject("bot", None, "/usr/bin/agent", 1001), "web", op))
        verdicts.append((op.request, op.action, decision.verdict.value))
        return decision.verdict is Verdict.ALLOW

    local = tmp_path / "report.csv"
    local.write_bytes(b"a,b\n")

    async def scenario(s: Setup) -> None:
        await asyncssh.scp(local, (s.agent, "/home/u/"))
        await s.sftp.put(str(local), "/home/u/again.csv")
        assert (await s.sftp.stat("/home/u/report.csv")).size == 4
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.get("/home/u/report.csv", str(tmp_path / "back.csv"))

    run(tmp_path, scenario, FakeGate(allow=judged), upstream_class=StrictUpstream, allow_scp=True)
    assert (tmp_path / "server/home/u/report.csv").read_bytes() == b"a,b\n"
    assert [v for v in verdicts if v[2] != "allow"] == [("read", "open", "deny")], verdicts
    assert ("read", "stat", "allow") in verdicts


def test_a_new_file_through_a_strict_realpath_takes_the_parent_and_a_link_it_cannot_follow_is_refused(
        tmp_path: Path) -> None:
    """asyncssh's chrooted server cannot read a relative link's text (it resolves it against its
    own working directory): the proxy cannot tell where /home/u/dangling points, and refuses
    it rather than take it for a new name."""
    local = tmp_path / "local.txt"
    local.write_bytes(b"x")

    async def scenario(s: Setup) -> None:
        await s.sftp.put(str(local), "/home/u/brand-new.txt")
        with pytest.raises(asyncssh.SFTPNoSuchFile, match="cannot resolve /home/u/dangling: the server does not tell"):
            await s.sftp.put(str(local), "/home/u/dangling")

    gate = run(tmp_path, scenario, upstream_class=StrictUpstream)
    assert (tmp_path / "server/home/u/brand-new.txt").read_bytes() == b"x"
    assert not (tmp_path / "server/secret/new.txt").exists()
    assert "/home/u/brand-new.txt" in gate.paths("write")


def test_a_dangling_symlink_is_judged_by_where_it_would_create(tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"x")

    async def scenario(s: Setup) -> None:
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="/secret/new.txt"):
            await s.sftp.put(str(local), "/home/u/dangling")

    run(tmp_path, scenario)
    assert not (tmp_path / "server/secret/new.txt").exists()


def test_remote_copy_goes_through_the_handles(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        assert s.sftp.supports_remote_copy
        await s.sftp.remote_copy("/home/u/notes.txt", "/home/u/copy.txt")
        assert (s.root / "home/u/copy.txt").read_bytes() == NOTES

    gate = run(tmp_path, scenario)
    assert {"bytes_read": len(NOTES), "bytes_written": 0} in [outcome for _, outcome in gate.ended]
    assert {"bytes_read": 0, "bytes_written": len(NOTES)} in [outcome for _, outcome in gate.ended]


def test_files_left_open_are_recorded_and_the_upstream_session_ends_with_the_channel(tmp_path: Path) -> None:
    opened: list[asyncssh.SFTPClient] = []

    async def scenario(s: Setup) -> None:
        f = await s.sftp.open("/home/u/left.txt", "wb")
        await f.write(b"12345")
        opened.extend(s.opened)
        s.sftp.exit()
        await s.sftp.wait_closed()
        for _ in range(100):
            if s.gate.ended:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(s.opened[0].wait_closed(), 5)

    gate = run(tmp_path, scenario)
    assert len(opened) == 1
    assert gate.ended == [(SshRequest("write", path="/home/u/left.txt", action="open"),
                           {"bytes_read": 0, "bytes_written": 5})]


def test_statvfs_and_setstat(tmp_path: Path) -> None:
    async def scenario(s: Setup) -> None:
        assert (await s.sftp.statvfs("/home/u")).bsize > 0
        await s.sftp.chmod("/home/u/notes.txt", 0o600)
        assert (s.root / "home/u/notes.txt").stat().st_mode & 0o777 == 0o600
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.chmod("/secret/key.txt", 0o777)

    gate = run(tmp_path, scenario)
    assert [(op.request, op.action) for op in gate.asked] == [("read", "statvfs"), ("write", "setstat"),
                                                              ("write", "setstat")]


def test_every_sftp_server_method_that_would_touch_the_enforcer_is_overridden() -> None:
    """asyncssh's SFTPServer acts on the local file system: none of that may be reached."""
    harmless = {"channel", "connection", "env", "logger", "convert_attrs", "format_longname", "map_path",
                "reverse_map_path", "lock", "unlock"}
    public = {name for name, value in vars(asyncssh.SFTPServer).items()
              if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    assert public - harmless - set(vars(SftpProxy)) == set()


async def openssh(s: Setup, known_hosts: Path, program: str, *args: str) -> tuple[int | None, bytes, bytes]:
    """Runs OpenSSH's `program` (sftp or scp) against the proxy, trusting its host key only."""
    known_hosts.write_text(f"[127.0.0.1]:{s.proxy_port} {HOST_KEY.export_public_key().decode()}")
    process = await asyncio.create_subprocess_exec(
        program, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "IdentityAgent=none",
        "-P", str(s.proxy_port), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out, err


@pytest.mark.skipif(not shutil.which("sftp"), reason="OpenSSH client missing")
def test_openssh_sftp_batch_client(tmp_path: Path) -> None:
    local = tmp_path / "up.txt"
    local.write_bytes(b"from openssh\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} /home/u/up.txt\nget /home/u/notes.txt {tmp_path / 'notes'}\nls /public\n"
                     "ln -s notes.txt ln\nrename up.txt moved.txt\nmkdir d\nrmdir d\n"
                     f"-get /secret/key.txt {tmp_path / 'stolen'}\n-put {local} /secret/planted.txt\n")
    known_hosts = tmp_path / "known_hosts"

    async def scenario(s: Setup) -> None:
        returncode, out, err = await openssh(s, known_hosts, "sftp", "-b", str(batch), "agent@127.0.0.1")
        assert returncode == 0, err.decode()
        assert b"readme.txt" in out
        assert b'"/secret/key.txt" not found' in err  # sftp's glob reads a refused stat so
        assert b"/secret/planted.txt" in err and b"Permission denied" in err
        assert (s.root / "home/u/moved.txt").read_bytes() == b"from openssh\n"
        assert os.readlink(s.root / "home/u/ln") == "notes.txt"  # OpenSSH's symlink argument order understood
        assert not (s.root / "home/u/d").exists()

    gate = run(tmp_path, scenario)
    assert (tmp_path / "notes").read_bytes() == NOTES
    assert not (tmp_path / "stolen").exists() and not (tmp_path / "server/secret/planted.txt").exists()
    assert "/secret/key.txt" in gate.paths("read")
    assert [(op.request, op.action) for op in gate.asked if op.path == "/home/u/d"] == [("write", "mkdir"),
                                                                                        ("write", "rmdir")]


def under(root: Path, directory: str) -> Callable[[SshRequest], bool]:
    return lambda op: not (op.path or "").startswith(f"{root}/{directory}")


@pytest.mark.skipif(not os.path.exists(SFTP_SERVER), reason="OpenSSH's sftp-server missing")
def test_openssh_sftp_server_upstream_resolves_dot_dot_after_a_symlink(tmp_path: Path) -> None:
    """OpenSSH resolves `link/..` physically (the link first, then its parent), where the text
    reads the link's own parent: both readings are judged, and the physical one is denied."""
    root = (tmp_path / "server").resolve()
    gate = FakeGate(allow=under(root, "secret"))
    local = tmp_path / "local.txt"
    local.write_bytes(b"x")

    async def scenario(s: Setup) -> None:
        (root / "secret/sub").mkdir()
        (root / "public/sublink").symlink_to("../secret/sub")
        with pytest.raises(asyncssh.SFTPPermissionDenied, match=f"read of {root}/secret/key.txt"):
            await s.sftp.stat(f"{root}/public/sublink/../key.txt")
        assert await s.sftp.readlink(f"{root}/public/link") == "../secret/key.txt"
        async with s.sftp.open("notes.txt", "rb") as f:
            assert cast(bytes, await f.read()) == NOTES  # opened "rb": bytes
        await s.sftp.symlink("notes.txt", f"{root}/home/u/ln")
        assert os.readlink(root / "home/u/ln") == "notes.txt"
        await s.sftp.link(f"{root}/home/u/notes.txt", f"{root}/home/u/hard")
        await s.sftp.posix_rename(f"{root}/home/u/hard", f"{root}/home/u/hard2")
        assert (root / "home/u/hard2").read_bytes() == NOTES
        async with s.sftp.open(f"{root}/home/u/new.txt", "wb") as f:
            await f.write(b"abc")
            await f.fsync()
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await s.sftp.put(str(local), f"{root}/public/dirlink/planted.txt")

    run(tmp_path, scenario, gate, openssh=True)
    assert gate.asked[:2] == [SshRequest("read", path=f"{root}/public/key.txt", action="stat"),
                              SshRequest("read", path=f"{root}/secret/key.txt", action="stat")]
    assert SshRequest("read", path=f"{root}/home/u/notes.txt", action="open") in gate.asked
    assert (root / "home/u/new.txt").read_bytes() == b"abc"
    assert not (root / "secret/planted.txt").exists()


@pytest.mark.skipif(not os.path.exists(SFTP_SERVER), reason="OpenSSH's sftp-server missing")
def test_a_link_that_cannot_be_resolved_is_judged_where_it_leads(tmp_path: Path) -> None:
    """Where OpenSSH's realpath fails (a loop, a directory on the way missing), the proxy follows
    the links by their text itself, a missing name kept as a name: a private place is refused
    naming it whether it exists, is missing or loops; a loop through readable links is one
    message; a new file through a dangling link to an allowed place is made there."""
    root = (tmp_path / "server").resolve()
    gate = FakeGate(allow=under(root, "secret"))
    local = tmp_path / "local.txt"
    local.write_bytes(b"x")
    links = {"public/l1": "l2", "public/l2": "l1", "public/p": "../secret/lp", "secret/lp": "../public/p",
             "public/q": "../secret/none", "public/m": "../secret/none/../../public/readme.txt",
             "public/n": "../secret/none/lp", "public/made": "../home/u/made.txt"}

    async def scenario(s: Setup) -> None:
        for link, text in links.items():
            (root / link).symlink_to(text)
        answers = {}
        for name in ("p", "q", "n"):
            with pytest.raises(asyncssh.SFTPPermissionDenied) as refused:
                await s.sftp.stat(f"{root}/public/{name}")
            answers[name] = refused.value.reason.replace("none/lp", "X").replace("lp", "X").replace("none", "X")
        assert set(answers.values()) == {f"interceptor: rule deny-test refuses read of {root}/secret/X"}, answers
        with pytest.raises(asyncssh.SFTPNoSuchFile, match="cannot resolve .*/public/l1: too many levels"):
            await s.sftp.stat(f"{root}/public/l1")
        assert (await s.sftp.stat(f"{root}/public/m")).size == len(b"readme\n")
        for name, place in (("p", "lp"), ("q", "none")):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match=f"refuses write of {root}/secret/{place}$"):
                await s.sftp.put(str(local), f"{root}/public/{name}")
        await s.sftp.put(str(local), f"{root}/public/made")

    run(tmp_path, scenario, gate, openssh=True)
    assert (root / "home/u/made.txt").read_bytes() == b"x"
    assert f"{root}/home/u/made.txt" in gate.paths("write")
    assert not [p for p in os.listdir(root / "secret") if p not in ("key.txt", "lp")]


def test_a_move_from_a_private_place_is_refused_alike_whether_it_exists(tmp_path: Path) -> None:
    """The source's resolution is judged with the plain action before the server is asked its
    type: a private file and a private name that is not there get the same refusal (a tree's
    would say more)."""
    async def scenario(s: Setup) -> None:
        for name in ("key.txt", "nothing"):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match=f"refuses read of /secret/{name}$"):
                await s.sftp.rename(f"/public/dirlink/{name}", "/home/u/moved")

    gate = run(tmp_path, scenario)
    assert [(op.path, op.action) for op in gate.asked if (op.path or "").startswith("/secret")] == [
        ("/secret/key.txt", "rename"), ("/secret/nothing", "rename")]


def test_legacy_scp_served_by_asyncssh_on_the_proxy_is_judged_file_by_file(tmp_path: Path) -> None:
    """With allow_scp, asyncssh answers `scp -t` / `scp -f` itself through the SftpProxy: no
    command runs upstream, each file is judged by path."""
    local = tmp_path / "local.txt"
    local.write_bytes(b"via scp\n")

    async def scenario(s: Setup) -> None:
        await asyncssh.scp((s.agent, "/home/u/notes.txt"), tmp_path / "got.txt")
        await asyncssh.scp(local, (s.agent, "/home/u/"))
        with pytest.raises(asyncssh.SFTPError, match="interceptor: rule deny-test"):
            await asyncssh.scp((s.agent, "/secret/key.txt"), tmp_path / "stolen.txt")
        with pytest.raises(asyncssh.SFTPError, match="interceptor: rule deny-test"):
            await asyncssh.scp(local, (s.agent, "/secret/"))

    gate = run(tmp_path, scenario, allow_scp=True)
    assert (tmp_path / "got.txt").read_bytes() == NOTES
    assert (tmp_path / "server/home/u/local.txt").read_bytes() == b"via scp\n"
    assert not (tmp_path / "stolen.txt").exists() and not (tmp_path / "server/secret/local.txt").exists()
    assert SshRequest("read", path="/home/u/notes.txt", action="open") in gate.asked
    assert SshRequest("write", path="/home/u/local.txt", action="open") in gate.asked


@pytest.mark.skipif(not shutil.which("scp"), reason="OpenSSH client missing")
def test_openssh_scp_over_sftp_and_legacy(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"

    async def scenario(s: Setup) -> None:
        for protocol in ("-s", "-O"):  # SFTP (OpenSSH 9's default), then the legacy scp protocol
            returncode, _, err = await openssh(s, known_hosts, "scp", protocol, "agent@127.0.0.1:/home/u/notes.txt",
                                               str(tmp_path / f"got{protocol}"))
            assert returncode == 0, (protocol, err.decode())
            returncode, _, err = await openssh(s, known_hosts, "scp", protocol, "agent@127.0.0.1:/secret/key.txt",
                                               str(tmp_path / f"stolen{protocol}"))
            assert returncode != 0 and err, err.decode()

    gate = run(tmp_path, scenario, allow_scp=True)
    assert (tmp_path / "got-s").read_bytes() == NOTES and (tmp_path / "got-O").read_bytes() == NOTES
    assert not (tmp_path / "stolen-s").exists() and not (tmp_path / "stolen-O").exists()
    assert gate.paths("read").count("/secret/key.txt") >= 2
