"""The SSH host CA (interceptor.ssh_certificates): its files and their permissions, reloading
and racing creators, host certificates read back by OpenSSH's ssh-keygen (type, principals,
validity, key id, signing CA), their cache and renewal on an injected clock, principals and
patterns refused, and the known_hosts patterns of a resource found by `ssh-keygen -F`."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import asyncssh
import pytest

from interceptor.daemon import open_recordings, open_ssh_host_ca
from interceptor.policy.model import AddressSpec, ResourceSpec
from interceptor.ssh_certificates import (
    BACKDATE, RENEW_BEFORE, VALIDITY, SshHostCA, SshHostCAError, host_name, known_hosts_patterns, resource_names,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH's ssh-keygen")

NOW = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(tmp_path: Path, clock: Clock) -> SshHostCA:
    return SshHostCA.open(tmp_path, clock=clock)


def keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=True).stdout


def listing(tmp_path: Path, certificate: asyncssh.SSHCertificate) -> str:
    """`ssh-keygen -L` of the certificate: what OpenSSH reads in it."""
    path = tmp_path / "host-cert.pub"
    certificate.write_certificate(str(path))
    return keygen("-L", "-f", str(path))


def fingerprint(tmp_path: Path, public_line: str) -> str:
    path = tmp_path / "ca.pub"
    path.write_text(public_line + "\n")
    return keygen("-l", "-f", str(path)).split()[1]


def address(where: str, port: int = 22) -> AddressSpec:
    try:
        return AddressSpec(ipaddress.ip_network(where), None, port)
    except ValueError:
        return AddressSpec(None, where, port)


def resource(*addresses: AddressSpec, host_names: object = None) -> ResourceSpec:
    options = None if host_names is None else {"host_names": host_names}
    return ResourceSpec("web", "ssh", addresses, options=options)


# --- the CA's files -------------------------------------------------------------------


def test_creates_the_key_with_its_modes(tmp_path: Path, ca: SshHostCA) -> None:
    directory = tmp_path / "ssh"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "host_ca").stat().st_mode) == 0o600
    assert os.listdir(directory) == ["host_ca"]  # no temporary file left behind
    public = keygen("-y", "-f", str(directory / "host_ca")).split()
    assert public[0] == "ssh-ed25519" and ca.public_key_line().split() == [*public[:2], "interceptor-ssh-host-ca"]


def test_reopening_loads_the_same_key(tmp_path: Path, ca: SshHostCA) -> None:
    assert SshHostCA.open(tmp_path).public_key_line() == ca.public_key_line()
    assert SshHostCA.open(tmp_path, create=False).public_key_line() == ca.public_key_line()


def test_without_create_an_absent_ca_is_an_error_and_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(SshHostCAError, match=r"no SSH host CA yet \(.*/ssh/host_ca\).*interceptor trust install"):
        SshHostCA.open(tmp_path / "state", create=False)
    assert not (tmp_path / "state").exists()


def test_creators_racing_end_with_one_key(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    lines: list[str] = []

    def create() -> None:
        start.wait()
        lines.append(SshHostCA.open(tmp_path).public_key_line())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines) == 8 and len(set(lines)) == 1
    assert os.listdir(tmp_path / "ssh") == ["host_ca"]


@pytest.mark.parametrize("path, mode, message", [
    ("ssh/host_ca", 0o640, "host_ca has mode 0640: it must be readable by root only"),
    ("ssh/host_ca", 0o604, "chmod 0600 .*/ssh/host_ca$"),
    ("ssh", 0o750, "ssh has mode 0750: it must be readable by root only.*chmod 0700"),
])
def test_modes_wider_than_allowed_are_refused(tmp_path: Path, ca: SshHostCA, path: str, mode: int,
                                              message: str) -> None:
    os.chmod(tmp_path / path, mode)
    with pytest.raises(SshHostCAError, match=message):
        SshHostCA.open(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("path", ["ssh/host_ca", "ssh"])
def test_files_of_another_owner_are_refused(tmp_path: Path, ca: SshHostCA, path: str) -> None:
    os.chown(tmp_path / path, 65534, -1)
    with pytest.raises(SshHostCAError, match="owned by uid 65534, not 0 .*chown 0 "):
        SshHostCA.open(tmp_path)


def test_a_symlinked_key_is_refused(tmp_path: Path, ca: SshHostCA) -> None:
    key = tmp_path / "ssh" / "host_ca"
    key.rename(tmp_path / "elsewhere")
    key.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SshHostCAError, match="host_ca is a symlink: remove it"):
        SshHostCA.open(tmp_path)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "ssh").symlink_to(tmp_path / "real")
    with pytest.raises(SshHostCAError, match="ssh is not a directory"):
        SshHostCA.open(tmp_path)


def test_a_directory_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file")
    with pytest.raises(SshHostCAError, match="cannot create .*/state: File exists"):
        SshHostCA.open(tmp_path / "state")


def test_a_key_that_is_not_an_openssh_key_is_refused(tmp_path: Path, ca: SshHostCA) -> None:
    key = tmp_path / "ssh" / "host_ca"
    key.write_text("not a key\n")
    with pytest.raises(SshHostCAError, match="host_ca is not an OpenSSH private key .*: remove .*/host_ca to make a "
                                             "new SSH host CA"):
        SshHostCA.open(tmp_path)


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path, ca: SshHostCA) -> None:
    key = tmp_path / "ssh" / "host_ca"
    key.write_bytes(asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_private_key())
    with pytest.raises(SshHostCAError, match="holds a ecdsa-sha2-nistp256 key, not ssh-ed25519: remove"):
        SshHostCA.open(tmp_path)


def test_open_ssh_host_ca_leaves_ssh_off_when_the_ca_cannot_be_loaded(tmp_path: Path, ca: SshHostCA,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(open_ssh_host_ca(tmp_path), SshHostCA)
    os.chmod(tmp_path / "ssh" / "host_ca", 0o644)
    assert open_ssh_host_ca(tmp_path) is None
    assert "SSH host certificates disabled, ssh flows will be refused" in caplog.text and "mode 0644" in caplog.text


def test_the_recordings_directory_is_made_and_kept_root_only(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    recordings = open_recordings(tmp_path)
    assert recordings == tmp_path / "recordings" and stat.S_IMODE(recordings.stat().st_mode) == 0o700
    recordings.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        assert open_recordings(tmp_path) == recordings
    assert stat.S_IMODE(recordings.stat().st_mode) == 0o700 and "was mode 0755; narrowed to 0700" in caplog.text
    recordings.rmdir()
    recordings.symlink_to(tmp_path)
    assert open_recordings(tmp_path) is None
    assert "shell recording disabled" in caplog.text and "recordings is not a directory" in caplog.text


# --- host certificates ----------------------------------------------------------------


def test_a_host_certificate_as_openssh_reads_it(tmp_path: Path, ca: SshHostCA) -> None:
    key, certificate = ca.server_host_key(["Web1.Internal", "10.0.0.5"])
    text = listing(tmp_path, certificate)
    assert "Type: ssh-ed25519-cert-v01@openssh.com host certificate" in text
    assert re.search(r"Principals: \n\s+10\.0\.0\.5\n\s+web1\.internal\n\s+Critical", text)
    start = datetime.datetime.fromtimestamp(NOW - BACKDATE).strftime("%Y-%m-%dT%H:%M:%S")
    end = datetime.datetime.fromtimestamp(NOW + VALIDITY).strftime("%Y-%m-%dT%H:%M:%S")
    assert f"Valid: from {start} to {end}" in text
    assert 'Key ID: "interceptor host certificate for 10.0.0.5,web1.internal"' in text
    assert f"Signing CA: ED25519 {fingerprint(tmp_path, ca.public_key_line())} (using ssh-ed25519)" in text
    assert certificate.key.public_data == key.public_data


def test_certificates_are_cached_per_set_of_principals(ca: SshHostCA) -> None:
    key, first = ca.server_host_key(["web1.internal", "10.0.0.5"])
    assert ca.server_host_key(["10.0.0.5", "WEB1.internal", "10.0.0.5"]) == (key, first)
    other_key, other = ca.server_host_key(["web2.internal"])
    assert other is not first and other_key is key  # one host key per run
    assert ca.server_host_key(["web1.internal"])[1] is not first


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path, clock: Clock) -> None:
    ca = SshHostCA.open(tmp_path, clock=clock, cache_size=2)
    a, b = ca.server_host_key(["a"])[1], ca.server_host_key(["b"])[1]
    assert ca.server_host_key(["a"])[1] is a  # now b is the least recently used
    ca.server_host_key(["c"])
    assert ca.server_host_key(["a"])[1] is a and ca.server_host_key(["b"])[1] is not b


def test_a_certificate_is_renewed_a_day_before_it_expires(tmp_path: Path, ca: SshHostCA, clock: Clock) -> None:
    first = ca.server_host_key(["web"])[1]
    clock.now = NOW + VALIDITY - RENEW_BEFORE - 1
    assert ca.server_host_key(["web"])[1] is first
    clock.now += 1
    renewed = ca.server_host_key(["web"])[1]
    end = datetime.datetime.fromtimestamp(clock.now + VALIDITY).strftime("%Y-%m-%dT%H:%M:%S")
    assert renewed is not first and f" to {end}\n" in listing(tmp_path, renewed)


def test_a_certificate_is_reissued_when_the_clock_goes_back(ca: SshHostCA, clock: Clock) -> None:
    first = ca.server_host_key(["web"])[1]
    clock.now = NOW - 1
    assert ca.server_host_key(["web"])[1] is not first


@pytest.mark.parametrize("principals", [[], ["web1", ""], ["web 1"], ["a,b"], ["web\n1"], ["!web"], ["wéb"],
                                        ["[web]:22"], ["x" * 254], ["*.web"], ["web?"], ["*"]])
def test_bad_principals_are_refused(ca: SshHostCA, principals: list[str]) -> None:
    with pytest.raises(ValueError):
        ca.server_host_key(principals)


# --- known_hosts ----------------------------------------------------------------------


def test_the_known_hosts_line_is_found_by_ssh_keygen(tmp_path: Path, ca: SshHostCA) -> None:
    line = ca.known_hosts_line(["web1.internal", "[10.1.0.*]:2222", "*.web.internal"])
    assert line == f"@cert-authority web1.internal,[10.1.0.*]:2222,*.web.internal {ca.public_key_line()}"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(line + "\n")
    for host in ("web1.internal", "[10.1.0.7]:2222", "db.web.internal"):
        found = keygen("-F", host, "-f", str(known_hosts))
        assert f"# Host {host} found: line 1 CA" in found and line in found
    for host in ("web2.internal", "10.1.0.7", "[10.1.0.7]:22"):
        assert subprocess.run(["ssh-keygen", "-F", host, "-f", str(known_hosts)], capture_output=True).returncode == 1


@pytest.mark.parametrize("patterns", [[], ["web1 web2"], ["web1,web2"], ["Web1"], ["[web1]:0"], ["[web1]:65536"],
                                      ["!web1"], ["|1|hashed"], ["#web"], ["[web1]"], ["[web1]:"],
                                      ["[[web1]]:22"], ["web1", ""]])
def test_bad_known_hosts_patterns_are_refused(ca: SshHostCA, patterns: list[str]) -> None:
    with pytest.raises(ValueError):
        ca.known_hosts_line(patterns)


@pytest.mark.parametrize("addresses, host_names, patterns", [
    ([address("web1.internal")], None, ["web1.internal"]),
    ([address("web1.internal", 2222)], None, ["[web1.internal]:2222"]),
    ([address("10.0.0.5"), address("fd00::5")], None, ["10.0.0.5", "fd00::5"]),
    ([address("10.0.0.0/8")], None, ["10.*"]),
    ([address("10.1.0.0/16")], None, ["10.1.*"]),
    ([address("10.1.2.0/24", 2222)], None, ["[10.1.2.*]:2222"]),
    ([address("10.1.0.0/23")], None, ["10.1.0.*", "10.1.1.*"]),
    ([address("10.1.2.0/30")], None, ["10.1.2.0", "10.1.2.1", "10.1.2.2", "10.1.2.3"]),
    ([address("10.128.0.0/9")], None, [f"10.{n}.*" for n in range(128, 256)]),
    ([address("web1.internal"), address("web1.internal", 2222)], ["Web1", "web1.corp", "web1.internal"],
     ["web1.internal", "[web1.internal]:2222", "web1", "[web1]:2222", "web1.corp", "[web1.corp]:2222"]),
])
def test_known_hosts_patterns(addresses: list[AddressSpec], host_names: list[str] | None,
                              patterns: list[str]) -> None:
    found = known_hosts_patterns(resource(*addresses, host_names=host_names))
    assert found.patterns == tuple(patterns) and found.warnings == ()


@pytest.mark.parametrize("network", ["10.0.0.0/7", "0.0.0.0/0", "fd00::/64"])
def test_a_network_without_patterns_is_a_warning_naming_the_fix(network: str) -> None:
    found = known_hosts_patterns(resource(address(network), address("web1.internal"), host_names=["web1"]))
    assert found.patterns == ("web1.internal", "web1")
    assert len(found.warnings) == 1
    assert f"resource web: the network {network} cannot be written as known_hosts patterns" in found.warnings[0]
    assert "`host_names`" in found.warnings[0]


def test_resource_names_are_the_hostnames_then_host_names() -> None:
    spec = resource(address("web1.internal"), address("10.0.0.5"), address("web1.internal", 2222),
                    host_names=["WEB1", "web1.internal"])
    assert resource_names(spec) == ("web1.internal", "web1")
    assert resource_names(resource(address("10.0.0.5"))) == ()


@pytest.mark.parametrize("host_names, message", [
    ("web1", "the host_names option must be a list of names"),
    ([1], "the host_names option must be a list of names"),
    (["web 1"], "resource web: host_names: 'web 1' is not a hostname"),
    (["*.web.internal"], "resource web: host_names: '*.web.internal' is not a hostname or IP address (no wildcards: "
                         "ssh matches the names of a host certificate exactly, so list each name)"),
    (["web1\n@cert-authority * ssh-ed25519 AAAA"], "resource web: host_names: "),
])
def test_bad_host_names_are_refused(host_names: object, message: str) -> None:
    spec = resource(address("web1.internal"), host_names=host_names)
    for function in (resource_names, known_hosts_patterns):
        with pytest.raises(ValueError, match=re.escape(message)):
            function(spec)


def test_host_name_lowercases() -> None:
    assert host_name("Web1.Internal") == "web1.internal" and host_name("FD00::5") == "fd00::5"
