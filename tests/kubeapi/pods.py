"""What the stand-in's pods do: the log they print and the few commands `exec` can run.

Nothing runs for real. A pod's log is its annotation `stand-in.test/log` (lines) or three
default lines; `logs -f` adds "tick N" every interval. Exec knows echo, whoami, hostname, cat
(files: /etc/hostname, /etc/os-release, the service-account namespace and the JSON object in the
annotation `stand-in.test/files`), ls, env/printenv, date, sleep, true, false and sh -c of one of
these; anything else exits 127 as a missing executable does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import posixpath
import shlex
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .errors import JSON, bad_request

LOG_ANNOTATION = "stand-in.test/log"
FILES_ANNOTATION = "stand-in.test/files"
SLEEP_CAP = 30.0


def container_name(pod: JSON, asked: str | None) -> str:
    """The container a log or exec call means; raises ApiError 400 as the API server words it."""
    names = [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]
    pod_name = pod["metadata"]["name"]
    if asked:
        if asked not in names:
            raise bad_request(f"container {asked} is not valid for pod {pod_name}")
        return asked
    if len(names) != 1:
        raise bad_request(f"a container name must be specified for pod {pod_name}, choose one of: "
                          f"[{' '.join(names)}]")
    return str(names[0])


def log_lines(pod: JSON) -> list[str]:
    annotation = (pod["metadata"].get("annotations") or {}).get(LOG_ANNOTATION)
    if annotation is not None:
        return str(annotation).splitlines()
    name = pod["metadata"]["name"]
    return [f"{name} starting", "listening on :8080", "ready"]


def _stamp(line: str, timestamps: bool) -> bytes:
    moment = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{moment} {line}\n".encode() if timestamps else f"{line}\n".encode()


async def log_stream(pod: JSON, tail: int | None, timestamps: bool, follow: bool, interval: float,
                     alive: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
    """The pod's log; with `follow`, a new line every `interval` seconds while `alive()`."""
    lines = log_lines(pod)
    for line in lines[-tail:] if tail is not None and tail >= 0 else lines:
        yield _stamp(line, timestamps)
    tick = 0
    while follow and alive():
        await asyncio.sleep(interval)
        tick += 1
        yield _stamp(f"tick {tick}", timestamps)


@dataclass
class ExecIO:
    """How a fake command talks to its transport (WebSocket or SPDY streams)."""

    stdout: Callable[[bytes], Awaitable[None]]
    stderr: Callable[[bytes], Awaitable[None]]
    stdin: AsyncIterator[bytes] | None


Command = Callable[[ExecIO], Awaitable[JSON]]  # runs one command; returns the exit Status
CLIENT_GRACE = 2.0  # seconds the client gets to hang up after the exit Status


class ExecSession(ABC):
    """One exec over a transport that multiplexes stdin, stdout, stderr and the error channel
    (WebSocket or SPDY): what runs the command is the same, how bytes move is the subclass's."""

    def __init__(self, wants_stdin: bool) -> None:
        self.wants_stdin = wants_stdin
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()

    @abstractmethod
    async def receive(self, trailing: bytes) -> None:
        """Read the client until it leaves, feeding `stdin` (None: stdin closed)."""

    @abstractmethod
    async def send(self, channel: str, data: bytes) -> None:
        """Write `data` on channel stdout or stderr."""

    @abstractmethod
    async def finish(self, status: JSON) -> None:
        """Close the output channels and write the exit Status on the error channel."""

    async def opened(self) -> None:
        """Wait until the client has opened every channel the command needs."""

    async def stdin_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.stdin.get()) is not None:
            yield chunk

    async def run(self, command: Command, trailing: bytes) -> None:
        receiver = asyncio.ensure_future(self.receive(trailing))
        try:
            await self.opened()
            io = ExecIO(lambda data: self.send("stdout", data), lambda data: self.send("stderr", data),
                        self.stdin_chunks() if self.wants_stdin else None)
            await self.finish(await command(io))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(receiver), CLIENT_GRACE)
        finally:
            receiver.cancel()


def files(pod: JSON) -> dict[str, str]:
    meta = pod["metadata"]
    extra = json.loads((meta.get("annotations") or {}).get(FILES_ANNOTATION, "{}"))
    return {"/etc/hostname": f"{meta['name']}\n", "/etc/os-release": 'PRETTY_NAME="Stand-in Linux"\nID=standin\n',
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace": meta.get("namespace", ""),
            **{str(k): str(v) for k, v in extra.items()}}


def environment(pod: JSON, container: str) -> list[str]:
    spec = next(c for c in pod["spec"]["containers"] if c.get("name", "") == container)
    return [f"HOSTNAME={pod['metadata']['name']}", "PATH=/usr/local/bin:/usr/bin:/bin",
            *(f"{e['name']}={e.get('value', '')}" for e in spec.get("env") or [] if "name" in e)]


async def _cat(pod: JSON, args: list[str], io: ExecIO) -> int:
    if not args:
        if io.stdin is not None:
            async for data in io.stdin:
                await io.stdout(data)
        return 0
    known, status = files(pod), 0
    for path in args:
        if path in known:
            await io.stdout(known[path].encode())
        else:
            await io.stderr(f"cat: {path}: No such file or directory\n".encode())
            status = 1
    return status


async def _ls(pod: JSON, args: list[str], io: ExecIO) -> int:
    directory = posixpath.normpath(args[0] if args else "/")
    names = sorted({path[len(directory):].lstrip("/").split("/")[0] for path in files(pod)
                    if path.startswith(directory.rstrip("/") + "/")})
    if not names:
        await io.stderr(f"ls: cannot access '{directory}': No such file or directory\n".encode())
        return 2
    await io.stdout("".join(f"{name}\n" for name in names).encode())
    return 0


async def run(pod: JSON, container: str, command: list[str], io: ExecIO) -> int:
    """Run `command` in the fake container; returns its exit code."""
    if not command:
        raise bad_request("you must specify at least 1 command")
    name, args = command[0], command[1:]
    simple: dict[str, Callable[[], str]] = {
        "echo": lambda: " ".join(args) + "\n", "whoami": lambda: "root\n",
        "hostname": lambda: f"{pod['metadata']['name']}\n",
        "env": lambda: "".join(f"{line}\n" for line in environment(pod, container)),
        "printenv": lambda: "".join(f"{line}\n" for line in environment(pod, container)),
        "date": lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y\n"),
        "true": lambda: "", "pwd": lambda: "/\n"}
    if name in simple:
        await io.stdout(simple[name]().encode())
        return 0
    if name == "false":
        return 1
    if name == "sleep":
        await asyncio.sleep(min(float(args[0]) if args else 0.0, SLEEP_CAP))
        return 0
    if name == "cat":
        return await _cat(pod, args, io)
    if name == "ls":
        return await _ls(pod, args, io)
    if name in ("sh", "/bin/sh", "bash") and len(args) == 2 and args[0] == "-c":
        return await run(pod, container, shlex.split(args[1]), io)
    await io.stderr(f'exec: "{name}": executable file not found in $PATH\n'.encode())
    return 127


def exit_status(code: int, command: list[str]) -> JSON:
    """The v4 error-channel Status for exit `code` (remotecommand's NonZeroExitCode shape)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {command}, "
                       f"exit code {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
