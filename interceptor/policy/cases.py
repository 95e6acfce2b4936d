"""Table-driven policy tests (`interceptor policy test FILE`): each case is a subject, an
operation and the decision expected; the file format is described in policy/README.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interceptor.decision import Decision
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, KubernetesRequest, Request, SqlQuery, SshCommand, Subject, TcpConnect
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import PolicyError, compose, load_policy

_CASE_KEYS = {"name", "agent", "identity", "process", "resource", "labels", "sql", "http", "kubernetes", "ssh", "tcp",
              "expect"}
_EXPECT_KEYS = {"verdict", "rule", "masks"}


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    passed: bool
    expected: dict[str, Any]
    got: dict[str, Any]
    where: str


class _Catalog:
    """Columns given by the test file: {"schema.table": [columns]}."""

    def __init__(self, tables: Mapping[str, Sequence[str]]) -> None:
        self.tables = {tuple(k.split(".", 1)): tuple(v) for k, v in tables.items()}

    def columns(self, schema: str, table: str) -> Sequence[str] | None:
        return self.tables.get((schema, table))


def run_cases(path: str | Path) -> list[CaseResult]:
    """Run every case of a test file; PolicyError for a malformed file or policy."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}:1:1: cannot read the test file: {exc}"]) from None
    data, marks = compose(text, str(path))
    if not isinstance(data, dict) or "policy" not in data or not isinstance(data.get("cases"), list):
        raise PolicyError([f"{path}:1:1: expected a mapping with 'policy' (path) and 'cases' (list)"])
    policy = load_policy(path.parent / str(data["policy"]))
    engine = PolicyEngine(policy, _Catalog(data.get("catalog") or {}))
    results = []
    for index, case in enumerate(data["cases"]):
        line, col = marks[("cases", index)]
        where = f"{path}:{line}:{col}"
        request, expect = _case(case, where)
        got = _summary(engine.decide(request))
        passed = all(got[k] == (sorted(v) if k == "masks" else v) for k, v in expect.items())
        results.append(CaseResult(str(case.get("name", f"case {index + 1}")), passed, expect, got, where))
    return results


def _case(case: Any, where: str) -> tuple[Request, dict[str, Any]]:
    if not isinstance(case, dict):
        raise PolicyError([f"{where}: a case must be a mapping"])
    unknown = sorted(set(case) - _CASE_KEYS)
    if unknown:
        raise PolicyError([f"{where}: unknown key(s) {', '.join(unknown)} (expected: {', '.join(sorted(_CASE_KEYS))})"])
    for key in ("agent", "resource", "expect"):
        if key not in case:
            raise PolicyError([f"{where}: missing {key!r}"])
    expect = case["expect"]
    if not isinstance(expect, dict) or "verdict" not in expect or set(expect) - _EXPECT_KEYS:
        raise PolicyError([f"{where}: expect must hold verdict and optionally rule, masks"])
    try:
        identity = _identity(case.get("identity"))
        process = case.get("process") or {}
        subject = Subject(case["agent"], identity, process.get("exe"), process.get("uid"))
        return Request(subject, case["resource"], _operation(case), dict(case.get("labels") or {})), dict(expect)
    except (TypeError, KeyError, ValueError) as exc:
        raise PolicyError([f"{where}: bad case: {exc}"]) from None


def _identity(raw: dict[str, Any] | None) -> Identity | None:
    if raw is None:
        return None
    return Identity(issuer=raw.get("issuer", "test"), subject=raw["subject"], client_id=raw.get("client_id"),
                    scopes=frozenset(raw.get("scopes", ())), groups=frozenset(raw.get("groups", ())))


def _operation(case: dict[str, Any]) -> Any:
    kinds = [k for k in ("sql", "http", "kubernetes", "ssh", "tcp") if k in case]
    if len(kinds) != 1:
        raise ValueError("exactly one of sql, http, kubernetes, ssh, tcp is needed")
    kind = kinds[0]
    value = case[kind]
    if kind == "sql":
        return SqlQuery(str(value))
    if kind == "http":
        return HttpRequest(**value)
    if kind == "kubernetes":
        return KubernetesRequest(**value)
    if kind == "ssh":
        return SshCommand(**value) if isinstance(value, dict) else SshCommand(str(value))
    return TcpConnect()


def _summary(decision: Decision) -> dict[str, Any]:
    return {"verdict": decision.verdict.value, "rule": decision.rule,
            "masks": sorted(c for m in decision.masks for c in m.columns), "reason": decision.reason}
