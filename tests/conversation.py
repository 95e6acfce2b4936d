"""Tests that read like the conversation: a sans-IO session driven by a script.

    script(session)
      .agent(codec.query("DROP TABLE t"))
      .expect_server(codec.query(SENTINEL))
      .server(error + ready)
      .expect_agent_error("42501", rule="no-ddl")
      .expect_record(rule="no-ddl", verdict="deny")

Each step feeds one side's bytes (`agent`, `server`) or answers a wait (`approve`, `deny`,
`catalog_read`), and each expectation takes the matching commands out of what the session
emitted since, in order; `done()` asserts nothing unexpected is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from interceptor.decision import Decision
from interceptor.operations import Operation


@dataclass(frozen=True, slots=True)
class Judging:
    """A Judge (interceptor.decision.Judge) from a plain function, for sessions under test."""

    function: Callable[..., Decision]

    def decide(self, operation: Operation) -> Decision:
        return self.function(operation)
