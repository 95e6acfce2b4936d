"""IdentityManager and TokenValidator against a real OpenID provider (oidc-provider on loopback,
configured like an Okta custom authorization server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from interceptor.audit.event import AuditEvent
from interceptor.identity import InvalidToken
from interceptor.identity.manager import IdentityChange, IdentityManager, ManagerTiming
from interceptor.identity.validator import TokenValidator
from tests.oidc_fixture import SERVICE_GROUPS, OidcProvider
from tests.oidc_fixture import oidc_provider_fixture  # noqa: F401 (registers the fixture)

FAST = ManagerTiming(retry_min=0.2, retry_max=0.5, poll_interval=0.1, recheck_interval=0.3)
WAIT = 20.0  # upper bound for the background loop to notice; never asserted on


class MemorySink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def write(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        pass


def cc_agent(op: OidcProvider, **extra: Any) -> dict[str, Any]:
    return {"source": "client_credentials", "issuer": op.issuer, "audience": op.audience,
            "client_id": op.service_client, "private_key_file": str(op.private_key_file),
            "scopes": ["db.read", "k8s.read"], **extra}


async def until(predicate: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_client_credentials_with_private_key_jwt(oidc_provider: OidcProvider) -> None:
    async def test() -> None:
        manager = IdentityManager({"dbbot": cc_agent(oidc_provider), "plain": {"source": "none"}}, timing=FAST)
        await manager.start()
        try:
            identity = manager.current("dbbot")
            assert identity is not None
            assert identity.issuer == oidc_provider.issuer
            assert identity.subject == identity.client_id == oidc_provider.service_client
            assert identity.scopes == {"db.read", "k8s.read"}
            assert identity.groups == set(SERVICE_GROUPS)
            assert identity.token_id
            assert manager.current("plain") is None
            rows = {row["agent"]: row for row in manager.status()}
            assert rows["dbbot"]["state"] == "valid" and rows["dbbot"]["groups"] == sorted(SERVICE_GROUPS)
            assert rows["plain"]["state"] == "none"
            assert "eyJ" not in json.dumps(manager.status())
        finally:
            await manager.stop()
    run(test)


def test_client_secret_source(oidc_provider: OidcProvider) -> None:
    async def test() -> None:
        config = cc_agent(oidc_provider, client_id=oidc_provider.secret_client, scopes=["db.write"])
        del config["private_key_file"]
        config["client_secret_file"] = str(oidc_provider.client_secret_file)
        manager = IdentityManager({"writer": config}, timing=FAST)
        await manager.start()
        try:
            identity = manager.current("writer")
            assert identity is not None and identity.scopes == {"db.write"}
            assert oidc_provider.client_secret_file.read_text().strip() not in json.dumps(manager.status())
        finally:
            await manager.stop()
    run(test)


def test_token_file_is_reread_when_it_changes(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(oidc_provider.token())

    async def test() -> None:
        manager = IdentityManager({"bot": {"source": "token_file", "issuer": oidc_provider.issuer,
                                           "audience": oidc_provider.audience, "path": str(token_file)}},
                                  timing=FAST)
        await manager.start()
        try:
            first = manager.current("bot")
            assert first is not None and first.subject == oidc_provider.secret_client
            token_file.write_text("not a token")
            await until(lambda: manager.current("bot") is None, "the broken token file to be noticed")
            assert manager.status()[0]["state"] == "invalid"
            assert "malformed" in str(manager.status()[0]["last_error"])
            token_file.write_text(oidc_provider.token("db.read db.write"))
            await until(lambda: manager.current("bot") is not None, "the new token to be read")
            second = manager.current("bot")
            assert second is not None and second.token_id != first.token_id
            assert second.scopes == {"db.read", "db.write"}
        finally:
            await manager.stop()
    run(test)


def test_revocation_is_caught_by_introspection(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    token = oidc_provider.token()
    token_file = tmp_path / "agent.token"
    token_file.write_text(token)
    changes: list[IdentityChange] = []
    audit = MemorySink()

    async def test() -> None:
        manager = IdentityManager({"bot": {
            "source": "token_file", "issuer": oidc_provider.issuer, "audience": oidc_provider.audience,
            "path": str(token_file), "introspect": True, "client_id": oidc_provider.secret_client,
            "client_secret_file": str(oidc_provider.client_secret_file)}}, timing=FAST, audit=audit)
        manager.on_change(changes.append)
        await manager.start()
        try:
            assert manager.current("bot") is not None
            oidc_provider.revoke(token)
            await until(lambda: manager.current("bot") is None, "revocation to be noticed")
            assert manager.status()[0]["state"] == "revoked"
            assert manager.reason("bot").startswith("identity revoked")
        finally:
            await manager.stop()

    run(test)
    assert [(c.identity is not None, c.state) for c in changes] == [(True, "valid"), (False, "revoked")]
    denied = audit.events[-1]
    assert denied.kind == "identity" and denied.decision == "deny" and "revoked" in str(denied.reason)
    assert denied.identity is not None and denied.identity["subject"] == oidc_provider.secret_client
    assert denied.identity["jti"] and token not in json.dumps([e.to_dict() for e in audit.events])


def test_key_rotation_while_running_without_refetch_storm(oidc_provider: OidcProvider) -> None:
    async def test() -> None:
        validator = TokenValidator(oidc_provider.issuer, oidc_provider.audience)
        before = oidc_provider.token()
        assert (await validator.validate(before)).subject == oidc_provider.secret_client
        assert validator.jwks is not None
        validator.jwks.cache.last_attempt = -1e9  # as if the last fetch were long ago (cooldown over)
        new_kid = oidc_provider.rotate()
        after = oidc_provider.token()
        results = await asyncio.gather(*(validator.validate(after) for _ in range(25)))
        assert {identity.token_id for identity in results} == {results[0].token_id}
        assert validator.jwks.cache.lookup(new_kid, validator.clock()) is not None
        assert (await validator.validate(before)).subject == oidc_provider.secret_client
        with pytest.raises(InvalidToken) as caught:
            await validator.validate(after.rsplit(".", 1)[0] + ".AAAA")
        assert caught.value.reason == "bad_signature"

    run(test)
    assert oidc_provider.stats()["jwks"] == 2


def test_expiry_mid_session_denies_then_refresh_restores(oidc_provider: OidcProvider) -> None:
    oidc_provider.set_ttl(2)
    changes: list[IdentityChange] = []

    async def test() -> None:
        manager = IdentityManager({"dbbot": cc_agent(oidc_provider, leeway=0)}, timing=FAST)
        manager.on_change(changes.append)
        await manager.start()
        try:
            assert manager.current("dbbot") is not None
            oidc_provider.outage(token=True)
            await until(lambda: manager.current("dbbot") is None, "the identity to expire")
            assert manager.status()[0]["state"] == "expired"
            assert "temporarily_unavailable" in str(manager.status()[0]["last_error"])
            oidc_provider.outage(token=False)
            await until(lambda: manager.current("dbbot") is not None, "the daemon to refresh the token")
        finally:
            await manager.stop()

    run(test)
    assert [(c.identity is not None, c.state) for c in changes] == [(True, "valid"), (False, "expired"),
                                                                    (True, "valid")]


def test_device_login_lands_in_the_daemon(oidc_provider: OidcProvider) -> None:
    async def test() -> None:
        manager = IdentityManager({"helper": {"source": "login", "issuer": oidc_provider.issuer,
                                              "audience": oidc_provider.audience,
                                              "client_id": oidc_provider.device_client, "scopes": ["db.read"]}},
                                  timing=FAST)
        await manager.start()
        try:
            assert manager.current("helper") is None
            assert manager.status()[0]["state"] == "awaiting_login"
            login = await manager.login_device("helper")
            prompt = login.prompt()
            assert prompt["verification_uri"] == oidc_provider.issuer + "/v1/device"
            assert manager.status()[0]["login_pending"] is True
            oidc_provider.approve_device(str(prompt["user_code"]), "alice@example.com")
            identity = await asyncio.wait_for(login.wait(), WAIT)
            assert identity.subject == "alice@example.com" and identity.user_id == "00ualice"
            assert identity.groups == {"dba", "oncall"} and "db.read" in identity.scopes
            assert manager.current("helper") == identity
            row = manager.status()[0]
            assert row["subject"] == "alice@example.com" and row["groups"] == ["dba", "oncall"]
            assert row["login_pending"] is False
        finally:
            await manager.stop()
    run(test)


def test_device_login_is_refreshed_with_its_refresh_token(oidc_provider: OidcProvider) -> None:
    oidc_provider.set_ttl(2)

    async def test() -> None:
        manager = IdentityManager({"helper": {"source": "login", "issuer": oidc_provider.issuer,
                                              "audience": oidc_provider.audience,
                                              "client_id": oidc_provider.device_client}}, timing=FAST)
        await manager.start()
        try:
            login = await manager.login_device("helper")
            oidc_provider.approve_device(str(login.prompt()["user_code"]), "bob@example.com")
            first = await asyncio.wait_for(login.wait(), WAIT)
            await until(lambda: (manager.current("helper") or first).token_id != first.token_id,
                        "the refresh token to be used")
            assert manager.current("helper").subject == "bob@example.com"  # type: ignore[union-attr]
        finally:
            await manager.stop()
    run(test)
    assert oidc_provider.stats()["token"] >= 2


def test_device_login_is_refused_for_other_sources(oidc_provider: OidcProvider) -> None:
    async def test() -> None:
        manager = IdentityManager({"dbbot": cc_agent(oidc_provider)}, timing=FAST)
        with pytest.raises(ValueError, match="not login"):
            await manager.login_device("dbbot")
    run(test)
