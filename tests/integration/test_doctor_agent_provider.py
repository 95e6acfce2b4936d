"""`interceptor doctor --agent` against the real local OpenID provider (tests/oidc): a service
agent's client credentials pass every step; a policy expecting another audience, a token
lacking a scope the agent asks for, and a provider whose keys are down each fail with
the step, what was found and the fix. The daemon is not started."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result
from oidc_fixture import OidcProvider
from oidc_fixture import oidc_provider_fixture  # noqa: F401 (registers the fixture)

from interceptor.cli import main

POLICY = """version: 1
resources: {{db: {{protocol: postgres, addresses: ["127.0.0.1:5432"]}}}}
agents: {{dbbot: {{identity: {identity}}}}}
rules:
  - {{name: agents-read, effect: allow, agents: [dbbot], resources: [db], subjects: {{groups: [agents]}}, tcp: true}}
"""


def doctor(op: OidcProvider, tmp_path: Path, **changes: str) -> tuple[Result, dict[str, object]]:
    """Run `interceptor doctor --agent dbbot` (human, then --json) on a policy whose service
    agent's identity block has `changes` replaced textually."""
    identity = op.identity("service")
    for old, new in changes.items():
        identity = identity.replace(old, new)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(identity=identity))
    args = ["doctor", "--agent", "dbbot", "--policy", str(policy)]
    runner = CliRunner()
    human = runner.invoke(main, args)
    as_json = runner.invoke(main, [*args, "--json"])
    assert human.exit_code == as_json.exit_code
    assert "eyJ" not in human.output + as_json.output  # no JWT (header, payload) is ever printed
    return human, json.loads(as_json.output)


def test_service_agent_passes_every_step(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    human, doc = doctor(oidc_provider, tmp_path)
    assert human.exit_code == 0, human.output
    assert doc["ok"] is True
    lines = human.output.splitlines()
    assert lines[0].startswith(f"ok    identity configuration: source client_credentials, issuer {oidc_provider.issuer}")
    assert f"ok    token: client credentials for {oidc_provider.service_client}" in human.output
    assert f"ok    claim aud: aud includes {oidc_provider.audience}" in human.output
    assert "ok    claim scp: holds db.read" in human.output
    assert "ok    groups for rule agents-read: groups holds one of agents" in human.output
    assert lines[-1] == "agent dbbot: every identity check passed"


def test_wrong_audience_names_both_and_the_fix(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    human, doc = doctor(oidc_provider, tmp_path, **{f"audience: '{oidc_provider.audience}'": "audience: 'api://other'"})
    assert human.exit_code == 1 and doc["ok"] is False
    assert f"FAIL  claim aud: wrong_audience: aud is {oidc_provider.audience}, expected api://other" in human.output
    assert (f"fix: set the authorization server's audience to api://other, or identity.audience in the policy to "
            f"{oidc_provider.audience}") in human.output


def test_scope_left_out_of_the_token_is_named(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    human, _ = doctor(oidc_provider, tmp_path, **{"scopes: [db.read]": "scopes: [db.read, admin.everything]"})
    assert human.exit_code == 1
    assert "FAIL  claim scp: lacks admin.everything (holds db.read)" in human.output
    assert (f"fix: grant admin.everything to client {oidc_provider.service_client} at the authorization server, "
            "or remove them from identity.scopes") in human.output


def test_keys_down_fails_the_jwks_step(oidc_provider: OidcProvider, tmp_path: Path) -> None:
    oidc_provider.outage(keys=True)
    human, _ = doctor(oidc_provider, tmp_path)
    assert human.exit_code == 1
    assert "FAIL  JWKS: jwks: GET " in human.output and "answered HTTP 503" in human.output
