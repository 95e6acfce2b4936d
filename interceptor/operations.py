"""What a protocol handler asks the policy about: the subject and the operation.

Handlers only produce these values; the policy engine only consumes them. A new
protocol adds its operation type here, its module to interceptor.protocols (how the policy
reads, judges and tests it) and its handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from interceptor.identity.model import Identity

if TYPE_CHECKING:  # the policy package imports this module
    from interceptor.policy.catalog import Catalog, CatalogUnavailable


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking: the agent, its Okta identity (None: unknown) and its process."""

    agent: str
    identity: Identity | None = None
    exe: str | None = None
    uid: int | None = None


@dataclass(frozen=True, slots=True)
class TcpConnect:
    """Opening a connection to a resource (every protocol starts with this)."""

    kind = "tcp"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers."""
        return {"kind": self.kind}


Settings = tuple[tuple[str, str | None], ...]  # (name, value) of the session settings the enforcer follows


@dataclass(frozen=True, slots=True)
class SqlQuery:
    """One query string as the client sent it (it may hold several statements), with the
    server session's state it will run in: the followed settings in force (search_path,
    client_encoding, role; see interceptor.policy.settings), what RESET returns them to,
    and the database's catalog. `catalog` None: the engine's own (as in `policy test`);
    a CatalogUnavailable: the catalog could not be read, so any statement that names a
    relation or calls a function is denied with its message."""

    text: str
    database: str | None = None
    settings: Settings = ()
    defaults: Settings = ()
    catalog: Catalog | CatalogUnavailable | None = None
    kind = "sql"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers: the text and database, and the
        search_path it runs under when the session set one (it decides what the statement's
        names read); not the rest of the session's state."""
        summary: dict[str, object] = {"kind": self.kind, "text": self.text, "database": self.database}
        search_path = dict(self.settings).get("search_path")
        if search_path is not None:
            summary["search_path"] = search_path
        return summary


# One per protocol of interceptor.protocols. Each is a frozen dataclass with a class attribute
# `kind` (its protocol's operation key) and `summary()`, what an approver sees and a grant covers.
Operation = TcpConnect | SqlQuery


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the policy: may `subject` do `operation` on `resource`?"""

    subject: Subject
    resource: str
    operation: Operation
    labels: dict[str, str] = field(default_factory=dict)
