"""Decisions per second for SQL queries, cached and uncached, with sqlglot's compiled
modules (sqlglotc) and with its pure-Python ones.

sqlglotc ships no module of its own: it overlays compiled extension modules onto sqlglot's
(sqlglot.tokens.SQLGLOTC_INSTALLED tells). The pure run therefore happens in a child
process whose import system ignores extension modules under `sqlglot`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TypedDict

QUERIES = (
    "SELECT c.id, c.name, o.total FROM public.customers c JOIN public.orders o ON o.customer_id = c.id "
    "WHERE o.status = 'open' ORDER BY o.total DESC LIMIT 50",
    "WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') "
    "SELECT status, count(*) FROM recent GROUP BY status",
    "UPDATE orders SET status = 'shipped' WHERE id = 42",
    "SELECT * FROM customers",
    "SELECT relname FROM pg_catalog.pg_class WHERE relkind = 'r'",
)

_PURE_PYTHON = """
import importlib.machinery as m, sys
class PurePython:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] != 'sqlglot':
            return None
        for entry in (path or sys.path):
            finder = m.FileFinder(entry, (m.SourceFileLoader, m.SOURCE_SUFFIXES),
                                  (m.SourcelessFileLoader, m.BYTECODE_SUFFIXES))
            spec = finder.find_spec(name)
            if spec is not None:
                return spec
        return None
sys.meta_path.insert(0, PurePython())
"""


class Row(TypedDict):
    """One measured run: `engine` sqlglotc or sqlglot, `mode` cached or uncached."""

    engine: str
    mode: str
    decisions_per_s: float


class _Catalog:
    tables = {("public", "customers"): ("id", "name", "email", "card_number"),
              ("public", "orders"): ("id", "customer_id", "status", "total", "created")}

    def columns(self, schema: str, table: str) -> tuple[str, ...] | None:
        return self.tables.get((schema, table))


def _measure(seconds: float) -> list[Row]:
    from interceptor.operations import Request, SqlQuery, Subject
    from interceptor.policy import PolicyEngine, load_policy
    from interceptor.config import SHIPPED_POLICY
    from sqlglot.tokens import SQLGLOTC_INSTALLED

    policy = load_policy(SHIPPED_POLICY)
    subject = Subject("demo")
    rows: list[Row] = []
    for mode in ("cached", "uncached"):
        engine = PolicyEngine(policy, _Catalog(), cache_size=10000 if mode == "cached" else 0)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for text in QUERIES:
                # cache_size 0 keeps nothing, so every decision is analysed afresh
                engine.decide(Request(subject, "demo-db", SqlQuery(text)))
            count += len(QUERIES)
        rows.append({"engine": "sqlglotc" if SQLGLOTC_INSTALLED else "sqlglot", "mode": mode,
                     "decisions_per_s": round(count / (time.perf_counter() - start), 1)})
    return rows


def _child(seconds: float, pure: bool) -> list[Row]:
    code = (_PURE_PYTHON if pure else "") + (
        "import json, sys\nfrom interceptor.policy.bench import _measure\n"
        f"print(json.dumps(_measure({seconds!r})))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows: list[Row] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def run(seconds: float) -> list[Row]:
    """Rows {engine, mode, decisions_per_s}: the compiled run (when sqlglotc is installed)
    and the pure-Python run, each in a fresh process."""
    rows = _child(seconds, pure=True)
    compiled = _child(seconds, pure=False)
    if compiled[0]["engine"] == "sqlglotc":
        rows += compiled
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"{'engine':<10} {'mode':<9} {'decisions/s':>12}"]
    lines += [f"{r['engine']:<10} {r['mode']:<9} {r['decisions_per_s']:>12.1f}" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
