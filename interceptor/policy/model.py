"""The policy as loaded: immutable values the engine and the redirect layer consume."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from interceptor.decision import ApprovalSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOLS = ("tcp", "postgres", "http", "kubernetes", "ssh")
OPERATION_KEYS = ("tcp", "sql", "http", "kubernetes", "ssh")


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
class SqlMatch:
    kinds: tuple[str, ...] | None = None
    tables: tuple[tuple[str, str], ...] | None = None  # (schema glob, table glob)
    columns: tuple[str, ...] | None = None  # column globs: "name" or "schema.table.column"
    functions: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    methods: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class KubernetesMatch:
    verbs: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    api_groups: tuple[str, ...] | None = None
    subresources: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SshMatch:
    commands: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class MaskRule:
    columns: tuple[tuple[str, str, str], ...] = ()  # (schema, table, column) globs
    classifiers: tuple[str, ...] = ()
    style: str = "redact"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    effect: str  # allow | deny | approve | mask
    reason: str = ""
    agents: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    subjects: SubjectMatch | None = None
    operation: str | None = None  # one of OPERATION_KEYS; None: any operation
    sql: SqlMatch | None = None
    http: HttpMatch | None = None
    kubernetes: KubernetesMatch | None = None
    ssh: SshMatch | None = None
    approval: ApprovalSpec | None = None
    mask: MaskRule | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    version: str  # short sha256 of the canonical content
    resources: Mapping[str, ResourceSpec]
    agents: Mapping[str, AgentSpec]
    rules: tuple[Rule, ...]
    source: str = "<string>"
