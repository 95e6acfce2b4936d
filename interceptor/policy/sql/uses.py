"""How a statement uses base columns, for masking: its result columns with their lineage and
the whole rows they embed (in a shape the masker can rewrite, or not), the base columns it
uses outside a result column (WHERE, JOIN, ORDER BY, GROUP BY, DISTINCT, set operations,
a volatile call's arguments, COPY ... TO, a view's definition), and those a result column
is computed from; and the columns it reads of each relation."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from interceptor.policy.sql.lineage import Lineage
from interceptor.policy.sql.tree import (
    QUERY_NODES, RESULT_NODES, column_name, enclosing_queries, grouping_items, in_projection, inside, is_star,
    joins_of, projection_list, selects, selects_into, unparen,
)
from interceptor.policy.statement import (
    JSON_ROW_FUNCTIONS, WHOLE_ROW, Call, ColumnRef, OutputColumn, Table, Unsupported,
)


@dataclass(slots=True)
class Uses:
    """The uses of base columns in `tree` (`columns`), and `reads`: the columns read of each
    relation (None: every column, which unknown), filled as they are found."""

    tree: exp.Expr
    lineage: Lineage
    reads: dict[Table, set[str] | None] = field(default_factory=dict)

    def columns(self, nodes: dict[int, Call], copy_out: bool) -> tuple[
            tuple[OutputColumn, ...], frozenset[ColumnRef], frozenset[ColumnRef]]:
        """The statement's result columns, the base columns it uses outside them (`_filters`)
        and those a result column is computed from (`_computed`). `nodes`: the resolved call
        of each call node (by id); the arguments of volatile or set-returning ones are uses."""
        guarded = frozenset(key for key, call in nodes.items() if key > 0 and call.candidates and any(
            f.volatility == "volatile" or f.returns_set for f in call.candidates))
        if copy_out:
            return (), self._copied(guarded), frozenset()
        if not isinstance(self.tree, RESULT_NODES):
            return (), frozenset(), frozenset()
        self._record_reads(self.tree)
        if selects_into(self.tree):  # SELECT ... INTO t: rows written to a new table, as CREATE TABLE AS
            written = {ref for _, refs in self.lineage.query_columns(self.tree) for ref in refs if ref[2] != WHOLE_ROW}
            return (), self._filters(guarded) | written, frozenset()
        return self._outputs(nodes), self._filters(guarded), self._computed(nodes)

    def _copied(self, guarded: frozenset[int]) -> frozenset[ColumnRef]:
        """What COPY ... TO sends, as columns used outside a result column (its rows are
        not masked, so a masked column there is refused): every column its query reads, or
        the columns of the table it names (all of them without a column list)."""
        target = self.tree.this
        if isinstance(target, exp.Subquery):
            self._record_reads(target)
            return self._filters(guarded)
        table_node = target.this if isinstance(target, exp.Schema) else target
        table = self.lineage.base_table(table_node) if isinstance(table_node, exp.Table) else None
        if table is None:
            raise Unsupported("COPY ... TO of something other than a table or a query")
        listed = [column_name(c) for c in target.expressions] if isinstance(target, exp.Schema) else None
        columns = listed if listed is not None else self.lineage.table_columns(table)
        self.reads[table] = set(columns) if columns is not None else None
        return frozenset((*table, c) for c in columns) if columns is not None else frozenset({(*table, "*")})

    def view_reads(self, table: Table, seen: set[Table]) -> frozenset[ColumnRef]:
        """The columns a view's definition reads, through the views it reads: a masked one
        among them may reach any of the view's columns, which the enforcer does not follow
        (RowDescription names the view's), so they count as used outside a result column."""
        relation = self.lineage.names.catalog.relation(*table) if self.lineage.names.catalog is not None else None
        if relation is None or not relation.definition_reads or table in seen:
            return frozenset()
        seen.add(table)
        found: set[ColumnRef] = set()
        for read in relation.definition_reads:
            schema, name, column = read.split(".", 2)
            found.add((schema, name, column))
            found |= self.view_reads((schema, name), seen)
        return frozenset(found)

    def _outputs(self, calls: dict[int, Call]) -> tuple[OutputColumn, ...]:
        """Result columns of the statement (a query's projections, or DML's RETURNING), each
        with the relations whose whole row it embeds and the shape it embeds it in."""
        columns = self.lineage.query_columns(self.tree) if not isinstance(self.tree, exp.Values) else []
        shapes = self._row_shapes(calls)
        outputs = []
        for position, (name, sources) in enumerate(columns):
            rows = frozenset(ref[:2] for ref in sources if ref[2] == WHOLE_ROW)
            shape, row = shapes.get(position, (None, None))
            outputs.append(OutputColumn(position, name, frozenset(r for r in sources if r[2] != WHOLE_ROW),
                                        rows, shape if row is not None and rows == {row} else None, row))
        return tuple(outputs)

    def _row_shapes(self, calls: dict[int, Call]) -> dict[int, tuple[str, Table]]:
        """Result positions that are a whole row of one relation in a shape the masker can
        rewrite field by field (ROW_SHAPES): only for a statement of one SELECT (or RETURNING),
        never a UNION, whose projections before it are not `*`."""
        branches = selects(self.tree) if not isinstance(self.tree, exp.Values) else []
        if len(branches) != 1:
            return {}
        found: dict[int, tuple[str, Table]] = {}
        for position, projection in enumerate(projection_list(branches[0])):
            if is_star(projection):
                break
            shaped = self._row_shape(projection.unalias(), calls)
            if shaped is not None:
                found[position] = shaped
        return found

    def _row_shape(self, node: exp.Expr, calls: dict[int, Call]) -> tuple[str, Table] | None:
        """("record", table) for a bare whole-row reference (its value is the relation's
        composite: record_out / record_send, docs 8.16.6); ("json", table) for one passed
        alone to a JSON function of pg_catalog that writes each column as a member named
        after it (docs 9.16, row_to_json, to_json, to_jsonb, json_agg, jsonb_agg)."""
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            node = node.expression  # pg_catalog.row_to_json(...): the call is judged with its schema
        if isinstance(node, exp.Column):
            table = self._whole_row_table(node)
            return ("record", table) if table is not None else None
        call = calls.get(id(node))
        if call is None and isinstance(node, exp.JSONArrayAgg):  # sqlglot keeps no position for it
            call = next((c for c in calls.values() if c.name == "json_agg"), None)
        if call is None or call.name not in JSON_ROW_FUNCTIONS or not call.candidates:
            return None
        if any(f.schema != "pg_catalog" for f in call.candidates):
            return None  # a function of the path may be the one called
        arguments = [node.this] if isinstance(node, exp.JSONArrayAgg) else list(node.expressions)
        alone = len(arguments) == 1 or (call.name == "row_to_json" and len(arguments) == 2
                                        and isinstance(arguments[1], exp.Boolean))  # pretty_bool
        if not arguments or not isinstance(arguments[0], exp.Column) or not alone:
            return None
        table = self._whole_row_table(arguments[0])
        return ("json", table) if table is not None else None

    def _whole_row_table(self, column: exp.Column) -> Table | None:
        """The relation a column reference is the whole row of, when it is one (with its
        columns known), else None."""
        if column.is_star:
            return None
        rows = [ref[:2] for ref in self.lineage.resolve(column) if ref[2] == WHOLE_ROW]
        if len(rows) != 1 or self.lineage.table_columns(rows[0]) is None:
            return None
        return rows[0]

    def _record_reads(self, root: exp.Expr) -> None:
        """Every column reference anywhere adds to the columns read of its base table."""
        for column in root.find_all(exp.Column):
            refs = (self.lineage.star_sources(enclosing_queries(column)[0], column) if column.is_star
                    else self.lineage.resolve(column))
            self._add_reads(refs)
        for star in root.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)):
                self._add_reads(self.lineage.star_sources(enclosing_queries(star)[0], star))

    def _add_reads(self, refs: set[ColumnRef]) -> None:
        for schema, table, column in refs:
            if column == WHOLE_ROW:
                continue
            current = self.reads.setdefault((schema, table), set())
            if column == "*" or current is None:
                self.reads[(schema, table)] = None
            else:
                current.add(column)

    def _filters(self, guarded: frozenset[int] = frozenset()) -> frozenset[ColumnRef]:
        """Base columns used anywhere but a result column: WHERE, JOIN, ORDER BY (also by
        position or output name), GROUP BY, window and aggregate orderings, FILTER, SET values,
        a `*` whose rows go into a write or a COPY, and the arguments of a call in `guarded`
        (node ids of volatile or set-returning calls: a side effect or a row count carries
        them out). A masked column used there would leak through the rows chosen, so the
        engine refuses."""
        found: set[ColumnRef] = set()
        for column in self.tree.find_all(exp.Column):
            if column.is_star:
                if not in_projection(column):
                    found |= self.lineage.star_sources(enclosing_queries(column)[0], column)
            elif not in_projection(column) or inside(column, guarded):
                found |= self.lineage.resolve(column)
        for star in self.tree.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)) and not in_projection(star):
                found |= self.lineage.star_sources(enclosing_queries(star)[0], star)
        for query in self.tree.find_all(exp.Select, exp.SetOperation):
            found |= self._output_references(query) | self._compared_outputs(query)
        for joining in self.tree.find_all(exp.Select, exp.Update, exp.Delete):
            if joins_of(joining):
                found |= self.lineage.joined(joining)[1]  # USING and NATURAL compare columns, as ON does
        return frozenset(ref for ref in found if ref[2] != WHOLE_ROW)

    def _compared_outputs(self, query: exp.Expr) -> set[ColumnRef]:
        """What SELECT DISTINCT, UNION (without ALL), INTERSECT and EXCEPT compare: every
        result column, whose values decide which rows come back and how many."""
        if isinstance(query, exp.Select) and isinstance(query.args.get("distinct"), exp.Distinct) \
                and not query.args["distinct"].args.get("on"):
            return {ref for _, refs in self.lineage.projections(query) for ref in refs}
        if isinstance(query, (exp.Intersect, exp.Except)) or isinstance(query, exp.Union) and query.args.get("distinct"):
            return {ref for _, refs in self.lineage.query_columns(query) for ref in refs}
        return set()

    def _computed(self, calls: dict[int, Call]) -> frozenset[ColumnRef]:
        """Base columns a result column is computed from, rather than being one (or a whole row
        in a shape the masker rewrites): a masked one is refused, since what a computation does
        with the value (an error it raises, the time it takes) could tell it."""
        found: set[ColumnRef] = set()
        for query in self.tree.find_all(*QUERY_NODES, exp.Values):
            items = ([e for t in query.expressions if isinstance(t, exp.Tuple) for e in t.expressions]
                     if isinstance(query, exp.Values) else projection_list(query))
            for projection in items:
                node = projection.unalias()
                while isinstance(node, exp.Paren):
                    node = node.this
                if is_star(projection) or isinstance(node, (exp.Column, exp.Subquery)) \
                        or self._row_shape(node, calls) is not None:
                    continue
                found |= self.lineage.expression_sources(projection)
        return frozenset(ref for ref in found if ref[2] != WHOLE_ROW)

    def _output_references(self, select: exp.Expr) -> set[ColumnRef]:
        """What ORDER BY, GROUP BY and DISTINCT ON of a SELECT (or the ORDER BY of a UNION,
        INTERSECT, EXCEPT) read when they name a result column by its position or its output
        name (docs, 7.5 "Sorting Rows", 7.2.3 "GROUP BY")."""
        items = [o.this for o in (select.args["order"].expressions if select.args.get("order") else [])]
        items += grouping_items(select.args["group"]) if select.args.get("group") else []
        distinct = select.args.get("distinct")  # a UNION's is a flag (UNION ALL or not)
        if isinstance(distinct, exp.Distinct) and distinct.args.get("on"):
            items += list(distinct.args["on"].expressions)
        items = [unparen(i) for i in items]
        named = [i for i in items if isinstance(i, exp.Column) and not i.args.get("table")
                 or isinstance(i, exp.Literal) and not i.is_string]
        if not named:
            return set()
        lineage = self.lineage
        columns = lineage.query_columns(select) if isinstance(select, exp.SetOperation) else lineage.projections(select)
        found: set[ColumnRef] = set()
        for item in named:
            if isinstance(item, exp.Literal):
                position = int(str(item.this)) - 1 if str(item.this).isdigit() else -1
                found |= columns[position][1] if 0 <= position < len(columns) else set()
            else:
                found |= {ref for name, refs in columns if name == column_name(item) for ref in refs}
        return found
