"""The protocol registry: the one list of the protocols interceptor has a handler for.

Each protocol is one module of this package exporting `SPEC`, a ProtocolSpec (see spec.py):
its operation type, rule matcher and judge, schema fragments, test-case parser, and the
module of its handler. The policy loader, schema, engine and `policy test`, and the enforcer's
`handler_for`, all ask this registry; adding a protocol is adding its module to MODULES.

The modules are imported on first use, not when this package is: they import the policy
package, which imports this one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from interceptor.protocols.spec import Context, Problem, ProtocolSpec

__all__ = ["MODULES", "Context", "Problem", "ProtocolSpec", "protocols", "spec_for", "spec_for_key", "spec_of"]

MODULES = ("interceptor.protocols.tcp", "interceptor.protocols.postgres", "interceptor.protocols.http",
           "interceptor.protocols.kubernetes", "interceptor.protocols.mcp", "interceptor.protocols.ssh")


@dataclass(frozen=True, slots=True)
class _Registry:
    specs: tuple[ProtocolSpec[Any], ...]
    by_name: dict[str, ProtocolSpec[Any]]
    by_key: dict[str, ProtocolSpec[Any]]
    by_operation: dict[type, ProtocolSpec[Any]]


@lru_cache(maxsize=1)
def _registry() -> _Registry:
    specs: tuple[ProtocolSpec[Any], ...] = tuple(importlib.import_module(m).SPEC for m in MODULES)
    registry = _Registry(specs, {s.name: s for s in specs}, {s.operation_key: s for s in specs},
                         {s.operation: s for s in specs})
    if not len(specs) == len(registry.by_name) == len(registry.by_key) == len(registry.by_operation):
        raise RuntimeError("two protocols share a name, an operation key or an operation type")
    return registry


def protocols() -> tuple[ProtocolSpec[Any], ...]:
    """Every registered protocol, in MODULES order."""
    return _registry().specs


def spec_for(name: str) -> ProtocolSpec[Any]:
    """The protocol a resource names (`protocol:`); LookupError when none is registered."""
    spec = _registry().by_name.get(name)
    if spec is None:
        raise LookupError(f"no handler for protocol {name!r}")
    return spec


def spec_for_key(key: str) -> ProtocolSpec[Any] | None:
    """The protocol whose operations a rule's or test case's `key:` block is about."""
    return _registry().by_key.get(key)


def spec_of(operation: object) -> ProtocolSpec[Any] | None:
    """The protocol of an operation (by its exact type), None for an unknown type."""
    return _registry().by_operation.get(type(operation))
