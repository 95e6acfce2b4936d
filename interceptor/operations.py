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


Pairs = tuple[tuple[str, str], ...]  # (name, value) in the order sent; names of headers lower-cased


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as the server will read it: the method, the path percent-decoded
    once (the handler refuses a target whose decoded form could differ from the server's:
    dot segments, empty segments, encoded `/` or `\\`), the query parameters in order,
    and the Host. RFC 9110 sections 9 and 7.2; RFC 3986 section 6."""

    method: str
    path: str
    query: Pairs = ()
    host: str | None = None
    kind = "http"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers: method, host, path and query."""
        return {"kind": self.kind, "method": self.method, "host": self.host, "path": self.path,
                "query": [list(pair) for pair in self.query]}


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """The Kubernetes request attributes the API server derives from one request
    (k8s.io/apiserver/pkg/endpoints/request RequestInfo): for a resource request the verb
    (get list watch create update patch delete deletecollection; `create` for a connect
    subresource such as pods/exec or nodes/proxy whatever the method, as kube-apiserver 1.31+
    authorizes WebSocket upgrades), API group ("" for the core group), version, resource,
    subresource, namespace ("" when cluster-scoped or across namespaces) and name; for a
    non-resource request (`/version`, `/healthz`, discovery) only the verb (lower-cased
    method) and path. Label and field selectors, dryRun, and an exec's command as sent."""

    verb: str
    path: str
    resource_request: bool = True
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    label_selector: str = ""
    field_selector: str = ""
    dry_run: bool = False
    command: tuple[str, ...] = ()
    kind = "kubernetes"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers: the attributes that are set."""
        summary: dict[str, object] = {"kind": self.kind, "verb": self.verb}
        if not self.resource_request:
            summary["path"] = self.path
            return summary
        for name in ("api_group", "api_version", "resource", "subresource", "namespace", "name",
                     "label_selector", "field_selector"):
            value = getattr(self, name)
            if value or name == "resource":
                summary[name] = value
        if self.dry_run:
            summary["dry_run"] = True
        if self.command:
            summary["command"] = list(self.command)
        return summary


@dataclass(frozen=True, slots=True)
class McpCall:
    """One MCP JSON-RPC message from the agent (MCP specification 2025-06-18, Basic
    Protocol): its method and, for `tools/call`, the tool's name and its arguments as
    canonical JSON (sorted keys, no spaces), so the value compares and hashes whole."""

    method: str
    tool: str | None = None
    arguments: str = "{}"
    kind = "mcp"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers: the method, the tool and its arguments."""
        summary: dict[str, object] = {"kind": self.kind, "method": self.method}
        if self.tool is not None:
            summary["tool"] = self.tool
            summary["arguments"] = self.arguments
        return summary


@dataclass(frozen=True, slots=True)
class SshRequest:
    """One thing an SSH client asks of the server, as the server will carry it out
    (RFC 4254 sections 6 and 7):

    - `exec`: run `command`, the command line exactly as sent; the server's side hands it to
      the user's login shell (`$SHELL -c command`), so it is judged as a POSIX shell reads it;
    - `shell`: an interactive shell (`pty` True when a terminal was asked for);
    - `subsystem`: a subsystem other than sftp, `command` its name;
    - `read` / `write`: a file access over SFTP (draft-ietf-secsh-filexfer-02) or the legacy
      scp protocol, `path` absolute and in normal form on the server (no `.`, `..` or empty
      segments), `action` the SFTP request (open, readdir, stat, lstat, statvfs, readlink,
      realpath, remove, rename, posix-rename, mkdir, rmdir, setstat, lsetstat, symlink,
      hardlink) or `scp`;
    - `forward`: a forwarded connection, `forward` its kind (`local`: direct-tcpip, which
      is also how dynamic forwarding arrives; `remote`: tcpip-forward; `agent`, `x11`;
      `unix`: direct-streamlocal@openssh.com; `remote-unix`: streamlocal-forward@openssh.com;
      `tun`: tun@openssh.com) and `target` (local: "host:port" where the connection goes;
      remote: "address:port" where the server listens; unix and remote-unix: the socket path;
      tun: "tun:UNIT" or "tap:UNIT", UNIT a number or `any`; agent and x11: None)."""

    request: str
    command: str | None = None
    path: str | None = None
    action: str | None = None
    forward: str | None = None
    target: str | None = None
    pty: bool = False
    kind = "ssh"

    def summary(self) -> dict[str, object]:
        """What an approver sees and a grant covers: the request and whichever of command,
        path, action, forward and target it has (and pty when one was asked for)."""
        summary: dict[str, object] = {"kind": self.kind, "request": self.request}
        for name in ("command", "path", "action", "forward", "target"):
            value = getattr(self, name)
            if value is not None:
                summary[name] = value
        if self.pty:
            summary["pty"] = True
        return summary


# One per protocol of interceptor.protocols. Each is a frozen dataclass with a class attribute
# `kind` (its protocol's operation key) and `summary()`, what an approver sees and a grant covers.
Operation = TcpConnect | SqlQuery | HttpRequest | KubeRequest | McpCall | SshRequest


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the policy: may `subject` do `operation` on `resource`?"""

    subject: Subject
    resource: str
    operation: Operation
    labels: dict[str, str] = field(default_factory=dict)
