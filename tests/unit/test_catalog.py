"""`policy test` files with a catalog: the short form, a dump (inline or a JSON file next
to the test file), a bad one; and a case's search_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from interceptor.decision import Decision
from interceptor.operations import Request, SqlQuery
from interceptor.policy import PolicyError
from interceptor.policy import cases as cases_module
from interceptor.policy.cases import run_cases
from interceptor.policy.catalog import Catalog, Function, Relation

POLICY = """version: 1
resources:
  db: {protocol: postgres, addresses: ["10.0.0.5:5432"]}
agents:
  bot: {uids: [1001]}
rules:
  - {name: read-sales, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select], tables: ["sales.*"]}}
  - {name: mask-card, effect: mask, agents: [bot], resources: [db], mask: {columns: [sales.customers.card]}}
"""

CASE = """  - name: star
    agent: bot
    resource: db
    sql: "SELECT * FROM sales.customers"
    expect: {verdict: allow, rule: read-sales, masks: [sales.customers.card]}
"""

DUMP = Catalog.build(
    [Relation("sales", "customers", "r", ("id", "card"), ("integer", "text"), 16384),
     Relation("sales", "report", "v", ("id",), ("integer",), 16390, ("public.audit_hit",))],
    [Function("public", "audit_hit", ("integer",), "volatile", True, "plpgsql", oid=16400)],
    schemas=("sales", "public"), default_search_path=("sales", "public"), user="owner", database="app")


class Spy:
    """Stands in for PolicyEngine: records what each case asks."""

    requests: list[Request] = []

    def __init__(self, policy: Any, catalog: Catalog | None = None) -> None:
        self.catalog = catalog

    def decide(self, request: Request) -> Decision:
        Spy.requests.append(request)
        return Decision.deny("spy", "recorded")


def write(tmp_path: Path, catalog: str, cases: str = CASE) -> Path:
    (tmp_path / "p.yaml").write_text(POLICY)
    tests = tmp_path / "p.tests.yaml"
    tests.write_text(f"policy: p.yaml\n{catalog}cases:\n{cases}")
    return tests


def asked(tmp_path: Path, catalog: str, cases: str, monkeypatch: pytest.MonkeyPatch) -> list[SqlQuery]:
    monkeypatch.setattr(cases_module, "PolicyEngine", Spy)
    Spy.requests = []
    run_cases(write(tmp_path, catalog, cases))
    return [r.operation for r in Spy.requests if isinstance(r.operation, SqlQuery)]


def test_the_short_form_gives_the_columns_of_tables(tmp_path: Path) -> None:
    (result,) = run_cases(write(tmp_path, "catalog: {sales.customers: [id, card]}\n"))
    assert result.passed, result.got


def test_a_dump_file_next_to_the_test_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "app.json").write_text(json.dumps(DUMP.to_dict()))
    (result,) = run_cases(write(tmp_path, "catalog: dumps/app.json\n"))
    assert result.passed, result.got
    (query,) = asked(tmp_path, "catalog: dumps/app.json\n", CASE, monkeypatch)
    assert query.catalog == DUMP and isinstance(query.catalog, Catalog)
    assert query.catalog.default_search_path == ("sales", "public") and query.catalog.version == DUMP.version


def test_a_dump_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (query,) = asked(tmp_path, f"catalog: {json.dumps(DUMP.to_dict())}\n", CASE, monkeypatch)
    assert query.catalog == DUMP
    report = query.catalog.relation("sales", "report") if isinstance(query.catalog, Catalog) else None
    assert report is not None and report.functions == ("public.audit_hit",)


def test_no_catalog_leaves_it_to_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (query,) = asked(tmp_path, "", CASE, monkeypatch)
    assert query.catalog is None and query.settings == ()


def test_a_cases_search_path_is_the_setting_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASE.replace('    sql: "SELECT * FROM sales.customers"\n',
                        '    sql: "SELECT * FROM customers"\n    search_path: "sales, public"\n')
    (query,) = asked(tmp_path, "catalog: {sales.customers: [id, card]}\n", case, monkeypatch)
    assert query.settings == (("search_path", "sales, public"),)
    assert isinstance(query.catalog, Catalog) and query.catalog.columns("sales", "customers") == ("id", "card")


@pytest.mark.parametrize("catalog, message", [
    ("catalog: missing.json\n", r"p\.tests\.yaml:2:10: cannot read the catalog dump .*missing\.json"),
    ("catalog: bad.json\n", r"p\.tests\.yaml:2:10: the catalog dump .*bad\.json is not JSON"),
    ("catalog: list.json\n", r"p\.tests\.yaml:2:10: the catalog dump .*list\.json is not one"),
    ("catalog: [sales.customers]\n", r"p\.tests\.yaml:2:10: catalog must be a mapping"),
    ("catalog:\n  sales.customers: id\n", r"p\.tests\.yaml:3:20: catalog: the columns of 'sales.customers'"),
    ("catalog: {customers: [id]}\n", r"p\.tests\.yaml:2:10: bad catalog: .*must be schema-qualified"),
    ('catalog: {relations: [{schema: sales, name: t, colour: red}]}\n',
     r"p\.tests\.yaml:2:10: bad catalog: malformed catalog dump"),
    ("catalog: {relations: [], schemas: 5}\n", r"p\.tests\.yaml:2:10: bad catalog"),
])
def test_a_bad_catalog_is_a_policy_error_with_its_place(tmp_path: Path, catalog: str, message: str) -> None:
    (tmp_path / "bad.json").write_text("{relations: ")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(PolicyError, match=message):
        run_cases(write(tmp_path, catalog))


@pytest.mark.parametrize("extra, message", [
    ('    search_path: "sales,"\n', r"p\.tests\.yaml:3:5: bad case: search_path 'sales,' is not"),
    ("    search_path: [sales]\n", r"bad case: search_path \['sales'\] is not"),
])
def test_a_bad_search_path_is_a_policy_error(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        run_cases(write(tmp_path, "", CASE + extra))


def test_search_path_is_only_for_sql(tmp_path: Path) -> None:
    case = "  - {name: t, agent: bot, resource: db, tcp: true, search_path: public, expect: {verdict: allow}}\n"
    with pytest.raises(PolicyError, match="search_path is only for sql cases"):
        run_cases(write(tmp_path, "", case))


def test_a_search_path_skips_schemas_the_role_may_not_use():
    """namespace.c recomputeNamespacePath: a schema without USAGE is not searched."""
    catalog = Catalog.build([Relation("hidden", "orders", columns=("id",)), Relation("public", "orders", columns=("id",))],
                            unusable=("hidden",))
    assert catalog.effective_path(("hidden", "public")) == ("pg_catalog", "public")
    assert catalog.resolve_relation("orders", ("hidden", "public")).schema == "public"
    assert Catalog.from_dict(catalog.to_dict()) == catalog
