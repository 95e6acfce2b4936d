"""Column lineage: what each name in a statement's FROM items stands for (a relation, a WITH
query, a subquery, VALUES, a function), and which base columns each column reference,
`*`, expression and query result column reads, through CTEs, subqueries, joins (USING,
NATURAL), alias lists, whole-row references and UNION branches. A ColumnRef's column "*"
is every column of a relation whose columns are unknown; WHOLE_ROW marks a whole row taken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from interceptor.policy.sql.names import Names
from interceptor.policy.sql.tree import (
    DIALECT, QUERY_NODES, ancestors, column_name, cte_query, direct_from_items, enclosing_queries, ident, is_star,
    joins_of, output_name, projection_list, selects, unwrap,
)
from interceptor.policy.statement import DERIVED_ROW, WHOLE_ROW, ColumnRef, Table, Unsupported

_SYSTEM_COLUMNS = ("tableoid", "xmin", "cmin", "xmax", "cmax", "ctid")  # docs, 5.5 "System Columns"
_NO_SYSTEM_COLUMNS = frozenset({"v", "c"})  # views and composite types have none


@dataclass(slots=True)
class Source:
    """What a name in FROM stands for: a base table, or a derived query (CTE/subquery)."""

    table: Table | None = None
    query: exp.Expr | None = None
    columns: tuple[str, ...] | None = None  # column aliases (t AS x(a, b))


@dataclass(slots=True)
class Lineage:
    """The FROM items of a statement's queries and the base columns each column reference,
    result column and expression reads, names resolved through `names`. Remembers what each
    query (by node id) has, so one instance serves one statement's tree."""

    names: Names
    visiting: set[int] = field(default_factory=set)  # queries being expanded (recursive CTEs)
    met: list[int] = field(default_factory=list)  # each time a query being expanded met itself (by id)
    # what each query (by id) has as FROM items and result columns, once worked out
    known_sources: dict[int, dict[str, Source]] = field(default_factory=dict)
    known_columns: dict[int, tuple[tuple[str, frozenset[ColumnRef]], ...]] = field(default_factory=dict)

    # -- relations -----------------------------------------------------------------------

    def table_of(self, node: exp.Expr, lenient: bool = False) -> Table:
        """The relation a table node names (`lenient`: Names.relation's); Unsupported when
        it names none (a cross-database name, or not a name)."""
        if node.args.get("catalog") is not None:
            raise Unsupported(f"three-part table name {node.sql(dialect=DIALECT)} (cross-database)")
        name = ident(node.this) if isinstance(node.this, exp.Identifier) else None
        if name is None:
            raise Unsupported(f"unsupported table expression: {node.sql(dialect=DIALECT)[:60]}")
        return self.names.relation(ident(node.args.get("db")), name, lenient)

    def _is_cte(self, node: exp.Table) -> bool:
        if node.args.get("db") is not None or not isinstance(node.this, exp.Identifier):
            return False
        name = ident(node.this)
        for ancestor in ancestors(node):
            with_ = ancestor.args.get("with_") if isinstance(ancestor, exp.Expr) else None
            if with_ is not None and any(ident(cte.args["alias"].this) == name for cte in with_.expressions):
                return True
        return False

    def base_table(self, node: exp.Table, lenient: bool = False) -> Table | None:
        """The base table a FROM item names; None for CTE references and table functions
        (also ROWS FROM (...), whose functions are FROM items of their own)."""
        if not isinstance(node.this, exp.Identifier):
            if isinstance(node.this, exp.Func) or node.this is None and node.args.get("rows_from"):
                return None
            raise Unsupported(f"unsupported FROM item: {node.sql(dialect=DIALECT)[:60]}")
        return None if self._is_cte(node) else self.table_of(node, lenient)

    def table_columns(self, table: Table) -> tuple[str, ...] | None:
        """A relation's columns in order, from where `*` expands; None when unknown."""
        if self.names.columns is None:
            return None
        found = self.names.columns.columns(*table)
        return tuple(found) if found is not None else None

    # -- columns -------------------------------------------------------------------------

    def sources(self, query: exp.Expr) -> dict[str, Source]:
        """Names visible as FROM items in `query`, alias -> what it stands for (not to be changed)."""
        known = self.known_sources.get(id(query))
        if known is None:
            known = self.known_sources[id(query)] = self._from_items(query)
        return known

    def _from_items(self, query: exp.Expr) -> dict[str, Source]:
        sources: dict[str, Source] = {}
        if isinstance(query, exp.Insert) and isinstance(unwrap(query.this), exp.Table):
            # the row proposed for insertion, in ON CONFLICT DO UPDATE (docs, INSERT)
            sources["excluded"] = Source(table=self.table_of(unwrap(query.this)))
        for item in direct_from_items(query):
            alias_node = item.args.get("alias")
            alias_cols = (tuple(ident(c.this if isinstance(c, exp.ColumnDef) else c) for c in alias_node.columns)
                          if alias_node is not None and alias_node.columns else None)
            alias = ident(alias_node.this) if alias_node is not None and alias_node.this else None
            if isinstance(item, exp.Table):
                if not isinstance(item.this, exp.Identifier):  # a function, or ROWS FROM (functions)
                    name = item.this.sql(dialect=DIALECT).lower() if item.this is not None else ""
                    sources[alias or name] = Source(columns=alias_cols)
                    continue
                name = ident(item.this)
                if self._is_cte(item):
                    sources[alias or name] = Source(query=cte_query(item, name), columns=alias_cols)
                else:
                    sources[alias or name] = Source(table=self.table_of(item), columns=alias_cols)
            elif isinstance(item, exp.Subquery):
                if not isinstance(item.this, (*QUERY_NODES, exp.SetOperation, exp.Values)):
                    raise Unsupported("a parenthesised join in FROM: write its items in the FROM list")
                sources[alias or ""] = Source(query=item.this, columns=alias_cols)
            elif isinstance(item, exp.Values):  # its columns carry what its rows hold
                sources[alias or ""] = Source(query=item, columns=alias_cols)
            else:
                sources[alias or ""] = Source(columns=alias_cols)
        return sources

    def resolve(self, column: exp.Column) -> set[ColumnRef]:
        """The base columns a column reference reads (following CTEs and subqueries). A
        name no FROM item has as a column but one is called reads that item's whole row
        (docs, 8.16.5 "Using Composite Types in Queries"), and so does `t.f` where f is not
        a column of t: it is f(t), attribute notation (38.5.3)."""
        name = column_name(column)
        qualifier: str | None = ident(column.args.get("table")) if column.args.get("table") else None
        queries = enclosing_queries(column)
        if column.args.get("catalog") is not None:
            raise Unsupported(f"column reference of four names: {column.sql(dialect=DIALECT)[:60]}")
        if column.args.get("db") is not None:  # schema.table.column, else item.column.field
            schema = ident(column.args["db"])
            for query in queries:
                source = next((s for s in self.sources(query).values() if s.table == (schema, qualifier)), None)
                if source is not None:
                    return self._column_of(source, name)
            name, qualifier = str(qualifier), schema
        for query in queries:
            sources = self.sources(query)
            if qualifier is not None:
                source = self._qualified_source(sources, qualifier)
                if source is not None:
                    return self._column_of(source, name)
                continue
            candidates = [s for s in sources.values() if self.may_have(s, name)]
            if candidates:
                found: set[ColumnRef] = set()
                for source in candidates:
                    found |= self._from_source(source, name)
                return found
        if qualifier is None:
            for query in queries:
                source = self.sources(query).get(name)
                if source is not None:
                    return self._whole_row(source)
        return set()

    def _column_of(self, source: Source, name: str) -> set[ColumnRef]:
        """What `item.name` reads: the column, or when the item is a relation that has no
        such column, its whole row (name(item), attribute notation)."""
        if source.table is not None:
            fields = self.source_columns(source)
            if fields is not None and name not in fields:
                return self._whole_row(source)
        return self._from_source(source, name)

    @staticmethod
    def _qualified_source(sources: dict[str, Source], qualifier: str) -> Source | None:
        """The FROM item `qualifier.` names: by its alias, or by its table's name."""
        if qualifier in sources:
            return sources[qualifier]
        return next((s for s in sources.values() if s.table and s.table[1] == qualifier), None)

    def _whole_row(self, source: Source) -> set[ColumnRef]:
        """Every base column a FROM item's whole row reads, and a mark that a whole row was
        taken (WHOLE_ROW as the column: of that relation, or of no relation for a derived
        table), which the lineage of result columns carries to the engine: a row embedded in
        one value can only be masked field by field in a shape the masker knows."""
        if source.table is not None:
            known = self.table_columns(source.table)
            columns = {(*source.table, c) for c in known} if known is not None else {(*source.table, "*")}
            return columns | {(*source.table, WHOLE_ROW)}
        if source.query is not None:
            return {ref for _, refs in self.query_columns(source.query) for ref in refs} | {DERIVED_ROW}
        return set()

    def source_columns(self, source: Source) -> tuple[str, ...] | None:
        """The columns a FROM item has, None when unknown: an alias list renames the first
        (docs, 7.2.1.2 "Table and Column Aliases"); a relation other than a view or
        composite type also has the system columns (5.5)."""
        renamed = source.columns or ()
        if source.table is not None:
            known = self.table_columns(source.table)
            if known is None:
                return None
            relation = self.names.catalog.relation(*source.table) if self.names.catalog is not None else None
            system = _SYSTEM_COLUMNS if relation is None or relation.kind not in _NO_SYSTEM_COLUMNS else ()
            return (*renamed, *known[len(renamed):], *system)
        if source.query is not None:
            if id(source.query) in self.visiting:
                return None
            names = [column for column, _ in self.query_columns(source.query)]
            holder = source.query.parent
            alias = holder.args.get("alias") if isinstance(holder, exp.CTE) else None
            declared = tuple(str(ident(c)) for c in alias.columns) if alias is not None else ()
            names = [*declared, *names[len(declared):]]
            return None if "*" in names else (*renamed, *names[len(renamed):])
        return source.columns

    def named_source(self, queries: Sequence[exp.Expr], qualifier: str, schema: str | None) -> Source | None:
        """The FROM item (or INSERT target) `[schema.]qualifier` names in the innermost query
        that has one; None when none does (it is then a column of composite type)."""
        for query in queries:
            sources = dict(self.sources(query))
            if isinstance(query, exp.Insert):
                target = unwrap(query.this)
                table = self.base_table(target) if isinstance(target, exp.Table) else None
                if table is not None:
                    alias = target.args.get("alias")
                    named = ident(alias.this) if alias is not None and alias.this else table[1]
                    sources.setdefault(str(named), Source(table=table))
                    sources.setdefault("excluded", Source(table=table))  # ON CONFLICT's proposed row
            if schema is not None:
                found = next((s for s in sources.values() if s.table == (schema, qualifier)), None)
            else:
                found = self._qualified_source(sources, qualifier)
            if found is not None:
                return found
        return None

    def may_have(self, source: Source, name: str) -> bool:
        """Can `name` be a column of the FROM item: by its columns as renamed by an alias list
        (the ones it does not rename keep their names), `*` expanded; a name it lacks is the
        item's whole row. Unknown columns (None) may be any."""
        if source.table is None and source.query is None:
            return source.columns is not None and name in source.columns
        names = self.source_columns(source)
        return names is None or name in names

    def _from_source(self, source: Source, name: str) -> set[ColumnRef]:
        if source.table is not None:
            if source.columns is not None and name in source.columns:
                known = self.table_columns(source.table)
                if known is None or len(known) <= source.columns.index(name):
                    return {(*source.table, "*")}
                name = known[source.columns.index(name)]
            return {(*source.table, name)}
        if source.query is not None:
            names = self.source_columns(source)
            if names is not None and name in names:  # by position: an alias list renames the query's columns
                columns = self.query_columns(source.query)
                index = names.index(name)
                return columns[index][1] if index < len(columns) else {r for _, refs in columns for r in refs}
            return self._projection_sources(source.query, name)
        return set()

    def _projection_sources(self, query: exp.Expr, name: str) -> set[ColumnRef]:
        found: set[ColumnRef] = set()
        for listed, sources in self.query_columns(query):
            if listed in (name, "*"):
                found |= sources
        return found

    def query_columns(self, query: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
        """A query's result columns in order, each with the base columns it derives from
        (every branch of a UNION contributes by position; a recursive CTE's self-reference
        adds nothing its base branch did not)."""
        known = self.known_columns.get(id(query))
        if known is not None:
            return [(name, set(sources)) for name, sources in known]
        if id(query) in self.visiting:
            self.met.append(id(query))
            return []
        start = len(self.met)
        self.visiting.add(id(query))
        try:
            branches = [self.projections(select) for select in selects(query)]
        finally:
            self.visiting.discard(id(query))
        columns = branches[0]
        for branch in branches[1:]:
            for position, (_, sources) in enumerate(branch[:len(columns)]):
                columns[position][1].update(sources)
        self.met[start:] = [met for met in self.met[start:] if met != id(query)]
        if len(self.met) == start:  # complete unless it met a query still being expanded around it
            self.known_columns[id(query)] = tuple((name, frozenset(sources)) for name, sources in columns)
        return columns

    def projections(self, select: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
        """One SELECT's (or VALUES', or RETURNING's) result columns in order, `*` expanded,
        each (name, the base columns it derives from)."""
        if isinstance(select, exp.Values):  # column1, column2...: the k-th of every row (docs, 7.7)
            rows = [t.expressions for t in select.expressions if isinstance(t, exp.Tuple)]
            width = max((len(r) for r in rows), default=0)
            return [(f"column{k + 1}", {ref for r in rows if k < len(r) for ref in self.expression_sources(r[k])})
                    for k in range(width)]
        columns: list[tuple[str, set[ColumnRef]]] = []
        for projection in projection_list(select):
            if is_star(projection):
                columns.extend(self._star_columns(select, projection))
            else:
                columns.append((output_name(projection), self.expression_sources(projection)))
        return columns

    def _star_columns(self, select: exp.Expr, star: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
        """What `*` or `t.*` expands to, in the server's order (docs, 7.2.1.1 "Joined
        Tables": the columns a USING or NATURAL join merges come once, first); a table the
        catalog does not know stays one `*`."""
        qualifier = ident(star.args.get("table")) if isinstance(star, exp.Column) and star.args.get("table") else None
        sources = self.sources(select)
        if qualifier is not None:
            return self._item_columns(sources[qualifier]) if qualifier in sources else []
        return self.joined(select)[0]

    def joined(self, select: exp.Expr) -> tuple[list[tuple[str, set[ColumnRef]]], set[ColumnRef]]:
        """The columns of a query's FROM items joined, in the server's order, and what the
        USING and NATURAL joins among them compare (their merged columns, both sides')."""
        items = list(self.sources(select).values())
        joins = joins_of(select)
        if len(items) != len(joins) + 1 or not isinstance(select, exp.Select):  # DML: its target comes first
            side_by_side = [column for source in items for column in self._item_columns(source)]
            using = {str(ident(u)) for join in joins for u in join.args.get("using") or []}
            natural = any(str(join.args.get("method") or "").upper() == "NATURAL" for join in joins)
            return side_by_side, {ref for name, refs in side_by_side if natural or name in using for ref in refs}
        columns, compared = self._item_columns(items[0]), set()
        for source, join in zip(items[1:], joins):
            right = self._item_columns(source)
            merged = [str(ident(u)) for u in join.args.get("using") or []]
            if str(join.args.get("method") or "").upper() == "NATURAL":
                merged = [name for name, _ in columns if any(name == other for other, _ in right)]
            firsts = [(name, {ref for n, refs in columns + right if n == name for ref in refs}) for name in merged]
            compared |= {ref for _, refs in firsts for ref in refs}
            columns = firsts + [c for c in columns if c[0] not in merged] + [c for c in right if c[0] not in merged]
        return columns, compared

    def _item_columns(self, source: Source) -> list[tuple[str, set[ColumnRef]]]:
        """The columns one FROM item gives, by name (an alias list renames the first ones); a
        function's: its alias list, else the one column of a scalar function."""
        if source.table is not None:
            known = self.table_columns(source.table)
            if known is None:
                return [("*", {(*source.table, "*")})]
            columns = [(c, {(*source.table, c)}) for c in known]
        elif source.query is not None:  # named as a WITH query's column list and the alias list name them
            columns, names = self.query_columns(source.query), self.source_columns(source)
            return [(names[i] if names is not None and i < len(names) else name, refs)
                    for i, (name, refs) in enumerate(columns)]
        else:
            return [(name, set()) for name in source.columns or ("?column?",)]
        renamed = source.columns or ()
        return [(renamed[i] if i < len(renamed) else name, refs) for i, (name, refs) in enumerate(columns)]

    def star_sources(self, select: exp.Expr, star: exp.Expr) -> set[ColumnRef]:
        """The base columns `*` or `t.*` in `select` reads."""
        return {ref for _, sources in self._star_columns(select, star) for ref in sources}

    def expression_sources(self, node: exp.Expr) -> set[ColumnRef]:
        """The base columns every column reference and `*` within `node` reads."""
        found: set[ColumnRef] = set()
        for column in node.find_all(exp.Column):
            found |= self.star_sources(enclosing_queries(column)[0], column) if column.is_star else self.resolve(column)
        for star in node.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)):
                found |= self.star_sources(enclosing_queries(star)[0], star)
        return found
