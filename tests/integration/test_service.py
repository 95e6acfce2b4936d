"""Running as a service: `scripts/service.sh install|uninstall` on the real system paths, the
systemd unit, shell completion and `--version`, and the daemon's Prometheus endpoint."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daemon import INTERCEPTOR, Daemon, detach_everything
from interceptor import __version__
from interceptor.config import load_settings
from interceptor.redirect import cgroups, libbpf
from interceptor.redirect.bpf import PROGRAMS

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "scripts" / "service.sh"
UNIT = REPO / "packaging" / "interceptor.service"
TEMPLATE = REPO / "packaging" / "interceptor.yaml"
OPT = Path("/opt/interceptor")
ETC = Path("/etc/interceptor")
STATE = Path("/var/lib/interceptor")
LINK = Path("/usr/local/bin/interceptor")
INSTALLED_UNIT = Path("/etc/systemd/system/interceptor.service")
COMPLETION = Path("/etc/bash_completion.d/interceptor")


def attached() -> dict[str, int]:
    fd = os.open(cgroups.find_mount(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {name: sum(1 for _, n in libbpf.attached_programs(fd, t) if n == name) for name, t in PROGRAMS}
    finally:
        os.close(fd)


def service(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SERVICE), *args], capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, f"service.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# -- CLI: completion and version ------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script(shell):
    result = subprocess.run([INTERCEPTOR, "completion", shell], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "_INTERCEPTOR_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout


def test_bash_completion_completes_commands_in_a_real_shell():
    script = ('source <(interceptor completion bash); COMP_WORDS=(interceptor comp); COMP_CWORD=1; '
              '_interceptor_completion interceptor; echo "${COMPREPLY[@]}"; '
              'COMPREPLY=(); COMP_WORDS=(interceptor audit ve); COMP_CWORD=2; _interceptor_completion interceptor; echo "${COMPREPLY[@]}"')
    env = dict(os.environ, PATH=f"{Path(INTERCEPTOR).parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert result.stdout.splitlines() == ["completion", "verify"], result.stderr


def test_completion_refuses_an_unknown_shell():
    result = subprocess.run([INTERCEPTOR, "completion", "tcsh"], capture_output=True, text=True)
    assert result.returncode == 2 and "'tcsh' is not one of" in result.stderr


def test_version():
    result = subprocess.run([INTERCEPTOR, "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"interceptor, version {__version__}"


# -- the unit and the settings template -----------------------------------------------------------


def test_unit_keeps_bpf_working_under_its_hardening():
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure" and svc["RestartSec"] == "1"
    assert svc["ExecStart"].split() == ["/opt/interceptor/venv/bin/interceptor", "--config",
                                        "/etc/interceptor/interceptor.yaml", "run"]
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    caps = set(svc["CapabilityBoundingSet"].split())
    assert {"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_NET_BIND_SERVICE", "CAP_SYS_RESOURCE",
            "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"} <= caps
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "read-only" and svc["PrivateTmp"] == "yes"
    writable = svc["ReadWritePaths"].split()
    assert {"/var/lib/interceptor", "/run/interceptor", "/sys/fs/cgroup"} <= set(writable)
    assert "/sys/fs/bpf" in {p.lstrip("-") for p in writable}
    assert svc["RuntimeDirectory"] == "interceptor" and svc["StateDirectory"] == "interceptor"
    assert svc["LimitMEMLOCK"] == "infinity" and svc["LimitNOFILE"] == "1048576"
    for breaks_enforcement in ("PrivateNetwork", "ProtectKernelTunables", "ProtectKernelModules",
                               "ProtectControlGroups", "MemoryDenyWriteExecute"):
        assert breaks_enforcement not in svc, f"{breaks_enforcement} would break BPF loading or enforcement"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_settings_template_loads_and_points_at_the_installed_policy():
    settings = load_settings(TEMPLATE)
    assert settings.policy == ETC / "policy.yaml"
    assert settings.state_dir == STATE
    assert settings.audit == {"store": "sqlite", "durability": "strict"}  # the path: <state_dir>/audit.db
    assert settings.metrics_listen is None


# -- install and uninstall on this machine --------------------------------------------------------


def wait_for_status(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"installed daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        if subprocess.run([str(LINK), "status"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"installed daemon not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def unit_confinement() -> list[str]:
    """setpriv with the unit's CapabilityBoundingSet and NoNewPrivileges: what systemd would
    impose, so the installed daemon proves that these capabilities are enough to load BPF."""
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(INSTALLED_UNIT.read_text())
    caps = unit["Service"]["CapabilityBoundingSet"].lower().replace("cap_", "+").split()
    return ["setpriv", f"--bounding-set=-all,{','.join(caps)}", "--inh-caps=-all", "--no-new-privs"]


def run_installed_daemon(log: Path) -> None:
    """Start the installed daemon the way the unit does, then stop it: hooks stay behind."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([*unit_confinement(), str(LINK), "--config", str(ETC / "interceptor.yaml"), "run"],
                                stdout=out, stderr=out, cwd="/")
    try:
        wait_for_status(proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.timeout(1800)
def test_install_runs_from_opt_and_uninstall_leaves_nothing_behind(tmp_path):
    installed = (OPT, INSTALLED_UNIT, LINK, ETC / "interceptor.yaml", ETC / "policy.yaml")
    present = [str(p) for p in installed if p.exists() or p.is_symlink()]
    assert not present, (f"an installation is already present ({', '.join(present)}); this test installs and "
                         "removes one: run `scripts/service.sh uninstall --purge` first")
    # A daemon run from the checkout keeps its state in /var/lib/interceptor, and demo secrets may
    # sit in /etc/interceptor: --purge deletes both, so they are put back afterwards.
    backups = {path: tmp_path / "backup" / path.parent.name for path in (ETC, STATE) if path.exists()}
    for path, copy in backups.items():
        shutil.copytree(path, copy, symlinks=True)
    try:
        first = service("install")
        systemd = Path("/run/systemd/system").is_dir()
        assert ("enabled interceptor.service" if systemd else "systemd is not PID 1 here") in first.stdout

        assert os.access(OPT / "venv" / "bin" / "interceptor", os.X_OK)
        assert (OPT / "bpf" / "redirect.c").read_bytes() == (REPO / "bpf" / "redirect.c").read_bytes()
        assert (OPT / "policy" / "schema.json").exists()
        assert (ETC / "interceptor.yaml").read_text() == TEMPLATE.read_text()
        assert (ETC / "policy.yaml").read_text() == (REPO / "policy" / "default.yaml").read_text()
        assert STATE.stat().st_mode & 0o777 == 0o700
        assert os.readlink(LINK) == str(OPT / "venv" / "bin" / "interceptor")
        assert INSTALLED_UNIT.read_text() == UNIT.read_text()
        assert "_INTERCEPTOR_COMPLETE" in COMPLETION.read_text()
        where = subprocess.run([str(OPT / "venv" / "bin" / "python"), "-c", "import interceptor; print(interceptor.__file__)"],
                               capture_output=True, text=True, cwd="/")
        assert where.stdout.startswith(str(OPT / "venv")), f"the installed package must not point into the checkout: {where}"
        if shutil.which("systemd-analyze"):
            verify = subprocess.run(["systemd-analyze", "verify", str(INSTALLED_UNIT)], capture_output=True, text=True)
            assert verify.returncode == 0, verify.stderr

        edit = "# edited by the operator\nenforcer_port: 1999\nrefuse_port: 1998\n"
        with open(ETC / "interceptor.yaml", "a") as settings:
            settings.write(edit)
        again = service("install")
        assert "keeping existing /etc/interceptor/interceptor.yaml" in again.stdout
        assert (ETC / "interceptor.yaml").read_text().endswith(edit)

        run_installed_daemon(tmp_path / "daemon.log")
        assert set(attached().values()) == {1}, ("the installed daemon, confined to the unit's capabilities, loads "
                                                 "its BPF programs from /opt/interceptor/bpf")

        kept = service("uninstall")
        assert re.search(r"removed \d+ BPF program", kept.stdout), kept.stdout
        assert set(attached().values()) == {0}, "uninstall must leave no BPF program attached"
        assert not any(p.exists() or p.is_symlink() for p in (OPT, INSTALLED_UNIT, LINK, COMPLETION))
        assert (ETC / "interceptor.yaml").exists() and (STATE / "audit.db").exists()
        assert "kept /etc/interceptor and /var/lib/interceptor" in kept.stdout

        purged = service("uninstall", "--purge")
        assert not ETC.exists() and not STATE.exists()
        assert "purged /etc/interceptor and /var/lib/interceptor" in purged.stdout
    finally:
        if OPT.exists() or ETC.exists():
            subprocess.run(["bash", str(SERVICE), "uninstall", "--purge"], capture_output=True)
        for path, copy in backups.items():
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(copy, path, symlinks=True)


# -- /metrics on a running daemon -----------------------------------------------------------------

POLICY = """
version: 1
agents:
  tcpagent: {{unprotected: deny}}
  blocked: {{unprotected: deny}}
resources:
  echo:
    protocol: tcp
    addresses: ["{ip}:{port}"]
rules:
  - {{name: reach-echo, effect: allow, agents: [tcpagent], resources: [echo], tcp: true}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist yet (labels in the exposition's sorted order)."""
    series = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_value(port: int, name: str, expected: float, timeout: float = 10, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(port)
        if value(text, name, **labels) == expected or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_daemon_serves_metrics_that_move_when_agents_connect(tmp_path, remote):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(ip=remote.ip4, port=remote.port))
    port = free_port()
    daemon = Daemon(tmp_path, policy, redirect="bpf", metrics_listen=f"127.0.0.1:{port}")
    daemon.start()
    try:
        daemon.wait_for_event(lambda e: e.get("kind") == "daemon" and e.get("rule") == "start")
        before = scrape(port)
        assert value(before, "interceptor_build_info", version=__version__) == 1
        assert value(before, "interceptor_connections_total", agent="tcpagent", resource="echo", decision="allow") == 0
        assert value(before, "interceptor_audit_written_total") >= 1, "the daemon's start is audited"

        allowed = daemon.agent("tcpagent", remote.ip4, str(remote.port))
        assert allowed["ok"], allowed
        refused = daemon.agent("blocked", remote.ip4, str(remote.port))
        assert refused["error"] == "ECONNREFUSED", refused
        daemon.wait_for_event(lambda e: e.get("kind") == "connection" and e.get("agent") == "tcpagent")
        daemon.wait_for_event(lambda e: e.get("kind") == "connect_denied" and e.get("agent") == "blocked")

        after = wait_for_value(port, "interceptor_connections_total", 1, agent="blocked", resource="echo",
                               decision="deny")
        assert value(after, "interceptor_connections_total", agent="tcpagent", resource="echo", decision="allow") == 1
        assert value(after, "interceptor_connections_total", agent="blocked", resource="echo", decision="deny") == 1
        assert value(after, "interceptor_audit_written_total") >= value(before, "interceptor_audit_written_total") + 2
        assert value(after, "interceptor_audit_failed_total") == 0
        assert value(after, "interceptor_approvals_pending") == 0
        assert "# TYPE interceptor_sessions gauge" in after

        with pytest.raises(urllib.error.HTTPError) as refused_method:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x"), timeout=10)
        assert refused_method.value.code == 405
    finally:
        daemon.stop()
        detach_everything()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_bad_metrics_address_stops_the_start_with_the_setting_named(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(ip="10.231.9.9", port=1))
    daemon = Daemon(tmp_path, policy, redirect="bpf", metrics_listen="localhost")
    with pytest.raises(RuntimeError, match=re.escape("metrics_listen 'localhost': expected HOST:PORT")):
        daemon.start()
