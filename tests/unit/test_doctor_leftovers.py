"""Plain `interceptor doctor` lists hooks a daemon of the other redirect mode left, as an
optional check: they are reported with the fix but do not change the verdict."""

from __future__ import annotations

import pytest

from interceptor import doctor
from interceptor.redirect import leftovers

LEFT = "BPF program redirect_connect4 attached at /sys/fs/cgroup (redirect: bpf)"


def leftovers_check(monkeypatch: pytest.MonkeyPatch, found: list[str]) -> tuple[doctor.Check, list[str | None]]:
    asked: list[str | None] = []

    def find(running_mode: str | None = None) -> list[str]:
        asked.append(running_mode)
        return found

    monkeypatch.setattr(leftovers, "find_leftovers", find)
    monkeypatch.setattr(doctor, "CHECKS", ())
    checks = doctor.run_checks("iptables")
    assert [c.name for c in checks] == [doctor.LEFTOVERS]
    return checks[0], asked


def test_leftovers_are_a_failed_optional_check_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    check, asked = leftovers_check(monkeypatch, [LEFT])
    assert asked == ["iptables"]
    assert (check.ok, check.detail, check.needed_for) == (False, LEFT, "optional")
    assert "`interceptor uninstall`" in check.fix
    assert doctor.verdict([check]) == (True, "ready: BPF redirection")


def test_no_leftovers(monkeypatch: pytest.MonkeyPatch) -> None:
    check, _ = leftovers_check(monkeypatch, [])
    assert (check.ok, check.detail) == (True, "none")
