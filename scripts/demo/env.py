"""The demo's surroundings, on this host only: a PostgreSQL with sample data and a local
development OpenID issuer standing in for Okta. `up` starts both (idempotent) and writes the
demo policy; `down` stops them. State lives in /var/lib/interceptor-demo (not the daemon's
private state directory: the postgres user must be able to reach its data).

    python scripts/demo/env.py up      # prints the policy path the daemon should run with
    python scripts/demo/env.py down
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("INTERCEPTOR_DEMO_DIR", "/var/lib/interceptor-demo"))
SECRETS = Path("/etc/interceptor/secrets")
KEYS = Path("/etc/interceptor/keys")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ISSUER_PORT = 8089
AUDIENCE = "api://interceptor"

# Loaded at every `up` (as shop_owner), so a database seeded by an older demo gains what it lacks.
SAMPLE = """
create table if not exists customers (id int primary key, name text not null, email text not null,
                                      card_number text not null);
create table if not exists orders (id int primary key, customer_id int not null references customers,
                                   amount numeric(10,2), status text not null default 'new');
create table if not exists products (id int primary key, name text not null, price numeric(10,2) not null);
create table if not exists payments (id int primary key, order_id int not null references orders, iban text not null);
insert into customers values
  (1, 'Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Grace Hopper', 'grace@example.com', '5500 0000 0000 0004'),
  (3, 'Alan Turing', 'alan@example.com', '3400 0000 0000 009') on conflict do nothing;
insert into orders values (100, 1, 42.00, 'new'), (101, 2, 17.50, 'new'), (102, 3, 99.90, 'shipped')
  on conflict do nothing;
insert into products values (1, 'kettle', 30.00), (2, 'teapot', 18.00), (3, 'cosy', 7.50) on conflict do nothing;
insert into payments values (1, 102, 'DE89 3704 0044 0532 0130 00') on conflict do nothing;
"""


def say(message: str) -> None:
    print(f"[demo-env] {message}", file=sys.stderr, flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def as_postgres(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True)


def pg_port(running: bool) -> int:
    """The demo cluster's port: the one it had, unless something else took it meanwhile."""
    marker = STATE / "pg.port"
    if marker.exists() and (running or port_free(int(marker.read_text()))):
        return int(marker.read_text())
    port = next(p for p in range(5432, 5500) if port_free(p))
    marker.write_text(str(port))
    return port


def postgres_up() -> int:
    data = STATE / "pg"
    port = pg_port(running=(data / "postmaster.pid").exists())
    postgres = pwd.getpwnam("postgres")
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        os.chown(data, postgres.pw_uid, postgres.pw_gid)
        out = as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "scram-sha-256", "--auth-local=peer",
                          "-U", "postgres")
        if out.returncode != 0:
            raise SystemExit(f"initdb failed: {out.stderr}")
    if port_free(port):
        out = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "start",
                          "-o", f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data}")
        if out.returncode != 0:
            raise SystemExit(f"PostgreSQL did not start: {out.stderr}{(data / 'server.log').read_text()[-800:]}")
    seeded = STATE / "pg.seeded"
    psql = [str(PG_BIN.parent / "bin" / "psql"), "-h", str(data), "-p", str(port), "-v", "ON_ERROR_STOP=1", "-q"]
    if not seeded.exists():
        password = base64.urlsafe_b64encode(os.urandom(18)).decode()
        out = as_postgres(*psql, "-d", "postgres", "-c", f"create role shop_owner login password '{password}'",
                          "-c", "create database shop owner shop_owner")
        if out.returncode != 0:
            raise SystemExit(f"creating the demo database failed: {out.stderr}")
        write_private(SECRETS / "demo-db", f"user: shop_owner\npassword: {password}\n".encode())
        seeded.touch()
    out = as_postgres(*psql, "-d", "shop", "-c", f"set role shop_owner; {SAMPLE}")
    if out.returncode != 0:
        raise SystemExit(f"loading sample data failed: {out.stderr}")
    say(f"PostgreSQL with sample data on 127.0.0.1:{port} (database shop)")
    return port


def issuer_up() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    pidfile = STATE / "issuer.pid"
    if pidfile.exists() and not port_free(ISSUER_PORT):
        say(f"development OpenID issuer already on 127.0.0.1:{ISSUER_PORT}")
        return
    key_file = KEYS / "demo-agent.pem"
    if not key_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "demo-agent-1", "use": "sig"}
    config = {
        "port": ISSUER_PORT, "audience": AUDIENCE, "scopes": ["db.read", "db.write"], "access_token_ttl": 3600,
        "accounts": {"dba@example.com": {"uid": "00udba", "groups": ["dba-oncall"]}},
        "clients": [
            {"client_id": "demo-agent", "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [jwk]},
             "grant_types": ["client_credentials"], "scope": "db.read db.write", "groups": ["agents"]},
            {"client_id": "interceptor-cli", "token_endpoint_auth_method": "none",
             "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
             "scope": "openid offline_access"},
        ],
    }
    (STATE / "issuer.json").write_text(json.dumps(config))
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed: run scripts/install.sh")
    proc = _start_issuer(node)
    pidfile.write_text(str(proc.pid))
    say(f"development OpenID issuer (stands in for Okta) at http://127.0.0.1:{ISSUER_PORT}/oauth2/default")


def _start_issuer(node: str, attempts: int = 3, seconds: float = 10.0) -> subprocess.Popen[bytes]:
    """The issuer, once it printed READY; a start that does not within `seconds` (seen about
    once in 25 starts, cause not found) is killed and tried again."""
    for _ in range(attempts):
        with open(STATE / "issuer.log", "ab") as log:
            proc = subprocess.Popen([node, str(ROOT / "tests" / "oidc" / "server.mjs"), str(STATE / "issuer.json")],
                                    cwd=ROOT / "tests" / "oidc", stdout=subprocess.PIPE, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], seconds)
        if ready and proc.stdout.readline().decode().startswith("READY"):
            return proc
        proc.kill()
        proc.wait()
    raise SystemExit(f"the development issuer did not start; see {STATE / 'issuer.log'}")


def policy(port: int) -> Path:
    """The shipped default policy, pointed at the demo database's port."""
    text = (ROOT / "policy" / "default.yaml").read_text().replace("127.0.0.1:5432", f"127.0.0.1:{port}")
    out = STATE / "policy.yaml"
    out.write_text(text)
    return out


def up() -> tuple[Path, int]:
    """(the demo policy, the database port)."""
    STATE.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o711)  # the postgres user must reach its data directory below
    port = postgres_up()
    issuer_up()
    return policy(port), port


def down() -> None:
    pidfile = STATE / "issuer.pid"
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        pidfile.unlink()
    data = STATE / "pg"
    if (data / "postmaster.pid").exists():
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    say("demo PostgreSQL and issuer stopped")


if __name__ == "__main__":
    if sys.argv[1:] == ["down"]:
        down()
    else:
        print(up()[0])
