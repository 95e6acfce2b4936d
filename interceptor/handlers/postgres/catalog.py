"""Reading a database's catalog over the enforcer's own upstream connection, and the daemon's
cache of what it read (CatalogStore).

The read is one simple Query of several statements: the login role's settings first, then
`SET LOCAL search_path = pg_catalog` for the rest of that implicit transaction, so neither a
name nor an operator the later statements use can be taken over by a schema on the role's
own search_path (every table and function is also written pg_catalog.-qualified). Each
statement's rows start with a one-letter tag, so the rows of the whole answer can be told
apart in the one list `Upstream.simple_query` returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interceptor.policy.catalog import (
    SYSTEM_SCHEMAS, VOLATILITY, Catalog, CatalogUnavailable, Function, Relation, Type, parse_search_path,
)

if TYPE_CHECKING:  # the handler hands the store its connections (and may import this module)
    from interceptor.handlers.postgres.upstream import Upstream

_SKIPPED_SCHEMAS = "n.nspname <> 'pg_toast' AND NOT pg_catalog.pg_is_other_temp_schema(n.oid)"

_SYSTEM = "('pg_catalog', 'information_schema')"

# Code the server runs without a statement naming it, found in the stored expression trees
# (pg_node_tree), not pg_depend, which records no dependency on the server's own (pinned)
# functions such as now() or pg_read_file(): (owner, tag, function schema, function name,
# domain type). The owner is a relation, or for tag `domain` a type; the tag says when the
# code runs (_TAG_EVENTS). Trees: rewrite rules (a view's definition, tag rule:1, not for
# the server's own views nor a materialized view's, which runs at REFRESH; a rule's action
# and condition, rule:2 UPDATE, rule:3 INSERT, rule:4 DELETE: docs, 41 "The Rule System"),
# column defaults and generated columns (5.2, 5.3), table and domain CHECK constraints
# (5.4.1, 8.18), row security policies of tables that have it enabled (5.8: USING and WITH
# CHECK by command), trigger WHEN conditions (CREATE TRIGGER) and index expressions and
# predicates (11.7, 11.8). A function is called directly, as an aggregate or window
# function, as a hash function, or through an operator (also one that sorts or groups); a
# domain is named where a value is coerced to it (its CHECKs run). In a tree's text a
# token's spaces are backslash-escaped, so only a node's own field can read ":funcid 123".
_TREES = f"""
SELECT r.ev_class AS owner, pg_catalog.concat('rule:', r.ev_type) AS tag,
       pg_catalog.concat(r.ev_action, r.ev_qual) AS tree
FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN {_SYSTEM} AND NOT (c.relkind = 'm' AND r.ev_type = '1')
UNION ALL
SELECT a.adrelid, CASE WHEN t.attgenerated = 's' THEN 'generated' ELSE 'default' END, a.adbin::pg_catalog.text
FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_attribute t ON t.attrelid = a.adrelid AND t.attnum = a.adnum
UNION ALL
SELECT k.conrelid, 'check', k.conbin::pg_catalog.text FROM pg_catalog.pg_constraint k
WHERE k.contype = 'c' AND k.conrelid <> 0
UNION ALL
SELECT k.contypid, 'domain', k.conbin::pg_catalog.text FROM pg_catalog.pg_constraint k
WHERE k.contype = 'c' AND k.contypid <> 0
UNION ALL
SELECT p.polrelid, pg_catalog.concat('using:', p.polcmd), p.polqual::pg_catalog.text
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE c.relrowsecurity
UNION ALL
SELECT p.polrelid, pg_catalog.concat('with_check:', p.polcmd), p.polwithcheck::pg_catalog.text
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE c.relrowsecurity
UNION ALL
SELECT t.tgrelid, pg_catalog.concat('trigger:', t.tgtype), t.tgqual::pg_catalog.text FROM pg_catalog.pg_trigger t
WHERE NOT t.tgisinternal
UNION ALL
SELECT i.indrelid, 'index', pg_catalog.concat(i.indexprs, i.indpred) FROM pg_catalog.pg_index i
"""
_CALLED = "('opno', 'eqop', 'sortop')"
_CALLS = f"""
SELECT DISTINCT 'c', o.owner, o.tag, pn.nspname, p.proname, d.oid
FROM ({_TREES}) o
CROSS JOIN LATERAL pg_catalog.regexp_matches(
  o.tree, ':(funcid|aggfnoid|winfnoid|hashfuncid|negfuncid|opno|eqop|sortop|resulttype) ([0-9]+)', 'g') AS m(f)
LEFT JOIN pg_catalog.pg_operator op ON m.f[1] IN {_CALLED} AND op.oid = m.f[2]::pg_catalog.oid
LEFT JOIN pg_catalog.pg_proc p ON p.oid = CASE WHEN m.f[1] IN {_CALLED} THEN op.oprcode
                                               WHEN m.f[1] <> 'resulttype' THEN m.f[2]::pg_catalog.oid END
LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
LEFT JOIN pg_catalog.pg_type d ON m.f[1] = 'resulttype' AND d.oid = m.f[2]::pg_catalog.oid AND d.typtype = 'd'
WHERE p.oid IS NOT NULL OR d.oid IS NOT NULL
"""
# When the code of each tag runs: "read" (Relation.functions) or catalog.WRITE_EVENTS.
_TAG_EVENTS: dict[str, tuple[str, ...]] = {
    "rule:1": ("read",), "rule:2": ("update",), "rule:3": ("insert",), "rule:4": ("delete",),
    "default": ("default",), "generated": ("insert", "update"), "check": ("insert", "update"),
    "index": ("insert", "update"),
    "using:*": ("read", "update", "delete"), "using:r": ("read",), "using:w": ("update", "lock"),
    "using:d": ("delete",),
    "with_check:*": ("insert", "update"), "with_check:a": ("insert",), "with_check:w": ("update",),
}
# The members of operator families: operators (their functions) and support functions.
_MEMBERS = """
SELECT o.amopfamily AS family, o.amoplefttype AS lefttype, o.amoprighttype AS righttype, r.oprcode AS fn
FROM pg_catalog.pg_amop o JOIN pg_catalog.pg_operator r ON r.oid = o.amopopr
UNION ALL
SELECT a.amprocfamily, a.amproclefttype, a.amprocrighttype, a.amproc FROM pg_catalog.pg_amproc a
"""
# What a value of a type runs, unnamed by the statement, where an expression compares,
# sorts, groups, hashes or casts it: (how, type, operator class, function schema, function
# name). ORDER BY, GROUP BY, DISTINCT, UNION, window and ordered-aggregate sorting and the
# comparison and hashing of arrays and rows use the default btree or hash operator class of
# the type (pg_opclass.opcdefault), and the planner the other members of its operator family
# (docs, 38.16.6 "System Dependencies on Operator Classes"): the functions of the operators
# (pg_amop) and the support functions (pg_amproc) of the family of a default btree or hash
# operator class, how `o` for the class's input type (with the class's name) and `m` for the
# left and right type of each member (cross-type ones too), when the family or the function is
# outside pg_catalog and information_schema. A class that is not a default runs only where
# named: by an index (_INDEXED), by a range type, or by ORDER BY ... USING. How `r`: a range
# type's value is built, compared and read with the support functions of its subtype_opclass
# for the subtype, its subtype_diff and its canonical function (docs, 8.17.8 "Defining New
# Range Types"), when outside pg_catalog and information_schema. How `c`: the function of a
# cast out of the type when the type or the function is outside them (docs, CREATE CAST; 10
# "Type Conversion"): of a cast into a type of pg_catalog or information_schema, which a
# statement may name (`c::int`) or apply unnamed, and of an implicit cast into another type
# (one run where the statement names that type, or writes a column of it, is in
# Type.functions and the written relation's write_functions).
_VALUES = f"""
SELECT DISTINCT 'u', v.how, v.type, v.opclass, n.nspname, p.proname FROM (
  SELECT t.how, t.type, CASE WHEN t.how = 'o' THEN pg_catalog.concat(cn.nspname, '.', c.opcname) END AS opclass,
         m.fn, fs.nspname AS owner
  FROM pg_catalog.pg_opclass c
  JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod AND a.amname IN ('btree', 'hash')
  JOIN pg_catalog.pg_namespace cn ON cn.oid = c.opcnamespace
  JOIN pg_catalog.pg_opfamily f ON f.oid = c.opcfamily JOIN pg_catalog.pg_namespace fs ON fs.oid = f.opfnamespace
  JOIN ({_MEMBERS}) m ON m.family = f.oid
  CROSS JOIN LATERAL (VALUES ('m', m.lefttype), ('m', m.righttype), ('o', c.opcintype)) AS t(how, type)
  WHERE c.opcdefault
  UNION ALL
  SELECT 'r', g.rngtypid, NULL, x.fn, 'pg_catalog' FROM pg_catalog.pg_range g
  JOIN pg_catalog.pg_opclass c ON c.oid = g.rngsubopc
  CROSS JOIN LATERAL (SELECT a.amproc FROM pg_catalog.pg_amproc a WHERE a.amprocfamily = c.opcfamily
                      AND a.amproclefttype = c.opcintype AND a.amprocrighttype = c.opcintype
                      UNION ALL VALUES (g.rngsubdiff), (g.rngcanonical)) AS x(fn)
  UNION ALL
  SELECT 'c', k.castsource, NULL, k.castfunc, sn.nspname FROM pg_catalog.pg_cast k
  JOIN pg_catalog.pg_type s ON s.oid = k.castsource JOIN pg_catalog.pg_namespace sn ON sn.oid = s.typnamespace
  JOIN pg_catalog.pg_type d ON d.oid = k.casttarget JOIN pg_catalog.pg_namespace dn ON dn.oid = d.typnamespace
  WHERE k.castfunc <> 0 AND (k.castcontext = 'i' OR dn.nspname IN {_SYSTEM})) v
JOIN pg_catalog.pg_proc p ON p.oid = v.fn JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN {_SYSTEM} OR v.owner NOT IN {_SYSTEM}
"""
# An index runs the members of the operator family of each of its columns' operator classes,
# of any access method, where a statement scans it and where rows written are entered in it
# (docs, 11.10 "Operator Classes and Operator Families"): (relation, function schema,
# function name), when the family or the function is outside pg_catalog and
# information_schema.
_INDEXED = f"""
SELECT DISTINCT 'k', i.indrelid, n.nspname, p.proname FROM pg_catalog.pg_index i
CROSS JOIN LATERAL pg_catalog.unnest(i.indclass) AS c(opclass)
JOIN pg_catalog.pg_opclass oc ON oc.oid = c.opclass JOIN ({_MEMBERS}) m ON m.family = oc.opcfamily
JOIN pg_catalog.pg_opfamily f ON f.oid = m.family JOIN pg_catalog.pg_namespace fs ON fs.oid = f.opfnamespace
JOIN pg_catalog.pg_proc p ON p.oid = m.fn JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN {_SYSTEM} OR fs.nspname NOT IN {_SYSTEM}
"""
_INDEX_EVENTS: tuple[str, ...] = ("read", "insert", "update")
_RULE_EVENTS = {"1": "read", "2": "update", "3": "insert", "4": "delete"}  # pg_rewrite.ev_type
_POLICY_EVENTS = {"*": ("read", "insert", "update", "delete"), "r": ("read",), "a": ("insert",),
                  "w": ("update", "lock"), "d": ("delete",)}  # pg_policy.polcmd
_TRIGGER_EVENTS = ((4, "insert"), (8, "delete"), (16, "update"), (32, "truncate"))  # pg_trigger.tgtype bits

CATALOG_QUERY = ";\n".join((
    # s: the login role's default search_path (before the SET below), who it is, where
    "SELECT 's', pg_catalog.current_setting('search_path'), current_user, pg_catalog.current_database()",
    "SET LOCAL search_path = pg_catalog",
    # n: every schema, and whether the login role may use it (a search_path skips it if not)
    f"SELECT 'n', n.nspname, pg_catalog.has_schema_privilege(n.oid, 'USAGE') "
    f"FROM pg_catalog.pg_namespace n WHERE {_SKIPPED_SCHEMAS}",
    # o: the schemas that hold operators
    "SELECT DISTINCT 'o', n.nspname FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace",
    # p: schema and name of every operator outside pg_catalog, and its function's (docs, CREATE OPERATOR)
    "SELECT 'p', n.nspname, o.oprname, pn.nspname, p.proname FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode "
    "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace WHERE n.nspname <> 'pg_catalog'",
    # r: oid, schema, name, relkind, [[column, type, type oid, attnum], ...] of the live columns in attnum order
    "SELECT 'r', c.oid, n.nspname, c.relname, c.relkind, "
    "(SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, "
    "pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnum) ORDER BY a.attnum) "
    "FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c', 'S') AND {_SKIPPED_SCHEMAS}",
    _CALLS.strip(),
    # t: relation, tgtype, schema and name of the function of each trigger (not the server's
    # own, for foreign keys: docs, 39 "Triggers")
    "SELECT 't', t.tgrelid, t.tgtype, n.nspname, p.proname FROM pg_catalog.pg_trigger t "
    "JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "WHERE NOT t.tgisinternal",
    # v: the relations a rewrite rule (a view's definition) reads or writes: relation, ev_type, relation reached
    "SELECT DISTINCT 'v', r.ev_class, r.ev_type, m.f[1] FROM pg_catalog.pg_rewrite r "
    "JOIN pg_catalog.pg_class c ON c.oid = r.ev_class JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL pg_catalog.regexp_matches(r.ev_action, ':relid ([0-9]+)', 'g') AS m(f) "
    f"WHERE n.nspname NOT IN {_SYSTEM} AND NOT (c.relkind = 'm' AND r.ev_type = '1')",
    # w: the columns a view's definition reads (docs, 52.18 pg_depend: a view's rule depends on
    # each column it reads, on the whole relation (0) for a whole-row reference): view, relation, attnum
    "SELECT DISTINCT 'w', r.ev_class, d.refobjid, d.refobjsubid FROM pg_catalog.pg_rewrite r "
    "JOIN pg_catalog.pg_class c ON c.oid = r.ev_class AND c.relkind = 'v' "
    "JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid "
    "AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> r.ev_class",
    # q: the relations a row security policy's expressions read (their own policies apply
    # too: docs, 5.8): relation, polcmd, relation read
    "SELECT DISTINCT 'q', p.polrelid, p.polcmd, m.f[1] FROM pg_catalog.pg_policy p "
    "JOIN pg_catalog.pg_class c ON c.oid = p.polrelid "
    "CROSS JOIN LATERAL pg_catalog.regexp_matches(pg_catalog.concat(p.polqual, p.polwithcheck), "
    "':relid ([0-9]+)', 'g') AS m(f) WHERE c.relrowsecurity",
    # i: parent and child of table inheritance and partitioning (rows written into the
    # parent reach the child: docs, 5.10, 5.11)
    "SELECT 'i', i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i",
    # y: every type: oid, schema, name, typtype, typbasetype, typelem, typrelid, range subtype
    "SELECT 'y', t.oid, n.nspname, t.typname, t.typtype, t.typbasetype, t.typelem, t.typrelid, g.rngsubtype "
    "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
    f"LEFT JOIN pg_catalog.pg_range g ON g.rngtypid = t.oid WHERE {_SKIPPED_SCHEMAS}",
    # x: the function of each cast into a type outside pg_catalog and information_schema
    "SELECT 'x', k.casttarget, n.nspname, p.proname FROM pg_catalog.pg_cast k "
    "JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "JOIN pg_catalog.pg_type t ON t.oid = k.casttarget JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace "
    f"WHERE tn.nspname NOT IN {_SYSTEM}",
    # u: how, type, operator class, schema and name of what a value of the type runs (_VALUES)
    _VALUES.strip(),
    # k: relation, schema and name of what its indexes run (_INDEXED)
    _INDEXED.strip(),
    # f: oid, schema, name, [input argument types], provolatile, prosecdef, language,
    # prokind, proretset, whether the last input argument is VARIADIC
    "SELECT 'f', p.oid, n.nspname, p.proname, "
    "(SELECT pg_catalog.json_agg(pg_catalog.format_type(t.oid, NULL) ORDER BY t.i) "
    "FROM pg_catalog.unnest(p.proargtypes) WITH ORDINALITY AS t(oid, i)), "
    "p.provolatile, p.prosecdef, l.lanname, p.prokind, p.proretset, p.provariadic <> 0 "
    "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "JOIN pg_catalog.pg_language l ON l.oid = p.prolang",
))


async def read_catalog(upstream: Upstream, database: str) -> Catalog:
    """The catalog of the database `upstream` is logged in to, with one simple Query.

    Relations of every kind in catalog.RELATION_KINDS (pg_toast and other sessions'
    temporary schemas left out) with their live columns and types in attnum order, and the
    code the server runs when they are read or written (see _TREES; also trigger functions,
    the operator classes of their indexes (_INDEXED), the domain checks of their columns'
    types, what values of their columns' types run (_VALUES), and what the relations a view
    or rule reaches, or their partitions and children, run); every type, with what a cast to
    one outside pg_catalog and information_schema runs; the functions of the operators
    outside pg_catalog; every pg_proc row; every schema; the login role's effective
    search_path (`current_setting`, so a startup parameter would show in it too),
    current_user and current_database().

    Raises LoginError when the server answers with an error, OSError or ProtocolViolation
    when the connection fails, and CatalogUnavailable when the answer is not a catalog of
    `database` (another database, a search_path that does not parse, malformed rows).
    """
    rows = await upstream.simple_query(CATALOG_QUERY)
    try:
        # ~4,500 rows for an empty database take tens of milliseconds to build into a
        # Catalog: in a thread, so the sessions' event loop is not held up for all of it
        return await asyncio.to_thread(_catalog, rows, database)
    except (ValueError, TypeError, LookupError) as exc:
        raise CatalogUnavailable(f"malformed catalog rows from the server: {exc}") from None


def _catalog(rows: list[list[str | None]], database: str) -> Catalog:
    tagged: dict[str, list[list[str | None]]] = {tag: [] for tag in "snoprctvwqiyxukf"}
    for row in rows:
        tagged[str(row[0])].append(row[1:])
    if len(tagged["s"]) != 1:
        raise CatalogUnavailable(f"expected one settings row, got {len(tagged['s'])}")
    path_setting, user, current = (str(value) for value in tagged["s"][0])
    if current != database:
        raise CatalogUnavailable(f"the catalog connection is to database {current!r}, not {database!r}")
    path = parse_search_path(path_setting)
    if path is None:
        raise CatalogUnavailable(f"the login role's search_path {path_setting!r} does not parse")
    code = _Code.of(tagged)
    relations = []
    # oid -> ("schema.name", its live columns as [column, type, type oid, attnum])
    described: dict[int, tuple[str, list[list[Any]]]] = {
        int(str(oid)): (f"{schema}.{name}", json.loads(columns) if columns is not None else [])
        for oid, schema, name, _, columns in tagged["r"]}
    view_reads: dict[int, list[str]] = {}
    for view, relation, attnum in tagged["w"]:
        qualified, columns = described.get(int(str(relation)), (None, []))
        if qualified is not None:
            named = next((c for c, *_, n in columns if int(n) == int(str(attnum))), "*")
            view_reads.setdefault(int(str(view)), []).append(f"{qualified}.{named}")
    for oid, schema, name, kind, _ in tagged["r"]:
        triples = described[int(str(oid))][1]
        reads, writes = code.relation(int(str(oid)))
        relations.append(Relation(str(schema), str(name), str(kind), tuple(str(c) for c, *_ in triples),
                                  tuple(str(t) for _, t, *_ in triples), int(str(oid)), reads, writes,
                                  tuple(int(n) for *_, n in triples),
                                  tuple(sorted(set(view_reads.get(int(str(oid)), ()))))))
    types = [Type(str(schema), str(name), str(kind),
                  tuple(sorted(code.type(int(str(oid))))) if schema not in SYSTEM_SCHEMAS else (), int(str(oid)))
             for oid, schema, name, kind, *_ in tagged["y"]]
    names = {int(str(oid)): f"{schema}.{name}" for oid, schema, name, *_ in tagged["y"]}
    opclass_functions = {(names[oid], opclass): tuple(sorted(functions))
                         for (oid, opclass), functions in code.opclass_functions.items()}
    operator_functions: dict[tuple[str, str], list[str]] = {}
    for schema, name, function_schema, function in tagged["p"]:
        operator_functions.setdefault((str(schema), str(name)), []).append(f"{function_schema}.{function}")
    functions = [_function(row) for row in tagged["f"]]
    return Catalog.build(relations, functions, schemas=(str(name) for name, _ in tagged["n"]),
                         default_search_path=path, user=user, database=current,
                         unusable=(str(name) for name, usable in tagged["n"] if usable != "t"),
                         operators=(str(name) for (name,) in tagged["o"]), types=types,
                         operator_functions=operator_functions, opclass_functions=opclass_functions)


def _tag_events(tag: str) -> tuple[str, ...]:
    """When the code found under `tag` runs (a KeyError for a tag the query never makes)."""
    if tag.startswith("trigger:"):
        bits = int(tag.removeprefix("trigger:"))
        return tuple(event for bit, event in _TRIGGER_EVENTS if bits & bit)
    return _TAG_EVENTS[tag]


@dataclass(slots=True)
class _Code:
    """The code read for each relation and type (by oid), and what follows from it: a view
    runs what the relations it reads run when read, and when written through, what they run
    when written; a rule runs what the relations its action reaches run; a row security
    policy what the relations it reads run when read; rows written into a parent reach its
    partitions and children; a domain runs the checks of the domains it is over or its
    checks coerce to, and a type those of its elements, attributes and range subtype, and
    what its default btree and hash operator classes, or as a range its subtype's operator
    class, subtype_diff and canonical function, run (_VALUES, how `o` and `r`); a
    relation runs the checks of the domains its code coerces to, and of its columns' types
    when written; its indexes what their operator classes run (_INDEXED); and when read,
    what a value of its columns' types runs where it is compared, sorted, grouped, hashed or
    cast (_VALUES), and a value of their elements, attributes, range subtypes or base types,
    which an expression over a column may reach."""

    reads: dict[int, set[str]] = field(default_factory=dict)
    writes: dict[int, set[tuple[str, str]]] = field(default_factory=dict)
    domains: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # relation -> (event, domain)
    type_functions: dict[int, set[str]] = field(default_factory=dict)
    value_functions: dict[int, set[str]] = field(default_factory=dict)
    # (type of pg_catalog or information_schema, default operator class) -> its code (Catalog.opclass_functions)
    opclass_functions: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    nested_types: dict[int, set[int]] = field(default_factory=dict)
    system_types: set[int] = field(default_factory=set)
    reached: dict[int, dict[str, set[int]]] = field(default_factory=dict)  # relation -> rule event -> relations
    policy_reads: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # relation -> (event, relation read)
    children: dict[int, set[int]] = field(default_factory=dict)
    column_types: dict[int, list[int]] = field(default_factory=dict)
    _types: dict[int, frozenset[str]] = field(default_factory=dict)
    _values: dict[int, frozenset[str]] = field(default_factory=dict)
    _reads: dict[int, frozenset[str]] = field(default_factory=dict)
    _writes: dict[int, frozenset[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, tagged: dict[str, list[list[str | None]]]) -> _Code:
        code = cls()
        for oid, _, _, _, columns in tagged["r"]:
            code.column_types[int(str(oid))] = [int(t) for _, _, t, _ in json.loads(columns or "[]")]
        for oid, schema, _, _, base, element, relation, subtype in tagged["y"]:
            if schema in SYSTEM_SCHEMAS:
                code.system_types.add(int(str(oid)))
            nested = code.nested_types.setdefault(int(str(oid)), set())
            nested.update(int(str(t)) for t in (base, element, subtype or 0) if int(str(t)))
            nested.update(code.column_types.get(int(str(relation)), ()))
        for target, schema, name in tagged["x"]:
            code.type_functions.setdefault(int(str(target)), set()).add(f"{schema}.{name}")
        for how, type_, opclass, schema, name in tagged["u"]:
            type_oid, function = int(str(type_)), f"{schema}.{name}"
            code.value_functions.setdefault(type_oid, set()).add(function)
            if how in ("o", "r"):  # what using a value of the type runs, also where no table holds it
                code.type_functions.setdefault(type_oid, set()).add(function)
            if how == "o" and type_oid in code.system_types:
                code.opclass_functions.setdefault((type_oid, str(opclass)), set()).add(function)
        for owner, tag, schema, name, domain in tagged["c"]:
            if tag == "domain" and domain is not None:
                code.nested_types.setdefault(int(str(owner)), set()).add(int(domain))
            elif tag == "domain":
                code.type_functions.setdefault(int(str(owner)), set()).add(f"{schema}.{name}")
            elif domain is not None:
                code.domains.setdefault(int(str(owner)), set()).update(
                    (event, int(domain)) for event in _tag_events(str(tag)))
            else:
                code.add(int(str(owner)), _tag_events(str(tag)), f"{schema}.{name}")
        for relation, schema, name in tagged["k"]:
            code.add(int(str(relation)), _INDEX_EVENTS, f"{schema}.{name}")
        for relation, tgtype, schema, name in tagged["t"]:
            code.add(int(str(relation)), _tag_events(f"trigger:{tgtype}"), f"{schema}.{name}")
        for relation, ev_type, reached in tagged["v"]:
            if int(str(reached)) != int(str(relation)):  # a view's rules name the view itself (OLD, NEW)
                event = _RULE_EVENTS[str(ev_type)]
                code.reached.setdefault(int(str(relation)), {}).setdefault(event, set()).add(int(str(reached)))
        for relation, command, read in tagged["q"]:
            code.policy_reads.setdefault(int(str(relation)), set()).update(
                (event, int(str(read))) for event in _POLICY_EVENTS[str(command)])
        for parent, child in tagged["i"]:
            code.children.setdefault(int(str(parent)), set()).add(int(str(child)))
        return code

    def add(self, relation: int, events: tuple[str, ...], function: str) -> None:
        for event in events:
            if event == "read":
                self.reads.setdefault(relation, set()).add(function)
            else:
                self.writes.setdefault(relation, set()).add((event, function))

    def type(self, oid: int) -> frozenset[str]:
        """What a value cast to the type runs (nothing for pg_catalog's and information_schema's)."""
        return self._nested(oid, self.type_functions, self._types, self.system_types, frozenset())

    def value(self, oid: int) -> frozenset[str]:
        """What a value of the type runs where it is compared, sorted, grouped, hashed or cast."""
        return self._nested(oid, self.value_functions, self._values, frozenset(), frozenset())

    def _nested(self, oid: int, direct: dict[int, set[str]], done: dict[int, frozenset[str]],
                skipped: Collection[int], seen: frozenset[int]) -> frozenset[str]:
        """The functions `direct` holds for the type and the types nested in it, none of `skipped`."""
        known = done.get(oid)
        if known is not None:
            return known
        if oid in seen or oid in skipped:
            return frozenset()
        found = set(direct.get(oid, ()))
        for nested in self.nested_types.get(oid, ()):
            found |= self._nested(nested, direct, done, skipped, seen | {oid})
        if not seen:  # a result cut short by a cycle is only complete for where it started
            done[oid] = frozenset(found)
        return frozenset(found)

    def relation(self, oid: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """Relation.functions and Relation.write_functions of the relation."""
        return tuple(sorted(self.read(oid, frozenset()))), tuple(sorted(self.written(oid, frozenset())))

    def read(self, oid: int, seen: frozenset[int]) -> frozenset[str]:
        done = self._reads.get(oid)
        if done is not None:
            return done
        if oid in seen:
            return frozenset()
        found = set(self.reads.get(oid, ()))
        found |= {f for event, domain in self.domains.get(oid, ()) if event == "read" for f in self.type(domain)}
        for column_type in self.column_types.get(oid, ()):
            found |= self.value(column_type)
        for base in self.reached.get(oid, {}).get("read", ()):
            found |= self.read(base, seen | {oid})
        for event, other in self.policy_reads.get(oid, ()):
            if event == "read":
                found |= self.read(other, seen | {oid})
        if not seen:  # a result cut short by a cycle is only complete for where it started
            self._reads[oid] = frozenset(found)
        return frozenset(found)

    def written(self, oid: int, seen: frozenset[int]) -> frozenset[tuple[str, str]]:
        done = self._writes.get(oid)
        if done is not None:
            return done
        if oid in seen:
            return frozenset()
        inner = seen | {oid}
        found = set(self.writes.get(oid, ()))
        found |= {(event, f) for event, domain in self.domains.get(oid, ()) if event != "read"
                  for f in self.type(domain)}
        for column_type in self.column_types.get(oid, ()):
            found |= {(event, f) for f in self.type(column_type) for event in ("insert", "update")}
        for event, reached in self.reached.get(oid, {}).items():
            for other in reached:
                if event == "read":  # writing through a view writes the relations it reads
                    found |= self.written(other, inner)
                else:  # a rule's action may read and write what it names, whatever its own command
                    found |= {(event, f) for f in self.read(other, inner)}
                    found |= {(event, f) for _, f in self.written(other, inner)}
        for event, other in self.policy_reads.get(oid, ()):
            if event != "read":
                found |= {(event, f) for f in self.read(other, inner)}
        for child in self.children.get(oid, ()):
            found |= self.written(child, inner)
        if not seen:  # a result cut short by a cycle is only complete for where it started
            self._writes[oid] = frozenset(found)
        return frozenset(found)


def _function(row: list[str | None]) -> Function:
    oid, schema, name, arguments, volatility, definer, language, kind, returns_set, variadic = row
    types = [str(t) for t in json.loads(arguments)] if arguments is not None else []
    if variadic == "t":
        types[-1] = f"VARIADIC {types[-1]}"  # as pg_get_function_identity_arguments lists it
    return Function(str(schema), str(name), tuple(types), VOLATILITY[str(volatility)], definer == "t",
                    str(language), str(kind), returns_set == "t", int(str(oid)))


Key = tuple[str, str]  # (resource, database)


@dataclass(slots=True)
class _Slot:
    """What the store knows of one (resource, database): the last catalog read and when
    (monotonic seconds), the last failure and when, and the read under way, which
    concurrent callers share."""

    catalog: Catalog | None = None
    read_at: float = 0.0
    failure: str | None = None
    failed_at: float = 0.0
    reading: asyncio.Task[Catalog] | None = None


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One key of the store as `catalog show` reports it. `read_at` is epoch seconds and
    `age` seconds (both None before a first successful read); `failure` the last read's
    error while it is remembered."""

    resource: str
    database: str
    catalog: Catalog | None
    read_at: float | None
    age: float | None
    fresh: bool
    failure: str | None
    reading: bool


class CatalogStore:
    """The daemon's catalogs by (resource, database).

    `get` answers from a catalog read less than `ttl` seconds ago, else reads one through a
    connection it opens with the caller's `connect` and closes after; concurrent callers for
    one key share a single read. A read that fails or takes over `timeout` seconds raises
    CatalogUnavailable, and that failure is answered again for `failure_ttl` seconds before
    the next read is tried. At most `max_entries` keys are kept, the least recently used
    dropped first. `clock` is monotonic seconds (injectable for tests).
    """

    def __init__(self, *, ttl: float = 300.0, timeout: float = 10.0, failure_ttl: float = 5.0,
                 max_entries: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.timeout = timeout
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()

    async def get(self, resource: str, database: str, connect: Callable[[], Awaitable[Upstream]]) -> Catalog:
        """The catalog of `database` on `resource`: cached while fresh, else read (or joined
        to the read under way). Raises CatalogUnavailable saying what failed: the login, the
        query, or the timeout; or the failure still remembered from a recent attempt."""
        key = (resource, database)
        now = self.clock()
        slot = self._touch(key)
        if slot is not None and slot.catalog is not None and now - slot.read_at < self.ttl:
            return slot.catalog
        if slot is not None and self._remembered(slot, now) and slot.reading is None:
            raise CatalogUnavailable(f"{slot.failure} ({now - slot.failed_at:.0f}s ago; "
                                     f"tried again {self.failure_ttl:g}s after a failure)")
        if slot is None:
            slot = self._add(key)
        if slot.reading is None:
            slot.reading = asyncio.ensure_future(self._read(key, slot, connect))
        # shielded: a caller giving up does not cancel the read the others wait for
        return await asyncio.shield(slot.reading)

    def peek(self, resource: str, database: str) -> Catalog | None:
        """The last catalog read for the key, even when stale; None when none was. Never blocks."""
        slot = self._touch((resource, database))
        return slot.catalog if slot is not None else None

    def age(self, resource: str, database: str) -> float | None:
        """Seconds since the key's catalog was read from the server; None when none was."""
        slot = self._slots.get((resource, database))
        return self.clock() - slot.read_at if slot is not None and slot.catalog is not None else None

    def invalidate(self, resource: str, database: str | None = None) -> int:
        """Forget the catalogs of `resource` (of one database, or all): the next `get` reads
        again. A read under way finishes for those already waiting on it, but what it read is
        not kept. Returns how many keys were dropped."""
        keys = [k for k in self._slots if k[0] == resource and (database is None or k[1] == database)]
        for key in keys:
            del self._slots[key]
        return len(keys)

    def entries(self) -> list[StoreEntry]:
        """Every key held, least recently used first."""
        now, wall = self.clock(), time.time()
        return [StoreEntry(resource, database, slot.catalog,
                           wall - (now - slot.read_at) if slot.catalog is not None else None,
                           now - slot.read_at if slot.catalog is not None else None,
                           slot.catalog is not None and now - slot.read_at < self.ttl,
                           slot.failure if self._remembered(slot, now) else None, slot.reading is not None)
                for (resource, database), slot in self._slots.items()]

    def _remembered(self, slot: _Slot, now: float) -> bool:
        return slot.failure is not None and now - slot.failed_at < self.failure_ttl

    def _touch(self, key: Key) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        return slot

    def _add(self, key: Key) -> _Slot:
        slot = self._slots[key] = _Slot()
        while len(self._slots) > self.max_entries:
            self._slots.popitem(last=False)
        return slot

    async def _read(self, key: Key, slot: _Slot, connect: Callable[[], Awaitable[Upstream]]) -> Catalog:
        resource, database = key
        stage = ["logging in"]

        async def read() -> Catalog:
            try:
                upstream = await connect()
            except Exception as exc:  # noqa: BLE001 - whatever stops the login, the catalog is unavailable
                raise CatalogUnavailable(f"login failed: {exc}") from None
            try:
                stage[0] = "querying"
                return await read_catalog(upstream, database)
            except CatalogUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - as above, for the query
                raise CatalogUnavailable(f"query failed: {exc}") from None
            finally:
                upstream.close()

        failure: str | None
        try:
            catalog = await asyncio.wait_for(read(), self.timeout)
        except CatalogUnavailable as exc:
            failure = str(exc)
        except TimeoutError:
            failure = f"timed out after {self.timeout:g}s {stage[0]}"
        else:
            failure = None
        finally:
            slot.reading = None
        current = self._slots.get(key) is slot  # not invalidated or dropped meanwhile
        if failure is None:
            if current:
                slot.catalog, slot.read_at, slot.failure = catalog, self.clock(), None
            return catalog
        message = f"the catalog of database {database!r} on resource {resource!r} is unavailable: {failure}"
        if current:
            slot.failure, slot.failed_at = message, self.clock()
        raise CatalogUnavailable(message)
