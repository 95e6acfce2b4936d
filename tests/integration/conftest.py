"""Integration fixtures: root, a remote host in a network namespace, and the real daemon."""

from __future__ import annotations

import os

import pytest

import netns


@pytest.fixture(scope="session", autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (BPF, cgroups, network namespaces): run `sudo make test`",
                    pytrace=False)


@pytest.fixture(scope="session")
def remote():
    host = netns.create()
    yield host
    host.close()
