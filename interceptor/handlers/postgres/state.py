"""What a PostgreSQL session holds of the server's state, statement by statement: the
statements judged and the answers the server owes for them, the prepared statements,
portals and cursors it holds by name, the context each decision was made in, and what a
decision says a statement changes in that state.

Plain records; ProxySession (session.py) keeps them up to date as messages pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from interceptor.audit.event import SharedSummary
from interceptor.decision import Decision, Verdict
from interceptor.handlers.postgres.codec import Column
from interceptor.handlers.postgres.names import Change
from interceptor.policy.catalog import Catalog, CatalogUnavailable
from interceptor.policy.settings import Effect, SessionSettings

_CATALOG_CHANGES = frozenset({"create", "alter", "drop", "comment", "grant", "revoke"})

# epoch, settings, catalog version, cursors version
Context = tuple[object, tuple[tuple[str, str | None], ...], str, int]
Effects = tuple[tuple[Effect, ...], ...]  # per statement of a text, what it changes in the session


def catalog_version(catalog: Catalog | CatalogUnavailable | None) -> str:
    """What tells one reading of the catalog from another in a Context ("" when there is none)."""
    if isinstance(catalog, Catalog):
        return catalog.version
    return "" if catalog is None else f"unavailable: {catalog}"


@dataclass(slots=True)
class Statement:
    """One judged statement (a Query, or an Execute of a parsed statement)."""

    text: str
    decision: Decision
    via: str
    started: float
    parameters: int = 0
    rows: int | None = None
    command: str | None = None
    error: str | None = None
    approval: dict[str, object] | None = None
    prepared: Prepared | None = None  # the parsed statement an Execute ran
    effects: tuple[tuple[Effect, ...], ...] = ()  # per statement of the text, what it changes in the session
    completed: int = 0  # CommandCompletes seen so far
    cancelled: bool = False  # withdrawn by the client's CancelRequest while held: 57014, not 42501

    @property
    def denied(self) -> bool:
        return self.decision.verdict is Verdict.DENY


@dataclass(slots=True)
class Prepared:
    """A statement the server holds under a name, with the decision for the context
    (epoch, settings, catalog) it was last judged in."""

    text: str
    decision: Decision
    context: Context
    approval: dict[str, object] | None = None
    columns: tuple[Column, ...] | None = None
    executions: int = 0
    operation: SharedSummary | None = None  # what every execution's audit record says it ran
    _effects: tuple[Decision | None, Effects] = (None, ())  # the last decision's effects, read once

    def effects(self, decision: Decision) -> Effects:
        """What an execution under `decision` changes in the session; read from the decision
        once, not at every execution."""
        known, effects = self._effects
        if known is not decision:
            effects = effects_of(decision)
            self._effects = (decision, effects)
        return effects

    def one_shot_spent(self) -> bool:
        """A one-shot approval at Parse covers one execution, not every later Execute."""
        spec = self.decision.approval
        return self.approval is not None and spec is not None and spec.grant == "one-shot" and self.executions > 0


@dataclass(slots=True)
class Cursor:
    """A cursor DECLAREd through the enforcer (docs, DECLARE): FETCH returns its query's
    rows, masked as that query's result; judged again when the policy changed since."""

    text: str  # the text that declared it
    decision: Decision
    settings: SessionSettings  # in force at DECLARE: its query's names resolved with them
    epoch: object
    hold: bool  # WITH HOLD: it outlives its transaction
    segment: int


@dataclass(slots=True)
class Portal:
    """A bound statement: names were resolved with the settings of its Bind."""

    prepared: Prepared
    decision: Decision
    context: Context
    parameters: int
    formats: tuple[int, ...]
    segment: int  # the Sync segment that created it: it ends with that transaction
    columns: tuple[Column, ...] | None = None
    described: Decision | None = None  # the decision it had when the client's Describe of it went out


@dataclass(slots=True)
class Expect:
    """A response the server owes for a forwarded message, in order. Statements and
    portals are captured when the client sends, as pipelined messages may reuse names."""

    kind: str  # query | parse | bind | describe | execute | close | sync | copy-end (no answer: the client's CopyDone)
    statement: Statement | None = None
    prepared: Prepared | None = None  # describe-statement: where its columns go
    portal: Portal | None = None  # describe-portal / execute
    change: Change[Any] | None = None  # parse / bind / close: what a failure or a skip undoes
    segment: int = 0  # query / sync: the segment it ends
    internal: bool = False  # describe: the enforcer's own, whose answer the client never sees


def decision_of(head: Expect | None) -> Decision | None:
    """The decision of the statement the server is answering (a Query or an Execute, the
    portal or prepared statement a Describe is of)."""
    if head is None:
        return None
    if head.statement is not None:
        return head.statement.decision
    if head.portal is not None:
        return head.portal.decision
    return head.prepared.decision if head.prepared is not None else None


def quiet(settings: SessionSettings) -> bool:
    """No change is pending that an answer of the server could still undo or make final."""
    base = settings.base
    return (settings.values == base and settings.session == base
            and all(v == base and s == base for _, v, s in settings.savepoints))


def settled(settings: SessionSettings) -> bool:
    """No transaction state to end: nothing failed, no savepoint, and what is in force is what
    the session keeps and what a rollback restores (a ReadyForQuery changes nothing)."""
    base = settings.base
    return not settings.failed and not settings.savepoints and settings.values == base and settings.session == base


def listed(detail: Mapping[str, object], key: str) -> Sequence[Mapping[str, Any]]:
    """The mappings the policy's analysis lists under `key` in a statement's detail of a
    Decision (`masked_outputs`, `effects`: policy/sql_rules.py builds them), () when none."""
    return cast("Sequence[Mapping[str, Any]]", detail.get(key, ()))


def effects_of(decision: Decision) -> Effects:
    """Per statement of the text, what it changes in the session (the policy's analysis)."""
    return tuple(tuple(Effect.from_dict(e) for e in listed(detail, "effects")) for detail in decision.details)


def changes_catalog(decision: Decision) -> bool:
    """Whether a statement of the text is DDL (or COMMENT, GRANT, REVOKE): the catalog must
    be read again before more is judged."""
    kinds = (str(detail.get("kind", "")) for detail in decision.details)
    return any(k in _CATALOG_CHANGES or k.startswith(("create_", "alter_", "drop_")) for k in kinds)
