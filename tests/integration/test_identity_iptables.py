"""In iptables mode too, an agent refused for its identity is explained: status, the log and
the audit trail name the validator's reason, down to the refused connect's own record (the
enforcer accepts it on the refuse port, resets it and audits it as connect_denied)."""

from __future__ import annotations

import pytest

from test_identity_flows import explains_refusal, identity_daemon


@pytest.fixture(scope="module")
def setup(remote, tmp_path_factory):
    with identity_daemon(remote, tmp_path_factory.mktemp("identity-iptables"), "iptables") as running:
        yield running


def test_a_refused_identity_says_why_in_iptables_mode(setup, remote):
    daemon, op = setup
    explains_refusal(daemon, op, remote)
