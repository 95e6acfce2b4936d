"""Last line of defence before a record is chained: no secret reaches the trail.

Handlers mask result values before they build an event; this catches what slips through
anyway: credentials under telling keys, password literals in SQL, and tokens (API keys,
JWTs) anywhere in a string. A chained record can never be cleaned later, so this runs
before hashing.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from interceptor.masking.classifiers import api_key

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word|wd)?$|secret|token$|authorization|api[_-]?key|private[_-]?key|credential|cookie",
                         re.IGNORECASE)
# Identifiers that look random by design; masking them would only cost the trail its joins.
_IDENTIFIER_KEYS = frozenset({"event_id", "flow_id", "jti", "cgroup", "session"})
_SQL_PASSWORD = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")


@functools.lru_cache(maxsize=8192)
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


def _scrub_item(key: str, item: Any) -> Any:
    if _SECRET_KEY.search(key) and item not in (None, ""):
        return REDACTED
    if key in _IDENTIFIER_KEYS and isinstance(item, str):
        return item
    return scrub(item)


def scrub(value: Any) -> Any:
    """A copy of a normalized JSON value with secrets masked (see module docstring)."""
    if isinstance(value, dict):
        return {key: _scrub_item(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value
