"""Judging MCP messages (interceptor.policy.mcp_rules): tool globs, argument conditions,
casefolded deny, bad tool names, plumbing, listing, masks, default deny; the `mcp:` block's
problems and `policy test` cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from interceptor.decision import Decision
from interceptor.operations import McpCall, Request, Subject
from interceptor.policy import PolicyEngine, load_policy_text
from interceptor.policy.cases import run_cases
from interceptor.policy.loader import PolicyError
from interceptor.policy.mcp_rules import in_normal_form, lax_readings
from interceptor.protocols.mcp import SPEC

POLICY = """
version: 1
resources:
  tools: {protocol: mcp, addresses: ["10.0.0.9:8000"]}
agents:
  bot: {uids: [1001]}
rules:
  - {name: search, effect: allow, resources: [tools], mcp: {tools: ["search_*"]}}
  - {name: read-public, effect: allow, resources: [tools],
     mcp: {tools: [read_file], arguments: {path: ["/srv/public/*"], "options.recursive": [false]}}}
  - {name: no-delete, effect: deny, resources: [tools], mcp: {tools: [delete_file]}}
  - {name: no-secret-search, effect: deny, resources: [tools],
     mcp: {tools: ["search_*"], arguments: {query: ["*password*"], "filters[*].path": ["/etc/*"], "**.secret": [true]}}}
  - {name: writes-approved, effect: approve, resources: [tools], mcp: {tools: [write_file]},
     approval: {groups: [ops]}}
  - {name: resources, effect: allow, resources: [tools], mcp: {methods: ["resources/*"]}}
  - {name: no-ping, effect: deny, resources: [tools], mcp: {methods: [Ping]}}
  - {name: mask-cards, effect: mask, resources: [tools], mcp: {tools: ["search_*"]},
     mask: {classifiers: [card], style: partial}}
  - {name: mask-private, effect: mask, resources: [tools], mcp: {tools: [SEARCH_WEB], arguments: {scope: [private]}},
     mask: {classifiers: [email]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "mcp.yaml"))


def ask(engine: PolicyEngine, method: str, tool: str | None = None, arguments: Any = None) -> Decision:
    text = orjson.dumps(arguments if arguments is not None else {}, option=orjson.OPT_SORT_KEYS).decode()
    return engine.decide(Request(Subject("bot", None, "/usr/bin/agent", 1001), "tools", McpCall(method, tool, text)))


def verdict(decision: Decision) -> tuple[str, str]:
    return decision.verdict.value, decision.rule


def test_tool_globs_are_exact_and_case_sensitive(engine: PolicyEngine) -> None:
    assert verdict(ask(engine, "tools/call", "search_docs")) == ("allow", "search")
    assert verdict(ask(engine, "tools/call", "Search_docs")) == ("deny", "default-deny")
    assert verdict(ask(engine, "tools/call", "write_file")) == ("approve", "writes-approved")
    assert ask(engine, "tools/call", "write_file").approval is not None
    assert verdict(ask(engine, "tools/call", "list_dir")) == ("deny", "default-deny")
    assert ask(engine, "tools/call", "list_dir").reason == "no rule allows tool list_dir"
    assert ask(engine, "tools/call", "read_file", {"path": "/etc/passwd"}).reason == \
        "no rule allows tool read_file with these arguments (rule read-public allows other arguments)"
    assert ask(engine, "prompts/get").reason == "no rule allows MCP method prompts/get"


@pytest.mark.parametrize("name", ["delete_file", "Delete_File", "DELETE_FILE"])
def test_deny_compares_casefolded(engine: PolicyEngine, name: str) -> None:
    assert verdict(ask(engine, "tools/call", name)) == ("deny", "no-delete")


@pytest.mark.parametrize("name", ["", "x" * 129, "search docs", "search_d\u043ecs", "search_docs\u200b",
                                  "search_\uff44ocs", "search,docs", None])
def test_tool_names_outside_the_set_are_denied(engine: PolicyEngine, name: str | None) -> None:
    assert verdict(ask(engine, "tools/call", name)) == ("deny", "mcp-bad-tool-name")


def test_names_inside_the_set(engine: PolicyEngine) -> None:
    assert verdict(ask(engine, "tools/call", "search_" + "x" * 121)) == ("allow", "search")
    assert verdict(ask(engine, "tools/call", "search_a.b/c-d")) == ("allow", "search")


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"path": "/srv/public/a.txt", "options": {"recursive": False}}, ("allow", "read-public")),
    ({"path": "/srv/public/a.txt", "options": {"recursive": True}}, ("deny", "default-deny")),
    ({"path": "/srv/public/a.txt", "options": {"recursive": 0}}, ("deny", "default-deny")),  # false is not 0
    ({"path": "/srv/public/a.txt"}, ("deny", "default-deny")),  # every path must be present
    ({"path": "/etc/passwd", "options": {"recursive": False}}, ("deny", "default-deny")),
    ({"path": "/srv/public/../../etc/passwd", "options": {"recursive": False}}, ("deny", "default-deny")),
    ({"path": "/srv/public/..\\..\\etc", "options": {"recursive": False}}, ("deny", "default-deny")),
    ({"path": "/srv/public/%2e%2e/etc", "options": {"recursive": False}}, ("deny", "default-deny")),
    ({"path": "/srv/public/./a", "options": {"recursive": False}}, ("deny", "default-deny")),
    ({"path": ["/srv/public/a"], "options": {"recursive": False}}, ("deny", "default-deny")),  # not a string
    ({"path": "/srv/public/a..b", "options": {"recursive": False}}, ("allow", "read-public")),
])
def test_argument_conditions_on_allow(engine: PolicyEngine, arguments: dict[str, Any],
                                      expected: tuple[str, str]) -> None:
    assert verdict(ask(engine, "tools/call", "read_file", arguments)) == expected


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"query": "weather"}, ("allow", "search")),
    ({"query": "my password please"}, ("deny", "no-secret-search")),
    ({"query": ["x", ["my password"]]}, ("deny", "no-secret-search")),  # arrays are looked into
    ({"query": {"text": "anything"}}, ("deny", "no-secret-search")),  # objects: a shape the rule did not expect
    ({"filters": [{"path": "/tmp/x"}, {"path": "/etc/shadow"}]}, ("deny", "no-secret-search")),
    ({"filters": [{"path": "/srv/../etc"}]}, ("deny", "no-secret-search")),  # not normal: a path glob denies
    ({"filters": [{"path": "/tmp/x"}]}, ("allow", "search")),
    ({"deep": [{"x": {"secret": True}}]}, ("deny", "no-secret-search")),
    ({"deep": [{"x": {"secret": 1}}]}, ("deny", "no-secret-search")),  # a lax server reads 1 as true
    ({"deep": [{"x": {"secret": 2}}]}, ("allow", "search")),
])
def test_argument_conditions_on_deny(engine: PolicyEngine, arguments: dict[str, Any],
                                     expected: tuple[str, str]) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", arguments)) == expected


def test_arguments_must_be_a_json_object(engine: PolicyEngine) -> None:
    for text in ("[1]", "not json"):
        decision = engine.decide(Request(Subject("bot"), "tools", McpCall("tools/call", "search_web", text)))
        assert verdict(decision) == ("deny", "mcp-bad-arguments")


def test_plumbing_allowed_unless_a_rule_names_it(engine: PolicyEngine) -> None:
    for method in ("initialize", "server/discover", "notifications/initialized", "notifications/cancelled",
                   "notifications/progress", "tools/list"):
        assert verdict(ask(engine, method)) == ("allow", "builtin-mcp-plumbing")
    assert verdict(ask(engine, "ping")) == ("deny", "no-ping")  # deny rules compare methods casefolded


@pytest.mark.parametrize("method", ["prompts/get", "completion/complete", "logging/setLevel", "tools/Call2",
                                    "rpc.response", "sampling/createMessage"])
def test_other_methods_need_a_rule(engine: PolicyEngine, method: str) -> None:
    assert verdict(ask(engine, method)) == ("deny", "default-deny")


def test_methods_rule(engine: PolicyEngine) -> None:
    assert verdict(ask(engine, "resources/read")) == ("allow", "resources")
    assert verdict(ask(engine, "Resources/read")) == ("deny", "default-deny")  # allow compares exactly


def test_masks_of_the_matching_mask_rules(engine: PolicyEngine) -> None:
    masked = ask(engine, "tools/call", "search_web")
    assert [(m.rule, m.classifiers, m.style) for m in masked.masks] == [("mask-cards", ("card",), "partial")]
    assert ask(engine, "tools/call", "read_file", {"path": "/srv/public/a", "options": {"recursive": False}}
               ).masks == ()
    assert ask(engine, "tools/call", "search_web", {"query": "password"}).masks == ()  # denied: nothing to mask
    # mask rules match as deny rules do: names casefolded, an array holding a listed value
    for scope in ("private", ["public", "private"]):
        masks = ask(engine, "tools/call", "search_web", {"scope": scope}).masks
        assert [m.rule for m in masks] == ["mask-cards", "mask-private"]
    assert [m.rule for m in ask(engine, "tools/call", "search_web", {"scope": "public"}).masks] == ["mask-cards"]


@pytest.mark.parametrize(("tool", "expected"), [
    ("search_web", ("allow", "search")), ("read_file", ("allow", "read-public")),  # some arguments allowed
    ("write_file", ("allow", "writes-approved")), ("delete_file", ("deny", "no-delete")),
    ("DELETE_FILE", ("deny", "no-delete")), ("list_dir", ("deny", "default-deny")),
    ("bad name", ("deny", "mcp-bad-tool-name")),
])
def test_listed_tools(engine: PolicyEngine, tool: str, expected: tuple[str, str]) -> None:
    assert verdict(ask(engine, "tools/list", tool)) == expected


def test_block_problems() -> None:
    text = POLICY + """
  - {name: bad-glob, effect: allow, mcp: {tools: ["read file"]}}
  - {name: bad-path, effect: allow, mcp: {tools: [x], arguments: {"a..b": [1]}}}
  - {name: base64-path, effect: allow, mcp: {tools: [x], arguments: {"a|base64": [1]}}}
  - {name: not-call, effect: allow, mcp: {tools: [x], methods: [resources/read]}}
"""
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, "mcp.yaml")
    problems = "\n".join(error.value.problems)
    assert "tool pattern 'read file'" in problems
    assert "JSON path 'a..b': expected a name" in problems
    assert "|base64 is for masks" in problems
    assert "tools and arguments are about tools/call" in problems
    assert "mcp.yaml:" in problems and problems.count("\n") == 3
    with pytest.raises(PolicyError, match="is not of type 'string', 'integer', 'boolean'"):
        load_policy_text(POLICY + "  - {name: bad-value, effect: allow, mcp: {arguments: {a: [{b: 1}]}}}\n")


def test_cases() -> None:
    call = SPEC.parse_case({"mcp": {"tool": "read_file", "arguments": {"path": "/etc/passwd", "a": 1}}}, None)
    assert call == McpCall("tools/call", "read_file", '{"a":1,"path":"/etc/passwd"}')
    assert SPEC.parse_case({"mcp": {"method": "resources/read"}}, None) == McpCall("resources/read")
    assert SPEC.parse_case({"mcp": {"method": "tools/list", "tool": "x"}}, None) == McpCall("tools/list", "x")
    for bad in ({}, {"arguments": {"a": 1}}, {"method": 3}, {"tool": "x", "arguments": [1]}, {"other": 1}, "x"):
        with pytest.raises((ValueError, TypeError)):
            SPEC.parse_case({"mcp": bad}, None)



def test_the_shipped_example_passes() -> None:
    results = run_cases(Path(__file__).parents[2] / "policy" / "examples" / "mcp.tests.yaml")
    assert len(results) >= 15 and [r.name for r in results if not r.passed] == []


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"query": '{"text": "x"}'}, ("deny", "no-secret-search")),  # an object inside a string: a shape unexpected
    ({"filters": '[{"path": "/etc/shadow"}]'}, ("deny", "no-secret-search")),  # the SDK json-loads it
    ({"deep": '{"x": "{\\"secret\\": true}"}'}, ("deny", "no-secret-search")),  # at any depth
    ({"deep": '{"secret": true, "n": NaN}'}, ("deny", "no-secret-search")),  # Python's json reads NaN
    ({"deep": '{"secret": "yes"}'}, ("deny", "no-secret-search")),
    ({"filters": '[{"path": "/tmp/x"}]'}, ("allow", "search")),
    ({"query": "[not json"}, ("allow", "search")),
])
def test_deny_conditions_read_json_inside_strings(engine: PolicyEngine, arguments: dict[str, Any],
                                                  expected: tuple[str, str]) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", arguments)) == expected


@pytest.mark.parametrize("options", ['{"recursive": false}', {"recursive": "false"}, {"recursive": 0},
                                    {"recursive": '[false]'}])
def test_allow_conditions_refuse_what_reads_two_ways(engine: PolicyEngine, options: Any) -> None:
    arguments = {"path": "/srv/public/a", "options": options}
    assert verdict(ask(engine, "tools/call", "read_file", arguments)) == ("deny", "default-deny")


@pytest.mark.parametrize("secret", [True, "true", "TRUE", " on ", "yes", "t", "Y", "1", 1, 1.0, "1.0", "+1"])
def test_deny_conditions_take_every_lax_reading(engine: PolicyEngine, secret: Any) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", {"x": {"secret": secret}})) == ("deny", "no-secret-search")


@pytest.mark.parametrize("secret", [False, "false", "off", 0, "0", 2, "2", "maybe", None])
def test_other_scalars_are_not_true(engine: PolicyEngine, secret: Any) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", {"x": {"secret": secret}})) == ("allow", "search")


def test_lax_readings_of_scalars() -> None:
    assert lax_readings(" 1_0 ") == (" 1_0 ", 10)
    assert lax_readings("off") == ("off", False)
    assert lax_readings("1e3") == ("1e3", 1000)
    assert lax_readings(1.5) == (1.5, "1.5", "1.5")
    assert lax_readings(False) == (False, 0, "false", "False")


@pytest.mark.parametrize("path", ["//etc/shadow", "///etc/shadow", "/etc//shadow", "/etc/shadow/", "/etc/.",
                                  "\\etc\\shadow", "/etc\\shadow", "~/../etc/shadow", "~root/.ssh/id_rsa",
                                  "/etc/%2e/shadow", "/etc/shadow\x00.txt"])
def test_paths_not_in_normal_form(engine: PolicyEngine, path: str) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", {"filters": [{"path": path}]})) == \
        ("deny", "no-secret-search")
    arguments = {"path": path.replace("etc", "srv/public"), "options": {"recursive": False}}
    assert verdict(ask(engine, "tools/call", "read_file", arguments)) == ("deny", "default-deny")


def test_the_root_and_plain_paths_are_normal(engine: PolicyEngine) -> None:
    assert verdict(ask(engine, "tools/call", "search_web", {"filters": [{"path": "/"}]})) == ("allow", "search")
    arguments = {"path": "/srv/public/a/b.txt", "options": {"recursive": False}}
    assert verdict(ask(engine, "tools/call", "read_file", arguments)) == ("allow", "read-public")


@pytest.mark.parametrize(("url", "normal"), [
    ("https://docs.example.com/guide/", True), ("https://docs.example.com/a/b", True),
    ("https://docs.example.com//admin", False), ("https://docs.example.com/a/../admin", False),
    ("file:///etc/shadow", False), ("https://docs.example.com/a%2f..", False),
])
def test_a_urls_scheme_is_not_an_empty_segment(url: str, normal: bool) -> None:  # a file: URI never is normal
    assert in_normal_form(url) is normal
