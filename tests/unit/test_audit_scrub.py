"""Secrets that slipped into an event are masked before the record is chained."""

from interceptor.audit.scrub import REDACTED, scrub, scrub_text

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
