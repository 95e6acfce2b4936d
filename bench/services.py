"""The real servers `make bench` compares against, started for one run and stopped after:
a throwaway PostgreSQL 15, pgbouncer in session pooling mode and haproxy in tcp mode in
front of it (Debian's packages, loopback only), and the daemon, retried while another
daemon on this host still holds the enforcer's port."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.daemon import BenchDaemon

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
HOST = "127.0.0.1"
USER = "bench"
DATABASE = "bench"


class ServiceError(RuntimeError):
    """A bench server could not be started; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _wait_listening(name: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} not listening on {HOST}:{port} after {timeout}s:\n{_tail(log)}") from None
            time.sleep(0.05)


class Foreground:
    """A server running in the foreground as our child, listening on 127.0.0.1:`port`;
    stopped with SIGTERM."""

    def __init__(self, name: str, root: Path, port: int, argv: list[str]) -> None:
        self.name, self.port, self.argv = name, port, argv
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_listening(self.name, self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Postgres:
    """One cluster on 127.0.0.1:`port`; user `bench` (superuser, SCRAM password) owns database `bench`.
    As root it runs as the `postgres` OS user, which PostgreSQL requires."""

    def __init__(self, root: Path, password: str) -> None:
        if not (PG_BIN / "initdb").exists():
            raise ServiceError(f"PostgreSQL 15 missing: no {PG_BIN / 'initdb'} (apt-get install postgresql-15)")
        self.root, self.password = root, password
        self.port = free_port()
        self.data, self.sockets, self.log = root / "pgdata", root / "pgsock", root / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(PG_BIN / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise ServiceError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}\n{_tail(self.log)}")

    def start(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '{HOST}'\nport = {self.port}\nunix_socket_directories = '{self.sockets}'\n"
                       "max_connections = 200\nshared_buffers = '256MB'\npassword_encryption = 'scram-sha-256'\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.psql(f"ALTER ROLE {USER} PASSWORD '{self.password}'", "postgres")
        self.psql(f"CREATE DATABASE {DATABASE}", "postgres")
        (self.data / "pg_hba.conf").write_text(f"local all all trust\nhost all all {HOST}/32 scram-sha-256\n")
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def psql(self, sql: str, dbname: str = DATABASE) -> str:
        """Run SQL as `bench` over the Unix socket; raises with psql's error."""
        done = subprocess.run(["psql", "-h", str(self.sockets), "-p", str(self.port), "-U", USER, "-d", dbname,
                               "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                              check=False, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise ServiceError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def pgbouncer(root: Path, pg: Postgres) -> Foreground:
    """pgbouncer in session pooling mode, SCRAM towards clients and the server, run as
    `postgres` (it refuses root)."""
    port = free_port()
    config, users = root / "pgbouncer.ini", root / "pgbouncer.users"
    users.write_text(f'"{USER}" "{pg.password}"\n')
    config.write_text(
        f"[databases]\n{DATABASE} = host={HOST} port={pg.port} dbname={DATABASE}\n"
        f"[pgbouncer]\nlisten_addr = {HOST}\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {users}\npool_mode = session\n"
        "max_client_conn = 200\ndefault_pool_size = 50\n")
    argv = [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", str(config)]
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (config, users):
            os.chown(path, account.pw_uid, account.pw_gid)
            path.chmod(0o600)
        # setpriv execs (runuser would stay as its parent): the pid is pgbouncer's, for its CPU time
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *argv]
    return Foreground("pgbouncer", root, port, argv)


def haproxy(root: Path, pg: Postgres) -> Foreground:
    """haproxy in tcp mode: one frontend, one backend server, no health checks."""
    port = free_port()
    config = root / "haproxy.cfg"
    config.write_text(
        "global\n  maxconn 4096\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n"
        f"frontend pg\n  bind {HOST}:{port}\n  default_backend pg\n"
        f"backend pg\n  server pg1 {HOST}:{pg.port}\n")
    return Foreground("haproxy", root, port, [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)])


# Failures that another engineer's daemon on this host causes (only one can run at a time,
# and its uninstall removes the shared cgroup root): worth waiting out.
TRANSIENT = ("Address already in use", "No such file or directory: '/sys/fs/cgroup")


def start_daemon(daemon: BenchDaemon, patience: float = 180) -> None:
    """Start the daemon, retrying while another daemon on this host is in the way; any other
    failure is raised at once with the log's tail."""
    log = daemon.workdir / "daemon.log"
    deadline = time.monotonic() + patience
    while True:
        seen = log.stat().st_size if log.exists() else 0
        try:
            daemon.start()
            return
        except RuntimeError as exc:
            daemon.stop()
            text = log.read_text(errors="replace")[seen:] if log.exists() else ""
            if not any(marker in text for marker in TRANSIENT) or time.monotonic() > deadline:
                raise ServiceError(f"{exc}:\n{text[-2000:]}") from None
            time.sleep(3)
