"""What a statement writes, changes or locks: INSERT, UPDATE, DELETE and MERGE wherever they
sit (a CTE, a subquery), ON CONFLICT DO UPDATE, SELECT ... INTO (a `create`), SELECT ... FOR
UPDATE/SHARE (an `update` of no column on the locked tables), DDL targets, and COPY (from
or to a program, a server file, or the client)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from interceptor.policy.sql.lineage import Lineage
from interceptor.policy.sql.tree import DIALECT, ancestors, column_name, direct_from_items, direct_tables, ident, unwrap
from interceptor.policy.statement import Action, Table, Unsupported

# The kind of action a statement's root node takes.
STATEMENT_KINDS: dict[type[exp.Expr], str] = {
    exp.Select: "select", exp.Union: "select", exp.Intersect: "select", exp.Except: "select",
    exp.Values: "select", exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete",
    exp.Merge: "merge", exp.TruncateTable: "truncate", exp.Copy: "copy", exp.Create: "create",
    exp.Drop: "drop", exp.Alter: "alter", exp.Grant: "grant", exp.Revoke: "revoke",
    exp.Comment: "comment", exp.Analyze: "analyze",
}
_WRITE_KINDS: dict[type[exp.Expr], str] = {
    exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete", exp.Merge: "merge",
}
# Targets named by these may not exist yet (CREATE) or are not relations (DROP FUNCTION):
# they resolve to the relation if there is one, else to the schema a CREATE would use.
_DDL_TARGETS = frozenset({"create", "drop", "alter", "comment", "grant", "revoke", "analyze"})


@dataclass(slots=True)
class Writes:
    """The actions of one statement's tree (`record`): each a kind on a table and its
    columns; `targets`: the ids of the Table nodes that name what it writes or a FROM item
    it locks, not a relation it reads; `locked`: the tables SELECT ... FOR UPDATE/SHARE locks."""

    tree: exp.Expr
    lineage: Lineage
    actions: list[Action] = field(default_factory=list)
    targets: set[int] = field(default_factory=set)
    locked: set[Table] = field(default_factory=set)

    def record(self) -> None:
        """Every action of the tree, in the order met: writes (in a CTE or subquery too; in
        MERGE, each WHEN's), ON CONFLICT DO UPDATE, SELECT ... INTO and row locks, DDL, COPY."""
        for node in self.tree.walk():
            kind = _WRITE_KINDS.get(type(node))
            if kind is not None and isinstance(node.parent, exp.When):
                merge = next(a for a in ancestors(node) if isinstance(a, exp.Merge))
                self.actions.append(Action(kind, self.lineage.table_of(unwrap(merge.this)), None))
            elif kind == "update":
                cols = frozenset(column_name(eq.this) for eq in node.expressions)
                self._target("update", node.this, cols)
            elif kind == "insert":
                self._target("insert", node.this, None)
                conflict = node.args.get("conflict")
                if conflict is not None and conflict.expressions:
                    cols = frozenset(column_name(eq.this) for eq in conflict.expressions)
                    self.actions.append(Action("update", self.actions[-1].table, cols))
            elif kind is not None:
                self._target(kind, node.this, None)
            elif isinstance(node, exp.Select):
                self._select_side_effects(node)
            elif isinstance(node, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable, exp.Copy,
                                   exp.Grant, exp.Revoke, exp.Comment, exp.Analyze)):
                self._ddl(node)

    def _target(self, kind: str, node: exp.Expr | None, columns: frozenset[str] | None = None) -> None:
        if isinstance(node, exp.Schema):
            columns = frozenset(ident(c) for c in node.expressions)
            node = node.this
        if isinstance(node, exp.Table) and node.this is None:
            self.targets.add(id(node))  # CREATE SCHEMA s and the like: no table involved
            self.actions.append(Action(kind))
        elif isinstance(node, exp.Table):
            self.targets.add(id(node))
            table = self.lineage.base_table(node, kind in _DDL_TARGETS)
            if table is None:
                raise Unsupported(f"{kind} target is not a table: {node.sql(dialect=DIALECT)[:60]}")
            self.actions.append(Action(kind, table, columns))
        else:
            self.actions.append(Action(kind))

    def _select_side_effects(self, node: exp.Select) -> None:
        into = node.args.get("into")
        if into is not None:
            self._target("create", into.this)
        for lock in node.args.get("locks") or ():
            if not lock.expressions and any(isinstance(i, exp.Subquery) for i in direct_from_items(node)):
                raise Unsupported("FOR UPDATE/SHARE of a subquery (it locks the rows of the tables inside)")
            locked = list(lock.expressions) or [t for t in direct_tables(node)]
            for table_node in locked:
                table = self._locked_table(node, table_node)
                if table is not None:
                    self.actions.append(Action("update", table, frozenset()))
                    self.locked.add(table)

    def _locked_table(self, select: exp.Select, node: exp.Expr) -> Table | None:
        """The table a FOR UPDATE/SHARE [OF name] locks: OF names a FROM item, by its alias
        if it has one; a WITH query is not locked, a subquery's tables would be (docs,
        SELECT, "The Locking Clause")."""
        if not isinstance(node, exp.Table):
            return None
        if isinstance(node.parent, exp.Lock):
            if node.args.get("db") is not None or not isinstance(node.this, exp.Identifier):
                raise Unsupported(f"FOR UPDATE OF {node.sql(dialect=DIALECT)[:60]} does not name a FROM item")
            self.targets.add(id(node))  # a name of a FROM item, not a relation read
            source = self.lineage.sources(select).get(str(ident(node.this)))
            if source is not None and source.query is not None and not isinstance(source.query.parent, exp.CTE):
                raise Unsupported("FOR UPDATE/SHARE of a subquery (it locks the rows of the tables inside)")
            return source.table if source is not None else None
        return self.lineage.base_table(node)

    def _ddl(self, node: exp.Expr) -> None:
        if isinstance(node, exp.Copy):
            self._copy(node)
        elif isinstance(node, exp.Create):
            target = node.this
            if isinstance(target, (exp.UserDefinedFunction, exp.Schema)):
                target = target.this
            elif isinstance(target, exp.Index):
                target = target.args.get("table")
            self._target("create", target)
        elif isinstance(node, exp.Drop):
            for table_node in node.args.get("tables") or [node.this]:
                self._target("drop", table_node)
        elif isinstance(node, exp.TruncateTable):
            for table_node in node.expressions:
                self._target("truncate", table_node)
        elif isinstance(node, exp.Alter):
            self._target("alter", node.this)
        else:
            tables = list(node.find_all(exp.Table))
            for table_node in tables:
                self._target(STATEMENT_KINDS[type(node)], table_node)
            if not tables:
                self._target(STATEMENT_KINDS[type(node)], None)

    def _copy(self, node: exp.Copy) -> None:
        files = node.args.get("files") or []
        names = {f.this.upper() for f in files if isinstance(f, exp.Identifier) and not f.quoted}
        if "PROGRAM" in names:
            kind = "copy_program"
        elif names & {"STDIN", "STDOUT"} and len(files) == 1:
            kind = "copy"
        else:
            kind = "copy_file"
        if node.args.get("kind"):  # COPY ... FROM: rows written into the table
            self._target(kind, node.this)
            self.actions.append(Action("insert", self.actions[-1].table, self.actions[-1].columns))
        else:  # COPY ... TO: the table (or query) is read like any other
            self.actions.append(Action(kind))
