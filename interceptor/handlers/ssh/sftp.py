"""SFTP through the enforcer: every request the agent's SFTP client sends is judged by path
through the Gate, as a read or a write, then performed on an SFTP session of the upstream
connection (draft-ietf-secsh-filexfer-02, SFTP version 3, with OpenSSH's extensions,
PROTOCOL section 4).

asyncssh decodes the agent's requests and calls one method of SftpProxy per request (its
SFTPServer interface); each method judges, then calls the upstream asyncssh.SFTPClient
opened once per SFTP channel, lazily, and closed when the channel ends. The upstream's
answers go back as they came: an upstream SFTPError keeps its code and message. A refusal
is SFTPError FX_PERMISSION_DENIED "interceptor: <reason>", the reason naming the rule.

What is judged (SshRequest `request` / `action`):

- read: open with READ, or without WRITE (the server then opens the file read-only)
  (`open`), a directory listing (`readdir`), `statvfs`, `readlink`, the target of a new
  symlink (`symlink`), and the source of a rename or hard link (`rename`, `posix-rename`,
  `hardlink`: the content becomes reachable under the new name); and the metadata reads
  `stat`, `lstat` and `realpath` (its answer tells where a symlink points and whether a path
  exists), which the policy allows where reading or writing the path is allowed
  (interceptor.policy.ssh_rules.METADATA_ACTIONS: an upload's first stat of its target);
- write: open with any of WRITE, APPEND, CREAT, TRUNC, EXCL (`open`; an open for reading and
  writing is judged as both), `remove`, `mkdir`, `rmdir`, `setstat`, `lsetstat`, both paths
  of `rename` / `posix-rename`, both paths of `hardlink`, the link path of `symlink`.
- a directory moved or linked: when the source of a rename or hard link, or the target of a
  symlink, is a directory or may be one (the upstream's lstat, or stat for a symlink's
  target, says a directory, an unknown type, or fails), everything below it moves or becomes
  reachable under the new name. Its paths (already judged, both readings, with the plain
  action before the server was asked what they are, so that a refused one gets the same
  refusal whatever is there) are judged again as trees (action
  interceptor.policy.ssh_rules.tree_action(...), e.g. `rename-tree`): the source read and
  written (the target of a symlink read), the destination (the link path) written, each
  reading with everything below it, so an allow glob must end in `/**` over each, and a deny glob that
  may match anything below either refuses it (a deny on `/srv/config/secret.env` refuses
  renaming `/srv/config`).
- realpath of the home directory itself (`.`, what sftp and scp ask first, or any path whose
  two readings are the home directory) is answered unjudged: it tells only the home
  directory's name, which the proxy asks the upstream for itself. Any other realpath is a
  read as above, answered with the server's resolution (the path the proxy judged).
- Through a handle nothing more is judged: reads need a handle judged for reading, writes,
  fsetstat and fsync one judged for writing (else FX_PERMISSION_DENIED); fstat and fstatvfs
  work on any handle. Handles are asyncssh's own, mapped to the proxy's open files, so a
  handle the proxy did not issue is FX_INVALID_HANDLE before it reaches here. An open
  file's end is recorded with
  `gate.finished(authorized, op, {"bytes_read": n, "bytes_written": n})`, op being the
  open's last judgement (the write on the resolved path when it was opened for writing).
- ranges@asyncssh.com (where an open file holds data) is answered "everywhere" without
  asking upstream; limits@openssh.com with asyncssh's own limits.
- Refused whatever the policy: SFTP versions above 3 (open56 is unsupported: the proxy
  serves version 3, asyncssh's default `sftp_version`), byte-range locks, and any extension
  asyncssh does not know.

Paths, as the server will resolve them. A path is bytes on the wire; bytes that are not
UTF-8, or that hold NUL (the server's C library would cut the path there), are refused.
Each path is judged twice when its two readings differ, and the operation needs both
allowed (a deny on either refuses). The normal form is judged first, before the server is
asked anything about the path, so that its answers (a resolution that fails or not) tell
nothing of a path no rule lets the agent reach: a refused path gets the same refusal
whether it exists or not. Only then is it resolved, and the resolution judged likewise: it
is the same path whatever exists past it (below). When the server could not resolve it (the
resolution's directory is missing, its symlinks cannot be followed to an end, or the proxy
refuses what the server answered), that reaches the agent only if the agent may read the
path: the request was a read (not a metadata read), or a read of both readings, judged then
(action `resolve`, recorded), is allowed; else the agent gets that read's refusal
(FX_PERMISSION_DENIED), never the server's answer.

1. the normal form: absolute (a relative path taken against the upstream's home, its
   realpath('.') asked once), `.`, `..` and empty segments resolved as text; what a
   policy author writes globs against;
2. the server's resolution: the upstream's realpath of the path (symlinks and `..` resolved
   the way the server's file system will). For requests that act on the entry itself and
   not what a symlink there points to (lstat, readlink, remove, rename, mkdir, rmdir,
   lsetstat, both names of rename and hardlink, the new name of symlink) it is the realpath
   of the parent plus the last name (unless that name is `.`, `..` or empty: then the
   server resolves the whole path, and so does the proxy). Where the server's realpath
   fails (OpenSSH's, as realpath(3), fails on a path with a missing directory on the way or a
   symlink loop, and a strict one on any missing path), the proxy walks the path itself: the
   parent's resolution plus the name; where the upstream's lstat says a symlink is there (and
   the request follows it), its target text (the upstream's readlink), taken against the
   link's directory as the server does, is walked in turn. A name that is not there stays a
   name, so a dangling symlink resolves to where it points (where a new file would be made)
   and the resolution is the one the server would give if the missing names were
   directories: which of a private path's names exist changes nothing. Symlinks that cannot
   be followed to an end (more than MAX_LINKS, one met twice, a text that is not a path, or
   one the server does not read) resolve to the last one followed, which is judged as the
   resolution, then refused (FX_NO_SUCH_FILE, one message per reason).
   A resolution that is not absolute and in normal form is refused.

Why both: a rule about the name the agent uses must hold even where that name is a symlink
to elsewhere (sshd reads `~/.ssh/authorized_keys` through a `.ssh` symlink, so a write there
is shell class whatever the link points to), and a rule about the real location must hold
when it is reached through a symlink or `..`. Judging only the resolved path loses the
first, only the normal form the second; two judgements (each recorded, and one when the
readings agree) keep deny-by-either and allow-by-both. The request sent upstream carries
the resolved path, so what the server acts on is what was judged.

asyncssh's legacy scp server runs on an SFTPServer too: once the handler has judged an scp
exec as the command it is (interceptor.handlers.ssh.process; asyncssh's own `allow_scp` is
off), it serves `scp -t` / `scp -f` on SftpProxy, every file judged as here, and no command
runs upstream.

Limits: a symlink swapped, or a file replaced by a directory, between the judgement and the
operation (by another channel) is not seen; where a path's resolution goes through a
private symlink to a place the agent may read, the answer (that place's) tells where that
symlink points, as the server's realpath would; a request through a missing directory
followed by `..` acts on the path as if the directory were there; the server's file system
is taken to be case-sensitive and to keep names as sent (Linux): on one that folds case or
normalises Unicode, a glob holds only for the spellings it names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NoReturn, Protocol, cast, runtime_checkable

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.constants import (FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_SYMLINK, FILEXFER_TYPE_UNKNOWN,
                                FX_PERMISSION_DENIED, FXF_APPEND, FXF_CREAT, FXF_EXCL, FXF_READ, FXF_TRUNC, FXF_WRITE)

from interceptor.errors import InterceptorError, Refused
from interceptor.handlers.ssh.gate import Authorized, Gate
from interceptor.operations import SshRequest
from interceptor.policy.ssh_rules import METADATA_ACTIONS, tree_action

READ = "read"
WRITE = "write"
WRITE_FLAGS = FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC | FXF_EXCL
OPEN_FLAGS = FXF_READ | WRITE_FLAGS
LAST_NOT_A_NAME = (b"", b".", b"..")  # a last segment that names no entry of its own
RESOLVE = "resolve"  # the action of a read judged when the server cannot resolve a path
MAX_LINKS = 40  # symlinks a resolution follows before it is taken for a loop (Linux's MAXSYMLINKS)


@runtime_checkable
class SftpContext(Protocol):
    """What SftpProxy needs of the connection it serves (the asyncssh SSHServer of the agent's
    connection, reached as `chan.get_connection().get_owner()`)."""

    gate: Gate

    async def open_sftp(self) -> asyncssh.SFTPClient:
        """A new SFTP session (version 3) on the upstream connection, e.g.
        `await upstream.start_sftp_client()`. The proxy passes paths as bytes, so the path
        encoding does not matter. Raises what asyncssh raises when the server refuses it."""


def refusal(message: str) -> asyncssh.SFTPError:
    """The answer to a request the enforcer refuses: FX_PERMISSION_DENIED with the reason."""
    return asyncssh.SFTPError(FX_PERMISSION_DENIED, f"interceptor: {message}")


def path_text(path: bytes) -> str:
    """The path as text. Raises the refusal of a path holding NUL or bytes that are not UTF-8."""
    if b"\0" in path:
        raise refusal(f"path {path!r} holds a NUL byte")
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        raise refusal(f"path {path!r} is not UTF-8") from None


def normal_form(path: str) -> str:
    """An absolute path with its `.`, `..` and empty segments resolved as text ("/a//b/../c"
    -> "/a/c"; `..` at the root stays at the root, as POSIX path resolution has it)."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            del segments[-1:]
        elif segment not in ("", "."):
            segments.append(segment)
    return "/" + "/".join(segments)


def readable(request: str, action: str) -> bool:
    """Does allowing `request` / `action` on a path let the agent read it (interceptor.policy.
    ssh_rules: a metadata action is also allowed by a write glob)?"""
    return request == READ and action not in METADATA_ACTIONS


def child(directory: str, name: str) -> str:
    """`name` in `directory`, both in normal form."""
    return f"{directory.rstrip('/')}/{name}"


def checked(path: bytes, answer: bytes) -> str:
    """The server's resolution `answer` of `path` as text. Raises the refusal of one that is
    not an absolute path in normal form."""
    text = path_text(answer)
    if normal_form(text) != text:
        raise refusal(f"the server resolved {path!r} to {text!r}, not an absolute path in normal form")
    return text


class Unresolvable(Exception):
    """A path whose symlinks cannot be followed to an end: `link` the last one followed (its
    resolved location), `reason` why (the same whatever the link points to)."""

    def __init__(self, link: str, reason: str) -> None:
        super().__init__(reason)
        self.link = link
        self.reason = reason


@dataclass(slots=True)
class Walk:
    """A resolution under way (SftpProxy._walk): the symlinks followed (their resolved
    locations, in order) and whether the server failed to resolve a path of it."""

    links: list[str]
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """A path the agent named: `normal` its normal form, `resolved` the server's resolution
    (SftpProxy._walk); `walked`: the server could not resolve a path on the way;
    `unresolvable`: why its symlinks could not be followed to an end (then `resolved` is the
    last one followed)."""

    normal: str
    resolved: str
    walked: bool = False
    unresolvable: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths to judge: both readings, once each."""
        return tuple(dict.fromkeys((self.normal, self.resolved)))

    @property
    def wire(self) -> bytes:
        """The path sent upstream."""
        return self.resolved.encode()


@dataclass(slots=True)
class OpenFile:
    """A file the proxy opened upstream for the agent: what it may do through the handle,
    the judgement that opened it (for `finished`) and the bytes moved through it."""

    upstream: asyncssh.SFTPClientFile
    readable: bool
    writable: bool
    operation: SshRequest
    authorized: Authorized
    bytes_read: int = 0
    bytes_written: int = 0

    def seek(self, offset: int, whence: int) -> int:
        """asyncssh answers ranges@asyncssh.com (where a file holds data) by seeking the file
        object with SEEK_DATA and SEEK_HOLE. The proxy knows no holes in an upstream file, so
        data is everywhere: SEEK_DATA stays at `offset`, SEEK_HOLE finds none before the end
        of the range asked (asyncssh's own answer where sparse files are unknown)."""
        return offset if whence == os.SEEK_DATA else sys.maxsize


def open_file(file_obj: object, need: str | None = None) -> OpenFile:
    """The proxy's open file behind a handle; `need` READ or WRITE: what the request does
    through it. Raises FX_INVALID_HANDLE for an object the proxy did not issue, the refusal
    when the handle was not opened for `need`."""
    if not isinstance(file_obj, OpenFile):
        raise asyncssh.SFTPInvalidHandle("interceptor: not a handle the proxy issued")
    if need == READ and not file_obj.readable:
        raise refusal(f"{file_obj.operation.path} was opened for writing only")
    if need == WRITE and not file_obj.writable:
        raise refusal(f"{file_obj.operation.path} was opened for reading only")
    return file_obj


class SftpProxy(asyncssh.SFTPServer):
    """The SFTP server the agent talks to (asyncssh's `sftp_factory`): see the module
    docstring. One per SFTP channel; raises TypeError when the connection's owner does not
    implement SftpContext."""

    def __init__(self, chan: SSHChannel[bytes]) -> None:
        # asyncssh's SFTPServerFactory is typed with SSHChannel; what it hands is the server
        # channel, or the line editor wrapping it (not a subclass) when the session has one
        super().__init__(cast("asyncssh.SSHServerChannel[bytes]", chan))
        owner = chan.get_connection().get_owner()
        if not isinstance(owner, SftpContext):
            raise TypeError(f"the SSH connection's owner {type(owner).__name__} does not implement SftpContext")
        self._context: SftpContext = owner
        self._sftp: asyncssh.SFTPClient | None = None
        self._home: str | None = None

    async def _upstream(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = await self._context.open_sftp()
            except (OSError, asyncssh.Error) as exc:
                raise asyncssh.SFTPFailure(f"interceptor: the server's SFTP session could not start: {exc}") from exc
        return self._sftp

    async def _realpath(self, path: bytes) -> str:
        """The upstream's realpath of `path`, refused unless absolute and in normal form."""
        return checked(path, await (await self._upstream()).realpath(path))

    async def _server_realpath(self, path: bytes) -> str | None:
        """The upstream's realpath of `path` as _realpath, None when the server cannot resolve it."""
        upstream = await self._upstream()
        try:
            answer = await upstream.realpath(path)
        except asyncssh.SFTPError:
            return None
        return checked(path, answer)

    async def _home_directory(self) -> str:
        if self._home is None:
            self._home = await self._realpath(b".")
        return self._home

    async def _walk(self, path: bytes, follow: bool, walk: Walk) -> str:
        """Where `path` leads on the server (see the module docstring): the upstream's
        realpath of it (`follow`, or a last segment that is no name) or of its parent plus the
        last name. Where the server cannot resolve it, the parent's walk plus the last name; a
        symlink there (when `follow`) is followed through its target text (the upstream's
        readlink), taken against the link's directory as the server does. A name that is not
        there stays a name, so the answer does not depend on what exists past it. `walk`: the
        symlinks followed so far, and whether the server failed to resolve a path. Raises
        Unresolvable after MAX_LINKS symlinks, at a symlink met twice, one whose target text is
        not a path, or one the server does not read."""
        parent, slash, name = path.rpartition(b"/")
        if follow or name in LAST_NOT_A_NAME:
            resolved = await self._server_realpath(path)
            if resolved is not None:
                return resolved
            walk.failed = True
        if parent:
            directory = await self._walk(parent, True, walk)
        else:
            directory = "/" if slash else await self._home_directory()
        if name in (b"", b"."):
            return directory
        if name == b"..":
            return directory.rpartition("/")[0] or "/"
        entry = child(directory, path_text(name))
        if not follow:
            return entry
        upstream = await self._upstream()
        try:
            attrs = await upstream.lstat(entry.encode())
        except asyncssh.SFTPNoSuchFile:
            return entry
        except asyncssh.SFTPError:
            attrs = asyncssh.SFTPAttrs(type=FILEXFER_TYPE_SYMLINK)  # what is there is unknown: a symlink maybe
        if attrs.type != FILEXFER_TYPE_SYMLINK:
            return entry
        try:
            text = await upstream.readlink(entry.encode())
        except asyncssh.SFTPError:
            raise Unresolvable(entry, "the server does not tell where a symlink on the way points") from None
        if entry in walk.links or len(walk.links) == MAX_LINKS:
            raise Unresolvable(walk.links[-1], "too many levels of symbolic links")
        walk.links.append(entry)
        if b"\0" in text or not text:
            raise Unresolvable(entry, "a symlink's target is not a path")
        try:
            target = text.decode("utf-8")
        except UnicodeDecodeError:
            raise Unresolvable(entry, "a symlink's target is not a path") from None
        return await self._walk((target if target.startswith("/") else child(directory, target)).encode(), True,
                                walk)

    async def _missing(self, target: Target) -> bool:
        """Is the directory of `target`'s resolution missing on the server (asked only when the
        server could not resolve a path of its walk)?"""
        directory = target.resolved.rpartition("/")[0] or "/"
        return target.walked and await self._server_realpath(directory.encode()) != directory

    async def _may_be_directory(self, path: str, follow: bool) -> bool:
        """Is the resolved `path` a directory, or may it be one: the upstream's stat (lstat
        unless `follow`) says so or an unknown type, or fails?"""
        upstream = await self._upstream()
        try:
            attrs = await (upstream.stat(path.encode()) if follow else upstream.lstat(path.encode()))
        except asyncssh.SFTPError:
            return True
        return attrs.type in (FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_UNKNOWN)

    async def _normal(self, path: bytes, relative_to: str | None = None) -> str:
        """`path`'s normal form, asking the server nothing about it: a relative path is taken
        against the upstream's home, or against the directory of `relative_to` (a symlink's
        target against the link's normal form)."""
        text = path_text(path)
        if text.startswith("/"):
            return normal_form(text)
        base = await self._home_directory() if relative_to is None else relative_to.rpartition("/")[0]
        return normal_form(child(base, text))

    async def _resolved(self, path: bytes, normal: str, follow: bool, may_read: bool,
                        relative_to: Target | None = None) -> Target:
        """Both readings of `path`, whose normal form `normal` has been judged (the server is
        asked about it only now); a relative path against the home, or against the resolved
        directory of `relative_to`. Symlinks that cannot be followed to an end give the last
        one followed, marked (_settle refuses it once it is judged). When the server's answer
        is refused (_realpath), the refusal reaches the agent only if the agent may read
        `normal` (`may_read`: a read of it was judged; else a read of it is judged now, action
        RESOLVE): else the refusal of that read."""
        text = path_text(path)
        asked = path if text.startswith("/") or relative_to is None else \
            child(relative_to.resolved.rpartition("/")[0], text).encode()
        walk = Walk([])
        try:
            return Target(normal, await self._walk(asked, follow, walk), walk.failed)
        except Unresolvable as exc:
            return Target(normal, exc.link, True, exc.reason)
        except asyncssh.SFTPError:
            if not may_read:
                await self._judge(((READ, RESOLVE),), (normal,))
            raise

    async def _settle(self, target: Target, may_read: bool) -> None:
        """After both readings of `target` were judged: when the server could not resolve it
        (its symlinks cannot be followed to an end, or the resolution's directory is missing),
        that reaches the agent only if the agent may read both readings (`may_read`, else a
        read of each judged now, action RESOLVE); else the refusal of that read. Raises it, or
        FX_NO_SUCH_FILE for symlinks that cannot be followed (one message per reason, whatever
        they point to)."""
        if not may_read and (target.unresolvable is not None or await self._missing(target)):
            await self._judge(((READ, RESOLVE),), target.paths)
        if target.unresolvable is not None:
            raise asyncssh.SFTPNoSuchFile(f"interceptor: the server cannot resolve {target.normal}: "
                                          f"{target.unresolvable}")

    async def _judge(self, asks: tuple[tuple[str, str], ...], paths: tuple[str, ...]) -> list[tuple[SshRequest,
                                                                                                   Authorized]]:
        """Each (request, action) of `asks` judged on each of `paths` in turn; the judgements.
        Raises the refusal."""
        judged: list[tuple[SshRequest, Authorized]] = []
        for path in paths:
            for request, action in asks:
                operation = SshRequest(request, path=path, action=action)
                try:
                    judged.append((operation, await self._context.gate.authorize(operation)))
                except Refused as exc:
                    raise refusal(str(exc)) from exc
                except InterceptorError as exc:
                    raise asyncssh.SFTPFailure(f"interceptor: {exc}") from exc
        return judged

    async def _judged(self, path: bytes, request: str, action: str, follow: bool) -> Target:
        """`path` judged for one request: its normal form, then (asked of the server only
        then) its resolution when that differs."""
        asks = ((request, action),)
        normal = await self._normal(path)
        await self._judge(asks, (normal,))
        target = await self._resolved(path, normal, follow, readable(request, action))
        await self._judge(asks, target.paths[1:])
        await self._settle(target, readable(request, action))
        return target

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> OpenFile:
        """SSH_FXP_OPEN (filexfer-02 section 6.3): judged as a read when READ is set or WRITE
        is not (the server then opens read-only), as a write when any write flag is set (both
        for READ|WRITE); unknown flags are refused. The open file the handle maps to."""
        if pflags & ~OPEN_FLAGS:
            raise refusal(f"open flags 0x{pflags:x} hold flags the enforcer does not know")
        reading = bool(pflags & FXF_READ) or not pflags & FXF_WRITE
        writing = bool(pflags & WRITE_FLAGS)
        asks = tuple((request, "open") for request, wanted in ((READ, reading), (WRITE, writing)) if wanted)
        normal = await self._normal(path)
        judged = await self._judge(asks, (normal,))
        target = await self._resolved(path, normal, True, reading)
        judged += await self._judge(asks, target.paths[1:])
        await self._settle(target, reading)
        upstream = await (await self._upstream()).open(target.wire, pflags, attrs, encoding=None)
        operation, authorized = judged[-1]
        return OpenFile(upstream, reading, writing, operation, authorized)

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs) -> NoReturn:
        """SFTP version 5 and 6 opens: the proxy serves version 3 only."""
        raise asyncssh.SFTPOpUnsupported("interceptor: SFTP versions above 3 are not supported")

    async def close(self, file_obj: object) -> None:
        """Close the upstream file and record the open's end with its byte counts."""
        file = open_file(file_obj)
        try:
            await file.upstream.close()
        finally:
            await self._context.gate.finished(file.authorized, file.operation,
                                              {"bytes_read": file.bytes_read, "bytes_written": file.bytes_written})

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset` (b"" at the end: asyncssh answers FX_EOF)."""
        file = open_file(file_obj, READ)
        data: bytes = await file.upstream.read(size, offset)
        file.bytes_read += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write `data` at `offset`; the number of bytes written."""
        file = open_file(file_obj, WRITE)
        written = await file.upstream.write(data, offset)
        file.bytes_written += written
        return written

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        return await open_file(file_obj).upstream.stat()

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        await open_file(file_obj, WRITE).upstream.setstat(attrs)

    async def fstatvfs(self, file_obj: object) -> asyncssh.SFTPVFSAttrs:
        return await open_file(file_obj).upstream.statvfs()

    async def fsync(self, file_obj: object) -> None:
        await open_file(file_obj, WRITE).upstream.fsync()

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        target = await self._judged(path, READ, "stat", follow=True)
        return await (await self._upstream()).stat(target.wire)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        target = await self._judged(path, READ, "lstat", follow=False)
        return await (await self._upstream()).lstat(target.wire)

    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:
        target = await self._judged(path, READ, "statvfs", follow=True)
        return await (await self._upstream()).statvfs(target.wire)

    async def readlink(self, path: bytes) -> bytes:
        target = await self._judged(path, READ, "readlink", follow=False)
        return await (await self._upstream()).readlink(target.wire)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        """The directory's entries as the upstream lists them; judged at the first
        SSH_FXP_READDIR (asyncssh opens the listing lazily)."""
        target = await self._judged(path, READ, "readdir", follow=True)
        async for entry in (await self._upstream()).scandir(target.wire):
            yield entry

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._judged(path, WRITE, "setstat", follow=True)
        await (await self._upstream()).setstat(target.wire, attrs)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._judged(path, WRITE, "lsetstat", follow=False)
        await (await self._upstream()).setstat(target.wire, attrs, follow_symlinks=False)

    async def remove(self, path: bytes) -> None:
        target = await self._judged(path, WRITE, "remove", follow=False)
        await (await self._upstream()).remove(target.wire)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        target = await self._judged(path, WRITE, "mkdir", follow=False)
        await (await self._upstream()).mkdir(target.wire, attrs)

    async def rmdir(self, path: bytes) -> None:
        target = await self._judged(path, WRITE, "rmdir", follow=False)
        await (await self._upstream()).rmdir(target.wire)

    async def _moved(self, oldpath: bytes, newpath: bytes, action: str) -> tuple[Target, Target]:
        """The two paths of a rename or hard link, judged: the source read and written, the
        destination written; their normal forms first, then (once the server has resolved
        them) their resolutions, and both readings as trees when the source may be a
        directory."""
        moved, placed = ((READ, action), (WRITE, action)), ((WRITE, action),)
        source_normal, destination_normal = await self._normal(oldpath), await self._normal(newpath)
        await self._judge(moved, (source_normal,))
        await self._judge(placed, (destination_normal,))
        source = await self._resolved(oldpath, source_normal, False, True)
        destination = await self._resolved(newpath, destination_normal, False, False)
        await self._judge(moved, source.paths[1:])
        await self._judge(placed, destination.paths[1:])
        await self._settle(source, True)
        await self._settle(destination, False)
        if await self._may_be_directory(source.resolved, follow=False):
            tree = tree_action(action)
            await self._judge(((READ, tree), (WRITE, tree)), source.paths)
            await self._judge(((WRITE, tree),), destination.paths)
        return source, destination

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        source, destination = await self._moved(oldpath, newpath, "rename")
        await (await self._upstream()).rename(source.wire, destination.wire)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        source, destination = await self._moved(oldpath, newpath, "posix-rename")
        await (await self._upstream()).posix_rename(source.wire, destination.wire)

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        source, destination = await self._moved(oldpath, newpath, "hardlink")
        await (await self._upstream()).link(source.wire, destination.wire)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """A symlink at `newpath` (a write) pointing to `oldpath` (a read, taken against the
        link's directory when relative), both as trees when the target may be a directory;
        the link's text is sent as the agent wrote it."""
        link_normal = await self._normal(newpath)
        target_normal = await self._normal(oldpath, relative_to=link_normal)
        await self._judge(((WRITE, "symlink"),), (link_normal,))
        await self._judge(((READ, "symlink"),), (target_normal,))
        link = await self._resolved(newpath, link_normal, False, False)
        target = await self._resolved(oldpath, target_normal, True, True, relative_to=link)
        await self._judge(((WRITE, "symlink"),), link.paths[1:])
        await self._judge(((READ, "symlink"),), target.paths[1:])
        await self._settle(link, False)
        await self._settle(target, True)
        if await self._may_be_directory(target.resolved, follow=True):
            await self._judge(((WRITE, tree_action("symlink")),), link.paths)
            await self._judge(((READ, tree_action("symlink")),), target.paths)
        await (await self._upstream()).symlink(oldpath, link.wire)

    async def realpath(self, path: bytes) -> bytes:
        """The server's resolution of `path`, judged as a read unless it is the home directory
        itself (see the module docstring)."""
        asks, home = ((READ, "realpath"),), await self._home_directory()
        normal = await self._normal(path)
        if normal != home:
            await self._judge(asks, (normal,))
        target = await self._resolved(path, normal, True, False)
        if target.paths != (home,):
            await self._judge(asks, target.paths if normal == home else target.paths[1:])
        await self._settle(target, False)
        return target.wire

    def format_user(self, uid: int | None) -> str:
        """The number: the enforcer's user database says nothing of the server's users."""
        return "" if uid is None else str(uid)

    def format_group(self, gid: int | None) -> str:
        """The number: the enforcer's group database says nothing of the server's groups."""
        return "" if gid is None else str(gid)

    async def exit(self) -> None:
        """The SFTP session ended (asyncssh closed its open files first): the agent's channel
        gets exit status 0, as sshd reports sftp-server's (OpenSSH's scp, which speaks SFTP
        by default since 9.0, fails without one), and the upstream session ends."""
        self.channel.exit(0)
        if self._sftp is not None:
            self._sftp.exit()
            await self._sftp.wait_closed()
