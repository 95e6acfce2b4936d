"""The hot modules compiled with Cython, and the guarantee that none of them runs stale.

`HOT` lists the modules the build (`scripts/compile_hot.py`, run by `scripts/install.sh` and
`make compiled`) compiles: a binary `<dotted name><EXT_SUFFIX>` each, in `BUILD_DIR` inside the
package, a name Python's own import system never loads. The build records in `MANIFEST` (beside
this file) the sha256 of the exact source each binary was compiled from. `verify()` runs at
`import interceptor`: it refuses a listed module's binary whose source has changed since, and any
binary beside a source (which Python's import system would prefer to it, and no build of ours
makes), then puts the finder that loads a listed module from its binary on `sys.meta_path`; the
finder checks the binary again at that import (a handler's modules are imported at its first
connection, perhaps after an edit). So a binary never silently runs other code than its `.py`,
and a checkout of older code (its own `import interceptor` knows nothing of `BUILD_DIR`) runs its
own sources. A checkout where the build never ran runs every module as pure Python, from the
same source; `status()` says which modules run compiled (`interceptor doctor`, `interceptor
status`).

This module imports nothing from the package: the build script loads it by path, so a tree
whose binaries are stale can still be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
MANIFEST = "compiled.json"
BUILD_DIR = "_build"

# Chosen from py-spy profiles of the PostgreSQL path (pgbench through the daemon, 8 clients): the
# modules the event-loop thread spends its own time in, each kept when it compiles, passes the
# unit suite and pays. Measured (CPU per transaction, bench/hotpath.py): the session, framing,
# driver and audit record modules take prepared statements from ~100 to ~78 us; the policy
# decision modules below them take a simple-protocol statement's decision from 12.9 to 11.2 us
# (its literals' shape, the rules, the caches) and its daemon CPU by ~4%. Compiling the rest of
# the per-statement path too (handlers/base.py, commands, decision, flow, cursors, catalog,
# result masks, audit/sqlite.py, masking/datarow.py) compiled and passed, but measured no gain.
HOT: tuple[str, ...] = (
    "interceptor.handlers.postgres.session",
    "interceptor.handlers.postgres.frames",
    "interceptor.handlers.postgres.codec",
    "interceptor.handlers.postgres.state",
    "interceptor.handlers.postgres.record",
    "interceptor.enforcer.driver",
    "interceptor.handlers.pipe",
    "interceptor.audit.scrub",
    "interceptor.audit.chain",
    "interceptor.audit.sink",
    "interceptor.audit.event",
    "interceptor.enforcer.judge",
    "interceptor.policy.engine",
    "interceptor.policy.sql_rules",
    "interceptor.policy.sql.shape",
    "interceptor.policy.cache",
    "interceptor.policy.settings",
    "interceptor.textcache",
)

# Cython's options: what a binary was built with is part of its manifest entry, so a change here
# rebuilds everything. annotation_typing=False keeps annotations as documentation: with it on,
# Cython would reject a dict subclass passed where `dict` is annotated, which Python accepts.
CYTHON_OPTIONS: tuple[str, ...] = ("-3", "-X", "annotation_typing=False")
# gcc without debug information (the binaries stay small, the build quick); the rest is the
# interpreter's own flags for extension modules.
EXTRA_CFLAGS: tuple[str, ...] = ("-g0",)


class StaleBuild(ImportError):
    """A compiled hot module whose binary no longer matches its source; the message names the
    file and the command that rebuilds it."""


def source_path(module: str, package: Path = PACKAGE) -> Path:
    """The `.py` of a dotted module name under `package` (the directory of `interceptor`)."""
    return package.joinpath(*module.split(".")[1:]).with_suffix(".py")


def binary_path(module: str, package: Path = PACKAGE) -> Path:
    """Where the build puts a module's binary: `BUILD_DIR/<dotted name><this interpreter's
    extension suffix>` (e.g. `_build/interceptor.audit.chain.cpython-311-x86_64-linux-gnu.so`)."""
    return package / BUILD_DIR / (module + EXTENSION_SUFFIXES[0])


def in_place_path(module: str, package: Path = PACKAGE) -> Path:
    """The binary beside a module's source that Python's import system would load instead of it
    (where builds before `BUILD_DIR` put theirs)."""
    source = source_path(module, package)
    return source.with_name(source.stem + EXTENSION_SUFFIXES[0])


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(package: Path = PACKAGE) -> dict[str, dict[str, str]]:
    """The build's record: module -> {"binary": file name, "source_sha256": hex, "build": the
    Cython version and options}; empty when no build ran."""
    try:
        data: dict[str, dict[str, str]] = json.loads((package / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    return data


def rebuild_command(package: Path = PACKAGE) -> str:
    """The shell command that rebuilds `package`'s binaries: the checkout's build script when
    `package` lives in one, else the same script from the checkout it was installed from."""
    script = package.parent / "scripts" / "compile_hot.py"
    if script.exists():
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    return (f"{shlex.quote(sys.executable)} scripts/compile_hot.py --package {shlex.quote(str(package))}"
            " (from the interceptor checkout this was installed from)")


def _in_place(package: Path) -> Iterator[tuple[str, Path]]:
    """(module, path) of every file under `package` Python's import system would load as an
    extension module: any of this interpreter's extension suffixes, listed module or not."""
    for directory, subdirectories, files in os.walk(package):
        subdirectories.sort()
        parts = (package.name, *Path(directory).relative_to(package).parts)
        for name in sorted(files):
            suffix = next((suffix for suffix in EXTENSION_SUFFIXES if name.endswith(suffix)), None)
            stem = name[: -len(suffix)] if suffix else ""
            if stem and "." not in stem:  # `a.b.so` is no module's binary: none is named `a.b`
                yield ".".join(parts if stem == "__init__" else (*parts, stem)), Path(directory) / name


def _check(module: str, binary: Path, manifest: dict[str, dict[str, str]], package: Path) -> None:
    """StaleBuild unless `binary` is what the build made of `module`'s current source."""
    entry = manifest.get(module)
    source = source_path(module, package)
    if entry is None or binary != binary_path(module, package) or entry["binary"] != binary.name:
        problem = f"{binary} was not made by the build (no record of it in {package / MANIFEST})"
    elif not source.exists() or sha256(source) != entry["source_sha256"]:
        problem = f"{source} changed since {binary.name} was compiled from it"
    else:
        return
    raise StaleBuild(f"{problem}: the compiled module would run other code than its source. "
                     f"Rebuild with: {rebuild_command(package)}")


class _CompiledFinder(MetaPathFinder):
    """Loads a listed module of the package from its binary, checked the moment it is imported
    (the source may have been edited since `import interceptor` checked them all); refuses a
    binary beside a source that the path finder would load."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self.prefix = f"{package.name}."

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        """The spec of a listed module's checked binary; else None (the path finder's spec),
        after StaleBuild for a binary of this package the path finder would load."""
        if not fullname.startswith(self.prefix):
            return None
        binary = binary_path(fullname, self.package)
        if fullname in HOT and binary.exists():
            _check(fullname, binary, read_manifest(self.package), self.package)
            return spec_from_file_location(fullname, binary, loader=ExtensionFileLoader(fullname, str(binary)))
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and isinstance(spec.loader, ExtensionFileLoader) and spec.origin:
            found = Path(spec.origin).resolve()
            if found.is_relative_to(self.package):
                _check(fullname, found, read_manifest(self.package), self.package)
        return None


def verify(package: Path = PACKAGE) -> None:
    """Raise StaleBuild when a listed module's binary is not the build of its current source
    (the source changed or is gone since), or a binary lies beside a source (no build of ours
    puts one there). When `package` is the one this process imports, its finder is put first on
    `sys.meta_path`: listed modules load from their binaries, each checked again as it is
    imported. Cost: a walk of the package and a sha256 of each compiled module's source."""
    package = package.resolve()
    manifest = read_manifest(package)
    for module, binary in _in_place(package):
        _check(module, binary, manifest, package)
    for module in HOT:
        if binary_path(module, package).exists():
            _check(module, binary_path(module, package), manifest, package)
    imported = sys.modules.get(package.name)
    origin = getattr(imported, "__file__", None)
    if origin is not None and Path(origin).resolve().parent == package and not any(
            isinstance(finder, _CompiledFinder) and finder.package == package for finder in sys.meta_path):
        sys.meta_path.insert(0, _CompiledFinder(package))


def status(package: Path = PACKAGE) -> dict[str, list[str]]:
    """{"compiled": [...], "pure_python": [...]}: the listed modules this process runs (or, not
    imported yet, would import) from a binary, and those it runs from their source."""
    compiled: list[str] = []
    pure: list[str] = []
    for module in HOT:
        loaded = sys.modules.get(module)
        origin = getattr(loaded, "__file__", None) if loaded is not None else None
        binary = origin.endswith(tuple(EXTENSION_SUFFIXES)) if origin else binary_path(module, package).exists()
        (compiled if binary else pure).append(module)
    return {"compiled": compiled, "pure_python": pure}


def build_key() -> str:
    """The Cython version and options a binary is built with (recorded per module)."""
    from importlib.metadata import version

    return " ".join((f"cython {version('Cython')}", *CYTHON_OPTIONS, *EXTRA_CFLAGS))


def _compile(module: str, package: Path, workdir: Path) -> str:
    """Compile one module into a binary beside its source (replaced atomically: a running daemon
    keeps the file it mapped); returns the sha256 of the source it compiled. Raises
    subprocess.CalledProcessError with the compiler's output."""
    import subprocess

    source = source_path(module, package)
    digest = sha256(source)
    c_file = workdir / (module + ".c")
    subprocess.run([sys.executable, "-m", "cython", *CYTHON_OPTIONS, "--module-name", module,
                    str(source), "-o", str(c_file)], check=True, capture_output=True, text=True)
    built = workdir / binary_path(module, package).name
    config = sysconfig.get_config_vars()
    subprocess.run([*shlex.split(config["LDSHARED"]), *shlex.split(config["CFLAGS"]),
                    *shlex.split(config["CCSHARED"]), *EXTRA_CFLAGS, f"-I{sysconfig.get_paths()['include']}",
                    str(c_file), "-o", str(built)], check=True, capture_output=True, text=True)
    os.replace(built, binary_path(module, package))
    return digest


def build(package: Path = PACKAGE, jobs: int = 2, say: Callable[[str], None] = print) -> None:
    """Bring `package`'s binaries in line with `HOT` and the sources: compile (`jobs` at a time)
    each listed module whose binary is missing or was built from another source or with other
    options, remove the binaries of modules no longer listed, record each in the manifest as it
    lands. One build at a time per package (a lock on its directory). Raises RuntimeError naming
    the modules that failed to compile, with the compiler's output."""
    import fcntl
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor, as_completed

    lock = os.open(package, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(package)
        key = build_key()
        for module in sorted(set(manifest) - set(HOT)):
            binary_path(module, package).unlink(missing_ok=True)
            del manifest[module]
            say(f"removed the binary of {module} (no longer listed)")
        for module in HOT:  # where builds before BUILD_DIR put theirs: the import system would load them
            in_place_path(module, package).unlink(missing_ok=True)
        (package / BUILD_DIR).mkdir(exist_ok=True)
        stale = [module for module in HOT if not _current(module, package, manifest.get(module), key)]
        failures: list[str] = []
        with tempfile.TemporaryDirectory(prefix="compile-hot-") as tmp, ThreadPoolExecutor(jobs) as pool:
            pending = {pool.submit(_compile, module, package, Path(tmp)): module for module in stale}
            for done in as_completed(pending):
                module = pending[done]
                try:
                    digest = done.result()
                except subprocess.CalledProcessError as exc:
                    failures.append(f"{module}:\n{exc.stdout}{exc.stderr}")
                    continue
                manifest[module] = {"binary": binary_path(module, package).name, "source_sha256": digest,
                                    "build": key}
                _write_manifest(package, manifest)
                say(f"compiled {module}")
        _write_manifest(package, manifest)
        if failures:
            raise RuntimeError("Cython could not compile " + "\n".join(failures))
        say(f"{len(HOT)} hot module{'' if len(HOT) == 1 else 's'} compiled ({len(stale)} rebuilt)")
    finally:
        os.close(lock)


def _current(module: str, package: Path, entry: dict[str, str] | None, key: str) -> bool:
    """Is this module's binary the build of its current source with the current options?"""
    return (entry is not None and entry["build"] == key and binary_path(module, package).exists()
            and sha256(source_path(module, package)) == entry["source_sha256"])


def _write_manifest(package: Path, manifest: dict[str, dict[str, str]]) -> None:
    temporary = package / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, package / MANIFEST)
