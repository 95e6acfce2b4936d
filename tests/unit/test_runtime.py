"""The Runtime: a policy swapped in whole or not at all, its plan reaching the kernel once installed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType

import pytest

from interceptor.audit.event import AuditEvent
from interceptor.config import Settings
from interceptor.identity.manager import IdentityChange
from interceptor.policy import PolicyError
from interceptor.redirect import RedirectPlan
from interceptor.policy.learn import LearnSession
from interceptor.runtime import Modes, Runtime

POLICY = """version: 1
resources:
  db: {{protocol: postgres, addresses: ["{address}"]}}
agents:
  bot: {{uids: [1001]}}
rules:
  - {{name: r1, effect: allow, agents: [bot], resources: [db], sql: {{kinds: [select]}}}}
"""


class Kernel:
    """A redirect that records the plans applied to it."""

    mode = "fake"

    def __init__(self) -> None:
        self.plans: list[RedirectPlan] = []

    def apply(self, plan: RedirectPlan) -> None:
        self.plans.append(plan)


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def write(self, event: AuditEvent) -> None:
        self.events.append(event)


cut: list[tuple[str, str, str | None]] = []  # the flows the runtime had cut: (agent, reason, rule)


def started(tmp_path: Path, address: str = "10.0.0.5:5432") -> tuple[Runtime, Path, Kernel, Sink]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(address=address))
    changes: list[IdentityChange] = []
    sink = Sink()
    runtime = Runtime(Settings(policy=policy), tmp_path, sink, changes.append)  # type: ignore[arg-type]  # a sink that only writes
    kernel = Kernel()

    async def start() -> None:
        await runtime.start()
        await runtime.install(kernel, lambda agent, reason, rule: cut.append((agent, reason, rule)))  # type: ignore[arg-type]  # a redirect that only applies

    asyncio.run(start())
    return runtime, policy, kernel, sink


def test_install_puts_the_started_plan_in_the_kernel(tmp_path: Path) -> None:
    runtime, _, kernel, _ = started(tmp_path)
    assert kernel.plans == [runtime.snapshot.plan]
    assert [str(d.network) for d in runtime.snapshot.plan.dests] == ["10.0.0.5/32"]


def test_reload_swaps_the_policy_and_its_plan_and_audits_the_change(tmp_path: Path) -> None:
    runtime, policy, kernel, sink = started(tmp_path)
    old = runtime.snapshot
    policy.write_text(POLICY.format(address="10.0.0.6:5432"))
    new = asyncio.run(runtime.reload())
    assert runtime.snapshot is new and new.policy.version != old.policy.version
    assert kernel.plans == [old.plan, new.plan] and [str(d.network) for d in new.plan.dests] == ["10.0.0.6/32"]
    [event] = sink.events
    assert (event.kind, event.rule) == ("policy", "reload")
    assert event.operation == {"path": str(policy), "old_version": old.policy.version,
                               "new_version": new.policy.version}


def test_a_bad_policy_is_refused_and_the_running_one_stays(tmp_path: Path) -> None:
    runtime, policy, kernel, sink = started(tmp_path)
    old = runtime.snapshot
    policy.write_text("version: 1\nresources: {db: {protocol: gopher}}\n")
    with pytest.raises(PolicyError):
        asyncio.run(runtime.reload())
    assert runtime.snapshot is old and kernel.plans == [old.plan] and sink.events == []


def test_a_replan_keeps_an_unchanged_plan_and_leaves_an_edited_file_for_reload(tmp_path: Path) -> None:
    runtime, policy, kernel, _ = started(tmp_path)
    old = runtime.snapshot
    asyncio.run(runtime.replan())
    assert runtime.snapshot is old
    policy.write_text(POLICY.format(address="10.0.0.6:5432"))
    asyncio.run(runtime.replan())
    assert runtime.snapshot is old and kernel.plans == [old.plan]


def test_a_reload_that_ends_a_learn_run_cuts_the_flows_only_its_rule_let_open(tmp_path: Path) -> None:
    runtime, policy, _, sink = started(tmp_path)
    run = LearnSession.start("bot", 0.0, None, ("db",))
    asyncio.run(runtime.change_modes(lambda modes: Modes(MappingProxyType({"bot": run}), modes.shadows)))
    cut.clear()
    policy.write_text(POLICY.replace("db:", "other:").replace("resources: [db]", "resources: [other]").format(
        address="10.0.0.5:5432"))
    asyncio.run(runtime.reload())
    assert dict(runtime.snapshot.modes.learning) == {}
    assert cut == [("bot", "learn mode ended (ended by a policy reload)", "learn:bot")]
    assert [e.rule for e in sink.events] == ["reload", "learn-stop"]

