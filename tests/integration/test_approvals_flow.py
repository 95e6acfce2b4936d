"""Just-in-time approval end to end: a held connection, people who may or may not approve
it (Okta identities signed in with the CLI's device flow, or local root as break-glass),
denial and expiry. Real daemon, real OpenID provider, agents started with `interceptor exec`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from daemon import AGENT_CLIENT, INTERCEPTOR, Daemon, detach_everything
from oidc_fixture import running_oidc_provider


def policy_text(op, remote, timeout: int) -> str:
    return f"""
version: 1
agents:
  worker:
    identity: {op.identity("service")}
  alices-agent:
    identity: {op.identity("login")}
resources:
  echo:
    protocol: tcp
    addresses: ["{remote.ip4}:{remote.port}"]
rules:
  - name: echo-needs-a-dba
    effect: approve
    resources: [echo]
    tcp: true
    approval: {{groups: [dba], timeout_seconds: {timeout}}}
"""


@pytest.fixture(scope="module")
def env(remote, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("approvals")
    with running_oidc_provider(workdir / "oidc") as op:
        policy = workdir / "policy.yaml"
        policy.write_text(policy_text(op, remote, timeout=20))
        daemon = Daemon(workdir, policy, redirect="bpf",
                        approvals={"issuer": op.issuer, "audience": op.audience, "client_id": op.device_client})
        daemon.start()
        try:
            yield daemon, op, workdir
        finally:
            daemon.stop()
            detach_everything()


def start_agent(agent: str, remote) -> subprocess.Popen:
    return subprocess.Popen([INTERCEPTOR, "exec", "--agent", agent, "--", sys.executable, AGENT_CLIENT,
                             remote.ip4, str(remote.port)], stdout=subprocess.PIPE, text=True)


def sign_in(daemon: Daemon, op, home, account: str) -> dict:
    """`interceptor login` (no --agent) as `account`; the token lands in this person's config dir."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(home))
    login = subprocess.Popen([INTERCEPTOR, "--config", str(daemon.settings), "login", "--json"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prompt = json.loads(login.stdout.readline())
    op.approve_device(prompt["user_code"], account=account)
    assert login.wait(timeout=30) == 0, login.stderr.read()
    assert (home / "interceptor" / "approver-token").stat().st_mode & 0o077 == 0
    return env


def decide(daemon: Daemon, env: dict | None, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INTERCEPTOR, "--config", str(daemon.settings), "approvals", *args],
                          capture_output=True, text=True, env=env or dict(os.environ, XDG_CONFIG_HOME="/nonexistent"))


def test_root_approves_as_break_glass_and_the_held_connection_proceeds(env, remote):
    daemon, _, _ = env
    agent = start_agent("worker", remote)
    request = daemon.pending_request("worker")
    time.sleep(0.5)
    assert agent.poll() is None, "the agent waits while its connection is held"
    result = decide(daemon, None, "approve", request["request_id"])
    assert result.returncode == 0, result.stderr
    report = json.loads(agent.communicate(timeout=20)[0])
    assert report["ok"] and report["echo"] == "ping", report
    closed = daemon.wait_for_event(lambda e: e.get("kind") == "approval" and
                                   (e.get("outcome") or {}).get("request_id") == request["request_id"] and
                                   (e.get("outcome") or {}).get("state") == "approved")
    assert "root" in json.dumps(closed)


def test_okta_approvers_need_the_group_and_cannot_approve_themselves(env, remote):
    daemon, op, workdir = env
    bob = sign_in(daemon, op, workdir / "bob", "bob@example.com")  # groups: developers
    alice = sign_in(daemon, op, workdir / "alice", "alice@example.com")  # groups: dba, oncall

    agent = start_agent("worker", remote)
    request = daemon.pending_request("worker")
    refused = decide(daemon, bob, "approve", request["request_id"])
    assert refused.returncode != 0 and "group" in refused.stderr, refused.stderr
    approved = decide(daemon, alice, "approve", request["request_id"])
    assert approved.returncode == 0, approved.stderr
    assert json.loads(agent.communicate(timeout=20)[0])["ok"]

    # alice supervises an agent of her own: its request carries her identity, so she may not approve it
    login = subprocess.Popen([INTERCEPTOR, "--config", str(daemon.settings), "login", "--agent", "alices-agent",
                              "--json"], stdout=subprocess.PIPE, text=True)
    op.approve_device(json.loads(login.stdout.readline())["user_code"], account="alice@example.com")
    assert login.wait(timeout=30) == 0
    time.sleep(1)  # the kernel plan follows the new identity
    own = start_agent("alices-agent", remote)
    mine = daemon.pending_request("alices-agent")
    selfish = decide(daemon, alice, "approve", mine["request_id"])
    assert selfish.returncode != 0 and "own" in selfish.stderr.lower(), selfish.stderr
    denied = decide(daemon, None, "deny", mine["request_id"], "--reason", "not today")
    assert denied.returncode == 0, denied.stderr
    report = json.loads(own.communicate(timeout=20)[0])
    assert not report["ok"], report


def test_unanswered_requests_expire_and_the_connection_is_refused(env, remote, tmp_path):
    daemon, op, _ = env
    short = tmp_path / "short.yaml"
    short.write_text(policy_text(op, remote, timeout=2))
    daemon.call("policy.reload", path=str(short))
    try:
        started = time.monotonic()
        agent = start_agent("worker", remote)
        report = json.loads(agent.communicate(timeout=30)[0])
        assert not report["ok"] and time.monotonic() - started >= 2, report
        daemon.wait_for_event(lambda e: e.get("kind") == "approval" and (e.get("outcome") or {}).get("state") == "expired")
    finally:
        daemon.call("policy.reload", path=str(daemon.policy))
