"""The session settings the enforcer follows as the server applies them: search_path,
client_encoding and role. Pure state, no I/O: the analyser threads it through the
statements of one query string, and the PostgreSQL session keeps two (what the statements
it let through will have done, and what the server has confirmed so far).

Semantics (docs: SET, RESET, DISCARD, "Multiple Statements in a Simple Query" 55.2.2.1):
a SET lasts for the session unless LOCAL, which ends with the transaction; every change
made in a transaction is undone when it rolls back (an error in an implicit transaction
block rolls it back too), and ROLLBACK TO SAVEPOINT undoes what came after the savepoint.
RESET goes back to the session's default: the startup value if the client sent one, else
the role's or the database's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FOLLOWED = ("search_path", "client_encoding", "role")
Values = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class Effect:
    """What one statement changes in the session if it succeeds.

    kind: set | reset | reset_all | discard_all | begin | commit | rollback | savepoint |
    release | rollback_to | deallocate | deallocate_all. `name` is the setting (lower case)
    for set/reset, the savepoint for savepoint/release/rollback_to, the prepared statement
    for deallocate; `value` the new value as the server reads it (None for DEFAULT)."""

    kind: str
    name: str | None = None
    value: str | None = None
    local: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "value": self.value, "local": self.local}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Effect:
        name, value = data.get("name"), data.get("value")
        return cls(str(data["kind"]), None if name is None else str(name), None if value is None else str(value),
                   bool(data.get("local", False)))


@dataclass(slots=True)
class SessionSettings:
    """search_path, client_encoding and role now, with what a rollback restores."""

    defaults: Values
    values: Values = field(default_factory=dict)  # in force now
    session: Values = field(default_factory=dict)  # without SET LOCAL: what a commit keeps
    base: Values = field(default_factory=dict)  # at the transaction's start: what a rollback restores
    savepoints: list[tuple[str, Values, Values]] = field(default_factory=list)
    failed: bool = False  # an error since the transaction began: it can only roll back

    @classmethod
    def start(cls, defaults: Mapping[str, str | None]) -> SessionSettings:
        values = {name: defaults.get(name) for name in FOLLOWED}
        return cls(dict(values), dict(values), dict(values), dict(values))

    @classmethod
    def of(cls, values: Iterable[tuple[str, str | None]], defaults: Iterable[tuple[str, str | None]]) -> SessionSettings:
        """In the middle of a session: `values` in force now (SqlQuery.settings)."""
        unset: Values = {name: None for name in FOLLOWED}
        now = unset | dict(values)
        return cls(unset | dict(defaults), dict(now), dict(now), dict(now))

    def snapshot(self) -> tuple[tuple[str, str | None], ...]:
        """The values in force, hashable (SqlQuery.settings)."""
        return tuple((name, self.values.get(name)) for name in FOLLOWED)

    def copy(self) -> SessionSettings:
        return SessionSettings(dict(self.defaults), dict(self.values), dict(self.session), dict(self.base),
                               [(n, dict(v), dict(s)) for n, v, s in self.savepoints], self.failed)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def apply(self, effect: Effect) -> None:
        """A statement with this effect succeeded."""
        kind = effect.kind
        if kind in ("set", "reset") and effect.name in FOLLOWED:
            value = effect.value if kind == "set" and effect.value is not None else self.defaults.get(effect.name)
            self.values[effect.name] = value
            if not effect.local:
                self.session[effect.name] = value
        elif kind in ("reset_all", "discard_all"):
            self.values, self.session = dict(self.defaults), dict(self.defaults)
        elif kind == "commit" and not self.failed:
            self.values, self.base, self.savepoints = dict(self.session), dict(self.session), []
        elif kind in ("commit", "rollback"):  # COMMIT of a failed transaction rolls it back
            self.values, self.session, self.savepoints, self.failed = dict(self.base), dict(self.base), [], False
        elif kind == "savepoint" and effect.name is not None:
            self.savepoints.append((effect.name, dict(self.values), dict(self.session)))
        elif kind in ("release", "rollback_to"):
            at = self._savepoint(effect.name)
            if at is None:
                return
            if kind == "release":
                del self.savepoints[at:]
            else:
                _, values, session = self.savepoints[at]
                self.values, self.session, self.failed = dict(values), dict(session), False
                del self.savepoints[at + 1:]

    def error(self) -> None:
        """The server reported an error: the transaction (explicit or implicit) has failed."""
        self.failed = True

    def ready(self, status: bytes) -> None:
        """ReadyForQuery: idle ends any transaction (a failed implicit one rolled back)."""
        if status == b"I":
            kept = self.base if self.failed else self.session
            self.values, self.session, self.base = dict(kept), dict(kept), dict(kept)
            self.savepoints, self.failed = [], False

    def _savepoint(self, name: str | None) -> int | None:
        for index in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[index][0] == name:
                return index
        return None
