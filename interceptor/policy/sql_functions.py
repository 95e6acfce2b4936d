"""Which functions a statement makes the server run, named as the server looks them up.

A call is found by the token of its name: sqlglot records where each call's name starts
(so `"Lower"(x)`, which it reads as LOWER, is still the quoted name the server resolves
case-sensitively), except for the words it parses its own way (UNPOSITIONED_WORDS), whose
tokens are found in the token stream instead. The name is folded as the server folds it,
and a qualifier is the `schema.` written before it (docs, 4.2.6 "Function Calls").

Keywords PostgreSQL never reads as a function name (reserved and column-name keywords,
docs Appendix C) are SQL syntax: COALESCE, GREATEST, LEAST, NULLIF, CAST, ROW, ARRAY,
EXISTS, CURRENT_USER, CURRENT_TIMESTAMP(2)... run no pg_proc function. A few of them are
turned by the grammar into a call of a pg_catalog function, never looked up in the
search_path (src/backend/parser/gram.y, func_expr_common_subexpr): EXTRACT, POSITION,
NORMALIZE, XMLEXISTS, TRIM (btrim/ltrim/rtrim), SUBSTRING with FROM/FOR/SIMILAR and
OVERLAY with PLACING; written with commas, substring(...) and overlay(...) are ordinary
calls. `current_schema()` is a call, `current_schema` without parentheses is not.
Checked against PostgreSQL 15 by shadowing each name in a schema listed before pg_catalog.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.tokenizer_core import Token, TokenType

from interceptor.policy.catalog import fold_identifier, truncate_identifier
from interceptor.policy.statement import Call, Unsupported

_PARSER = Postgres().parser()
_WORD = re.compile(r"[^\W\d][\w$]*")

# PostgreSQL 15 reserved and column-name keywords (pg_get_keywords() catcode R and C):
# never a function name, whatever follows.
NOT_FUNCTION_NAMES = frozenset("""
    all analyse analyze and any array as asc asymmetric both case cast check collate column constraint
    create current_catalog current_date current_role current_time current_timestamp current_user default
    deferrable desc distinct do else end except false fetch for foreign from grant group having in
    initially intersect into lateral leading limit localtime localtimestamp not null offset on only or
    order placing primary references returning select session_user some symmetric table then to trailing
    true union unique user using variadic when where window with
    between bigint bit boolean char character coalesce dec decimal exists extract float greatest grouping
    inout int integer interval least national nchar none normalize nullif numeric out overlay position
    precision real row setof smallint substring time timestamp treat trim values varchar xmlattributes
    xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable
""".split())
# Of those, the ones the grammar turns into a call of pg_catalog.<name>.
_SYSTEM_CALLS = {"extract": "extract", "normalize": "normalize", "position": "position", "xmlexists": "xmlexists"}

# Words sqlglot parses without recording where the call's name is: its own function
# parsers, and calls it reads as operators, clauses or other nodes (UNNEST in FROM). A
# test checks the list against sqlglot's whole vocabulary. A FROM item sqlglot reads as a
# table though a "(" follows its name (`FROM comment(1)`) is a call it misread: an error.
UNPOSITIONED_WORDS = frozenset(_PARSER.FUNCTION_PARSERS) | frozenset(_PARSER.NO_PAREN_FUNCTION_PARSERS) | {
    "ALL", "ANY", "DISTINCT", "FETCH", "GLOB", "HAVING", "INTERVAL", "LIKE", "MOD", "NOT", "QUALIFY",
    "REGEXP", "RLIKE", "SCOPE_RESOLUTION", "TABLESAMPLE", "UNNEST", "WHERE",
}
# Words that are also binary operators: `a LIKE (...)` is no call, `like(a, b)` is one.
_OPERATOR_WORDS = frozenset({"LIKE"})
_OPERAND_ENDS = frozenset({
    TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING, TokenType.NUMBER, TokenType.R_PAREN,
    TokenType.R_BRACKET, TokenType.NULL, TokenType.TRUE, TokenType.FALSE, TokenType.PARAMETER,
    TokenType.PLACEHOLDER, TokenType.HEREDOC_STRING, TokenType.NATIONAL_STRING, TokenType.BYTE_STRING,
    TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.UNICODE_STRING,
})


def token_name(token: Token) -> str:
    """An identifier token as the server reads it: quoted kept, unquoted folded."""
    if token.token_type == TokenType.IDENTIFIER:
        return truncate_identifier(token.text)
    return fold_identifier(token.text)


def function_calls(tree: exp.Expr, tokens: list[Token]) -> list[tuple[Call, exp.Expr | None]]:
    """Every call in `tree` (parsed from `tokens`), in order of appearance, each with its
    node when sqlglot recorded one (None for a call found by its word only)."""
    index = {token.start: position for position, token in enumerate(tokens)}
    nodes: dict[int, exp.Expr | None] = {}
    for node in tree.walk():
        if isinstance(node, exp.Func):
            position = index.get(node.meta.get("start", -1))
            if position is not None and _followed_by_paren(tokens, position):
                nodes.setdefault(position, node)
    for table in tree.find_all(exp.Table):
        position = index.get(table.this.meta.get("start", -1)) if isinstance(table.this, exp.Identifier) else None
        if (isinstance(table.parent, (exp.From, exp.Join)) and position is not None
                and _followed_by_paren(tokens, position)):
            raise Unsupported(f"{table.this.name}(...) in FROM calls a function the analyser reads as a table")
    for position, token in enumerate(tokens):
        word = token.text.upper()
        if (position not in nodes and word in UNPOSITIONED_WORDS and _followed_by_paren(tokens, position)
                and not (word in _OPERATOR_WORDS and _after_operand(tokens, position))):
            nodes[position] = None
    found: list[tuple[Call, exp.Expr | None]] = []
    for position in sorted(nodes):
        call = _call_at(tokens, position)
        if call is not None:
            found.append((call, nodes[position]))
    return found


_NOT_OPERATOR = frozenset({
    TokenType.VAR, TokenType.IDENTIFIER, TokenType.NUMBER, TokenType.STRING, TokenType.L_PAREN, TokenType.R_PAREN,
    TokenType.COMMA, TokenType.DOT,
})


def explicit_operators(tree: exp.Expr, tokens: list[Token]) -> list[tuple[str | None, str]]:
    """Every OPERATOR([schema.]op) of `tree` (parsed from `tokens`), as (schema written,
    operator name): docs, 4.1.3 "Operators" and 4.2.5 "Operator Invocations". The schema
    is folded unless quoted; the operator is the symbols written. An Unsupported when the
    tokens do not show what sqlglot read as one."""
    found: list[tuple[str | None, str]] = []
    for position, token in enumerate(tokens):
        if token.token_type != TokenType.OPERATOR or not _followed_by_paren(tokens, position):
            continue
        close = next((i for i in range(position + 2, len(tokens)) if tokens[i].token_type == TokenType.R_PAREN), None)
        inside = tokens[position + 2:close] if close is not None else []
        schema = None
        if len(inside) > 2 and inside[1].token_type == TokenType.DOT:
            if not _is_name(inside[0]):
                raise Unsupported(f"OPERATOR({''.join(t.text for t in inside)}) does not name schema.operator")
            schema, inside = token_name(inside[0]), inside[2:]
        if inside and not any(t.token_type in _NOT_OPERATOR or _is_name(t) for t in inside):
            found.append((schema, "".join(t.text for t in inside)))
    if len(found) != len(list(tree.find_all(exp.Operator))):
        raise Unsupported("an OPERATOR(...) the analyser cannot read")
    return found


_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")
_COMPARISONS = frozenset({"=", "<>", "<", ">", "<=", ">="})
# Words whose meaning is a call of operators (docs, 9.2, 9.7, 9.18, 9.24): x IN (...), ANY,
# ALL, BETWEEN, IS DISTINCT FROM, NULLIF, CASE x WHEN, JOIN ... USING compare with =, <, ...
_COMPARING_WORDS = frozenset({"IN", "ANY", "SOME", "ALL", "BETWEEN", "DISTINCT", "NULLIF", "CASE", "USING",
                              "NATURAL", "GREATEST", "LEAST"})
_PATTERN_WORDS = {"LIKE": ("~~", "!~~"), "ILIKE": ("~~*", "!~~*"), "SIMILAR": ("~", "!~")}
_STAR_NEIGHBOURS = frozenset({TokenType.SELECT, TokenType.DISTINCT, TokenType.COMMA, TokenType.DOT, TokenType.L_PAREN})


def implicit_operators(tokens: list[Token]) -> frozenset[str]:
    """The names of the operators a statement may call without OPERATOR(): every run of
    operator characters it writes (and each part of a run, as the lexer may split it), with
    `!=` read as `<>`, and the operators that words like IN, BETWEEN or LIKE stand for
    (docs, 4.1.3 "Operators"). The server picks among operators of a name by the types of
    their operands, so every one of those names in the search_path is a candidate."""
    found: set[str] = set()
    run: list[Token] = []
    for position, token in enumerate(tokens):
        symbol = bool(token.text) and set(token.text) <= _OPERATOR_CHARS and not _is_star(tokens, position)
        if symbol and run and run[-1].end + 1 == token.start:
            run.append(token)
            continue
        found |= _run_names(run)
        run = [token] if symbol else []
        word = token.text.upper()
        if word in _COMPARING_WORDS:
            found |= _COMPARISONS
        found.update(_PATTERN_WORDS.get(word, ()))
    found |= _run_names(run)
    return frozenset("<>" if name == "!=" else name for name in found)


def _run_names(run: list[Token]) -> set[str]:
    """Every operator name a run of adjacent operator tokens may hold: each piece of its text."""
    text = "".join(t.text for t in run)
    return {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}


def _is_star(tokens: list[Token], position: int) -> bool:
    """`*` of SELECT *, t.*, count(*): no operator."""
    if tokens[position].text != "*":
        return False
    before = tokens[position - 1].token_type if position else None
    after = tokens[position + 1].token_type if position + 1 < len(tokens) else None
    return before in _STAR_NEIGHBOURS or after in (TokenType.R_PAREN, TokenType.COMMA, TokenType.FROM, None)


def written_names(tokens: list[Token]) -> frozenset[str]:
    """The names the tokens spell (identifiers and words), as the server reads them."""
    return frozenset(token_name(t) for t in tokens if _is_name(t))


def _is_name(token: Token) -> bool:
    return token.token_type == TokenType.IDENTIFIER or _WORD.fullmatch(token.text) is not None


def _after_operand(tokens: list[Token], position: int) -> bool:
    """Does an operand (or an operand and NOT) come before tokens[position]?"""
    before = position - 1
    if before >= 0 and tokens[before].token_type == TokenType.NOT:
        before -= 1
    return before >= 0 and tokens[before].token_type in _OPERAND_ENDS


def _followed_by_paren(tokens: list[Token], position: int) -> bool:
    return position + 1 < len(tokens) and tokens[position + 1].token_type == TokenType.L_PAREN


def _call_at(tokens: list[Token], position: int) -> Call | None:
    """The call whose name is tokens[position] (followed by "("), None for SQL syntax."""
    token = tokens[position]
    name = token_name(token)
    if position >= 1 and tokens[position - 1].token_type == TokenType.DOT:
        if position < 2 or not _is_name(tokens[position - 2]) or (
                position >= 3 and tokens[position - 3].token_type == TokenType.DOT):
            raise Unsupported(f"function name {_source(tokens, position)!r} is not schema.name")
        return Call(name, token_name(tokens[position - 2]))
    if token.token_type == TokenType.IDENTIFIER or name not in NOT_FUNCTION_NAMES:
        return Call(name)
    if name in _SYSTEM_CALLS:
        return Call(_SYSTEM_CALLS[name], "pg_catalog")
    arguments = _argument_words(tokens, position + 1)
    if name == "trim":
        return Call({"LEADING": "ltrim", "TRAILING": "rtrim"}.get(arguments[0] if arguments else "", "btrim"),
                    "pg_catalog")
    if name == "substring":
        return Call("substring", "pg_catalog" if {"FROM", "FOR", "SIMILAR"} & set(arguments) else None)
    if name == "overlay":
        return Call("overlay", "pg_catalog" if "PLACING" in arguments else None)
    if name == "treat":
        raise Unsupported("TREAT(... AS type) is not supported")
    return None


def _argument_words(tokens: list[Token], open_paren: int) -> list[str]:
    """The words directly inside the parentheses that start at `open_paren`."""
    words, depth = [], 0
    for token in tokens[open_paren:]:
        if token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and token.token_type not in (TokenType.STRING, TokenType.IDENTIFIER):
            words.append(token.text.upper())
    return words


def _source(tokens: list[Token], position: int) -> str:
    return "".join(t.text if t.token_type != TokenType.IDENTIFIER else f'"{t.text}"'
                   for t in tokens[max(0, position - 4):position + 1])
