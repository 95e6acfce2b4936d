"""A SQL string cut into its statements (sans-IO, postgres dialect): tokenized, split at
semicolons, each classified by its first words and handed to what reads that kind of
statement: the session's (SET, SHOW, BEGIN, FETCH...: interceptor.policy.sql_session),
sqlglot's opaque commands, EXPLAIN and DECLARE ... CURSOR (judged as the statement they
hold), and the parser for the rest (interceptor.policy.sql.analysis).

Each statement is analysed under the settings the ones before it in the same string
leave (SET, RESET, set_config, transaction control; interceptor.policy.settings). Anything
not fully understood comes back with `error` set, and the engine denies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from interceptor.operations import Settings
from interceptor.policy.settings import SessionSettings
from interceptor.policy.sql.analysis import analyse_tree
from interceptor.policy.sql.names import AnyCatalog, Names, refuse_shadowing
from interceptor.policy.sql.tree import DIALECT, selects_into
from interceptor.policy.sql.writes import STATEMENT_KINDS
from interceptor.policy.sql_functions import token_name
from interceptor.policy.sql_session import (
    close, deallocate, discard, fetch, refuse_unsafe_encoding, reset, set_statement, show, transaction,
)
from interceptor.policy.statement import Statement, Unsupported

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
        names = Names.of(session, catalog)
        statement = refuse_unsafe_encoding(refuse_shadowing(_analyse_chunk(text, chunk, names), names),
                                           session.defaults)
        if statement.error is None:
            for effect in statement.effects:
                session.apply(effect)
        statements.append(statement)
    if not statements:
        return (Statement(text, "empty"),)
    return tuple(statements)


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


def _analyse_chunk(text: str, chunk: list[Token], names: Names) -> Statement:
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
        named = f"{first.lower()}_{rest[0].lower()}" if first in {"CREATE", "ALTER", "DROP"} and rest else first.lower()
        return Statement(source, named, opaque=True)
    kind = None if tree is None else "create" if selects_into(tree) else STATEMENT_KINDS.get(type(tree))
    if tree is None or kind is None:
        return Statement(source, "unknown", error=f"unsupported statement ({first} ...)")
    try:
        return analyse_tree(tree, chunk, names, source, kind)
    except Unsupported as exc:
        return Statement(source, kind, error=str(exc), rule=exc.rule)
    except Exception as exc:  # an AST shape the analyser never met: fail closed, never crash
        return Statement(source, kind, error=f"analyser failed ({type(exc).__name__}: {exc})")


_CURSOR_OPTIONS = frozenset({"BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"})


def _declare(source: str, chunk: list[Token], names: Names) -> Statement:
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


def _explain(source: str, chunk: list[Token], names: Names) -> Statement:
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
