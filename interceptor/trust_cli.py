"""`interceptor trust install | remove | show` and `interceptor kubeconfig`: the host set-up
agent-facing TLS and SSH need, done once by the sysadmin (as root).

The host CA (interceptor.certificates, in `<state_dir>/tls/`) issues the certificates the
enforcer presents to agents; `trust install` puts it into Debian's system store
(/usr/local/share/ca-certificates, then `update-ca-certificates`), and `kubeconfig` writes a
kubeconfig that names the real API server, trusts the host CA and carries no credentials:
the enforcer sends the resource's own upstream.

The SSH host CA (interceptor.ssh_certificates, in `<state_dir>/ssh/`) signs the host
certificates the enforcer presents for the policy's ssh resources; `trust install` writes an
`@cert-authority` line for their host patterns into OpenSSH's system-wide known_hosts
(/etc/ssh/ssh_known_hosts, which ssh reads by default: GlobalKnownHostsFile in
ssh_config(5)), in a block of its own between two marker comments that it replaces, and
`trust remove` takes out, leaving every other line as it was.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml
from cryptography import x509

from interceptor.certificates import HostCA, HostCAError, fingerprint, primary_group, write_file
from interceptor.config import Settings
from interceptor.policy.loader import PolicyError, load_policy
from interceptor.policy.model import AddressSpec, Policy
from interceptor.ssh_certificates import SshHostCA, SshHostCAError, key_path, known_hosts_patterns

STORE_NAME = "interceptor-host-ca"  # the certificate's name in the system store (.crt, and .pem in /etc/ssl/certs)
KUBERNETES = "kubernetes"  # the protocol a kubeconfig's resource must have
SSH = "ssh"  # the protocol whose resources the SSH host CA is trusted for
BLOCK_BEGIN = "# BEGIN interceptor SSH host CA: written by `interceptor trust install`, removed by `trust remove`"
BLOCK_END = "# END interceptor SSH host CA"


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be written as asked; str() says what to change."""


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Debian's system CA store under `root` ("/" for the host's own)."""

    root: Path

    @property
    def certificate(self) -> Path:
        """Where the host CA goes: update-ca-certificates adds every .crt of this directory."""
        return self.root / "usr/local/share/ca-certificates" / f"{STORE_NAME}.crt"

    @property
    def bundle(self) -> Path:
        """The bundle update-ca-certificates writes (what OpenSSL, curl and Go read)."""
        return self.root / "etc/ssl/certs/ca-certificates.crt"

    def update_command(self, fresh: bool) -> list[str]:
        """update-ca-certificates for this store; `fresh` rebuilds its links from scratch (so a
        removed certificate's links go too). Under another root every directory it reads or
        writes is that root's (and made when missing), its hooks included."""
        command = ["update-ca-certificates", *(["--fresh"] if fresh else [])]
        if self.root == Path("/"):
            return command
        return command + ["--certsconf", str(self._certsconf), "--certsdir", str(self._certsdir),
                          "--localcertsdir", str(self.certificate.parent), "--etccertsdir", str(self.bundle.parent),
                          "--hooksdir", str(self.root / "etc/ca-certificates/update.d")]

    @property
    def _certsconf(self) -> Path:
        return self.root / "etc/ca-certificates.conf"

    @property
    def _certsdir(self) -> Path:
        return self.root / "usr/share/ca-certificates"

    def drop_from_bundle(self, pem: str) -> None:
        """Take `pem` out of the bundle where update-ca-certificates left it: it rewrites the
        bundle only when some certificate remains, so removing the last one keeps it."""
        try:
            text = self.bundle.read_text()
        except FileNotFoundError:
            return
        block = pem.strip() + "\n"  # update-ca-certificates ends every certificate with a newline
        if block in text:
            write_file(self.bundle, text.replace(block, "").encode(), 0o644)

    def update(self, fresh: bool) -> None:
        """Run update-ca-certificates (under another root, first making the directories and
        the configuration file it reads); ClickException with its output when it fails."""
        if shutil.which("update-ca-certificates") is None:
            raise click.ClickException("update-ca-certificates not found: install Debian's ca-certificates package")
        if self.root != Path("/"):
            for directory in (self._certsdir, self.bundle.parent, self._certsconf.parent):
                directory.mkdir(parents=True, exist_ok=True)
            self._certsconf.touch()
        done = subprocess.run(self.update_command(fresh), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise click.ClickException(f"update-ca-certificates failed ({done.returncode}): "
                                       f"{(done.stderr or done.stdout).strip()}")


class KnownHostsError(ValueError):
    """A known_hosts file whose interceptor block cannot be found for sure; str() says where."""


@dataclass(frozen=True, slots=True)
class KnownHosts:
    """OpenSSH's system-wide known_hosts under `root` ("/" for the host's own) and the block
    of it interceptor manages: the lines from BLOCK_BEGIN to BLOCK_END."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / "etc/ssh/ssh_known_hosts"

    def block(self) -> str | None:
        """The block as it is in the file, markers included; None when the file or the block
        is absent. KnownHostsError for damaged markers, OSError when it cannot be read."""
        lines = self._lines() or []
        start, end = _block(lines, self.path)
        return None if start is None else b"".join(lines[start:end]).decode(errors="replace")

    def replace(self, lines: list[str] | None) -> bool:
        """Put `lines` in the file as the block (between the markers, where the block was or
        at the end), or take the block out for None; every other line stays as it was, byte for
        byte, and the file is rewritten (atomically, mode 0644) only when that changes it or its
        mode. True when the file changed. KnownHostsError for damaged markers, OSError when it
        cannot be read or written."""
        found = self._lines()
        if found is None and lines is None:
            return False
        old = found or []
        data = b"".join(old)
        start, end = _block(old, self.path)
        block = [] if lines is None else [f"{line}\n".encode() for line in (BLOCK_BEGIN, *lines, BLOCK_END)]
        if start is None:
            start = end = len(old)
            if old and not old[-1].endswith(b"\n"):
                old[-1] += b"\n"
        new = b"".join(old[:start] + block + old[end:])
        if new == data and stat.S_IMODE(self.path.stat().st_mode) == 0o644:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, new, 0o644)
        return True

    def _lines(self) -> list[bytes] | None:
        """The file's lines, each with its line end; None when there is no file."""
        try:
            return self.path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return None


def _block(lines: list[bytes], path: Path) -> tuple[int | None, int]:
    """(index of the BLOCK_BEGIN line, index after the BLOCK_END line) in `lines`; (None, 0)
    when neither marker is there. KnownHostsError unless there is exactly one of each, in order."""
    begin, end = BLOCK_BEGIN.encode(), BLOCK_END.encode()
    marks = [(n, line.rstrip(b"\r\n")) for n, line in enumerate(lines) if line.rstrip(b"\r\n") in (begin, end)]
    if not marks:
        return None, 0
    if [mark for _, mark in marks] != [begin, end]:
        where = ", ".join(str(n + 1) for n, _ in marks)
        raise KnownHostsError(f"{path}: interceptor's block is damaged (marker lines {where} should be one "
                              f"{BLOCK_BEGIN!r} and one {BLOCK_END!r} after it): fix or remove them by hand")
    return marks[0][0], marks[1][0] + 1


@dataclass(frozen=True, slots=True)
class SshTrust:
    """What the SSH host CA is to be trusted for: the policy's ssh `resources` (names), the
    known_hosts `patterns` of them all, each once, and `warnings` about what cannot be one."""

    resources: tuple[str, ...]
    patterns: tuple[str, ...]
    warnings: tuple[str, ...]


def ssh_trust(policy: Policy) -> SshTrust:
    """The SshTrust of `policy` (interceptor.ssh_certificates.known_hosts_patterns of each ssh
    resource). ValueError for a resource whose host_names are not valid names."""
    resources = [spec for spec in policy.resources.values() if spec.protocol == SSH]
    found = [known_hosts_patterns(spec) for spec in resources]
    return SshTrust(tuple(spec.name for spec in resources),
                    tuple(dict.fromkeys(p for patterns in found for p in patterns.patterns)),
                    tuple(w for patterns in found for w in patterns.warnings))


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _host_ca(ctx: click.Context) -> HostCA:
    """The host CA, created when the daemon has not yet (root only: its key is root's)."""
    try:
        return HostCA.open(_settings(ctx).state_dir)
    except HostCAError as exc:
        raise click.ClickException(f"{exc} (run as root)" if os.geteuid() else str(exc)) from exc


_CLIENTS = """\b
Clients that do not read the system store:
  python requests uses certifi: REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
  Node.js: NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  (curl, OpenSSL, Go programs such as kubectl, and python's ssl read it.)"""

_ROOT = click.option("--root", type=click.Path(file_okay=False, path_type=Path), envvar="INTERCEPTOR_TRUST_ROOT",
                     default=Path("/"), show_default=True,
                     help="The system store and etc/ssh/ssh_known_hosts under this directory instead (an image "
                          "being built; tests).")


@click.group("trust", help=f"""The host CAs agent-facing TLS and SSH are issued by, in this host's trust
store and ssh_known_hosts.

The enforcer terminates agents' TLS with certificates of a CA kept in the daemon's state
directory; agents trust them once the CA is in the system store. It answers agents' SSH with
host certificates of an SSH host CA kept there too; agents' ssh trusts them once
/etc/ssh/ssh_known_hosts has an @cert-authority line for the policy's ssh hosts.

{_CLIENTS}""")
def trust() -> None:
    pass


@trust.command(help=f"""Add the host CA to the system store (Debian): copy it to
/usr/local/share/ca-certificates/{STORE_NAME}.crt and run update-ca-certificates. Then write
(or replace) interceptor's block in /etc/ssh/ssh_known_hosts: an @cert-authority line trusting
the SSH host CA for the hosts of the policy's ssh resources (their hostnames, addresses,
IPv4 networks as wildcards, and their host_names option); no block when the policy has no
ssh resource. Creates the CAs when the daemon has not yet.

{_CLIENTS}""")
@_ROOT
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Policy file whose ssh resources the SSH host CA is trusted for [default: the settings' policy].")
@click.pass_context
def install(ctx: click.Context, root: Path, policy: Path | None) -> None:
    ca = _host_ca(ctx)
    store = TrustStore(root)
    try:
        store.certificate.parent.mkdir(parents=True, exist_ok=True)
        write_file(store.certificate, ca.certificate_pem, 0o644)
    except OSError as exc:
        raise click.ClickException(f"cannot write {store.certificate}: {exc.strerror} (run as root)") from exc
    store.update(fresh=False)
    click.echo(f"installed the host CA (SHA-256 {fingerprint(ca.certificate)}) as {store.certificate}; "
               f"{store.bundle} trusts it")
    _install_ssh(ctx, KnownHosts(root), policy or _settings(ctx).policy)


def _install_ssh(ctx: click.Context, known: KnownHosts, policy: Path) -> None:
    """The SSH half of `trust install`: the block for the policy's ssh resources, or none (a
    missing policy file has none)."""
    try:
        wanted = ssh_trust(load_policy(policy)) if policy.exists() else SshTrust((), (), ())
    except ValueError as exc:  # PolicyError too
        raise click.ClickException(f"{exc}\nthe SSH host CA is not installed (the TLS host CA is): fix the policy "
                                   "and run `interceptor trust install` again") from exc
    for warning in wanted.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not wanted.patterns:
        why = (f"no policy file {policy}" if not policy.exists() else
               f"the policy {policy} has no ssh resource" if not wanted.resources else
               f"the ssh resources of {policy} have no host pattern")
        removed = _replace(known, None)
        click.echo(f"{why}: no SSH host CA line in {known.path}" + ("; the old one removed" if removed else ""))
        return
    ca = _ssh_host_ca(ctx, create=True)
    _replace(known, [f"# the ssh resources {', '.join(wanted.resources)} of {policy}",
                     ca.known_hosts_line(wanted.patterns)])
    click.echo(f"installed the SSH host CA ({ca.key.get_fingerprint('sha256')}) in {known.path} for "
               f"{', '.join(wanted.patterns)}")


def _ssh_host_ca(ctx: click.Context, *, create: bool) -> SshHostCA:
    """The SSH host CA, created when `create` and the daemon has not yet (root only)."""
    try:
        return SshHostCA.open(_settings(ctx).state_dir, create=create)
    except SshHostCAError as exc:
        raise click.ClickException(f"{exc} (run as root)" if os.geteuid() else str(exc)) from exc


def _replace(known: KnownHosts, lines: list[str] | None) -> bool:
    try:
        return known.replace(lines)
    except KnownHostsError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot write {known.path}: {exc.strerror or exc} (run as root)") from exc


@trust.command(help="""Take the host CA out of the system store and interceptor's block out of
/etc/ssh/ssh_known_hosts (undoes `trust install`); the CAs themselves stay.""")
@_ROOT
def remove(root: Path) -> None:
    store = TrustStore(root)
    try:
        pem = store.certificate.read_text()
        store.certificate.unlink()
    except FileNotFoundError:
        click.echo(f"{store.certificate} was not installed")
        pem = None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot remove {store.certificate}: {exc} (run as root)") from exc
    store.update(fresh=True)
    if pem is not None:
        store.drop_from_bundle(pem)
    click.echo(f"the host CA is no longer in {store.bundle}")
    known = KnownHosts(root)
    removed = _replace(known, None)
    click.echo(f"the SSH host CA is no longer in {known.path}" if removed else f"{known.path} had no SSH host CA block")


@trust.command(help="""Print the host CA certificate (PEM) and its SHA-256 fingerprint, then the
SSH host CA's public key and fingerprint and interceptor's block in /etc/ssh/ssh_known_hosts.""")
@_ROOT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, root: Path, as_json: bool) -> None:
    path = _settings(ctx).state_dir / "tls" / "ca.pem"
    try:
        pem = path.read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
    except FileNotFoundError as exc:
        raise click.ClickException(f"no host CA yet ({path}): the daemon creates it when it starts, "
                                   "or run `interceptor trust install`") from exc
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the host CA {path}: {exc}") from exc
    data = {"path": str(path), "subject": certificate.subject.rfc4514_string(), "sha256": fingerprint(certificate),
            "not_after": certificate.not_valid_after_utc.isoformat(), "pem": pem.decode()}
    ssh = _ssh_shown(ctx, KnownHosts(root))
    if as_json:
        click.echo(json.dumps({**data, "ssh": ssh}, indent=2))
        return
    click.echo(pem.decode(), nl=False)
    click.echo(f"subject: {data['subject']}\nexpires: {data['not_after']}\nSHA-256 fingerprint: {data['sha256']}")
    if ssh["public_key"] is None:
        click.echo("SSH host CA: none yet (the daemon creates it when it starts, or `interceptor trust install`)")
    else:
        click.echo(f"SSH host CA: {ssh['public_key']}\nSSH host CA fingerprint: {ssh['sha256']}")
    if ssh["block"] is None:
        click.echo(f"{ssh['known_hosts']}: no SSH host CA block (`interceptor trust install` writes one for the "
                   "policy's ssh resources)")
    else:
        click.echo(f"{ssh['known_hosts']}:\n{ssh['block']}", nl=False)


def _ssh_shown(ctx: click.Context, known: KnownHosts) -> dict[str, str | None]:
    """What `trust show` says of SSH: the CA's `public_key` line and its `sha256` fingerprint
    (None before there is a CA), the `known_hosts` file and interceptor's `block` in it (None
    when absent)."""
    ca = _ssh_host_ca(ctx, create=False) if key_path(_settings(ctx).state_dir).exists() else None
    try:
        block = known.block()
    except (KnownHostsError, OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {known.path}: {exc}") from exc
    return {"public_key": ca.public_key_line() if ca else None,
            "sha256": ca.key.get_fingerprint("sha256") if ca else None,
            "known_hosts": str(known.path), "block": block}


def server_url(address: AddressSpec) -> str:
    """https://host:port of a resource address; KubeconfigError for a network of more than
    one address (no host to name)."""
    if address.hostname is not None:
        host = address.hostname
    elif address.network is not None and address.network.num_addresses == 1:
        ip = address.network.network_address
        host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    else:
        raise KubeconfigError(f"the resource's first address is the network {address.network}: give --server "
                              "https://HOST:PORT")
    return f"https://{host}:{address.port}"


def _checked_server(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname or parsed.username or parsed.password or parsed.query:
        raise KubeconfigError(f"--server {url!r}: give https://HOST[:PORT][/PATH] (no credentials, no query)")
    return url


def kubeconfig_for(policy: Policy, agent: str, resource: str, ca_pem: bytes, server: str | None) -> dict[str, Any]:
    """The kubeconfig (kubectl's `Config`, v1) for `agent` on the kubernetes `resource`: the
    API server at `server` or the resource's first address, the host CA as its authority, a
    context and current-context named after the resource, and a user with no credentials:
    only a username, the agent's name, because kubectl prompts for one on a terminal (and
    fails without one) when a user has nothing to identify it (client-go's clientcmd,
    canIdentifyUser); it sends `Authorization: Basic` of the name and an empty password,
    which the enforcer drops with every agent Authorization header.
    KubeconfigError for an unknown agent or resource, or a resource of another protocol."""
    if agent not in policy.agents:
        raise KubeconfigError(f"no agent {agent!r} in {policy.source} (agents: {', '.join(sorted(policy.agents))})")
    spec = policy.resources.get(resource)
    if spec is None:
        raise KubeconfigError(f"no resource {resource!r} in {policy.source} "
                              f"(resources: {', '.join(sorted(policy.resources))})")
    if spec.protocol != KUBERNETES:
        raise KubeconfigError(f"resource {resource!r} has protocol {spec.protocol}, not {KUBERNETES}")
    url = _checked_server(server) if server is not None else server_url(spec.addresses[0])
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": resource, "cluster": {
            "server": url, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "contexts": [{"name": resource, "context": {"cluster": resource, "user": agent}}],
        "current-context": resource,
        "preferences": {},
        "users": [{"name": agent, "user": {"username": agent}}],
    }


@click.command(help="""Write a kubeconfig for agent NAME on the kubernetes resource R: the real API
server's URL (the resource's first address, or --server), the host CA as its certificate
authority, and no credentials (the enforcer sends the resource's; the user has only a name,
so that kubectl does not prompt for one). With -o the file is mode 0600 and owned by the
agent's first uid, when the agent has uids (as is its directory, when -o makes it).""")
@click.option("--agent", required=True, help="Agent name from the policy.")
@click.option("--resource", required=True, help="A resource of the policy with protocol kubernetes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (replaced atomically) instead of standard output.")
@click.option("--server", help="The API server's URL [default: https://<the resource's first address>].")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Policy file [default: the settings' policy].")
@click.pass_context
def kubeconfig(ctx: click.Context, agent: str, resource: str, output: Path | None, server: str | None,
               policy: Path | None) -> None:
    try:
        loaded = load_policy(policy or _settings(ctx).policy)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        config = kubeconfig_for(loaded, agent, resource, _host_ca(ctx).certificate_pem, server)
    except KubeconfigError as exc:
        raise click.ClickException(str(exc)) from exc
    text = (f"# kubeconfig of agent {agent} for resource {resource}, written by `interceptor kubeconfig`.\n"
            "# No credentials: the enforcer authenticates to the API server with the resource's own.\n"
            "# The username only keeps kubectl from prompting for one; the enforcer drops what it sends.\n"
            + yaml.safe_dump(config, sort_keys=False))
    if output is None:
        click.echo(text, nl=False)
        return
    uids = loaded.agents[agent].uids
    uid = uids[0] if uids else None
    try:
        _make_parent(output.parent, uid)
        write_file(output, text.encode(), 0o600, uid)
    except OSError as exc:
        owner = f" owned by uid {uid}" if uid is not None else ""
        raise click.ClickException(f"cannot write {output}{owner}: {exc.strerror}") from exc
    click.echo(f"wrote {output}" + (f" (mode 0600, owner uid {uid})" if uid is not None else " (mode 0600)"))


def _make_parent(directory: Path, uid: int | None) -> None:
    """The file's directory when only it is missing (~/.kube on a fresh account): mode 0700,
    owned by `uid` when given (kubectl keeps its cache there). A deeper missing path is an
    error, not guessed."""
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    if uid is not None:
        os.chown(directory, uid, primary_group(uid))
