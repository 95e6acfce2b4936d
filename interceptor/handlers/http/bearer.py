"""What the HTTP handler adds around a protocol's Dialect for one flow: the agent's headers
named like the resource's credential headers are dropped (so a server reading the first of
two `X-Api-Key` headers never reads the agent's), and, for a resource with `identity:
bearer`, the access token the agent presents becomes the flow's identity.

Bearer identity (RFC 6750 section 2.1): the first request's `Authorization: Bearer TOKEN` is
validated with the agent's identity settings (`agents.NAME.identity`: issuer, audience,
algorithms, leeway, groups claim, introspection) by interceptor.identity's TokenValidator,
one per such settings, kept across flows (its discovery and JWKS caches). Every later request
of the connection must present the same token; a request without a valid one is answered
401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 section 3.1). A token
that expires ends the flow's access at the identity gate (interceptor.enforcer.judge).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from interceptor.decision import Decision
from interceptor.errors import Fault, InterceptorError
from interceptor.handlers.http.dialect import BodyFilter, Dialect, Reply, RequestHead, ResponseHead
from interceptor.identity.config import AgentIdentityConfig, parse_identity_config
from interceptor.identity.errors import IdentityConfigError, InvalidToken
from interceptor.identity.manager import client_auth
from interceptor.identity.model import Identity
from interceptor.identity.validator import TokenValidator
from interceptor.operations import Operation, Pairs

CHALLENGE = ("www-authenticate", 'Bearer error="invalid_token"')


class BearerRefused(InterceptorError):
    """The request carries no valid bearer token for a resource with `identity: bearer`
    (answered 401); the message never quotes the token."""

    fault = Fault.POLICY
    status = 401


def bearer_token(head: RequestHead) -> str | None:
    """The token of the request's one `Authorization: Bearer` header (the scheme compared
    case-insensitively, RFC 9110 section 11.1); None when absent, another scheme, or several
    Authorization headers."""
    values = [value for name, value in head.headers if name == "authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class BearerValidators:
    """The TokenValidator for each agent identity configuration, made on first use."""

    def __init__(self) -> None:
        self._validators: dict[AgentIdentityConfig, TokenValidator] = {}

    def validator(self, agent: str, raw: Mapping[str, Any] | None) -> TokenValidator:
        """The validator of `agent`'s identity settings `raw`; BearerRefused when it has none
        with an issuer and an audience (a policy that gives `identity: bearer` to an agent
        without them)."""
        try:
            config = parse_identity_config(agent, raw)
        except IdentityConfigError as exc:
            raise BearerRefused(f"bearer tokens cannot be validated: {exc}") from None
        if config.issuer is None or config.audience is None:
            raise BearerRefused(f"agent {agent!r} has no identity issuer and audience to validate bearer tokens "
                                "with (agents.NAME.identity)")
        validator = self._validators.get(config)
        if validator is None:
            try:
                validator = TokenValidator(config.issuer, config.audience, config.algorithms, config.leeway,
                                           groups_claim=config.groups_claim,
                                           introspection=client_auth(config) if config.introspect else None)
            except ValueError as exc:
                raise BearerRefused(f"agent {agent!r} identity: {exc}") from None
            self._validators[config] = validator
        return validator

    async def identity(self, agent: str, raw: Mapping[str, Any] | None, head: RequestHead) -> tuple[Identity, str]:
        """The identity the request's bearer token proves, and the token; BearerRefused
        saying why not (the validator's reason: expired, wrong audience, ...)."""
        token = bearer_token(head)
        if token is None:
            raise BearerRefused("this resource judges requests by the agent's bearer token: send one "
                                "Authorization: Bearer header")
        try:
            return await self.validator(agent, raw).validate(token), token
        except InvalidToken as exc:
            raise BearerRefused(f"bearer token refused: {exc}") from None


class FlowDialect:
    """`dialect` for one flow (interceptor.handlers.http.dialect.Dialect): request headers
    named in `credential_names` are dropped; with `token`, a request that does not present
    that bearer token is refused (401)."""

    def __init__(self, dialect: Dialect, credential_names: frozenset[str], token: str | None = None) -> None:
        self.dialect = dialect
        self.name = dialect.name
        self.credential_names = credential_names
        self.token = token

    def body_limit(self, head: RequestHead) -> int:
        return self.dialect.body_limit(head)

    def operation(self, head: RequestHead, body: bytes) -> Operation:
        if self.token is not None:
            presented = bearer_token(head)
            if presented is None or not hmac.compare_digest(presented.encode(), self.token.encode()):
                raise BearerRefused("every request of this connection must carry the bearer token its first "
                                    "request was judged by; open a new connection for another token")
        return self.dialect.operation(head, body)

    def request_headers(self, head: RequestHead, operation: Operation) -> Pairs:
        return tuple((name, value) for name, value in self.dialect.request_headers(head, operation)
                     if name not in self.credential_names)

    def refusal(self, head: RequestHead, body: bytes, status: int, message: str, rule: str | None) -> Reply:
        reply = self.dialect.refusal(head, body, status, message, rule)
        if status == 401:
            return Reply(reply.status, (*reply.headers, CHALLENGE), reply.body)
        return reply

    def response_filter(self, head: RequestHead, operation: Operation, decision: Decision,
                        response: ResponseHead) -> BodyFilter | None:
        return self.dialect.response_filter(head, operation, decision, response)

    def audit_operation(self, operation: Operation) -> dict[str, object]:
        return self.dialect.audit_operation(operation)
