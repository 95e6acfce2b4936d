"""What a SQL string would do, statement by statement (sans-IO, postgres dialect).

The analyser turns text into `Statement` values (interceptor.policy.statement): the kinds
of action each statement takes on which relations and columns, the functions the server
will run for it, which output columns derive from which base columns, and what it changes
in the session. It never decides; the engine judges the result. Anything it does not fully
understand comes back with `error` set, and the engine denies it.

Names resolve as the server resolves them (docs, 5.9.3 "The Schema Search Path", 10.3
"Functions"), under the settings in force when the statement runs: the search_path and role
the query starts with, changed by the statements before it in the same string (SET, RESET,
set_config, transaction control; interceptor.policy.settings). With a Catalog every
relation and function named must be in it; identifiers fold as the server folds them
(catalog.fold_identifier, docs 4.1.1).

Writes hidden in reads are reported as the writes they are: DML inside a CTE or a
subquery, SELECT ... INTO (a `create`), SELECT ... FOR UPDATE/SHARE (an `update` on the
locked tables), COPY to or from a program or a server file, EXPLAIN ANALYZE (the inner
statement runs, so it is analysed as if it were sent alone).

Code the server runs that the statement does not name is reported as the calls it is,
with a Catalog: what each relation read or written runs (a view's definition, row security
policies, triggers, constraints, defaults, rules: Relation.functions, write_functions), the
function of an operator named with OPERATOR(), what a cast to a type runs (a domain's
CHECK constraints, a cast's function), and attribute notation (`t.f` is f(t)).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Protocol

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from interceptor.operations import Settings
from interceptor.policy.catalog import (
    SYSTEM_SCHEMAS, Catalog, CatalogUnavailable, Type, fold_identifier, parse_search_path, truncate_identifier,
)
from interceptor.policy.settings import SessionSettings
from interceptor.policy.sql_functions import (
    explicit_operators, function_calls, implicit_operators, token_name, written_names,
)
from interceptor.policy.sql_session import (
    close, deallocate, discard, fetch, refuse_unsafe_encoding, reset, session_select, set_config_effects,
    set_statement, show, transaction,
)
from interceptor.policy.statement import (
    CATALOG_UNAVAILABLE, CATALOG_UNKNOWN_FUNCTION, CATALOG_UNKNOWN_RELATION, CATALOG_UNKNOWN_TYPE, Action, Call,
    DERIVED_ROW, JSON_ROW_FUNCTIONS, WHOLE_ROW, ColumnRef, OutputColumn, Statement, Table, Unsupported, qualified,
)

# sqlglot logs a warning for every statement it keeps as an opaque Command; the analyser
# reports those itself (as opaque kinds), so the warning is noise in the daemon's log.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECT = Postgres()

# Statements sqlglot keeps opaque, by first keyword(s): the analyser cannot see what they
# touch, so the engine denies them unless a rule names the kind explicitly.
_COMMAND_KINDS = {
    "CALL": "call", "DO": "do", "VACUUM": "vacuum", "PREPARE": "prepare", "EXECUTE": "execute", "LOCK": "lock",
    "REFRESH": "refresh", "REINDEX": "reindex", "LISTEN": "listen", "UNLISTEN": "listen",
    "NOTIFY": "notify", "CHECKPOINT": "checkpoint", "CLUSTER": "cluster",
    "LOAD": "load", "IMPORT": "import", "SECURITY": "security_label", "REASSIGN": "reassign",
}
# Statements about the session, read word by word (interceptor.policy.sql_session).
_SESSION_STATEMENTS: dict[str, Callable[[str, list[Token]], Statement]] = {
    "SET": set_statement, "RESET": reset, "SHOW": show, "DISCARD": discard, "DEALLOCATE": deallocate,
    "FETCH": fetch, "MOVE": fetch, "CLOSE": close,
    **{word: transaction for word in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE")},
}
_EXPLAIN_OPTIONS = {"ANALYZE", "ANALYSE", "VERBOSE"}

_STATEMENT_KINDS: dict[type, str] = {
    exp.Select: "select", exp.Union: "select", exp.Intersect: "select", exp.Except: "select",
    exp.Values: "select", exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete",
    exp.Merge: "merge", exp.TruncateTable: "truncate", exp.Copy: "copy", exp.Create: "create",
    exp.Drop: "drop", exp.Alter: "alter", exp.Grant: "grant", exp.Revoke: "revoke",
    exp.Comment: "comment", exp.Analyze: "analyze",
}
_WRITE_KINDS = {exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete", exp.Merge: "merge"}
_QUERY_NODES = (exp.Select, exp.Update, exp.Delete, exp.Insert, exp.Merge)
_RESULT_NODES = (exp.Select, exp.SetOperation, exp.Values, exp.Insert, exp.Update, exp.Delete, exp.Merge)
# Targets named by these may not exist yet (CREATE) or are not relations (DROP FUNCTION):
# they resolve to the relation if there is one, else to the schema a CREATE would use.
_DDL_TARGETS = frozenset({"create", "drop", "alter", "comment", "grant", "revoke", "analyze"})
# Actions that read a relation's rows, so run what it runs when read (Relation.functions),
# and the events (catalog.WRITE_EVENTS) of the writes whose code runs (Relation.write_functions).
_READS_ROWS = frozenset({"select", "update", "delete", "merge"})
_VIEWS = frozenset({"v"})
_SYSTEM_COLUMNS = ("tableoid", "xmin", "cmin", "xmax", "cmax", "ctid")  # docs, 5.5 "System Columns"
_NO_SYSTEM_COLUMNS = frozenset({"v", "c"})  # views and composite types have none
_WRITE_EVENTS: dict[str, tuple[str, ...]] = {
    "insert": ("insert", "default"), "update": ("update",), "delete": ("delete",), "truncate": ("truncate",),
}


class SchemaCatalog(Protocol):
    """Column names of the tables the analyser meets. None means unknown: `*` cannot be
    expanded for that table. A Catalog is one; a plain column source resolves unqualified
    names without the server's rules (first schema of the path that has the table)."""

    def columns(self, schema: str, table: str) -> Sequence[str] | None: ...


AnyCatalog = Catalog | CatalogUnavailable | SchemaCatalog | None


def analyse(text: str, settings: Settings = (), defaults: Settings = (),
            catalog: AnyCatalog = None) -> tuple[Statement, ...]:
    """Every statement of `text`, in order, each analysed under the settings the ones before
    it leave (docs, 55.2.2.1 "Multiple Statements in a Simple Query"). `settings`: the
    (name, value) of search_path, client_encoding and role in force (SqlQuery.settings; a
    search_path None is the catalog's default_search_path, or "$user", public); `defaults`:
    what RESET returns them to; `catalog`: a Catalog holds every relation and function a
    statement may name, a CatalogUnavailable makes every statement naming one an error."""
    try:
        tokens = DIALECT.tokenize(text)
    except SqlglotError as exc:
        return (Statement(text, "unknown", error=f"cannot tokenize: {_first_line(exc)}"),)
    session = SessionSettings.of(settings, defaults)
    statements = []
    for chunk in _split(tokens):
        names = _Names.of(session, catalog)
        statement = refuse_unsafe_encoding(refuse_shadowing(_analyse_chunk(text, chunk, names), names),
                                           session.defaults)
        if statement.error is None:
            for effect in statement.effects:
                session.apply(effect)
        statements.append(statement)
    if not statements:
        return (Statement(text, "empty"),)
    return tuple(statements)


SHADOWING_RULE = "builtin-search-path-shadowing"
_NO_EXPRESSIONS = frozenset({"set", "reset", "transaction", "show", "discard", "deallocate", "empty"})


def refuse_shadowing(statement: Statement, names: _Names) -> Statement:
    """The statement, or an error under builtin-search-path-shadowing when it would run with
    a search_path that searches a schema holding functions or operators before pg_catalog:
    any unqualified call or operator (even `+`) could then run that schema's code instead of
    the server's (CVE-2018-1058; docs, 5.9.6 "Usage Patterns"). Statements that evaluate no
    expression (SET, RESET, transaction control, SHOW) still run, so the path can be fixed."""
    if names.catalog is None or names.path is None or statement.kind in _NO_EXPRESSIONS or statement.error:
        return statement
    shadowing = names.catalog.shadowing(names.path, names.role)
    if not shadowing:
        return statement
    return Statement(statement.text, statement.kind, error=(
        f"the search_path searches {', '.join(shadowing)} before pg_catalog, and its functions or operators "
        "could take the place of the server's own; put pg_catalog first (SET search_path = pg_catalog, ...)"),
        rule=SHADOWING_RULE)


@dataclass(frozen=True, slots=True)
class _Names:
    """How one statement's names resolve: the search_path in force (None: its value cannot
    be read), the role "$user" stands for (None: the catalog's login role), the Catalog that
    holds every name (None: names resolve without one), where `*` expands from, and the
    reason there is no catalog when it could not be read."""

    path: tuple[str, ...] | None
    role: str | None
    catalog: Catalog | None
    columns: SchemaCatalog | None
    unavailable: CatalogUnavailable | None

    @classmethod
    def of(cls, session: SessionSettings, catalog: AnyCatalog) -> _Names:
        full = catalog if isinstance(catalog, Catalog) else None
        value = session.get("search_path")
        if value is not None:
            path = parse_search_path(value)
        else:
            path = full.default_search_path if full is not None else ("$user", "public")
        role = session.get("role")
        role = None if role == "none" else role
        if isinstance(catalog, CatalogUnavailable):
            return cls(path, role, None, None, catalog)
        return cls(path, role, full, catalog, None)

    def searched(self) -> tuple[str, ...]:
        """The schemas an unqualified relation name is looked up in, in order."""
        if self.path is None:
            raise Unsupported("the search_path in force cannot be read")
        if self.catalog is not None:
            return self.catalog.effective_path(self.path, self.role)
        listed: list[str] = []
        for schema in self.path:
            name = self.role if schema == "$user" else schema
            if name and name not in listed:
                listed.append(name)
        return tuple(listed) if "pg_catalog" in listed else ("pg_catalog", *listed)

    def relation(self, schema: str | None, name: str, lenient: bool) -> Table:
        """The relation `[schema.]name` means; `lenient` (a DDL target): when there is none,
        where a CREATE would put it instead of an error."""
        if schema is not None:
            if self.catalog is not None and self.catalog.relation(schema, name) is None and not lenient:
                raise Unsupported(f'relation "{schema}.{name}" is not in the catalog', CATALOG_UNKNOWN_RELATION)
            return (schema, name)
        order = self.searched()
        if self.catalog is not None:
            found = self.catalog.resolve_relation(name, self.path or (), self.role)
            if found is not None:
                return (found.schema, found.name)
            if not lenient:
                raise Unsupported(f'relation "{name}" is not in the catalog (searched: {", ".join(order)})',
                                  CATALOG_UNKNOWN_RELATION)
        elif self.columns is not None:
            for candidate in order:
                if self.columns.columns(candidate, name) is not None:
                    return (candidate, name)
        listed = order if "pg_catalog" in (self.path or ()) else order[1:]
        if not listed:
            raise Unsupported(f"no schema of the search_path to resolve {name} in")
        return (listed[0], name)

    def call(self, call: Call) -> Call:
        """The call with its candidates from the catalog; an error when it holds none."""
        if self.catalog is None:
            return call
        searched: tuple[str, ...]
        if call.schema is not None:
            searched, candidates = (call.schema,), self.catalog.functions_named(call.schema, call.name)
        else:
            searched = self.searched()
            candidates = self.catalog.function_candidates(call.name, self.path or (), self.role)
        if not candidates:
            raise Unsupported(f'function "{call.display}" is not in the catalog (searched: {", ".join(searched)})',
                              CATALOG_UNKNOWN_FUNCTION)
        return replace(call, candidates=candidates)

    def types(self, node: exp.Expr, written: frozenset[str]) -> tuple[Type, ...]:
        """The catalog's types a type node may mean, that run code when cast to. A name
        sqlglot keeps (a user-defined type) resolves like a relation's (docs, 5.9.3); an
        error when the catalog does not hold it, unless its schema is pg_catalog or
        information_schema, or it is unqualified and the catalog, not complete (holding no
        pg_catalog types), cannot tell it from a builtin. A name sqlglot reads as a builtin
        type (text, int4, datetime, "Text"...) may still be a type of the path: each type
        that runs code whose name the statement spells (`written`), sqlglot reads the same,
        and the name resolves to."""
        catalog = self.catalog
        if not (isinstance(node, exp.DataType) and node.this == exp.DType.USERDEFINED):
            if catalog is None:
                return ()
            reading, path = _type_reading(node), self.path_in_force()
            return tuple(t for t in catalog.code_types if t.name in written and _name_reading(t.name) == reading
                         and catalog.resolve_type(t.name, path, self.role) is t)
        schema, name = _type_name(node)
        display = f"{schema}.{name}" if schema is not None else name
        if schema in SYSTEM_SCHEMAS or self.unavailable is None and catalog is None:
            return ()
        if catalog is None:
            raise Unsupported(f"the catalog is unavailable ({self.unavailable}): a cast to {display} may run code "
                              "that cannot be judged", CATALOG_UNAVAILABLE)
        if schema is not None:
            found = catalog.type(schema, name)
        else:
            found = catalog.resolve_type(name, self.path_in_force(), self.role)
            if found is None and not catalog.complete:
                return ()
        if found is None:
            searched = schema or ", ".join(self.searched())
            raise Unsupported(f'type "{display}" is not in the catalog (searched: {searched})', CATALOG_UNKNOWN_TYPE)
        return (found,)

    def path_in_force(self) -> tuple[str, ...]:
        if self.path is None:
            raise Unsupported("the search_path in force cannot be read")
        return self.path

    def operator(self, schema: str | None, name: str) -> list[Call]:
        """The functions OPERATOR([schema.]name) runs outside pg_catalog (docs, 10.2
        "Operators"), each a call with its candidates; an error when the catalog holds no
        operator of a schema written, or cannot be read."""
        if schema == "pg_catalog":
            return []
        display = f"{schema}.{name}" if schema is not None else name
        if self.unavailable is not None:
            raise Unsupported(f"the catalog is unavailable ({self.unavailable}): OPERATOR({display}) may run "
                              "a function that cannot be judged", CATALOG_UNAVAILABLE)
        if self.catalog is None:
            return []
        if schema is None and self.path is None:
            raise Unsupported("the search_path in force cannot be read")
        functions = self.catalog.operator_candidates(schema, name, self.path or (), self.role)
        if schema is not None and not functions:
            raise Unsupported(f'operator "{display}" is not in the catalog', CATALOG_UNKNOWN_FUNCTION)
        return [_code_call(self.catalog, named, ("operator", display), f"of operator {display}") for named in functions]


def _code_call(catalog: Catalog | None, qualified: str, via: tuple[str, str], whose: str) -> Call:
    """A call of the function `schema.name` that the server runs unnamed (`whose`: what runs
    it, for the message); catalog-unknown-function when the catalog does not hold it."""
    schema, _, function = qualified.partition(".")
    candidates = catalog.functions_named(schema, function) if catalog is not None else ()
    if not candidates:
        raise Unsupported(f'function "{qualified}" ({whose}) is not in the catalog', CATALOG_UNKNOWN_FUNCTION)
    return Call(function, schema, candidates, via)


def _type_name(node: exp.DataType) -> tuple[str | None, str]:
    """(schema or None, name) of a type sqlglot keeps as written, identifiers as the server reads them."""
    kind = node.args.get("kind")
    if isinstance(kind, exp.Identifier):
        return None, str(_ident(kind))
    if isinstance(kind, exp.Dot) and isinstance(kind.this, exp.Identifier) and isinstance(kind.expression,
                                                                                          exp.Identifier):
        return _ident(kind.this), str(_ident(kind.expression))
    raise Unsupported(f"type name {node.sql(dialect=DIALECT)[:60]} is not [schema.]name")


def _type_reading(node: exp.Expr) -> str:
    """How sqlglot read a type it did not keep as written (a builtin, an object identifier
    or pseudo-type): the same for every name it reads so."""
    return f"{type(node).__name__}:{node.this!r}"


@lru_cache(maxsize=4096)
def _name_reading(name: str) -> str | None:
    """How sqlglot reads the type name `name` written quoted (which it reads no
    differently from unquoted, only keeping case): None when it keeps it as written."""
    text = f'SELECT NULL::"{name.replace(chr(34), chr(34) * 2)}"'
    try:
        cast = DIALECT.parser().parse(DIALECT.tokenize(text), text)[0].find(exp.Cast)
    except Exception:  # noqa: BLE001 - a name sqlglot cannot read as a type is not read as a builtin either
        return None
    to = cast.args.get("to") if cast is not None else None
    if to is None or isinstance(to, exp.DataType) and to.this == exp.DType.USERDEFINED:
        return None
    return _type_reading(to)


_ZEROS = str.maketrans("123456789", "000000000")
NumericShape = tuple[str, bytes]


def numeric_shape(text: str) -> NumericShape | None:
    """`text` with every digit of its numeric literals made 0, and its token stream (type,
    start, end of each token, packed); None when it has no numeric literal to make 0. No rule depends
    on a number's value, so statements that differ only there (`WHERE aid = 1`, `= 2`, ...)
    can share one analysis: that of the zeroed text, and only while the zeroed text still
    tokenizes the same (`shape_holds`). A number that names a result column by its position
    (an item of ORDER BY, GROUP BY or DISTINCT ON) is kept: which column it names matters."""
    try:
        tokens = DIALECT.tokenize(text)
    except Exception:  # noqa: BLE001 - no shape: the statement is analysed (and denied) on its own
        return None
    pieces, done = [], 0
    for token in _zeroable(tokens):
        if token.token_type == TokenType.NUMBER:
            digits = text[token.start:token.end + 1]
            zeroed = digits.translate(_ZEROS)
            if zeroed != digits:
                pieces += (text[done:token.start], zeroed)
                done = token.end + 1
    if not pieces:
        return None
    pieces.append(text[done:])
    return "".join(pieces), _signature(tokens)


_POSITION_LISTS = frozenset({TokenType.ORDER_BY, TokenType.GROUP_BY})
_LIST_ENDS = frozenset({TokenType.LIMIT, TokenType.OFFSET, TokenType.FETCH, TokenType.FOR, TokenType.HAVING,
                        TokenType.WINDOW, TokenType.UNION, TokenType.EXCEPT, TokenType.INTERSECT})


def _zeroable(tokens: list[Token]) -> Iterator[Token]:
    """The tokens but the numbers in an ORDER BY, GROUP BY or DISTINCT ON list (an item, or in
    parentheses, ROLLUP, GROUPING SETS: a position; in an expression: kept all the same)."""
    depth, listing, before = 0, None, [None, None, None]
    for token in tokens:
        kind = token.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
            if before[-2:] == [TokenType.DISTINCT, TokenType.ON]:
                listing = depth
        elif kind == TokenType.R_PAREN:
            depth -= 1
            listing = None if listing is not None and depth < listing else listing
        elif kind in _POSITION_LISTS:
            listing = depth
        elif kind in _LIST_ENDS and listing == depth:
            listing = None
        if not (kind == TokenType.NUMBER and listing is not None):  # kept anywhere in such a list
            yield token
        before = [*before[1:], kind]


def shape_holds(shape: NumericShape) -> bool:
    """Does the zeroed text tokenize exactly as the original did (`0x1` would not: it is
    hex, where `1x1` was the number 1 and a name)?"""
    try:
        return _signature(DIALECT.tokenize(shape[0])) == shape[1]
    except Exception:  # noqa: BLE001 - as above: not shared, analysed on its own
        return False


_TYPE_NUMBER = {token_type: number for number, token_type in enumerate(TokenType)}


def _signature(tokens: list[Token]) -> bytes:
    """Type, start and end of every token, packed: 12 bytes a token in a cache key."""
    return array("I", [v for t in tokens for v in (_TYPE_NUMBER[t.token_type], t.start, t.end)]).tobytes()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _split(tokens: list[Token]) -> Iterator[list[Token]]:
    chunk: list[Token] = []
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if chunk:
                yield chunk
            chunk = []
        else:
            chunk.append(token)
    if chunk:
        yield chunk


def _chunk_text(text: str, chunk: list[Token]) -> str:
    return text[chunk[0].start:chunk[-1].end + 1]


def _analyse_chunk(text: str, chunk: list[Token], names: _Names) -> Statement:
    source = _chunk_text(text, chunk)
    first = chunk[0].text.upper()
    if first == "EXPLAIN":
        return _explain(source, chunk, names)
    if first == "DECLARE":
        return _declare(source, chunk, names)
    if _unicode_identifier(chunk):
        return Statement(source, "unknown", error='U&"..." identifiers with unicode escapes are not supported')
    session = _SESSION_STATEMENTS.get(first)
    if session is not None:
        try:
            return session(source, chunk)
        except Unsupported as exc:
            return Statement(source, "unknown", error=str(exc), rule=exc.rule)
    if first in _COMMAND_KINDS:
        return Statement(source, _COMMAND_KINDS[first], opaque=True)
    try:
        tree = DIALECT.parser().parse(_without_array_bounds(chunk), text)[0]
    except Exception as exc:  # noqa: BLE001 - sqlglot raises more than its own errors on odd input: fail closed
        return Statement(source, "unknown", error=f"cannot parse: {_first_line(exc)}")
    if isinstance(tree, exp.Command):
        # CREATE ROLE, ALTER SYSTEM, CREATE EXTENSION...: named by two words, so a rule
        # allowing `create` never covers them by accident.
        body = tree.expression
        rest = (body.name if isinstance(body, exp.Expr) else str(body or "")).split()
        kind = f"{first.lower()}_{rest[0].lower()}" if first in {"CREATE", "ALTER", "DROP"} and rest else first.lower()
        return Statement(source, kind, opaque=True)
    kind = "create" if _selects_into(tree) else _STATEMENT_KINDS.get(type(tree))
    if kind is None:
        return Statement(source, "unknown", error=f"unsupported statement ({first} ...)")
    try:
        return _Analysis(tree, chunk, names).statement(source, kind)
    except Unsupported as exc:
        return Statement(source, kind, error=str(exc), rule=exc.rule)
    except Exception as exc:  # an AST shape the analyser never met: fail closed, never crash
        return Statement(source, kind, error=f"analyser failed ({type(exc).__name__}: {exc})")


_CURSOR_OPTIONS = frozenset({"BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"})


def _declare(source: str, chunk: list[Token], names: _Names) -> Statement:
    """DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR [{WITH | WITHOUT}
    HOLD] FOR query (docs, DECLARE): judged as its query, which the server runs as the cursor
    is fetched from; the session masks what FETCH returns with that judgement."""
    try:
        rest = DIALECT.tokenize(chunk[1].text) if len(chunk) == 2 and chunk[1].token_type == TokenType.STRING else []
    except SqlglotError as exc:
        return Statement(source, "unknown", error=f"cannot tokenize: {_first_line(exc)}")
    words = [t.text.upper() for t in rest]
    if "CURSOR" not in words or rest[0].token_type not in (TokenType.VAR, TokenType.IDENTIFIER):
        return Statement(source, "unknown", error="DECLARE without a cursor name and CURSOR")
    at = words.index("CURSOR")
    options, after = words[1:at], words[at + 1:]
    hold = after[:2] == ["WITH", "HOLD"]
    if after[:2] in (["WITH", "HOLD"], ["WITHOUT", "HOLD"]):
        after = after[2:]
    if any(o not in _CURSOR_OPTIONS for o in options) or not after or after[0] != "FOR" or len(after) < 2:
        return Statement(source, "unknown", error="DECLARE ... CURSOR with options the analyser does not know")
    query = rest[len(rest) - len(after) + 1:]
    inner = _analyse_chunk(chunk[1].text, query, names)
    if inner.error is None and inner.kind != "select":
        return Statement(source, "unknown", error=f"DECLARE ... CURSOR FOR a {inner.kind}, not a query")
    return replace(inner, text=source, cursor=token_name(rest[0]), hold=hold)


def _explain(source: str, chunk: list[Token], names: _Names) -> Statement:
    """EXPLAIN [ANALYZE] [VERBOSE] | EXPLAIN (options) stmt: judged as the inner statement,
    since with ANALYZE it runs (and without, it is never more than that). sqlglot's tokenizer
    hands the rest of the statement over as one raw string token."""
    if len(chunk) != 2 or chunk[1].token_type != TokenType.STRING:
        return Statement(source, "unknown", error="EXPLAIN without a statement")
    inner_text = chunk[1].text
    try:
        rest = DIALECT.tokenize(inner_text)
    except SqlglotError as exc:
        return Statement(source, "unknown", error=f"cannot tokenize: {_first_line(exc)}")
    if rest and rest[0].token_type == TokenType.L_PAREN:
        depth = 0
        for index, token in enumerate(rest):
            depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(token.token_type, 0)
            if depth == 0:
                rest = rest[index + 1:]
                break
    while rest and rest[0].text.upper() in _EXPLAIN_OPTIONS:
        rest = rest[1:]
    if not rest:
        return Statement(source, "unknown", error="EXPLAIN without a statement")
    inner = _analyse_chunk(inner_text, rest, names)
    if inner.effects:  # the server runs it only with ANALYZE: which, the analyser does not follow
        return Statement(source, inner.kind, error="EXPLAIN of a statement that changes session settings")
    return replace(inner, text=source, outputs=())  # its result is the plan, not the statement's rows


_BOUNDED_TYPES = frozenset({TokenType.OBJECT_IDENTIFIER, TokenType.PSEUDO_TYPE})


def _without_array_bounds(chunk: list[Token]) -> list[Token]:
    """The tokens, without the array bounds after a type name sqlglot reads as an object
    identifier or pseudo-type (`oid[]`, `regclass[3]`, `oid ARRAY`: docs, 8.15.1), which it
    cannot parse there. After a type name, `[...]` and ARRAY can only be its bounds, and
    an array of a type runs what the type runs, so the analysis judges the same."""
    kept: list[Token] = []
    at = 0
    while at < len(chunk):
        kept.append(chunk[at])
        at += 1
        if kept[-1].token_type not in _BOUNDED_TYPES:
            continue
        while True:
            end = at + int(at < len(chunk) and chunk[at].token_type == TokenType.ARRAY)
            kinds = [t.token_type for t in chunk[end:end + 3]]
            if kinds[:2] == [TokenType.L_BRACKET, TokenType.R_BRACKET]:
                end += 2
            elif kinds == [TokenType.L_BRACKET, TokenType.NUMBER, TokenType.R_BRACKET]:
                end += 3
            if end == at:
                break
            at = end
    return kept


def _unicode_identifier(chunk: list[Token]) -> bool:
    """U&"..." names an identifier with escapes that sqlglot reads as `U & "..."`."""
    return any(
        a.text.upper() == "U" and b.token_type == TokenType.AMP and a.end + 1 == b.start
        and c.token_type == TokenType.IDENTIFIER and b.end + 1 == c.start
        for a, b, c in zip(chunk, chunk[1:], chunk[2:])
    )


def _ident(node: exp.Expr | None) -> str | None:
    """An identifier as the server reads it: unquoted folded (ASCII only) and both truncated
    to 63 bytes (docs, 4.1.1)."""
    if node is None:
        return None
    if isinstance(node, exp.Identifier):
        return truncate_identifier(node.this) if node.quoted else fold_identifier(node.this)
    if isinstance(node, exp.Star):
        return "*"
    raise Unsupported(f"unsupported name expression: {node.sql(dialect=DIALECT)[:60]}")


@dataclass(slots=True)
class _Source:
    """What a name in FROM stands for: a base table, or a derived query (CTE/subquery)."""

    table: Table | None = None
    query: exp.Expr | None = None
    columns: tuple[str, ...] | None = None  # column aliases (t AS x(a, b))


@dataclass(slots=True)
class _Analysis:
    tree: exp.Expr
    tokens: list[Token]  # the statement's, for the names of its function calls
    names: _Names
    actions: list[Action] = field(default_factory=list)
    targets: set[int] = field(default_factory=set)  # ids of Table nodes that are write targets
    reads: dict[Table, set[str] | None] = field(default_factory=dict)
    locked: set[Table] = field(default_factory=set)  # tables of SELECT ... FOR UPDATE/SHARE
    visiting: set[int] = field(default_factory=set)  # queries being expanded (recursive CTEs)
    met: list[int] = field(default_factory=list)  # each time a query being expanded met itself (by id)
    # what each query (by id) has as FROM items and result columns, once worked out
    known_sources: dict[int, dict[str, _Source]] = field(default_factory=dict)
    known_columns: dict[int, tuple[tuple[str, frozenset[ColumnRef]], ...]] = field(default_factory=dict)

    def statement(self, source: str, kind: str) -> Statement:
        self._writes()
        found = function_calls(self.tree, self.tokens)
        calls = [self.names.call(call) for call, _ in found]
        # calls sqlglot kept no node for (found by their word) under negative keys, matched by name
        nodes = {id(node) if node is not None else -index: call
                 for index, ((_, node), call) in enumerate(zip(found, calls), 1)}
        calls += [call for schema, name in explicit_operators(self.tree, self.tokens)
                  for call in self.names.operator(schema, name)]
        calls += [call for name in sorted(implicit_operators(self.tokens)) for call in self.names.operator(None, name)]
        calls += self._type_calls()
        calls += self._opclass_calls(kind)
        calls += self._attribute_calls()
        effects = set_config_effects(self.tree, found)
        copy_out = isinstance(self.tree, exp.Copy) and not self.tree.args.get("kind")
        outputs, filters, computed = self._uses(nodes, copy_out)
        for table_node in self.tree.find_all(exp.Table):
            if id(table_node) in self.targets:
                continue
            table = self._base_table(table_node)
            if table is not None and not isinstance(self.tree, _RESULT_NODES) and not copy_out:
                # DDL and COPY FROM move whole rows where no result column can be masked: every
                # column they read counts as used outside a result column.
                self.reads[table] = None
                filters |= {(*table, "*")}
            elif table is not None:
                self.reads.setdefault(table, set())
        for table, cols in self.reads.items():
            self.actions.append(Action("select", table, None if cols is None else frozenset(cols)))
            filters |= self._view_reads(table, set())
        if not self.actions:
            self.actions.append(Action(kind))
        actions = tuple(dict.fromkeys(self.actions))
        calls += self._relation_calls(actions)
        if self.names.unavailable is not None and (calls or any(a.table for a in actions)):
            raise Unsupported(f"the catalog is unavailable ({self.names.unavailable}): a statement that names a "
                              "relation or calls a function cannot be judged", CATALOG_UNAVAILABLE)
        return Statement(source, kind, actions, tuple(calls), outputs, filters, computed=computed, effects=effects,
                         bootstrap=kind == "select" and session_select(self.tree, found))

    def _uses(self, nodes: dict[int, Call], copy_out: bool) -> tuple[
            tuple[OutputColumn, ...], frozenset[ColumnRef], frozenset[ColumnRef]]:
        """The statement's result columns, the base columns it uses outside them (`_filters`)
        and those a result column is computed from (`_computed`). `nodes`: the resolved call
        of each call node (by id); the arguments of volatile or set-returning ones are uses."""
        guarded = frozenset(key for key, call in nodes.items() if key > 0 and call.candidates and any(
            f.volatility == "volatile" or f.returns_set for f in call.candidates))
        if copy_out:
            return (), self._copied(guarded), frozenset()
        if not isinstance(self.tree, _RESULT_NODES):
            return (), frozenset(), frozenset()
        self._record_reads(self.tree)
        if _selects_into(self.tree):  # SELECT ... INTO t: rows written to a new table, as CREATE TABLE AS
            written = {ref for _, refs in self._query_columns(self.tree) for ref in refs if ref[2] != WHOLE_ROW}
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
        table = self._base_table(table_node) if isinstance(table_node, exp.Table) else None
        if table is None:
            raise Unsupported("COPY ... TO of something other than a table or a query")
        listed = [_column_name(c) for c in target.expressions] if isinstance(target, exp.Schema) else None
        columns = listed if listed is not None else self._known_columns(table)
        self.reads[table] = set(columns) if columns is not None else None
        return frozenset((*table, c) for c in columns) if columns is not None else frozenset({(*table, "*")})

    def _view_reads(self, table: Table, seen: set[Table]) -> frozenset[ColumnRef]:
        """The columns a view's definition reads, through the views it reads: a masked one
        among them may reach any of the view's columns, which the enforcer does not follow
        (RowDescription names the view's), so they count as used outside a result column."""
        relation = self.names.catalog.relation(*table) if self.names.catalog is not None else None
        if relation is None or not relation.definition_reads or table in seen:
            return frozenset()
        seen.add(table)
        found: set[ColumnRef] = set()
        for read in relation.definition_reads:
            schema, name, column = read.split(".", 2)
            found.add((schema, name, column))
            found |= self._view_reads((schema, name), seen)
        return frozenset(found)

    def _type_calls(self) -> list[Call]:
        """What the casts of the statement run (Type.functions: a domain's CHECK constraints,
        a cast's function; docs, 4.2.9 "Type Casts", 8.18 "Domain Types"): every type named
        in an expression (`::`, CAST, a typed literal, a column definition list), not those
        of a table's or function's definition, which run nothing."""
        calls: list[Call] = []
        written = written_names(self.tokens)
        for node in self.tree.find_all(exp.DataType, exp.ObjectIdentifier, exp.PseudoType):
            if any(isinstance(a, exp.Properties) or isinstance(a, exp.ColumnDef)
                   and not isinstance(a.parent, exp.TableAlias) for a in _ancestors(node)):
                continue  # a column, argument or result type of a definition
            for type_ in self.names.types(node, written):
                calls += [_code_call(self.names.catalog, named, ("type", type_.qualified),
                                     f"run by a cast to {type_.qualified}") for named in type_.functions]
        return list(dict.fromkeys(calls))

    def _opclass_calls(self, kind: str) -> list[Call]:
        """What the default btree and hash operator classes of builtin types run where they
        hold user code (Catalog.opclass_functions): wherever a value of such a type is
        compared, sorted, grouped or hashed (docs, 38.16.6 "System Dependencies on Operator
        Classes"), and a value from no table (a literal, VALUES, a function's result) names no
        type nor relation, so for every statement that evaluates expressions."""
        catalog = self.names.catalog
        if catalog is None or kind in _NO_EXPRESSIONS:
            return []
        calls: list[Call] = []
        for (type_, opclass), functions in sorted(catalog.opclass_functions.items()):
            via = ("operator", f"class {opclass}, a user default for built-in type {type_}, which may run wherever "
                               "its values are compared, sorted, grouped or hashed")
            calls += [_code_call(catalog, named, via, f"of operator class {opclass}") for named in functions]
        return calls

    def _relation_calls(self, actions: tuple[Action, ...]) -> list[Call]:
        """The functions the relations the statement reaches run without it naming them
        (Relation.functions, Relation.write_functions): what a relation runs when read for
        every relation a statement reads or changes rows of (UPDATE, DELETE and MERGE read the
        rows they change, and row security applies to them; to an INSERT with RETURNING too:
        docs, 5.8 and CREATE POLICY; an INSERT into a view checks its conditions), and what it
        runs when written for the events of each write (a column default on INSERT, or on
        UPDATE ... SET col = DEFAULT; a row lock of SELECT ... FOR UPDATE/SHARE runs only the
        row security policies for UPDATE)."""
        catalog = self.names.catalog
        if catalog is None:
            return []
        calls: list[Call] = []
        returning = any(node.args.get("returning") for node in self.tree.find_all(exp.Insert))
        for action in actions:
            relation = catalog.relation(*action.table) if action.table is not None else None
            if relation is None:
                continue
            reads = action.kind in _READS_ROWS or action.kind == "insert" and (relation.kind in _VIEWS or returning)
            named = [(("read", relation.qualified), f) for f in relation.functions if reads]
            events = _WRITE_EVENTS.get(action.kind, ())
            if action.kind == "update" and action.table in self.locked and action.columns == frozenset():
                events = ("lock",)  # FOR UPDATE/SHARE: the rows are locked, not changed (no trigger runs)
            elif action.kind == "update" and _sets_default(self.tree):
                events += ("default",)
            named += [((event, relation.qualified), f) for event, f in relation.written(events)]
            calls += [_code_call(catalog, name, via, f"run by {relation.qualified}") for via, name in named]
        return list(dict.fromkeys(calls))

    # -- names ---------------------------------------------------------------------------

    def _table_of(self, node: exp.Table, lenient: bool = False) -> Table:
        if node.args.get("catalog") is not None:
            raise Unsupported(f"three-part table name {node.sql(dialect=DIALECT)} (cross-database)")
        name = _ident(node.this) if isinstance(node.this, exp.Identifier) else None
        if name is None:
            raise Unsupported(f"unsupported table expression: {node.sql(dialect=DIALECT)[:60]}")
        return self.names.relation(_ident(node.args.get("db")), name, lenient)

    def _is_cte(self, node: exp.Table) -> bool:
        if node.args.get("db") is not None or not isinstance(node.this, exp.Identifier):
            return False
        name = _ident(node.this)
        for ancestor in _ancestors(node):
            with_ = ancestor.args.get("with_") if isinstance(ancestor, exp.Expr) else None
            if with_ is not None and any(_ident(cte.args["alias"].this) == name for cte in with_.expressions):
                return True
        return False

    def _base_table(self, node: exp.Table, lenient: bool = False) -> Table | None:
        """The base table a FROM item names; None for CTE references and table functions
        (also ROWS FROM (...), whose functions are FROM items of their own)."""
        if not isinstance(node.this, exp.Identifier):
            if isinstance(node.this, exp.Func) or node.this is None and node.args.get("rows_from"):
                return None
            raise Unsupported(f"unsupported FROM item: {node.sql(dialect=DIALECT)[:60]}")
        return None if self._is_cte(node) else self._table_of(node, lenient)

    def _known_columns(self, table: Table) -> tuple[str, ...] | None:
        if self.names.columns is None:
            return None
        found = self.names.columns.columns(*table)
        return tuple(found) if found is not None else None

    # -- writes --------------------------------------------------------------------------

    def _target(self, kind: str, node: exp.Expr | None, columns: frozenset[str] | None = None) -> None:
        if isinstance(node, exp.Schema):
            columns = frozenset(_ident(c) for c in node.expressions)
            node = node.this
        if isinstance(node, exp.Table) and node.this is None:
            self.targets.add(id(node))  # CREATE SCHEMA s and the like: no table involved
            self.actions.append(Action(kind))
        elif isinstance(node, exp.Table):
            self.targets.add(id(node))
            table = self._base_table(node, kind in _DDL_TARGETS)
            if table is None:
                raise Unsupported(f"{kind} target is not a table: {node.sql(dialect=DIALECT)[:60]}")
            self.actions.append(Action(kind, table, columns))
        else:
            self.actions.append(Action(kind))

    def _writes(self) -> None:
        for node in self.tree.walk():
            kind = _WRITE_KINDS.get(type(node))
            if kind is not None and isinstance(node.parent, exp.When):
                merge = next(a for a in _ancestors(node) if isinstance(a, exp.Merge))
                self.actions.append(Action(kind, self._table_of(_unwrap(merge.this)), None))
            elif kind == "update":
                cols = frozenset(_column_name(eq.this) for eq in node.expressions)
                self._target("update", node.this, cols)
            elif kind == "insert":
                self._target("insert", node.this, None)
                conflict = node.args.get("conflict")
                if conflict is not None and conflict.expressions:
                    cols = frozenset(_column_name(eq.this) for eq in conflict.expressions)
                    self.actions.append(Action("update", self.actions[-1].table, cols))
            elif kind is not None:
                self._target(kind, node.this, None)
            elif isinstance(node, exp.Select):
                self._select_side_effects(node)
            elif isinstance(node, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable, exp.Copy,
                                   exp.Grant, exp.Revoke, exp.Comment, exp.Analyze)):
                self._ddl(node)

    def _select_side_effects(self, node: exp.Select) -> None:
        into = node.args.get("into")
        if into is not None:
            self._target("create", into.this)
        for lock in node.args.get("locks") or ():
            if not lock.expressions and any(isinstance(i, exp.Subquery) for i in _direct_from_items(node)):
                raise Unsupported("FOR UPDATE/SHARE of a subquery (it locks the rows of the tables inside)")
            locked = list(lock.expressions) or [t for t in _direct_tables(node)]
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
            source = self._sources(select).get(str(_ident(node.this)))
            if source is not None and source.query is not None and not isinstance(source.query.parent, exp.CTE):
                raise Unsupported("FOR UPDATE/SHARE of a subquery (it locks the rows of the tables inside)")
            return source.table if source is not None else None
        return self._base_table(node)

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
                self._target(_STATEMENT_KINDS[type(node)], table_node)
            if not tables:
                self._target(_STATEMENT_KINDS[type(node)], None)

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

    # -- columns -------------------------------------------------------------------------

    def _sources(self, query: exp.Expr) -> dict[str, _Source]:
        """Names visible as FROM items in `query`, alias -> what it stands for (not to be changed)."""
        known = self.known_sources.get(id(query))
        if known is None:
            known = self.known_sources[id(query)] = self._from_items(query)
        return known

    def _from_items(self, query: exp.Expr) -> dict[str, _Source]:
        sources: dict[str, _Source] = {}
        if isinstance(query, exp.Insert) and isinstance(_unwrap(query.this), exp.Table):
            # the row proposed for insertion, in ON CONFLICT DO UPDATE (docs, INSERT)
            sources["excluded"] = _Source(table=self._table_of(_unwrap(query.this)))
        for item in _direct_from_items(query):
            alias_node = item.args.get("alias")
            alias_cols = (tuple(_ident(c.this if isinstance(c, exp.ColumnDef) else c) for c in alias_node.columns)
                          if alias_node is not None and alias_node.columns else None)
            alias = _ident(alias_node.this) if alias_node is not None and alias_node.this else None
            if isinstance(item, exp.Table):
                if not isinstance(item.this, exp.Identifier):  # a function, or ROWS FROM (functions)
                    name = item.this.sql(dialect=DIALECT).lower() if item.this is not None else ""
                    sources[alias or name] = _Source(columns=alias_cols)
                    continue
                name = _ident(item.this)
                if self._is_cte(item):
                    sources[alias or name] = _Source(query=_cte_query(item, name), columns=alias_cols)
                else:
                    sources[alias or name] = _Source(table=self._table_of(item), columns=alias_cols)
            elif isinstance(item, exp.Subquery):
                if not isinstance(item.this, (*_QUERY_NODES, exp.SetOperation, exp.Values)):
                    raise Unsupported("a parenthesised join in FROM: write its items in the FROM list")
                sources[alias or ""] = _Source(query=item.this, columns=alias_cols)
            elif isinstance(item, exp.Values):  # its columns carry what its rows hold
                sources[alias or ""] = _Source(query=item, columns=alias_cols)
            else:
                sources[alias or ""] = _Source(columns=alias_cols)
        return sources

    def _resolve(self, column: exp.Column) -> set[ColumnRef]:
        """The base columns a column reference reads (following CTEs and subqueries). A
        name no FROM item has as a column but one is called reads that item's whole row
        (docs, 8.16.5 "Using Composite Types in Queries"), and so does `t.f` where f is not
        a column of t: it is f(t), attribute notation (38.5.3)."""
        name = _column_name(column)
        qualifier = _ident(column.args.get("table")) if column.args.get("table") else None
        queries = _enclosing_queries(column)
        if column.args.get("catalog") is not None:
            raise Unsupported(f"column reference of four names: {column.sql(dialect=DIALECT)[:60]}")
        if column.args.get("db") is not None:  # schema.table.column, else item.column.field
            schema = _ident(column.args["db"])
            for query in queries:
                source = next((s for s in self._sources(query).values() if s.table == (schema, qualifier)), None)
                if source is not None:
                    return self._column_of(source, name)
            name, qualifier = str(qualifier), schema
        for query in queries:
            sources = self._sources(query)
            if qualifier is not None:
                source = self._qualified_source(sources, qualifier)
                if source is not None:
                    return self._column_of(source, name)
                continue
            candidates = [s for s in sources.values() if self._may_have(s, name)]
            if candidates:
                found: set[ColumnRef] = set()
                for source in candidates:
                    found |= self._from_source(source, name)
                return found
        if qualifier is None:
            for query in queries:
                source = self._sources(query).get(name)
                if source is not None:
                    return self._whole_row(source)
        return set()

    def _column_of(self, source: _Source, name: str) -> set[ColumnRef]:
        """What `item.name` reads: the column, or when the item is a relation that has no
        such column, its whole row (name(item), attribute notation)."""
        if source.table is not None:
            fields = self._source_columns(source)
            if fields is not None and name not in fields:
                return self._whole_row(source)
        return self._from_source(source, name)

    @staticmethod
    def _qualified_source(sources: dict[str, _Source], qualifier: str) -> _Source | None:
        """The FROM item `qualifier.` names: by its alias, or by its table's name."""
        if qualifier in sources:
            return sources[qualifier]
        return next((s for s in sources.values() if s.table and s.table[1] == qualifier), None)

    def _whole_row(self, source: _Source) -> set[ColumnRef]:
        """Every base column a FROM item's whole row reads, and a mark that a whole row was
        taken (WHOLE_ROW as the column: of that relation, or of no relation for a derived
        table), which the lineage of result columns carries to the engine: a row embedded in
        one value can only be masked field by field in a shape the masker knows."""
        if source.table is not None:
            known = self._known_columns(source.table)
            columns = {(*source.table, c) for c in known} if known is not None else {(*source.table, "*")}
            return columns | {(*source.table, WHOLE_ROW)}
        if source.query is not None:
            return {ref for _, refs in self._query_columns(source.query) for ref in refs} | {DERIVED_ROW}
        return set()

    def _source_columns(self, source: _Source) -> tuple[str, ...] | None:
        """The columns a FROM item has, None when unknown: an alias list renames the first
        (docs, 7.2.1.2 "Table and Column Aliases"); a relation other than a view or
        composite type also has the system columns (5.5)."""
        renamed = source.columns or ()
        if source.table is not None:
            known = self._known_columns(source.table)
            if known is None:
                return None
            relation = self.names.catalog.relation(*source.table) if self.names.catalog is not None else None
            system = _SYSTEM_COLUMNS if relation is None or relation.kind not in _NO_SYSTEM_COLUMNS else ()
            return (*renamed, *known[len(renamed):], *system)
        if source.query is not None:
            if id(source.query) in self.visiting:
                return None
            names = [column for column, _ in self._query_columns(source.query)]
            holder = source.query.parent
            alias = holder.args.get("alias") if isinstance(holder, exp.CTE) else None
            declared = tuple(str(_ident(c)) for c in alias.columns) if alias is not None else ()
            names = [*declared, *names[len(declared):]]
            return None if "*" in names else (*renamed, *names[len(renamed):])
        return source.columns

    def _attribute_calls(self) -> list[Call]:
        """Calls in attribute notation (docs, 38.5.3 "SQL Functions on Composite Types",
        8.16.5): `t.f`, `s.t.f` or `(t).f` where f is not a column (a field) of t is f(t),
        f found through the search_path. Judged with every function of that name as a
        candidate; when t is a relation of a complete catalog and the catalog holds no such
        function, an error (catalog-unknown-function: there is no such column either)."""
        catalog = self.names.catalog
        if catalog is None:
            return []
        calls: list[Call] = []
        for written, name, source in (a for node in self.tree.find_all(exp.Column, exp.Dot)
                                      for a in self._attributes(node)):
            fields = self._source_columns(source) if source is not None else None
            if fields is not None and name in fields:
                continue
            candidates = catalog.function_candidates(name, self.names.path_in_force(), self.names.role)
            if candidates:
                calls.append(Call(name, None, candidates, ("attribute", written)))
            elif fields is not None and source is not None and source.table is not None and catalog.complete:
                raise Unsupported(f'"{name}" is neither a column of {qualified(source.table)} nor a function in the '
                                  f'catalog (searched: {", ".join(self.names.searched())})', CATALOG_UNKNOWN_FUNCTION)
        return calls

    def _attributes(self, node: exp.Expr) -> list[tuple[str, str, _Source | None]]:
        """(as written, name, the FROM item it is taken from, None for a column of composite
        type or anything unknown) of each name of a qualified column reference or a field
        selection that may be a column, a field or a call in attribute notation."""
        written = node.sql(dialect=DIALECT)
        queries = [a for a in _ancestors(node) if isinstance(a, _QUERY_NODES)]
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
                row = str(_ident(inner.this))  # (t).f: t is a column if one is so named, else a whole row
                if not any(self._may_have(s, row) for query in queries for s in self._sources(query).values()):
                    source = self._named_source(queries, row, None)
            return [(written, str(_ident(node.expression)), source)]
        if not node.args.get("table") or not isinstance(node.this, exp.Identifier):
            return []
        if isinstance(node.parent, exp.EQ) and node.arg_key == "this" and isinstance(
                node.parent.parent, (exp.Update, exp.OnConflict)):
            return []  # the column a SET assigns
        name, qualifier = str(_ident(node.this)), str(_ident(node.args["table"]))
        if node.args.get("db") is None:
            return [(written, name, self._named_source(queries, qualifier, None))]
        schema = str(_ident(node.args["db"]))
        source = self._named_source(queries, qualifier, schema)
        if source is not None:  # schema.table.name
            return [(written, name, source)]
        # item.column.name: the column may be a call too, and then name one of its result
        return [(f"{schema}.{qualifier}", qualifier, self._named_source(queries, schema, None)), (written, name, None)]

    def _named_source(self, queries: list[exp.Expr], qualifier: str, schema: str | None) -> _Source | None:
        """The FROM item (or INSERT target) `[schema.]qualifier` names in the innermost query
        that has one; None when none does (it is then a column of composite type)."""
        for query in queries:
            sources = dict(self._sources(query))
            if isinstance(query, exp.Insert):
                target = _unwrap(query.this)
                table = self._base_table(target) if isinstance(target, exp.Table) else None
                if table is not None:
                    alias = target.args.get("alias")
                    named = _ident(alias.this) if alias is not None and alias.this else table[1]
                    sources.setdefault(str(named), _Source(table=table))
                    sources.setdefault("excluded", _Source(table=table))  # ON CONFLICT's proposed row
            if schema is not None:
                found = next((s for s in sources.values() if s.table == (schema, qualifier)), None)
            else:
                found = self._qualified_source(sources, qualifier)
            if found is not None:
                return found
        return None

    def _may_have(self, source: _Source, name: str) -> bool:
        """Can `name` be a column of the FROM item: by its columns as renamed by an alias list
        (the ones it does not rename keep their names), `*` expanded; a name it lacks is the
        item's whole row. Unknown columns (None) may be any."""
        if source.table is None and source.query is None:
            return source.columns is not None and name in source.columns
        names = self._source_columns(source)
        return names is None or name in names

    def _from_source(self, source: _Source, name: str) -> set[ColumnRef]:
        if source.table is not None:
            if source.columns is not None and name in source.columns:
                known = self._known_columns(source.table)
                if known is None or len(known) <= source.columns.index(name):
                    return {(*source.table, "*")}
                name = known[source.columns.index(name)]
            return {(*source.table, name)}
        if source.query is not None:
            names = self._source_columns(source)
            if names is not None and name in names:  # by position: an alias list renames the query's columns
                columns = self._query_columns(source.query)
                index = names.index(name)
                return columns[index][1] if index < len(columns) else {r for _, refs in columns for r in refs}
            return self._projection_sources(source.query, name)
        return set()

    def _projection_sources(self, query: exp.Expr, name: str) -> set[ColumnRef]:
        found: set[ColumnRef] = set()
        for column_name, sources in self._query_columns(query):
            if column_name in (name, "*"):
                found |= sources
        return found

    def _query_columns(self, query: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
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
            branches = [self._projections(select) for select in _selects(query)]
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

    def _projections(self, select: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
        if isinstance(select, exp.Values):  # column1, column2...: the k-th of every row (docs, 7.7)
            rows = [t.expressions for t in select.expressions if isinstance(t, exp.Tuple)]
            width = max((len(r) for r in rows), default=0)
            return [(f"column{k + 1}", {ref for r in rows if k < len(r) for ref in self._expression_sources(r[k])})
                    for k in range(width)]
        columns: list[tuple[str, set[ColumnRef]]] = []
        for projection in _projection_list(select):
            if _is_star(projection):
                columns.extend(self._star_columns(select, projection))
            else:
                columns.append((_output_name(projection), self._expression_sources(projection)))
        return columns

    def _star_columns(self, select: exp.Expr, star: exp.Expr) -> list[tuple[str, set[ColumnRef]]]:
        """What `*` or `t.*` expands to, in the server's order (docs, 7.2.1.1 "Joined
        Tables": the columns a USING or NATURAL join merges come once, first); a table the
        catalog does not know stays one `*`."""
        qualifier = _ident(star.args.get("table")) if isinstance(star, exp.Column) and star.args.get("table") else None
        sources = self._sources(select)
        if qualifier is not None:
            return self._item_columns(sources[qualifier]) if qualifier in sources else []
        return self._joined(select)[0]

    def _joined(self, select: exp.Expr) -> tuple[list[tuple[str, set[ColumnRef]]], set[ColumnRef]]:
        """The columns of a query's FROM items joined, in the server's order, and what the
        USING and NATURAL joins among them compare (their merged columns, both sides')."""
        items = list(self._sources(select).values())
        joins = _joins_of(select)
        if len(items) != len(joins) + 1 or not isinstance(select, exp.Select):  # DML: its target comes first
            side_by_side = [column for source in items for column in self._item_columns(source)]
            merged = {str(_ident(u)) for join in joins for u in join.args.get("using") or []}
            natural = any(str(join.args.get("method") or "").upper() == "NATURAL" for join in joins)
            return side_by_side, {ref for name, refs in side_by_side if natural or name in merged for ref in refs}
        columns, compared = self._item_columns(items[0]), set()
        for source, join in zip(items[1:], joins):
            right = self._item_columns(source)
            merged = [str(_ident(u)) for u in join.args.get("using") or []]
            if str(join.args.get("method") or "").upper() == "NATURAL":
                merged = [name for name, _ in columns if any(name == other for other, _ in right)]
            firsts = [(name, {ref for n, refs in columns + right if n == name for ref in refs}) for name in merged]
            compared |= {ref for _, refs in firsts for ref in refs}
            columns = firsts + [c for c in columns if c[0] not in merged] + [c for c in right if c[0] not in merged]
        return columns, compared

    def _item_columns(self, source: _Source) -> list[tuple[str, set[ColumnRef]]]:
        """The columns one FROM item gives, by name (an alias list renames the first ones); a
        function's: its alias list, else the one column of a scalar function."""
        if source.table is not None:
            known = self._known_columns(source.table)
            if known is None:
                return [("*", {(*source.table, "*")})]
            columns = [(c, {(*source.table, c)}) for c in known]
        elif source.query is not None:  # named as a WITH query's column list and the alias list name them
            columns, names = self._query_columns(source.query), self._source_columns(source)
            return [(names[i] if names is not None and i < len(names) else name, refs)
                    for i, (name, refs) in enumerate(columns)]
        else:
            return [(name, set()) for name in source.columns or ("?column?",)]
        renamed = source.columns or ()
        return [(renamed[i] if i < len(renamed) else name, refs) for i, (name, refs) in enumerate(columns)]

    def _star_sources(self, select: exp.Expr, star: exp.Expr) -> set[ColumnRef]:
        return {ref for _, sources in self._star_columns(select, star) for ref in sources}

    def _expression_sources(self, node: exp.Expr) -> set[ColumnRef]:
        found: set[ColumnRef] = set()
        for column in node.find_all(exp.Column):
            found |= self._star_sources(_enclosing_queries(column)[0], column) if column.is_star else self._resolve(column)
        for star in node.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)):
                found |= self._star_sources(_enclosing_queries(star)[0], star)
        return found

    def _outputs(self, calls: dict[int, Call]) -> tuple[OutputColumn, ...]:
        """Result columns of the statement (a query's projections, or DML's RETURNING), each
        with the relations whose whole row it embeds and the shape it embeds it in."""
        columns = self._query_columns(self.tree) if not isinstance(self.tree, exp.Values) else []
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
        selects = _selects(self.tree) if not isinstance(self.tree, exp.Values) else []
        if len(selects) != 1:
            return {}
        found: dict[int, tuple[str, Table]] = {}
        for position, projection in enumerate(_projection_list(selects[0])):
            if _is_star(projection):
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
        rows = [ref[:2] for ref in self._resolve(column) if ref[2] == WHOLE_ROW]
        if len(rows) != 1 or self._known_columns(rows[0]) is None:
            return None
        return rows[0]

    def _record_reads(self, root: exp.Expr) -> None:
        """Every column reference anywhere adds to the columns read of its base table."""
        for column in root.find_all(exp.Column):
            refs = (self._star_sources(_enclosing_queries(column)[0], column) if column.is_star
                    else self._resolve(column))
            self._add_reads(refs)
        for star in root.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)):
                self._add_reads(self._star_sources(_enclosing_queries(star)[0], star))

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
                if not _in_projection(column):
                    found |= self._star_sources(_enclosing_queries(column)[0], column)
            elif not _in_projection(column) or _inside(column, guarded):
                found |= self._resolve(column)
        for star in self.tree.find_all(exp.Star):
            if not isinstance(star.parent, (exp.Column, exp.Count)) and not _in_projection(star):
                found |= self._star_sources(_enclosing_queries(star)[0], star)
        for query in self.tree.find_all(exp.Select, exp.SetOperation):
            found |= self._output_references(query) | self._compared_outputs(query)
        for query in self.tree.find_all(exp.Select, exp.Update, exp.Delete):
            if _joins_of(query):
                found |= self._joined(query)[1]  # USING and NATURAL compare columns, as ON does
        return frozenset(ref for ref in found if ref[2] != WHOLE_ROW)

    def _compared_outputs(self, query: exp.Expr) -> set[ColumnRef]:
        """What SELECT DISTINCT, UNION (without ALL), INTERSECT and EXCEPT compare: every
        result column, whose values decide which rows come back and how many."""
        if isinstance(query, exp.Select) and isinstance(query.args.get("distinct"), exp.Distinct) \
                and not query.args["distinct"].args.get("on"):
            return {ref for _, refs in self._projections(query) for ref in refs}
        if isinstance(query, (exp.Intersect, exp.Except)) or isinstance(query, exp.Union) and query.args.get("distinct"):
            return {ref for _, refs in self._query_columns(query) for ref in refs}
        return set()

    def _computed(self, calls: dict[int, Call]) -> frozenset[ColumnRef]:
        """Base columns a result column is computed from, rather than being one (or a whole row
        in a shape the masker rewrites): a masked one is refused, since what a computation does
        with the value (an error it raises, the time it takes) could tell it."""
        found: set[ColumnRef] = set()
        for query in self.tree.find_all(*_QUERY_NODES, exp.Values):
            items = ([e for t in query.expressions if isinstance(t, exp.Tuple) for e in t.expressions]
                     if isinstance(query, exp.Values) else _projection_list(query))
            for projection in items:
                node = projection.unalias()
                while isinstance(node, exp.Paren):
                    node = node.this
                if _is_star(projection) or isinstance(node, (exp.Column, exp.Subquery)) \
                        or self._row_shape(node, calls) is not None:
                    continue
                found |= self._expression_sources(projection)
        return frozenset(ref for ref in found if ref[2] != WHOLE_ROW)

    def _output_references(self, select: exp.Expr) -> set[ColumnRef]:
        """What ORDER BY, GROUP BY and DISTINCT ON of a SELECT (or the ORDER BY of a UNION,
        INTERSECT, EXCEPT) read when they name a result column by its position or its output
        name (docs, 7.5 "Sorting Rows", 7.2.3 "GROUP BY")."""
        items = [o.this for o in (select.args["order"].expressions if select.args.get("order") else [])]
        items += _grouping_items(select.args["group"]) if select.args.get("group") else []
        distinct = select.args.get("distinct")  # a UNION's is a flag (UNION ALL or not)
        if isinstance(distinct, exp.Distinct) and distinct.args.get("on"):
            items += list(distinct.args["on"].expressions)
        items = [_unparen(i) for i in items]
        named = [i for i in items if isinstance(i, exp.Column) and not i.args.get("table")
                 or isinstance(i, exp.Literal) and not i.is_string]
        if not named:
            return set()
        columns = self._query_columns(select) if isinstance(select, exp.SetOperation) else self._projections(select)
        found: set[ColumnRef] = set()
        for item in named:
            if isinstance(item, exp.Literal):
                position = int(str(item.this)) - 1 if str(item.this).isdigit() else -1
                found |= columns[position][1] if 0 <= position < len(columns) else set()
            else:
                found |= {ref for name, refs in columns if name == _column_name(item) for ref in refs}
        return found


def _sets_default(tree: exp.Expr) -> bool:
    """Does an UPDATE set a column to DEFAULT (so its default runs)?"""
    return any(isinstance(n, exp.Var) and str(n.this).upper() == "DEFAULT"
               or isinstance(n, exp.Column) and isinstance(n.this, exp.Identifier) and not n.this.quoted
               and not n.args.get("table") and n.this.this.upper() == "DEFAULT"
               for n in tree.find_all(exp.Var, exp.Column))


def _column_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Column):
        return _ident(node.this)
    if isinstance(node, exp.Identifier):
        return _ident(node)
    raise Unsupported(f"unsupported column expression: {node.sql(dialect=DIALECT)[:60]}")


def _is_star(node: exp.Expr) -> bool:
    return isinstance(node, exp.Star) or (isinstance(node, exp.Column) and node.is_star)


def _ancestors(node: exp.Expr) -> Iterator[exp.Expr]:
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def _enclosing_queries(node: exp.Expr) -> list[exp.Expr]:
    """The queries whose FROM items a name in `node` may refer to, innermost first: not the
    query a FROM item or a WITH query sits in (docs, 7.2.1.5: a subquery in FROM sees no
    other FROM item of its level unless LATERAL; 7.8: a WITH query sees none), but the
    levels beyond it (a correlated subquery's)."""
    found: list[exp.Expr] = []
    child, skip, lateral = node, False, False
    for parent in _ancestors(node):
        if isinstance(parent, exp.Lateral):
            lateral = True
        elif child.arg_key == "this" and (isinstance(parent, (exp.From, exp.Join)) and not lateral
                                          or isinstance(parent, exp.CTE)):
            skip = True
        elif isinstance(parent, _QUERY_NODES):
            if not skip:
                found.append(parent)
            skip = lateral = False
        child = parent
    if not found:
        raise Unsupported(f"column outside any query: {node.sql(dialect=DIALECT)[:60]}")
    return found


def _cte_query(node: exp.Table, name: str) -> exp.Expr:
    for ancestor in _ancestors(node):
        with_ = ancestor.args.get("with_")
        if with_ is not None:
            for cte in with_.expressions:
                if _ident(cte.args["alias"].this) == name:
                    return cte.this
    raise Unsupported(f"CTE {name} not found")


def _direct_from_items(query: exp.Expr) -> list[exp.Expr]:
    """FROM and JOIN items that belong to `query` itself (for DML also the target)."""
    items: list[exp.Expr] = []
    if isinstance(query, (exp.Update, exp.Delete, exp.Merge, exp.Insert)) and query.this is not None:
        items.append(_unwrap(query.this))  # INSERT's: what ON CONFLICT DO UPDATE and RETURNING name
    for key in ("from_", "using"):
        clause = query.args.get(key)
        if isinstance(clause, exp.From):
            items.append(clause.this)
        elif isinstance(clause, list):
            items.extend(clause)
        elif isinstance(clause, exp.Expr):
            items.append(clause)
    items.extend(join.this for join in _joins_of(query))
    return [i.this if isinstance(i, exp.Lateral) else i for i in items]


def _joins_of(query: exp.Expr) -> list[exp.Expr]:
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


def _unwrap(node: exp.Expr) -> exp.Expr:
    return node.this if isinstance(node, exp.Schema) else node


def _direct_tables(query: exp.Expr) -> list[exp.Expr]:
    return [i for i in _direct_from_items(query) if isinstance(i, exp.Table)]


def _selects(query: exp.Expr) -> list[exp.Expr]:
    """The SELECTs whose projections name a query's columns (each branch of a UNION)."""
    if isinstance(query, exp.SetOperation):
        return _selects(query.this) + _selects(query.expression)
    if isinstance(query, exp.Subquery):
        return _selects(query.this)
    return [query]


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _grouping_items(group: exp.Expr) -> list[exp.Expr]:
    """The expressions of GROUP BY, those inside ROLLUP, CUBE and GROUPING SETS (and their
    parenthesised lists) included (docs, 7.2.4)."""
    items: list[exp.Expr] = []
    for item in group.expressions:
        item = _unparen(item)
        if isinstance(item, (exp.Rollup, exp.Cube, exp.GroupingSets, exp.Tuple)):
            items += _grouping_items(item)
        else:
            items.append(item)
    return items


def _output_name(projection: exp.Expr) -> str:
    """A result column's name as the server reads it (an alias or a column's name, folded
    unless quoted; docs, 4.1.1), "?column?" when it has none."""
    if isinstance(projection, exp.Alias) and isinstance(projection.args.get("alias"), exp.Identifier):
        return str(_ident(projection.args["alias"]))
    if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Identifier):
        return str(_ident(projection.this))
    return projection.alias_or_name or "?column?"


def _projection_list(select: exp.Expr) -> list[exp.Expr]:
    """A SELECT's result expressions, or DML's RETURNING list (empty without one)."""
    if isinstance(select, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        returning = select.args.get("returning")
        return list(returning.expressions) if returning is not None else []
    return list(select.expressions)


def _selects_into(tree: exp.Expr) -> bool:
    """SELECT ... INTO t: creates t and writes the rows into it (docs, SELECT INTO)."""
    return isinstance(tree, exp.Select) and tree.args.get("into") is not None


def _inside(node: exp.Expr, calls: frozenset[int]) -> bool:
    """Is `node` within the arguments of one of these calls (by node id), in its own query?"""
    for parent in _ancestors(node):
        if id(parent) in calls:
            return True
        if isinstance(parent, _QUERY_NODES):
            return False
    return False


def _in_projection(node: exp.Expr) -> bool:
    """True when a column's value reaches the client only as a result column: it sits in a
    SELECT list or RETURNING whose query is the statement's result, a FROM-derived table
    (whose own uses are checked through lineage) or a scalar subquery in such a list; not
    when it orders or partitions a window or an aggregate, or filters one (FILTER): then it
    chooses which rows count, and in what order, which the result shows."""
    child = node
    for parent in _ancestors(node):
        if (isinstance(parent, exp.Order) and child.arg_key == "expressions"
                or isinstance(parent, exp.Window) and child.arg_key == "partition_by"
                or isinstance(parent, exp.Filter) and child.arg_key == "expression"):
            return False
        if isinstance(parent, exp.Returning):
            return _flows_out(parent.parent)
        if isinstance(parent, exp.Select):
            return child.arg_key == "expressions" and _flows_out(parent)
        if isinstance(parent, _QUERY_NODES):
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
        return _in_projection(parent)
    if isinstance(parent, exp.CTE):
        return True
    return False
