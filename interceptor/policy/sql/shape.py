"""A statement's numeric shape, for the engine's decision cache: its text with the digits of
its numeric literals made 0 and its token stream, so that statements differing only in
those numbers share one analysis."""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from sqlglot.tokenizer_core import Token, TokenType

from interceptor.policy.sql.tree import DIALECT

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
    pieces: list[str] = []
    done = 0
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
    depth, listing = 0, None
    before: list[TokenType | None] = [None, None, None]
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
