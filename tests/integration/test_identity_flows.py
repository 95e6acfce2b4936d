"""Every agent flow carries a validated Okta identity: the real daemon, the local Okta-like
OpenID provider, agents started with `interceptor exec`, rules written per Okta group."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import INTERCEPTOR, REFUSED, Daemon, detach_everything
from oidc_fixture import running_oidc_provider


OTHER_AUDIENCE = "api://other"  # what the `misaimed` agent's identity config expects; the issuer's tokens differ

HOLDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.recv(64)
print("open", flush=True)
s.settimeout(30)
try:
    while s.recv(64):
        pass
except OSError:
    pass
print("closed", flush=True)
"""


def policy_text(op, remote) -> str:
    return f"""
version: 1
agents:
  reader:
    identity: {op.identity("service")}
  outsider:
    identity: {op.identity("secret")}
  supervised:
    identity: {op.identity("login")}
  misaimed:
    identity: {op.identity("secret").replace(op.audience, OTHER_AUDIENCE)}
resources:
  echo:
    protocol: tcp
    addresses: ["{remote.ip4}:{remote.port}"]
rules:
  - name: db-readers-reach-echo
    effect: allow
    resources: [echo]
    subjects: {{groups: [db-readers]}}
    tcp: true
  - name: dbas-reach-echo
    effect: allow
    resources: [echo]
    subjects: {{groups: [dba]}}
    tcp: true
"""


@contextlib.contextmanager
def identity_daemon(remote, workdir: Path, redirect: str) -> Iterator[tuple[Daemon, Any]]:
    """The daemon (kernel redirect `redirect`) on policy_text, with the OpenID provider, once
    the `reader` agent holds its identity; stopped, and every hook detached, after."""
    with running_oidc_provider(workdir / "oidc", access_token_ttl=300) as op:
        policy = workdir / "policy.yaml"
        policy.write_text(policy_text(op, remote))
        daemon = Daemon(workdir, policy, redirect=redirect)
        daemon.start()
        try:
            wait_identity(daemon, "reader", valid=True)
            yield daemon, op
        finally:
            daemon.stop()
            detach_everything()


@pytest.fixture(scope="module")
def setup(remote, tmp_path_factory):
    with identity_daemon(remote, tmp_path_factory.mktemp("identity-daemon"), "bpf") as running:
        yield running


def identity_of(daemon: Daemon, agent: str) -> dict:
    status = json.loads(daemon.cli("status", "--json").stdout)
    return next(a["identity"] for a in status["agents"] if a["name"] == agent) or {}


def wait_identity(daemon: Daemon, agent: str, valid: bool, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        identity = identity_of(daemon, agent)
        if bool(identity.get("subject")) == valid and (identity.get("state") == "valid") == valid:
            return identity
        time.sleep(0.2)
    raise AssertionError(f"{agent} identity did not become {'valid' if valid else 'invalid'}: {identity}")


def warnings_about(daemon: Daemon, agent: str) -> list[str]:
    """The daemon's warning-level log messages about `agent`'s identity."""
    entries = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")]
    return [e["msg"] for e in entries if e["level"] == "warning" and f"identity for agent {agent}:" in e["msg"]]


def refused_connect_event(daemon: Daemon, agent: str, remote) -> dict:
    """Connect as `agent`, expect the kernel's refusal (iptables: accepted on the refuse
    port, then reset), return its audit record."""
    refused = daemon.agent(agent, remote.ip4, str(remote.port))
    assert refused["error"] == REFUSED[daemon.redirect], refused
    return daemon.wait_for_event(lambda e: e.get("kind") == "connect_denied" and e["process"]["pid"] == refused["pid"])


def test_flows_carry_the_agents_okta_identity(setup, remote):
    daemon, op = setup
    result = daemon.agent("reader", remote.ip4, str(remote.port))
    assert result["ok"], result
    event = daemon.wait_for_event(lambda e: e.get("kind") == "connection" and e["process"]["pid"] == result["pid"])
    assert event["identity"]["subject"] == op.service_client
    assert event["identity"]["client_id"] == op.service_client
    assert set(event["identity"]["groups"]) == {"agents", "db-readers"}
    assert event["identity"]["jti"]


def test_rules_per_group_refuse_an_identity_without_the_group(setup, remote):
    daemon, _ = setup
    wait_identity(daemon, "outsider", valid=True)
    result = daemon.agent("outsider", remote.ip4, str(remote.port))
    assert result["error"] == "ECONNREFUSED", result


def test_device_login_signs_a_person_in_for_an_agent(setup, remote):
    daemon, op = setup
    before = daemon.agent("supervised", remote.ip4, str(remote.port))
    assert before["error"] == "ECONNREFUSED", "no identity yet: refused"
    login = subprocess.Popen([INTERCEPTOR, "--config", str(daemon.settings), "login", "--agent", "supervised",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prompt = json.loads(login.stdout.readline())
    assert prompt["user_code"] and prompt["verification_uri"].startswith(op.base)
    op.approve_device(prompt["user_code"], account="alice@example.com")
    assert login.wait(timeout=30) == 0, login.stderr.read()
    identity = wait_identity(daemon, "supervised", valid=True)
    assert "dba" in identity["groups"]
    deadline = time.monotonic() + 10
    while not (after := daemon.agent("supervised", remote.ip4, str(remote.port)))["ok"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after["ok"], after
    event = daemon.wait_for_event(lambda e: e.get("kind") == "connection" and e["process"]["pid"] == after["pid"])
    assert event["identity"]["subject"] == identity["subject"]


def test_status_shows_identity_never_the_token(setup):
    daemon, op = setup
    identity = identity_of(daemon, "reader")
    assert identity["subject"] == op.service_client
    assert "db-readers" in identity["groups"]
    assert identity["expires_at"] > time.time()
    token = op.token()
    header = token.split(".")[0]
    for text in (daemon.cli("status").stdout, daemon.cli("status", "--json").stdout,
                 daemon.audit_path.read_text(), daemon.log.read_text()):
        assert "eyJ" not in text and header not in text, "a token leaked into status, audit or logs"


def explains_refusal(daemon: Daemon, op, remote) -> None:
    """The `misaimed` agent (its config expects another audience than the issuer's tokens
    carry) is refused, and status (--json and the table), one warning, the identity audit
    record and the refused connect's audit say why."""
    expected = f"wrong_audience: aud is {op.audience}, expected {OTHER_AUDIENCE}"
    deadline = time.monotonic() + 30
    while (identity := identity_of(daemon, "misaimed")).get("state") != "invalid" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert identity["state"] == "invalid" and identity.get("subject") is None, identity
    assert identity["reason"] == f"identity invalid: {expected}"
    assert identity["last_checked"] <= time.time() and identity["next_check"] >= identity["last_checked"]
    row = next(line for line in daemon.cli("status").stdout.splitlines() if line.startswith("misaimed "))
    assert row.split()[2] == "invalid" and row.endswith(f"identity invalid: {expected}"), row
    logged = warnings_about(daemon, "misaimed")
    assert len(logged) == 1 and expected in logged[0], logged
    audited = daemon.wait_for_event(lambda e: e.get("kind") == "identity" and e.get("agent") == "misaimed")
    assert audited["decision"] == "deny" and audited["reason"] == f"agent misaimed is refused: identity invalid: {expected}"
    event = refused_connect_event(daemon, "misaimed", remote)
    assert event["rule"] == "identity" and event["reason"] == f"agent has no valid identity: identity invalid: {expected}"
    assert event["agent"] == "misaimed" and event["operation"]["dst"] == f"{remote.ip4}:{remote.port}", event


def test_a_refused_identity_says_why_in_status_log_and_audit(setup, remote):
    daemon, op = setup
    explains_refusal(daemon, op, remote)


def test_expired_identity_loses_access_and_regains_it_on_refresh(setup, remote):
    daemon, op = setup
    op.set_ttl(4)
    changed = daemon.policy.parent / "short-lived.yaml"  # a changed identity config: a new manager
    changed.write_text(daemon.policy.read_text().replace("scopes: [db.read]}", "scopes: [db.read], leeway: 1, "
                                                         "on_invalid: close}", 1))
    daemon.call("policy.reload", path=str(changed))  # takes a 4 s token...
    wait_identity(daemon, "reader", valid=True)
    holder = subprocess.Popen([INTERCEPTOR, "exec", "--agent", "reader", "--", sys.executable, "-c", HOLDER,
                               remote.ip4, str(remote.port)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    op.outage(token=True)  # ...and cannot refresh it: it runs out
    try:
        wait_identity(daemon, "reader", valid=False, timeout=20)
        assert holder.stdout.readline().strip() == "closed", "on_invalid: close must cut open flows"
        holder.wait(timeout=5)
        reason = identity_of(daemon, "reader")["reason"]
        assert reason.startswith("identity expired: token expired and ") and "temporarily_unavailable" in reason, reason
        assert any("cannot renew its token" in message for message in warnings_about(daemon, "reader"))
        assert any(reason in message for message in warnings_about(daemon, "reader"))
        event = refused_connect_event(daemon, "reader", remote)
        assert event["rule"] == "identity" and event["reason"] == f"agent has no valid identity: {reason}"
        lost = daemon.wait_for_event(lambda e: e.get("kind") == "identity" and e.get("decision") == "deny"
                                     and e.get("agent") == "reader")
        assert lost["reason"] == f"agent reader loses access: {reason}"
    finally:
        op.outage(token=False)
        op.set_ttl(300)
    wait_identity(daemon, "reader", valid=True, timeout=30)
    deadline = time.monotonic() + 10
    while not (again := daemon.agent("reader", remote.ip4, str(remote.port)))["ok"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert again["ok"], again
