"""The protocol registry: the one list of protocols, what each contributes, and the schema,
handlers and test cases it makes."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from interceptor.handlers import handler_for
from interceptor.operations import HttpRequest, KubeRequest, McpCall, SqlQuery, SshRequest, TcpConnect
from interceptor.policy.schema import composed, text
from interceptor.protocols import protocols, spec_for, spec_for_key, spec_of

ROOT = Path(__file__).resolve().parents[2]


def test_the_registered_protocols_and_their_keys():
    assert [(s.name, s.operation_key, s.operation) for s in protocols()] == [
        ("tcp", "tcp", TcpConnect), ("postgres", "sql", SqlQuery), ("http", "http", HttpRequest),
        ("kubernetes", "kubernetes", KubeRequest), ("mcp", "mcp", McpCall), ("ssh", "ssh", SshRequest)]
    assert spec_for("postgres") is spec_for_key("sql") is spec_of(SqlQuery("select 1"))
    assert spec_for("kubernetes") is spec_for_key("kubernetes") is spec_of(KubeRequest("get", "/api"))
    assert spec_for("ssh") is spec_for_key("ssh") is spec_of(SshRequest("shell"))
    assert spec_for_key("rdp") is None and spec_of(object()) is None
    with pytest.raises(LookupError, match="no handler for protocol 'rdp'"):
        spec_for("rdp")


@pytest.mark.parametrize("spec", protocols(), ids=lambda s: s.name)
def test_every_protocol_has_its_handler(spec):
    handler = importlib.import_module(spec.handler).HANDLER
    assert handler_for(spec.name) is handler and handler.protocol == spec.name


def test_handler_for_a_protocol_without_one_is_a_lookup_error():
    with pytest.raises(LookupError, match="no handler for protocol 'rdp'"):
        handler_for("rdp")


def test_the_shipped_schema_is_what_the_registry_composes():
    assert (ROOT / "policy" / "schema.json").read_text() == text(), (
        "policy/schema.json is stale: run .venv/bin/python scripts/gen_policy_reference.py --schema")
    defs = composed()["$defs"]
    assert defs["resource"]["properties"]["protocol"] == {"enum": ["tcp", "postgres", "http", "kubernetes", "mcp", "ssh"]}
    assert {"tcp", "sql", "http", "kubernetes", "mcp", "ssh", "tcp-options", "postgres-options", "kubernetes-options",
            "ssh-options"} <= set(defs)
    assert json.loads(text()) == composed()


def test_the_policy_package_judges_without_importing_a_handler():
    code = ("import sys\n"
            "from interceptor.policy import PolicyEngine, load_policy\n"
            "from interceptor.operations import Request, SqlQuery, Subject\n"
            "engine = PolicyEngine(load_policy('policy/default.yaml'))\n"
            "engine.decide(Request(Subject('demo'), 'demo-db', SqlQuery('select 1')))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('interceptor.handlers', 'asyncio'))))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
