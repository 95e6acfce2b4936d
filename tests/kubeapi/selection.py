"""Label and field selectors as list and watch take them (Kubernetes "Labels and Selectors",
"Field Selectors"): `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-joined."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]
SET_TERM = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
EQUALITY_TERM = re.compile(r"^\s*([^\s!=()]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on the commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise bad_request(f"unable to parse requirement: unbalanced parentheses in {selector!r}")
    return [*terms, current] if selector.strip() else []


def _term(term: str, value_of: Callable[[dict[str, Any], str], str | None], sets: bool) -> Matcher:
    if sets and (match := SET_TERM.match(term)):
        key, operator, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
        if operator == "in":
            return lambda obj: value_of(obj, key) in values
        return lambda obj: value_of(obj, key) not in values
    if match := EQUALITY_TERM.match(term):
        key, operator, wanted = match[1], match[2], match[3]
        if operator == "!=":
            return lambda obj: value_of(obj, key) != wanted
        return lambda obj: value_of(obj, key) == wanted
    if sets and (match := EXISTS_TERM.match(term)):
        negated, key = match[1] == "!", match[2]
        return lambda obj: (value_of(obj, key) is None) == negated
    raise bad_request(f"unable to parse requirement: {term!r}")


def _label(obj: dict[str, Any], key: str) -> str | None:
    labels = obj.get("metadata", {}).get("labels") or {}
    value = labels.get(key)
    return None if value is None else str(value)


def _field(obj: dict[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _matcher(selector: str | None, value_of: Callable[[dict[str, Any], str], str | None], sets: bool) -> Matcher:
    terms = [_term(term, value_of, sets) for term in _split_terms(selector or "")]
    return lambda obj: all(term(obj) for term in terms)


def label_matcher(selector: str | None) -> Matcher:
    """Matches objects whose labels satisfy `selector`; raises ApiError 400 when unparsable."""
    return _matcher(selector, _label, sets=True)


def field_matcher(selector: str | None) -> Matcher:
    """Matches objects whose dotted field paths (metadata.name, involvedObject.uid, ...) satisfy
    `selector` (=, ==, != only); an absent field compares as ""; raises ApiError 400 when unparsable."""
    return _matcher(selector, _field, sets=False)
