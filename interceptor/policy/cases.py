"""Table-driven policy tests (`interceptor policy test FILE`): each case is a subject, an
operation and the decision expected; the file format is described in policy/README.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interceptor.decision import Decision
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, KubernetesRequest, Request, SqlQuery, SshCommand, Subject, TcpConnect
from interceptor.policy.catalog import Catalog, parse_search_path
from interceptor.policy.engine import PolicyEngine
from interceptor.policy.loader import Mark, PolicyError, compose, load_policy

_CASE_KEYS = {"name", "agent", "identity", "process", "resource", "labels", "sql", "search_path", "http", "kubernetes",
              "ssh", "tcp", "expect"}
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


def _catalog(raw: Any, path: Path, marks: dict[tuple, Mark]) -> Catalog | None:
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
        operation = _operation(case, catalog)
        return Request(subject, case["resource"], operation, dict(case.get("labels") or {})), dict(expect)
    except (TypeError, KeyError, ValueError) as exc:
        raise PolicyError([f"{where}: bad case: {exc}"]) from None


def _search_path(case: dict[str, Any]) -> tuple[tuple[str, str | None], ...]:
    """A case's `search_path: "sales, public"`: the setting in force when its SQL runs."""
    if "search_path" not in case:
        return ()
    value = case["search_path"]
    if not isinstance(value, str) or parse_search_path(value) is None:
        raise ValueError(f"search_path {value!r} is not a search_path setting (comma-separated schema names)")
    return (("search_path", value),)


def _identity(raw: dict[str, Any] | None) -> Identity | None:
    if raw is None:
        return None
    return Identity(issuer=raw.get("issuer", "test"), subject=raw["subject"], client_id=raw.get("client_id"),
                    scopes=frozenset(raw.get("scopes", ())), groups=frozenset(raw.get("groups", ())))


def _operation(case: dict[str, Any], catalog: Catalog | None) -> Any:
    kinds = [k for k in ("sql", "http", "kubernetes", "ssh", "tcp") if k in case]
    if len(kinds) != 1:
        raise ValueError("exactly one of sql, http, kubernetes, ssh, tcp is needed")
    kind = kinds[0]
    value = case[kind]
    if "search_path" in case and kind != "sql":
        raise ValueError("search_path is only for sql cases")
    if kind == "sql":
        return SqlQuery(str(value), settings=_search_path(case), catalog=catalog)
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
