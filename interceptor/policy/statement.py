"""What the analyser (interceptor.policy.sql) reports about one SQL statement, for the
engine to judge: the actions it takes on which relations, the functions the server will
run for it, its result columns' lineage, and what it changes in the session."""

from __future__ import annotations

from dataclasses import dataclass

from interceptor.policy.catalog import Function
from interceptor.policy.settings import Effect

Table = tuple[str, str]  # (schema, name), identifiers folded as the server folds them
ColumnRef = tuple[str, str, str]  # (schema, table, column); column "*" = all, unknown which

# Builtin rules an analysis error can be reported under (Statement.rule); any other error
# is reported as `sql-not-understood`.
CATALOG_UNKNOWN_RELATION = "catalog-unknown-relation"
CATALOG_UNKNOWN_FUNCTION = "catalog-unknown-function"
CATALOG_UNKNOWN_TYPE = "catalog-unknown-type"
CATALOG_UNAVAILABLE = "catalog-unavailable"
UNSAFE_ENCODING = "builtin-unsafe-encoding"


class Unsupported(Exception):
    """A construct the analyser does not model or a name it cannot resolve: the statement
    is denied, under `rule` (None: sql-not-understood)."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Action:
    """One thing a statement does to one table (table None: touches no table)."""

    kind: str
    table: Table | None = None
    columns: frozenset[str] | None = frozenset()  # None: all columns, which unknown


# In a lineage, the column of a ColumnRef that stands for a relation's whole row (no column
# has an empty name); DERIVED_ROW: the whole row of a derived table (subquery, CTE).
WHOLE_ROW = ""
DERIVED_ROW: ColumnRef = ("", "", WHOLE_ROW)
# pg_catalog functions that write a row's columns as JSON members named after them (docs,
# 9.16 "JSON Functions and Operators"): a whole row passed alone to one is masked member by member.
JSON_ROW_FUNCTIONS = frozenset({"row_to_json", "to_json", "to_jsonb", "json_agg", "jsonb_agg"})


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One result column and the base columns its values derive from.

    rows: the relations ((schema, name); ("", "") for a derived table) whose whole row the
    value embeds; shape: how, when it is exactly one relation's whole row in a form the
    masker can rewrite field by field ("record": the composite itself, "json": a JSON object
    per row), with that relation as `row`; None otherwise."""

    position: int
    name: str
    sources: frozenset[ColumnRef]
    rows: frozenset[Table] = frozenset()
    shape: str | None = None
    row: Table | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """A function the server runs for the statement (docs, 10.3 "Functions").

    name: pg_proc.proname as the server looks it up (folded unless quoted); schema: the
    qualifier written, or the one the grammar fixes (EXTRACT(...) is pg_catalog.extract),
    None when the search_path decides; candidates: the catalog's functions the call may
    resolve to (every one of that name in the path: argument types choose among them), None
    without a catalog; via: how the statement reaches a call it does not name: ("read",
    "s.v") reading a relation (a view's definition, row security), ("default", "s.t") the
    column defaults of a relation it writes, (event, "s.t") an INSERT, UPDATE, DELETE or
    TRUNCATE of its rows (triggers, constraints, row security, rules), ("operator", "s.op")
    the function of an operator it names with OPERATOR(), ("type", "s.d") a cast to a type
    (a domain's CHECK constraints, a cast's function), ("attribute", "t.f") attribute
    notation, f(t)."""

    name: str
    schema: str | None = None
    candidates: tuple[Function, ...] | None = None
    via: tuple[str, str] | None = None

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    kind: str
    actions: tuple[Action, ...] = ()
    calls: tuple[Call, ...] = ()
    outputs: tuple[OutputColumn, ...] = ()
    filters: frozenset[ColumnRef] = frozenset()  # base columns used outside result columns
    computed: frozenset[ColumnRef] = frozenset()  # base columns a result column is computed from
    opaque: bool = False  # sqlglot kept it as an uninterpreted Command
    error: str | None = None  # not understood or not resolvable: must be denied
    rule: str | None = None  # the builtin rule `error` is reported under (None: sql-not-understood)
    effects: tuple[Effect, ...] = ()  # what it changes in the session if it succeeds
    bootstrap: bool = False  # what a client runs first (SHOW of a common setting, SELECT version())
    cursor: str | None = None  # DECLARE, FETCH, MOVE, CLOSE: the cursor's name (CLOSE ALL: None)
    hold: bool = False  # DECLARE ... WITH HOLD: the cursor outlives its transaction

    def summary(self) -> dict[str, object]:
        """The audit view of the analysis."""
        return {
            "kind": self.kind,
            "tables": sorted({qualified(a.table) for a in self.actions if a.table}),
            "actions": sorted({f"{a.kind}:{qualified(a.table) if a.table else '-'}" for a in self.actions}),
            "columns": sorted(f"{qualified(a.table)}.{c}" for a in self.actions if a.table
                              for c in (a.columns if a.columns is not None else ("*",))),
            "functions": sorted({c.display for c in self.calls}),
            **({"error": self.error} if self.error else {}),
            **({"cursor": self.cursor, "hold": self.hold} if self.cursor is not None else {}),
        }


def qualified(table: Table) -> str:
    return f"{table[0]}.{table[1]}"
