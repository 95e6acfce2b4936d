"""`interceptor doctor --agent NAME`: run one agent's identity source once, through the
daemon's own identity code (IdentityManager's validator, discovery, JWKS, token requests),
and explain each step with a concrete fix. The token itself is never shown."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

from interceptor.doctor import Check
from interceptor.identity.config import LOGIN_SCOPES, AgentIdentityConfig, parse_identity_config
from interceptor.identity.discovery import ProviderMetadata
from interceptor.identity.display import expiry, local_time, relative
from interceptor.identity.errors import IdentityConfigError, IdentityProviderError, InvalidToken
from interceptor.identity.http import HttpClient, HttpxClient, get_json
from interceptor.identity.jwks import parse_jwks
from interceptor.identity.manager import MAX_TOKEN_FILE, IdentityManager, client_auth
from interceptor.identity.model import Identity
from interceptor.identity.oauth import OAuthError, request_token
from interceptor.identity.validator import TokenValidator
from interceptor.policy.model import Policy, globs

NEEDED_FOR = "identity"
GRANT_FIXES = {
    "invalid_client": "the authorization server refused client {client}'s credentials: check identity.client_id and "
                      "that the key or secret file holds what is registered for {client}",
    "invalid_scope": "grant the scopes {scopes} to client {client} at the authorization server, or remove the "
                     "missing ones from identity.scopes",
    "unauthorized_client": "allow the client credentials grant for client {client} at the authorization server",
}


def _step(name: str, ok: bool, detail: str, fix: str = "") -> Check:
    return Check(name, ok, detail, fix, needed_for=NEEDED_FOR)


def _unverified(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """Header and claims as the token states them, unverified; empty when it is no JWT."""
    try:
        return dict(jwt.get_unverified_header(token)), dict(jwt.decode(token, options={"verify_signature": False}))
    except jwt.PyJWTError:
        return {}, {}


class Explained:
    """A refused token's header and claims, read without trusting them, to explain the refusal."""

    def __init__(self, config: AgentIdentityConfig, metadata: ProviderMetadata, token: str, now: float) -> None:
        self.config = config
        self.metadata = metadata
        self.header, self.claims = _unverified(token)
        self.now = now

    def stated(self, name: str) -> str:
        """A header field as the token states it, cut to 64 characters (it is untrusted input)."""
        return str(self.header.get(name))[:64]

    def when(self, claim: str) -> str:
        """A time claim as local time and how far from now, "absent" when it is no number."""
        value = self.claims.get(claim)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "absent"
        return f"{local_time(value)} ({relative(value, self.now)})"


def _claim_fix(reason: str, e: Explained) -> tuple[str, str, str]:
    """(step, what it found beyond the validator's message, fix) for the validator's refusal `reason`."""
    c, issuer = e.config, e.metadata.issuer
    if reason == "wrong_issuer":
        return ("claim iss", "",
                f"get the agent's tokens from {issuer}, or set identity.issuer in the policy to {e.claims.get('iss')}")
    if reason == "wrong_audience":
        return ("claim aud", "",
                f"set the authorization server's audience to {c.audience}, or identity.audience in the policy "
                f"to {e.claims.get('aud')}")
    if reason == "expired":
        return ("claim exp", f"exp is {e.when('exp')} (leeway {c.leeway:g} s)",
                f"write a fresh token to {c.path}" if c.source == "token_file" else
                "the token was issued expired: check this host's clock (timedatectl) and the token lifetime")
    if reason == "not_yet_valid":
        return ("claim nbf", f"nbf is {e.when('nbf')}, iat is {e.when('iat')}",
                "this host's clock is behind the authorization server's: synchronise it (timedatectl set-ntp true)")
    if reason in ("bad_signature", "unknown_kid", "alg_not_allowed", "bad_key"):
        return ("signature", f"alg {e.stated('alg')}, kid {e.stated('kid')}, keys from {e.metadata.jwks_uri}",
                f"use tokens signed by {issuer} itself with one of identity.algorithms "
                f"({', '.join(c.algorithms)}); if {issuer} just rotated its keys, run doctor again in a minute")
    if reason == "keys_unavailable":
        return ("issuer keys", "", f"make {issuer} and its jwks_uri {e.metadata.jwks_uri} reachable from this host")
    if reason == "introspection_failed":
        return ("revocation", "", f"make {e.metadata.introspection_endpoint} reachable from this host, or set "
                "identity.introspect to false")
    if reason == "revoked":
        return ("revocation", "", "obtain a new token: the source gives one the authorization server revoked")
    return ("token", "",
            f"use a JWT access token of the custom authorization server {issuer} for audience {c.audience}")


def explain_refusal(exc: InvalidToken, token: str, config: AgentIdentityConfig, metadata: ProviderMetadata,
                    now: float) -> Check:
    """The failed step for a token the validator refused, naming the claim and the fix."""
    step, says, fix = _claim_fix(exc.reason, Explained(config, metadata, token, now))
    return _step(step, False, f"{exc.reason}: {exc.message}" + (f"; {says}" if says else ""), fix)


def _accepted(identity: Identity, config: AgentIdentityConfig, token: str, now: float) -> list[Check]:
    header = _unverified(token)[0]
    expires = expiry(identity.expires_at, now)
    return [_step("claim iss", True, f"iss is {identity.issuer}"),
            _step("claim aud", True, f"aud includes {config.audience}"),
            _step("claim exp/nbf", True, f"valid now; expires {expires}"),
            _step("signature", True, f"{header.get('alg')} with key {header.get('kid')} of the issuer"),
            _step("subject", True, f"sub {identity.subject}, client {identity.client_id or '-'}")]


def scopes_check(identity: Identity, config: AgentIdentityConfig) -> Check | None:
    """Whether the token carries every scope identity.scopes asks for (the OpenID ones aside)."""
    wanted = [s for s in config.scopes if s not in LOGIN_SCOPES]
    if not wanted:
        return None
    missing = [s for s in wanted if s not in identity.scopes]
    held = ", ".join(sorted(identity.scopes)) or "none"
    if not missing:
        return _step("claim scp", True, f"holds {', '.join(wanted)}")
    return _step("claim scp", False, f"lacks {', '.join(missing)} (holds {held})",
                 f"grant {', '.join(missing)} to client {config.client_id} at the authorization server, "
                 "or remove them from identity.scopes")


def groups_checks(identity: Identity, config: AgentIdentityConfig, policy: Policy) -> list[Check]:
    """For each allow/approve rule of the agent that names groups: does the token's groups claim hold one?"""
    checks = []
    held = ", ".join(sorted(identity.groups)) or "none"
    for rule in policy.rules:
        groups = rule.subjects.groups if rule.subjects else None
        if groups is None or rule.effect not in ("allow", "approve") or not globs(rule.agents, config.agent):
            continue
        if any(globs(groups, g) for g in identity.groups):
            checks.append(_step(f"groups for rule {rule.name}", True, f"{config.groups_claim} holds one of "
                                f"{', '.join(groups)}"))
            continue
        checks.append(_step(f"groups for rule {rule.name}", False,
                            f"rule {rule.name} ({rule.effect}) needs one of {', '.join(groups)}; "
                            f"claim {config.groups_claim} holds {held}",
                            f"add {identity.subject} to {groups[0]} at the authorization server and put the groups "
                            f"in the {config.groups_claim} claim (or set identity.groups_claim to the claim that "
                            "carries them)"))
    return checks


async def discovery_check(validator: TokenValidator) -> tuple[Check, ProviderMetadata | None]:
    url = validator.issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        metadata = await validator.metadata()
    except IdentityProviderError as exc:
        return _step("discovery", False, str(exc),
                     f"make {url} reachable from this host (DNS, proxy, firewall) and check identity.issuer is "
                     "exactly the authorization server's issuer (https://<org>/oauth2/<id>)"), None
    return _step("discovery", True, f"{url} names issuer {metadata.issuer}"), metadata


async def jwks_check(http: HttpClient, metadata: ProviderMetadata) -> Check:
    try:
        doc, _ = await get_json(http, metadata.jwks_uri, "jwks")
        keys = parse_jwks(doc)
    except IdentityProviderError as exc:
        return _step("JWKS", False, str(exc), f"make {metadata.jwks_uri} reachable from this host and serve "
                     "the issuer's public signing keys there")
    if not keys:
        return _step("JWKS", False, f"{metadata.jwks_uri} publishes no signing keys",
                     "publish the issuer's signing keys (use: sig, with kid)")
    return _step("JWKS", True, f"{len(keys)} signing key(s) from {metadata.jwks_uri}: {', '.join(sorted(keys))}")


async def _client_credentials(http: HttpClient, config: AgentIdentityConfig,
                              metadata: ProviderMetadata) -> tuple[Check, str | None]:
    if not metadata.token_endpoint:
        return _step("token", False, f"{metadata.issuer} publishes no token_endpoint",
                     "use an authorization server with a token endpoint (an Okta custom authorization server)"), None
    try:
        auth = client_auth(config)
        assert auth is not None  # client_credentials requires client_id
        response = await request_token(http, metadata.token_endpoint, auth,
                                       {"grant_type": "client_credentials", "scope": " ".join(config.scopes)})
    except (IdentityProviderError, IdentityConfigError) as exc:
        error = exc.error if isinstance(exc, OAuthError) else ""
        fix = GRANT_FIXES.get(error, f"make {metadata.token_endpoint} reachable and check identity.client_id and "
                              "its credential file")
        return _step("token", False, f"client credentials for {config.client_id}: {exc}",
                     fix.format(client=config.client_id, scopes=", ".join(config.scopes))), None
    return _step("token", True, f"client credentials for {config.client_id} from {metadata.token_endpoint}"), \
        response.access_token


def _token_file(config: AgentIdentityConfig) -> tuple[Check, str | None]:
    assert config.path is not None  # token_file requires path
    fix = f"write the agent's access token to {config.path} (readable by root)"
    try:
        with open(config.path, encoding="utf-8") as handle:
            token = handle.read(MAX_TOKEN_FILE).strip()
    except (OSError, UnicodeDecodeError) as exc:
        return _step("token", False, f"token file {config.path}: {type(exc).__name__}", fix), None
    if not token:
        return _step("token", False, f"token file {config.path} is empty", fix), None
    return _step("token", True, f"read from {config.path}"), token


async def obtain_token(http: HttpClient, config: AgentIdentityConfig,
                       metadata: ProviderMetadata) -> tuple[Check, str | None]:
    """The agent's token from its source, as the daemon gets it; login cannot be done here."""
    if config.source == "client_credentials":
        return await _client_credentials(http, config, metadata)
    if config.source == "token_file":
        return _token_file(config)
    return _step("token", False, "source login: the token comes from a person's device login held by the daemon",
                 f"run `interceptor login --agent {config.agent}` and sign in; `interceptor status` then shows "
                 "the identity"), None


async def _validated(validator: TokenValidator, token: str, config: AgentIdentityConfig, metadata: ProviderMetadata,
                     policy: Policy, now: float) -> list[Check]:
    try:
        identity = await validator.validate(token)
    except InvalidToken as exc:
        return [explain_refusal(exc, token, config, metadata, now)]
    scopes = scopes_check(identity, config)
    return _accepted(identity, config, token, now) + ([scopes] if scopes else []) + \
        groups_checks(identity, config, policy)


def _configured(policy: Policy, agent: str, http: HttpClient) -> tuple[Check, AgentIdentityConfig | None,
                                                                       TokenValidator | None]:
    spec = policy.agents.get(agent)
    if spec is None:
        return _step("agent", False, f"policy {policy.source} names no agent {agent!r}",
                     f"use one of {', '.join(sorted(policy.agents)) or '(none)'}, or add {agent} under agents:"), \
            None, None
    try:
        config = parse_identity_config(agent, spec.identity)
        validator = IdentityManager({agent: spec.identity}, http=http).validator(agent)
    except IdentityConfigError as exc:
        return _step("identity configuration", False, str(exc), f"correct agents.{agent}.identity in "
                     f"{policy.source}"), None, None
    detail = (f"source {config.source}, issuer {config.issuer}, audience {config.audience}" if config.issuer
              else "source none: the agent needs no identity")
    return _step("identity configuration", True, detail), config, validator


async def explain_agent(policy: Policy, agent: str, http: HttpClient | None = None,
                        clock: Callable[[], float] = time.time) -> list[Check]:
    """Each step of checking `agent`'s identity, in order, stopping at the first that the rest
    depend on. No IdentityProviderError or InvalidToken escapes: each is a failed Check."""
    http = http or HttpxClient()
    configured, config, validator = _configured(policy, agent, http)
    if config is None or validator is None:
        return [configured]
    metadata_check, metadata = await discovery_check(validator)
    if metadata is None:
        return [configured, metadata_check]
    steps = [configured, metadata_check, await jwks_check(http, metadata)]
    token_check, token = await obtain_token(http, config, metadata)
    steps.append(token_check)
    if token is not None:
        steps += await _validated(validator, token, config, metadata, policy, clock())
    return steps


def identity_verdict(agent: str, checks: list[Check]) -> tuple[bool, str]:
    """(every step passed, a one-line summary naming the first failed step)."""
    failed = [c.name for c in checks if not c.ok]
    if failed:
        return False, f"agent {agent}: identity not usable as configured ({len(failed)} failed, first: {failed[0]})"
    return True, f"agent {agent}: every identity check passed"
