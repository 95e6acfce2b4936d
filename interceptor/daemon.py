"""The daemon's lifecycle: start the pieces in order (audit, the runtime with its policy and
identities, approvals, the redirect, the enforcer, the control socket, metrics), run until
SIGTERM or SIGINT (SIGHUP reloads the policy), and stop them in reverse order.

Stopping the daemon (or its death) leaves the kernel hooks in place on purpose: agents are
refused until a daemon is back. Only `interceptor uninstall` removes them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interceptor import __version__
from interceptor.approvals import ApprovalBroker, SqliteStore
from interceptor.approvals.control import ApprovalControl, ApproverCheck
from interceptor.approvals.store import ApprovalStore
from interceptor.audit import open_sink
from interceptor.audit.event import AuditEvent
from interceptor.audit.sink import ChainedSink
from interceptor.certificates import HostCA, HostCAError
from interceptor.config import Settings
from interceptor.control import ControlServer
from interceptor.control_api import CatalogControl, ControlApi
from interceptor.enforcer.server import Enforcer
from interceptor.handlers.postgres.catalog import CatalogStore
from interceptor.identity.manager import IdentityChange
from interceptor.masking.key import open_mask_key
from interceptor.modes import ModeControl
from interceptor.metrics import Gauges, Metrics, MetricsServer, parse_listen
from interceptor.redirect import DENY_REASONS, DenyEvent, Redirect, cgroups
from interceptor.runtime import Runtime, write_audit
from interceptor.ssh_certificates import SshHostCA, SshHostCAError

log = logging.getLogger(__name__)


def open_redirect(mode: str, mount: Path) -> Redirect:
    """BPF unless told otherwise; `auto` falls back to iptables with a warning. BpfUnavailable
    or OSError when `mode` is bpf and BPF cannot be loaded."""
    from interceptor.redirect.bpf import BpfRedirect, BpfUnavailable
    from interceptor.redirect.iptables import IptablesRedirect

    if mode == "iptables":
        return IptablesRedirect(mount)
    try:
        return BpfRedirect(mount)
    except (BpfUnavailable, OSError) as exc:
        if mode == "bpf":
            raise
        log.warning("BPF unavailable (%s); falling back to iptables redirection", exc)
        return IptablesRedirect(mount)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how we are doing; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


async def open_approvals(settings: Settings, audit: ChainedSink) -> ApprovalBroker:
    """The approval broker on the store the settings name (SQLite in the state directory by
    default); its `store` is closed after the broker."""
    config = dict(settings.approvals)
    store: ApprovalStore
    if config.get("store") == "postgres":
        from interceptor.approvals.postgres import PostgresStore

        store = await PostgresStore.open(config["dsn"])
    else:
        store = await SqliteStore.open(config.get("path", str(settings.state_dir / "approvals.db")))
    return ApprovalBroker(store, audit, webhook_url=config.get("webhook_url"))


def open_host_ca(state_dir: Path) -> HostCA | None:
    """The host CA agent-facing TLS is issued by (created in `state_dir` when absent); None,
    logged, when it cannot be loaded: flows that need no TLS still run, and handlers refuse
    those that do."""
    try:
        return HostCA.open(state_dir)
    except HostCAError as exc:
        log.error("agent-facing TLS disabled, TLS flows will be refused: %s", exc)
        return None


def open_ssh_host_ca(state_dir: Path) -> SshHostCA | None:
    """The SSH host CA the ssh handler's host certificates are signed by (created in
    `state_dir` when absent); None, logged, when it cannot be loaded: the ssh handler then
    refuses its flows."""
    try:
        return SshHostCA.open(state_dir)
    except SshHostCAError as exc:
        log.error("SSH host certificates disabled, ssh flows will be refused: %s", exc)
        return None


def open_recordings(state_dir: Path) -> Path | None:
    """`<state_dir>/recordings`, where interactive SSH sessions are recorded: made, or kept,
    a directory of this process's user that only it can read (a wider mode found is narrowed,
    and said); None, logged, when it cannot be (the ssh handler then refuses what it would
    record)."""
    path = state_dir / "recordings"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise NotADirectoryError(f"{path} is not a directory of uid {os.geteuid()} (a symlink, another owner's "
                                     "or something else): remove it")
    except OSError as exc:
        log.error("shell recording disabled, recorded ssh sessions will be refused: %s", exc)
        return None
    if stat.S_IMODE(info.st_mode) & 0o077:
        log.warning("recordings directory %s was mode %04o; narrowed to 0700 (recorded sessions are not for other "
                    "users)", path, stat.S_IMODE(info.st_mode))
        path.chmod(0o700)
    return path


async def _gauges(enforcer: Enforcer, approvals: ApprovalBroker, audit: ChainedSink) -> Gauges:
    """The present state, read at each /metrics scrape."""
    pending = await approvals.list(pending_only=True)
    return Gauges(len(enforcer.sessions), len(pending), audit.stats())


async def _reload_logged(runtime: Runtime) -> None:
    """A SIGHUP reload: a rejected policy is logged and the running one stays."""
    try:
        await runtime.reload()
    except Exception as exc:  # any failure keeps the old policy; the signal has no one to answer
        log.error("reload rejected, old policy kept: %s", exc)


def _deny_reason(runtime: Runtime, agent: str | None, resource: str | None, event: DenyEvent) -> tuple[str, str]:
    """The audit rule and reason of a connect() the kernel refused: ("identity", the identity
    manager's reason) when the agent may not reach the resource because it holds no valid
    identity, else ("kernel", the kernel's reason)."""
    if (resource is not None and agent is not None and event.reason == DENY_REASONS[1]
            and runtime.identity_required(agent) and runtime.identity(agent) is None):
        return "identity", f"agent has no valid identity: {runtime.identities.reason(agent)}"
    return "kernel", event.reason


def _deny_record(runtime: Runtime, event: DenyEvent) -> AuditEvent:
    """The connect_denied audit record of a connect() the kernel refused, named by the
    running plan, with the reason `_deny_reason` gives."""
    plan = runtime.snapshot.plan
    agent, resource = plan.agent_name(event.agent_index), plan.resource_names.get(event.resource_index)
    rule, reason = _deny_reason(runtime, agent, resource, event)
    return AuditEvent(kind="connect_denied", agent=agent, decision="deny", rule=rule, reason=reason,
                      resource=resource, process={"pid": event.tgid, "uid": event.uid},
                      operation={"protocol": event.protocol, "dst": f"{event.dst_ip}:{event.dst_port}"})


def _refusal_auditor(redirect: Redirect, runtime: Runtime) -> Callable[[socket.socket], AuditEvent] | None:
    """iptables: the record of a refused connect the enforcer accepted on the refuse port
    (blocking); None for BPF, whose refusals arrive through `on_deny`."""
    from interceptor.redirect.iptables import IptablesRedirect

    if not isinstance(redirect, IptablesRedirect):
        return None
    return lambda conn: _deny_record(runtime, redirect.refused(conn))


@dataclass(frozen=True, slots=True)
class _Running:
    """The pieces of a started daemon, in start order."""

    audit: ChainedSink
    runtime: Runtime
    approvals: ApprovalBroker
    redirect: Redirect
    enforcer: Enforcer
    control: ControlServer
    metrics_server: MetricsServer | None
    modes: ModeControl


class Daemon:
    """One run of the daemon with `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mount = cgroups.ensure_mount()
        self.started = time.time()
        self.metrics = Metrics(__version__)
        self.catalogs = CatalogStore()  # the databases' catalogs the enforcer judges statements with
        self._stopping = asyncio.Event()
        self._reloads: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop. A failed start raises its error
        (PolicyError, PlanError, OSError ...); hooks it had installed stay, refusing agents."""
        running = await self._start()
        self._handle_signals(running.runtime)
        await write_audit(running.audit, AuditEvent(
            kind="daemon", decision="allow", rule="start",
            operation={"version": __version__, "redirect": running.redirect.mode,
                       "policy": running.runtime.snapshot.policy.version}))
        log.info("interceptor %s ready: redirect=%s enforcer=:%d policy=%s", __version__, running.redirect.mode,
                 self.settings.enforcer_port, running.runtime.snapshot.policy.version)
        sd_notify("READY=1")
        refresher = asyncio.ensure_future(running.runtime.follow_hostnames())
        await self._stopping.wait()
        sd_notify("STOPPING=1")
        refresher.cancel()
        await self._stop(running)

    async def _start(self) -> _Running:
        settings = self.settings
        private_state_dir(settings.state_dir)
        mask_key = open_mask_key(settings.mask_key_file, create=not settings.mask_key_shared)
        if settings.metrics_listen:
            parse_listen(settings.metrics_listen)  # a bad address fails the start before anything is installed
        audit_settings = dict(settings.audit)
        audit_settings.setdefault("path", str(settings.state_dir / "audit.db"))
        audit = open_sink(audit_settings)
        runtime = Runtime(settings, self.mount, audit, self._identity_changed)
        await runtime.start()
        approvals = await open_approvals(settings, audit)
        redirect = open_redirect(settings.redirect, self.mount)
        enforcer = Enforcer(redirect, audit, lambda: runtime.snapshot, runtime.identity, runtime.identity_required,
                            runtime.credentials, approvals, catalogs=self.catalogs,
                            certificates=open_host_ca(settings.state_dir),
                            ssh_host_ca=open_ssh_host_ca(settings.state_dir),
                            recordings=open_recordings(settings.state_dir),
                            scan_errors=settings.masking.get("scan_errors", True), mask_key=mask_key,
                            on_connection=self.metrics.connection, on_decision=self.metrics.decision,
                            refused=_refusal_auditor(redirect, runtime), identity_reason=runtime.identity_reason)
        await enforcer.start(settings.enforcer_port, settings.refuse_port)
        await runtime.install(redirect, enforcer.close_sessions)
        redirect.on_deny(functools.partial(self._on_deny, asyncio.get_running_loop(), runtime, audit))
        modes = ModeControl(runtime, close_flows=enforcer.close_sessions)
        api = ControlApi(settings, runtime, redirect, enforcer,
                         CatalogControl(self.catalogs, lambda: runtime.snapshot.policy.resources),
                         ApprovalControl(approvals, ApproverCheck(settings.approvals)), modes, self.started)
        control = ControlServer(settings.control_socket, api.methods(), settings.admin_group)
        await control.start()
        metrics_server = None
        if settings.metrics_listen:
            metrics_server = MetricsServer(settings.metrics_listen, self.metrics,
                                           functools.partial(_gauges, enforcer, approvals, audit))
            await metrics_server.start()
        return _Running(audit, runtime, approvals, redirect, enforcer, control, metrics_server, modes)

    async def _stop(self, running: _Running) -> None:
        await running.control.stop()
        running.modes.close()
        if running.metrics_server:
            await running.metrics_server.stop()
        await running.enforcer.stop()
        running.redirect.close()
        await running.runtime.stop()
        await running.approvals.close()
        await running.approvals.store.close()
        await write_audit(running.audit, AuditEvent(kind="daemon", decision="allow", rule="stop"))
        await running.audit.close()

    def _handle_signals(self, runtime: Runtime) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(_reload_logged(runtime)))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _identity_changed(self, change: IdentityChange) -> None:
        self.metrics.identity_change(change.agent, change.state)

    def _on_deny(self, loop: asyncio.AbstractEventLoop, runtime: Runtime, audit: ChainedSink,
                 event: DenyEvent) -> None:
        """A connect() the kernel refused: counted and audited, with the identity manager's
        reason when the agent is refused for lack of a valid identity. Called from the BPF
        ring-buffer thread."""
        record = _deny_record(runtime, event)
        self.metrics.connection(record.agent, record.resource, "deny")
        asyncio.run_coroutine_threadsafe(write_audit(audit, record), loop)


def private_state_dir(path: Path) -> None:
    """The state directory (audit trail, approvals, the host CA) made or kept root's alone
    (0700): the audit trail holds what agents did, and SQLite's -wal and -shm files take the
    process's umask, not the database's mode. A wider mode found is narrowed, and said."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("state directory %s was mode %04o; narrowed to 0700 (the audit trail is not for other users)",
                    path, mode)
        path.chmod(0o700)


def run(settings: Settings) -> None:
    """Run the daemon with `settings` on uvloop until it stops. Files it makes are not
    writable by the group nor readable by others (umask 027) unless made so on purpose."""
    import uvloop

    os.umask(0o027)

    uvloop.run(Daemon(settings).run())
