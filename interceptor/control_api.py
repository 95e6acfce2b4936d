"""The methods the control socket serves, typed: what `interceptor status`, `sessions`,
`policy reload`, `login --agent`, `catalog ...` and `approvals ...` ask the daemon.

Every method takes the caller (`peer`, from the kernel) and the request's params as keywords,
and returns the JSON answer; what it raises is answered as `{"error": message}` (control.py).
Names on the wire are the ControlMethod enum's, which the CLI calls by.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interceptor import __version__, compiled
from interceptor.approvals.control import ApprovalControl
from interceptor.config import Settings
from interceptor.control import ControlMethod, Method, Peer
from interceptor.enforcer.server import Enforcer
from interceptor.handlers.postgres.catalog import CatalogStore, StoreEntry
from interceptor.identity.model import Identity
from interceptor.modes import ModeControl
from interceptor.policy import ResourceSpec
from interceptor.protocols import spec_for
from interceptor.redirect import Redirect
from interceptor.runtime import Runtime

log = logging.getLogger(__name__)

IDENTITY_STATUS_FIELDS = ("state", "source", "reason", "expires_at", "last_checked", "next_check", "last_error")


class CatalogControl:
    """`catalog.show`, `catalog.dump` and `catalog.refresh` on the daemon's catalog cache, for
    the resources of the running policy (`resources()`)."""

    def __init__(self, catalogs: CatalogStore, resources: Callable[[], Mapping[str, ResourceSpec]]) -> None:
        self.catalogs = catalogs
        self.resources = resources

    def methods(self) -> dict[ControlMethod, Method]:
        """The control methods this serves, by name."""
        return {ControlMethod.CATALOG_SHOW: self.show, ControlMethod.CATALOG_DUMP: self.dump,
                ControlMethod.CATALOG_REFRESH: self.refresh}

    def show(self, peer: Peer, resource: str | None = None, database: str | None = None) -> list[dict[str, Any]]:
        """What the cache holds, per (resource, database), optionally of one resource or
        database: read_at (epoch s), age_s, fresh (younger than the ttl), relation and
        function counts, the login role's default search_path and user, the catalog's
        version, the last read's failure while it is remembered, and whether a read is under
        way. ValueError for an unknown resource."""
        if resource is not None:
            self._check(resource)
        return [_catalog_entry(entry) for entry in self.catalogs.entries()
                if resource in (None, entry.resource) and database in (None, entry.database)]

    def dump(self, peer: Peer, resource: str, database: str) -> dict[str, Any]:
        """The whole catalog held for one database of a resource (Catalog.to_dict, what a
        `policy test` file loads), even past its ttl. ValueError for an unknown resource or
        when none is held."""
        self._check(resource)
        catalog = self.catalogs.peek(resource, database)
        if catalog is None:
            raise ValueError(f"no catalog of database {database!r} on resource {resource!r} is held: the daemon "
                             "reads one when an agent's session there starts")
        return catalog.to_dict()

    def refresh(self, peer: Peer, resource: str, database: str | None = None) -> dict[str, Any]:
        """Drop the cached catalogs of a resource (of one database, or all) so the next session
        there reads them again: {"resource", "database", "dropped": count}. ValueError for an
        unknown resource."""
        self._check(resource)
        return {"resource": resource, "database": database, "dropped": self.catalogs.invalidate(resource, database)}

    def _check(self, resource: str) -> None:
        """ValueError unless `resource` is a resource of the running policy that has catalogs."""
        resources = self.resources()
        spec = resources.get(resource)
        if spec is None:
            known = ", ".join(sorted(resources)) or "none"
            raise ValueError(f"unknown resource {resource!r} (the policy has: {known})")
        if not spec_for(spec.protocol).catalogs:
            raise ValueError(f"resource {resource!r} is {spec.protocol}, which has no database catalog")


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


@dataclass(slots=True)
class ControlApi:
    """The daemon as the control socket shows it: status, sessions, reload and identities,
    with the catalog and approvals methods beside them. `started` is the daemon's start time
    (epoch s)."""

    settings: Settings
    runtime: Runtime
    redirect: Redirect
    enforcer: Enforcer
    catalogs: CatalogControl
    approvals: ApprovalControl
    modes: ModeControl
    started: float
    _logins: dict[str, asyncio.Future[Identity]] = field(default_factory=dict, init=False)  # device logins waiting

    def methods(self) -> dict[ControlMethod, Method]:
        """Every control method, by name."""
        return {ControlMethod.STATUS: self.status, ControlMethod.SESSIONS: self.sessions,
                ControlMethod.POLICY_RELOAD: self.reload, ControlMethod.IDENTITY_STATUS: self.identity_status,
                ControlMethod.IDENTITY_LOGIN: self.identity_login, **self.catalogs.methods(),
                **self.approvals.methods(), **self.modes.methods()}

    def status(self, peer: Peer) -> dict[str, Any]:
        """The daemon (version, pid, uptime_s, redirect mode, cgroup root), its policy (version,
        the path of the file it was loaded from: the settings' or a reload's), agents (cgroups, uids, unprotected, identity), resources (protocol, addresses),
        the number of open sessions, which hot modules it runs compiled (compiled.status()),
        the learn runs (ModeControl.learn_status) and the shadow runs."""
        snap = self.runtime.snapshot
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "redirect": self.redirect.mode,
            "cgroup_root": str(self.runtime.mount),
            "policy": {"version": snap.policy.version, "path": snap.policy.source},
            "agents": [{"name": a.name, "cgroups": list(a.cgroup_paths), "uids": list(a.uids),
                        "unprotected": "allow" if a.unprotected_allow else "deny",
                        "identity": self._identity_summary(a.name)} for a in snap.plan.agents],
            "resources": [{"name": name, "protocol": spec.protocol,
                           "addresses": [str(d.network) + (f":{d.port}" if d.port else "")
                                         for d in snap.plan.dests
                                         if snap.plan.resource_names[d.resource_index] == name]}
                          for name, spec in sorted(snap.policy.resources.items())],
            "sessions": len(self.enforcer.sessions),
            "compiled": compiled.status(),
            "learn": self.modes.learn_status(peer),
            "shadow": self.modes.shadow_status(peer),
        }

    def sessions(self, peer: Peer) -> list[dict[str, Any]]:
        """The open flows: flow_id, agent, pid, exe, resource, dst, identity, bytes_up,
        bytes_down and age_s."""
        now = time.time()
        return [{"flow_id": s.flow.flow_id, "agent": s.flow.agent, "pid": s.flow.process.tgid,
                 "exe": s.flow.process.exe, "resource": s.flow.resource, "dst": str(s.flow.original_dst),
                 "identity": self._identity_summary(s.flow.agent), "bytes_up": s.traffic.up,
                 "bytes_down": s.traffic.down, "age_s": round(now - s.started, 1)}
                for s in self.enforcer.sessions.values()]

    async def reload(self, peer: Peer, path: str | None = None) -> dict[str, Any]:
        """Swap in the policy at `path` (default: the running policy's file): {"version",
        "path"}. On any error the running policy stays and the error is raised."""
        snapshot = await self.runtime.reload(Path(path) if path else None)
        return {"version": snapshot.policy.version, "path": snapshot.policy.source}

    def identity_status(self, peer: Peer) -> list[dict[str, object]]:
        """Per agent: IdentityManager.status() (source, state, reason, issuer, subject,
        client_id, groups, scopes, expires_at, last_checked, next_check, login_pending,
        last_error). Never a token."""
        return self.runtime.identities.status()

    async def identity_login(self, peer: Peer, agent: str) -> dict[str, object]:
        """Start a device login for an agent and return its prompt (user_code,
        verification_uri, expires_in ...); the token lands in the daemon, never in the agent."""
        login = await self.runtime.identities.login_device(agent)
        waiting = asyncio.ensure_future(login.wait())
        waiting.add_done_callback(lambda done: _log_login_failure(agent, done))
        self._logins[agent] = waiting
        return login.prompt()

    def _identity_summary(self, agent: str) -> dict[str, object] | None:
        """The usable identity's claims (Identity.summary) with the manager's state, source,
        reason (why the agent is refused, or None), expires_at (also of an expired identity),
        last_checked, next_check and last_error: never the token. None for an agent the
        identity manager does not know."""
        entry = next((e for e in self.runtime.identities.status() if e.get("agent") == agent), None)
        identity = self.runtime.identity(agent)
        summary = identity.summary() if identity else {}
        if entry:
            summary.update({key: entry.get(key) for key in IDENTITY_STATUS_FIELDS})
        return summary or None


def _log_login_failure(agent: str, done: asyncio.Future[Identity]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("device login for %s failed: %s", agent, done.exception())
