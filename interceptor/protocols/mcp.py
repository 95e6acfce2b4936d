"""mcp: Model Context Protocol over Streamable HTTP (MCP specification 2025-06-18,
"Transports"): every JSON-RPC message the agent POSTs is judged (interceptor.policy.mcp_rules),
tool results are masked and tools/list answers filtered; its handler is
interceptor.handlers.http.mcp."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from interceptor.operations import McpCall
from interceptor.policy.mcp_rules import OPERATION_KEY, TOOLS_CALL, judge_mcp, parse_mcp_match
from interceptor.protocols.http import http_options_schema
from interceptor.protocols.spec import ProtocolSpec

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog

_STRINGS = {"$ref": "#/$defs/strings"}

MATCH_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Matches MCP messages: tools/call by tool name and arguments, other methods by name. "
                   "Plumbing (initialize, notifications/initialized, ping, notifications/cancelled, "
                   "notifications/progress, notifications/roots/list_changed, tools/list; `rpc.listen` for the "
                   "transport's GET stream, `rpc.terminate` for its DELETE) is allowed unless a "
                   "rule naming it in `methods` decides; tools/list answers list only the tools some allow or "
                   "approve rule covers.",
    "properties": {
        "tools": {**_STRINGS, "description": (
            "Tool name globs. Allow and approve rules match names exactly (case-sensitive, as MCP servers do); "
            "deny and mask rules casefolded. A tool name that is not 1-128 characters of A-Z a-z 0-9 _ - . / is always "
            "denied.")},
        "methods": {**_STRINGS, "description": (
            "JSON-RPC method globs (`resources/read`, `prompts/*`, `tools/call`). Any method that is not "
            "plumbing needs an allow or approve rule naming it; `rpc.response` stands for a JSON-RPC response "
            "the agent sends (its answer to the server's sampling, elicitation or roots request).")},
        "arguments": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"minLength": 1},
            "additionalProperties": {"type": "array", "minItems": 1,
                                     "items": {"type": ["string", "integer", "boolean"]}},
            "description": (
                "Conditions on a tool call's arguments: a JSON path (as in masks: `options.recursive`, "
                "`filters[*].path`, `[\"a.b\"]`, `**.path`) to the values allowed: string globs (for string values; "
                "a glob holding `/` matches only paths in normal form: no `.` or `..` segment, no empty segment "
                "(`//`, a trailing `/`), no backslash, no leading `~`, nothing percent-encoded, not a `file:` URI), "
                "or integers and "
                "booleans. Arguments are also read as servers read them: a string holding a JSON object or array "
                "as that value (at any depth), and lax scalars (\"true\", \"on\", 1 as true; \"0\" as 0). "
                "Allow and approve rules: in every reading, every path present and every value it selects "
                "listed exactly (`true` is not `1`, `\"1\"` is not `1`, a string holding JSON never). Deny and "
                "mask rules: any value of any path listed in any reading (or an array holding one, or an "
                "object).")},
    },
}

OPTIONS_SCHEMA = http_options_schema("Settings of the mcp handler: those of every protocol over HTTP, and the MCP "
                                     "endpoint.", {"endpoint": {
    "type": "string", "pattern": "^/",
    "description": "The path of the server's MCP endpoint (Streamable HTTP has one); default `/mcp`. Requests "
                   "for any other path, or with a query, are refused (403)."}})


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> McpCall:
    """`mcp: {tool: NAME, arguments: {...}}` (a tools/call; `method: tools/list` with a tool
    asks whether tools/list shows it) or `mcp: {method: NAME}`."""
    raw = case[OPERATION_KEY]
    if not isinstance(raw, Mapping) or not set(raw) <= {"method", "tool", "arguments"} or not raw:
        raise ValueError("mcp must be a mapping of method, tool and arguments")
    tool = raw.get("tool")
    method = raw.get("method", TOOLS_CALL if tool is not None else None)
    if not isinstance(method, str) or (tool is not None and not isinstance(tool, str)):
        raise ValueError("mcp needs a method or a tool, each a string")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, Mapping) or (arguments and tool is None):
        raise ValueError("mcp arguments must be a mapping, given with a tool")
    return McpCall(method, tool, orjson.dumps(dict(arguments), option=orjson.OPT_SORT_KEYS).decode())


SPEC: ProtocolSpec[McpCall] = ProtocolSpec(
    name="mcp",
    operation_key=OPERATION_KEY,
    operation=McpCall,
    description="Available: every JSON-RPC message of MCP's Streamable HTTP transport judged (tools by name and "
                "arguments, methods by name), approvals per tool call, tool results masked, tools/list filtered.",
    handler="interceptor.handlers.http.mcp",
    match_schema=MATCH_SCHEMA,
    options_schema=OPTIONS_SCHEMA,
    parse_match=parse_mcp_match,
    judge=judge_mcp,
    parse_case=_parse_case,
    masks=True,
)
