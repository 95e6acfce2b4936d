"""Upstream credentials, resolved when a handler needs them and never handed to agents.

Sources: a file only root may read (YAML/JSON mapping or `user:password`), environment
variables of the daemon, or a command (e.g. a vault CLI) printing the same on stdout.
Mapping values are taken as written (YAML's base schema: `password: 0123` is "0123", not 83;
`password: no` is "no", not False); a value that is not a string (a list, a mapping) is refused.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import yaml

SHAPES = "a mapping (user:, password:; for http, kubernetes and mcp resources token:, or client_certificate: " \
         "and client_key:; for ssh resources private_key_file: or private_key:) or one line user:password"
SHAPE_FIX = f"write {SHAPES}"


class SecretError(RuntimeError):
    """The credentials cannot be had; the message never contains a secret. `fix`: what the
    operator does about it, in one sentence."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class SecretShapeError(SecretError):
    """The source was read but does not hold a mapping of strings or a `user:password` line."""


def _parse(text: str, where: str) -> dict[str, str]:
    """A YAML/JSON mapping of strings (user, password, ...) or one line `user:password`."""
    try:
        data = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds only str, list, dict
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        nested = sorted(str(k) for k, v in data.items() if not isinstance(v, str))
        if nested:
            raise SecretShapeError(f"{where}: the value of {', '.join(nested)} is a list or mapping, not a string",
                                   "give each key one string value")
        return {str(k): v for k, v in data.items()}
    line = text.strip()
    if ":" in line and "\n" not in line:
        user, password = line.split(":", 1)
        return {"user": user, "password": password}
    raise SecretShapeError(f"{where}: expected {SHAPES}", SHAPE_FIX)


def _from_file(path: Path) -> dict[str, str]:
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretError(f"credentials file {path}: {exc.strerror}",
                          f"create {path} (owned by root, mode 0600) or correct the resource's credentials.path") \
            from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.geteuid():
        raise SecretError(f"credentials file {path} must be owned by the daemon's user (root) with mode 0600 "
                          f"(is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})",
                          f"chown root: {path} && chmod 0600 {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretError(f"credentials file {path}: {reason}", f"make {path} a UTF-8 text file root can read") from exc
    return _parse(text, f"credentials file {path}")


def _from_env(name: str) -> dict[str, str]:
    if name not in os.environ:
        raise SecretError(f"credentials: environment variable {name} is not set in the daemon",
                          f"set {name} in the daemon's environment (a systemd drop-in with Environment= or "
                          "EnvironmentFile=) and restart it")
    return _parse(os.environ[name], f"credentials variable {name}")


async def _from_command(argv: list[str], timeout: float | None) -> dict[str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        raise SecretError(f"credentials command {argv[0]}: {exc.strerror}",
                          f"install {argv[0]} or correct the resource's credentials.argv") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SecretError(f"credentials command {argv[0]} gave no answer within {timeout:g} s",
                          "run it by hand as root: it must print the credentials without asking anything "
                          "(log its CLI in first, e.g. a vault token)") from None
    if proc.returncode != 0:
        raise SecretError(f"credentials command {argv[0]} exited with status {proc.returncode}",
                          "run it by hand as root to see its error")
    return _parse(out.decode(errors="replace"), f"credentials command {argv[0]}")


def describe_source(source: dict[str, Any]) -> str:
    """`file PATH`, `env NAME` or `command ARGV0`: where credentials come from, never what they are."""
    kind = source.get("from")
    if kind == "file":
        return f"file {source.get('path')}"
    if kind == "env":
        return f"env {source.get('name')}"
    if kind == "command":
        return f"command {(source.get('argv') or ['?'])[0]}"
    return f"source {kind!r}"


async def resolve_credentials(source: dict[str, Any] | None, timeout: float | None = None) -> dict[str, str]:
    """The mapping `source` (a resource's `credentials:`) gives; `timeout`: seconds a command
    source may take (None: no limit). SecretError (SecretShapeError for a bad shape) otherwise."""
    if not source:
        raise SecretError("the resource names no credentials", "add credentials: to the resource")
    kind = source.get("from")
    if kind == "file":
        return await asyncio.to_thread(_from_file, Path(source["path"]))
    if kind == "env":
        return _from_env(source["name"])
    if kind == "command":
        return await _from_command(list(source["argv"]), timeout)
    raise SecretError(f"unknown credentials source {kind!r} (file, env or command)", "use from: file, env or command")
