"""Judge an McpCall by the rules about MCP (sans-IO): a rule's `mcp:` block names tools (by
name globs), methods, and conditions on a tool call's arguments (JSON paths to the values
allowed).

Source: MCP specification 2025-06-18, "Basic Protocol" (JSON-RPC 2.0 messages), "Lifecycle"
(initialize, notifications/initialized), "Utilities" (ping, cancellation, progress) and
"Server Features: Tools" (tools/list, tools/call; tool names are case-sensitive; SEP-986,
2025-11-25: 1 to 128 characters of A-Z a-z 0-9 `_` `-` `.`).

How an McpCall is judged:

- `tools/call`: a tool name outside 1 to 128 characters of A-Z a-z 0-9 `_ - . /` is denied
  (rule `mcp-bad-tool-name`): a server could read it as another tool (Unicode confusables,
  invisible characters, case mappings). Allow and approve rules compare names exactly
  (case-sensitive globs, as the server does); deny rules compare them casefolded, so
  `Delete_File` does not slip past a deny on `delete_file`. Then explicit deny, approve,
  allow (interceptor.policy.judgement), default deny.
- Plumbing (PLUMBING: the lifecycle, ping, cancellation, progress, the roots notification,
  tools/list, and the transport's GET stream and DELETE as LISTEN_METHOD and
  TERMINATE_METHOD) is allowed by rule `builtin-mcp-plumbing` unless a rule whose `methods`
  names the method decides (deny first). tools/list answers are filtered by the dialect to
  the tools the agent may call (see "listed" below).
- Any other method (resources/read, prompts/get, completion/complete, logging/setLevel,
  unknown methods) needs an allow or approve rule naming it in `methods`; default deny.
  RESPONSE_METHOD stands for a JSON-RPC response the agent sends (its answer to a server's
  sampling, elicitation or roots request): it also needs a rule naming it.
- Listed: `McpCall("tools/list", tool=NAME)` asks whether NAME may appear in a tools/list
  answer: yes when some allow or approve rule covers the tool by name (whatever its
  argument conditions: some arguments may be allowed), unless a deny rule covers it by name
  with no argument condition (then no call of it can be allowed).
- Masks: every mask rule that covers the message as a deny rule would (names casefolded, any
  argument condition: when in doubt, mask) adds a MaskSpec of its paths (JSON paths into the
  answer's `result`), classifiers and style; a denial has none.

Argument conditions, `arguments: {PATH: [VALUE, ...]}`: PATH is a JSON path
(interceptor.masking.json_paths: `options.recursive`, `filters[*].path`, `["a.b"]`, `**.path`;
no `|base64`) from the arguments object. A string VALUE is a glob matched against string
values only; other VALUEs (integers, true/false) match equal JSON values of the same type
(true is not 1; 1 and 1.0 are the same number). On allow and approve rules every PATH must
select at least one value and every value it selects must match. On deny and mask rules a
PATH matches when any value it selects matches, or is an array holding one (at any depth),
or is an object (a shape the rule's author did not expect, that a server could still read);
any one PATH matching is enough. A glob holding `/` is about a path: a value with a `.` or
`..` segment (split at `/` and `\\`), a percent-encoded dot, slash or backslash, or NUL is
not in normal form, so no allow glob matches it and every deny glob does
(`/srv/public/../../etc/passwd` is not under `/srv/public/*`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.masking.json_paths import JsonPath, compile_path, select
from interceptor.operations import McpCall, Request
from interceptor.policy.judgement import DEFAULT_DENY, Judgement, pick
from interceptor.policy.model import Rule

if TYPE_CHECKING:  # the protocol registry imports this module
    from interceptor.protocols.spec import Context, Problem

OPERATION_KEY = "mcp"
TOOLS_CALL = "tools/call"
TOOLS_LIST = "tools/list"
# What an HTTP request of the transport that carries no method stands for. JSON-RPC 2.0
# (section 4) reserves method names starting with `rpc.`: no real message has these.
RESPONSE_METHOD = "rpc.response"  # a POSTed JSON-RPC response (result or error)
LISTEN_METHOD = "rpc.listen"  # GET: the stream of the server's requests and notifications
TERMINATE_METHOD = "rpc.terminate"  # DELETE: the end of the session (Mcp-Session-Id)
PLUMBING_RULE = "builtin-mcp-plumbing"
BAD_NAME_RULE = "mcp-bad-tool-name"
BAD_ARGUMENTS_RULE = "mcp-bad-arguments"
# What every MCP session sends to work at all; none of it reads or changes the server's data.
PLUMBING = frozenset({
    "initialize", "notifications/initialized", "ping", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", TOOLS_LIST, LISTEN_METHOD, TERMINATE_METHOD,
})
TOOL_NAME = re.compile(r"[A-Za-z0-9_./-]{1,128}")
_TOOL_GLOB = re.compile(r"[A-Za-z0-9_./*?\[\]!-]+")
_NOT_NORMAL = re.compile(r"(?:^|[/\\])\.{1,2}(?:$|[/\\])|%2e|%2f|%5c|\x00", re.IGNORECASE)

Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class McpMatch:
    """A rule's `mcp:` block; every given field must hold. `tools` and `arguments` are about
    tools/call only."""

    tools: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    arguments: tuple[tuple[JsonPath, tuple[Scalar, ...]], ...] | None = None


def parse_mcp_match(raw: Mapping[str, Any], problem: Problem) -> McpMatch:
    """A schema-valid `mcp:` block as an McpMatch, reporting to `problem` a tool glob that no
    valid tool name can match, a PATH that does not compile or asks for base64, and `tools`
    or `arguments` beside `methods` that cannot match tools/call."""
    for i, pattern in enumerate(raw.get("tools", ())):
        if not _TOOL_GLOB.fullmatch(pattern):
            problem(("tools", i), f"tool pattern {pattern!r}: tool names are A-Z a-z 0-9 _ - . / "
                    "(globs * ? [...] allowed)")
    arguments: list[tuple[JsonPath, tuple[Scalar, ...]]] = []
    for text, values in raw.get("arguments", {}).items():
        try:
            path = compile_path(text)
        except ValueError as exc:
            problem(("arguments", text), str(exc))
            continue
        if path.base64:
            problem(("arguments", text), f"JSON path {text!r}: |base64 is for masks, not argument conditions")
        arguments.append((path, tuple(values)))
    methods = tuple(raw["methods"]) if "methods" in raw else None
    if methods is not None and ("tools" in raw or "arguments" in raw) \
            and not any(fnmatchcase(TOOLS_CALL, m) for m in methods):
        problem(("methods",), "tools and arguments are about tools/call, which methods does not name")
    return McpMatch(tools=tuple(raw["tools"]) if "tools" in raw else None, methods=methods,
                    arguments=tuple(arguments) if "arguments" in raw else None)


def mcp_match(rule: Rule) -> McpMatch | None:
    """The rule's `mcp:` block; None for a rule about any operation."""
    return rule.match if isinstance(rule.match, McpMatch) else None


def judge_mcp(context: Context, request: Request, call: McpCall) -> Decision:
    """The Decision for one MCP message (see the module docstring); never raises on bad input."""
    rules = context.rules(request, OPERATION_KEY)
    if call.method == TOOLS_LIST and call.tool is not None:
        return _listed(rules, call.tool)
    arguments: dict[str, Any] = {}
    if call.method == TOOLS_CALL:
        if call.tool is None or not TOOL_NAME.fullmatch(call.tool):
            return Decision.deny(BAD_NAME_RULE, f"tool name {call.tool!r} is not 1-128 characters of A-Z a-z 0-9 "
                                 "_ - . /: a server could read it as another tool")
        try:
            parsed = orjson.loads(call.arguments)
        except orjson.JSONDecodeError as exc:
            return Decision.deny(BAD_ARGUMENTS_RULE, f"arguments are not JSON: {exc}")
        if not isinstance(parsed, dict):
            return Decision.deny(BAD_ARGUMENTS_RULE, "arguments are not a JSON object")
        arguments = parsed
    if call.method in PLUMBING:
        named = [r for r in rules if r.effect != "mask" and _method_named(r, call.method)]
        judgement = pick(named, "") if named else Judgement(Verdict.ALLOW, PLUMBING_RULE,
                                                             f"{call.method} is MCP plumbing, allowed by default")
    else:
        matching = [r for r in rules if r.effect != "mask" and _covers(r, r.effect == "deny", call, arguments)]
        judgement = pick(matching, "")
        if judgement.rule == DEFAULT_DENY:
            judgement = Judgement(Verdict.DENY, DEFAULT_DENY, _unmatched(rules, call))
    masks = tuple(MaskSpec(classifiers=r.mask.classifiers, style=r.mask.style, rule=r.name, paths=r.mask.paths)
                  for r in rules if r.effect == "mask" and r.mask is not None and _covers(r, True, call, arguments))
    return judgement.decision(masks)


def _unmatched(rules: list[Rule], call: McpCall) -> str:
    """Why no rule allows the call: for a tool some rule allows with other arguments, which."""
    if call.method != TOOLS_CALL:
        return f"no rule allows MCP method {call.method}"
    others = [r.name for r in rules if r.effect in ("allow", "approve") and _names(r, False, TOOLS_CALL, call.tool)]
    if not others:
        return f"no rule allows tool {call.tool}"
    return f"no rule allows tool {call.tool} with these arguments (rule {', '.join(others)} allows other arguments)"


def _listed(rules: list[Rule], tool: str) -> Decision:
    if not TOOL_NAME.fullmatch(tool):
        return Decision.deny(BAD_NAME_RULE, f"tool name {tool!r} is not 1-128 characters of A-Z a-z 0-9 _ - . /")
    for rule in rules:
        match = mcp_match(rule)
        unconditional = match is None or match.arguments is None
        if rule.effect == "deny" and unconditional and _names(rule, True, TOOLS_CALL, tool):
            return Decision.deny(rule.name, rule.reason or f"tool {tool} denied by rule {rule.name}")
    for rule in rules:
        if rule.effect in ("allow", "approve") and _names(rule, False, TOOLS_CALL, tool):
            return Decision(Verdict.ALLOW, rule.name, f"tool {tool} may be called by rule {rule.name}")
    return Decision.deny(DEFAULT_DENY, f"no rule allows tool {tool}")


def _method_named(rule: Rule, method: str) -> bool:
    match = mcp_match(rule)
    return match is not None and match.methods is not None and _globs(match.methods, method, rule.effect == "deny")


def _names(rule: Rule, deny: bool, method: str, tool: str | None) -> bool:
    """Does the rule cover this method and tool, arguments aside?"""
    match = mcp_match(rule)
    if match is None:
        return rule.operation is None
    if match.methods is not None and not _globs(match.methods, method, deny):
        return False
    if match.tools is None and match.arguments is None:
        return True
    return method == TOOLS_CALL and (match.tools is None or (tool is not None and _globs(match.tools, tool, deny)))


def _covers(rule: Rule, deny: bool, call: McpCall, arguments: dict[str, Any]) -> bool:
    """Does the rule cover this call, for a deny or mask rule (`deny`: names casefolded, any
    argument condition) or an allow or approve rule (exact names, all of them)?"""
    if not _names(rule, deny, call.method, call.tool):
        return False
    match = mcp_match(rule)
    if match is None or match.arguments is None:
        return True
    hits = (_path_matches(arguments, path, values, deny) for path, values in match.arguments)
    return any(hits) if deny else all(hits)


def _globs(patterns: tuple[str, ...], value: str, deny: bool) -> bool:
    if deny:
        value = value.casefold()
        return any(fnmatchcase(value, p.casefold()) for p in patterns)
    return any(fnmatchcase(value, p) for p in patterns)


def _path_matches(arguments: dict[str, Any], path: JsonPath, values: tuple[Scalar, ...], deny: bool) -> bool:
    selected = [container[key] for container, key in select([arguments], path)]
    hits = (_value_matches(v, values, deny) for v in selected)
    return any(hits) if deny else bool(selected) and all(hits)


def _value_matches(value: Any, allowed: tuple[Scalar, ...], deny: bool) -> bool:
    if isinstance(value, str):
        return any(isinstance(p, str) and _string_matches(value, p, deny) for p in allowed)
    if isinstance(value, list):
        return deny and any(_value_matches(v, allowed, deny) for v in value)
    if isinstance(value, dict):
        return deny
    return any(not isinstance(p, str) and _same(value, p) for p in allowed)


def _string_matches(value: str, pattern: str, deny: bool) -> bool:
    if "/" in pattern and _NOT_NORMAL.search(value):
        return deny
    return fnmatchcase(value, pattern)


def _same(value: Any, expected: Scalar) -> bool:
    """JSON equality of an argument's scalar and a listed one: true and 1 differ, 1 and 1.0 do not."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    return bool(value == expected)
