"""The hash chain, sans-IO: linking events into records and proving a stored chain.

Each record covers the previous record's hash, so editing, deleting or reordering any
record breaks every later link. Stores only persist `Record`s and hand them back in
storage order; everything that decides whether a chain is intact lives here.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from _json import make_encoder
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from interceptor.audit.event import SharedSummary

GENESIS = "0" * 64


def _jsonable(value: Any) -> Any:
    """JSON form of values events may carry that json does not know (sets, bytes, enums, paths)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def normalize(value: Any) -> Any:
    """Plain JSON values (dict/list/str/number/bool/None) that survive a store round trip unchanged."""
    try:
        return json.loads(json.dumps(value, default=_jsonable, allow_nan=False))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"audit event is not representable as JSON: {exc}") from exc


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder _CANONICAL.encode builds afresh for every call, built once (no circularity
# check: what is encoded is a tree, copied by the scrubber or parsed from a store).
_ENCODE = make_encoder(None, _CANONICAL.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, UTF-8; what the hash covers."""
    return "".join(_ENCODE(value, 0))


_encode_string = json.encoder.encode_basestring  # what _CANONICAL writes a str as (ensure_ascii=False)
_KEY_TEXT: dict[str, str] = {}  # a key's '"key":', for the handful of keys events have


def _key_text(key: str) -> str:
    text = _KEY_TEXT.get(key)
    if text is None:
        text = f"{_encode_string(key)}:"
        if len(_KEY_TEXT) < 256:
            _KEY_TEXT[key] = text
    return text


def event_text(event: dict[str, Any]) -> str:
    """canonical_json(event), character for character, written member by member: the
    read-only per-flow summaries it carries are encoded once per flow (JSON is
    compositional), strings, numbers and null as json writes them, anything else by
    canonical_json."""
    parts = []
    for key in sorted(event):
        if type(key) is not str:
            return canonical_json(event)  # json's own rules for other keys
        value = event[key]
        kind = type(value)
        if kind is str:
            text = _encode_string(value)
        elif value is None:
            text = "null"
        elif kind is SharedSummary:
            text = value.derived("canonical_json", canonical_json)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and math.isfinite(value):
            text = float.__repr__(value)
        else:
            text = canonical_json(value)
        parts.append(_key_text(key) + text)
    return "{" + ",".join(parts) + "}"


def record_hash(prev_hash: str, chain_id: str, seq: int, event: dict[str, Any]) -> str:
    return _hash(prev_hash, canonical_json(chain_id), seq, canonical_json(event))


def _hash(prev_hash: str, chain_text: str, seq: int, event_text: str) -> str:
    """sha256 over the previous hash and canonical_json({"chain_id", "event", "seq"}), the
    body spelled out around the canonical texts of chain id and event, each made once."""
    body = f'{{"chain_id":{chain_text},"event":{event_text},"seq":{seq}}}'
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """One chained audit record: the event plus its place in its chain."""

    chain_id: str
    seq: int
    prev_hash: str
    hash: str
    event: dict[str, Any]
    text: str | None = field(default=None, compare=False, repr=False)  # canonical_json(event), once known

    @property
    def event_text(self) -> str:
        return self.text if self.text is not None else canonical_json(self.event)

    @property
    def event_id(self) -> str | None:
        return self.event.get("event_id")

    def to_dict(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash,
                "event": self.event}


@dataclass(frozen=True, slots=True)
class Head:
    """Where a chain ends: the seq and hash of its last record."""

    seq: int = 0
    hash: str = GENESIS


def link(head: Head, chain_id: str, events: Iterable[dict[str, Any]]) -> tuple[list[Record], Head]:
    """Chain normalized events after `head`; returns the records and the new head."""
    records = []
    chain_text = canonical_json(chain_id)
    seq, prev = head.seq, head.hash
    for event in events:
        seq += 1
        text = event_text(event)
        digest = _hash(prev, chain_text, seq, text)
        records.append(Record(chain_id, seq, prev, digest, event, text))
        prev = digest
    return records, Head(seq, prev)


class Problem(enum.StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    REORDERED = "reordered"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records_checked: int
    chains: int = 0
    chain_id: str | None = None
    first_bad: int | None = None  # seq of the first record found edited, deleted or out of place
    event_id: str | None = None
    problem: Problem | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records_checked": self.records_checked, "chains": self.chains,
                "chain_id": self.chain_id, "first_bad": self.first_bad, "event_id": self.event_id,
                "problem": self.problem.value if self.problem else None, "detail": self.detail}


@dataclass(slots=True)
class _ChainState:
    head: Head
    last: Record | None = None
    gap: Record | None = None  # the record after a missing seq, until we know deleted or reordered
    missing: int = 0
    bad: VerifyResult | None = None


def _bad(record: Record, problem: Problem, detail: str) -> VerifyResult:
    return VerifyResult(False, 0, chain_id=record.chain_id, first_bad=record.seq, event_id=record.event_id,
                        problem=problem, detail=detail)


def _check(state: _ChainState, record: Record) -> VerifyResult | None:
    """Check the next record of a chain in storage order; the first problem found, if any."""
    if state.gap is not None:
        if record.seq == state.missing:
            gap = state.gap
            return _bad(gap, Problem.REORDERED,
                        f"seq {gap.seq} is stored before seq {state.missing}, out of chain order")
        return None
    expected = state.head.seq + 1
    if record_hash(record.prev_hash, record.chain_id, record.seq, record.event) != record.hash:
        return _bad(record, Problem.EDITED, f"seq {record.seq} does not match its hash")
    if record.seq < expected:
        return _bad(record, Problem.REORDERED, f"seq {record.seq} is stored after seq {state.head.seq}")
    if record.seq > expected:
        state.gap, state.missing = record, expected
        return None
    if record.prev_hash != state.head.hash:
        culprit = state.last or record
        return _bad(culprit, Problem.EDITED,
                    f"seq {record.seq} does not cover the hash of seq {state.head.seq}: that record was changed")
    state.head, state.last = Head(record.seq, record.hash), record
    return None


def _gap_result(state: _ChainState) -> VerifyResult:
    gap = state.gap
    assert gap is not None
    return VerifyResult(False, 0, chain_id=gap.chain_id, first_bad=state.missing, event_id=None,
                        problem=Problem.DELETED,
                        detail=f"seq {state.missing} is missing (the next stored record is seq {gap.seq}, "
                               f"event {gap.event_id})")


def _tail_result(chain_id: str, state: _ChainState, stored: Head) -> VerifyResult | None:
    """Compare the chain's end with the head the store kept beside it (catches a truncated tail)."""
    end = state.head
    if stored.seq > end.seq:
        return VerifyResult(False, 0, chain_id=chain_id, first_bad=end.seq + 1, problem=Problem.DELETED,
                            detail=f"records {end.seq + 1}..{stored.seq} are missing from the end of the chain")
    if stored != end:
        return VerifyResult(False, 0, chain_id=chain_id, first_bad=stored.seq,
                            event_id=state.last.event_id if state.last and state.last.seq == stored.seq else None,
                            problem=Problem.EDITED,
                            detail=f"the chain head says seq {stored.seq} hash {stored.hash[:16]}…, "
                                   f"the records end at seq {end.seq} hash {end.hash[:16]}…")
    return None


def verify_records(records: Iterable[Record], heads: dict[str, Head] | None = None) -> VerifyResult:
    """Prove every chain in `records` (given in storage order) and name the first bad record.

    `heads` is what the store recorded as each chain's end, when it keeps one; without it a
    deleted tail cannot be told from a chain that simply ends there.
    """
    chains: dict[str, _ChainState] = {}
    checked = 0
    first: VerifyResult | None = None
    for record in records:
        checked += 1
        state = chains.setdefault(record.chain_id, _ChainState(Head()))
        if state.bad is not None:
            continue
        state.bad = _check(state, record)
        if state.bad is not None and first is None:
            first = state.bad
    for chain_id, state in chains.items():
        if state.bad is None and state.gap is not None:
            state.bad = _gap_result(state)
        if state.bad is None and heads is not None:
            state.bad = _tail_result(chain_id, state, heads.get(chain_id, Head()))
        if state.bad is not None and first is None:
            first = state.bad
    for chain_id, stored in (heads or {}).items():
        if chain_id not in chains and stored.seq > 0 and first is None:
            first = VerifyResult(False, 0, chain_id=chain_id, first_bad=1, problem=Problem.DELETED,
                                 detail=f"all {stored.seq} records of chain {chain_id} are missing")
    if first is None:
        return VerifyResult(True, checked, len(chains))
    return VerifyResult(False, checked, len(chains), first.chain_id, first.first_bad, first.event_id,
                        first.problem, first.detail)

