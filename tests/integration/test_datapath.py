"""The kernel data path end to end: real BPF programs (or iptables rules), the real daemon,
a "remote" host in a network namespace, and agents started with `interceptor exec`.

Run once per redirect mode; what differs between them is asserted explicitly.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from scapy.all import AsyncSniffer

from daemon import AGENT_CLIENT, INTERCEPTOR, REFUSED, Daemon, detach_everything, direct

PYTHON_EXE = os.path.realpath(sys.executable)
NOBODY = 65534
EXISTING_CGROUP = "icpt-test.slice/agent.service"  # stands in for a systemd unit's cgroup


def policy_text(remote) -> str:
    return f"""
version: 1
agents:
  tcpagent:
    unprotected: deny
  openagent:
    unprotected: allow
  blocked:
    unprotected: deny
  byuid:
    uids: [{NOBODY}]
  bycgroup:
    cgroups: [{EXISTING_CGROUP}]
resources:
  echo:
    protocol: tcp
    addresses: ["{remote.ip4}:{remote.port}", "[{remote.ip6}]:{remote.port}"]
rules:
  - name: agents-reach-echo
    effect: allow
    agents: [tcpagent, openagent, byuid, bycgroup]
    resources: [echo]
    tcp: true
"""


@pytest.fixture(scope="module")
def existing_cgroup():
    from interceptor.redirect import cgroups

    path = cgroups.ensure_mount() / EXISTING_CGROUP
    path.mkdir(parents=True, exist_ok=True)
    yield path
    path.rmdir()
    path.parent.rmdir()


@pytest.fixture(scope="module", params=["bpf", "iptables"])
def daemon(request, remote, existing_cgroup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"daemon-{request.param}")
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text(remote))
    d = Daemon(workdir, policy, redirect=request.param)
    d.start()
    yield d
    d.stop()
    detach_everything()


def sniff(remote, action, port: int | None = None) -> list:
    """Packets on the veth to the remote server's port while `action` runs."""
    port = port or remote.port
    started = []
    sniffer = AsyncSniffer(iface=remote.host_if, filter=f"tcp port {port} or udp port {port}", store=True,
                           started_callback=lambda: started.append(True))
    sniffer.start()
    deadline = time.monotonic() + 5
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    result = action()
    time.sleep(0.3)
    packets = sniffer.stop()
    return result, list(packets or [])


def through_enforcer(result: dict) -> bool:
    """The server saw a different connection than the one the agent opened."""
    seen_ip, seen_port = result["seen_by_server"]
    return int(seen_port) != result["local"][1]


def connection_event(daemon: Daemon, pid: int) -> dict:
    return daemon.wait_for_event(lambda e: e.get("kind") == "connection" and (e.get("process") or {}).get("pid") == pid
                                 and e.get("decision") == "allow")


def test_agent_goes_through_enforcer_non_agent_goes_direct(daemon, remote):
    result = daemon.agent("tcpagent", remote.ip4, str(remote.port))
    assert result["ok"], result
    assert result["echo"] == "ping"
    assert through_enforcer(result), result
    if daemon.redirect == "bpf":
        assert result["local"][0] == "127.0.0.1"  # the kernel rewrote the destination to the enforcer
    event = connection_event(daemon, result["pid"])
    assert event["agent"] == "tcpagent"
    assert event["process"]["exe"] == PYTHON_EXE
    assert event["operation"]["dst"] == f"{remote.ip4}:{remote.port}"
    assert event["outcome"]["bytes_up"] == 4 and event["outcome"]["bytes_down"] > 4

    plain = direct(remote.ip4, remote.port)
    assert plain["ok"] and not through_enforcer(plain), plain


def run_client(*argv: str, prefix: tuple[str, ...] = (), python: str = sys.executable,
               script: str = str(AGENT_CLIENT)) -> dict:
    out = subprocess.run([*prefix, python, script, *argv], capture_output=True, text=True, timeout=20)
    lines = out.stdout.strip().splitlines()
    assert lines, f"the agent client printed nothing (exit {out.returncode}): {out.stderr}"
    return json.loads(lines[-1])


def test_agents_named_by_uid_and_by_existing_cgroup(daemon, remote, existing_cgroup):
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    # nobody may not read a checkout (or its venv, or pytest's temporary directories) in a
    # root-only directory: the client, which needs only the standard library, runs from a
    # copy it can read, on the system's Python
    shared = Path(tempfile.mkdtemp(prefix="icpt-nobody-"))
    try:
        shared.chmod(0o755)
        client = shared / "agent_client.py"
        shutil.copyfile(AGENT_CLIENT, client)
        client.chmod(0o644)
        by_uid = run_client(remote.ip4, str(remote.port), prefix=as_nobody, python=PYTHON_EXE, script=str(client))
    finally:
        shutil.rmtree(shared)
    assert by_uid["ok"] and through_enforcer(by_uid), by_uid
    assert connection_event(daemon, by_uid["pid"])["agent"] == "byuid"
    in_unit = ("sh", "-c", f'echo $$ > {existing_cgroup}/cgroup.procs && exec "$@"', "sh")
    by_cgroup = run_client(remote.ip4, str(remote.port), prefix=in_unit)
    assert by_cgroup["ok"] and through_enforcer(by_cgroup), by_cgroup
    assert connection_event(daemon, by_cgroup["pid"])["agent"] == "bycgroup"
    below = existing_cgroup / "worker"  # a cgroup below an agent's (the kernel walks up to find it)
    below.mkdir(exist_ok=True)
    try:
        in_child = ("sh", "-c", f'echo $$ > {below}/cgroup.procs && exec "$@"', "sh")
        by_parent = run_client(remote.ip4, str(remote.port), prefix=in_child)
    finally:
        below.rmdir()
    assert by_parent["ok"] and through_enforcer(by_parent), by_parent
    assert connection_event(daemon, by_parent["pid"])["agent"] == "bycgroup"


def test_policy_deny_refuses_at_connect_and_no_packet_leaves(daemon, remote):
    result, packets = sniff(remote, lambda: daemon.agent("blocked", remote.ip4, str(remote.port)))
    assert result["error"] == REFUSED[daemon.redirect], result
    assert packets == []
    event = daemon.wait_for_event(lambda e: e.get("kind") == "connect_denied" and e["process"]["pid"] == result["pid"])
    assert event["agent"] == "blocked" and event["resource"] == "echo" and event["decision"] == "deny"
    assert event["rule"] == "kernel" and event["reason"] == "policy: agent may not reach this resource", event
    assert event["operation"] == {"protocol": "tcp", "dst": f"{remote.ip4}:{remote.port}"}, event


def test_unprotected_destinations_follow_the_agent_setting(daemon, remote):
    other = remote.port + 1  # the remote listens only on `port`; nothing is a resource here
    denied, packets = sniff(remote, lambda: daemon.agent("tcpagent", remote.ip4, str(other)), port=other)
    assert denied["error"] == REFUSED[daemon.redirect] and packets == []
    event = daemon.wait_for_event(lambda e: e.get("kind") == "connect_denied" and e["process"]["pid"] == denied["pid"])
    assert event["agent"] == "tcpagent" and event["resource"] is None, event
    assert event["reason"] == "destination is not a resource and the agent's unprotected setting is deny", event
    allowed, packets = sniff(remote, lambda: daemon.agent("openagent", remote.ip4, str(other)), port=other)
    assert allowed["error"] == "ECONNREFUSED"  # refused by the remote host itself: the SYN went out
    assert packets, "an agent with unprotected: allow must reach other destinations directly"


def test_ipv6_and_v4_mapped(daemon, remote):
    v6 = daemon.agent("tcpagent", remote.ip6, str(remote.port))
    assert v6["ok"] and through_enforcer(v6), v6
    mapped = daemon.agent("tcpagent", f"::ffff:{remote.ip4}", str(remote.port), "--family", "6")
    assert mapped["ok"] and through_enforcer(mapped), mapped
    blocked = daemon.agent("blocked", f"::ffff:{remote.ip4}", str(remote.port), "--family", "6")
    assert blocked["error"] == REFUSED[daemon.redirect], "v4-mapped addresses must not bypass IPv4 policy"


def test_grandchild_is_covered(daemon, remote):
    result = daemon.agent("tcpagent", "--spawn-grandchild", remote.ip4, str(remote.port))
    assert result["grandchild"] and result["ok"] and through_enforcer(result), result
    assert connection_event(daemon, result["pid"])["agent"] == "tcpagent"


def test_dialing_the_enforcer_directly_is_refused(daemon):
    for host in ("127.0.0.1", "::1"):
        result = daemon.agent("openagent", host, "999")
        assert result["ok"] is False, result


def test_udp_to_a_resource_is_refused(daemon, remote):
    code = ("import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"try:\n s.sendto(b'x',('{remote.ip4}',{remote.port})); print('sent')\n"
            "except OSError as e: print(errno.errorcode[e.errno])")
    out, packets = sniff(remote, lambda: subprocess.run(
        [INTERCEPTOR, "exec", "--agent", "openagent", "--", sys.executable, "-c", code],
        capture_output=True, text=True).stdout.strip())
    assert out == "EPERM"
    assert packets == []


def test_socket_created_before_joining_the_cgroup(daemon, remote):
    """BPF decides at connect() by the task's cgroup: a socket made before joining is
    diverted. iptables matches the socket's cgroup, fixed at creation: it goes direct."""
    cgroup = Path(json.loads(daemon.cli("status", "--json").stdout)["cgroup_root"]) / "interceptor" / "tcpagent"
    code = (f"import socket,os,json\ns=socket.socket()\n"
            f"open('{cgroup}/cgroup.procs','w').write(str(os.getpid()))\n"
            f"s.connect(('{remote.ip4}',{remote.port}))\n"
            "print(json.dumps([s.getsockname()[1], int(s.recv(64).split()[1])]))")
    local_port, seen_port = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                      text=True, check=True).stdout)
    if daemon.redirect == "bpf":
        assert local_port != seen_port
    else:
        assert local_port == seen_port


def test_connection_established_before_joining_keeps_its_path(daemon, remote):
    cgroup = Path(json.loads(daemon.cli("status", "--json").stdout)["cgroup_root"]) / "interceptor" / "tcpagent"
    code = (f"import socket,os\ns=socket.create_connection(('{remote.ip4}',{remote.port}))\n"
            "banner=s.recv(64)\n"
            f"open('{cgroup}/cgroup.procs','w').write(str(os.getpid()))\n"
            "s.sendall(b'after'); print(s.recv(64).decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "after"


def test_killed_daemon_fails_closed_and_agents_recover_without_restart(daemon, remote):
    agent = daemon.long_lived_agent("tcpagent")
    try:
        assert agent.connect(remote.ip4, remote.port)["ok"]
        daemon.kill(signal.SIGKILL)
        result, packets = sniff(remote, lambda: agent.connect(remote.ip4, remote.port))
        assert result["error"] == "ECONNREFUSED", result
        assert packets == [], "with the daemon dead, no packet from the agent may reach the remote host"
        plain = direct(remote.ip4, remote.port)
        assert plain["ok"], "non-agents are never affected"
        daemon.start()
        again = agent.connect(remote.ip4, remote.port)
        assert again["ok"] and through_enforcer(again), again
    finally:
        agent.close()


def test_bad_policy_is_rejected_with_file_and_line_and_old_policy_stays(daemon, remote, tmp_path):
    before = daemon.call("status")["policy"]["version"]
    cases = {
        "unknown key": policy_text(remote).replace("    unprotected: allow", "    unprotected: allow\n    colour: red"),
        "bad address": policy_text(remote).replace(f'"{remote.ip4}:{remote.port}"', '"10.300.0.1:7000"'),
        "missing agent": policy_text(remote).replace("agents: [tcpagent, openagent,", "agents: [tcpagent, ghost,"),
    }
    for name, text in cases.items():
        assert text != policy_text(remote), f"{name}: the case must change the policy"
        bad = tmp_path / f"{name.replace(' ', '_')}.yaml"
        bad.write_text(text)
        result = daemon.cli("policy", "reload", str(bad), check=False)
        assert result.returncode != 0, name
        assert f"{bad}:" in result.stderr, f"{name}: error must name the file and line: {result.stderr}"
        assert daemon.call("status")["policy"]["version"] == before
    assert daemon.agent("tcpagent", remote.ip4, str(remote.port))["ok"]


def test_sessions_and_status(daemon, remote):
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["redirect"] == daemon.redirect
    assert {a["name"] for a in status["agents"]} == {"tcpagent", "openagent", "blocked", "byuid", "bycgroup"}
    agent = daemon.long_lived_agent("tcpagent")
    try:
        code = (f"import socket,time\ns=socket.create_connection(('{remote.ip4}',{remote.port}))\n"
                "s.recv(64); print('open', flush=True); time.sleep(5)")
        holder = subprocess.Popen([INTERCEPTOR, "exec", "--agent", "tcpagent", "--", sys.executable, "-c", code],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "open"
        sessions = json.loads(daemon.cli("sessions", "--json").stdout)
        mine = [s for s in sessions if s["pid"] == holder.pid and s["agent"] == "tcpagent"]
        assert mine and mine[0]["bytes_down"] > 0 and mine[0]["exe"] == PYTHON_EXE, sessions
        holder.kill()
    finally:
        agent.close()


def test_reload_swaps_the_policy_without_dropping_connections_in_flight(daemon, remote):
    code = (f"import socket,sys\ns=socket.create_connection(('{remote.ip4}',{remote.port}))\n"
            "s.recv(64); print('open', flush=True); sys.stdin.readline()\n"
            "s.sendall(b'after-reload'); print(s.recv(64).decode(), flush=True)")
    holder = subprocess.Popen([INTERCEPTOR, "exec", "--agent", "tcpagent", "--", sys.executable, "-c", code],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    before = daemon.call("status")["policy"]["version"]
    changed = daemon.policy.parent / "changed.yaml"
    changed.write_text(policy_text(remote).replace("name: agents-reach-echo", "name: agents-may-reach-echo"))
    daemon.cli("policy", "reload", str(changed))
    assert daemon.call("status")["policy"]["version"] != before
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "after-reload"
    holder.wait(timeout=10)
    daemon.cli("policy", "reload", str(daemon.policy))
