"""A host switched between redirect modes: the hooks a daemon of one mode leaves (on purpose,
to keep agents fail-closed) must not refuse agents under a daemon of the other mode. The
starting daemon removes them once its own are in place, and says so in its log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import Daemon, detach_everything
from interceptor.redirect.leftovers import find_leftovers
from netns import RemoteHost


def policy_text(remote: RemoteHost) -> str:
    return f"""
version: 1
agents:
  tcpagent: {{unprotected: deny}}
resources:
  echo:
    protocol: tcp
    addresses: ["{remote.ip4}:{remote.port}"]
rules:
  - name: agent-reaches-echo
    effect: allow
    agents: [tcpagent]
    resources: [echo]
    tcp: true
"""


@pytest.fixture
def daemons(remote: RemoteHost, tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    """A daemon per redirect mode, on one policy; every hook detached after."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(remote))
    made = {}
    for mode in ("bpf", "iptables"):
        workdir = tmp_path / mode
        workdir.mkdir()
        made[mode] = Daemon(workdir, policy, redirect=mode)
    yield made
    for d in made.values():
        d.stop()
    detach_everything()


def run_and_connect(daemon: Daemon, remote: RemoteHost) -> str:
    """Start the daemon, have the agent reach the resource through it, stop it; its log."""
    daemon.start()
    try:
        result = daemon.agent("tcpagent", remote.ip4, str(remote.port))
        assert result["ok"] and result["echo"] == "ping", result
        assert find_leftovers(running_mode=daemon.redirect) == []
    finally:
        daemon.stop()
    return daemon.log.read_text()


def test_switching_modes_both_ways_removes_the_other_modes_hooks(daemons: dict[str, Daemon],
                                                                  remote: RemoteHost) -> None:
    detach_everything()
    assert find_leftovers() == []
    run_and_connect(daemons["bpf"], remote)
    left = find_leftovers()
    assert left and all(line.startswith("BPF program icpt_") for line in left), left

    log = run_and_connect(daemons["iptables"], remote)
    assert "found BPF programs an earlier daemon in bpf mode left" in log, log[-2000:]
    assert "icpt_connect4" in log
    left = find_leftovers()
    assert left and all(line.startswith(("iptables table", "ip6tables table")) for line in left), left
    assert any("ICPT_OUT" in line for line in left), left

    log = run_and_connect(daemons["bpf"], remote)
    assert "found iptables chains an earlier daemon in iptables mode left" in log, log[-2000:]
    assert "ICPT_OUT" in log
    assert all(line.startswith("BPF program icpt_") for line in find_leftovers()), find_leftovers()


def test_a_daemon_with_nothing_left_from_the_other_mode_warns_of_nothing(daemons: dict[str, Daemon],
                                                                         remote: RemoteHost) -> None:
    detach_everything()
    log = run_and_connect(daemons["iptables"], remote)
    assert "an earlier daemon" not in log
