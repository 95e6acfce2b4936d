"""Table-driven policy tests (`interceptor policy test FILE`): each case is a subject, an
operation and the decision expected; the file format is described in policy/README.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interceptor.decision import Decision
from interceptor.identity.model import Identity
from interceptor.operations import Operation, Request, Subject
from interceptor.policy.catalog import Catalog
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import Marks, PolicyError, compose, load_policy
from interceptor.protocols import ProtocolSpec, protocols

_COMMON_KEYS = frozenset({"name", "agent", "identity", "process", "resource", "labels", "expect"})
_EXPECT_KEYS = {"verdict", "rule", "masks"}


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    passed: bool
    expected: dict[str, Any]
    got: dict[str, Any]
    where: str


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
    catalog = _catalog(data.get("catalog"), path, marks)
    engine = PolicyEngine(policy, catalog)
    results = []
    for index, case in enumerate(data["cases"]):
        line, col = marks[("cases", index)]
        where = f"{path}:{line}:{col}"
        request, expect = _case(case, where, catalog)
        got = _summary(engine.decide(request))
        passed = all(got[k] == (sorted(v) if k == "masks" else v) for k, v in expect.items())
        results.append(CaseResult(str(case.get("name", f"case {index + 1}")), passed, expect, got, where))
    return results


def _catalog(raw: Any, path: Path, marks: Marks) -> Catalog | None:
    """The file's `catalog:`: None when absent; the short form {"schema.table": [columns]};
    a dump (`interceptor catalog show --json`) inline, told by its "relations", or as a path
    to its JSON file, relative to the test file. PolicyError (file:line:col) for a bad one."""
    if raw is None:
        return None
    line, col = marks[("catalog",)]
    where = f"{path}:{line}:{col}"
    if isinstance(raw, str):
        dump = path.parent / raw
        try:
            raw = json.loads(dump.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyError([f"{where}: cannot read the catalog dump {dump}: {exc.strerror or exc}"]) from None
        except ValueError as exc:
            raise PolicyError([f"{where}: the catalog dump {dump} is not JSON: {exc}"]) from None
        if not isinstance(raw, dict) or "relations" not in raw:
            raise PolicyError([f"{where}: the catalog dump {dump} is not one (expected the object "
                               "`interceptor catalog show RESOURCE --database DB --json` prints)"])
    if not isinstance(raw, dict):
        raise PolicyError([f"{where}: catalog must be a mapping of schema.table to columns, a catalog dump, "
                           "or the path of a dump's JSON file"])
    if "relations" not in raw:
        for table, columns in raw.items():
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                line, col = marks[("catalog", table)]
                raise PolicyError([f"{path}:{line}:{col}: catalog: the columns of {table!r} must be a list of names"])
    try:
        return Catalog.from_dict(raw) if "relations" in raw else Catalog.from_columns(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise PolicyError([f"{where}: bad catalog: {exc}"]) from None


def _case(case: Any, where: str, catalog: Catalog | None) -> tuple[Request, dict[str, Any]]:
    if not isinstance(case, dict):
        raise PolicyError([f"{where}: a case must be a mapping"])
    known = _COMMON_KEYS.union(*({s.operation_key} | s.case_keys for s in protocols()))
    unknown = sorted(set(case) - known)
    if unknown:
        raise PolicyError([f"{where}: unknown key(s) {', '.join(unknown)} (expected: {', '.join(sorted(known))})"])
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
        operation = _operation(case, catalog)
        return Request(subject, case["resource"], operation, dict(case.get("labels") or {})), dict(expect)
    except (TypeError, KeyError, ValueError) as exc:
        raise PolicyError([f"{where}: bad case: {exc}"]) from None


def _identity(raw: dict[str, Any] | None) -> Identity | None:
    if raw is None:
        return None
    return Identity(issuer=raw.get("issuer", "test"), subject=raw["subject"], client_id=raw.get("client_id"),
                    scopes=frozenset(raw.get("scopes", ())), groups=frozenset(raw.get("groups", ())))


def _operation(case: dict[str, Any], catalog: Catalog | None) -> Operation:
    """The case's one operation, read by the parser of the protocol whose key it holds;
    ValueError for none or several, or for another protocol's case keys."""
    specs: list[ProtocolSpec[Any]] = [s for s in protocols() if s.operation_key in case]
    if len(specs) != 1:
        raise ValueError(f"exactly one of {', '.join(s.operation_key for s in protocols())} is needed")
    spec = specs[0]
    for other in protocols():
        for key in sorted(other.case_keys - spec.case_keys):
            if key in case:
                raise ValueError(f"{key} is only for {other.operation_key} cases")
    operation: Operation = spec.parse_case(case, catalog)
    return operation


def _summary(decision: Decision) -> dict[str, Any]:
    return {"verdict": decision.verdict.value, "rule": decision.rule,
            "masks": sorted({*(c for m in decision.masks for c in m.columns), *(p for m in decision.masks for p in m.paths)}),
            "reason": decision.reason}
