"""What a protocol handler asks the policy about: the subject and the operation.

Handlers only produce these values; the policy engine only consumes them. A new
protocol adds an operation type here and a handler module, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interceptor.identity.model import Identity


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


@dataclass(frozen=True, slots=True)
class SqlQuery:
    """One query string as the client sent it (it may hold several statements)."""

    text: str
    database: str | None = None
    kind = "sql"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    host: str
    path: str
    kind = "http"


@dataclass(frozen=True, slots=True)
class KubernetesRequest:
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection, ...
    resource: str  # pods, deployments, secrets, ...
    api_group: str = ""
    subresource: str | None = None  # exec, log, portforward, ...
    namespace: str | None = None
    name: str | None = None
    kind = "kubernetes"


@dataclass(frozen=True, slots=True)
class SshCommand:
    command: str  # "" for an interactive shell
    user: str | None = None
    kind = "ssh"


Operation = TcpConnect | SqlQuery | HttpRequest | KubernetesRequest | SshCommand


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the policy: may `subject` do `operation` on `resource`?"""

    subject: Subject
    resource: str
    operation: Operation
    labels: dict[str, str] = field(default_factory=dict)
