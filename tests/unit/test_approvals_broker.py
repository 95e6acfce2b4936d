"""The approval broker end to end over a real SQLite store, driven without sockets."""

import asyncio

import pytest
from test_approvals_support import FLOW, Clock, ListSink, approve_decision, sql_request

from interceptor.approvals import (
    AlreadyDecided,
    ApprovalBroker,
    ApprovalError,
    Approver,
    Expired,
    NotAnApprover,
    NotFound,
    SelfApproval,
    SqliteStore,
    State,
)
from interceptor.decision import Decision, Verdict

DBA = Approver("okta", "bob@example.com", frozenset({"dba", "staff"}))
ROOT = Approver("root", "root@host-1")


def run(tmp_path, scenario, *, clock=None, sink=None):
    """Run `scenario(broker, sink, clock)` against a fresh broker and store."""

    async def main():
        store = await SqliteStore.open(str(tmp_path / "approvals.db"))
        broker = ApprovalBroker(store, sink or ListSink(), clock=clock or Clock())
        try:
            return await scenario(broker, broker.audit, broker.clock)
        finally:
            await broker.close()
            await store.close()

    return asyncio.run(main())


def test_held_request_is_approved_by_a_group_member(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        listed = await broker.list()
        decided = await broker.approve(pending.request_id.lower(), DBA)
        return pending, listed, decided, await pending.wait(), sink

    pending, listed, decided, outcome, sink = run(tmp_path, scenario)
    assert pending.waiting and len(pending.request_id) == 8
    assert [r.request_id for r in listed] == [pending.request_id]
    request = listed[0]
    assert (request.agent, request.requester, request.requester_user) == ("claude", "agent-app", "alice@example.com")
    assert request.operation == {"kind": "sql", "text": "DELETE FROM orders WHERE id = 7", "database": "orders"}
    assert (request.rule, request.resource, request.flow_id, request.process["pid"]) == ("prod-writes", "orders-db", "f-1", 4242)
    assert request.expires_at - request.created_at == 300
    assert decided.state is State.APPROVED and decided.approver == "bob@example.com"
    assert outcome.approved and outcome.request_id == pending.request_id and outcome.approver == "bob@example.com"
    assert not outcome.break_glass
    assert sink.states() == ["pending", "approved"]
    assert [e.decision for e in sink.events] == ["approve", "allow"]


def test_denied_with_reason(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        with pytest.raises(ApprovalError, match="needs a reason"):
            await broker.deny(pending.request_id, DBA, "  ")
        await broker.deny(pending.request_id, DBA, "not during the freeze")
        return await pending.wait(), sink

    outcome, sink = run(tmp_path, scenario)
    assert not outcome.approved and outcome.reason == "not during the freeze" and outcome.approver == "bob@example.com"
    assert sink.states() == ["pending", "denied"] and sink.events[-1].decision == "deny"


@pytest.mark.parametrize(
    "approver, error, message",
    [
        (Approver("okta", "alice@example.com", frozenset({"dba"})), SelfApproval, "cannot approve their own request"),
        (Approver("okta", "agent-app", frozenset({"dba"})), SelfApproval, "cannot approve their own request"),
        (Approver("okta", "carol@example.com", frozenset({"staff"})), NotAnApprover, "not in an approver group of rule 'prod-writes': dba"),
    ],
)
def test_who_may_not_approve(tmp_path, approver, error, message):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        with pytest.raises(error, match=message):
            await broker.approve(pending.request_id, approver)
        return await broker.list()

    still_pending = run(tmp_path, scenario)
    assert [r.state for r in still_pending] == [State.PENDING]


def test_root_approval_is_break_glass(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(groups=()), FLOW)
        with pytest.raises(NotAnApprover, match=r"\(none: only root may decide\)"):
            await broker.approve(pending.request_id, DBA)
        await broker.approve(pending.request_id, ROOT)
        return await pending.wait(), sink

    outcome, sink = run(tmp_path, scenario)
    assert outcome.approved and outcome.break_glass and outcome.reason == "break-glass approval by root"
    assert sink.events[-1].outcome["break_glass"] is True and sink.events[-1].outcome["approver_kind"] == "root"


def test_unknown_decided_and_bad_duration_are_clear_errors(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        with pytest.raises(NotFound, match="no approval request 'ZZZZZZZZ'"):
            await broker.approve("ZZZZZZZZ", DBA)
        with pytest.raises(ApprovalError, match="positive duration"):
            await broker.approve(pending.request_id, DBA, for_seconds=0)
        await broker.deny(pending.request_id, DBA, "no")
        with pytest.raises(AlreadyDecided, match="already denied by bob@example.com"):
            await broker.approve(pending.request_id, ROOT)

    run(tmp_path, scenario)


def test_unanswered_request_expires_and_denies(tmp_path):
    async def scenario(broker, sink, clock):
        first = await broker.open(sql_request(), approve_decision(timeout=60), FLOW)
        second = await broker.open(sql_request("DROP TABLE t"), approve_decision(timeout=600), FLOW)
        clock.now += 61
        listed = await broker.list(pending_only=False)
        await broker.sweep()
        outcome = await first.wait()
        with pytest.raises(AlreadyDecided, match="already expired"):
            await broker.approve(first.request_id, DBA)
        clock.now += 600
        with pytest.raises(Expired, match="expired before it was decided"):
            await broker.approve(second.request_id, DBA)
        return listed, outcome, await second.wait(), sink

    listed, outcome, second, sink = run(tmp_path, scenario)
    assert [r.state for r in listed] == [State.EXPIRED, State.PENDING]
    assert not outcome.approved and "expired" in outcome.reason
    assert not second.approved and sink.states().count("expired") == 2


def test_time_boxed_grant_covers_identical_operations_until_it_ends(tmp_path):
    async def scenario(broker, sink, clock):
        decision = approve_decision()
        first = await broker.open(sql_request(), decision, FLOW)
        await broker.approve(first.request_id, DBA, for_seconds=900)
        assert (await first.wait()).approved
        again = await broker.open(sql_request(), decision, FLOW)
        other_sql = await broker.open(sql_request("DELETE FROM orders"), decision, FLOW)
        other_agent = await broker.open(sql_request(subject="other-app"), decision, FLOW)
        clock.now += 901
        after = await broker.open(sql_request(), decision, FLOW)
        return first, again, await again.wait(), other_sql, other_agent, after

    first, again, again_outcome, other_sql, other_agent, after = run(tmp_path, scenario)
    assert not again.waiting and again_outcome.approved and again_outcome.request_id == first.request_id
    assert "time-boxed grant" in again_outcome.reason
    assert other_sql.waiting and other_agent.waiting and after.waiting


def test_policy_time_boxed_grant(tmp_path):
    async def scenario(broker, sink, clock):
        decision = approve_decision(grant="time-boxed", grant_seconds=120)
        first = await broker.open(sql_request(), decision, FLOW)
        decided = await broker.approve(first.request_id, DBA)
        await first.wait()
        return decided, await broker.open(sql_request(), decision, FLOW)

    decided, again = run(tmp_path, scenario)
    assert decided.granted_until == decided.decided_at + 120 and not again.waiting


def test_one_shot_approval_of_a_hold_whose_daemon_died_allows_one_retry(tmp_path):
    async def scenario(broker, sink, clock):
        # a daemon killed while a request was held: nothing withdrew it, and it can still be approved
        dead_store = await SqliteStore.open(str(tmp_path / "approvals.db"))
        dead = ApprovalBroker(dead_store, ListSink(), clock=clock, poll_seconds=3600)
        abandoned = await dead.open(sql_request(), approve_decision(), FLOW)
        await dead_store.close()
        await broker.approve(abandoned.request_id, DBA)
        retry = await broker.open(sql_request(), approve_decision(), FLOW)
        third = await broker.open(sql_request(), approve_decision(), FLOW)
        return abandoned, retry, await retry.wait(), third

    abandoned, retry, outcome, third = run(tmp_path, scenario)
    assert not retry.waiting and outcome.approved and outcome.request_id == abandoned.request_id
    assert third.waiting


def test_withdrawn_request_wakes_its_waiter_and_cannot_be_decided(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        withdrawn = await broker.withdraw(pending.request_id.lower(), "the client cancelled the statement")
        outcome = await waiting
        again = await broker.withdraw(pending.request_id, "the client disconnected")
        late = await pending.withdraw("the client disconnected")
        with pytest.raises(AlreadyDecided, match="was withdrawn \\(the client cancelled the statement\\): nothing waits"):
            await broker.approve(pending.request_id, DBA)
        with pytest.raises(AlreadyDecided, match="was withdrawn"):
            await broker.deny(pending.request_id, ROOT, "no")
        return withdrawn, outcome, again, late, await broker.list(pending_only=False), sink

    withdrawn, outcome, again, late, stored, sink = run(tmp_path, scenario)
    assert withdrawn.state is State.WITHDRAWN and withdrawn.decision_reason == "the client cancelled the statement"
    assert withdrawn.approver is None and withdrawn.decided_at is not None
    assert not outcome.approved and outcome.withdrawn and outcome.reason == "the client cancelled the statement"
    assert outcome.request_id == withdrawn.request_id
    assert again == withdrawn and late is None  # idempotent: the first withdrawal stands, nothing new recorded
    assert [(r.state, r.decision_reason) for r in stored] == [(State.WITHDRAWN, "the client cancelled the statement")]
    assert sink.states() == ["pending", "withdrawn"]
    event = sink.events[-1]
    assert event.kind == "approval" and event.decision == "deny" and event.reason == "the client cancelled the statement"
    assert event.outcome["request_id"] == withdrawn.request_id


def test_concurrent_withdrawals_of_a_request_are_one(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        results = await asyncio.gather(pending.withdraw("the client cancelled the statement"),
                                       broker.withdraw(pending.request_id, "the client disconnected"))
        return results, await waiting, sink

    (first, second), outcome, sink = run(tmp_path, scenario)
    assert first == second and first.decision_reason == "the client cancelled the statement"
    assert outcome.reason == "the client cancelled the statement"
    assert sink.states() == ["pending", "withdrawn"]


def test_a_decision_made_first_stands_against_a_withdrawal(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        await broker.approve(pending.request_id, DBA)
        withdrawn = await pending.withdraw("the client cancelled the statement")
        return withdrawn, await waiting, await broker.withdraw("ZZZZZZZZ", "gone"), sink

    withdrawn, outcome, unknown, sink = run(tmp_path, scenario)
    assert withdrawn is None and unknown is None
    assert outcome.approved and not outcome.withdrawn
    assert sink.states() == ["pending", "approved"]


def test_a_cancelled_wait_withdraws_its_request(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await broker.close()  # waits for the withdrawal the cancel started
        return pending, await broker.list(pending_only=False)

    pending, stored = run(tmp_path, scenario)
    assert [(r.request_id, r.state, r.decision_reason) for r in stored] == [
        (pending.request_id, State.WITHDRAWN, "the client disconnected")]


def test_an_opening_cancelled_midway_leaves_nothing_pending(tmp_path):
    async def scenario(broker, sink, clock):
        opening = asyncio.ensure_future(broker.open(sql_request(), approve_decision(), FLOW))
        await asyncio.sleep(0)  # the grant lookup is under way: the caller goes away
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        await broker.close()
        return opening, await broker.list(pending_only=False), sink

    opening, stored, sink = run(tmp_path, scenario)
    assert opening.cancelled()
    assert [(r.state, r.decision_reason) for r in stored] == [(State.WITHDRAWN, "the client disconnected")]
    assert sink.states() == ["pending", "withdrawn"]


def test_close_withdraws_what_is_still_waited_on(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        await asyncio.sleep(0)
        await broker.close()
        return await waiting, await broker.list(pending_only=False)

    outcome, stored = run(tmp_path, scenario)
    assert outcome.withdrawn and outcome.reason == "the client disconnected"
    assert [r.state for r in stored] == [State.WITHDRAWN]


def test_a_withdrawal_that_cannot_be_audited_still_releases_the_waiter(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        sink.down = True
        withdrawn = await pending.withdraw("the client cancelled the statement")
        return withdrawn, await waiting, await broker.list()

    withdrawn, outcome, stored = run(tmp_path, scenario)
    assert withdrawn.state is State.WITHDRAWN
    assert not outcome.approved and outcome.withdrawn  # the statement does not run
    assert [r.state for r in stored] == [State.PENDING]  # not recorded: it expires as usual


def test_many_holds_wait_concurrently_and_get_their_own_decision(tmp_path):
    async def scenario(broker, sink, clock):
        holds = [await broker.open(sql_request(f"DELETE FROM t WHERE id = {i}"), approve_decision(), FLOW) for i in range(20)]
        waits = [asyncio.ensure_future(h.wait()) for h in holds]
        for i, hold in reversed(list(enumerate(holds))):
            if i % 2:
                await broker.approve(hold.request_id, DBA)
            else:
                await broker.deny(hold.request_id, DBA, f"no {i}")
        return holds, await asyncio.gather(*waits)

    holds, outcomes = run(tmp_path, scenario)
    assert len({h.request_id for h in holds}) == 20
    assert [o.request_id for o in outcomes] == [h.request_id for h in holds]
    assert [o.approved for o in outcomes] == [bool(i % 2) for i in range(20)]
    assert [o.reason for o in outcomes if not o.approved] == [f"no {i}" for i in range(0, 20, 2)]


def test_audit_unavailable_fails_closed(tmp_path):
    sink = ListSink()
    sink.down = True

    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        return pending, await pending.wait(), await broker.list(pending_only=False)

    pending, outcome, stored = run(tmp_path, scenario, sink=sink)
    assert not pending.waiting and not outcome.approved and "audit unavailable" in outcome.reason
    assert [r.state for r in stored] == [State.PENDING]  # the closing record could not be written either
    assert pending.request_id == stored[0].request_id


def test_approval_that_cannot_be_audited_does_not_take_effect(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        sink.down = True
        with pytest.raises(Exception, match="audit disk full"):
            await broker.approve(pending.request_id, DBA)
        return await broker.list()

    assert [r.state for r in run(tmp_path, scenario)] == [State.PENDING]


def test_decisions_without_an_approval_spec(tmp_path):
    async def scenario(broker, sink, clock):
        no_spec = await broker.open(sql_request(), Decision(Verdict.APPROVE, "r"), FLOW)
        with pytest.raises(ValueError, match="only 'approve' decisions are held"):
            await broker.open(sql_request(), Decision(Verdict.ALLOW, "r"), FLOW)
        return await no_spec.wait()

    outcome = run(tmp_path, scenario)
    assert not outcome.approved and "names no approvers" in outcome.reason


def test_a_decision_made_by_another_broker_on_the_shared_store_wakes_the_waiter(tmp_path):
    async def scenario(broker, sink, clock):
        pending = await broker.open(sql_request(), approve_decision(), FLOW)
        waiting = asyncio.ensure_future(pending.wait())
        other_store = await SqliteStore.open(str(tmp_path / "approvals.db"))
        other = ApprovalBroker(other_store, ListSink(), clock=clock)
        await other.approve(pending.request_id, DBA)
        await other_store.close()
        await broker.sweep()
        return await waiting

    outcome = run(tmp_path, scenario)
    assert outcome.approved and outcome.approver == "bob@example.com"


def test_an_agent_cannot_have_more_than_its_share_of_requests_waiting(tmp_path):
    async def scenario(broker, sink, clock):
        broker.max_pending_per_agent = 3
        holds = [await broker.open(sql_request(f"DELETE FROM t WHERE id = {i}"), approve_decision(), FLOW)
                 for i in range(4)]
        await broker.deny(holds[0].request_id, DBA, "no")
        await holds[0].wait()
        again = await broker.open(sql_request("DELETE FROM t WHERE id = 9"), approve_decision(), FLOW)
        return holds, await holds[3].wait(), again

    holds, refused, again = run(tmp_path, scenario)
    assert [h.waiting for h in holds] == [True, True, True, False]
    assert not refused.approved and refused.request_id is None
    assert refused.reason == ("agent claude already has 3 operations waiting for approval; decide or withdraw "
                              "those first")
    assert again.waiting  # a decided request frees its place
