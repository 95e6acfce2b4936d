"""What one parsed statement does (sans-IO): its actions on relations and columns, every
function the server runs for it (named, operators, casts, what its relations run), how it
uses base columns, what it changes in the session. Writes hidden in reads are reported as
the writes they are (DML in a CTE or subquery, SELECT ... INTO, SELECT ... FOR UPDATE)."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokenizer_core import Token

from interceptor.policy.sql.calls import attribute_calls, opclass_calls, relation_calls, type_calls
from interceptor.policy.sql.lineage import Lineage
from interceptor.policy.sql.names import Names
from interceptor.policy.sql.tree import RESULT_NODES
from interceptor.policy.sql.uses import Uses
from interceptor.policy.sql.writes import Writes
from interceptor.policy.sql_functions import explicit_operators, function_calls, implicit_operators
from interceptor.policy.sql_session import session_select, set_config_effects
from interceptor.policy.statement import CATALOG_UNAVAILABLE, Action, Call, ColumnRef, Statement, Unsupported

FoundCalls = list[tuple[Call, exp.Expr | None]]


def analyse_tree(tree: exp.Expr, tokens: list[Token], names: Names, source: str, kind: str) -> Statement:
    """The Statement of one statement sqlglot parsed as `tree` (`source`: its text, `kind`:
    its action kind, `tokens`: its tokens, for the names of its function calls), its names
    resolved through `names`. Raises Unsupported for a name that does not resolve, a
    construct the analyser does not model, or a catalog that cannot be read."""
    lineage = Lineage(names)
    writes = Writes(tree, lineage)
    writes.record()
    found = function_calls(tree, tokens)
    calls, nodes = _named_calls(tree, tokens, names, found)
    calls += type_calls(tree, tokens, names)
    calls += opclass_calls(names.catalog, kind)
    calls += attribute_calls(tree, lineage)
    effects = set_config_effects(tree, found)
    copy_out = isinstance(tree, exp.Copy) and not tree.args.get("kind")
    uses = Uses(tree, lineage)
    outputs, filters, computed = uses.columns(nodes, copy_out)
    reads, read_filters = _reads(writes, uses, copy_out)
    actions = tuple(dict.fromkeys((writes.actions + reads) or [Action(kind)]))
    calls += relation_calls(tree, names.catalog, actions, writes.locked)
    if names.unavailable is not None and (calls or any(a.table for a in actions)):
        raise Unsupported(f"the catalog is unavailable ({names.unavailable}): a statement that names a "
                          "relation or calls a function cannot be judged", CATALOG_UNAVAILABLE)
    return Statement(source, kind, actions, tuple(calls), outputs, filters | read_filters, computed=computed,
                     effects=effects, bootstrap=kind == "select" and session_select(tree, found))


def _named_calls(tree: exp.Expr, tokens: list[Token], names: Names,
                 found: FoundCalls) -> tuple[list[Call], dict[int, Call]]:
    """The calls the statement names (`found`, with their candidates) and the functions of
    the operators it writes; and the resolved call of each call node, by node id (calls
    sqlglot kept no node for, found by their word, under negative keys)."""
    calls = [names.call(call) for call, _ in found]
    nodes = {id(node) if node is not None else -index: call
             for index, ((_, node), call) in enumerate(zip(found, calls), 1)}
    calls += [call for schema, name in explicit_operators(tree, tokens) for call in names.operator(schema, name)]
    calls += [call for name in sorted(implicit_operators(tokens)) for call in names.operator(None, name)]
    return calls, nodes


def _reads(writes: Writes, uses: Uses, copy_out: bool) -> tuple[list[Action], frozenset[ColumnRef]]:
    """A `select` action for every relation the statement reads (not one it only writes),
    with the columns read; and the base columns so used outside a result column: every
    column of a relation DDL or COPY FROM reads (they move whole rows, where no result
    column can be masked), and what the definitions of the views read read."""
    filters: set[ColumnRef] = set()
    for table_node in writes.tree.find_all(exp.Table):
        if id(table_node) in writes.targets:
            continue
        table = writes.lineage.base_table(table_node)
        if table is not None and not isinstance(writes.tree, RESULT_NODES) and not copy_out:
            uses.reads[table] = None
            filters.add((*table, "*"))
        elif table is not None:
            uses.reads.setdefault(table, set())
    actions = []
    for table, columns in uses.reads.items():
        actions.append(Action("select", table, None if columns is None else frozenset(columns)))
        filters |= uses.view_reads(table, set())
    return actions, frozenset(filters)
