"""The policy as loaded: immutable values the engine and the redirect layer consume."""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from interceptor.decision import ApprovalSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
OperationMatch = Hashable  # a rule's match block as its protocol parsed it: a frozen value


@dataclass(frozen=True, slots=True)
class AddressSpec:
    """One destination of a resource: a network or a hostname (never both), and a port."""

    network: Network | None
    hostname: str | None
    port: int


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    name: str
    protocol: str
    addresses: tuple[AddressSpec, ...]
    credentials: dict[str, Any] | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    cgroups: tuple[str, ...] = ()
    uids: tuple[int, ...] = ()
    identity: dict[str, Any] | None = None
    unprotected: str = "deny"


def globs(patterns: tuple[str, ...] | None, value: str | None) -> bool:
    """None patterns: no condition. A None value never satisfies a condition."""
    if patterns is None:
        return True
    return value is not None and any(fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class SubjectMatch:
    """Who a rule is about; every given field must hold, any listed value of a field will do."""

    groups: tuple[str, ...] | None = None
    scopes: tuple[str, ...] | None = None
    subject: tuple[str, ...] | None = None
    client_id: tuple[str, ...] | None = None
    exe: tuple[str, ...] | None = None
    uid: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class MaskRule:
    columns: tuple[tuple[str, str, str], ...] = ()  # (schema, table, column) globs
    classifiers: tuple[str, ...] = ()
    style: str = "redact"
    paths: tuple[str, ...] = ()  # JSON paths (http, kubernetes, mcp bodies)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    effect: str  # allow | deny | approve | mask
    reason: str = ""
    agents: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    subjects: SubjectMatch | None = None
    operation: str | None = None  # the operation key of a registered protocol; None: any operation
    match: OperationMatch | None = None  # the block under that key, as its protocol parsed it
    approval: ApprovalSpec | None = None
    mask: MaskRule | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    version: str  # short sha256 of the canonical content
    resources: Mapping[str, ResourceSpec]
    agents: Mapping[str, AgentSpec]
    rules: tuple[Rule, ...]
    source: str = "<string>"
