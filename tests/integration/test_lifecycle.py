"""Hooks outlive the daemon on purpose; only `interceptor uninstall` removes them."""

from __future__ import annotations

import os
import subprocess

from daemon import Daemon
from interceptor.redirect import cgroups, libbpf
from interceptor.redirect.bpf import PROGRAMS


def attached() -> dict[str, int]:
    root = cgroups.find_mount()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {name: sum(1 for _, n in libbpf.attached_programs(fd, t) if n == name) for name, t in PROGRAMS}
    finally:
        os.close(fd)


def icpt_chains() -> list[str]:
    out = []
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter"):
            rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
            out += [line for line in rules.splitlines() if "ICPT_" in line]
    return out


POLICY = """
version: 1
agents:
  a: {unprotected: deny}
resources:
  r: {protocol: tcp, addresses: ["10.231.9.9:1"]}
rules: []
"""


def test_programs_survive_stop_and_restart_replaces_them_and_uninstall_removes_all(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    daemon = Daemon(tmp_path, policy, redirect="bpf")
    daemon.start()
    assert set(attached().values()) == {1}
    daemon.stop()
    assert set(attached().values()) == {1}, "a stopped daemon must leave its hooks attached (fail closed)"
    daemon.start()
    assert set(attached().values()) == {1}, "a restarted daemon replaces its predecessor's programs, not adds"
    daemon.stop()
    result = daemon.cli("uninstall")
    assert f"removed {len(PROGRAMS)} BPF program(s)" in result.stdout
    assert set(attached().values()) == {0}
    assert not (cgroups.find_mount() / "interceptor").exists()


def test_a_retired_sockops_program_of_an_earlier_version_is_detached(tmp_path):
    """Earlier versions re-keyed origins in a sockops program at the cgroup root; one left
    behind by an upgrade would run at every TCP event of the host for nothing."""
    from bcc import BPF

    leftover = BPF(text=b"int icpt_sockops(struct bpf_sock_ops *skops) { return 1; }")
    fn = leftover.load_func(b"icpt_sockops", BPF.SOCK_OPS)
    root = cgroups.ensure_mount()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libbpf.attach(fn.fd, fd, libbpf.CGROUP_SOCK_OPS)
        leftover.cleanup()
        assert [n for _, n in libbpf.attached_programs(fd, libbpf.CGROUP_SOCK_OPS)].count("icpt_sockops") == 1
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        daemon = Daemon(tmp_path, policy, redirect="bpf")
        daemon.start()
        daemon.stop()
        assert "icpt_sockops" not in [n for _, n in libbpf.attached_programs(fd, libbpf.CGROUP_SOCK_OPS)]
        daemon.cli("uninstall")
    finally:
        os.close(fd)


def test_iptables_rules_survive_stop_and_uninstall_removes_them(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    daemon = Daemon(tmp_path, policy, redirect="iptables")
    daemon.start()
    daemon.stop()
    assert any("-j ICPT_OUT" in line for line in icpt_chains())
    daemon.cli("uninstall")
    assert icpt_chains() == []


def test_uninstall_refuses_while_the_daemon_runs(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    daemon = Daemon(tmp_path, policy, redirect="bpf")
    daemon.start()
    try:
        result = daemon.cli("uninstall", check=False)
        assert result.returncode == 1 and "the daemon is running" in result.stderr
        assert set(attached().values()) == {1}
    finally:
        daemon.stop()
        daemon.cli("uninstall")
