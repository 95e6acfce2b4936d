"""The audit record of one PostgreSQL statement: what ran (its text with the literals
redacted, how it was sent) and how it ended (rows, command tag, error, duration, approval).
"""

from __future__ import annotations

import re

from interceptor.audit.event import SharedSummary
from interceptor.handlers.commands import Record, StreamId
from interceptor.handlers.postgres.state import Statement
from interceptor.textcache import short_text_cache

_LITERAL = re.compile(r"""(?:[eE]?'(?:[^']|'')*')|(\$[A-Za-z_]*\$)(?:.|\n)*?\1|(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?""")


@short_text_cache(maxsize=4096)
def redact_literals(sql: str) -> str:
    """The statement with string, dollar-quoted and numeric literals replaced by '?'
    (cached: a prepared statement's text comes back with every execution)."""
    return _LITERAL.sub("?", sql)


def statement_record(statement: Statement, database: str, ended: float, stream: StreamId) -> Record:
    """The Record of `statement`, which ended at `ended` (seconds on the clock that timed
    its start). A prepared statement's operation is built once and shared by its executions
    (scrubbed and encoded once), until it runs with another number of parameters."""
    prepared = statement.prepared
    if prepared is None:
        operation: dict[str, object] = _operation(statement, database)
    else:
        if prepared.operation is None or prepared.operation.get("parameters", 0) != statement.parameters:
            prepared.operation = SharedSummary(_operation(statement, database))
        operation = prepared.operation
    outcome: dict[str, object] = {
        "rows": statement.rows, "command": statement.command, "error": statement.error,
        "duration_ms": round((ended - statement.started) * 1000, 3),
    }
    if statement.approval is not None:
        outcome["approval"] = statement.approval
    return Record(statement.decision, operation, outcome, stream=stream)


def _operation(statement: Statement, database: str) -> dict[str, object]:
    operation: dict[str, object] = {
        "protocol": "postgres", "database": database, "via": statement.via,
        "statement": redact_literals(statement.text),
    }
    if statement.parameters:
        operation["parameters"] = statement.parameters
    return operation
