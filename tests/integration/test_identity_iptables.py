"""In iptables mode too, an agent refused for its identity is explained: status, the log and
the audit trail name the validator's reason (iptables refuses connects without reporting
them, so the identity record is the audit of why)."""

from __future__ import annotations

import pytest

from test_identity_flows import explains_refusal, identity_daemon


@pytest.fixture(scope="module")
def setup(remote, tmp_path_factory):
    with identity_daemon(remote, tmp_path_factory.mktemp("identity-iptables"), "iptables") as running:
        yield running


def test_a_refused_identity_says_why_in_iptables_mode(setup, remote):
    daemon, op = setup
    explains_refusal(daemon, op, remote, kernel_reports=False)
