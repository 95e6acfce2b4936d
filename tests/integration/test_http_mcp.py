"""MCP through the kernel redirect: the `mcp` package's client (ClientSession over
mcp.client.streamable_http, and its high-level Client), run in the agent's cgroup, calls the
tools of an MCP server at its real address; the enforcer judges every JSON-RPC message, sends
the server's own token upstream (never the agent's), answers refused calls with a JSON-RPC
error naming the rule, holds calls for approval, masks tool results and filters tools/list.

The server is tests/mcp_server.py, an MCP tool server FOR TESTS built with the `mcp` package's
MCPServer (Streamable HTTP, JSON or SSE responses, a bearer token required), which logs every
tool call that reaches it. Two run in the remote host's network namespace: one answering JSON,
reached by the agent over plain HTTP; one answering with server-sent events, reached over HTTPS
that the enforcer terminates with the host CA (the resource's upstream is clear text).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from daemon import Daemon
from http_setup import (
    agent_python, ca_file, decide, header, last_json, policy_text, request_records, resource_block,
    running_http_daemon, start_agent, wait_records, write_token,
)
from kube_fixture import McpServer, running_mcp
from netns import RemoteHost

pytestmark = pytest.mark.root

CODER, VIEWER = "coder", "viewer"
SERVER_TOKEN = "mcp-server-token-0f3a"
AGENT_TOKEN = "agents-own-token-77"
SEARCH_REASON = "searching for credentials is not a coding task"
DELETE_REASON = "files are deleted by people"
ALL_TOOLS = ["search_docs", "read_file", "delete_file", "get_customer"]
RULES = [
    f"{{name: coder-search, effect: allow, agents: [{CODER}], resources: [json, sse], mcp: {{tools: ['search_*']}}}}",
    "{name: no-secret-search, effect: deny, resources: [json, sse], reason: " + SEARCH_REASON + ","
    " mcp: {tools: ['search_*'], arguments: {query: ['*password*']}}}",
    f"{{name: coder-read-docs, effect: allow, agents: [{CODER}], resources: [json, sse],"
    " mcp: {tools: [read_file], arguments: {path: ['/srv/docs/*']}}}",
    f"{{name: coder-customers, effect: allow, agents: [{CODER}], resources: [json, sse],"
    " mcp: {tools: [get_customer]}}",
    "{name: mask-customer-data, effect: mask, resources: [json, sse], mcp: {methods: [tools/call]},"
    " mask: {classifiers: [email, card], style: redact}}",
    f"{{name: coder-delete-needs-leads, effect: approve, agents: [{CODER}], resources: [json, sse],"
    " mcp: {tools: [delete_file]}, approval: {groups: [leads], timeout_seconds: 120}}",
    f"{{name: viewer-search, effect: allow, agents: [{VIEWER}], resources: [json, sse],"
    " mcp: {tools: [search_docs]}}",
    f"{{name: viewer-no-delete, effect: deny, agents: [{VIEWER}], resources: [json, sse], reason: {DELETE_REASON},"
    " mcp: {tools: [delete_file]}}",
]

# Run by the agent: argv = URL, CA file ("" for plain HTTP), client ("session": ClientSession over
# streamable_http_client; "auto" or "legacy": the high-level Client in that mode), then the steps
# as JSON: ["list"] or ["call", tool, arguments]. Prints one JSON list of what each step gave.
CLIENT = f"""
import asyncio, json, ssl, sys
import httpx2
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

url, ca, kind, steps = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

async def run(session):
    out = []
    for step in steps:
        try:
            if step[0] == "list":
                out.append({{"tools": [tool.name for tool in (await session.list_tools()).tools]}})
                continue
            result = await session.call_tool(step[1], step[2])
            out.append({{"text": "".join(c.text for c in result.content), "is_error": result.is_error,
                        "structured": result.structured_content}})
        except MCPError as exc:
            out.append({{"error": {{"code": exc.error.code, "message": exc.error.message, "data": exc.error.data}}}})
    return out

async def main():
    http = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=ca) if ca else True,
                              headers={{"Authorization": "Bearer {AGENT_TOKEN}"}},
                              timeout=httpx2.Timeout(30, read=300))
    async with http:
        transport = streamable_http_client(url, http_client=http)
        if kind != "session":
            async with Client(transport, mode=kind) as client:
                return await run(client)
        async with transport as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await run(session)

print(json.dumps(asyncio.run(main())))
"""


@dataclass
class Tools:
    daemon: Daemon
    servers: dict[str, McpServer]  # by resource: json, sse

    def url(self, resource: str) -> str:
        server = self.servers[resource]
        scheme = "https" if resource == "sse" else "http"  # the SSE resource: the agent speaks TLS to the enforcer
        return f"{scheme}://{server.host}:{server.port}/mcp"

    def argv(self, resource: str, steps: list[list[Any]], client: str = "session") -> list[str]:
        ca = str(ca_file(self.daemon)) if resource == "sse" else ""
        return [self.url(resource), ca, client, json.dumps(steps)]

    def run(self, agent: str, resource: str, steps: list[list[Any]], client: str = "session") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = last_json(agent_python(agent, CLIENT, *self.argv(resource, steps, client)))
        return result

    def start(self, agent: str, resource: str, steps: list[list[Any]]) -> subprocess.Popen[str]:
        return start_agent(agent, sys.executable, "-c", textwrap.dedent(CLIENT), *self.argv(resource, steps))


@pytest.fixture(scope="module")
def tools(remote: RemoteHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    workdir = tmp_path_factory.mktemp("mcp")
    token = write_token(workdir / "mcp-credentials", SERVER_TOKEN)
    with running_mcp(workdir / "json", host=remote.ip4, netns=remote.name, json_response=True,
                     token=SERVER_TOKEN) as json_server, \
            running_mcp(workdir / "sse", host=remote.ip4, netns=remote.name, json_response=False,
                        token=SERVER_TOKEN) as sse_server:
        resources = [resource_block("json", "mcp", f"{json_server.host}:{json_server.port}", token),
                     resource_block("sse", "mcp", f"{sse_server.host}:{sse_server.port}", token, "{tls: false}")]
        with running_http_daemon(workdir, policy_text([CODER, VIEWER], resources, RULES)) as daemon:
            yield Tools(daemon, {"json": json_server, "sse": sse_server})


MODES = pytest.mark.parametrize("resource", ["json", "sse"])


def mcp_records(daemon: Daemon, resource: str, tool: str) -> list[dict[str, Any]]:
    return request_records(daemon, lambda e: e["resource"] == resource and
                           (e.get("operation") or {}).get("tool") == tool)


@MODES
def test_allowed_calls_return_and_results_are_masked(tools: Tools, resource: str) -> None:
    server = tools.servers[resource]
    before = len(server.calls())
    listed, search, customer, extra = tools.run(CODER, resource, [
        ["list"], ["call", "search_docs", {"query": "policy"}], ["call", "get_customer", {"id": "42"}],
        ["call", "search_docs", {"query": "install", "api_token": "tok-SECRET-123"}]])
    assert listed == {"tools": ALL_TOOLS}
    text = "policy: Rules match agents, resources and operations; the first matching rule decides."
    assert search == {"text": text, "is_error": False, "structured": {"result": text}}
    assert customer["is_error"] is False and customer["text"].startswith("Customer 42: Ada Lovelace, email ")
    assert customer["structured"] == {"result": customer["text"]}  # masked alike in the text and the structure
    assert "ada@example.com" not in json.dumps(customer) and "4111 1111 1111 1111" not in json.dumps(customer)
    assert "Install with make setup" in extra["text"], extra
    assert [(c["tool"], c["arguments"]) for c in server.calls()[before:]] == [
        ("search_docs", {"query": "policy"}), ("get_customer", {"id": "42"}), ("search_docs", {"query": "install"})]
    posts = [e for e in server.requests() if e["method"] == "POST"]
    assert posts and {header(e, "authorization") for e in posts} == {f"Bearer {SERVER_TOKEN}"}
    assert AGENT_TOKEN not in json.dumps(server.requests())

    [masked] = wait_records(tools.daemon, lambda e: e["resource"] == resource and
                            (e.get("operation") or {}).get("tool") == "get_customer")
    assert (masked["decision"], masked["rule"]) == ("allow", "coder-customers")
    assert masked["outcome"]["masked"] > 0 and masked["outcome"]["status"] == 200
    scrubbed = [e for e in mcp_records(tools.daemon, resource, "search_docs") if "install" in e["operation"]["arguments"]]
    assert scrubbed and "tok-SECRET-123" not in json.dumps([e["operation"] for e in scrubbed]), scrubbed
    assert "api_token" in scrubbed[0]["operation"]["arguments"]


@MODES
def test_denied_calls_raise_mcp_errors_naming_the_rule_and_never_reach_the_server(tools: Tools, resource: str) -> None:
    server = tools.servers[resource]
    before = len(server.calls())
    secret, shadow, after = tools.run(CODER, resource, [
        ["call", "search_docs", {"query": "admin password"}], ["call", "read_file", {"path": "/etc/shadow"}],
        ["call", "read_file", {"path": "/srv/docs/readme.txt"}]])
    assert secret["error"]["code"] == -32003 and secret["error"]["data"] == {"rule": "no-secret-search"}
    assert "no-secret-search" in secret["error"]["message"] and SEARCH_REASON in secret["error"]["message"]
    assert shadow["error"]["code"] == -32003 and shadow["error"]["data"] == {"rule": "default-deny"}
    assert "coder-read-docs" in shadow["error"]["message"], shadow  # the rule that allows read_file, elsewhere
    assert (after["text"], after["is_error"]) == ("Welcome to the stand-in file store.\n", False)
    assert [(c["tool"], c["arguments"]) for c in server.calls()[before:]] == [
        ("read_file", {"path": "/srv/docs/readme.txt"})]
    assert not [e for e in server.requests() if "/etc/shadow" in e["body"] or "admin password" in e["body"]]
    denied = [e["rule"] for e in request_records(tools.daemon, decision="deny", resource=resource)]
    assert {"no-secret-search", "default-deny"} <= set(denied)


def test_tools_list_shows_only_the_tools_the_agent_may_call(tools: Tools) -> None:
    server = tools.servers["json"]
    before = len(server.calls())
    listed, customer, delete = tools.run(VIEWER, "json", [
        ["list"], ["call", "get_customer", {"id": "7"}], ["call", "delete_file", {"path": "/srv/docs/notes.txt"}]])
    assert listed == {"tools": ["search_docs"]}
    assert customer["error"]["data"] == {"rule": "default-deny"}
    assert delete["error"]["data"] == {"rule": "viewer-no-delete"} and DELETE_REASON in delete["error"]["message"]
    assert server.calls()[before:] == []
    listing = [e for e in server.requests() if '"tools/list"' in e["body"]]
    assert listing, "the server answered the tools/list; the enforcer filtered its answer"


@MODES
def test_a_held_call_runs_once_approved_and_not_when_denied(tools: Tools, resource: str) -> None:
    server = tools.servers[resource]
    before = len(server.calls())
    agent = tools.start(CODER, resource, [["call", "delete_file", {"path": "/srv/docs/notes.txt"}],
                                          ["call", "delete_file", {"path": "/srv/docs/readme.txt"}]])
    first = tools.daemon.pending_request(CODER)
    assert first["rule"] == "coder-delete-needs-leads"
    assert first["operation"] == {"kind": "mcp", "method": "tools/call", "tool": "delete_file",
                                  "arguments": '{"path":"/srv/docs/notes.txt"}'}, first
    assert server.calls()[before:] == [], "a held call reached the server"
    decide(tools.daemon, "approve", first["request_id"])
    second = tools.daemon.pending_request(CODER)
    assert json.loads(second["operation"]["arguments"]) == {"path": "/srv/docs/readme.txt"}
    decide(tools.daemon, "deny", second["request_id"], "--reason", "keep the readme")
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    approved, denied = json.loads(out.strip().splitlines()[-1])
    assert (approved["text"], approved["is_error"]) == ("deleted /srv/docs/notes.txt", False)
    assert denied["error"]["code"] == -32003 and "keep the readme" in denied["error"]["message"], denied
    assert "coder-delete-needs-leads" in denied["error"]["message"]
    assert [(c["tool"], c["arguments"]) for c in server.calls()[before:]] == [
        ("delete_file", {"path": "/srv/docs/notes.txt"})]
    records = {json.loads(e["operation"]["arguments"])["path"]: e for e in mcp_records(tools.daemon, resource,
                                                                                       "delete_file")}
    assert records["/srv/docs/notes.txt"]["decision"] == "approve"
    assert records["/srv/docs/notes.txt"]["outcome"]["approval"]["approved"] is True
    assert records["/srv/docs/readme.txt"]["decision"] == "deny"
    assert records["/srv/docs/readme.txt"]["outcome"]["approval"]["approved"] is False


@pytest.mark.parametrize("client", ["auto", "legacy"])
def test_the_high_level_client_in_its_connect_modes(tools: Tools, client: str) -> None:
    listed, search = tools.run(CODER, "sse", [["list"], ["call", "search_docs", {"query": "masking"}]], client=client)
    assert listed == {"tools": ALL_TOOLS}
    assert search["text"].startswith("masking: Masks replace matching values"), search
    if client == "auto":  # it probes server/discover first: plumbing, as initialize is
        probes = request_records(tools.daemon, lambda e: (e.get("operation") or {}).get("method") == "server/discover")
        assert probes and {(e["decision"], e["rule"]) for e in probes} == {("allow", "builtin-mcp-plumbing")}


def test_request_records_name_the_json_rpc_method(tools: Tools) -> None:
    """Each MCP request's record says which JSON-RPC method it carried (initialize, tools/list,
    tools/call), not only the HTTP method: the audit is how one finds what an agent did."""
    tools.run(VIEWER, "json", [["list"]])
    records = request_records(tools.daemon, lambda e: e["agent"] == VIEWER and e["resource"] == "json")
    methods = {json.dumps(e["operation"]) for e in records}
    assert any('"tools/list"' in text for text in methods), records[-1]["operation"]
    assert any('"initialize"' in text for text in methods), records[-1]["operation"]
