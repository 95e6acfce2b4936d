"""The ssh handler's connection to the server: a TCP connection to the flow's original
destination (the daemon's own sockets are not diverted), then an asyncssh client logged in
with the resource's credentials, the server's host key checked against the resource's
`known_hosts` option (OpenSSH sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT", `@cert-authority` lines
included). No OpenSSH configuration file, ssh-agent, agent forwarding or GSS is used: what
the connection does is what the policy says, whatever the daemon's home directory holds.

Credentials (a mapping from the resource's `credentials:` source): `user` (required);
`private_key` (OpenSSH or PEM key text) or `private_key_file` (its path), each with an
optional `certificate` / `certificate_file` (an OpenSSH user certificate for that key,
PROTOCOL.certkeys) and `passphrase`; `password` (tried only when no key is given). Any other
key is refused. No message here quotes a credential's value.

Each failure is an InterceptorError whose message (the connection record's error, and the
daemon's log) gives the details an administrator needs: the known_hosts file, the name
looked up, how to fix it. What the agent is told (`told`) holds no local path, no user name
and no credential: the destination, the resource's name, the server's own words at most.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import asyncssh

from interceptor.errors import Fault, InterceptorError, LoginError, Refused, UpstreamUnavailable
from interceptor.flow import FlowContext
from interceptor.handlers.base import Services, resolved_credentials, resource_option
from interceptor.policy.model import ResourceSpec

KEYS = frozenset({"user", "private_key", "private_key_file", "certificate", "certificate_file", "passphrase",
                  "password"})
CONNECT_SECONDS = 30.0  # the TCP connect, then the SSH handshake and login, each
OPTIONS_SQLSTATE = "42501"


class SshCredentialsError(InterceptorError, ValueError):
    """The resource's credentials cannot be had or used for SSH; the message names keys,
    never values."""

    fault = Fault.ENFORCER
    sqlstate = "28000"  # invalid_authorization_specification
    status = 502


class HostKeyNotTrusted(UpstreamUnavailable):
    """The server's host key is not in the resource's known_hosts (or does not match it)."""


class KnownHostsUnusable(Refused):
    """The resource's known_hosts file cannot be read or parsed."""


class HandshakeFailed(UpstreamUnavailable):
    """The server ended the handshake: the message has its words (asyncssh's own texts can
    name the user and the host), `told` only its kind."""

    def __init__(self, message: str, told: str) -> None:
        super().__init__(message)
        self.told = told


HOST_KEY_TOLD = ("the upstream server's host key is not trusted (the administrator's known_hosts for this "
                 "resource); see the audit trail")
TOLD: dict[type[InterceptorError], str] = {
    HostKeyNotTrusted: HOST_KEY_TOLD,
    KnownHostsUnusable: "the administrator's known_hosts for this resource cannot be used; see the audit trail",
    SshCredentialsError: "the credentials of this resource cannot be used for the server login; see the audit "
                         "trail",
}
SAFE = (UpstreamUnavailable, LoginError, Refused)  # raised below with path-free, user-free messages


def told(exc: BaseException) -> str:
    """What the agent is told of `exc`, a failure of connect(): no local path, no user name,
    no credential (the details are the error's own message, for the record and the log)."""
    if isinstance(exc, HandshakeFailed):
        return exc.told
    for kind, text in TOLD.items():
        if isinstance(exc, kind):
            return text
    if isinstance(exc, SAFE):
        return str(exc)
    return "the server connection failed; see the audit trail"


@dataclass(frozen=True, slots=True)
class Login:
    """How the handler logs in upstream: `user`, the key (with its certificate, or None)
    when the credentials give one, else `password`."""

    user: str
    key: tuple[asyncssh.SSHKey, asyncssh.SSHCertificate | None] | None = None
    password: str | None = None


def login(credentials: Mapping[str, str]) -> Login:
    """The Login the credentials give. SshCredentialsError for unknown keys, a missing user,
    a key and a key file both, a certificate without a key or for another key, a key that
    cannot be read, or no key and no password."""
    unknown = set(credentials) - KEYS
    if unknown:
        raise SshCredentialsError(f"key(s) {', '.join(sorted(unknown))} are not used by ssh resources "
                                  f"(expected {', '.join(sorted(KEYS))})")
    empty = sorted(name for name, value in credentials.items() if not value)
    if empty:
        raise SshCredentialsError(f"{', '.join(empty)} is empty")
    if "user" not in credentials:
        raise SshCredentialsError("ssh credentials need a user")
    key = _key(credentials)
    if key is None and "password" not in credentials:
        raise SshCredentialsError("ssh credentials need private_key, private_key_file or password")
    return Login(credentials["user"], key, None if key is not None else credentials["password"])


def _both(credentials: Mapping[str, str], name: str) -> tuple[str | None, str | None]:
    """The text and the file of `name` (private_key, certificate); never both."""
    text, path = credentials.get(name), credentials.get(f"{name}_file")
    if text is not None and path is not None:
        raise SshCredentialsError(f"give {name} or {name}_file, not both")
    return text, path


def _key(credentials: Mapping[str, str]) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate | None] | None:
    key_text, key_path = _both(credentials, "private_key")
    cert_text, cert_path = _both(credentials, "certificate")
    if key_text is None and key_path is None:
        if cert_text is not None or cert_path is not None or "passphrase" in credentials:
            raise SshCredentialsError("certificate and passphrase need private_key or private_key_file")
        return None
    passphrase = credentials.get("passphrase")
    try:
        key = (asyncssh.import_private_key(key_text, passphrase) if key_text is not None
               else asyncssh.read_private_key(str(key_path), passphrase))
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:  # fixed texts, never the key's
        raise SshCredentialsError(f"the private key cannot be used: {exc}") from None
    except OSError as exc:
        raise SshCredentialsError(f"private_key_file cannot be read: {exc.strerror}") from None
    if cert_text is None and cert_path is None:
        return key, None
    try:
        cert = (asyncssh.import_certificate(cert_text) if cert_text is not None
                else asyncssh.read_certificate(str(cert_path)))
    except asyncssh.KeyImportError as exc:
        raise SshCredentialsError(f"the certificate cannot be used: {exc}") from None
    except OSError as exc:
        raise SshCredentialsError(f"certificate_file cannot be read: {exc.strerror}") from None
    if cert.key.public_data != key.public_data:
        raise SshCredentialsError("the certificate is not for the private key")
    return key, cert


def known_hosts(resource: ResourceSpec) -> tuple[str, asyncssh.SSHKnownHosts]:
    """The path of the resource's `known_hosts` option and its entries. Refused (the
    resource's options) when the option is missing or the file cannot be read or parsed:
    no host-key checking means no connection."""
    path = resource_option(resource, "known_hosts")
    if not isinstance(path, str) or not path:
        raise Refused(OPTIONS_SQLSTATE, f"resource {resource.name!r} has no known_hosts option: the server's host key "
                                        "cannot be checked, so no connection is made")
    try:
        return path, asyncssh.read_known_hosts(path)
    except OSError as exc:
        raise KnownHostsUnusable(OPTIONS_SQLSTATE, f"resource {resource.name!r}: known_hosts file {path} cannot be "
                                                   f"read: {exc.strerror}") from None
    except ValueError as exc:
        raise KnownHostsUnusable(OPTIONS_SQLSTATE, f"resource {resource.name!r}: known_hosts file {path} is not "
                                                   f"valid: {exc}") from None


def host_name(flow: FlowContext, resource: ResourceSpec) -> str:
    """The name the server's host key is looked up under in known_hosts: the
    `host_key_alias` option, else the resource's host name for the destination's port (the
    first such address), else the destination IP address."""
    alias = resource_option(resource, "host_key_alias")
    if isinstance(alias, str) and alias:
        return alias
    for address in resource.addresses:
        if address.hostname is not None and address.port == flow.original_dst.port:
            return address.hostname
    return str(flow.original_dst.ip)


async def credentials(services: Services) -> Login:
    """The resource's credentials as a Login; SshCredentialsError when they cannot be had
    or used (the message names the resource, never a value)."""
    account = await resolved_credentials(services, login, SshCredentialsError)
    if account is None:
        raise SshCredentialsError(f"resource {services.resource.name!r} has no credentials: the server login needs "
                                  "a user and a key or password")
    return account


async def connect(flow: FlowContext, services: Services) -> asyncssh.SSHClientConnection:
    """The server connection, logged in. Refused when known_hosts is missing or unusable;
    SshCredentialsError for unusable credentials; UpstreamUnavailable when the server cannot
    be reached, its host key is not trusted, or the handshake fails; LoginError when it
    refuses the login."""
    path, trusted = known_hosts(services.resource)
    account = await credentials(services)
    dst = flow.original_dst
    sock = socket.socket(socket.AF_INET6 if dst.ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (str(dst.ip), dst.port)),
                               CONNECT_SECONDS)
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise UpstreamUnavailable(f"upstream {dst} is unreachable: {getattr(exc, 'strerror', None) or exc!r}") from None
    name = host_name(flow, services.resource)
    try:
        return await asyncssh.connect(
            str(dst.ip), dst.port, sock=sock, config=None, known_hosts=trusted, host_key_alias=name,
            username=account.user, client_keys=[account.key] if account.key else None,
            password=account.password, passphrase=None, agent_path=None, agent_forwarding=False,
            gss_host=None, gss_kex=False, gss_auth=False, host_based_auth=False, x509_trusted_certs=None,
            preferred_auth="publickey" if account.key else "keyboard-interactive,password",
            connect_timeout=CONNECT_SECONDS, login_timeout=CONNECT_SECONDS, keepalive_interval=0)
    except asyncssh.HostKeyNotVerifiable as exc:
        port = "" if dst.port == 22 else f" -p {dst.port}"
        raise HostKeyNotTrusted(f"upstream {dst}: its host key is not trusted for {name!r} by known_hosts {path}: "
                                f"{exc.reason}; check the fingerprint, then add it: ssh-keyscan -t ed25519{port} "
                                f"{name} >> {path}") from None
    except asyncssh.PermissionDenied:
        raise LoginError(f"upstream {dst} refused the login with the credentials of resource "
                         f"{services.resource.name!r}") from None
    except asyncssh.DisconnectError as exc:
        raise HandshakeFailed(f"upstream {dst}: SSH handshake failed: {type(exc).__name__}: {exc.reason}",
                              f"upstream {dst}: SSH handshake failed ({type(exc).__name__}); see the audit trail") \
            from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise UpstreamUnavailable(f"upstream {dst}: SSH handshake failed: {type(exc).__name__}") from None
