"""A throwaway real PostgreSQL for tests: initdb in a temp dir, loopback only, torn down after.

    with PgServer(auth="scram-sha-256") as pg:
        pg.psql("CREATE DATABASE app")
        dsn = pg.dsn(dbname="app")

or use the `pg_server` fixture (one server per test module). As root the server runs as the
`postgres` OS user (PostgreSQL refuses to run as root). Set PG_BIN to use other binaries.

For a daemon in front of it: `write_credentials` writes the resource's credentials file and
`postgres_policy` a policy with one agent and the server as the postgres resource `db`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import pytest

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
AUTH_METHODS = ("scram-sha-256", "md5", "trust")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster on 127.0.0.1:`port` with superuser `user`/`password`."""

    def __init__(self, *, auth: str = "scram-sha-256", user: str = "tester", password: str = "tester-pw",
                 settings: dict[str, str] | None = None) -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {AUTH_METHODS}, not {auth!r}")
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL binaries missing: no {PG_BIN / 'initdb'} (apt-get install postgresql-15)")
        self.auth, self.user, self.password = auth, user, password
        self.host, self.port = "127.0.0.1", free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sockets.mkdir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.settings = {"listen_addresses": self.host, "port": str(self.port),
                         "unix_socket_directories": str(self.sockets), "fsync": "on", **(settings or {})}
        self._running = False
        try:
            self._init()
            self.start()
            self._set_password()
        except BaseException:
            self.stop()
            raise

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}")
        return done

    def _init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")
            conf.write(f"password_encryption = '{'md5' if self.auth == 'md5' else 'scram-sha-256'}'\n")

    def _set_password(self) -> None:
        """Set the password while local trust still lets us in, then require `auth` everywhere."""
        self.psql(f"ALTER ROLE \"{self.user}\" PASSWORD '{self.password.replace(chr(39), chr(39) * 2)}'")
        (self.data / "pg_hba.conf").write_text(
            f"local all all {self.auth}\nhost all all 127.0.0.1/32 {self.auth}\nhost all all ::1/128 {self.auth}\n")
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def start(self) -> None:
        """Start (again, after shutdown()) on the same port with the same data."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self._running = True

    def shutdown(self) -> None:
        """Stop the server but keep its data, to test clients against an outage."""
        if self._running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._running = False

    def stop(self) -> None:
        """Stop the server and delete the cluster."""
        try:
            self.shutdown()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, user: str | None = None, dbname: str = "postgres", password: str | None = None) -> str:
        user = user or self.user
        password = self.password if password is None and user == self.user else password
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser; returns psql's unaligned output, raises on error."""
        done = subprocess.run(
            ["psql", "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname, "-X", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": self.password})
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


def write_credentials(path: Path, user: str, password: str) -> Path:
    """Write a `from: file` credentials file (`user:` and `password:` lines) with mode 0600; returns `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"user: {user}\npassword: {password}\n".encode())
    finally:
        os.close(fd)
    return path


def postgres_policy(pg: PgServer, credentials: Path, agent: str, rules: Sequence[str]) -> str:
    """A policy YAML: `agent` with `unprotected: deny`, `pg` as the postgres resource `db` logging in with the
    file `credentials`, and `rules`, each one YAML flow mapping (`{name: ..., effect: ..., ...}`) on a line."""
    body = "".join(f"  - {rule}\n" for rule in rules)
    return f"""
version: 1
agents:
  {agent}: {{unprotected: deny}}
resources:
  db:
    protocol: postgres
    addresses: ["127.0.0.1:{pg.port}"]
    credentials: {{from: file, path: {credentials}}}
rules:
{body}"""
