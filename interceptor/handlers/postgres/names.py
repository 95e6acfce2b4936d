"""Prepared statements and portals, by name, as the server holds them (docs, 55.2.3
"Extended Query"; postgres.c exec_parse_message / exec_bind_message).

The enforcer records a forwarded Parse, Bind or Close at once, since pipelined messages
after it use the name, and keeps what it replaced. The server's answer settles it: a
failed Parse or Bind leaves a named object as it was but has already dropped the unnamed
one; messages the server skips after an error (until Sync) never happened, so their
changes are undone, last first. Portals end with their transaction. An Execute or Bind of a
name the enforcer does not hold is refused: the server might hold something else under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Change(Generic[T]):
    """One recorded change: `name` in `table` was `previous` (None: absent) before it (not
    frozen: one is made for every Bind, and a frozen dataclass sets its fields one call each)."""

    table: dict[str, T]
    name: str
    previous: T | None

    def undo(self) -> None:
        if self.previous is None:
            self.table.pop(self.name, None)
        else:
            self.table[self.name] = self.previous

    def failed(self) -> None:
        """The server refused the message: a named object stays as it was; the unnamed
        one was dropped before the server looked at the rest."""
        if self.name:
            self.undo()
        else:
            self.table.pop("", None)


def record(table: dict[str, T], name: str, value: T | None) -> Change[T]:
    """Set (or, with None, remove) `name` now, remembering what it replaced."""
    change = Change(table, name, table.get(name))
    if value is None:
        table.pop(name, None)
    else:
        table[name] = value
    return change
