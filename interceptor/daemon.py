"""The daemon: load settings and policy, install the redirect, run the enforcer and the
control socket, and swap the policy atomically on reload.

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
import time
from pathlib import Path
from typing import Any

from interceptor import __version__
from interceptor.audit.event import AuditEvent, AuditUnavailable
from interceptor.config import Settings
from interceptor.control import ControlServer
from interceptor.decision import Verdict
from interceptor.enforcer.server import Enforcer, Snapshot
from interceptor.handlers.postgres.catalog import CatalogStore, StoreEntry
from interceptor.metrics import Gauges, Metrics, MetricsServer
from interceptor.operations import Request, Subject, TcpConnect
from interceptor.redirect import DenyEvent, Redirect, cgroups
from interceptor.redirect.plan import HostAddresses, Indexer, PlanError, build_plan

log = logging.getLogger(__name__)

HOSTNAME_REFRESH_S = 30.0
APPROVAL_METHODS = ("approvals.list", "approvals.approve", "approvals.deny")
CATALOG_PROTOCOLS = ("postgres",)  # resources whose databases' catalogs the daemon reads


def _identity_configs(policy: Any) -> dict[str, Any]:
    return {name: spec.identity for name, spec in policy.agents.items()}


def _requires_identity(agent_spec: Any) -> bool:
    return bool(agent_spec.identity) and agent_spec.identity.get("source", "none") != "none"


def open_redirect(mode: str, mount: Path) -> Redirect:
    """BPF unless told otherwise; `auto` falls back to iptables with a warning."""
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


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mount = cgroups.ensure_mount()
        self.agents_ix = Indexer()
        self.resources_ix = Indexer()
        self.hosts = HostAddresses()
        self.started = time.time()
        self.snapshot: Snapshot | None = None
        self.redirect: Redirect | None = None
        self.identities: Any = None
        self.audit: Any = None
        self.enforcer: Enforcer | None = None
        self.control: ControlServer | None = None
        self.approvals: Any = None
        self._approval_store: Any = None
        self._logins: dict[str, asyncio.Future] = {}
        self._identity_start: asyncio.Future | None = None
        self._approver_validator: Any = None
        self._stopping = asyncio.Event()
        self.metrics = Metrics(__version__)
        self.metrics_server: MetricsServer | None = None
        self.catalogs = CatalogStore()  # the databases' catalogs the enforcer judges statements with

    # -- policy ---------------------------------------------------------------------------

    def load(self, path: Path) -> Snapshot:
        """Parse and plan a policy without touching the running one (PolicyError, PlanError,
        CgroupError on bad input)."""
        from interceptor.policy import PolicyEngine, load_policy

        policy = load_policy(path)
        engine = PolicyEngine(policy)
        managed = cgroups.ensure_agent_cgroups(self.mount, sorted(policy.agents))
        agent_paths = {name: [str(managed[name])] + [str(cgroups.resolve(self.mount, c)) for c in spec.cgroups]
                       for name, spec in policy.agents.items()}

        def may_connect(agent: str, resource: str) -> bool:
            identity = self.identity(agent)
            if identity is None and _requires_identity(policy.agents[agent]):
                return False  # refused at connect() until the daemon holds a valid identity
            request = Request(Subject(agent, identity), resource, TcpConnect())
            return engine.decide(request).verdict is not Verdict.DENY

        plan = build_plan(policy, may_connect, managed_root=str(cgroups.managed_root(self.mount)),
                          agent_paths=agent_paths, enforcer_port=self.settings.enforcer_port,
                          refuse_port=self.settings.refuse_port, daemon_tgid=os.getpid(),
                          agents_ix=self.agents_ix, resources_ix=self.resources_ix, resolve=self.hosts)
        return Snapshot(policy, engine, plan)

    def identity(self, agent: str):
        return self.identities.current(agent) if self.identities else None

    def identity_required(self, agent: str) -> bool:
        spec = self.snapshot.policy.agents.get(agent) if self.snapshot else None
        return spec is not None and _requires_identity(spec)

    async def reload(self, path: str | None = None, **_: Any) -> dict[str, Any]:
        """Swap in a new policy; on any error the old one stays and the error is returned."""
        target = Path(path) if path else Path(self.snapshot.policy.source)
        snapshot = await asyncio.to_thread(self.load, target)
        old = self.snapshot
        if _identity_configs(snapshot.policy) != _identity_configs(old.policy):
            await self._start_identities(snapshot.policy)  # access follows as identities arrive
        self.redirect.apply(snapshot.plan)
        self.snapshot = snapshot
        await self._audit(AuditEvent(kind="policy", decision="allow", rule="reload",
                                     operation={"path": str(target), "old_version": old.policy.version if old else None,
                                                "new_version": snapshot.policy.version}))
        log.info("policy %s loaded from %s", snapshot.policy.version, target)
        return {"version": snapshot.policy.version, "path": str(target)}

    async def _refresh_loop(self) -> None:
        """Hostnames move: re-resolve them periodically and re-apply when the plan changed."""
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), HOSTNAME_REFRESH_S)
            except asyncio.TimeoutError:
                await self._replan()

    # -- audit ------------------------------------------------------------------------------

    async def _audit(self, event: AuditEvent) -> None:
        try:
            await self.audit.write(event)
        except AuditUnavailable as exc:
            log.error("audit unavailable: %s (event %s %s)", exc, event.kind, event.event_id)

    def _on_deny(self, event: DenyEvent) -> None:
        """Called from the BPF ring-buffer thread."""
        snap = self.snapshot
        record = AuditEvent(kind="connect_denied", agent=snap.plan.agent_name(event.agent_index) if snap else None,
                            decision="deny", rule="kernel", reason=event.reason,
                            resource=snap.plan.resource_names.get(event.resource_index) if snap else None,
                            process={"pid": event.tgid, "uid": event.uid},
                            operation={"protocol": event.protocol, "dst": f"{event.dst_ip}:{event.dst_port}"})
        self.metrics.connection(record.agent, record.resource, "deny")
        asyncio.run_coroutine_threadsafe(self._audit(record), self._loop)

    # -- identity and approvals ----------------------------------------------------------------

    async def _start_identities(self, policy: Any) -> None:
        """(Re)start the identity manager for the policy's agents; a bad identity config is a
        policy error, so it surfaces like one and the running manager stays."""
        from interceptor.identity.manager import IdentityManager

        manager = IdentityManager(_identity_configs(policy), audit=self.audit)
        manager.on_change(self._identity_changed)
        old, old_start = self.identities, self._identity_start
        self.identities = manager
        # In the background: start-up never waits on the issuer. Until an identity arrives
        # its agent is refused (fail closed); on_change re-plans when it does.
        self._identity_start = asyncio.ensure_future(manager.start())
        if old:
            old_start.cancel()
            await old.stop()

    def _identity_changed(self, change: Any) -> None:
        """Access in the kernel follows identities: an agent that lost its identity is refused
        at connect(), and regains access when the daemon refreshes it. Its open flows have their
        next operation denied, or are cut when its identity config says `on_invalid: close`."""
        self.metrics.identity_change(change.agent, change.state)
        if self.snapshot is None or self.redirect is None:
            return
        if change.identity is None and self.enforcer and self.identities.on_invalid(change.agent) == "close":
            self.enforcer.close_sessions(change.agent, change.reason)
        asyncio.ensure_future(self._replan())

    async def _replan(self) -> None:
        """Recompute the kernel's plan for the running policy (identities or addresses changed).
        A policy file edited meanwhile is left for an explicit reload."""
        try:
            snapshot = await asyncio.to_thread(self.load, Path(self.snapshot.policy.source))
        except Exception as exc:
            log.warning("re-planning skipped, old plan kept: %s", exc)
            return
        if snapshot.policy.version == self.snapshot.policy.version and snapshot.plan != self.snapshot.plan:
            self.redirect.apply(snapshot.plan)
            self.snapshot = snapshot

    def identity_status(self, **_: Any) -> list[dict[str, Any]]:
        return self.identities.status() if self.identities else []

    async def identity_login(self, agent: str, **_: Any) -> dict[str, Any]:
        """Start a device login for an agent; the token lands here, never in the agent."""
        login = await self.identities.login_device(agent)
        waiting = asyncio.ensure_future(login.wait())
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception() is None or
                                  log.warning("device login for %s failed: %s", agent, f.exception()))
        self._logins[agent] = waiting
        return login.prompt()

    async def _open_approvals(self) -> Any:
        from interceptor.approvals import ApprovalBroker, SqliteStore

        settings = dict(self.settings.approvals)
        if settings.get("store") == "postgres":
            from interceptor.approvals.postgres import PostgresStore

            self._approval_store = await PostgresStore.open(settings["dsn"])
        else:
            path = settings.get("path", str(self.settings.state_dir / "approvals.db"))
            self._approval_store = await SqliteStore.open(path)
        return ApprovalBroker(self._approval_store, self.audit, webhook_url=settings.get("webhook_url"))

    async def _approver(self, peer: dict[str, int], token: str | None) -> Any:
        """Who decides: the person whose CLI sign-in token validates against the approvals
        issuer; else local root, recorded as break-glass; else nobody."""
        from interceptor.approvals import Approver
        from interceptor.identity.approver import validator_for

        if token:
            if self._approver_validator is None:
                self._approver_validator = validator_for(self.settings.approvals)
            identity = await self._approver_validator.validate(token)
            return Approver("okta", identity.subject, frozenset(identity.groups))
        return Approver("root", f"root@{socket.gethostname()}") if peer["uid"] == 0 else None

    async def _approvals_call(self, method: str, peer: dict[str, int], token: str | None = None,
                              **params: Any) -> dict[str, Any]:
        from interceptor.approvals.control import dispatch

        approver = await self._approver(peer, token) if method != "approvals.list" else None
        result = await dispatch(self.approvals, method, params, approver)
        if "error" in result:
            raise RuntimeError(result["error"])
        return result

    # -- control ------------------------------------------------------------------------------

    def status(self, **_: Any) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "redirect": self.redirect.mode,
            "cgroup_root": str(self.mount),
            "policy": {"version": snap.policy.version, "path": str(self.settings.policy)},
            "agents": [{"name": a.name, "cgroups": list(a.cgroup_paths), "uids": list(a.uids),
                        "unprotected": "allow" if a.unprotected_allow else "deny",
                        "identity": self._identity_status(a.name)} for a in snap.plan.agents],
            "resources": [{"name": name, "protocol": spec.protocol,
                           "addresses": [str(d.network) + (f":{d.port}" if d.port else "")
                                         for d in snap.plan.dests if snap.plan.resource_names[d.resource_index] == name]}
                          for name, spec in sorted(snap.policy.resources.items())],
            "sessions": len(self.enforcer.sessions),
        }

    def _identity_status(self, agent: str) -> dict[str, Any] | None:
        """Subject, groups, expiry and state: never the token."""
        entry = next((e for e in self.identity_status() if e.get("agent") == agent), None)
        identity = self.identity(agent)
        summary = identity.summary() if identity else {}
        if entry:
            summary.update(state=entry.get("state"), source=entry.get("source"), last_error=entry.get("last_error"))
        return summary or None

    def sessions(self, **_: Any) -> list[dict[str, Any]]:
        now = time.time()
        return [{"flow_id": s.flow.flow_id, "agent": s.flow.agent, "pid": s.flow.process.tgid,
                 "exe": s.flow.process.exe, "resource": s.flow.resource, "dst": str(s.flow.original_dst),
                 "identity": self._identity_status(s.flow.agent), "bytes_up": s.traffic.up,
                 "bytes_down": s.traffic.down, "age_s": round(now - s.started, 1)}
                for s in self.enforcer.sessions.values()]

    def _catalog_resource(self, resource: str) -> None:
        """ValueError unless `resource` is a resource of the running policy that has catalogs."""
        resources = self.snapshot.policy.resources
        spec = resources.get(resource)
        if spec is None:
            raise ValueError(f"unknown resource {resource!r} (the policy has: {', '.join(sorted(resources)) or 'none'})")
        if spec.protocol not in CATALOG_PROTOCOLS:
            raise ValueError(f"resource {resource!r} is {spec.protocol}, which has no database catalog")

    def catalog_show(self, resource: str | None = None, database: str | None = None,
                     **_: Any) -> list[dict[str, Any]]:
        """What the catalog cache holds, per (resource, database), optionally of one resource
        or database: read_at (epoch s), age_s, fresh (younger than the ttl), relation and
        function counts, the login role's default search_path and user, the catalog's
        version, the last read's failure while it is remembered, and whether a read is under
        way. ValueError for an unknown resource."""
        if resource is not None:
            self._catalog_resource(resource)
        return [_catalog_entry(entry) for entry in self.catalogs.entries()
                if resource in (None, entry.resource) and database in (None, entry.database)]

    def catalog_dump(self, resource: str, database: str, **_: Any) -> dict[str, Any]:
        """The whole catalog held for one database of a resource (Catalog.to_dict, what a
        `policy test` file loads), even past its ttl. ValueError for an unknown resource or
        when none is held."""
        self._catalog_resource(resource)
        catalog = self.catalogs.peek(resource, database)
        if catalog is None:
            raise ValueError(f"no catalog of database {database!r} on resource {resource!r} is held: the daemon "
                             "reads one when an agent's session there starts")
        return catalog.to_dict()

    def catalog_refresh(self, resource: str, database: str | None = None, **_: Any) -> dict[str, Any]:
        """Drop the cached catalogs of a resource (of one database, or all) so the next session
        there reads them again: {"resource", "database", "dropped": count}. ValueError for an
        unknown resource."""
        self._catalog_resource(resource)
        return {"resource": resource, "database": database, "dropped": self.catalogs.invalidate(resource, database)}

    async def _gauges(self) -> Gauges:
        """The present state, read at each /metrics scrape."""
        pending = await self.approvals.list(pending_only=True)
        return Gauges(len(self.enforcer.sessions), len(pending), self.audit.stats())

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        from interceptor.audit import open_sink

        self._loop = asyncio.get_running_loop()
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.metrics_listen:  # a bad address fails the start before anything is installed
            self.metrics_server = MetricsServer(self.settings.metrics_listen, self.metrics, self._gauges)
        audit_settings = dict(self.settings.audit)
        audit_settings.setdefault("path", str(self.settings.state_dir / "audit.db"))
        self.audit = open_sink(audit_settings)
        self.snapshot = await asyncio.to_thread(self.load, Path(self.settings.policy))
        await self._start_identities(self.snapshot.policy)
        self.approvals = await self._open_approvals()
        self.redirect = open_redirect(self.settings.redirect, self.mount)
        self.enforcer = Enforcer(self.redirect, self.audit, lambda: self.snapshot, self.identity,
                                 self.identity_required, self._credentials, self.approvals, catalogs=self.catalogs,
                                 scan_errors=self.settings.masking.get("scan_errors", True),
                                 on_connection=self.metrics.connection, on_decision=self.metrics.decision)
        await self.enforcer.start(self.settings.enforcer_port, self.settings.refuse_port)
        self.redirect.apply(self.snapshot.plan)
        self.redirect.on_deny(self._on_deny)
        methods = {"status": self.status, "sessions": self.sessions, "policy.reload": self.reload,
                   "identity.status": self.identity_status, "identity.login": self.identity_login,
                   "catalog.show": self.catalog_show, "catalog.dump": self.catalog_dump,
                   "catalog.refresh": self.catalog_refresh}
        methods.update({name: functools.partial(self._approvals_call, name) for name in APPROVAL_METHODS})
        self.control = ControlServer(self.settings.control_socket, methods, self.settings.admin_group)
        await self.control.start()
        if self.metrics_server:
            await self.metrics_server.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stopping.set)
        self._loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_logged()))
        await self._audit(AuditEvent(kind="daemon", decision="allow", rule="start",
                                     operation={"version": __version__, "redirect": self.redirect.mode,
                                                "policy": self.snapshot.policy.version}))
        log.info("interceptor %s ready: redirect=%s enforcer=:%d policy=%s", __version__, self.redirect.mode,
                 self.settings.enforcer_port, self.snapshot.policy.version)
        sd_notify("READY=1")
        refresher = asyncio.ensure_future(self._refresh_loop())
        await self._stopping.wait()
        sd_notify("STOPPING=1")
        refresher.cancel()
        await self.control.stop()
        if self.metrics_server:
            await self.metrics_server.stop()
        await self.enforcer.stop()
        self.redirect.close()
        if self.identities:
            self._identity_start.cancel()
            await self.identities.stop()
        await self.approvals.close()
        await self._approval_store.close()
        await self._audit(AuditEvent(kind="daemon", decision="allow", rule="stop"))
        await self.audit.close()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:
            log.error("reload rejected, old policy kept: %s", exc)

    async def _credentials(self, resource: str) -> dict[str, str]:
        from interceptor.secrets import resolve_credentials

        spec = self.snapshot.policy.resources[resource]
        return await resolve_credentials(spec.credentials)


def _catalog_entry(entry: StoreEntry) -> dict[str, Any]:
    catalog = entry.catalog
    return {"resource": entry.resource, "database": entry.database,
            "read_at": round(entry.read_at, 3) if entry.read_at is not None else None,
            "age_s": round(entry.age, 1) if entry.age is not None else None, "fresh": entry.fresh,
            "relations": len(catalog.relations) if catalog else None,
            "functions": sum(len(f) for f in catalog.functions.values()) if catalog else None,
            "default_search_path": list(catalog.default_search_path) if catalog else None,
            "user": catalog.user if catalog else None, "version": catalog.version if catalog else None,
            "failure": entry.failure, "reading": entry.reading}


def run(settings: Settings) -> None:
    import uvloop

    uvloop.run(Daemon(settings).run())


__all__ = ["Daemon", "run", "open_redirect", "PlanError"]
