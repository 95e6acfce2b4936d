"""The seam between the HTTP/1.1 session (interceptor.handlers.http.session) and what an
HTTP-based protocol adds on top: which operation a request is, how a refusal looks to that
protocol's clients, which request headers it rewrites, and how a response body is masked.

`http`, `kubernetes` and `mcp` resources share the session, the TLS and the credential
handling; each is one Dialect. All methods are sans-IO and synchronous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from interceptor.decision import Decision
from interceptor.operations import Operation, Pairs


def header_value(headers: Pairs, name: str) -> str | None:
    """The value of the one header `name` (lower case), None when absent; several values are
    joined with ", " (RFC 9110 section 5.3)."""
    values = [value for key, value in headers if key == name]
    return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request line and header section as the session accepted them (RFC 9112 section 3).

    `target`: the request-target as sent; `path`: its path percent-decoded once (the session
    refuses targets whose decoded path could read differently upstream); `query`: the query
    parameters, decoded, in order; `headers`: as sent, names lower-cased, in order; `host`:
    the Host header (or the authority of an absolute-form target)."""

    method: str
    target: str
    path: str
    query: Pairs
    headers: Pairs
    host: str | None
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A status line and header section from the upstream (RFC 9112 section 4)."""

    status: int
    headers: Pairs
    reason: str = ""

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole response the enforcer gives the agent itself (a refusal, an error)."""

    status: int
    headers: Pairs
    body: bytes


class BodyFilter(Protocol):
    """Transforms one response body as it streams: each piece in, what to send on out
    (possibly nothing yet). Raises interceptor.errors.MaskingError when it cannot mask what
    it was given; the session then ends the response (fail closed)."""

    masked: int  # values masked so far, for the audit record

    def feed(self, data: bytes) -> bytes: ...

    def end(self) -> bytes:
        """The body ended: what is left to send."""


class Dialect(Protocol):
    """What one HTTP-based protocol adds to the session, for one flow."""

    name: str  # the resource protocol: "http", "kubernetes" or "mcp"

    def body_limit(self, head: RequestHead) -> int:
        """How many bytes of the request body must be read before the request is judged
        (0: judge at the head); a longer body is refused with 413."""

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        """The operation the request is. Raises interceptor.errors.ClientProtocolError for a
        request whose meaning the server could read differently (answered 400)."""

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        """The headers to send upstream, from `head.headers` once the session has removed
        hop-by-hop, credential and identity headers (the dialect may rewrite Accept, ...)."""

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        """The answer to a request the enforcer refuses, as this protocol's clients show it
        (a Kubernetes Status, a JSON-RPC error, plain text)."""

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        """The filter for this response's body (masks, the tools an agent may see); None to
        relay it as is. Raises MaskingError when the decision asks for masks this response's
        content type or encoding cannot be masked in."""

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        """The operation as the audit record keeps it (MCP arguments scrubbed)."""
