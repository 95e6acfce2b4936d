"""Upstream credentials, resolved when a handler needs them and never handed to agents.

Sources: a file only root may read (YAML/JSON mapping or `user:password`), environment
variables of the daemon, or a command (e.g. a vault CLI) printing the same on stdout.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import yaml


class SecretError(RuntimeError):
    """The credentials cannot be had; the message never contains a secret."""


def _parse(text: str, where: str) -> dict[str, str]:
    """A YAML/JSON mapping (user, password, ...) or one line `user:password`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    line = text.strip()
    if ":" in line and "\n" not in line:
        user, password = line.split(":", 1)
        return {"user": user, "password": password}
    raise SecretError(f"{where}: expected a mapping (user:, password:; for http, kubernetes and mcp resources "
                      "token:, or client_certificate: and client_key:) or one line user:password")


def _from_file(path: Path) -> dict[str, str]:
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretError(f"credentials file {path}: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.geteuid():
        raise SecretError(f"credentials file {path} must be owned by the daemon's user (root) with mode 0600 "
                          f"(is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    return _parse(path.read_text(), f"credentials file {path}")


def _from_env(name: str) -> dict[str, str]:
    if name not in os.environ:
        raise SecretError(f"credentials: environment variable {name} is not set in the daemon")
    return _parse(os.environ[name], f"credentials variable {name}")


async def _from_command(argv: list[str]) -> dict[str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SecretError(f"credentials command {argv[0]} exited with status {proc.returncode}")
    return _parse(out.decode(errors="replace"), f"credentials command {argv[0]}")


async def resolve_credentials(source: dict[str, Any] | None) -> dict[str, str]:
    if not source:
        raise SecretError("the resource names no credentials")
    kind = source.get("from")
    if kind == "file":
        return await asyncio.to_thread(_from_file, Path(source["path"]))
    if kind == "env":
        return _from_env(source["name"])
    if kind == "command":
        return await _from_command(list(source["argv"]))
    raise SecretError(f"unknown credentials source {kind!r} (file, env or command)")
