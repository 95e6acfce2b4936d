"""`interceptor trust install | remove | show` into a trust store and an ssh_known_hosts under a
temporary root (the real update-ca-certificates runs there, never on the host's store; OpenSSH's
ssh-keygen finds the hosts in the known_hosts written), and `interceptor kubeconfig` for a
policy built here: its YAML, read back and by kubectl, and the file's mode and owner."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from interceptor import trust_cli
from interceptor.certificates import HostCA, fingerprint
from interceptor.cli import main
from interceptor.policy.model import AddressSpec, AgentSpec, Policy, ResourceSpec
from interceptor.ssh_certificates import SshHostCA
from test_certificates import client_context, handshake

pytestmark = pytest.mark.skipif(shutil.which("update-ca-certificates") is None, reason="Debian's ca-certificates")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "interceptor.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\npolicy: {tmp_path / 'policy.yaml'}\n")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def run(config: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], env=env)


def ca_pem(tmp_path: Path) -> bytes:
    return (tmp_path / "state" / "tls" / "ca.pem").read_bytes()


def bundle(root: Path) -> str:
    return (root / "etc/ssl/certs/ca-certificates.crt").read_text()


# --- trust -------------------------------------------------------------------------------


def test_install_creates_the_ca_and_adds_it_to_the_store(tmp_path: Path, config: Path, root: Path) -> None:
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    pem = ca_pem(tmp_path)
    installed = root / "usr/local/share/ca-certificates/interceptor-host-ca.crt"
    assert installed.read_bytes() == pem and stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert pem.decode() in bundle(root)
    link = root / "etc/ssl/certs/interceptor-host-ca.pem"
    assert link.is_symlink() and link.resolve() == installed
    hashed = [p for p in (root / "etc/ssl/certs").iterdir() if p.name.endswith(".0")]
    assert [p.resolve() for p in hashed] == [installed]
    ca = HostCA.open(tmp_path / "state")
    assert fingerprint(ca.certificate) in result.output
    trusting = client_context(str(root / "etc/ssl/certs/ca-certificates.crt"))
    handshake(ca.server_context("api.example.com"), trusting, "api.example.com")


def test_install_twice_keeps_one_ca(tmp_path: Path, config: Path, root: Path) -> None:
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    first = ca_pem(tmp_path)
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    assert ca_pem(tmp_path) == first and bundle(root).count(first.decode()) == 1


def test_the_root_comes_from_the_environment(tmp_path: Path, config: Path, root: Path) -> None:
    result = run(config, "trust", "install", env={"INTERCEPTOR_TRUST_ROOT": str(root)})
    assert result.exit_code == 0, result.output
    assert ca_pem(tmp_path).decode() in bundle(root)


def _other_ca(tmp_path: Path, root: Path) -> str:
    """Another CA in the store's distributed certificates (as Mozilla's are on a real host)."""
    other = HostCA.open(tmp_path / "other").certificate_pem.decode()
    (root / "usr/share/ca-certificates/mozilla").mkdir(parents=True)
    (root / "usr/share/ca-certificates/mozilla/Other.crt").write_text(other)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/ca-certificates.conf").write_text("mozilla/Other.crt\n")
    return other


@pytest.mark.parametrize("others", [True, False])
def test_remove_undoes_install(tmp_path: Path, config: Path, root: Path, others: bool) -> None:
    other = _other_ca(tmp_path, root) if others else None
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    assert ca_pem(tmp_path).decode() in bundle(root)
    result = run(config, "trust", "remove", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert not (root / "usr/local/share/ca-certificates/interceptor-host-ca.crt").exists()
    assert ca_pem(tmp_path).decode() not in bundle(root)
    assert (other in bundle(root)) if other else bundle(root).strip() == ""
    links = [p for p in (root / "etc/ssl/certs").iterdir() if p.is_symlink()]
    assert all(p.exists() for p in links) and len(links) == (2 if others else 0)  # name.pem and hash.0
    assert (tmp_path / "state/tls/private/ca.key").exists()  # the CA itself stays


def test_remove_when_not_installed_says_so(config: Path, root: Path) -> None:
    result = run(config, "trust", "remove", "--root", str(root))
    assert result.exit_code == 0
    assert "interceptor-host-ca.crt was not installed" in result.output


def test_install_refuses_a_key_open_to_others(tmp_path: Path, config: Path, root: Path) -> None:
    HostCA.open(tmp_path / "state")
    os.chmod(tmp_path / "state/tls/private/ca.key", 0o644)
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 1
    assert "ca.key has mode 0644: it must be readable by root only" in result.output
    assert not (root / "usr/local/share/ca-certificates/interceptor-host-ca.crt").exists()


def test_show_prints_the_pem_and_fingerprint(tmp_path: Path, config: Path) -> None:
    ca = HostCA.open(tmp_path / "state")
    result = run(config, "trust", "show")
    assert result.exit_code == 0
    assert result.output.startswith(ca.certificate_pem.decode())
    openssl = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=ca.certificate_pem,
                             capture_output=True, check=True).stdout.decode()
    assert f"SHA-256 fingerprint: {openssl.strip().split('=', 1)[1]}\n" in result.output
    data = json.loads(run(config, "trust", "show", "--json").output)
    assert data["pem"] == ca.certificate_pem.decode() and data["sha256"] == fingerprint(ca.certificate)
    assert data["subject"].startswith("CN=interceptor host CA ")


def test_show_without_a_ca(config: Path) -> None:
    result = run(config, "trust", "show")
    assert result.exit_code == 1
    assert "no host CA yet" in result.output and "interceptor trust install" in result.output


def test_the_help_names_the_clients_that_need_more(config: Path) -> None:
    for command in ("trust", "trust install"):
        help_text = " ".join(run(config, *command.split(), "--help").output.split())
        assert "REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in help_text
        assert "certifi" in help_text and "NODE_EXTRA_CA_CERTS" in help_text


# --- trust: the SSH host CA in ssh_known_hosts -----------------------------------------


def _ssh_policy(*resources: ResourceSpec) -> Policy:
    return Policy(version="test", resources={r.name: r for r in resources}, agents={}, rules=(), source="policy.yaml")


def _ssh(name: str, *addresses: AddressSpec, host_names: list[str] | None = None) -> ResourceSpec:
    return ResourceSpec(name, "ssh", addresses, options={"host_names": host_names} if host_names else None)


WEB = _ssh("web", AddressSpec(None, "web1.internal", 22), AddressSpec(ipaddress.ip_network("10.1.2.0/24"), None, 2222),
           host_names=["web1"])
BASTION = _ssh("bastion", AddressSpec(ipaddress.ip_network("10.0.0.9/32"), None, 22),
               AddressSpec(ipaddress.ip_network("fd00::/64"), None, 22))
DB = ResourceSpec("db", "postgres", (AddressSpec(None, "db.internal", 5432),))


@pytest.fixture
def ssh_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Policy]:
    """The policy trust install reads (the settings' policy file exists; its content is this)."""
    (tmp_path / "policy.yaml").write_text("stands for the policy below\n")
    current = [_ssh_policy(WEB, BASTION, DB)]
    monkeypatch.setattr(trust_cli, "load_policy", lambda path: current[0])
    return current


def known_hosts(root: Path) -> Path:
    return root / "etc/ssh/ssh_known_hosts"


def _found(path: Path, host: str) -> bool:
    return subprocess.run(["ssh-keygen", "-F", host, "-f", str(path)], capture_output=True).returncode == 0


@pytest.mark.usefixtures("ssh_policy")
def test_install_trusts_the_ssh_host_ca_for_the_policys_ssh_hosts(tmp_path: Path, config: Path, root: Path) -> None:
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    ca = SshHostCA.open(tmp_path / "state", create=False)
    patterns = "web1.internal,[10.1.2.*]:2222,web1,[web1]:2222,10.0.0.9"
    assert known_hosts(root).read_text() == (
        f"{trust_cli.BLOCK_BEGIN}\n# the ssh resources web, bastion of {tmp_path / 'policy.yaml'}\n"
        f"@cert-authority {patterns} {ca.public_key_line()}\n{trust_cli.BLOCK_END}\n")
    assert stat.S_IMODE(known_hosts(root).stat().st_mode) == 0o644
    assert f"installed the SSH host CA ({ca.key.get_fingerprint('sha256')})" in result.output
    assert "warning: resource bastion: the network fd00::/64 cannot be written as known_hosts patterns" in result.output
    for host in ("web1.internal", "web1", "[web1]:2222", "[10.1.2.77]:2222", "10.0.0.9"):
        assert _found(known_hosts(root), host), host
    for host in ("db.internal", "10.1.2.77", "[10.0.0.9]:2222", "web2"):
        assert not _found(known_hosts(root), host), host


def _with_others(root: Path) -> str:
    """A known_hosts of the host's own: comments (one not UTF-8), keys, a CRLF line end, a CA line of
    someone else, no final newline."""
    others = ("# the host's own, caf\xe9\nalpha.internal ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHg0 \r\n"
              "@cert-authority *.corp ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherCA corp-ca\n\nbeta ssh-rsa AAAAB3")
    known_hosts(root).parent.mkdir(parents=True)
    known_hosts(root).write_bytes(others.encode("latin-1"))
    known_hosts(root).chmod(0o600)
    return others


@pytest.mark.usefixtures("ssh_policy")
def test_install_keeps_every_other_line_and_is_idempotent(config: Path, root: Path) -> None:
    others = _with_others(root)
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    first = known_hosts(root).read_bytes().decode("latin-1")
    assert first.startswith(others + "\n" + trust_cli.BLOCK_BEGIN + "\n") and first.endswith(trust_cli.BLOCK_END + "\n")
    assert stat.S_IMODE(known_hosts(root).stat().st_mode) == 0o644
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    assert known_hosts(root).read_bytes().decode("latin-1") == first


def test_install_replaces_the_block_where_it_is(config: Path, root: Path, ssh_policy: list[Policy]) -> None:
    _with_others(root)
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    with known_hosts(root).open("a", encoding="latin-1") as file:
        file.write("gamma ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGamma\n")
    ssh_policy[0] = _ssh_policy(_ssh("other", AddressSpec(None, "other.internal", 22)))
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    text = known_hosts(root).read_bytes().decode("latin-1")
    assert text.count(trust_cli.BLOCK_BEGIN) == 1 and "@cert-authority other.internal ssh-ed25519 " in text
    assert "web1.internal" not in text and text.endswith(f"{trust_cli.BLOCK_END}\ngamma ssh-ed25519 "
                                                         "AAAAC3NzaC1lZDI1NTE5AAAAIGamma\n")


def test_remove_takes_out_only_the_block(config: Path, root: Path, ssh_policy: list[Policy]) -> None:
    others = _with_others(root)
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    result = run(config, "trust", "remove", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert f"the SSH host CA is no longer in {known_hosts(root)}" in result.output
    assert known_hosts(root).read_bytes().decode("latin-1") == others + "\n"  # the final newline the block needed stays
    again = run(config, "trust", "remove", "--root", str(root))
    assert f"{known_hosts(root)} had no SSH host CA block" in again.output
    assert known_hosts(root).read_bytes().decode("latin-1") == others + "\n"


def test_a_policy_without_ssh_resources_writes_no_block_and_removes_a_stale_one(
        config: Path, root: Path, ssh_policy: list[Policy]) -> None:
    ssh_policy[0] = _ssh_policy(DB)
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "has no ssh resource: no SSH host CA line in" in result.output
    assert not known_hosts(root).exists()
    ssh_policy[0] = _ssh_policy(WEB)
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    ssh_policy[0] = _ssh_policy(DB)
    result = run(config, "trust", "install", "--root", str(root))
    assert "no SSH host CA line in" in result.output and "; the old one removed" in result.output
    assert known_hosts(root).read_text() == ""


def test_ssh_resources_without_any_pattern_write_no_block(config: Path, root: Path,
                                                          ssh_policy: list[Policy]) -> None:
    ssh_policy[0] = _ssh_policy(_ssh("v6", AddressSpec(ipaddress.ip_network("fd00::/64"), None, 22)))
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "the network fd00::/64 cannot be written" in result.output and "have no host pattern" in result.output
    assert not known_hosts(root).exists()


def test_without_a_policy_file_there_is_no_block(config: Path, root: Path) -> None:
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "no policy file" in result.output and not known_hosts(root).exists()


def test_a_policy_that_does_not_load_fails_after_tls(tmp_path: Path, config: Path, root: Path) -> None:
    (tmp_path / "policy.yaml").write_text("version: [\n")
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 1
    assert "invalid YAML" in result.output and "the SSH host CA is not installed (the TLS host CA is)" in result.output
    assert ca_pem(tmp_path).decode() in bundle(root) and not known_hosts(root).exists()


def test_bad_host_names_fail_and_write_nothing(config: Path, root: Path, ssh_policy: list[Policy]) -> None:
    ssh_policy[0] = _ssh_policy(_ssh("web", AddressSpec(None, "web1.internal", 22),
                                     host_names=["web1\n@cert-authority * ssh-ed25519 AAAA"]))
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 1 and "resource web: host_names: " in result.output
    assert not known_hosts(root).exists()


SSH_EXAMPLE = Path(__file__).resolve().parents[2] / "policy" / "examples" / "ssh.yaml"


def test_install_from_the_shipped_ssh_example(tmp_path: Path, config: Path, root: Path) -> None:
    result = run(config, "trust", "install", "--root", str(root), "--policy", str(SSH_EXAMPLE))
    assert result.exit_code == 0, result.output
    ca = SshHostCA.open(tmp_path / "state", create=False)
    line = f"@cert-authority web1.internal.example.com,web1 {ca.public_key_line()}"
    assert f"# the ssh resources web1 of {SSH_EXAMPLE}\n{line}\n" in known_hosts(root).read_text()
    assert _found(known_hosts(root), "web1") and not _found(known_hosts(root), "web2")


def test_install_from_a_policy_file(tmp_path: Path, config: Path, root: Path) -> None:
    """The settings' policy, read by the loader: an ssh resource by name, network (another
    port) and IPv6 address, its host_names, beside a resource of another protocol."""
    (tmp_path / "policy.yaml").write_text(f"""version: 1
resources:
  web:
    protocol: ssh
    addresses: ["web1.internal:22", "10.1.2.0/24:2222", "[fd00::7]:22"]
    credentials: {{from: file, path: {tmp_path / "web.yaml"}}}
    options: {{known_hosts: {tmp_path / "known_hosts"}, host_names: [web1]}}
  db:
    protocol: postgres
    addresses: ["db.internal:5432"]
agents: {{}}
rules: []
""")
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "@cert-authority web1.internal,[10.1.2.*]:2222,fd00::7,web1,[web1]:2222 ssh-ed25519 " \
        in known_hosts(root).read_text()
    for host in ("web1.internal", "[10.1.2.9]:2222", "fd00::7", "web1", "[web1]:2222"):
        assert _found(known_hosts(root), host), host
    assert not _found(known_hosts(root), "db.internal")


@pytest.mark.usefixtures("ssh_policy")
@pytest.mark.parametrize("markers", [[trust_cli.BLOCK_BEGIN], [trust_cli.BLOCK_END, trust_cli.BLOCK_BEGIN],
                                     [trust_cli.BLOCK_BEGIN, trust_cli.BLOCK_END] * 2])
def test_damaged_markers_are_refused_and_the_file_kept(config: Path, root: Path, markers: list[str]) -> None:
    known_hosts(root).parent.mkdir(parents=True)
    text = "".join(f"{m}\nline {n}\n" for n, m in enumerate(markers))
    known_hosts(root).write_text(text)
    where = ", ".join(str(2 * n + 1) for n in range(len(markers)))
    for command in ("install", "remove", "show"):
        result = run(config, "trust", command, "--root", str(root))
        assert result.exit_code == 1, command
        assert f"interceptor's block is damaged (marker lines {where} should be one" in result.output
        assert "fix or remove them by hand" in result.output
        assert known_hosts(root).read_text() == text


def test_install_refuses_an_ssh_key_open_to_others(tmp_path: Path, config: Path, root: Path,
                                                   ssh_policy: list[Policy]) -> None:
    SshHostCA.open(tmp_path / "state")
    os.chmod(tmp_path / "state/ssh/host_ca", 0o640)
    result = run(config, "trust", "install", "--root", str(root))
    assert result.exit_code == 1
    assert "host_ca has mode 0640: it must be readable by root only" in result.output
    assert not known_hosts(root).exists()


def test_show_prints_the_ssh_host_ca_and_the_block(tmp_path: Path, config: Path, root: Path,
                                                   ssh_policy: list[Policy]) -> None:
    HostCA.open(tmp_path / "state")
    before = run(config, "trust", "show", "--root", str(root))
    assert before.exit_code == 0, before.output
    assert "SSH host CA: none yet" in before.output and f"{known_hosts(root)}: no SSH host CA block" in before.output
    assert not (tmp_path / "state/ssh").exists()  # show makes nothing
    assert run(config, "trust", "install", "--root", str(root)).exit_code == 0
    ca = SshHostCA.open(tmp_path / "state", create=False)
    result = run(config, "trust", "show", "--root", str(root))
    assert f"SSH host CA: {ca.public_key_line()}\nSSH host CA fingerprint: {ca.key.get_fingerprint('sha256')}\n" \
        in result.output
    assert result.output.endswith(f"{known_hosts(root)}:\n{known_hosts(root).read_text()}")
    data = json.loads(run(config, "trust", "show", "--json", "--root", str(root)).output)
    assert data["ssh"] == {"public_key": ca.public_key_line(), "sha256": ca.key.get_fingerprint("sha256"),
                           "known_hosts": str(known_hosts(root)), "block": known_hosts(root).read_text()}


# --- kubeconfig --------------------------------------------------------------------------


def _address(where: str, port: int) -> AddressSpec:
    try:
        return AddressSpec(ipaddress.ip_network(where), None, port)
    except ValueError:
        return AddressSpec(None, where, port)


POLICY = Policy(
    version="test",
    resources={
        "cluster": ResourceSpec("cluster", "kubernetes", (_address("kube.internal", 6443), _address("10.0.0.9", 443))),
        "cluster-v6": ResourceSpec("cluster-v6", "kubernetes", (_address("fd00::9", 6443),)),
        "cluster-net": ResourceSpec("cluster-net", "kubernetes", (_address("10.0.0.0/24", 6443),)),
        "db": ResourceSpec("db", "postgres", (_address("10.0.0.5", 5432),)),
    },
    agents={"bot": AgentSpec("bot", uids=(1234, 1235)), "cron": AgentSpec("cron", cgroups=("cron.slice",))},
    rules=(),
    source="policy.yaml",
)


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust_cli, "load_policy", lambda path: POLICY)


EXAMPLE = Path(__file__).resolve().parents[2] / "policy" / "examples" / "kubernetes.yaml"


def test_kubeconfig_from_the_shipped_example(tmp_path: Path, config: Path) -> None:
    output = tmp_path / "ops-bot.kubeconfig"
    result = run(config, "kubeconfig", "--agent", "ops-bot", "--resource", "cluster", "--policy", str(EXAMPLE),
                 "-o", str(output))
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(output.read_text())
    assert loaded["clusters"][0]["cluster"]["server"] == "https://10.96.0.1:443"
    assert loaded["users"] == [{"name": "ops-bot", "user": {"username": "ops-bot"}}]
    if os.geteuid() == 0:
        assert output.stat().st_uid == 2010


@pytest.mark.usefixtures("policy")
def test_kubeconfig_names_the_server_trusts_the_ca_and_has_no_credentials(tmp_path: Path, config: Path) -> None:
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster")
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(result.output)
    assert loaded == {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": "https://kube.internal:6443",
            "certificate-authority-data": base64.b64encode(ca_pem(tmp_path)).decode()}}],
        "contexts": [{"name": "cluster", "context": {"cluster": "cluster", "user": "bot"}}],
        "current-context": "cluster", "preferences": {},
        "users": [{"name": "bot", "user": {"username": "bot"}}],  # a name only: no password, token or key
    }


@pytest.mark.usefixtures("policy")
@pytest.mark.parametrize("resource, server", [("cluster-v6", "https://[fd00::9]:6443")])
def test_kubeconfig_brackets_an_ipv6_server(config: Path, resource: str, server: str) -> None:
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", resource)
    assert yaml.safe_load(result.output)["clusters"][0]["cluster"]["server"] == server


@pytest.mark.usefixtures("policy")
def test_kubeconfig_server_override(config: Path) -> None:
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster-net", "--server",
                 "https://10.0.0.7:6443")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["clusters"][0]["cluster"]["server"] == "https://10.0.0.7:6443"


@pytest.mark.usefixtures("policy")
@pytest.mark.parametrize("args, message", [
    (["--agent", "nobody", "--resource", "cluster"], "no agent 'nobody' in policy.yaml (agents: bot, cron)"),
    (["--agent", "bot", "--resource", "nowhere"], "no resource 'nowhere' in policy.yaml"),
    (["--agent", "bot", "--resource", "db"], "resource 'db' has protocol postgres, not kubernetes"),
    (["--agent", "bot", "--resource", "cluster-net"], "the network 10.0.0.0/24: give --server https://HOST:PORT"),
    (["--agent", "bot", "--resource", "cluster", "--server", "http://kube.internal"], "give https://HOST"),
    (["--agent", "bot", "--resource", "cluster", "--server", "https://u:p@kube.internal"], "no credentials"),
])
def test_kubeconfig_errors(config: Path, args: list[str], message: str) -> None:
    result = run(config, "kubeconfig", *args)
    assert result.exit_code == 1
    assert message in result.output


@pytest.mark.usefixtures("policy")
@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_kubeconfig_file_is_0600_and_the_agents(tmp_path: Path, config: Path) -> None:
    output = tmp_path / "bot.kubeconfig"
    output.write_text("old\n")
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster", "-o", str(output))
    assert result.exit_code == 0, result.output
    info = output.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 1234
    assert yaml.safe_load(output.read_text())["users"] == [{"name": "bot", "user": {"username": "bot"}}]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bot")) == []


@pytest.mark.usefixtures("policy")
@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_kubeconfig_makes_a_missing_kube_directory_for_the_agent(tmp_path: Path, config: Path) -> None:
    output = tmp_path / "home" / ".kube" / "config"
    (tmp_path / "home").mkdir()
    assert run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster", "-o", str(output)).exit_code == 0
    info = output.parent.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == 1234 and output.stat().st_uid == 1234
    deeper = tmp_path / "nowhere" / ".kube" / "config"
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster", "-o", str(deeper))
    assert result.exit_code == 1 and "No such file or directory" in result.output


@pytest.mark.usefixtures("policy")
def test_kubeconfig_file_of_an_agent_without_uids(tmp_path: Path, config: Path) -> None:
    output = tmp_path / "cron.kubeconfig"
    result = run(config, "kubeconfig", "--agent", "cron", "--resource", "cluster", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(output.stat().st_mode) == 0o600 and output.stat().st_uid == os.geteuid()


class ApiServer:
    """A TLS server presenting the host CA's certificates the way the enforcer does (one
    AgentTLS per connection): it records each request head and SNI and answers /version."""

    def __init__(self, ca: HostCA) -> None:
        self.ca = ca
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heads: list[bytes] = []
        self.names: list[str | None] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            tls = self.ca.agent_context("127.0.0.1")
            try:
                with tls.context.wrap_socket(conn, server_side=True) as secure:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += secure.recv(4096) or b"\r\n\r\n"
                    self.heads.append(head)
                    self.names.append(tls.server_name)
                    body = b'{"major": "1", "minor": "32", "gitVersion": "v1.32.0"}'
                    secure.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except (OSError, ssl.SSLError):
                continue


@pytest.mark.usefixtures("policy")
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl")
def test_kubectl_uses_it_without_prompting(tmp_path: Path, config: Path) -> None:
    """kubectl (Go's TLS) trusts the host CA's leaf for the name it dials, sends SNI, and
    asks for nothing on its standard input (a user with nothing at all makes it prompt)."""
    server = ApiServer(HostCA.open(tmp_path / "state"))
    output = tmp_path / "bot.kubeconfig"
    result = run(config, "kubeconfig", "--agent", "bot", "--resource", "cluster", "-o", str(output),
                 "--server", f"https://localhost:{server.port}")
    assert result.exit_code == 0, result.output
    env = {**os.environ, "KUBECONFIG": str(output)}
    context = subprocess.run(["kubectl", "config", "current-context"], env=env, capture_output=True, text=True,
                             check=True)
    assert context.stdout == "cluster\n"
    version = subprocess.run(["kubectl", "get", "--raw", "/version"], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    server.listener.close()
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["gitVersion"] == "v1.32.0"
    assert server.names and set(server.names) == {"localhost"}
    basic = b"Basic " + base64.b64encode(b"bot:")  # the name and an empty password: what the enforcer drops
    assert [[line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")]
            for head in server.heads] == [[basic]] * len(server.heads)
