"""What one protocol contributes: its names, its operation type, how a rule's block about it is
read and judged, its JSON Schema fragments, how a `policy test` case asks about it, and which
module holds its handler. One `ProtocolSpec` per protocol, in its own module of this package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from interceptor.decision import Decision
from interceptor.operations import Request

if TYPE_CHECKING:  # the policy package uses the registry; the registry must not import it first
    from interceptor.policy.cache import DecisionCache
    from interceptor.policy.catalog import Catalog
    from interceptor.policy.model import OperationMatch, Policy, Rule
    from interceptor.policy.sql import SchemaCatalog

OperationT = TypeVar("OperationT")
Problem = Callable[[tuple[str | int, ...], str], None]  # report(path within the block, message)
Schema = Mapping[str, Any]  # a JSON Schema (draft 2020-12) fragment


class Context(Protocol):
    """What a protocol's judge may use of the engine deciding (interceptor.policy.engine)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def catalog(self) -> Catalog | SchemaCatalog | None:
        """The catalog for operations that read one and carry none (as in `policy test`)."""

    @property
    def cache(self) -> DecisionCache:
        """Where a judge may keep decisions; its keys must hold the policy version."""

    def rules(self, request: Request, key: str) -> list[Rule]:
        """The rules about the request's agent, resource and subject whose operation is `key`
        or any operation, in policy order."""


@dataclass(frozen=True, slots=True)
class ProtocolSpec(Generic[OperationT]):
    """One protocol. `name`: a resource's `protocol:`; `operation_key`: the key of a rule's
    block about its operations and of a test case's operation (unique across protocols).

    `parse_match(block, problem)`: a schema-valid block as a frozen match object (None: the
    block says nothing more than the key), reporting what the schema cannot check to
    `problem`. `judge(context, request, operation)`: the Decision, by the rules and
    precedence of interceptor.policy.judgement; never raises on bad input (it denies).
    `parse_case(case, catalog)`: a test case's operation (ValueError, TypeError or KeyError
    for a bad case); it may read `case_keys` besides `operation_key`. `handler`: the module
    exporting HANDLER, imported only by the enforcer."""

    name: str
    operation_key: str
    operation: type[OperationT]
    description: str  # what its handler does, for the policy reference
    handler: str
    match_schema: Schema
    options_schema: Schema  # a resource's `options:` for this protocol
    parse_match: Callable[[Any, Problem], OperationMatch | None]
    judge: Callable[[Context, Request, OperationT], Decision]
    parse_case: Callable[[Mapping[str, Any], Catalog | None], OperationT]
    case_keys: frozenset[str] = field(default=frozenset())
    masks: bool = False  # mask rules may be about its operations
    catalogs: bool = False  # the daemon reads its databases' catalogs (`interceptor catalog`)
    every_resource: bool = False  # its operation is asked of every resource, whatever its protocol
