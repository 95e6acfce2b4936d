"""The cursors an agent DECLAREd through the enforcer (docs, DECLARE), as the server holds
them: a FETCH may read only one of these, still allowed by the policy, and what it returns
is masked as that cursor's query's result.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from interceptor.decision import Decision, Verdict
from interceptor.errors import ProtocolViolation
from interceptor.handlers.postgres.state import Cursor, Portal, Statement, listed
from interceptor.policy.settings import SessionSettings

Decide = Callable[[str, SessionSettings], Decision]  # judges a text with these settings, cursors included


class Cursors:
    """The cursors by name; `version` changes whenever one is declared or closed. `epoch`
    tells one policy and identity from the next."""

    def __init__(self, epoch: Callable[[], object]) -> None:
        self.epoch = epoch
        self.held: dict[str, Cursor] = {}
        self.version = 0

    def judged(self, text: str, decision: Decision, settings: SessionSettings, portals: Container[str],
               decide: Decide) -> Decision:
        """`decision` on `text`, with its FETCHes checked: each must read a cursor the enforcer
        judged (here, or earlier in the same text) that is allowed still (judged again by
        `decide` when the policy changed since), and masks what it returns as that cursor's
        query's result. A cursor's name may not be a protocol portal's (`portals`)."""
        if decision.verdict is Verdict.DENY or not any("cursor" in d for d in decision.details):
            return decision
        declared: dict[str, Cursor] = {}
        masks, details = list(decision.masks), list(decision.details)
        for index, detail in enumerate(details):
            name = detail.get("cursor")
            if detail.get("kind") not in ("fetch", "close"):
                if isinstance(name, str):
                    declared[name] = Cursor(text, decision, settings, self.epoch(), bool(detail.get("hold")), 0)
                continue
            if detail["kind"] == "close" or not isinstance(name, str):
                continue
            cursor = declared.get(name) or self.held.get(name)
            if cursor is None or name in portals:  # a protocol portal shares the cursors' names
                return Decision(Verdict.DENY, "unknown-cursor", f"cursor {name!r} was not declared through the "
                                "enforcer (or was closed, or ended with its transaction)", shadow=decision.shadow)
            judged = self._decision(cursor, name, decide)
            if judged.verdict is not Verdict.ALLOW:
                return Decision(Verdict.DENY, judged.rule, f"cursor {name!r}: {judged.reason or 'denied'}",
                                shadow=decision.shadow)
            outputs = [o for d in judged.details if d.get("cursor") == name for o in listed(d, "masked_outputs")]
            counted = next((d.get("output_count") for d in judged.details if d.get("cursor") == name), None)
            details[index] = {**detail, "masked_outputs": outputs, "output_count": counted}
            masks += [m for m in judged.masks if m not in masks]
        return Decision(decision.verdict, decision.rule, decision.reason, tuple(masks), decision.approval,
                        tuple(details), decision.shadow)

    def _decision(self, cursor: Cursor, name: str, decide: Decide) -> Decision:
        """The cursor's judgement, again when the policy or identity changed since its DECLARE."""
        if cursor.epoch == self.epoch():
            return cursor.decision
        decision = decide(cursor.text, cursor.settings)
        if not any(d.get("cursor") == name and d.get("kind") not in ("fetch", "close") for d in decision.details):
            return Decision.deny("unknown-cursor", "its DECLARE reads differently now")
        cursor.decision, cursor.epoch = decision, self.epoch()
        return decision

    def closed_by(self, decision: Decision, portals: dict[str, Portal]) -> None:
        """Cursors a statement let through closes, forgotten now (a CLOSE that fails leaves a
        cursor the enforcer refuses to FETCH from: safe). A DECLARE counts only once the server
        confirms it (`declared`). Cursors and protocol portals are one namespace in the server
        (docs, DECLARE): the protocol portal (`portals`) of a name a CLOSE closes (CLOSE ALL:
        every one) or a DECLARE takes is forgotten too, as the server's portal of that name is
        no longer the one the enforcer bound (closed, or ended with its transaction and now the
        cursor): an Execute of it is refused."""
        for detail in decision.details:
            kind, name = detail.get("kind"), detail.get("cursor")
            if kind == "fetch":
                continue
            if kind != "close":
                if isinstance(name, str):
                    portals.pop(name, None)
                continue
            if isinstance(name, str):
                self.held.pop(name, None)
                portals.pop(name, None)
            else:
                self.held.clear()
                portals.clear()
            self.version += 1

    def declared(self, statement: Statement, segment: int, settings: SessionSettings) -> None:
        """The server ran the DECLARE that is the `completed`-th statement of `statement`, in
        the transaction of `segment`, with `settings`; ProtocolViolation when the enforcer
        judged no DECLARE there."""
        details = statement.decision.details
        detail = details[statement.completed] if statement.completed < len(details) else {}
        name = detail.get("cursor")
        if not isinstance(name, str) or detail.get("kind") in ("fetch", "close"):
            raise ProtocolViolation("the server declared a cursor where the enforcer judged no DECLARE")
        self.held[name] = Cursor(statement.text, statement.decision, settings, self.epoch(),
                                 bool(detail.get("hold")), segment)
        self.version += 1

    def replaced(self, name: str) -> None:
        """A portal was bound, or closed, under `name`: the server holds no cursor of that name now."""
        if self.held.pop(name, None) is not None:
            self.version += 1

    def clear(self) -> None:
        """DISCARD ALL closed every cursor (docs, DISCARD)."""
        self.held.clear()
        self.version += 1

    def transaction_ended(self, segment: int) -> None:
        """The transaction of `segment` (and those before) ended: so did its cursors without HOLD."""
        for name in [n for n, c in self.held.items() if not c.hold and c.segment <= segment]:
            del self.held[name]
            self.version += 1
