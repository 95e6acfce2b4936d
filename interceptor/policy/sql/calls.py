"""The code the server runs for a statement that the statement does not call by name, with a
Catalog: what a cast to a type runs, what user default operator classes of builtin types
run, what each relation read or written runs (a view's definition, row security, triggers,
constraints, defaults, rules), and calls in attribute notation (`t.f` is f(t))."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokenizer_core import Token

from interceptor.policy.catalog import Catalog
from interceptor.policy.sql.lineage import Lineage, Source
from interceptor.policy.sql.names import NO_EXPRESSIONS, Names, code_call
from interceptor.policy.sql.tree import DIALECT, QUERY_NODES, ancestors, ident
from interceptor.policy.sql_functions import written_names
from interceptor.policy.statement import CATALOG_UNKNOWN_FUNCTION, Action, Call, Table, Unsupported, qualified

# Actions that read a relation's rows, so run what it runs when read (Relation.functions),
# and the events (catalog.WRITE_EVENTS) of the writes whose code runs (Relation.write_functions).
_READS_ROWS = frozenset({"select", "update", "delete", "merge"})
_VIEWS = frozenset({"v"})
_WRITE_EVENTS: dict[str, tuple[str, ...]] = {
    "insert": ("insert", "default"), "update": ("update",), "delete": ("delete",), "truncate": ("truncate",),
}


def type_calls(tree: exp.Expr, tokens: list[Token], names: Names) -> list[Call]:
    """What the casts of the statement run (Type.functions: a domain's CHECK constraints,
    a cast's function; docs, 4.2.9 "Type Casts", 8.18 "Domain Types"): every type named
    in an expression (`::`, CAST, a typed literal, a column definition list), not those
    of a table's or function's definition, which run nothing."""
    calls: list[Call] = []
    written = written_names(tokens)
    for node in tree.find_all(exp.DataType, exp.ObjectIdentifier, exp.PseudoType):
        if any(isinstance(a, exp.Properties) or isinstance(a, exp.ColumnDef)
               and not isinstance(a.parent, exp.TableAlias) for a in ancestors(node)):
            continue  # a column, argument or result type of a definition
        for type_ in names.types(node, written):
            calls += [code_call(names.catalog, named, ("type", type_.qualified),
                                f"run by a cast to {type_.qualified}") for named in type_.functions]
    return list(dict.fromkeys(calls))


def opclass_calls(catalog: Catalog | None, kind: str) -> list[Call]:
    """What the default btree and hash operator classes of builtin types run where they
    hold user code (Catalog.opclass_functions): wherever a value of such a type is
    compared, sorted, grouped or hashed (docs, 38.16.6 "System Dependencies on Operator
    Classes"), and a value from no table (a literal, VALUES, a function's result) names no
    type nor relation, so for every statement that evaluates expressions."""
    if catalog is None or kind in NO_EXPRESSIONS:
        return []
    calls: list[Call] = []
    for (type_, opclass), functions in sorted(catalog.opclass_functions.items()):
        via = ("operator", f"class {opclass}, a user default for built-in type {type_}, which may run wherever "
                           "its values are compared, sorted, grouped or hashed")
        calls += [code_call(catalog, named, via, f"of operator class {opclass}") for named in functions]
    return calls


def relation_calls(tree: exp.Expr, catalog: Catalog | None, actions: tuple[Action, ...],
                   locked: set[Table]) -> list[Call]:
    """The functions the relations the statement reaches run without it naming them
    (Relation.functions, Relation.write_functions): what a relation runs when read for
    every relation a statement reads or changes rows of (UPDATE, DELETE and MERGE read the
    rows they change, and row security applies to them; to an INSERT with RETURNING too:
    docs, 5.8 and CREATE POLICY; an INSERT into a view checks its conditions), and what it
    runs when written for the events of each write (a column default on INSERT, or on
    UPDATE ... SET col = DEFAULT; a row lock of SELECT ... FOR UPDATE/SHARE runs only the
    row security policies for UPDATE)."""
    if catalog is None:
        return []
    calls: list[Call] = []
    returning = any(node.args.get("returning") for node in tree.find_all(exp.Insert))
    for action in actions:
        relation = catalog.relation(*action.table) if action.table is not None else None
        if relation is None:
            continue
        reads = action.kind in _READS_ROWS or action.kind == "insert" and (relation.kind in _VIEWS or returning)
        named = [(("read", relation.qualified), f) for f in relation.functions if reads]
        events = _WRITE_EVENTS.get(action.kind, ())
        if action.kind == "update" and action.table in locked and action.columns == frozenset():
            events = ("lock",)  # FOR UPDATE/SHARE: the rows are locked, not changed (no trigger runs)
        elif action.kind == "update" and _sets_default(tree):
            events += ("default",)
        named += [((event, relation.qualified), f) for event, f in relation.written(events)]
        calls += [code_call(catalog, name, via, f"run by {relation.qualified}") for via, name in named]
    return list(dict.fromkeys(calls))


def attribute_calls(tree: exp.Expr, lineage: Lineage) -> list[Call]:
    """Calls in attribute notation (docs, 38.5.3 "SQL Functions on Composite Types",
    8.16.5): `t.f`, `s.t.f` or `(t).f` where f is not a column (a field) of t is f(t),
    f found through the search_path. Judged with every function of that name as a
    candidate; when t is a relation of a complete catalog and the catalog holds no such
    function, an error (catalog-unknown-function: there is no such column either)."""
    catalog = lineage.names.catalog
    if catalog is None:
        return []
    calls: list[Call] = []
    for written, name, source in (a for node in tree.find_all(exp.Column, exp.Dot)
                                  for a in _attributes(node, lineage)):
        fields = lineage.source_columns(source) if source is not None else None
        if fields is not None and name in fields:
            continue
        candidates = catalog.function_candidates(name, lineage.names.path_in_force(), lineage.names.role)
        if candidates:
            calls.append(Call(name, None, candidates, ("attribute", written)))
        elif fields is not None and source is not None and source.table is not None and catalog.complete:
            raise Unsupported(f'"{name}" is neither a column of {qualified(source.table)} nor a function in the '
                              f'catalog (searched: {", ".join(lineage.names.searched())})', CATALOG_UNKNOWN_FUNCTION)
    return calls


def _attributes(node: exp.Expr, lineage: Lineage) -> list[tuple[str, str, Source | None]]:
    """(as written, name, the FROM item it is taken from, None for a column of composite
    type or anything unknown) of each name of a qualified column reference or a field
    selection that may be a column, a field or a call in attribute notation."""
    written = node.sql(dialect=DIALECT)
    queries = [a for a in ancestors(node) if isinstance(a, QUERY_NODES)]
    if not queries:
        return []
    if isinstance(node, exp.Dot):
        if not isinstance(node.expression, exp.Identifier) or isinstance(node.parent, exp.DataType):
            return []  # a call of schema.function, or a type's schema.name
        inner = node.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        source = None
        if isinstance(inner, exp.Column) and not inner.args.get("table") and isinstance(inner.this, exp.Identifier):
            row = str(ident(inner.this))  # (t).f: t is a column if one is so named, else a whole row
            if not any(lineage.may_have(s, row) for query in queries for s in lineage.sources(query).values()):
                source = lineage.named_source(queries, row, None)
        return [(written, str(ident(node.expression)), source)]
    if not node.args.get("table") or not isinstance(node.this, exp.Identifier):
        return []
    if isinstance(node.parent, exp.EQ) and node.arg_key == "this" and isinstance(
            node.parent.parent, (exp.Update, exp.OnConflict)):
        return []  # the column a SET assigns
    name, qualifier = str(ident(node.this)), str(ident(node.args["table"]))
    if node.args.get("db") is None:
        return [(written, name, lineage.named_source(queries, qualifier, None))]
    schema = str(ident(node.args["db"]))
    source = lineage.named_source(queries, qualifier, schema)
    if source is not None:  # schema.table.name
        return [(written, name, source)]
    # item.column.name: the column may be a call too, and then name one of its result
    return [(f"{schema}.{qualifier}", qualifier, lineage.named_source(queries, schema, None)), (written, name, None)]


def _sets_default(tree: exp.Expr) -> bool:
    """Does an UPDATE set a column to DEFAULT (so its default runs)?"""
    return any(isinstance(n, exp.Var) and str(n.this).upper() == "DEFAULT"
               or isinstance(n, exp.Column) and isinstance(n.this, exp.Identifier) and not n.this.quoted
               and not n.args.get("table") and n.this.this.upper() == "DEFAULT"
               for n in tree.find_all(exp.Var, exp.Column))
