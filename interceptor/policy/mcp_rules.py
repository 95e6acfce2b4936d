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
- Plumbing (PLUMBING: the lifecycle (initialize, and server/discover, which the mcp SDK's
  client asks first to learn the server's capabilities), ping, cancellation, progress, the roots notification,
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
values; other VALUEs (integers, true/false) match equal JSON values (1 and 1.0 are the same
number). The server's reading is the truth, and servers read more than JSON says:

- JSON inside strings. The `mcp` SDK's MCPServer json-loads a top-level string argument whose
  parameter is not `str` (FuncMetadata.pre_parse_json, Python's json: NaN and big integers
  included), and tool code may do the same deeper down. So a string that Python's json reads
  as an object or array is read both ways, at any depth: the arguments are judged as sent
  and with every such string replaced by its value (recursively).
- Lax scalars. pydantic's lax mode, what servers built on the SDK validate with, reads
  "true"/"on"/"yes"/"t"/"y"/"1" (any case) as true and their "false" forms as false, 1 and 0
  (1.0, 0.0) as booleans, numeric strings (" 1 ", "1_0", "1.0", "1e3") as numbers, booleans as
  0 and 1; other servers print numbers into string parameters.

On deny and mask rules (the widest reading) a PATH matches when, in either reading of the
arguments, a value it selects matches in any of its lax readings (a string also as the
JSON it holds), or is an array holding one (at any depth), or is an object (a shape the
rule's author did not expect, that a server could still read); any one PATH matching is
enough. On allow and approve rules (the narrowest) every PATH must, in both readings of the
arguments, select at least one value and every value it selects must match exactly: a
string by a string glob, a number or boolean by an equal VALUE of its type (true is not 1,
"1" is not 1), never an object or array (so never a string holding one: that ambiguity is
refused). The server's lax reading of a string an allow glob matched is that string's
own: write conditions on boolean and numeric parameters as booleans and numbers, and deny
what must never run.

A glob holding `/` is about a file path (or a URL), and file systems read more spellings
than a glob: a value with an empty segment (`//etc/shadow`; in a file path also a trailing
`/`, but `/` alone is the root; a URL's `scheme://` is not one), a `.`
or `..` segment, a backslash (a separator on Windows, an escape to some tools), a leading
`~` (a home directory to expanduser), a percent-encoded dot, slash or backslash, NUL, or a
`file:` URI (a local path spelled as a URI, RFC 8089) is not in normal form, so no allow glob matches it and every deny glob does
(`/srv/public/../../etc/passwd` is not under `/srv/public/*`, `//etc/shadow` is under
`/etc/*`).
"""

from __future__ import annotations

import json
import math
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
    "initialize", "server/discover", "notifications/initialized", "ping", "notifications/cancelled",
    "notifications/progress", "notifications/roots/list_changed", TOOLS_LIST, LISTEN_METHOD, TERMINATE_METHOD,
})
TOOL_NAME = re.compile(r"[A-Za-z0-9_./-]{1,128}")
_TOOL_GLOB = re.compile(r"[A-Za-z0-9_./*?\[\]!-]+")
# Not a path in normal form: a `.` or `..` segment, an empty segment (`//`; for a file path
# also a trailing `/` but for the root), a backslash, a leading `~`, a percent-encoded dot,
# slash or backslash, NUL. A URL's `scheme://` is not an empty segment (RFC 3986 section 3).
_NOT_NORMAL = re.compile(r"(?:^|/)\.{1,2}(?:$|/)|//|\\|^~|%2e|%2f|%5c|\x00", re.IGNORECASE)
_TRAILING_SLASH = re.compile(r".+/\Z", re.DOTALL)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# pydantic's lax booleans from strings (compared stripped and lower-cased: wider than pydantic)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})

Scalar = str | int | bool
Reading = str | int | float | bool


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
    arguments = Arguments({}, {}, {})
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
        try:
            arguments = Arguments.read(parsed)
        except RecursionError:
            return Decision.deny(BAD_ARGUMENTS_RULE, "arguments hold JSON in strings nested too deep to judge")
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


def _covers(rule: Rule, deny: bool, call: McpCall, arguments: Arguments) -> bool:
    """Does the rule cover this call, for a deny or mask rule (`deny`: names casefolded, any
    argument condition in either reading) or an allow or approve rule (exact names, all of
    them in both readings)?"""
    if not _names(rule, deny, call.method, call.tool):
        return False
    match = mcp_match(rule)
    if match is None or match.arguments is None:
        return True
    readings = arguments.documents()
    if deny:
        return any(_path_matches(document, path, values, True, arguments.encoded)
                   for path, values in match.arguments for document in readings)
    return all(_path_matches(document, path, values, False, arguments.encoded)
               for path, values in match.arguments for document in readings)


def _globs(patterns: tuple[str, ...], value: str, deny: bool) -> bool:
    if deny:
        value = value.casefold()
        return any(fnmatchcase(value, p.casefold()) for p in patterns)
    return any(fnmatchcase(value, p) for p in patterns)


def _path_matches(document: dict[str, Any], path: JsonPath, values: tuple[Scalar, ...], deny: bool,
                  encoded: Mapping[int, str]) -> bool:
    selected = [container[key] for container, key in select([document], path)]
    hits = (_value_matches(v, values, deny, encoded) for v in selected)
    return any(hits) if deny else bool(selected) and all(hits)


def _value_matches(value: Any, allowed: tuple[Scalar, ...], deny: bool, encoded: Mapping[int, str]) -> bool:
    """Does a selected value match (deny: in any reading; allow: exactly)? `encoded`: the
    strings that the objects and arrays of the expanded reading were sent as."""
    if isinstance(value, (list, dict)):
        if not deny:
            return False
        text = encoded.get(id(value))
        return isinstance(value, dict) or any(_value_matches(v, allowed, True, encoded) for v in value) \
            or (text is not None and _value_matches(text, allowed, True, encoded))
    readings = lax_readings(value) if deny else (value,)
    return any(_reading_matches(reading, pattern, deny) for reading in readings for pattern in allowed)


def _reading_matches(reading: Any, pattern: Scalar, deny: bool) -> bool:
    if isinstance(pattern, str):
        return isinstance(reading, str) and _string_matches(reading, pattern, deny)
    return not isinstance(reading, str) and _same(reading, pattern)


def _string_matches(value: str, pattern: str, deny: bool) -> bool:
    if "/" in pattern and not in_normal_form(value):
        return deny
    return fnmatchcase(value, pattern)


def in_normal_form(value: str) -> bool:
    """Is the file path or URL in normal form (see the module docstring)? A URL (`scheme://`) is
    judged after its scheme, and may end in `/`. A `file:` URI never is: it names a local
    path (RFC 8089) that a glob about paths would read differently, so every deny glob holds
    for it and no allow glob does."""
    if value[:5].lower() == "file:":
        return False
    scheme = _SCHEME.match(value)
    if scheme is not None:
        return not _NOT_NORMAL.search(value[scheme.end():])
    return not (_NOT_NORMAL.search(value) or _TRAILING_SLASH.match(value))


def _same(value: Any, expected: Scalar) -> bool:
    """JSON equality of an argument's scalar and a listed one: true and 1 differ, 1 and 1.0 do not."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    return bool(value == expected)


def lax_readings(value: Any) -> tuple[Any, ...]:
    """Every value a lax server may read a JSON scalar as (pydantic's lax mode, widened): a
    string as itself, a boolean ("true", "on", "yes", "t", "y", "1" and the "false" forms, any
    case and surrounding space) and a number (" 1 ", "+1", "1_0", "1.0", "1e3", "inf");
    a number as itself, its text and, for 0 and 1, a boolean; a boolean as itself, 0 or 1
    and its text. None (null) reads as itself."""
    if isinstance(value, str):
        word = value.strip().lower()
        booleans = (True,) if word in _TRUE else (False,) if word in _FALSE else ()
        number = _number(value)
        return (value, *booleans, *(() if number is None else _numeric_readings(number)))
    if isinstance(value, bool):
        return (value, int(value), "true" if value else "false", str(value))
    if isinstance(value, (int, float)):
        return (*_numeric_readings(value), str(value), orjson.dumps(value).decode())
    return (value,)


def _numeric_readings(number: int | float) -> tuple[int | float | bool, ...]:
    return (number, bool(number)) if number in (0, 1) else (number,)


def _number(text: str) -> int | float | None:
    """The number a lax parser reads in `text` (Python's int, else float; an integral float
    also as an int), None when it reads none."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else number


@dataclass(frozen=True, slots=True)
class Arguments:
    """A tool call's arguments in the two readings a server may have of them: `sent` as the
    JSON was sent, `expanded` with every string that Python's json reads as an object or array
    replaced by that value, at any depth (`expanded` is `sent` when there is none);
    `encoded`: the id() of each such value in `expanded` to the string it was sent as. Both
    documents are kept alive with the mapping. RecursionError when the nesting is too deep."""

    sent: dict[str, Any]
    expanded: dict[str, Any]
    encoded: dict[int, str]

    @classmethod
    def read(cls, sent: dict[str, Any]) -> Arguments:
        encoded: dict[int, str] = {}
        expanded = _expand(sent, encoded)
        return cls(sent, expanded if encoded else sent, encoded)

    def documents(self) -> tuple[dict[str, Any], ...]:
        """The readings to judge: one when no string holds JSON."""
        return (self.sent,) if self.expanded is self.sent else (self.sent, self.expanded)


def _expand(value: Any, encoded: dict[int, str]) -> Any:
    if isinstance(value, dict):
        return {key: _expand(item, encoded) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, encoded) for item in value]
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, (dict, list)):
            expanded = _expand(parsed, encoded)
            encoded[id(expanded)] = value
            return expanded
    return value
