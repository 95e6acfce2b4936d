"""Keeps every agent's Okta identity current: obtains tokens (client credentials, a token
file, or a person's device login), validates them, refreshes them before they expire, and
tells the daemon when an agent's identity becomes unusable or usable again.

Tokens live only inside this module's per-agent state; everything it exposes (current(),
status(), change notifications, audit records, errors) is built from the validated claims.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.errors import AuditUnavailable
from interceptor.identity.config import AgentIdentityConfig, parse_identity_config
from interceptor.identity.errors import IdentityConfigError, IdentityProviderError, InvalidToken
from interceptor.identity.http import HttpClient, HttpxClient
from interceptor.identity.model import Identity
from interceptor.identity.oauth import (
    ClientAuth, ClientSecret, DeviceAuthorization, OAuthError, PrivateKeyJwt, PublicClient, TokenResponse,
    device_authorization, poll_device_token, request_token)
from interceptor.identity.validator import TokenValidator

log = logging.getLogger(__name__)

TOKEN_STATES = {"expired": "expired", "revoked": "revoked"}
MAX_TOKEN_FILE = 1 << 16
TRANSIENT = {"keys_unavailable", "introspection_failed"}  # the token may be fine: deny now, retry soon


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """An agent's identity became usable (identity set) or unusable (identity None, reason why)."""

    agent: str
    identity: Identity | None
    state: str
    reason: str
    previous: Identity | None = None


ChangeCallback = Callable[[IdentityChange], object]


@dataclass(frozen=True, slots=True)
class ManagerTiming:
    refresh_fraction: float = 0.75  # refresh after this share of a token's lifetime
    retry_min: float = 1.0
    retry_max: float = 30.0
    poll_interval: float = 1.0  # token files
    recheck_interval: float = 30.0  # re-introspection, when configured


DEFAULT_TIMING = ManagerTiming()


@dataclass(slots=True)
class _Slot:
    config: AgentIdentityConfig
    validator: TokenValidator | None
    auth: ClientAuth | None
    state: str = "pending"
    identity: Identity | None = None
    error: str | None = None
    token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    next_refresh: float = 0.0
    next_recheck: float = 0.0
    retry: float = 0.0
    file_signature: tuple[int, int, int] | None = None
    login_pending: bool = False
    announced: Identity | None = None  # the identity last announced as usable
    warned: str | None = None  # the refusal reason last logged at warning level
    last_checked: float | None = None  # epoch s of the last step (fetch, re-read, re-check)
    next_check: float | None = None  # epoch s of the next step the refresh loop is sleeping until
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class DeviceLogin:
    """One device authorization in progress: show `prompt()` to the person, then `await wait()`."""

    def __init__(self, agent: str, authorization: DeviceAuthorization,
                 poll: Callable[[], Awaitable[Identity]]) -> None:
        self.agent = agent
        self.authorization = authorization
        self._poll = poll

    def prompt(self) -> dict[str, object]:
        a = self.authorization
        return {"agent": self.agent, "user_code": a.user_code, "verification_uri": a.verification_uri,
                "verification_uri_complete": a.verification_uri_complete, "expires_in": a.expires_in}

    async def wait(self) -> Identity:
        """Poll until the person approves; IdentityProviderError if denied or expired."""
        return await self._poll()


def client_auth(config: AgentIdentityConfig) -> ClientAuth | None:
    if config.client_id is None:
        return None
    if config.private_key_file:
        return PrivateKeyJwt.from_file(config.client_id, config.private_key_file, config.key_id)
    if config.client_secret_file:
        return ClientSecret.from_file(config.client_id, config.client_secret_file)
    return PublicClient(config.client_id)


def _expired_reason(error: str | None) -> str:
    """Why an identity expired: the last renewal's failure when there was one."""
    return f"token expired and could not be renewed: {error}" if error else "token expired and was not renewed in time"


class IdentityManager:
    """Every configured agent's identity, kept valid in the background."""

    def __init__(self, agents: Mapping[str, Mapping[str, Any] | None], *, http: HttpClient | None = None,
                 audit: AuditSink | None = None, timing: ManagerTiming = DEFAULT_TIMING,
                 clock: Callable[[], float] = time.time) -> None:
        self.http = http or HttpxClient()
        self.audit = audit
        self.timing = timing
        self.clock = clock
        self._callbacks: list[ChangeCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._slots = {name: self._slot(parse_identity_config(name, raw)) for name, raw in agents.items()}

    def _slot(self, config: AgentIdentityConfig) -> _Slot:
        if config.source == "none":
            return _Slot(config, None, None, state="none")
        auth = client_auth(config)
        assert config.issuer is not None and config.audience is not None
        try:
            validator = TokenValidator(
                config.issuer, config.audience, config.algorithms, config.leeway, groups_claim=config.groups_claim,
                http=self.http, introspection=auth if config.introspect else None,
                introspection_ttl=min(30.0, self.timing.recheck_interval))
        except ValueError as exc:
            raise IdentityConfigError(f"agent {config.agent!r} identity: {exc}") from None
        return _Slot(config, validator, auth, state="awaiting_login" if config.source == "login" else "pending")

    # -- what the daemon asks ---------------------------------------------------------------

    def current(self, agent: str) -> Identity | None:
        """The agent's usable identity; None (deny) when missing, expired, revoked or invalid."""
        slot = self._slots.get(agent)
        if slot is None or slot.state != "valid" or slot.identity is None:
            return None
        return None if slot.identity.expired(self.clock()) else slot.identity

    def reason(self, agent: str) -> str:
        """Why current(agent) is None, for the audit record of a refused flow."""
        slot = self._slots.get(agent)
        if slot is None:
            return f"agent {agent!r} has no identity configuration"
        if slot.state == "valid" and slot.identity is not None and slot.identity.expired(self.clock()):
            return "identity expired"
        if slot.state == "awaiting_login" and not slot.error:
            return f"identity awaiting_login: run `interceptor login --agent {agent}`"
        return f"identity {slot.state}" + (f": {slot.error}" if slot.error else "")

    def on_invalid(self, agent: str) -> str:
        """What to do with the agent's open connections once its identity is unusable."""
        slot = self._slots.get(agent)
        return slot.config.on_invalid if slot else "deny_next"

    def validator(self, agent: str) -> TokenValidator | None:
        """The agent's validator, for bearer tokens the agent presents itself (HTTP resources)."""
        slot = self._slots.get(agent)
        return slot.validator if slot else None

    def on_change(self, callback: ChangeCallback) -> None:
        """Call `callback(IdentityChange)` whenever an agent's identity turns usable or unusable."""
        self._callbacks.append(callback)

    def status(self) -> list[dict[str, object]]:
        """Per agent: agent, source, state (valid, expired, invalid, revoked, error, missing,
        pending, awaiting_login or none), reason (why the agent is refused; None while its
        identity is usable or it needs none), issuer, subject, client_id, groups, scopes,
        expires_at, last_checked and next_check (epoch s or None), login_pending and
        last_error (the last failure, also while a still-valid identity is kept). Never a token."""
        rows: list[dict[str, object]] = []
        for name, slot in sorted(self._slots.items()):
            identity = slot.identity
            usable = slot.config.source == "none" or self.current(name) is not None
            rows.append({
                "agent": name, "source": slot.config.source, "state": self._state(slot),
                "reason": None if usable else self.reason(name),
                "issuer": slot.config.issuer, "subject": identity.subject if identity else None,
                "client_id": identity.client_id if identity else None,
                "groups": sorted(identity.groups) if identity else [],
                "scopes": sorted(identity.scopes) if identity else [],
                "expires_at": identity.expires_at if identity else None,
                "last_checked": slot.last_checked, "next_check": slot.next_check,
                "login_pending": slot.login_pending, "last_error": slot.error})
        return rows

    def _state(self, slot: _Slot) -> str:
        if slot.state == "valid" and slot.identity is not None and slot.identity.expired(self.clock()):
            return "expired"
        return slot.state

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Obtain every agent's first token (errors are recorded, not raised), then keep them fresh."""
        active = [slot for slot in self._slots.values() if slot.validator is not None]
        await asyncio.gather(*(self._guarded_step(slot) for slot in active))
        self._tasks = [asyncio.create_task(self._run(slot), name=f"identity-{slot.config.agent}")
                       for slot in active]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, slot: _Slot) -> None:
        while True:
            delay = self._next_delay(slot)
            slot.next_check = self.clock() + delay
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow stop()'s cancellation
                async with asyncio.timeout(delay):
                    await slot.wake.wait()
            except TimeoutError:
                pass
            slot.wake.clear()
            await self._guarded_step(slot)

    async def _guarded_step(self, slot: _Slot) -> None:
        try:
            await self._step(slot)
        except Exception:  # one agent's surprise must not stop its refresh loop for good
            log.exception("identity refresh for agent %s failed", slot.config.agent)

    def _next_delay(self, slot: _Slot) -> float:
        now = self.clock()
        candidates = [self.timing.retry_max]
        if slot.config.source == "token_file":
            candidates.append(self.timing.poll_interval)
        if slot.config.source == "client_credentials" or slot.refresh_token:
            candidates.append(slot.next_refresh - now)
        if slot.token and (slot.config.introspect or slot.state == "error"):
            candidates.append(slot.next_recheck - now)
        if slot.identity is not None and slot.state == "valid" and slot.identity.expires_at is not None:
            candidates.append(slot.identity.expires_at - now)
        return max(0.05, min(candidates))

    async def _step(self, slot: _Slot) -> None:
        """Do whatever is due for one agent: fetch, re-read, refresh, re-check or expire."""
        now = slot.last_checked = slot.next_check = self.clock()  # the next step is this one, under way
        source = slot.config.source
        if source == "client_credentials" and now >= slot.next_refresh:
            await self._obtain(slot, {"grant_type": "client_credentials", "scope": " ".join(slot.config.scopes)})
        elif source == "login" and slot.refresh_token and now >= slot.next_refresh:
            await self._obtain(slot, {"grant_type": "refresh_token", "refresh_token": slot.refresh_token})
        elif source == "token_file":
            await self._read_token_file(slot)
        if slot.token and (slot.config.introspect or slot.state == "error") and self.clock() >= slot.next_recheck:
            await self._accept(slot, slot.token)
        if self._state(slot) == "expired" and slot.state == "valid":
            await self._set(slot, "expired", slot.identity, _expired_reason(slot.error))

    # -- sources ----------------------------------------------------------------------------

    async def _obtain(self, slot: _Slot, form: dict[str, str]) -> None:
        """Ask the token endpoint for a new token; on failure retry with backoff, keeping the
        current identity until it expires."""
        assert slot.validator is not None and slot.auth is not None
        try:
            endpoint = (await slot.validator.metadata()).token_endpoint
            if not endpoint:
                raise IdentityProviderError(f"{slot.config.issuer} publishes no token_endpoint")
            response = await request_token(self.http, endpoint, slot.auth, form)
        except IdentityProviderError as exc:
            if isinstance(exc, OAuthError) and exc.error == "invalid_grant" and form["grant_type"] == "refresh_token":
                slot.refresh_token = None
            slot.next_refresh = self._backoff(slot)
            await self._failed(slot, str(exc))
            return
        await self._take(slot, response)

    def _backoff(self, slot: _Slot) -> float:
        """When to try again after a failure: doubling from retry_min up to retry_max."""
        slot.retry = min(max(slot.retry * 2, self.timing.retry_min), self.timing.retry_max)
        return self.clock() + slot.retry

    async def _take(self, slot: _Slot, response: TokenResponse) -> Identity | None:
        identity = await self._accept(slot, response.access_token)
        if response.refresh_token:
            slot.refresh_token = response.refresh_token
        if identity is None or identity.expires_at is None:
            slot.next_refresh = self._backoff(slot)
            return identity
        slot.retry = 0.0
        now = self.clock()
        slot.next_refresh = now + max(self.timing.retry_min, (identity.expires_at - now) * self.timing.refresh_fraction)
        return identity

    async def _read_token_file(self, slot: _Slot) -> None:
        assert slot.config.path is not None
        try:
            info = os.stat(slot.config.path)
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
            if signature == slot.file_signature:
                return
            with open(slot.config.path, encoding="utf-8") as handle:
                token = handle.read(MAX_TOKEN_FILE).strip()  # the validator refuses what is too large
        except (OSError, UnicodeDecodeError) as exc:
            slot.file_signature = None
            await self._set(slot, "missing", None, f"token file {slot.config.path}: {type(exc).__name__}")
            return
        slot.file_signature = signature
        await self._accept(slot, token)

    async def _accept(self, slot: _Slot, token: str) -> Identity | None:
        """Validate a token and make it the agent's identity, or record why it was refused."""
        assert slot.validator is not None
        try:
            identity = await slot.validator.validate(token)
        except InvalidToken as exc:
            transient = exc.reason in TRANSIENT
            slot.token = token if transient else None
            if transient:
                slot.next_recheck = self._backoff(slot)
            state = "error" if transient else TOKEN_STATES.get(exc.reason, "invalid")
            await self._set(slot, state, None, f"{exc.reason}: {exc.message}")
            return None
        slot.token = token
        slot.next_recheck = self.clock() + self.timing.recheck_interval
        await self._set(slot, "valid", identity, None)
        return identity

    async def _failed(self, slot: _Slot, error: str) -> None:
        """The provider could not be asked; keep a still-valid identity, else become unusable."""
        if slot.identity is not None and self._state(slot) == "valid":
            slot.error = error
            self._warn(slot, f"cannot renew its token, keeping the current one until it expires: {error}")
            return
        if slot.identity is not None:
            await self._set(slot, "expired", slot.identity, _expired_reason(error))
        else:
            await self._set(slot, "error", None, error)

    # -- device login -----------------------------------------------------------------------

    async def login_device(self, agent: str) -> DeviceLogin:
        """Start the Device Authorization Grant for the person supervising `agent`."""
        slot = self._slots.get(agent)
        if slot is None:
            raise IdentityConfigError(f"no agent named {agent!r}")
        if slot.config.source != "login" or slot.validator is None or slot.auth is None:
            raise IdentityConfigError(f"agent {agent!r} identity source is {slot.config.source}, not login")
        endpoint = (await slot.validator.metadata()).device_authorization_endpoint
        if not endpoint:
            raise IdentityProviderError(f"{slot.config.issuer} offers no device authorization endpoint")
        auth = slot.auth
        authorization = await device_authorization(self.http, endpoint, auth, slot.config.scopes)
        slot.login_pending = True
        return DeviceLogin(agent, authorization, lambda: self._poll_device(slot, auth, authorization))

    async def _poll_device(self, slot: _Slot, auth: ClientAuth, authorization: DeviceAuthorization) -> Identity:
        assert slot.validator is not None
        endpoint = (await slot.validator.metadata()).token_endpoint
        if not endpoint:
            raise IdentityProviderError(f"{slot.config.issuer} publishes no token_endpoint")
        try:
            response = await poll_device_token(self.http, endpoint, auth, authorization,
                                               f"agent {slot.config.agent}")
        finally:
            slot.login_pending = False
        identity = await self._take(slot, response)
        if identity is None:
            raise IdentityProviderError(f"device login for agent {slot.config.agent}: {slot.error}")
        slot.wake.set()
        return identity

    # -- notification -----------------------------------------------------------------------

    async def _set(self, slot: _Slot, state: str, identity: Identity | None, error: str | None) -> None:
        """Record the agent's new state. A new reason for refusal is logged at warning and
        audited; a change of access (usable, unusable, another subject) is audited and told to
        the on_change callbacks."""
        was = slot.announced
        slot.state, slot.identity, slot.error = state, identity, error
        agent = slot.config.agent
        now = self.current(agent)
        changed = (was is None) != (now is None) or (was is not None and now is not None and was.subject != now.subject)
        if now is None:
            reason = self.reason(agent)
            if self._warn(slot, reason):
                await self._audit(IdentityChange(agent, None, state, reason, was))
        else:
            reason, slot.warned = f"identity valid (subject {now.subject})", None
            if changed:
                log.info("identity for agent %s: %s", agent, reason)
                await self._audit(IdentityChange(agent, now, state, reason, was))
        if not changed:
            return
        slot.announced = now
        change = IdentityChange(agent, now, state, reason, was)
        for callback in self._callbacks:
            result = callback(change)
            if inspect.isawaitable(result):
                await result

    def _warn(self, slot: _Slot, reason: str) -> bool:
        """Log why the agent's identity fails, at warning level, unless that reason was the
        last one logged for it (a failure retried every few seconds is logged once). Whether
        it was logged."""
        if reason == slot.warned:
            return False
        log.warning("identity for agent %s: %s", slot.config.agent, reason)
        slot.warned = reason
        return True

    async def _audit(self, change: IdentityChange) -> None:
        """An `identity` audit record: "agent X gains access: identity valid (subject S)"
        (allow), "agent X loses access: <reason>" (deny, it had access) or "agent X is
        refused: <reason>" (deny, it had none)."""
        if self.audit is None:
            return
        shown = change.identity or change.previous
        verb = "gains access" if change.identity else "loses access" if change.previous else "is refused"
        event = AuditEvent(kind="identity", agent=change.agent, decision="allow" if change.identity else "deny",
                           rule="identity", reason=f"agent {change.agent} {verb}: {change.reason}", identity=shown.summary() if shown else None,
                           operation={"state": change.state})
        try:
            await self.audit.write(event)
        except AuditUnavailable as exc:
            log.error("audit of identity change for agent %s failed: %s", change.agent, exc)
