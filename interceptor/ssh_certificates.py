"""Agent-facing SSH: the SSH host CA, the host certificates it signs for the hosts the
enforcer stands in for, and the known_hosts patterns agents trust it for.

OpenSSH clients accept a host key certified by a CA that a known_hosts file names in an
`@cert-authority` line for the host (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT"; certificates:
OpenSSH PROTOCOL.certkeys). `interceptor trust install` writes that line into the system
ssh_known_hosts; the ssh handler presents `server_host_key(principals)`.

The CA lives in `<state_dir>/ssh/`:

    ssh/          0700, the daemon's user (root)
    ssh/host_ca   0600  the CA's Ed25519 private key, OpenSSH format

The key file is created in one atomic step (written to a temporary file with O_EXCL, then
hard-linked into place, which fails if another process got there first), so two processes
creating the CA at once end up with the same one. A key file or directory that is a symlink,
owned by another user or open to group or others is refused.

Host certificates (type host, one per set of principals) are valid from BACKDATE ago for
VALIDITY and cached (least recently used first out) until RENEW_BEFORE before they expire,
or until the clock goes back past their issue. Every certificate certifies the same host
key, made once per process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from interceptor.certificates import IssuedCache, PrivateFiles, create_once
from interceptor.policy.model import ResourceSpec

Clock = Callable[[], float]  # now, seconds since the epoch
KEY_ALGORITHM = "ssh-ed25519"
COMMENT = "interceptor-ssh-host-ca"  # the CA key's comment in the known_hosts line
VALIDITY = 7 * 86400  # seconds a host certificate is valid for
BACKDATE = 300  # seconds: tolerates agents whose clocks are a little behind
RENEW_BEFORE = 86400  # seconds: a cached certificate is reissued once less than this is left
CACHE_SIZE = 1024  # principal sets whose certificates are kept
SSH_PORT = 22  # known_hosts names other ports as [host]:port
# A principal: a hostname or IP address, lowercase. OpenSSH's client compares a host
# certificate's principals with the host name exactly (a wildcard principal is "not a listed
# principal" to OpenSSH 9.2), so principals carry no wildcards.
_NAME = re.compile(r"[a-z0-9_.:%-]{1,253}")
# A known_hosts host pattern: a name with the wildcards `*` and `?` (sshd(8), "SSH_KNOWN_HOSTS
# FILE FORMAT"; "PATTERNS" in ssh_config(5)), optionally `[pattern]:port`; no spaces, commas,
# negation (`!`), hashed names (`|`) or comments (`#`).
_PATTERN = re.compile(r"[a-z0-9_.:%*?-]{1,253}|\[[a-z0-9_.:%*?-]{1,253}\]:(?!0)[0-9]{1,5}")


class SshHostCAError(Exception):
    """The SSH host CA cannot be created or loaded; str() says what is wrong and what to do."""


_PRIVATE = PrivateFiles(SshHostCAError, "the SSH host CA", "the SSH host CA's key signs host keys agents' ssh trusts")


def host_name(name: str) -> str:
    """`name` as OpenSSH compares it with a certificate's principals and known_hosts patterns:
    lowercased (ssh(1) lowercases the host it is given). ValueError unless it is a hostname or
    an IP address of at most 253 characters (no wildcards: OpenSSH matches host certificate
    principals exactly)."""
    lowered = name.lower()
    if not lowered.isascii() or not _NAME.fullmatch(lowered):
        raise ValueError(f"{name[:300]!r} is not a hostname or IP address (no wildcards: ssh matches the names "
                         "of a host certificate exactly, so list each name)")
    return lowered


def resource_names(resource: ResourceSpec) -> tuple[str, ...]:
    """The names agents reach an ssh `resource` by: the hostnames of its addresses, then its
    `host_names` option (a list of names), each once, in that order.
    ValueError (naming the resource) for a `host_names` that is not a list of valid names."""
    return tuple(dict.fromkeys([*_hostnames(resource), *_extra_names(resource)]))


def _hostnames(resource: ResourceSpec) -> list[str]:
    return [a.hostname for a in resource.addresses if a.hostname is not None]


def _extra_names(resource: ResourceSpec) -> list[str]:
    """The resource's `host_names` option, each checked by host_name."""
    extra = (resource.options or {}).get("host_names") or []
    if not isinstance(extra, (list, tuple)) or not all(isinstance(name, str) for name in extra):
        raise ValueError(f"resource {resource.name}: the host_names option must be a list of names")
    try:
        return [host_name(name) for name in extra]
    except ValueError as exc:
        raise ValueError(f"resource {resource.name}: host_names: {exc}") from None


@dataclass(frozen=True, slots=True)
class HostPatterns:
    """The known_hosts patterns of one resource, and what about it cannot be patterns."""

    patterns: tuple[str, ...]
    warnings: tuple[str, ...]


def known_hosts_patterns(resource: ResourceSpec) -> HostPatterns:
    """The known_hosts host patterns (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT") matching what an
    ssh client looks up for `resource`: its hostnames, single IP addresses and `host_names`
    (see resource_names), as `[host]:port` for a port other than 22, once per port of the
    resource for a `host_names` entry. An IPv4 network of prefix length 8 to 32 becomes
    wildcards on whole octets (10.1.0.0/16: `10.1.*`; 10.1.0.0/23: `10.1.0.*`, `10.1.1.*`;
    10.1.0.0/30: its four addresses), at most 128 of them; any other network (a shorter IPv4
    prefix, IPv6 other than a single address) has no pattern: a warning says so and what to
    add under `host_names`. (`10.1.*` also matches a hostname such as 10.1.example: the CA
    still certifies only the names the enforcer presents.) A network's patterns cover agents
    that dial its addresses; a name agents use for one of its hosts must be in `host_names`,
    as the host certificate must list it too. ValueError as resource_names."""
    hosts: list[tuple[str, int]] = []
    warnings: list[str] = []
    for address in resource.addresses:
        if address.hostname is not None:
            hosts.append((address.hostname, address.port))
            continue
        assert address.network is not None  # an address is a hostname or a network
        octets = _octet_patterns(address.network)
        if octets is None:
            warnings.append(f"resource {resource.name}: the network {address.network} cannot be written as "
                            "known_hosts patterns (only single addresses and IPv4 networks of prefix length 8 "
                            "or longer can): list the names or addresses agents connect to in its `host_names` "
                            "option, or agents' ssh will not trust the enforcer's host key for them")
        hosts += [(pattern, address.port) for pattern in octets or ()]
    ports = dict.fromkeys(a.port for a in resource.addresses)
    hosts += [(name, port) for name in _extra_names(resource) for port in ports]
    patterns = (host if port == SSH_PORT else f"[{host}]:{port}" for host, port in hosts)
    return HostPatterns(tuple(dict.fromkeys(patterns)), tuple(warnings))


def _octet_patterns(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str] | None:
    """Patterns matching exactly the addresses of `network` written as dotted quads; None when
    there is no short exact list."""
    if network.num_addresses == 1:
        return [str(network.network_address)]
    if not isinstance(network, ipaddress.IPv4Network) or network.prefixlen < 8:
        return None
    whole = -(-network.prefixlen // 8)  # octets fixed once split at the next octet boundary
    return [".".join(str(subnet.network_address).split(".")[:whole] + ["*"] * (whole < 4))
            for subnet in network.subnets(new_prefix=whole * 8)]


def key_path(state_dir: Path) -> Path:
    """Where the SSH host CA of `state_dir` keeps its key."""
    return state_dir / "ssh" / "host_ca"


class SshHostCA:
    """The SSH host CA of one state directory and the host certificates it signs; thread-safe.
    Build it with `SshHostCA.open`."""

    def __init__(self, key: asyncssh.SSHKey, *, clock: Clock = time.time, cache_size: int = CACHE_SIZE) -> None:
        self.key = key
        self.host_key = asyncssh.generate_private_key(KEY_ALGORITHM)
        self._issued: IssuedCache[tuple[str, ...], asyncssh.SSHCertificate, float] = IssuedCache(clock, cache_size)

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True, clock: Clock = time.time,
             cache_size: int = CACHE_SIZE) -> SshHostCA:
        """The SSH host CA in `<state_dir>/ssh/host_ca`, created there when absent and `create`
        (see the module's docstring for the layout). SshHostCAError when it is absent and not
        to be created, or a file or directory has the wrong type, owner or mode, cannot be read
        or written, or does not hold one Ed25519 private key."""
        path = key_path(state_dir)
        if not create and not os.path.lexists(path):
            raise SshHostCAError(f"no SSH host CA yet ({path}): the daemon creates it when it starts, "
                                 "or run `interceptor trust install`")
        if create:
            _PRIVATE.directory(path.parent, 0o700, 0o077)
            _create(path)
        return cls(_load(path), clock=clock, cache_size=cache_size)

    def public_key_line(self) -> str:
        """The CA's public key in OpenSSH's one-line format: `ssh-ed25519 BASE64 COMMENT`."""
        algorithm, data = self.key.export_public_key("openssh").decode().split()[:2]
        return f"{algorithm} {data} {COMMENT}"

    def known_hosts_line(self, patterns: Sequence[str]) -> str:
        """The known_hosts line trusting this CA for hosts matching `patterns` (sshd(8),
        "SSH_KNOWN_HOSTS FILE FORMAT"): `@cert-authority PAT1,PAT2 ssh-ed25519 BASE64 COMMENT`.
        ValueError when `patterns` is empty or one is not a lowercase name, address or pattern
        of them (`*`, `?`), optionally as `[host]:port`."""
        if not patterns:
            raise ValueError("a @cert-authority line needs at least one host pattern")
        for pattern in patterns:
            port = pattern.rpartition("]:")[2] if pattern.startswith("[") else "1"
            if not _PATTERN.fullmatch(pattern) or int(port) > 65535:
                raise ValueError(f"{pattern!r} is not a lowercase known_hosts host pattern")
        return f"@cert-authority {','.join(patterns)} {self.public_key_line()}"

    def server_host_key(self, principals: Sequence[str]) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """The host key and a host certificate for it signed by the CA, valid for `principals`
        (hostnames and IP addresses, lowercased, each once; a certificate without principals
        would be valid for every host, so none is refused) from BACKDATE ago for VALIDITY
        seconds; the same certificate for the same set until it is renewed. ValueError for no
        principals or one that host_name refuses."""
        names = tuple(sorted({host_name(p) for p in principals}))
        if not names:
            raise ValueError("a host certificate needs at least one principal")
        return self.host_key, self._issued.get(names, self._issue)

    def _issue(self, names: tuple[str, ...], now: float) -> tuple[asyncssh.SSHCertificate, float]:
        valid_before = int(now) + VALIDITY
        certificate = self.key.generate_host_certificate(
            self.host_key, f"interceptor host certificate for {','.join(names)}", serial=secrets.randbits(64),
            principals=names, valid_after=int(now) - BACKDATE, valid_before=valid_before, comment=COMMENT)
        return certificate, valid_before - RENEW_BEFORE


def _create(key_path: Path) -> None:
    """A new CA key at `key_path`, unless a file (or anything else) is there already or another
    process puts one there first (then that one stays)."""
    if os.path.lexists(key_path):
        return
    key = asyncssh.generate_private_key(KEY_ALGORITHM, comment=COMMENT)
    try:
        create_once(key_path, key.export_private_key("openssh"), 0o600)
    except OSError as exc:
        raise SshHostCAError(f"cannot create the SSH host CA {key_path}: {exc.strerror}") from exc


def _load(key_path: Path) -> asyncssh.SSHKey:
    """The CA key in `key_path`, checked: a regular file of ours readable by us only, holding
    one Ed25519 private key."""
    data = _PRIVATE.read(key_path)
    remedy = (f"remove {key_path} to make a new SSH host CA (then restart the daemon and run "
              "`interceptor trust install` again)")
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise SshHostCAError(f"{key_path} is not an OpenSSH private key ({exc}): {remedy}") from exc
    if key.get_algorithm() != KEY_ALGORITHM:
        raise SshHostCAError(f"{key_path} holds a {key.get_algorithm()} key, not {KEY_ALGORITHM}: {remedy}")
    return key
