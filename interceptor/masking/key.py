"""The key of mask style `hash`: the secret HMAC-SHA256 key ColumnMasker hashes values with
(interceptor.masking.column), so that a value masks to the same digest wherever this key is
used and cannot be guessed back (RFC 2104) by whoever lacks it.

Each host has its own, `<state_dir>/mask.key`: KEY_BYTES random bytes (secrets.token_bytes),
mode 0600, the daemon's user. It is made once, in one atomic step (written to a temporary file
with O_EXCL, then hard-linked into place, which fails if another process got there first), so
two processes creating it at once end up with the same key, as the host CA's key is
(interceptor.certificates).

A fleet that wants the same digests on every host names one file in the settings
(`masking: {hash_key_file: PATH}`), copied to every host: that file is never created, since a
fresh key on one host would silently give other digests than the fleet's.

Either file is refused (MaskKeyError, saying what to do) when it is a symlink or not a regular
file, owned by another user than this process, readable or writable by group or others, or
shorter than KEY_BYTES.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from interceptor.certificates import create_once

KEY_BYTES = 32  # SHA-256's output: RFC 2104 section 3 discourages shorter HMAC keys


class MaskKeyError(Exception):
    """The key of mask style hash cannot be created or loaded; str() says what is wrong and
    what to do."""


def open_mask_key(path: Path, *, create: bool) -> bytes:
    """The key in `path` (KEY_BYTES bytes or more, used whole), checked as the module says;
    when `create` and there is no file at `path`, a new random key is made there first (its
    directory must exist). MaskKeyError when it cannot be made, read, or is refused."""
    if create:
        _create(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MaskKeyError(f"mask key {path} is a symlink: replace it with the file itself") from exc
        if exc.errno == errno.ENOENT:
            raise MaskKeyError(f"mask key {path} (masking.hash_key_file) does not exist: make it once with "
                               f"`head -c {KEY_BYTES} /dev/urandom > {path} && chmod 600 {path}` and copy that "
                               "same file to every host that shares it") from exc
        raise MaskKeyError(f"cannot read mask key {path}: {exc.strerror}") from exc
    try:
        _check(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as file:
            key = file.read()
    finally:
        os.close(fd)
    if len(key) < KEY_BYTES:
        raise MaskKeyError(f"mask key {path} holds {len(key)} bytes, fewer than {KEY_BYTES}: replace it with "
                           f"`head -c {KEY_BYTES} /dev/urandom` (every digest masked with style hash changes)")
    return key


def _create(path: Path) -> None:
    """A new random key at `path`, unless a file (or anything else) is there already or another
    process puts one there first (then that one stays)."""
    if os.path.lexists(path):
        return
    try:
        create_once(path, secrets.token_bytes(KEY_BYTES), 0o600)
    except OSError as exc:
        raise MaskKeyError(f"cannot create mask key {path}: {exc.strerror}") from exc


def _check(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise MaskKeyError(f"mask key {path} is not a regular file: remove it")
    if info.st_uid != os.geteuid():
        raise MaskKeyError(f"mask key {path} is owned by uid {info.st_uid}, not {os.geteuid()} (this process): "
                           f"chown {os.geteuid()} {path}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise MaskKeyError(f"mask key {path} has mode {mode:04o}: it must be readable by its owner only (whoever "
                           f"reads it can tell which value a hash-masked digest stands for); chmod 0600 {path}")
