"""cgroup v2: where it is mounted, the managed agent subtree, and cgroup ids.

Agents started by `interceptor exec` live in <cgroup2>/interceptor/<agent>. The parent
`interceptor` cgroup is itself registered as the unassigned agent, so a process placed
there without a registered agent cgroup is refused everything rather than let through.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

MANAGED = "interceptor"
FALLBACK_MOUNT = Path("/run/interceptor/cgroup2")


class CgroupError(RuntimeError):
    pass


def find_mount() -> Path | None:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def ensure_mount() -> Path:
    """The cgroup2 mount point, mounting the unified hierarchy if nothing has."""
    found = find_mount()
    if found:
        return found
    FALLBACK_MOUNT.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "cgroup2", "none", str(FALLBACK_MOUNT)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise CgroupError(f"cannot mount cgroup2 at {FALLBACK_MOUNT}: {result.stderr.strip()}")
    return FALLBACK_MOUNT


def cgroup_id(path: Path) -> int:
    """The kernel's cgroup id: on cgroup2 (kernfs) it is the directory's inode number."""
    return os.stat(path).st_ino


def managed_root(mount: Path) -> Path:
    return mount / MANAGED


def agent_cgroup(mount: Path, agent: str) -> Path:
    return managed_root(mount) / agent


def ensure_agent_cgroups(mount: Path, agents: list[str]) -> dict[str, Path]:
    root = managed_root(mount)
    root.mkdir(exist_ok=True)
    paths = {}
    for name in agents:
        path = agent_cgroup(mount, name)
        path.mkdir(exist_ok=True)
        paths[name] = path
    return paths


def resolve(mount: Path, relative: str) -> Path:
    """A configured cgroup path (relative to the cgroup2 mount), which must exist."""
    path = (mount / relative.lstrip("/")).resolve()
    if mount.resolve() not in path.parents and path != mount.resolve():
        raise CgroupError(f"cgroup {relative!r} is outside the cgroup2 mount {mount}")
    if not (path / "cgroup.procs").exists():
        raise CgroupError(f"cgroup {relative!r} does not exist under {mount}")
    return path


def join(path: Path, pid: int = 0) -> None:
    """Move a process (0: the caller) into the cgroup; its future children follow."""
    (path / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")


def process_cgroup(pid: int) -> str:
    """The process's cgroup-v2 path relative to the mount ('' if it has none)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def remove_managed(mount: Path) -> list[str]:
    """Remove empty managed agent cgroups; returns those still holding processes."""
    busy: list[str] = []
    root = managed_root(mount)
    if not root.exists():
        return busy
    for child in root.iterdir():
        if child.is_dir():
            try:
                child.rmdir()
            except OSError:
                busy.append(child.name)
    if not busy:
        try:
            root.rmdir()
        except OSError:
            busy.append(MANAGED)
    return busy
