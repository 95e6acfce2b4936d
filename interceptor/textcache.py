"""A cache for pure functions of one string that stays bounded in bytes, not just in entries:
statement texts repeat (a prepared statement's comes back with every execution), but an agent
may also send long ones, and those must not pile up in the daemon."""

from __future__ import annotations

import functools
from collections.abc import Callable

LONGEST = 4096  # characters: longer inputs are computed every time


def short_text_cache(maxsize: int, longest: int = LONGEST) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    """lru_cache(maxsize) for inputs up to `longest` characters; at most maxsize * longest kept."""
    def wrap(function: Callable[[str], str]) -> Callable[[str], str]:
        cached = functools.lru_cache(maxsize=maxsize)(function)

        @functools.wraps(function)
        def call(text: str) -> str:
            return cached(text) if len(text) <= longest else function(text)

        return call
    return wrap
