"""Why an agent is refused, as the identity manager tells it: status() rows, one warning per
new reason, audit records, the daemon's audit of a refused connect() and the status table's
rendering. Tokens are forged here and keys served by a loopback HTTP server."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from test_approvals_support import ListSink
from test_identity_validator import AUDIENCE, OTHER_KEY, KeyServer, claims, keys, sign  # noqa: F401 (keys: fixture)

from interceptor.cli import status
from interceptor.control import ControlMethod
from interceptor.daemon import _deny_reason
from interceptor.identity.display import duration, expiry, identity_columns, relative
from interceptor.identity.manager import IdentityManager, ManagerTiming
from interceptor.redirect import DENY_REASONS, DenyEvent

FAST = ManagerTiming(retry_min=0.05, retry_max=0.1, poll_interval=0.05)


def wrong_audience(server: KeyServer) -> str:
    return sign(claims(server.issuer, aud="api://other"))


def expired(server: KeyServer) -> str:
    now = int(time.time())
    return sign(claims(server.issuer, iat=now - 600, exp=now - 60))


def not_yet_valid(server: KeyServer) -> str:
    """nbf taken when the case runs, not at import: a long suite may reach it 600 s later."""
    return sign(claims(server.issuer, nbf=int(time.time()) + 600))


def bad_signature(server: KeyServer) -> str:
    return sign(claims(server.issuer), OTHER_KEY, "rsa-1")


def forged(**overrides: Any) -> Callable[[KeyServer], str]:
    """A token with `overrides` of the valid claims (or, under "header", of its header)."""
    header = overrides.pop("header", {})
    return lambda server: sign(claims(server.issuer, **overrides), **header)


def issuer_down(server: KeyServer) -> str:
    server.down = True
    return sign(claims(server.issuer))


# (make the token, the state, what status, log and audit must say)
CASES: dict[str, tuple[Callable[[KeyServer], str], str, str]] = {
    "wrong_audience": (wrong_audience, "invalid", "wrong_audience: aud is api://other, expected api://interceptor"),
    "expired": (expired, "expired", "expired: token expired at "),
    "bad_signature": (bad_signature, "invalid", "bad_signature: signature verification failed"),
    "issuer_down": (issuer_down, "error", "keys_unavailable: cannot get the issuer's keys"),
    "wrong_issuer": (lambda server: sign(claims("https://evil.example.com/oauth2/default")), "invalid",
                     "wrong_issuer: iss is https://evil.example.com/oauth2/default, expected http://127.0.0.1:"),
    "not_yet_valid": (not_yet_valid, "invalid", "not_yet_valid: token is not valid yet"),
    "unknown_kid": (forged(header={"kid": "other-issuer-key"}), "invalid",
                    "unknown_kid: key id 'other-issuer-key' is not published by"),
    "wrong_type": (forged(header={"typ": "id_token+jwt"}), "invalid",
                   "wrong_type: token type 'id_token+jwt' is not an access token"),
    "missing_claim": (forged(sub=None), "invalid", "missing_claim: token lacks the required 'sub' claim"),
    "malformed": (lambda server: "garbage!", "invalid", "malformed: token is not a JWT"),
}


def manager_for(server: KeyServer, token_file: Path, audit: ListSink) -> IdentityManager:
    return IdentityManager({"bot": {"source": "token_file", "issuer": server.issuer, "audience": AUDIENCE,
                                    "path": str(token_file)}}, audit=audit, timing=FAST)


async def run_for(manager: IdentityManager, seconds: float) -> list[dict[str, object]]:
    await manager.start()
    try:
        await asyncio.sleep(seconds)  # several polls and retries: repeats must not be logged again
        return manager.status()
    finally:
        await manager.stop()


def test_the_next_check_is_never_before_the_last_one_even_while_a_step_runs(keys: KeyServer, tmp_path: Path) -> None:
    """While a step is under way its start is `last_checked`; the step the loop slept until
    (`next_check`) is that one, not a time before it (status read mid-step said so)."""
    token_file = tmp_path / "agent.token"
    token_file.write_text(CASES["wrong_audience"][0](keys))
    manager = manager_for(keys, token_file, ListSink())

    async def sample() -> list[tuple[object, object]]:
        seen: list[tuple[object, object]] = []
        task = asyncio.ensure_future(run_for(manager, 0.5))
        while not task.done():
            (row,) = manager.status()
            seen.append((row["last_checked"], row["next_check"]))
            await asyncio.sleep(0)
        await task
        return seen

    seen = [(last, after) for last, after in asyncio.run(sample()) if last is not None]
    assert seen and all(isinstance(after, float) and after >= last for last, after in seen), seen  # type: ignore[operator]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "interceptor.identity.manager"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_identity_names_its_reason_in_status_log_and_audit(
        keys: KeyServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    make, state, reason = CASES[case]
    token_file = tmp_path / "agent.token"
    token = make(keys)
    token_file.write_text(token)
    audit = ListSink()
    manager = manager_for(keys, token_file, audit)
    with caplog.at_level(logging.WARNING, logger="interceptor.identity.manager"):
        (row,) = asyncio.run(run_for(manager, 0.6))
    assert row["state"] == state and row["subject"] is None
    assert f"identity {state}: {reason}" in str(row["reason"]), row
    assert isinstance(row["last_checked"], float) and isinstance(row["next_check"], float)
    assert row["next_check"] >= row["last_checked"] >= time.time() - 5
    logged = warnings(caplog)
    assert len(logged) == 1 and reason in logged[0] and logged[0].startswith("identity for agent bot: "), logged
    (event,) = audit.events
    assert event.kind == "identity" and event.decision == "deny"
    assert event.reason is not None and event.reason.startswith("agent bot is refused: ") and reason in event.reason
    for text in (*logged, str(row), str(event.to_dict())):
        assert token not in text and token.split(".")[-1] not in text


def test_access_lost_then_regained_is_logged_and_audited_once_each(
        keys: KeyServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(sign(claims(keys.issuer)))
    audit = ListSink()
    manager = manager_for(keys, token_file, audit)

    async def scenario() -> list[list[dict[str, object]]]:
        await manager.start()
        try:
            rows = [manager.status()]
            token_file.write_text(wrong_audience(keys))
            await asyncio.sleep(0.4)
            rows.append(manager.status())
            token_file.write_text(sign(claims(keys.issuer, sub="svc-agent-2")))
            await asyncio.sleep(0.4)
            return [*rows, manager.status()]
        finally:
            await manager.stop()

    with caplog.at_level(logging.INFO, logger="interceptor.identity.manager"):
        valid, refused, again = asyncio.run(scenario())
    assert valid[0]["state"] == "valid" and valid[0]["reason"] is None
    assert refused[0]["state"] == "invalid" and "aud is api://other" in str(refused[0]["reason"])
    assert again[0]["state"] == "valid" and again[0]["reason"] is None
    assert [e.reason for e in audit.events] == [
        "agent bot gains access: identity valid (subject svc-agent)",
        "agent bot loses access: identity invalid: wrong_audience: aud is api://other, expected api://interceptor",
        "agent bot gains access: identity valid (subject svc-agent-2)"]
    assert len(warnings(caplog)) == 1


def test_a_denied_connect_names_the_identity_reason_only_when_identity_is_why() -> None:
    def runtime(required: bool, identity: object) -> Any:
        return SimpleNamespace(identity_required=lambda agent: required, identity=lambda agent: identity,
                               identities=SimpleNamespace(reason=lambda agent: "identity invalid: wrong_audience: "
                                                          "aud is api://other, expected api://interceptor"))

    event = DenyEvent(ipaddress.ip_address("10.0.0.5"), 5432, 42, 1000, 1, 0, DENY_REASONS[1], "tcp")
    refused = _deny_reason(runtime(True, None), "bot", "db", event)
    assert refused == ("identity", "agent has no valid identity: identity invalid: wrong_audience: "
                                   "aud is api://other, expected api://interceptor")
    assert _deny_reason(runtime(True, object()), "bot", "db", event) == ("kernel", DENY_REASONS[1])
    assert _deny_reason(runtime(False, None), "bot", "db", event) == ("kernel", DENY_REASONS[1])
    assert _deny_reason(runtime(True, None), "bot", None, event) == ("kernel", DENY_REASONS[1])


def test_status_table_cells_show_state_reason_and_local_expiry() -> None:
    now = 1_800_000_000.0
    assert [duration(s) for s in (5, 59.6, 2460, 7500, 90000)] == ["5s", "1m", "41m", "2h05m", "1d01h"]
    assert expiry(now + 2460, now).endswith("(in 41m)")
    assert expiry(now - 180, now).endswith("(expired 3m ago)")
    assert expiry(now, now).startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
    assert expiry(None, now) == "-" and relative(None, now) == "-"
    cells = identity_columns({"state": "invalid", "reason": "identity invalid: wrong_audience: aud is api://other, "
                              "expected api://interceptor", "expires_at": None, "last_checked": now - 12,
                              "next_check": now + 18, "groups": []}, now)
    assert cells == {"identity": "invalid", "subject": "-", "groups": "-", "expires": "-",
                     "checked": "12s ago, next in 18s",
                     "reason": "identity invalid: wrong_audience: aud is api://other, expected api://interceptor"}
    valid = identity_columns({"state": "valid", "subject": "svc", "groups": ["a", "b"], "expires_at": now + 60,
                              "reason": None, "last_checked": None, "next_check": None}, now)
    assert valid["groups"] == "a,b" and valid["expires"].endswith("(in 1m)") and valid["reason"] == "-"
    assert identity_columns(None, now)["identity"] == "-"


class StatusDaemon:
    """A control client answering `status` as the daemon would for one refused and one valid agent."""

    def __init__(self, now: float) -> None:
        refused = {"state": "invalid", "source": "token_file", "last_error": "wrong_audience: aud is api://other, "
                   "expected api://interceptor", "reason": "identity invalid: wrong_audience: aud is api://other, "
                   "expected api://interceptor", "expires_at": None, "last_checked": now - 2, "next_check": now + 1}
        valid = {"subject": "svc", "groups": ["db-readers"], "state": "valid", "source": "client_credentials",
                 "reason": None, "expires_at": now + 2460, "last_checked": now - 30, "next_check": now + 1800}
        self.answer = {"version": "1", "pid": 1, "uptime_s": 3.0, "redirect": "iptables", "sessions": 0,
                       "policy": {"version": "v", "path": "/p.yaml"}, "resources": [],
                       "compiled": {"compiled": ["interceptor.enforcer.driver"],
                                    "pure_python": ["interceptor.audit.chain"]},
                       "agents": [{"name": "bot", "unprotected": "deny", "identity": refused},
                                  {"name": "reader", "unprotected": "deny", "identity": valid}],
                       "learn": {"learning": [{"agent": "bot", "session": "aaaa", "started": 0.0, "until": None,
                                               "resources": None}],
                                 "ended": [{"agent": "reader", "session": "bbbb", "started": 0.0, "until": 60.0,
                                            "resources": ["db"], "ended": 60.0, "why": "expired"}]},
                       "shadow": [{"agent": "reader", "session": "cccc", "started": 0.0, "path": "/c.yaml",
                                   "version": "c1"}]}

    def call(self, method: ControlMethod, **params: object) -> dict[str, object]:
        assert method is ControlMethod.STATUS
        return self.answer


def test_status_command_shows_state_reason_and_expiry_as_local_time() -> None:
    now = time.time()
    result = CliRunner().invoke(status, [], obj={"control": StatusDaemon(now)})
    assert result.exit_code == 0, result.output
    header, bot, reader = result.output.split("agents:\n")[1].split("\n")[:3]
    assert header.split() == ["NAME", "UNPROTECTED", "IDENTITY", "SUBJECT", "GROUPS", "EXPIRES", "CHECKED", "REASON"]
    assert bot.split()[:3] == ["bot", "deny", "invalid"]
    assert bot.endswith("identity invalid: wrong_audience: aud is api://other, expected api://interceptor")
    assert "2s ago, next in 1s" in bot
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(now + 2460)) in reader and "(in 41m)" in reader
    assert str(now + 2460) not in result.output and "-" == reader.split()[-1]
    assert "hot modules compiled 1/2  (pure Python: interceptor.audit.chain)" in result.output


def test_status_command_shows_the_learn_and_shadow_runs() -> None:
    result = CliRunner().invoke(status, [], obj={"control": StatusDaemon(time.time())})
    assert result.exit_code == 0, result.output
    learning = result.output.split("learning:\n")[1].split("\n")
    assert learning[1].split() == ["bot", "aaaa", "all", "learning", "until", "stopped"]
    assert learning[2].split() == ["reader", "bbbb", "db", "ended", "(expired)", "1970-01-01T00:01:00Z"]
    assert result.output.split("shadow runs:\n")[1].split("\n")[1].split() == ["reader", "cccc", "c1", "/c.yaml"]

