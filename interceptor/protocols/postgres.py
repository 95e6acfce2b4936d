"""postgres: the enforcer logs in upstream with the resource's credentials and judges every
SQL statement (interceptor.policy.sql_rules); its handler is interceptor.handlers.postgres."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interceptor.operations import SqlQuery
from interceptor.policy.catalog import parse_search_path
from interceptor.policy.sql_rules import OPERATION_KEY, judge_sql, parse_sql_match
from interceptor.protocols.spec import ProtocolSpec

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog

_STRINGS = {"$ref": "#/$defs/strings"}

MATCH_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Matches SQL statements (PostgreSQL dialect, parsed with sqlglot). Each statement of a query is "
                   "judged, and the query gets the most restrictive verdict.",
    "properties": {
        "kinds": {**_STRINGS, "description": (
            "Statement kinds: `select insert update delete merge truncate copy copy_file copy_program create alter "
            "drop grant revoke comment analyze set transaction`, `ddl` (see below) or `*`. Statements sqlglot "
            "keeps opaque (`do`, `call`, `vacuum`, `show`, ...) match only rules that name their kind and have no "
            "tables, columns or functions condition.")},
        "tables": {**_STRINGS, "description": (
            "`schema.table` globs, matched against the relation the server will read: unqualified names resolve "
            "by the session's search_path and the catalog (see \"How a SQL statement is judged\"); identifiers "
            "fold to lower case unless quoted.")},
        "columns": {**_STRINGS, "description": (
            "`column` or `schema.table.column` globs. On allow/approve rules they must cover every column read; "
            "on deny rules any one column matches.")},
        "functions": {**_STRINGS, "description": (
            "Function names, `name` or `schema.name` globs. A rule with `functions` judges function calls only, "
            "including what the statement runs unnamed (views, triggers, casts, operators).")},
    },
}

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "description": "Settings of the postgres handler.",
    "properties": {
        "databases": {**_STRINGS, "description": (
            "Glob patterns of the databases agents may open. Omitted: only the database the credentials name, "
            "if they name one; else any (the server's grants decide).")},
        "tls": {"type": ["boolean", "object"], "additionalProperties": False,
                "properties": {"ca": {"type": "string", "minLength": 1},
                               "server_name": {"type": "string", "minLength": 1}},
                "description": "TLS to the server, always verified: `true` against the system CA store; "
                               "`{ca: /path, server_name: name}` against that CA (and that name); omitted or "
                               "`false`: no TLS."},
    },
}


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> SqlQuery:
    """`sql: TEXT`, with `search_path: "sales, public"` the setting in force when it runs."""
    settings: tuple[tuple[str, str | None], ...] = ()
    if "search_path" in case:
        value = case["search_path"]
        if not isinstance(value, str) or parse_search_path(value) is None:
            raise ValueError(f"search_path {value!r} is not a search_path setting (comma-separated schema names)")
        settings = (("search_path", value),)
    return SqlQuery(str(case[OPERATION_KEY]), settings=settings, catalog=catalog)


SPEC: ProtocolSpec[SqlQuery] = ProtocolSpec(
    name="postgres",
    operation_key=OPERATION_KEY,
    operation=SqlQuery,
    description="Available: every SQL statement judged, masking, approvals; integration-tested through the kernel "
                "redirect with psql, psycopg, asyncpg and pgbench against PostgreSQL 15.",
    handler="interceptor.handlers.postgres",
    match_schema=MATCH_SCHEMA,
    options_schema=OPTIONS_SCHEMA,
    parse_match=parse_sql_match,
    judge=judge_sql,
    parse_case=_parse_case,
    case_keys=frozenset({"search_path"}),
    masks=True,
    catalogs=True,
)
