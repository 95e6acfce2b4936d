"""Secrets that slipped into an event are masked before the record is chained."""

import copy
import enum
import json
import pickle

import pytest

from interceptor.audit.event import SharedSummary
from interceptor.audit.scrub import REDACTED, SHORTEST_SECRET, scrub, scrub_event, scrub_text

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_sql_password_literals_are_masked():
    text = scrub_text("ALTER ROLE app WITH PASSWORD 'it''s secret' VALID UNTIL 'infinity'")
    assert "secret" not in text
    assert text == f"ALTER ROLE app WITH PASSWORD '{REDACTED}' VALID UNTIL 'infinity'"


def test_url_passwords_and_tokens_are_masked():
    text = scrub_text(f"psql postgresql://app:hunter2@db/prod -c x Authorization: Bearer {JWT}")
    assert "hunter2" not in text and JWT not in text
    assert "postgresql://app:" in text and "@db/prod" in text


def test_secret_keys_are_masked_at_any_depth():
    event = {"operation": {"headers": {"Authorization": "Basic abc", "accept": "json"}, "password": "x"},
             "outcome": [{"api_key": "k", "rows": 3}], "token_id": "t-1"}
    assert scrub(event) == {"operation": {"headers": {"Authorization": REDACTED, "accept": "json"},
                                          "password": REDACTED},
                            "outcome": [{"api_key": REDACTED, "rows": 3}], "token_id": "t-1"}


def test_identifiers_and_plain_values_are_kept():
    event = {"event_id": "a" * 32, "flow_id": "f" * 48, "process": {"cgroup": "/docker/" + "ab12" * 16},
             "operation": {"sql": "SELECT name FROM users WHERE id = 7"}, "rows": 5, "ok": True}
    assert scrub(event) == event


def test_events_with_values_json_would_change_are_normalized_then_scrubbed():
    class Kind(enum.Enum):
        READ = "read"

    event = {"groups": frozenset({"b", "a"}), "kind": Kind.READ, "spans": (1, 2), "codes": {7: "x"},
             "db": {"password": ("p", 1)}, "sql": "ALTER ROLE a PASSWORD 'hunter2'"}
    assert scrub_event(event) == {"groups": ["a", "b"], "kind": "read", "spans": [1, 2], "codes": {"7": "x"},
                                  "db": {"password": REDACTED}, "sql": f"ALTER ROLE a PASSWORD '{REDACTED}'"}
    with pytest.raises(ValueError, match="not representable as JSON"):
        scrub_event({"latency": float("inf")})


def test_plain_events_come_back_equal_to_the_json_round_trip():
    event = {"kind": "statement", "n": 3, "ok": False, "ms": 0.25, "none": None, "nested": [{"a": "b"}, "é"]}
    assert scrub_event(event) == json.loads(json.dumps(event)) == event


def test_strings_shorter_than_any_secret_pattern_are_kept_as_they_are():
    shortest = "://a:b@"
    assert len(shortest) == SHORTEST_SECRET and scrub_text(shortest) != shortest
    assert scrub_text("x PASSWORD ''") != "x PASSWORD ''" and len("PASSWORD ''") > SHORTEST_SECRET
    assert scrub({"agent": shortest[:-1], "url": shortest}) == {"agent": shortest[:-1], "url": scrub_text(shortest)}


def test_shared_summaries_are_read_only_and_scrubbed_like_any_dict():
    summary = SharedSummary({"exe": "/usr/bin/psql", "cmdline": ["psql", "postgresql://app:hunter2@db/prod"],
                             "password": "x"})
    with pytest.raises(TypeError, match="read-only"):
        summary["exe"] = "/bin/sh"
    with pytest.raises(TypeError, match="read-only"):
        summary.update(exe="/bin/sh")
    first = scrub_event({"kind": "statement", "process": summary})
    again = scrub_event({"kind": "statement", "process": summary})
    assert first == again == {"kind": "statement", "process": {
        "exe": "/usr/bin/psql", "cmdline": ["psql", f"postgresql://app:{REDACTED}@db/prod"], "password": REDACTED}}
    assert isinstance(first["process"], dict)
    assert first["process"] is again["process"]  # scrubbed once, kept with the summary
    assert copy.deepcopy(summary) == summary and pickle.loads(pickle.dumps(summary)) == summary
    other = SharedSummary({"exe": "/usr/bin/python3"})
    assert scrub_event({"process": other}) == {"process": {"exe": "/usr/bin/python3"}}
