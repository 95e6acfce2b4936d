"""`interceptor doctor --agent`: each refusal the validator tests cover is explained with the
claim, what it says, and a fix; the token itself is never in the output."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_identity_validator import AUDIENCE, OTHER_KEY, KeyServer, claims, sign

from interceptor.cli import main
from interceptor.doctor import Check
from interceptor.doctor_agent import explain_agent, identity_verdict
from interceptor.policy import load_policy_text
from interceptor.policy.model import Policy

POLICY = """
version: 1
resources:
  db: {{protocol: postgres, addresses: ["127.0.0.1:5432"]}}
agents:
  bot:
    identity: {{source: token_file, issuer: "{issuer}", audience: "{audience}", path: "{path}"}}
  helper:
    identity: {{source: login, issuer: "{issuer}", audience: "{audience}", client_id: cli}}
  plain: {{}}
rules:
  - name: dba-writes
    effect: allow
    agents: [bot]
    resources: [db]
    subjects: {{groups: [dba]}}
    tcp: true
"""


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.close()


def policy_for(issuer: str, token_file: Path, audience: str = AUDIENCE) -> Policy:
    text = POLICY.format(issuer=issuer, audience=audience, path=token_file)
    return load_policy_text(text, "policy.yaml")


def explain(keys: KeyServer, tmp_path: Path, token: str, agent: str = "bot") -> list[Check]:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    checks = asyncio.run(explain_agent(policy_for(keys.issuer, token_file), agent))
    assert all(token not in f"{c.detail} {c.fix}" for c in checks)
    return checks


def failed(checks: list[Check]) -> Check:
    bad = [c for c in checks if not c.ok]
    assert len(bad) == 1, checks
    assert not identity_verdict("bot", checks)[0]
    return bad[0]


def test_valid_token_passes_every_step_but_the_group_rule(keys: KeyServer, tmp_path: Path) -> None:
    checks = explain(keys, tmp_path, sign(claims(keys.issuer)))
    assert [c.name for c in checks if c.ok] == ["identity configuration", "discovery", "JWKS", "token", "claim iss",
                                                "claim aud", "claim exp/nbf", "signature", "subject"]
    bad = failed(checks)
    assert bad.name == "groups for rule dba-writes"
    assert bad.detail == "rule dba-writes (allow) needs one of dba; claim groups holds agents, db-readers"
    assert "add svc-agent to dba at the authorization server" in bad.fix


def test_token_in_the_rule_group_passes(keys: KeyServer, tmp_path: Path) -> None:
    checks = explain(keys, tmp_path, sign(claims(keys.issuer, groups=["dba"])))
    assert all(c.ok for c in checks)
    assert identity_verdict("bot", checks) == (True, "agent bot: every identity check passed")
    assert checks[6].detail.startswith("valid now; expires 20")
    assert checks[6].detail.endswith(("(in 4m)", "(in 5m)"))


def test_wrong_audience(keys: KeyServer, tmp_path: Path) -> None:
    bad = failed(explain(keys, tmp_path, sign(claims(keys.issuer, aud="api://other"))))
    assert bad.name == "claim aud"
    assert bad.detail == "wrong_audience: aud is api://other, expected api://interceptor"
    assert bad.fix == ("set the authorization server's audience to api://interceptor, or identity.audience in the "
                       "policy to api://other")


def test_expired(keys: KeyServer, tmp_path: Path) -> None:
    now = int(time.time())
    bad = failed(explain(keys, tmp_path, sign(claims(keys.issuer, iat=now - 600, exp=now - 120))))
    assert bad.name == "claim exp"
    assert bad.detail.startswith("expired: ") and "; exp is " in bad.detail
    assert "(2m ago) (leeway 30 s)" in bad.detail
    assert bad.fix == f"write a fresh token to {tmp_path / 'token'}"


def test_bad_signature(keys: KeyServer, tmp_path: Path) -> None:
    bad = failed(explain(keys, tmp_path, sign(claims(keys.issuer), OTHER_KEY, "rsa-1")))
    assert bad.name == "signature"
    assert bad.detail.startswith("bad_signature: ")
    assert bad.detail.endswith(f"; alg RS256, kid rsa-1, keys from {keys.issuer}/v1/keys")
    assert bad.fix.startswith(f"use tokens signed by {keys.issuer} itself")


def test_wrong_issuer(keys: KeyServer, tmp_path: Path) -> None:
    other = "https://evil.example.com/oauth2/default"
    bad = failed(explain(keys, tmp_path, sign(claims(other))))
    assert bad.name == "claim iss"
    assert bad.detail == f"wrong_issuer: iss is {other}, expected {keys.issuer}"
    assert bad.fix == f"get the agent's tokens from {keys.issuer}, or set identity.issuer in the policy to {other}"


def test_issuer_unreachable(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        issuer = f"http://127.0.0.1:{unused.getsockname()[1]}/oauth2/default"
    token_file = tmp_path / "token"
    checks = asyncio.run(explain_agent(policy_for(issuer, token_file), "bot"))
    assert [c.name for c in checks] == ["identity configuration", "discovery"]
    bad = failed(checks)
    assert f"GET {issuer}/.well-known/openid-configuration" in bad.detail
    assert bad.fix.startswith(f"make {issuer}/.well-known/openid-configuration reachable from this host")


def test_missing_token_file(keys: KeyServer, tmp_path: Path) -> None:
    checks = asyncio.run(explain_agent(policy_for(keys.issuer, tmp_path / "absent"), "bot"))
    bad = failed(checks)
    assert (bad.name, bad.detail) == ("token", f"token file {tmp_path / 'absent'}: FileNotFoundError")


def test_login_source_needs_interceptor_login(keys: KeyServer, tmp_path: Path) -> None:
    bad = failed(explain(keys, tmp_path, "unused", agent="helper"))
    assert bad.name == "token"
    assert bad.fix.startswith("run `interceptor login --agent helper`")


def test_agent_without_identity_and_unknown_agent(keys: KeyServer, tmp_path: Path) -> None:
    plain = explain(keys, tmp_path, "unused", agent="plain")
    assert [(c.ok, c.detail) for c in plain] == [(True, "source none: the agent needs no identity")]
    unknown = failed(explain(keys, tmp_path, "unused", agent="ghost"))
    assert unknown.fix == "use one of bot, helper, plain, or add ghost under agents:"


def test_cli_exit_status_and_json_never_show_the_token(keys: KeyServer, tmp_path: Path) -> None:
    token = sign(claims(keys.issuer, aud="api://other"))
    (tmp_path / "token").write_text(token)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(issuer=keys.issuer, audience=AUDIENCE, path=tmp_path / "token"))
    runner = CliRunner()
    human = runner.invoke(main, ["doctor", "--agent", "bot", "--policy", str(policy)])
    assert human.exit_code == 1
    assert "FAIL  claim aud: wrong_audience" in human.output
    assert "fix: set the authorization server's audience to api://interceptor" in human.output
    as_json = runner.invoke(main, ["doctor", "--agent", "bot", "--policy", str(policy), "--json"])
    doc: dict[str, Any] = json.loads(as_json.output)
    assert as_json.exit_code == 1 and doc["ok"] is False
    assert token not in human.output + as_json.output
