"""The hash chain, driven directly: link events, tamper with records, verify names the damage."""

import json
import os
from dataclasses import replace

import pytest

from interceptor.audit.chain import (GENESIS, Head, Problem, canonical_json, link, normalize, record_hash,
                                     verify_records)
from interceptor.audit.event import SharedSummary, new_event_id


def _chain(count: int, chain_id: str = "host-a", head: Head = Head()):
    events = [normalize({"kind": "statement", "event_id": f"{chain_id}-{n}", "n": n}) for n in range(count)]
    return link(head, chain_id, events)


def test_linked_records_cover_their_predecessor():
    records, head = _chain(3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS
    assert records[1].prev_hash == records[0].hash and records[2].prev_hash == records[1].hash
    assert head == Head(3, records[2].hash)
    assert records[0].hash == record_hash(GENESIS, "host-a", 1, records[0].event)


def test_intact_chains_verify():
    a, head_a = _chain(5, "host-a")
    b, head_b = _chain(4, "host-b")
    interleaved = [a[0], b[0], a[1], a[2], b[1], b[2], a[3], b[3], a[4]]
    result = verify_records(interleaved, {"host-a": head_a, "host-b": head_b})
    assert result.ok and result.records_checked == 9 and result.chains == 2


def test_empty_store_verifies():
    assert verify_records([], {}).ok


def test_edited_record_is_named():
    records, head = _chain(5)
    records[2] = replace(records[2], event={**records[2].event, "n": 99})
    result = verify_records(records, {"host-a": head})
    assert (result.ok, result.problem, result.first_bad, result.event_id) == (False, Problem.EDITED, 3, "host-a-2")


def test_edit_with_recomputed_hash_is_named_by_its_successor():
    records, head = _chain(5)
    forged = {**records[1].event, "n": 42}
    records[1] = replace(records[1], event=forged, hash=record_hash(records[1].prev_hash, "host-a", 2, forged))
    result = verify_records(records, {"host-a": head})
    assert (result.problem, result.first_bad, result.event_id) == (Problem.EDITED, 2, "host-a-1")


def test_deleted_record_is_named():
    records, head = _chain(6)
    del records[3]
    result = verify_records(records, {"host-a": head})
    assert (result.problem, result.first_bad) == (Problem.DELETED, 4)
    assert "seq 5" in result.detail


def test_deleted_tail_is_caught_by_the_head():
    records, head = _chain(6)
    assert verify_records(records[:4]).ok  # without a head a shorter chain looks whole
    result = verify_records(records[:4], {"host-a": head})
    assert (result.problem, result.first_bad) == (Problem.DELETED, 5)


def test_whole_chain_deleted_is_caught_by_the_head():
    _, head = _chain(3)
    result = verify_records([], {"host-a": head})
    assert (result.ok, result.problem, result.chain_id) == (False, Problem.DELETED, "host-a")


def test_swapped_records_are_reordered():
    records, head = _chain(6)
    records[2], records[3] = records[3], records[2]
    result = verify_records(records, {"host-a": head})
    assert (result.problem, result.first_bad, result.event_id) == (Problem.REORDERED, 4, "host-a-3")


def test_record_moved_to_the_end_is_reordered():
    records, head = _chain(6)
    records.append(records.pop(1))
    result = verify_records(records, {"host-a": head})
    assert result.problem is Problem.REORDERED


def test_chain_continues_from_a_head():
    first, head = _chain(3)
    more, head = _chain(2, head=head)
    assert [r.seq for r in more] == [4, 5]
    assert verify_records(first + more, {"host-a": head}).ok


def test_normalize_makes_values_round_trip():
    value = normalize({"groups": frozenset({"b", "a"}), "raw": b"\x00ok", "nested": {"t": (1, 2)}})
    assert value == {"groups": ["a", "b"], "raw": "\x00ok", "nested": {"t": [1, 2]}}
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_non_finite_numbers_are_refused_clearly():
    with pytest.raises(ValueError, match="not representable as JSON"):
        normalize({"latency": float("nan")})


def test_event_ids_are_unique_and_new_after_a_fork():
    ids = {new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    assert child[:20] != new_event_id()[:20]  # the child drew its own random prefix


def test_stored_text_is_the_canonical_json_the_hash_covers():
    records, _ = link(Head(), "host-ä", [normalize({"kind": "x", "text": "é\u2028\"", "n": 1.5})])
    assert records[0].event_text == canonical_json(records[0].event)
    assert records[0].hash == record_hash(GENESIS, "host-ä", 1, records[0].event)


def test_events_with_shared_summaries_hash_as_their_plain_json_would():
    """The chain encodes a flow's summaries once and splices them in; what it stores and
    hashes must be exactly canonical_json of the event, which verify recomputes."""
    process = SharedSummary({"exe": "/usr/bin/psql \"quoted\"", "cmdline": ["psql", "é\u2028\\n"], "pid": 7})
    identity = SharedSummary({"subject": "agent@example.com", "groups": ["b", "a"], "expires_at": 1.5})
    events = [{"kind": "statement", "process": process, "identity": identity, "n": n, "note": f"{process}"}
              for n in range(3)] + [{"kind": "connection", "process": process}]
    records, head = link(Head(), "host-a", events)
    for record, event in zip(records, events):
        plain = json.loads(json.dumps(event))
        assert record.event_text == canonical_json(plain)
        assert record.hash == record_hash(record.prev_hash, "host-a", record.seq, plain)
    assert verify_records([replace(r, event=json.loads(r.event_text)) for r in records], {"host-a": head}).ok


def test_records_are_written_as_the_stdlib_encoder_wrote_them():
    """Stores written before the encoder was built once keep verifying: canonical_json and the
    chain's member-by-member event text are json.JSONEncoder's text for every kind of value."""
    stdlib = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    summary = SharedSummary({"exe": "/bin/é\x00\"\\", "n": 2 ** 70, "f": -0.0, "l": [1e16, 1e-7, True, None]})
    values = ["", "é\u2028\x7f😀\n\t/<", 0, -1, 2 ** 70, 1.5, 1e16, 1e-7, -0.0, 1796040772.600637, True, False,
              None, [], {}, {"b": [1, {"z": 1, "a": None}], "a": "x"}, summary]
    event = {f"k{n}": value for n, value in enumerate(values)} | {"": 1, "é": 2, "A": 3}
    plain = json.loads(json.dumps(event))
    assert canonical_json(plain) == stdlib(plain)
    assert link(Head(), "host-a", [event])[0][0].event_text == stdlib(plain)
    for value in values:
        assert canonical_json(value) == stdlib(value)
    for bad in (float("nan"), {"x": float("inf")}):
        with pytest.raises(ValueError):
            canonical_json(bad)
        with pytest.raises(ValueError):
            link(Head(), "host-a", [{"x": bad}])
