"""Agent-facing TLS: the host CA, the leaf certificates it issues per server name, and the
contexts the handlers accept the agent's TLS with and dial the upstream with.

The host CA lives in `<state_dir>/tls/`:

    tls/             0755, the daemon's user (root)
    tls/ca.pem       0644  the CA certificate (what `interceptor trust install` copies)
    tls/private/     0700
    tls/private/ca.key  0600  the CA's private key followed by its certificate

`private/ca.key` is the authoritative pair: it is created in one atomic step (written to a
temporary file with O_EXCL, then hard-linked into place, which fails if another process got
there first), so two processes creating the CA at once end up with the same one;
`ca.pem` is a public copy rewritten from it whenever it is missing or differs. A key file or
directory that is a symlink, owned by another user or open to group or others is refused.

Leaf certificates (RFC 5280 section 4.2: basicConstraints CA:false, keyUsage
digitalSignature, extKeyUsage serverAuth, one subjectAltName: dNSName or iPAddress) are
issued per server name on demand, valid 7 days from one hour ago, and cached (least recently
used first out) until a day before they expire, or until the clock goes back past their issue.
Every leaf carries the same key, made once per process.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import pwd
import re
import secrets
import socket
import ssl
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interceptor.errors import ClientProtocolError

Clock = Callable[[], datetime.datetime]  # now, timezone-aware (UTC)
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=7)
BACKDATE = datetime.timedelta(hours=1)  # tolerates agents whose clocks are a little behind
RENEW_BEFORE = datetime.timedelta(days=1)  # a cached leaf is reissued once less than this is left
CACHE_SIZE = 1024  # server names whose contexts are kept
ALPN = ["http/1.1"]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
N = TypeVar("N", datetime.datetime, float)  # a clock's time
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)


class HostCAError(Exception):
    """The host CA cannot be created or loaded; str() says what is wrong and what to do."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_server_name(name: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`name` as a certificate is issued for it: an IP address (IPv4 or IPv6, no zone), or a
    hostname lowercased without a trailing dot (RFC 1123 section 2.1 labels, underscores
    allowed, at most 253 characters, a last label that is not all digits: RFC 3696 section 2).
    ClientProtocolError for anything else (wildcards, empty labels, non-ASCII)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ClientProtocolError(f"TLS server name {name!r}: an IPv6 address with a zone has no certificate")
        return address
    host = name[:-1] if name.endswith(".") else name
    labels = host.lower().split(".")
    if (not host.isascii() or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise ClientProtocolError(f"TLS server name {name[:300]!r} is not a valid hostname or IP address")
    return ".".join(labels)


def _tls_context(purpose: int) -> ssl.SSLContext:
    """TLS 1.2 or later, ALPN offering http/1.1 only (the HTTP handler speaks HTTP/1.1)."""
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(ALPN)
    return context


def upstream_context(ca_file: str | None, client_cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The context to dial an upstream over TLS with: the server's certificate verified
    against `ca_file` (a PEM file) or, when None, the system store, and its hostname checked
    (RFC 6125); TLS 1.2+, ALPN http/1.1; `client_cert` is (certificate file, key file) for
    mutual TLS. Raises OSError or ssl.SSLError when a file cannot be read or parsed."""
    context = _tls_context(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cafile=ca_file)
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    return context


@dataclass(slots=True)
class _Seen:
    """What a flow's SNI callback learnt. Kept apart from AgentTLS so that the callback
    does not refer back to its own context: a flow's TLS is freed without the cycle collector."""

    server_name: str | None = None
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class AgentTLS:
    """One flow's agent-facing TLS. `context` is what the handler accepts the agent's TLS
    with (server side); during the handshake it presents the certificate for the SNI the
    agent sent, or for `default_name` (the flow's original destination IP) when it sent none.
    After the handshake `server_name` is the SNI as issued for (lowercase, no trailing dot),
    None when the agent sent none; when the handshake was refused for the name, `refusal`
    says why (the agent's fault: for the audit record)."""

    context: ssl.SSLContext
    default_name: str
    seen: _Seen = field(default_factory=_Seen, repr=False)

    @property
    def server_name(self) -> str | None:
        return self.seen.server_name

    @property
    def refusal(self) -> str | None:
        return self.seen.refusal

    @property
    def certificate_name(self) -> str:
        """The name the presented certificate was issued for."""
        return self.server_name or self.default_name


class IssuedCache(Generic[K, V, N]):
    """What a CA issued per key (a leaf's TLS context per server name, a host certificate per
    set of principals), thread-safe: the same value for a key from its issue until the time
    it is to be renewed at, and a new one after, or once the clock (`clock`) went back past
    its issue. The `size` keys used most recently are kept."""

    def __init__(self, clock: Callable[[], N], size: int) -> None:
        self.clock: Callable[[], N] = clock
        self.size = size
        self._entries: OrderedDict[K, tuple[V, N, N]] = OrderedDict()  # value, issued, renew at
        self._lock = threading.Lock()

    def get(self, key: K, issue: Callable[[K, N], tuple[V, N]]) -> V:
        """The value for `key`: one issued before while it is to be used, else the one
        `issue(key, now)` gives with the time to renew it at (what it raises, raised)."""
        with self._lock:
            now = self.clock()
            entry = self._entries.get(key)
            if entry is None or not entry[1] <= now < entry[2]:  # also when the clock went back
                value, renew_at = issue(key, now)
                entry = self._entries[key] = (value, now, renew_at)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(key)
            return entry[0]


class HostCA:
    """The host CA of one state directory and the leaves it issues; thread-safe.
    Build it with `HostCA.open`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate, *,
                 clock: Clock = _utcnow, cache_size: int = CACHE_SIZE) -> None:
        self.key = key
        self.certificate = certificate
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())
        self._leaves: IssuedCache[str, ssl.SSLContext, datetime.datetime] = IssuedCache(clock, cache_size)

    @classmethod
    def open(cls, state_dir: Path, *, clock: Clock = _utcnow, cache_size: int = CACHE_SIZE) -> HostCA:
        """The host CA in `<state_dir>/tls/`, created there when absent (see the module's
        docstring for the layout). HostCAError when a file or directory has the wrong type,
        owner or mode, cannot be read or written, the key and certificate do not belong
        together, or the CA expired."""
        tls = state_dir / "tls"
        private = tls / "private"
        _PRIVATE.directory(tls, 0o755, 0o022)
        _PRIVATE.directory(private, 0o700, 0o077)
        key_path = private / "ca.key"
        try:
            if not key_path.exists():
                _create(key_path, clock())
            key, certificate = _load(key_path, clock())
            _publish(tls / "ca.pem", certificate.public_bytes(serialization.Encoding.PEM))
        except OSError as exc:
            raise HostCAError(f"cannot write the host CA in {tls}: {exc.strerror or exc}") from exc
        return cls(key, certificate, clock=clock, cache_size=cache_size)

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def server_context(self, server_name: str) -> ssl.SSLContext:
        """A server-side context presenting a leaf certificate for `server_name` (a hostname or
        an IP address), issued by the host CA; the same context for the same name until it
        is renewed. ClientProtocolError when the name is not a valid hostname or address."""
        return self._leaves.get(_canonical(server_name), self._issue)

    def agent_context(self, default_name: str) -> AgentTLS:
        """A flow's agent-facing TLS (see AgentTLS): a fresh context per flow whose SNI
        callback switches to `server_context` of the name the agent sent, or of
        `default_name` when it sent none. A name that is not valid fails the handshake with an
        unrecognized_name alert (RFC 6066 section 3) and sets `refusal`. ClientProtocolError
        when `default_name` itself is not valid."""
        default, seen = _canonical(default_name), _Seen()

        def select(connection: ssl.SSLObject | ssl.SSLSocket, sni: str | None, _: ssl.SSLContext) -> int | None:
            try:
                connection.context = self.server_context(sni or default)
            except ClientProtocolError as exc:
                seen.refusal = str(exc)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            except Exception as exc:  # noqa: BLE001 - the handshake fails closed, the reason is kept
                seen.refusal = f"no certificate for {sni or default!r}: {type(exc).__name__}: {exc}"
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            seen.server_name = _canonical(sni) if sni else None
            return None

        context = _tls_context(ssl.PROTOCOL_TLS_SERVER)
        context.sni_callback = select
        return AgentTLS(context, default, seen)

    def _issue(self, name: str, now: datetime.datetime) -> tuple[ssl.SSLContext, datetime.datetime]:
        """The context presenting a new leaf for the canonical `name`, and when to renew it."""
        not_after = min(now + LEAF_VALIDITY, self.certificate.not_valid_after_utc)
        address = parse_server_name(name)
        alt: x509.GeneralName = x509.DNSName(name) if isinstance(address, str) else x509.IPAddress(address)
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interceptor")]
        if len(name) <= 64:
            subject.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name(subject))
                .issuer_name(self.certificate.subject)
                .public_key(self._leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(digital_signature=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        context = _tls_context(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(context, leaf.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem)
        return context, not_after - RENEW_BEFORE


def fingerprint(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as colon-separated uppercase hex (what
    `openssl x509 -fingerprint -sha256` prints)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _canonical(name: str) -> str:
    return str(parse_server_name(name))


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                         crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """ssl loads certificates only from files: an anonymous memory file holds the key."""
    fd = os.memfd_create("interceptor-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class PrivateFiles:
    """The checks on a CA's directories and key file, which only this process's user may
    hold: a symlink, another type, another owner or a mode open to others is refused with
    `error`, saying what to do. `owner` names the CA ("the host CA") and `why` says why its
    key must stay private, in the refusal of a mode."""

    error: type[Exception]
    owner: str
    why: str

    def directory(self, path: Path, mode: int, forbidden: int) -> None:
        """`path` as a directory of ours (created with `mode` when absent, as its parent
        directories are) that no one else can write (and, for `forbidden` 0o077, read)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.error(f"cannot create {path.parent}: {exc.strerror}") from exc
        try:
            path.mkdir(mode=mode)
            os.chmod(path, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self.error(f"cannot create {path}: {exc.strerror}") from exc
        info = os.lstat(path)
        self.check(path, info, forbidden, "directory", stat.S_ISDIR(info.st_mode))

    def check(self, path: Path, info: os.stat_result, forbidden: int, kind: str, right_type: bool) -> None:
        """`path`, whose status is `info`, as a `kind` of ours with no bit of `forbidden`."""
        if not right_type:
            raise self.error(f"{path} is not a {kind} (a symlink or something else): remove it")
        if info.st_uid != os.geteuid():
            raise self.error(f"{path} is owned by uid {info.st_uid}, not {os.geteuid()} (this process): {self.owner} "
                             f"must be the daemon's own; chown {os.geteuid()} {path}")
        if info.st_mode & forbidden:
            wanted = stat.S_IMODE(info.st_mode) & ~forbidden
            which = "readable by root only" if forbidden == 0o077 else "writable by root only"
            raise self.error(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: it must be {which} ({self.why}); "
                             f"chmod {wanted:04o} {path}")

    def read(self, path: Path) -> bytes:
        """The bytes of the key file `path`, opened without following a symlink and checked
        (a regular file of ours readable by us only) as the file opened."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.error(f"{path} is a symlink: remove it") from exc
            raise self.error(f"cannot read {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            self.check(path, info, 0o077, "regular file", stat.S_ISREG(info.st_mode))
            return file.read()


_PRIVATE = PrivateFiles(HostCAError, "the host CA", "the host CA's key signs certificates every process on this host "
                                                    "trusts")


def _create(key_path: Path, now: datetime.datetime) -> None:
    """A new CA key and self-signed certificate into `key_path`, unless another process
    creates it first (then theirs stays)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn = f"interceptor host CA {socket.gethostname()}"[:64]
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "interceptor"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    certificate = (x509.CertificateBuilder()
                   .subject_name(name)
                   .issuer_name(name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - BACKDATE)
                   .not_valid_after(now + CA_VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
                   .sign(key, hashes.SHA256()))
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + certificate.public_bytes(serialization.Encoding.PEM))
    create_once(key_path, pem, 0o600)


def _load(key_path: Path, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA key and certificate in `key_path`, checked: a regular file of ours readable by
    us only, one EC P-256 key and one CA certificate for it, not expired."""
    data = _PRIVATE.read(key_path)
    blocks = {m.group(1): m.group(0) for m in _PEM_BLOCK.finditer(data)}
    if set(blocks) != {b"PRIVATE KEY", b"CERTIFICATE"} or len(_PEM_BLOCK.findall(data)) != 2:
        raise HostCAError(f"{key_path} must hold one PEM private key and one certificate: remove the directory "
                          f"{key_path.parent.parent} to make a new CA (and run `interceptor trust install` again)")
    try:
        key = serialization.load_pem_private_key(blocks[b"PRIVATE KEY"], None)
        certificate = x509.load_pem_x509_certificate(blocks[b"CERTIFICATE"])
    except ValueError as exc:
        raise HostCAError(f"{key_path}: unreadable key or certificate: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise HostCAError(f"{key_path}: the host CA key must be ECDSA P-256")
    if certificate.public_key() != key.public_key():
        raise HostCAError(f"{key_path}: the certificate is not the key's")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise HostCAError(f"{key_path}: the certificate is not a CA certificate")
    if now >= certificate.not_valid_after_utc:
        raise HostCAError(f"the host CA in {key_path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}: remove "
                          f"{key_path.parent.parent} and run `interceptor trust install` (and kubeconfigs) again")
    return key, certificate


def _publish(path: Path, pem: bytes) -> None:
    """`path` (mode 0644) holding `pem`, replaced atomically when missing or different."""
    try:
        if path.read_bytes() == pem and stat.S_IMODE(path.stat().st_mode) == 0o644:
            return
    except OSError:
        pass
    write_file(path, pem, 0o644)


def primary_group(uid: int) -> int:
    """The primary group of the account `uid` (-1, leave it, when it has none in passwd)."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return -1


def write_file(path: Path, data: bytes, mode: int, uid: int | None = None) -> None:
    """Replace `path` atomically with `data`: a new file beside it (never an existing one,
    never through a symlink) with `mode` and, given `uid`, that owner, synced, then renamed
    over `path`. OSError when any step fails (nothing is left behind then)."""
    temporary = _beside(path)
    try:
        write_new(temporary, data, mode, uid)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_new(path: Path, data: bytes, mode: int, uid: int | None = None) -> None:
    """A new file (never an existing one, never through a symlink) with `data`, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        if uid is not None:
            os.fchown(fd, uid, primary_group(uid))
        file.write(data)
        file.flush()
        os.fsync(fd)


def create_once(path: Path, data: bytes, mode: int) -> None:
    """`path` holding `data` with `mode`, made in one atomic step, unless a file (or anything
    else) is there already or another process puts one there first: then that one stays, so
    processes creating it at once end up with the same. `data` goes into a new file beside
    `path` (write_new), which is hard-linked to `path` (link(2) never replaces, and fails with
    EEXIST when anything is there) and then removed; the directory is synced. OSError when a
    step other than the link fails (nothing is left behind then)."""
    temporary = _beside(path)
    try:
        write_new(temporary, data, mode)
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: theirs is the one
    finally:
        temporary.unlink(missing_ok=True)
    sync_directory(path.parent)


def _beside(path: Path) -> Path:
    """A new hidden name in `path`'s directory for a file that will become `path`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}")


def sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
