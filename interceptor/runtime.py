"""The policy in force: the Snapshot the enforcer judges with, the kernel plan derived from it,
the agents' identities, and the one way to change them.

Start, reload and re-plan run under one lock, and a change is swapped in whole: a flow sees
the old snapshot or the new one at its next operation, never a mix of two.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from pathlib import Path
from typing import Any, TypeVar

from interceptor.audit.event import AuditEvent, AuditSink
from interceptor.config import Settings
from interceptor.decision import Verdict
from interceptor.errors import AuditUnavailable
from interceptor.identity.manager import IdentityChange, IdentityManager
from interceptor.identity.model import Identity
from interceptor.operations import Request, Subject, TcpConnect
from interceptor.policy import AgentSpec, Policy, PolicyEngine, load_policy
from interceptor.policy.learn import LearnSession, with_learning
from interceptor.policy.shadow import ShadowRun
from interceptor.redirect import Redirect, RedirectPlan, cgroups
from interceptor.redirect.plan import HostAddresses, Indexer, build_plan
from interceptor.credentials_check import warn_failing
from interceptor.secrets import resolve_credentials

log = logging.getLogger(__name__)

HOSTNAME_REFRESH_S = 30.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Modes:
    """The agents being learned and shadowed (interceptor.modes), by agent name."""

    learning: Mapping[str, LearnSession] = field(default_factory=lambda: MappingProxyType({}))
    shadows: Mapping[str, ShadowRun] = field(default_factory=lambda: MappingProxyType({}))

    def within(self, policy: Policy) -> tuple[Modes, list[LearnSession | ShadowRun]]:
        """The modes that still make sense under `policy` (their agent and learned resources
        are in it) and those that do not."""
        learning = {a: s for a, s in self.learning.items()
                    if a in policy.agents and all(r in policy.resources for r in s.resources or ())}
        shadows = {a: s for a, s in self.shadows.items() if a in policy.agents}
        dropped: list[LearnSession | ShadowRun] = [s for a, s in self.learning.items() if a not in learning]
        dropped += [s for a, s in self.shadows.items() if a not in shadows]
        return Modes(MappingProxyType(learning), MappingProxyType(shadows)), dropped

    def learned(self, agent: str, run: LearnSession | None) -> Modes:
        """These modes with `agent` learned by `run` (None: not learned)."""
        return Modes(_with(self.learning, agent, run), self.shadows)

    def shadowed(self, agent: str, run: ShadowRun | None) -> Modes:
        """These modes with `agent` shadowed by `run` (None: not shadowed)."""
        return Modes(self.learning, _with(self.shadows, agent, run))


def _with(runs: Mapping[str, T], agent: str, run: T | None) -> Mapping[str, T]:
    """`runs` (read-only) with `agent`'s replaced by `run`, or removed when `run` is None."""
    changed = {name: value for name, value in runs.items() if name != agent}
    if run is not None:
        changed[agent] = run
    return MappingProxyType(changed)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a reload or re-plan swaps at once. Each swap brings a new engine, so the
    engine's identity tells one policy epoch from the next. `policy`: as its file says;
    `engine`: judges by it with the learning rules of `modes` added."""

    policy: Policy
    engine: PolicyEngine
    plan: RedirectPlan
    modes: Modes = field(default_factory=Modes)


def _engine(policy: Policy, modes: Modes) -> PolicyEngine:
    """The engine judging by `policy` with the learning rules of `modes` added."""
    return PolicyEngine(with_learning(policy, modes.learning.values()))


def identity_configs(policy: Policy) -> dict[str, dict[str, Any] | None]:
    """Each agent's `identity:` section, as the identity manager takes them."""
    return {name: spec.identity for name, spec in policy.agents.items()}


def requires_identity(spec: AgentSpec) -> bool:
    """Whether the agent is refused until the daemon holds a valid identity for it."""
    return spec.identity is not None and spec.identity.get("source", "none") != "none"


async def write_audit(sink: AuditSink, event: AuditEvent) -> None:
    """Write `event`; an unavailable sink is logged, never raised: the daemon keeps running."""
    try:
        await sink.write(event)
    except AuditUnavailable as exc:
        log.error("audit unavailable: %s (event %s %s)", exc, event.kind, event.event_id)


class Runtime:
    """The running Snapshot and identities. `on_identity_change` is told of every identity
    that turns usable or unusable before the kernel's plan follows it."""

    def __init__(self, settings: Settings, mount: Path, audit: AuditSink,
                 on_identity_change: Callable[[IdentityChange], None]) -> None:
        self.settings = settings
        self.mount = mount
        self.audit = audit
        self._on_identity_change = on_identity_change
        self._agents_ix = Indexer()
        self._resources_ix = Indexer()
        self._hosts = HostAddresses()
        self._lock = asyncio.Lock()
        self._snapshot: Snapshot | None = None
        self._redirect: Redirect | None = None
        self._close_sessions: Callable[[str, str, str | None], object] | None = None
        self._identities: IdentityManager | None = None
        self._identity_start: asyncio.Future[None] | None = None
        self._replans: set[asyncio.Future[None]] = set()

    @property
    def snapshot(self) -> Snapshot:
        """The Snapshot in force (RuntimeError before `start`)."""
        if self._snapshot is None:
            raise RuntimeError("no policy is loaded yet")
        return self._snapshot

    @property
    def identities(self) -> IdentityManager:
        """The identity manager of the running policy's agents (RuntimeError before `start`)."""
        if self._identities is None:
            raise RuntimeError("the agents' identities are not started yet")
        return self._identities

    # -- the policy and its plan ------------------------------------------------------------

    async def start(self) -> Snapshot:
        """Load the settings' policy and start its agents' identities; nothing reaches the
        kernel until `install`. PolicyError, PlanError, CgroupError or IdentityConfigError on
        bad input."""
        async with self._lock:
            self._snapshot = await asyncio.to_thread(self._load, Path(self.settings.policy), Modes())
            await self._start_identities(self._snapshot.policy)
            await warn_failing(self._snapshot.policy)
            return self._snapshot

    async def install(self, redirect: Redirect, close_sessions: Callable[[str, str, str | None], object]) -> None:
        """Put the plan in force in the kernel through `redirect`; every later swap reaches it
        too, and an agent whose identity turns unusable has its open flows cut by
        `close_sessions(agent, reason, None)` when its identity config says `on_invalid: close`; a
        learn run a reload ends has the flows only its rule let open cut by `close_sessions(agent,
        reason, rule)`."""
        async with self._lock:
            redirect.apply(self.snapshot.plan)
            self._redirect = redirect
            self._close_sessions = close_sessions

    async def reload(self, path: Path | None = None) -> Snapshot:
        """Swap in the policy at `path` (default: the running policy's file) and its plan, and
        audit the change. On any error (PolicyError, PlanError, CgroupError,
        IdentityConfigError) the running policy stays and the error is raised."""
        async with self._lock:
            old = self.snapshot
            target = path or Path(old.policy.source)
            policy = await asyncio.to_thread(load_policy, target)
            modes, dropped = old.modes.within(policy)
            loaded = await asyncio.to_thread(self._planned, policy, modes)
            if identity_configs(loaded.policy) != identity_configs(old.policy):
                await self._start_identities(loaded.policy)  # access follows as identities arrive
            snapshot = self._swap(loaded)
            for mode in dropped:  # at once, under the lock: nothing relays for it, no new run of the agent yet
                if isinstance(mode, LearnSession) and self._close_sessions is not None:
                    self._close_sessions(mode.agent, "learn mode ended (ended by a policy reload)", mode.rule_name)
        await write_audit(self.audit, AuditEvent(
            kind="policy", decision="allow", rule="reload",
            operation={"path": str(target), "old_version": old.policy.version, "new_version": snapshot.policy.version}))
        log.info("policy %s loaded from %s", snapshot.policy.version, target)
        for mode in dropped:
            await self._ended_by_reload(mode)
        await warn_failing(snapshot.policy)
        return snapshot

    async def replan(self) -> None:
        """Recompute the kernel's plan for the running policy (identities or addresses changed)
        and swap it in when it differs. A policy file edited meanwhile is left for an explicit
        reload; a failure keeps the old plan and is logged."""
        async with self._lock:
            current = self.snapshot
            try:
                loaded = await asyncio.to_thread(self._load, Path(current.policy.source), current.modes)
            except Exception as exc:  # a re-plan is best effort: the running plan stays in force
                log.warning("re-planning skipped, old plan kept: %s", exc)
                return
            if loaded.policy.version == current.policy.version and loaded.plan != current.plan:
                self._swap(loaded)

    async def follow_hostnames(self) -> None:
        """Hostnames move: re-plan every HOSTNAME_REFRESH_S seconds, until cancelled."""
        while True:
            await asyncio.sleep(HOSTNAME_REFRESH_S)
            await self.replan()

    async def credentials(self, resource: str) -> dict[str, str]:
        """The login credentials of a resource of the running policy (KeyError for an unknown
        resource, SecretError when they cannot be resolved)."""
        return await resolve_credentials(self.snapshot.policy.resources[resource].credentials)

    async def change_modes(self, change: Callable[[Modes], Modes]) -> Snapshot:
        """Swap in the running policy with the modes `change` makes of the running ones (a
        learn or shadow run started or ended), and its plan: a learned agent may reach the
        learned resources. What `change` raises is raised, and nothing changes. A plan that
        cannot be made or applied (PlanError, CgroupError, the redirect's error) is raised,
        and nothing changes, unless the change only ends learn runs: then they end all the
        same (the engine without their rules is put in force) and the old plan stays, its wider
        access reaching only the enforcer, which refuses it; the failure is logged."""
        async with self._lock:
            current = self.snapshot
            modes = change(current.modes)
            try:
                return self._swap(await asyncio.to_thread(self._planned, current.policy, modes))
            except Exception as exc:
                if not set(modes.learning.values()) < set(current.modes.learning.values()):
                    raise
                log.error("the kernel plan cannot follow the end of a learn run (%s): the old plan stays, and the "
                          "enforcer judges by the policy without the run", exc)
                self._snapshot = Snapshot(current.policy, _engine(current.policy, modes), current.plan, modes)
                return self._snapshot

    async def _ended_by_reload(self, mode: LearnSession | ShadowRun) -> None:
        """A learn or shadow run the reloaded policy has no place for (its agent or a learned
        resource is gone) has ended: said in the log and the trail."""
        action = "learn-stop" if isinstance(mode, LearnSession) else "shadow-stop"
        log.warning("%s of agent %s (session %s) ended: the reloaded policy no longer has its agent or resources",
                    "learning" if isinstance(mode, LearnSession) else "shadow run", mode.agent, mode.session)
        await write_audit(self.audit, AuditEvent(
            kind="policy", agent=mode.agent, decision="allow", rule=action, reason="ended by a policy reload",
            operation={"action": action, "agent": mode.agent, "session": mode.session}))

    def _load(self, path: Path, modes: Modes) -> Snapshot:
        """Parse and plan a policy without touching the running one (PolicyError, PlanError,
        CgroupError on bad input). Runs in a worker thread."""
        return self._planned(load_policy(path), modes)

    def _planned(self, policy: Policy, modes: Modes) -> Snapshot:
        """The Snapshot of `policy` with `modes` (its plan: as the engine with the learning
        rules allows); PlanError or CgroupError on bad input. Runs in a worker thread."""
        engine = _engine(policy, modes)
        managed = cgroups.ensure_agent_cgroups(self.mount, sorted(policy.agents))
        agent_paths = {name: [str(managed[name])] + [str(cgroups.resolve(self.mount, c)) for c in spec.cgroups]
                       for name, spec in policy.agents.items()}

        def may_connect(agent: str, resource: str) -> bool:
            identity = self.identity(agent)
            if identity is None and requires_identity(policy.agents[agent]):
                return False  # refused at connect() until the daemon holds a valid identity
            request = Request(Subject(agent, identity), resource, TcpConnect())
            return engine.decide(request).verdict is not Verdict.DENY

        plan = build_plan(policy, may_connect, managed_root=str(cgroups.managed_root(self.mount)),
                          agent_paths=agent_paths, enforcer_port=self.settings.enforcer_port,
                          refuse_port=self.settings.refuse_port, daemon_tgid=os.getpid(),
                          agents_ix=self._agents_ix, resources_ix=self._resources_ix, resolve=self._hosts)
        return Snapshot(policy, engine, plan, modes)

    def _swap(self, snapshot: Snapshot) -> Snapshot:
        """Apply the snapshot's plan (once installed) and put it in force; the caller holds the
        lock."""
        if self._redirect is not None:
            self._redirect.apply(snapshot.plan)
        self._snapshot = snapshot
        return snapshot

    # -- identities ---------------------------------------------------------------------------

    def identity(self, agent: str) -> Identity | None:
        """The agent's usable identity; None when it has none (yet), or it expired or failed."""
        return self._identities.current(agent) if self._identities else None

    def identity_reason(self, agent: str) -> str:
        """Why the agent has no valid identity now (the identity manager's reason)."""
        return self._identities.reason(agent) if self._identities else "no identity manager is running"

    def identity_required(self, agent: str) -> bool:
        """Whether the running policy refuses the agent until it has a valid identity."""
        spec = self._snapshot.policy.agents.get(agent) if self._snapshot else None
        return spec is not None and requires_identity(spec)

    async def stop(self) -> None:
        """Stop refreshing identities and drop pending re-plans; the snapshot stays readable."""
        for replan in self._replans:
            replan.cancel()
        if self._identity_start is not None:
            self._identity_start.cancel()
        if self._identities is not None:
            await self._identities.stop()

    async def _start_identities(self, policy: Policy) -> None:
        """(Re)start the identity manager for the policy's agents; a bad identity config is a
        policy error, so it surfaces like one and the running manager stays."""
        manager = IdentityManager(identity_configs(policy), audit=self.audit)
        manager.on_change(self._identity_changed)
        old, old_start = self._identities, self._identity_start
        self._identities = manager
        # In the background: start-up never waits on the issuer. Until an identity arrives
        # its agent is refused (fail closed); on_change re-plans when it does.
        self._identity_start = asyncio.ensure_future(manager.start())
        if old is not None and old_start is not None:
            old_start.cancel()
            await old.stop()

    def _identity_changed(self, change: IdentityChange) -> None:
        """Access in the kernel follows identities: an agent that lost its identity is refused
        at connect(), and regains access when the daemon refreshes it. Its open flows have their
        next operation denied, or are cut when its identity config says `on_invalid: close`."""
        self._on_identity_change(change)
        closing = change.identity is None and self.identities.on_invalid(change.agent) == "close"
        if closing and self._close_sessions is not None:
            self._close_sessions(change.agent, change.reason, None)
        # Before `install` too: the plan it puts in the kernel then knows the identities so far.
        replan = asyncio.ensure_future(self.replan())
        self._replans.add(replan)
        replan.add_done_callback(self._replans.discard)
