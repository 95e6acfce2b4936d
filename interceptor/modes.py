"""Learn and shadow runs of the daemon: `interceptor learn start|stop|status` and `interceptor
policy shadow [start]|stop|status`, as control methods.

A run is part of the Snapshot (interceptor.runtime.Modes), so it starts and ends between two
operations, as a reload does; every start and end is logged and written to the audit trail
(kind `policy`, rules learn-start, learn-stop, learn-expired, shadow-start, shadow-stop).
Runs live in the daemon's memory: a restart ends them (the daemon enforces the policy file
alone again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interceptor.audit.event import AuditEvent
from interceptor.control import ControlMethod, Method, Peer
from interceptor.policy import Policy, PolicyEngine, PolicyError, load_policy_text
from interceptor.policy.learn import LearnSession, learn_seconds
from interceptor.policy.shadow import ShadowRun
from interceptor.runtime import Modes, Runtime, write_audit

log = logging.getLogger(__name__)

ENDED_KEPT = 20  # ended learn runs `learn status` and `status` still show
MAX_CANDIDATE_BYTES = 16 * 1024 * 1024  # the largest candidate policy file a shadow run reads


def read_candidate(path: object) -> Policy:
    """The candidate policy in the file at `path`, an absolute path to a regular file of at
    most MAX_CANDIDATE_BYTES (a device, a FIFO or a huge file would hang or exhaust the
    daemon); PolicyError for any other, or a file that is no valid policy. Runs in a worker
    thread."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise PolicyError([f"{path!r}"[:200] + ": the candidate policy must be named by an absolute path"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError([f"{path}:1:1: cannot read the policy: {exc}"]) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PolicyError([f"{path}:1:1: cannot read the policy: not a regular file"])
        data = file.read(MAX_CANDIDATE_BYTES + 1)
    if len(data) > MAX_CANDIDATE_BYTES:
        raise PolicyError([f"{path}:1:1: the policy is larger than {MAX_CANDIDATE_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{path}:1:1: cannot read the policy: {exc}"]) from None
    return load_policy_text(text, path)


@dataclass(slots=True)
class ModeControl:
    """Starts and ends the runs of `runtime`; `clock`: epoch seconds; `close_flows(agent,
    reason, rule)` cuts the agent's open flows whose connection `rule` allowed, returning how
    many (Enforcer.close_sessions): a flow only the learning rule let open ends with its run."""

    runtime: Runtime
    clock: Callable[[], float] = time.time
    close_flows: Callable[[str, str, str], int] = lambda agent, reason, rule: 0
    ended: list[dict[str, Any]] = field(default_factory=list)  # newest last
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _started: dict[str, LearnSession] = field(default_factory=dict)  # the runs this started, by session id
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def methods(self) -> dict[ControlMethod, Method]:
        """The control methods this serves, by name."""
        return {ControlMethod.LEARN_START: self.learn_start, ControlMethod.LEARN_STOP: self.learn_stop,
                ControlMethod.LEARN_STATUS: self.learn_status, ControlMethod.SHADOW_START: self.shadow_start,
                ControlMethod.SHADOW_STOP: self.shadow_stop, ControlMethod.SHADOW_STATUS: self.shadow_status}

    # -- learn ---------------------------------------------------------------------------

    async def learn_start(self, peer: Peer, agent: str, seconds: float | None = None,
                          resources: list[str] | None = None) -> dict[str, Any]:
        """Learn `agent`'s operations on `resources` (None: every resource) for `seconds`
        (None: until stopped): LearnSession.summary(). ValueError for an unknown agent or
        resource, resources that are no list of names, a duration that is no number of
        seconds in (0, MAX_LEARN_SECONDS] (learn_seconds), or an agent learned already."""
        if seconds is not None:
            seconds = learn_seconds(seconds)
        if resources is not None and (not isinstance(resources, list) or not resources):
            raise ValueError(f"resources must be a list of one or more resource names, not {resources!r}"[:200])
        self._learnable(agent, resources)
        session = LearnSession.start(agent, self.clock(), seconds, tuple(resources) if resources else None)

        def started(modes: Modes) -> Modes:
            self._learnable(agent, resources)  # again under the lock: a reload may have swapped the policy since
            running = modes.learning.get(agent)
            if running is not None:
                raise ValueError(f"agent {agent!r} is learned already (session {running.session}): "
                                 "`interceptor learn stop` it first")
            return modes.learned(agent, session)

        self._reconcile()
        await self.runtime.change_modes(started)
        self._started[session.session] = session
        if seconds is not None:
            self._timers[session.session] = asyncio.get_running_loop().call_later(
                seconds, self._expire, agent, session.session)
        log.warning("learn mode started for agent %s (session %s, resources %s, %s): its operations that no rule "
                    "allows are allowed and recorded", agent, session.session, ", ".join(resources or ["all"]),
                    f"for {seconds:g} s" if seconds is not None else "until stopped")
        await self._audit("learn-start", agent, session.summary())
        return session.summary()

    def _learnable(self, agent: str, resources: list[str] | None) -> None:
        """ValueError unless the policy in force names `agent` and each of `resources`."""
        self._known_agent(agent)
        policy = self.runtime.snapshot.policy
        for resource in resources or ():
            if not isinstance(resource, str) or resource not in policy.resources:
                raise ValueError(f"unknown resource {resource!r} (the policy has: {', '.join(sorted(policy.resources))})")

    async def learn_stop(self, peer: Peer, agent: str) -> dict[str, Any]:
        """End `agent`'s learning: the ended run (summary with `ended` and `why`). ValueError
        when it is not learned."""
        ended = await self._end_learning(agent, None, "stopped")
        if ended is None:
            raise ValueError(f"agent {agent!r} is not learned")
        return ended

    def learn_status(self, peer: Peer) -> dict[str, Any]:
        """{"learning": [running LearnSession summaries], "ended": [the last ENDED_KEPT
        ended ones, each with `ended` (epoch s) and `why` (stopped, expired, ended by a policy
        reload)]}."""
        self._reconcile()
        modes = self.runtime.snapshot.modes
        return {"learning": [modes.learning[a].summary() for a in sorted(modes.learning)], "ended": list(self.ended)}

    def _reconcile(self) -> None:
        """The runs a policy reload ended (Runtime.reload logs and audits it) listed as ended,
        with the time it was noticed, and their timers cancelled."""
        running = {run.session for run in self.runtime.snapshot.modes.learning.values()}
        for run in [run for session, run in self._started.items() if session not in running]:
            self._ended(run, "ended by a policy reload")

    def _ended(self, run: LearnSession, why: str) -> dict[str, Any]:
        """Forget the run `run` and keep its summary (with `ended` and `why`) among the ended."""
        self._started.pop(run.session, None)
        timer = self._timers.pop(run.session, None)
        if timer is not None:
            timer.cancel()
        summary = {**run.summary(), "ended": self.clock(), "why": why}
        self.ended = [*self.ended, summary][-ENDED_KEPT:]
        return summary

    def _expire(self, agent: str, session: str) -> None:
        task = asyncio.ensure_future(self._expired(agent, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expired(self, agent: str, session: str) -> None:
        await self._end_learning(agent, session, "expired")

    async def _end_learning(self, agent: str, session: str | None, why: str) -> dict[str, Any] | None:
        """End the run learning `agent` (only if it is `session`, when given): its summary
        with `ended` and `why`, or None when there is none to end."""
        ending: list[LearnSession] = []

        def stopped(modes: Modes) -> Modes:
            running = modes.learning.get(agent)
            if running is None or session not in (None, running.session):
                return modes
            ending.append(running)
            return modes.learned(agent, None)

        await self.runtime.change_modes(stopped)
        if not ending:
            return None
        run = ending[0]
        summary = {**self._ended(run, why),
                   "flows_closed": self.close_flows(agent, f"learn mode ended ({why})", run.rule_name)}
        log.warning("learn mode for agent %s (session %s) ended: %s; %d flow(s) only it let open closed", agent,
                    run.session, "its time ran out" if why == "expired" else why, summary["flows_closed"])
        await self._audit("learn-expired" if why == "expired" else "learn-stop", agent, summary)
        return summary

    # -- shadow --------------------------------------------------------------------------

    async def shadow_start(self, peer: Peer, agent: str, path: str) -> dict[str, Any]:
        """Judge `agent`'s operations by the policy at `path` too (a run already shadowing it
        is replaced): ShadowRun.summary(). PolicyError for a bad file (read_candidate);
        ValueError when the agent is not in the running policy or not in the candidate."""
        self._known_agent(agent)
        candidate = await asyncio.to_thread(read_candidate, path)
        if agent not in candidate.agents:
            raise ValueError(f"the candidate policy {path} does not name agent {agent!r}: it would deny all of it")
        run = ShadowRun.start(agent, self.clock(), path, PolicyEngine(candidate))
        replaced: list[ShadowRun] = []

        def started(modes: Modes) -> Modes:
            self._known_agent(agent)  # again under the lock: a reload may have swapped the policy since
            replaced.extend(s for a, s in modes.shadows.items() if a == agent)
            return modes.shadowed(agent, run)

        await self.runtime.change_modes(started)
        for old in replaced:
            await self._audit("shadow-stop", agent, {**old.summary(), "why": f"replaced by {run.session}"})
        log.warning("shadow run of policy %s (%s) beside the enforced policy for agent %s (session %s)",
                    run.version, path, agent, run.session)
        await self._audit("shadow-start", agent, run.summary())
        return run.summary()

    async def shadow_stop(self, peer: Peer, agent: str) -> dict[str, Any]:
        """End the shadow run of `agent`: its summary. ValueError when there is none."""
        ending: list[ShadowRun] = []

        def stopped(modes: Modes) -> Modes:
            ending.extend(s for a, s in modes.shadows.items() if a == agent)
            return modes.shadowed(agent, None)

        await self.runtime.change_modes(stopped)
        if not ending:
            raise ValueError(f"agent {agent!r} has no shadow run")
        summary = {**ending[0].summary(), "ended": self.clock()}
        log.warning("shadow run for agent %s (session %s) ended", agent, ending[0].session)
        await self._audit("shadow-stop", agent, summary)
        return summary

    def shadow_status(self, peer: Peer) -> list[dict[str, Any]]:
        """The running shadow runs (ShadowRun.summary)."""
        shadows = self.runtime.snapshot.modes.shadows
        return [shadows[a].summary() for a in sorted(shadows)]

    # -- both ----------------------------------------------------------------------------

    def _known_agent(self, agent: str) -> None:
        agents = self.runtime.snapshot.policy.agents
        if agent not in agents:
            raise ValueError(f"unknown agent {agent!r} (the policy has: {', '.join(sorted(agents)) or 'none'})")

    async def _audit(self, action: str, agent: str, summary: dict[str, Any]) -> None:
        await write_audit(self.runtime.audit, AuditEvent(
            kind="policy", agent=agent, decision="allow", rule=action, operation={"action": action, **summary}))

    def close(self) -> None:
        """Cancel the expiry timers (the daemon is stopping: the runs end with it)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
