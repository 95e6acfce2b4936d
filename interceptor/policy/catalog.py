"""The server's catalog, as the enforcer needs it to judge a statement the way the server
will run it: relations of every kind with their columns and the code they run when read or
written, functions with their volatility, SECURITY DEFINER flag and language, types with
the code a cast to them runs, the functions of operators outside pg_catalog, and the login
role's effective default search_path.

The daemon reads it from each database through its own upstream connection
(interceptor.handlers.postgres.catalog); `policy test` files give one inline or load a dump
of a real server's (`interceptor catalog show --json`). Both are this one type.

Name resolution follows PostgreSQL (docs, 5.9.3 "The Schema Search Path"): `pg_catalog` is
searched first unless the path lists it elsewhere; `"$user"` stands for the current role's
name when a schema of that name exists; schemas that do not exist are skipped; the session's
temporary schema (`pg_temp`) is never known to the enforcer, whose catalog connection is not
the agent's session, so a relation reached only through it is not in the catalog. Functions
are resolved over the whole path (docs, 10.3 "Functions"): every function of that name in any
schema of the path is a candidate, since argument types, not the path order alone, pick one.
Type names resolve like relation names: the first schema of the path holding one of that
name (docs, 8.19 and 5.9.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
RELATION_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
                  "f": "foreign table", "c": "composite type", "S": "sequence"}
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# When the code in Relation.write_functions runs: on an INSERT, UPDATE, DELETE or TRUNCATE
# of the relation's rows; `default`: a column default, run by an INSERT (and an UPDATE that
# sets a column to DEFAULT); `lock`: a row security policy for UPDATE, which SELECT ... FOR
# UPDATE/SHARE runs too (docs, CREATE POLICY).
WRITE_EVENTS = ("insert", "update", "delete", "truncate", "default", "lock")


class CatalogUnavailable(Exception):
    """The catalog could not be read (query failed, timed out, connection refused): every
    statement that needs it is denied with this message."""


@dataclass(frozen=True, slots=True)
class Relation:
    """A pg_class row of one of RELATION_KINDS, with its live columns in attnum order."""

    schema: str
    name: str
    kind: str = "r"  # pg_class.relkind
    columns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # format_type() of each column, same order (may be empty)
    oid: int = 0
    # "schema.name" of the functions the server runs when it reads the relation: a view's
    # definition and what the relations it reads run when read, row security USING policies
    functions: tuple[str, ...] = ()
    # (event, "schema.name") of the functions it runs when rows are written (WRITE_EVENTS):
    # column defaults, generated columns, triggers, CHECK constraints, the domain checks of
    # its columns' types, row security policies, index expressions, rules, and what the
    # relations a view or rule writes, or its partitions and children, run when written
    write_functions: tuple[tuple[str, str], ...] = ()
    attnums: tuple[int, ...] = ()  # pg_attribute.attnum of each column (empty: 1, 2, ... in order)
    # a view's: "schema.table.column" its definition reads ("schema.table.*": a whole row),
    # which its columns may carry (the enforcer does not follow which column carries which)
    definition_reads: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_at(self, attnum: int) -> str | None:
        """The name of the column numbered `attnum` (RowDescription's column attribute
        number), None for a system column, a dropped one or none."""
        numbers = self.attnums or tuple(range(1, len(self.columns) + 1))
        return self.columns[numbers.index(attnum)] if attnum in numbers else None

    def written(self, events: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """(event, function) of what writing rows with these events runs."""
        wanted = set(events)
        return tuple((event, function) for event, function in self.write_functions if event in wanted)


@dataclass(frozen=True, slots=True)
class Type:
    """A pg_type row. For a type outside pg_catalog and information_schema, `functions`:
    "schema.name" of what a value cast to it runs (docs, 8.18 "Domain Types", CREATE CAST):
    the CHECK constraints of a domain and of the domains it is over, its elements',
    attributes' or range subtype's, the functions of the casts into it, and what using a
    value of it runs: its default btree and hash operator classes (docs, 38.16.6 "System
    Dependencies on Operator Classes"), and a range type's subtype operator class,
    subtype_diff and canonical function (docs, 8.17.8 "Defining New Range Types")."""

    schema: str
    name: str
    kind: str = "b"  # pg_type.typtype: b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    functions: tuple[str, ...] = ()
    oid: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Function:
    """A pg_proc row: a function, aggregate, window function or procedure."""

    schema: str
    name: str
    arguments: tuple[str, ...] = ()  # input argument types, as pg_get_function_identity_arguments lists them
    volatility: str = "volatile"  # immutable | stable | volatile
    security_definer: bool = False
    language: str = "internal"
    kind: str = "f"  # pg_proc.prokind: f function, a aggregate, w window, p procedure
    returns_set: bool = False
    oid: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Catalog:
    """An immutable snapshot of one database's catalog; `version` changes with its content."""

    relations: Mapping[tuple[str, str], Relation]
    functions: Mapping[tuple[str, str], tuple[Function, ...]]
    schemas: frozenset[str]
    default_search_path: tuple[str, ...] = ("$user", "public")
    user: str = ""  # the login role: what "$user" stands for until a SET ROLE
    database: str = ""
    unusable: frozenset[str] = frozenset()  # schemas the login role has no USAGE on: a search_path skips them
    operators: frozenset[str] = frozenset()  # schemas that hold operators
    types: Mapping[tuple[str, str], Type] = field(default_factory=dict)
    # (schema, operator name) -> "schema.name" of the function of each operator of that name
    # in that schema (one per argument types), for schemas other than pg_catalog
    operator_functions: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # (type of pg_catalog or information_schema, "schema.name" of its default btree or hash
    # operator class) -> "schema.name" of the functions of that class's operator family, when
    # the family or the function is outside them: code a value of a builtin type runs where
    # it is compared, sorted, grouped or hashed (docs, 38.16.6 "System Dependencies on
    # Operator Classes"), which a value from no table (a literal, VALUES, a function's
    # result) may be too
    opclass_functions: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    version: str = field(default="", compare=False)
    # is it a whole database's, as read from a server (it holds pg_catalog's types)? One
    # written by hand may list only some columns of a relation and only its own types: a
    # name it does not hold may then still be a column, or a builtin type
    complete: bool = field(default=False, compare=False, repr=False)
    # the types a cast to which runs code (Type.functions), outside pg_catalog and information_schema
    code_types: tuple[Type, ...] = field(default=(), compare=False, repr=False)
    # the relation whose row type (pg_class.reltype) each composite type OID is
    row_types: Mapping[int, Relation] = field(default_factory=dict, compare=False, repr=False)
    by_oid: Mapping[int, Relation] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, relations: Iterable[Relation], functions: Iterable[Function] = (), *,
              schemas: Iterable[str] = (), default_search_path: Sequence[str] = ("$user", "public"),
              user: str = "", database: str = "", unusable: Iterable[str] = (),
              operators: Iterable[str] = (), types: Iterable[Type] = (),
              operator_functions: Mapping[tuple[str, str], Sequence[str]] | None = None,
              opclass_functions: Mapping[tuple[str, str], Sequence[str]] | None = None) -> Catalog:
        rels = {(r.schema, r.name): r for r in relations}
        funcs: dict[tuple[str, str], list[Function]] = {}
        for function in functions:
            funcs.setdefault((function.schema, function.name), []).append(function)
        kinds = {(t.schema, t.name): t for t in types}
        calls = {key: tuple(sorted(set(names))) for key, names in (operator_functions or {}).items()}
        holding = {s for s, _ in rels} | {s for s, _ in funcs} | {s for s, _ in kinds} | {s for s, _ in calls}
        known = frozenset(schemas) | holding | SYSTEM_SCHEMAS
        classes = {key: tuple(sorted(set(names))) for key, names in (opclass_functions or {}).items()}
        catalog = cls(rels, {k: tuple(v) for k, v in funcs.items()}, known, tuple(default_search_path), user,
                      database, frozenset(unusable), frozenset(operators) | {s for s, _ in calls}, kinds, calls,
                      classes)
        content = (sorted(rels.items()), sorted(catalog.functions.items()), sorted(known), catalog.default_search_path,
                   user, database, sorted(catalog.unusable), sorted(catalog.operators), sorted(kinds.items()),
                   sorted(calls.items()), sorted(classes.items()))
        object.__setattr__(catalog, "version", hashlib.sha256(repr(content).encode()).hexdigest()[:16])
        object.__setattr__(catalog, "complete", any(schema == "pg_catalog" for schema, _ in kinds))
        object.__setattr__(catalog, "code_types", tuple(t for t in kinds.values()
                                                        if t.functions and t.schema not in SYSTEM_SCHEMAS))
        object.__setattr__(catalog, "row_types", {t.oid: rels[key] for key, t in kinds.items()
                                                  if t.kind == "c" and t.oid and key in rels})
        object.__setattr__(catalog, "by_oid", {r.oid: r for r in rels.values() if r.oid})
        return catalog

    @classmethod
    def from_columns(cls, tables: Mapping[str, Sequence[str]], **kwargs: Any) -> Catalog:
        """The short form of a test file: {"schema.table": [columns]} (tables only)."""
        relations = []
        for qualified, columns in tables.items():
            schema, _, name = str(qualified).partition(".")
            if not name:
                raise ValueError(f"catalog table {qualified!r} must be schema-qualified (schema.table)")
            relations.append(Relation(schema, name, "r", tuple(str(c) for c in columns)))
        return cls.build(relations, **kwargs)

    # -- lookups -------------------------------------------------------------------------

    def relation(self, schema: str, name: str) -> Relation | None:
        return self.relations.get((schema, name))

    def columns(self, schema: str, table: str) -> tuple[str, ...] | None:
        """Column names of a relation, None when the catalog does not hold it."""
        relation = self.relations.get((schema, table))
        return relation.columns if relation is not None else None

    def functions_named(self, schema: str, name: str) -> tuple[Function, ...]:
        return self.functions.get((schema, name), ())

    def type(self, schema: str, name: str) -> Type | None:
        return self.types.get((schema, name))

    def column_at(self, table_oid: int, attnum: int) -> str | None:
        """"schema.table.column" of a RowDescription's table OID and column number, None
        when the catalog does not hold that table or it has no such column."""
        relation = self.by_oid.get(table_oid)
        column = relation.column_at(attnum) if relation is not None else None
        return f"{relation.qualified}.{column}" if relation is not None and column is not None else None

    def row_type(self, relation: Relation) -> int | None:
        """The OID of a relation's row type (its composite type), None when not held."""
        found = self.types.get((relation.schema, relation.name))
        return found.oid if found is not None and found.kind == "c" and found.oid else None

    # -- resolution ----------------------------------------------------------------------

    def effective_path(self, path: Sequence[str], role: str | None = None) -> tuple[str, ...]:
        """The schemas the server searches, in order, for a search_path setting `path`:
        pg_catalog first unless listed, "$user" replaced by the role's name, schemas that
        do not exist or that the role may not use, and pg_temp (unknown to the enforcer), left out."""
        role = self.user if role is None else role
        listed: list[str] = []
        for schema in path:
            name = role if schema == "$user" else schema
            if name and name in self.schemas and name not in self.unusable and name not in listed:
                listed.append(name)
        if "pg_catalog" not in path:
            listed.insert(0, "pg_catalog")
        return tuple(listed)

    def shadowing(self, path: Sequence[str], role: str | None = None) -> tuple[str, ...]:
        """Schemas searched before pg_catalog that hold functions or operators: an unqualified
        call or operator may resolve to theirs instead of the server's own (CVE-2018-1058)."""
        searched = self.effective_path(path, role)
        before = searched[:searched.index("pg_catalog")]
        return tuple(s for s in before if s in self.operators or any(k[0] == s for k in self.functions))

    def resolve_relation(self, name: str, path: Sequence[str], role: str | None = None) -> Relation | None:
        """The relation an unqualified `name` means: the first schema of the path holding it."""
        for schema in self.effective_path(path, role):
            relation = self.relations.get((schema, name))
            if relation is not None:
                return relation
        return None

    def function_candidates(self, name: str, path: Sequence[str], role: str | None = None) -> tuple[Function, ...]:
        """Every function an unqualified call of `name` may resolve to: all of that name in
        any schema of the path (argument types choose among them, so all are candidates)."""
        found: list[Function] = []
        for schema in self.effective_path(path, role):
            found.extend(self.functions.get((schema, name), ()))
        return tuple(found)

    def resolve_type(self, name: str, path: Sequence[str], role: str | None = None) -> Type | None:
        """The type an unqualified `name` means: the first schema of the path holding one."""
        for schema in self.effective_path(path, role):
            found = self.types.get((schema, name))
            if found is not None:
                return found
        return None

    def operator_candidates(self, schema: str | None, name: str, path: Sequence[str],
                            role: str | None = None) -> tuple[str, ...]:
        """The functions OPERATOR([schema.]name) may run, outside pg_catalog: those of every
        operator of that name in the schema, or in any schema of the path (docs, 10.2
        "Operators": operand types, not the path order alone, pick one)."""
        schemas = (schema,) if schema is not None else self.effective_path(path, role)
        return tuple(sorted({f for s in schemas for f in self.operator_functions.get((s, name), ())}))

    # -- dump and load -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dump; `from_dict` reads it back (what `catalog show --json` prints)."""
        return {
            "database": self.database,
            "user": self.user,
            "default_search_path": list(self.default_search_path),
            "schemas": sorted(self.schemas),
            "unusable": sorted(self.unusable),
            "operators": sorted(self.operators),
            "relations": [_plain(asdict(r)) for _, r in sorted(self.relations.items())],
            "functions": [_plain(asdict(f)) for _, fs in sorted(self.functions.items()) for f in fs],
            "types": [_plain(asdict(t)) for _, t in sorted(self.types.items())],
            "operator_functions": [{"schema": schema, "name": name, "functions": list(functions)}
                                   for (schema, name), functions in sorted(self.operator_functions.items())],
            "opclass_functions": [{"type": type_, "opclass": opclass, "functions": list(functions)}
                                  for (type_, opclass), functions in sorted(self.opclass_functions.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        """ValueError (naming the field) for a malformed dump."""
        try:
            relations = [Relation(**{**r, **{k: tuple(r.get(k, ())) for k in ("columns", "types", "functions",
                                                                             "attnums", "definition_reads")},
                                     "write_functions": tuple(_write(pair) for pair in r.get("write_functions", ()))})
                         for r in data.get("relations", ())]
            functions = [Function(**{**f, "arguments": tuple(f.get("arguments", ()))})
                         for f in data.get("functions", ())]
            types = [Type(**{**t, "functions": tuple(t.get("functions", ()))}) for t in data.get("types", ())]
            operator_functions = {(str(o["schema"]), str(o["name"])): tuple(o["functions"])
                                  for o in data.get("operator_functions", ())}
            opclass_functions = {(str(o["type"]), str(o["opclass"])): tuple(o["functions"])
                                 for o in data.get("opclass_functions", ())}
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"malformed catalog dump: {exc}") from None
        return cls.build(relations, functions, schemas=data.get("schemas", ()),
                         default_search_path=tuple(data.get("default_search_path", ("$user", "public"))),
                         user=str(data.get("user", "")), database=str(data.get("database", "")),
                         unusable=data.get("unusable", ()), operators=data.get("operators", ()), types=types,
                         operator_functions=operator_functions, opclass_functions=opclass_functions)


def _write(pair: Sequence[str]) -> tuple[str, str]:
    """One (event, function) of a dumped Relation.write_functions."""
    event, function = pair
    if event not in WRITE_EVENTS:
        raise ValueError(f"write event {event!r} is not one of {', '.join(WRITE_EVENTS)}")
    return str(event), str(function)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _listed(v) for k, v in row.items()}


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


NAMEDATALEN = 64  # identifiers keep at most NAMEDATALEN - 1 bytes (docs, 4.1.1)
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def truncate_identifier(name: str) -> str:
    """What the server keeps of an identifier: its first 63 bytes (UTF-8), cut at a
    character boundary (scansup.c truncate_identifier)."""
    data = name.encode("utf-8")
    if len(data) < NAMEDATALEN:
        return name
    return data[:NAMEDATALEN - 1].decode("utf-8", "ignore")


def fold_identifier(name: str) -> str:
    """An unquoted identifier as the server reads it: only ASCII A-Z folded to lower case
    (downcase_identifier; other letters keep their case), then truncated."""
    return truncate_identifier(name.translate(_ASCII_UPPER))


def parse_search_path(value: str) -> tuple[str, ...] | None:
    """A search_path setting's value as the server splits it (SplitIdentifierString):
    comma-separated names, unquoted ones folded to lower case and trimmed, double-quoted
    ones kept as written with "" for a quote. None when the value is malformed."""
    names: list[str] = []
    pos, size = 0, len(value)
    while True:
        while pos < size and value[pos].isspace():
            pos += 1
        if pos < size and value[pos] == '"':
            end, name = pos + 1, []
            while True:
                close = value.find('"', end)
                if close < 0:
                    return None
                name.append(value[end:close])
                if value[close + 1:close + 2] == '"':
                    name.append('"')
                    end = close + 2
                    continue
                pos = close + 1
                break
            word = truncate_identifier("".join(name))  # "" names no schema: the server skips it
        else:
            start = pos
            while pos < size and value[pos] != "," and not value[pos].isspace():
                pos += 1
            word = fold_identifier(value[start:pos])
            if not word:
                return None if names or value.strip() else ()
        names.append(word)
        while pos < size and value[pos].isspace():
            pos += 1
        if pos >= size:
            return tuple(names)
        if value[pos] != ",":
            return None
        pos += 1
