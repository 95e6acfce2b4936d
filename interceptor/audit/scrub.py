"""Last line of defence before a record is chained: no secret reaches the trail.

Handlers mask result values before they build an event; this catches what slips through
anyway: credentials under telling keys, password literals in SQL, and tokens (API keys,
JWTs) anywhere in a string. A chained record can never be cleaned later, so this runs
before hashing.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from interceptor.audit.chain import normalize
from interceptor.audit.event import SharedSummary
from interceptor.masking.classifiers import api_key
from interceptor.textcache import short_text_cache

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token$|authorization|api[_-]?key|private[_-]?key|credential|cookie",
                         re.IGNORECASE)
# Identifiers and digests that look random by design; masking them would only cost the trail its
# joins (a recording's sha256 is what `audit replay` checks the file against).
_IDENTIFIER_KEYS = frozenset({"event_id", "flow_id", "jti", "cgroup", "session", "sha256"})
_SQL_PASSWORD = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")
# No pattern above (nor api_key, whose tokens are 20+ characters) matches fewer characters
# than "://a:b@": shorter strings (agent names, verdicts, kinds) are kept without a look.
SHORTEST_SECRET = 7


@short_text_cache(maxsize=8192)
def scrub_text(text: str) -> str:
    """`text` with password literals, URL passwords and recognised tokens replaced.

    Cached: a trail repeats the same strings (statement texts, exe paths, agent names) in
    record after record, and a pure function of its input needs running once per string."""
    text = _SQL_PASSWORD.sub(rf"\1'{REDACTED}'", text)
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    raw = text.encode()
    spans = api_key(raw)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [raw[last:start], REDACTED.encode()]
        last = end
    out.append(raw[last:])
    return b"".join(out).decode("utf-8", "replace")


class NotPlain(ValueError):
    """A value that is not plain JSON yet (a tuple, set, enum, non-string key, non-finite float)."""


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _scrub_shared(value: SharedSummary) -> SharedSummary:
    """A read-only per-flow summary comes back with every record of its flow: scrubbed once,
    and the scrubbed copy is shared (and read-only) too, so the chain encodes it once."""
    return value.derived("scrubbed", _scrubbed_copy)


def _scrubbed_copy(summary: SharedSummary) -> SharedSummary:
    return SharedSummary(_scrub_dict(summary))


def _scrub_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise NotPlain(f"key {key!r}")
        kind = type(item)
        if _secret_key(key) and item is not None and item != "":
            out[key] = REDACTED
        elif kind is SharedSummary:
            out[key] = _scrub_shared(item)
        elif kind is str:
            out[key] = item if len(item) < SHORTEST_SECRET or key in _IDENTIFIER_KEYS else scrub_text(item)
        elif kind is int or kind is bool or item is None:
            out[key] = item
        else:
            out[key] = scrub(item)
    return out


def scrub(value: Any) -> Any:
    """A copy of a plain JSON value with secrets masked (see module docstring); NotPlain
    for anything a JSON round trip would change."""
    kind = type(value)
    if kind is dict:
        return _scrub_dict(value)
    if kind is SharedSummary:
        return _scrub_shared(value)
    if kind is str:
        return scrub_text(value)
    if kind is list:
        return [scrub(item) for item in value]
    if kind is int or kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    raise NotPlain(repr(value)[:80])


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as plain JSON with secrets masked. Events nearly always hold plain values,
    so one walk does both; the rest take the JSON round trip of `normalize` first."""
    scrubbed: dict[str, Any]
    try:
        scrubbed = scrub(event)
    except NotPlain:
        scrubbed = scrub(normalize(event))
    return scrubbed
