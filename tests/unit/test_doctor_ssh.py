"""`interceptor doctor` for ssh resources: the SSH host CA loadable (absent is fine), its
`@cert-authority` block in ssh_known_hosts current (only a warning), and each resource's
known_hosts file readable, parsable and holding an entry for every name it is looked up under."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from interceptor import doctor
from interceptor.doctor import Check, run_checks, verdict
from interceptor.policy import load_policy_text
from interceptor.policy.model import Policy
from interceptor.ssh_certificates import SshHostCA, key_path
from interceptor.trust_cli import KnownHosts, ssh_trust

HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
PLAIN = f"{HOST_KEY[0]} {HOST_KEY[1]}"
REST = "agents:\n  bot: {uids: [1001]}\nrules: []\n"


def policy(known_hosts: Path, addresses: str = '["web.internal:22"]', options: str = "") -> Policy:
    return load_policy_text(f"""
version: 1
resources:
  web: {{protocol: ssh, addresses: {addresses}, options: {{known_hosts: "{known_hosts}"{options}}}}}
  db: {{protocol: postgres, addresses: ["10.0.0.5:5432"]}}
{REST}""", "ssh.yaml")


def checks(tmp_path: Path, loaded: Policy) -> dict[str, Check]:
    found = doctor._ssh(loaded, tmp_path / "state", tmp_path / "root")
    return {c.name: c for c in found}


def known_hosts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path


def test_no_ssh_resource_means_no_ssh_check(tmp_path: Path) -> None:
    loaded = load_policy_text('version: 1\nresources:\n  db: {protocol: postgres, addresses: ["10.0.0.5:5432"]}\n'
                              + REST)
    assert doctor._ssh(loaded, tmp_path / "state", tmp_path / "root") == []


def test_an_absent_ca_is_fine_and_the_block_missing_is_only_a_warning(tmp_path: Path) -> None:
    found = checks(tmp_path, policy(known_hosts(tmp_path, f"web.internal {PLAIN}\n")))
    assert list(found) == [doctor.SSH_CA, doctor.SSH_TRUST, "known_hosts of resource web"]
    ca = found[doctor.SSH_CA]
    assert ca.ok and "none yet" in ca.detail and "creates it when it starts" in ca.detail
    trust = found[doctor.SSH_TRUST]
    assert not trust.ok and trust.needed_for == "optional" and "interceptor trust install" in trust.fix
    assert "no SSH host CA block" in trust.detail and str(tmp_path / "root/etc/ssh/ssh_known_hosts") in trust.detail
    assert verdict([ca, trust]) == (True, "ready: BPF redirection")


def test_a_current_block_is_ok_and_a_stale_one_is_a_warning(tmp_path: Path) -> None:
    loaded = policy(known_hosts(tmp_path, f"web.internal {PLAIN}\n"))
    ca = SshHostCA.open(tmp_path / "state")
    known = KnownHosts(tmp_path / "root")
    known.replace(["# ours", ca.known_hosts_line(ssh_trust(loaded).patterns)])
    found = checks(tmp_path, loaded)
    assert found[doctor.SSH_CA].ok and ca.key.get_fingerprint("sha256") in found[doctor.SSH_CA].detail
    assert found[doctor.SSH_TRUST].ok and "web.internal" in found[doctor.SSH_TRUST].detail
    known.replace([ca.known_hosts_line(["old.internal"])])
    stale = checks(tmp_path, loaded)[doctor.SSH_TRUST]
    assert not stale.ok and "stale" in stale.detail and "interceptor trust install" in stale.fix
    other = SshHostCA(asyncssh.generate_private_key("ssh-ed25519"))
    known.replace([other.known_hosts_line(ssh_trust(loaded).patterns)])
    assert "stale" in checks(tmp_path, loaded)[doctor.SSH_TRUST].detail
    key_path(tmp_path / "state").unlink()
    orphan = checks(tmp_path, loaded)[doctor.SSH_TRUST]
    assert not orphan.ok and "no SSH host CA is loaded" in orphan.detail


def test_a_damaged_block_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "root/etc/ssh/ssh_known_hosts"
    path.parent.mkdir(parents=True)
    path.write_text("# BEGIN interceptor SSH host CA: written by `interceptor trust install`, removed by "
                    "`trust remove`\n")
    trust = checks(tmp_path, policy(known_hosts(tmp_path, "")))[doctor.SSH_TRUST]
    assert not trust.ok and trust.needed_for == "optional" and str(path) in trust.detail


def test_a_ca_key_open_to_others_is_a_failure_with_the_fix(tmp_path: Path) -> None:
    SshHostCA.open(tmp_path / "state")
    key_path(tmp_path / "state").chmod(0o644)
    ca = checks(tmp_path, policy(known_hosts(tmp_path, f"web.internal {PLAIN}\n")))[doctor.SSH_CA]
    assert not ca.ok and ca.needed_for == "resource" and "chmod 0600" in ca.detail and "ssh flow" in ca.fix
    assert verdict([ca])[0] is False


def test_a_ca_file_that_is_no_key_is_a_failure(tmp_path: Path) -> None:
    path = key_path(tmp_path / "state")
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text("not a key\n")
    path.chmod(0o600)
    ca = checks(tmp_path, policy(known_hosts(tmp_path, "")))[doctor.SSH_CA]
    assert not ca.ok and "not an OpenSSH private key" in ca.detail and f"remove {path}" in ca.detail


@pytest.mark.parametrize("text", [f"web.internal {PLAIN}\n", f"@cert-authority *.internal {PLAIN}\n",
                                  f"other.internal,web.internal {PLAIN}\n"])
def test_an_entry_for_the_hostname_is_ok(tmp_path: Path, text: str) -> None:
    found = checks(tmp_path, policy(known_hosts(tmp_path, text)))["known_hosts of resource web"]
    assert found.ok and "web.internal" in found.detail


def test_no_entry_for_a_name_names_the_file_and_the_keyscan(tmp_path: Path) -> None:
    path = known_hosts(tmp_path, f"other.internal {PLAIN}\n@revoked web.internal {PLAIN}\n")
    loaded = policy(path, '["web.internal:22", "web.internal:2222", "10.0.0.7:22"]')
    found = checks(tmp_path, loaded)["known_hosts of resource web"]
    assert not found.ok and found.needed_for == "resource"
    assert found.detail == f"{path} has no host key or @cert-authority entry for web.internal, [web.internal]:2222, " \
                           "10.0.0.7"
    assert found.fix == (f"check the server's fingerprint, then: ssh-keyscan -t ed25519 web.internal >> {path}; "
                         f"ssh-keyscan -t ed25519 -p 2222 web.internal >> {path}; "
                         f"ssh-keyscan -t ed25519 10.0.0.7 >> {path}")


def test_a_port_other_than_22_matches_its_bracketed_entry(tmp_path: Path) -> None:
    path = known_hosts(tmp_path, f"[web.internal]:2222 {PLAIN}\n")
    assert checks(tmp_path, policy(path, '["web.internal:2222"]'))["known_hosts of resource web"].ok
    assert not checks(tmp_path, policy(path, '["web.internal:2200"]'))["known_hosts of resource web"].ok


def test_the_host_key_alias_is_what_is_looked_up(tmp_path: Path) -> None:
    path = known_hosts(tmp_path, f"web.internal {PLAIN}\n")
    found = checks(tmp_path, policy(path, options=", host_key_alias: bastion"))["known_hosts of resource web"]
    assert not found.ok and "for bastion" in found.detail and f"ssh-keyscan -t ed25519 bastion >> {path}" in found.fix
    path.write_text(f"bastion {PLAIN}\n")
    assert checks(tmp_path, policy(path, options=", host_key_alias: bastion"))["known_hosts of resource web"].ok


def test_a_network_is_said_to_be_checked_when_dialled(tmp_path: Path) -> None:
    path = known_hosts(tmp_path, f"10.0.0.7 {PLAIN}\n")
    found = checks(tmp_path, policy(path, '["10.0.0.7/32:22", "10.1.0.0/24:22"]'))["known_hosts of resource web"]
    assert found.ok and "10.0.0.7" in found.detail and "not checked here: the addresses of 10.1.0.0/24" in found.detail


def test_a_missing_or_unparsable_file_is_a_failure_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    found = checks(tmp_path, policy(missing))["known_hosts of resource web"]
    assert not found.ok and str(missing) in found.detail and "cannot be read" in found.detail
    assert f"ssh-keyscan -t ed25519 web.internal >> {missing}" in found.fix
    bad = known_hosts(tmp_path, f"@trusted web.internal {PLAIN}\n")
    found = checks(tmp_path, policy(bad))["known_hosts of resource web"]
    assert not found.ok and str(bad) in found.detail and "not valid" in found.detail
    assert "fix or remove the entry" in found.fix


def test_run_checks_adds_the_ssh_checks_after_the_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "CHECKS", ())
    path = known_hosts(tmp_path, "")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(f'version: 1\nresources:\n  web: {{protocol: ssh, addresses: ["web.internal:22"], '
                           f'options: {{known_hosts: "{path}"}}}}\n' + REST)
    found = run_checks("bpf", policy_file, tmp_path / "state")
    names = [c.name for c in found]
    assert names[-3:] == [doctor.SSH_CA, doctor.SSH_TRUST, "known_hosts of resource web"]
    assert found[-3].ok and str(tmp_path / "state") in found[-3].detail and not found[-1].ok
    assert verdict(found)[0] is False
