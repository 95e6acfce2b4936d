"""How the names of one statement resolve, as the server resolves them (docs, 5.9.3 "The
Schema Search Path", 10.3 "Functions"): relations, functions, operators and types, under
the search_path and role in force, through a Catalog that must hold every one named; and
the refusal of a search_path that puts other code before pg_catalog's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from sqlglot import exp

from interceptor.policy.catalog import (
    SYSTEM_SCHEMAS, Catalog, CatalogUnavailable, Type, parse_search_path,
)
from interceptor.policy.settings import SessionSettings
from interceptor.policy.sql.tree import DIALECT, ident
from interceptor.policy.statement import (
    CATALOG_UNAVAILABLE, CATALOG_UNKNOWN_FUNCTION, CATALOG_UNKNOWN_RELATION, CATALOG_UNKNOWN_TYPE, Call, Statement,
    Table, Unsupported,
)


class SchemaCatalog(Protocol):
    """Column names of the tables the analyser meets. None means unknown: `*` cannot be
    expanded for that table. A Catalog is one; a plain column source resolves unqualified
    names without the server's rules (first schema of the path that has the table)."""

    def columns(self, schema: str, table: str) -> Sequence[str] | None: ...


AnyCatalog = Catalog | CatalogUnavailable | SchemaCatalog | None

SHADOWING_RULE = "builtin-search-path-shadowing"
NO_EXPRESSIONS = frozenset({"set", "reset", "transaction", "show", "discard", "deallocate", "empty"})


def refuse_shadowing(statement: Statement, names: Names) -> Statement:
    """The statement, or an error under builtin-search-path-shadowing when it would run with
    a search_path that searches a schema holding functions or operators before pg_catalog:
    any unqualified call or operator (even `+`) could then run that schema's code instead of
    the server's (CVE-2018-1058; docs, 5.9.6 "Usage Patterns"). Statements that evaluate no
    expression (SET, RESET, transaction control, SHOW) still run, so the path can be fixed."""
    if names.catalog is None or names.path is None or statement.kind in NO_EXPRESSIONS or statement.error:
        return statement
    shadowing = names.catalog.shadowing(names.path, names.role)
    if not shadowing:
        return statement
    return Statement(statement.text, statement.kind, error=(
        f"the search_path searches {', '.join(shadowing)} before pg_catalog, and its functions or operators "
        "could take the place of the server's own; put pg_catalog first (SET search_path = pg_catalog, ...)"),
        rule=SHADOWING_RULE)


@dataclass(frozen=True, slots=True)
class Names:
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
    def of(cls, session: SessionSettings, catalog: AnyCatalog) -> Names:
        """The names in force under `session`'s search_path and role, through `catalog`."""
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
        """The search_path as set; Unsupported when its value cannot be read."""
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
        return [code_call(self.catalog, named, ("operator", display), f"of operator {display}") for named in functions]


def code_call(catalog: Catalog | None, qualified: str, via: tuple[str, str], whose: str) -> Call:
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
        return None, str(ident(kind))
    if isinstance(kind, exp.Dot) and isinstance(kind.this, exp.Identifier) and isinstance(kind.expression,
                                                                                          exp.Identifier):
        return ident(kind.this), str(ident(kind.expression))
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
        tree = DIALECT.parser().parse(DIALECT.tokenize(text), text)[0]
    except Exception:  # noqa: BLE001 - a name sqlglot cannot read as a type is not read as a builtin either
        return None
    cast = tree.find(exp.Cast) if tree is not None else None
    to = cast.args.get("to") if cast is not None else None
    if to is None or isinstance(to, exp.DataType) and to.this == exp.DType.USERDEFINED:
        return None
    return _type_reading(to)
