"""The compiled hot modules (interceptor/compiled.py): a binary runs only while its source is the
one the build compiled it from. Each test builds a one-module package in a temporary directory
(Cython and gcc for real, a few seconds each); the real tree is never touched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from interceptor import compiled

MODULE = "interceptor.hot_sample"


def quiet(line: str) -> None:
    """A build's progress lines, not shown."""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "interceptor"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "hot_sample.py").write_text("def double(x: int) -> int:\n    return 2 * x\n")
    monkeypatch.setattr(compiled, "HOT", (MODULE,))
    return root


def test_without_a_build_every_module_runs_as_pure_python(package: Path) -> None:
    compiled.verify(package)
    assert compiled.status(package) == {"compiled": [], "pure_python": [MODULE]}


def test_a_build_compiles_each_listed_module_once_and_records_its_source(package: Path) -> None:
    lines: list[str] = []
    compiled.build(package, say=lines.append)
    binary = compiled.binary_path(MODULE, package)
    assert compiled.read_manifest(package)[MODULE]["source_sha256"] == compiled.sha256(package / "hot_sample.py")
    compiled.verify(package)
    assert compiled.status(package) == {"compiled": [MODULE], "pure_python": []}
    spec = importlib.util.spec_from_file_location(MODULE, binary)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.double(21) == 42 and module.__file__ == str(binary)

    built = binary.stat().st_mtime_ns
    compiled.build(package, say=lines.append)
    assert binary.stat().st_mtime_ns == built
    assert lines == [f"compiled {MODULE}", "1 hot module compiled (1 rebuilt)", "1 hot module compiled (0 rebuilt)"]


def test_an_edited_source_fails_the_check_naming_the_file_and_the_rebuild_until_rebuilt(package: Path) -> None:
    compiled.build(package, say=quiet)
    source = package / "hot_sample.py"
    source.write_text(source.read_text() + "TRIPLE = 3\n")
    with pytest.raises(compiled.StaleBuild) as stale:
        compiled.verify(package)
    assert f"{source} changed since {compiled.binary_path(MODULE, package).name} was compiled" in str(stale.value)
    assert f"Rebuild with: {compiled.rebuild_command(package)}" in str(stale.value)
    compiled.build(package, say=quiet)
    compiled.verify(package)


def test_a_removed_source_fails_the_check(package: Path) -> None:
    compiled.build(package, say=quiet)
    (package / "hot_sample.py").unlink()
    with pytest.raises(compiled.StaleBuild, match="changed since"):
        compiled.verify(package)


def test_a_binary_no_build_recorded_is_refused(package: Path) -> None:
    compiled.in_place_path(MODULE, package).write_bytes(b"")
    with pytest.raises(compiled.StaleBuild, match="was not made by the build"):
        compiled.verify(package)


def test_a_module_no_longer_listed_loses_its_binary(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled.build(package, say=quiet)
    monkeypatch.setattr(compiled, "HOT", ())
    compiled.build(package, say=quiet)
    assert not compiled.binary_path(MODULE, package).exists()
    assert compiled.read_manifest(package) == {}


def test_a_source_cython_rejects_fails_the_build_naming_the_module(package: Path) -> None:
    (package / "hot_sample.py").write_text("def broken(:\n")
    with pytest.raises(RuntimeError, match=f"Cython could not compile {MODULE}"):
        compiled.build(package, say=quiet)
    assert not compiled.binary_path(MODULE, package).exists()
    compiled.verify(package)


def test_outside_a_checkout_the_rebuild_names_the_installed_package(tmp_path: Path) -> None:
    assert compiled.rebuild_command(tmp_path).endswith(
        f"scripts/compile_hot.py --package {tmp_path} (from the interceptor checkout this was installed from)")


def test_the_rebuild_of_this_checkout_runs_its_script() -> None:
    assert compiled.rebuild_command().endswith(str(compiled.PACKAGE.parent / "scripts" / "compile_hot.py"))


def test_doctor_warns_naming_the_modules_that_run_as_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from interceptor import doctor

    monkeypatch.setattr(compiled, "HOT", ("interceptor.a", "interceptor.b"))
    monkeypatch.setattr(compiled, "status", lambda: {"compiled": ["interceptor.a"], "pure_python": ["interceptor.b"]})
    check = doctor._compiled()
    assert (check.ok, check.needed_for, check.detail) == (
        False, "optional", "1 of 2 run as pure Python (the same code, slower): b")
    assert check.fix.startswith(f"compile them: {compiled.rebuild_command()}")
    monkeypatch.setattr(compiled, "status", lambda: {"compiled": ["interceptor.a", "interceptor.b"], "pure_python": []})
    assert doctor._compiled() == doctor.Check(doctor.COMPILED, True, "all 2 run compiled with Cython",
                                              needed_for="optional")


def test_code_that_knows_no_build_dir_runs_its_own_sources(package: Path) -> None:
    """An older checkout in the same clone (git bisect, a release tried out) imports with the
    plain import system, which never loads a binary of the build: it runs its own sources."""
    compiled.build(package, say=quiet)
    in_place = compiled.in_place_path(MODULE, package)
    assert compiled.binary_path(MODULE, package).exists() and not in_place.exists()
    assert not any(path.name.startswith("hot_sample.") and path.suffix == ".so" for path in package.iterdir())


def test_a_build_removes_a_binary_an_older_build_put_beside_the_source(package: Path) -> None:
    compiled.in_place_path(MODULE, package).write_bytes(b"")
    compiled.build(package, say=quiet)
    assert not compiled.in_place_path(MODULE, package).exists()
    compiled.verify(package)
