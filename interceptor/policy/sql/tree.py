"""sqlglot's tree of a statement, read as the server reads it: identifiers, the queries a
name may refer to, FROM items, result lists, and whether a value reaches the client only
as a result column. Shared by every other module of the analyser (postgres dialect)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import overload

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from interceptor.policy.catalog import fold_identifier, truncate_identifier
from interceptor.policy.statement import Unsupported

# sqlglot logs a warning for every statement it keeps as an opaque Command; the analyser
# reports those itself (as opaque kinds), so the warning is noise in the daemon's log.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECT = Postgres()

QUERY_NODES = (exp.Select, exp.Update, exp.Delete, exp.Insert, exp.Merge)
RESULT_NODES = (exp.Select, exp.SetOperation, exp.Values, exp.Insert, exp.Update, exp.Delete, exp.Merge)


@overload
def ident(node: exp.Expr) -> str: ...


@overload
def ident(node: None) -> None: ...


def ident(node: exp.Expr | None) -> str | None:
    """An identifier as the server reads it: unquoted folded (ASCII only) and both truncated
    to 63 bytes (docs, 4.1.1); "*" for a star, None for no node. Raises Unsupported for any
    other expression."""
    if node is None:
        return None
    if isinstance(node, exp.Identifier):
        return truncate_identifier(node.this) if node.quoted else fold_identifier(node.this)
    if isinstance(node, exp.Star):
        return "*"
    raise Unsupported(f"unsupported name expression: {node.sql(dialect=DIALECT)[:60]}")


def column_name(node: exp.Expr) -> str:
    """The name of a column reference or an identifier, as the server reads it; Unsupported
    for any other expression."""
    if isinstance(node, exp.Column):
        name: exp.Expr = node.this
        return ident(name)
    if isinstance(node, exp.Identifier):
        return ident(node)
    raise Unsupported(f"unsupported column expression: {node.sql(dialect=DIALECT)[:60]}")


def is_star(node: exp.Expr) -> bool:
    """Is it `*` or `t.*`?"""
    return isinstance(node, exp.Star) or (isinstance(node, exp.Column) and node.is_star)


def ancestors(node: exp.Expr) -> Iterator[exp.Expr]:
    """The node's parent, its parent's, ... up to the root."""
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def enclosing_queries(node: exp.Expr) -> list[exp.Expr]:
    """The queries whose FROM items a name in `node` may refer to, innermost first: not the
    query a FROM item or a WITH query sits in (docs, 7.2.1.5: a subquery in FROM sees no
    other FROM item of its level unless LATERAL; 7.8: a WITH query sees none), but the
    levels beyond it (a correlated subquery's)."""
    found: list[exp.Expr] = []
    child, skip, lateral = node, False, False
    for parent in ancestors(node):
        if isinstance(parent, exp.Lateral):
            lateral = True
        elif child.arg_key == "this" and (isinstance(parent, (exp.From, exp.Join)) and not lateral
                                          or isinstance(parent, exp.CTE)):
            skip = True
        elif isinstance(parent, QUERY_NODES):
            if not skip:
                found.append(parent)
            skip = lateral = False
        child = parent
    if not found:
        raise Unsupported(f"column outside any query: {node.sql(dialect=DIALECT)[:60]}")
    return found


def cte_query(node: exp.Table, name: str) -> exp.Expr:
    """The query of the WITH query `name` a FROM item refers to, from the innermost WITH
    that has one; Unsupported when none does."""
    for ancestor in ancestors(node):
        with_ = ancestor.args.get("with_")
        if with_ is not None:
            for cte in with_.expressions:
                if ident(cte.args["alias"].this) == name:
                    query: exp.Expr = cte.this
                    return query
    raise Unsupported(f"CTE {name} not found")


def direct_from_items(query: exp.Expr) -> list[exp.Expr]:
    """FROM and JOIN items that belong to `query` itself (for DML also the target)."""
    items: list[exp.Expr] = []
    if isinstance(query, (exp.Update, exp.Delete, exp.Merge, exp.Insert)) and query.this is not None:
        items.append(unwrap(query.this))  # INSERT's: what ON CONFLICT DO UPDATE and RETURNING name
    for key in ("from_", "using"):
        clause = query.args.get(key)
        if isinstance(clause, exp.From):
            items.append(clause.this)
        elif isinstance(clause, list):
            items.extend(clause)
        elif isinstance(clause, exp.Expr):
            items.append(clause)
    items.extend(join.this for join in joins_of(query))
    return [i.this if isinstance(i, exp.Lateral) else i for i in items]


def joins_of(query: exp.Expr) -> list[exp.Expr]:
    """A query's JOINs: a SELECT's own, and those sqlglot hangs on the first FROM item of an
    UPDATE ... FROM or a DELETE ... USING."""
    joins = list(query.args.get("joins") or ())
    if isinstance(query, (exp.Update, exp.Delete)):
        for key in ("from_", "using"):
            clause = query.args.get(key)
            first = clause.this if isinstance(clause, exp.From) else None
            if isinstance(first, exp.Table):
                joins += list(first.args.get("joins") or ())
    return joins


def unwrap(node: exp.Expr) -> exp.Expr:
    """The table of `table (columns)`, or the node itself."""
    if isinstance(node, exp.Schema):
        table: exp.Expr = node.this
        return table
    return node


def direct_tables(query: exp.Expr) -> list[exp.Expr]:
    """The FROM and JOIN items of `query` itself that are table nodes."""
    return [i for i in direct_from_items(query) if isinstance(i, exp.Table)]


def selects(query: exp.Expr) -> list[exp.Expr]:
    """The SELECTs whose projections name a query's columns (each branch of a UNION)."""
    if isinstance(query, exp.SetOperation):
        return selects(query.this) + selects(query.expression)
    if isinstance(query, exp.Subquery):
        return selects(query.this)
    return [query]


def unparen(node: exp.Expr) -> exp.Expr:
    """The expression inside any parentheses around it."""
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def grouping_items(group: exp.Expr) -> list[exp.Expr]:
    """The expressions of GROUP BY, those inside ROLLUP, CUBE and GROUPING SETS (and their
    parenthesised lists) included (docs, 7.2.4)."""
    items: list[exp.Expr] = []
    for item in group.expressions:
        item = unparen(item)
        if isinstance(item, (exp.Rollup, exp.Cube, exp.GroupingSets, exp.Tuple)):
            items += grouping_items(item)
        else:
            items.append(item)
    return items


def output_name(projection: exp.Expr) -> str:
    """A result column's name as the server reads it (an alias or a column's name, folded
    unless quoted; docs, 4.1.1), "?column?" when it has none."""
    if isinstance(projection, exp.Alias) and isinstance(projection.args.get("alias"), exp.Identifier):
        return str(ident(projection.args["alias"]))
    if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Identifier):
        return str(ident(projection.this))
    return projection.alias_or_name or "?column?"


def projection_list(select: exp.Expr) -> list[exp.Expr]:
    """A SELECT's result expressions, or DML's RETURNING list (empty without one)."""
    if isinstance(select, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        returning = select.args.get("returning")
        return list(returning.expressions) if returning is not None else []
    return list(select.expressions)


def selects_into(tree: exp.Expr) -> bool:
    """SELECT ... INTO t: creates t and writes the rows into it (docs, SELECT INTO)."""
    return isinstance(tree, exp.Select) and tree.args.get("into") is not None


def inside(node: exp.Expr, calls: frozenset[int]) -> bool:
    """Is `node` within the arguments of one of these calls (by node id), in its own query?"""
    for parent in ancestors(node):
        if id(parent) in calls:
            return True
        if isinstance(parent, QUERY_NODES):
            return False
    return False


def in_projection(node: exp.Expr) -> bool:
    """True when a column's value reaches the client only as a result column: it sits in a
    SELECT list or RETURNING whose query is the statement's result, a FROM-derived table
    (whose own uses are checked through lineage) or a scalar subquery in such a list; not
    when it orders or partitions a window or an aggregate, or filters one (FILTER): then it
    chooses which rows count, and in what order, which the result shows."""
    child = node
    for parent in ancestors(node):
        if (isinstance(parent, exp.Order) and child.arg_key == "expressions"
                or isinstance(parent, exp.Window) and child.arg_key == "partition_by"
                or isinstance(parent, exp.Filter) and child.arg_key == "expression"):
            return False
        if isinstance(parent, exp.Returning):
            if parent.parent is None:
                raise Unsupported("RETURNING outside a statement")
            return _flows_out(parent.parent)
        if isinstance(parent, exp.Select):
            return child.arg_key == "expressions" and _flows_out(parent)
        if isinstance(parent, QUERY_NODES):
            return False
        child = parent
    return False


def _flows_out(query: exp.Expr) -> bool:
    parent = query.parent
    if parent is None:
        return True
    if isinstance(parent, exp.SetOperation):
        return _flows_out(parent)
    if isinstance(parent, exp.Subquery):
        holder = parent.parent
        if isinstance(holder, (exp.From, exp.Join)):
            return True
        return in_projection(parent)
    if isinstance(parent, exp.CTE):
        return True
    return False
