"""The http protocol's rules: `http: {methods, paths, hosts}` globs, allow/approve/mask must
cover the request, deny any; deny and mask read method and path the widest way servers do
(case, trailing slash, extension, HEAD as GET), allow exactly; precedence; masks; the `policy test` case;
load-time problems. And what the plain dialect refuses before any rule: paths some server folds
to ASCII, method overrides in the query or a POST body."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from conversation import Judging
from interceptor.decision import Decision, Verdict
from interceptor.errors import ClientProtocolError
from interceptor.handlers.commands import Command, Send, Side
from interceptor.handlers.http.dialect import RequestHead
from interceptor.handlers.http.plain import FORM_BODY_LIMIT, PlainDialect, folds_to_ascii, is_override
from interceptor.handlers.http.session import HttpSession
from interceptor.handlers.http.target import parse_target
from interceptor.identity.model import Identity
from interceptor.operations import HttpRequest, Pairs, Request, Subject
from interceptor.policy import PolicyEngine, PolicyError, load_policy_text
from interceptor.policy.cases import run_cases
from interceptor.policy.http_rules import host_name, parse_http_case, wide_methods, wide_paths
from interceptor.protocols import spec_for

POLICY = """
version: 1
resources:
  api: {protocol: http, addresses: ["api.example.com:443"], options: {tls: true}}
  other: {protocol: http, addresses: ["10.0.0.9:80"]}
agents:
  bot: {uids: [1001]}
  ops: {uids: [1002]}
rules:
  - {name: reports-read, effect: allow, agents: [bot], resources: [api],
     http: {methods: [GET, head], paths: ["/v1/reports/*"], hosts: ["API.example.com"]}}
  - {name: no-secret-reports, effect: deny, resources: [api], http: {paths: ["/v1/reports/secret*"]}}
  - {name: no-other-hosts, effect: deny, resources: [api], http: {hosts: ["*.internal"]}}
  - {name: deletes-need-ops, effect: approve, agents: [bot], resources: [api],
     http: {methods: [DELETE], paths: ["/v1/reports/*"]}, approval: {groups: [ops]}}
  - {name: ops-anything, effect: allow, agents: [ops], resources: [other]}
  - {name: mask-emails, effect: mask, resources: [api], http: {paths: ["/v1/reports/*"]},
     mask: {classifiers: [email]}}
"""


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy_text(POLICY, "http.yaml"))


def ask(engine: PolicyEngine, method: str, path: str, host: str | None = "api.example.com",
        resource: str = "api", agent: str = "bot") -> Decision:
    return engine.decide(Request(Subject(agent, None, None, 1001), resource, HttpRequest(method, path, (), host)))


def test_an_allow_rule_covers_method_path_and_host(engine: PolicyEngine) -> None:
    decision = ask(engine, "GET", "/v1/reports/2026/q1")
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "reports-read")
    assert ask(engine, "HEAD", "/v1/reports/x", host="API.Example.COM.:443").rule == "reports-read"
    assert ask(engine, "get", "/v1/reports/x").rule == "reports-read"  # methods compare upper-cased


@pytest.mark.parametrize(("method", "path", "host"), [
    ("POST", "/v1/reports/x", "api.example.com"),  # another method
    ("GET", "/v1/reports", "api.example.com"),  # the glob needs something after the slash
    ("GET", "/v2/reports/x", "api.example.com"),
    ("GET", "/v1/reports/x", "evil.example.com"),  # another host
])
def test_what_the_allow_rule_does_not_cover_is_default_deny(engine: PolicyEngine, method: str, path: str,
                                                           host: str | None) -> None:
    decision = ask(engine, method, path, host)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "default-deny")
    assert f"{method} {path}" in decision.reason


def test_deny_wins_and_covers_an_unknown_host(engine: PolicyEngine) -> None:
    assert ask(engine, "GET", "/v1/reports/secret-plans").rule == "no-secret-reports"
    assert ask(engine, "GET", "/v1/reports/x", host="db.internal").rule == "no-other-hosts"
    # no Host: a deny rule about hosts takes it as any host (an allow rule naming hosts never covers it)
    unknown = ask(engine, "GET", "/v1/reports/x", host=None)
    assert (unknown.verdict, unknown.rule) == (Verdict.DENY, "no-other-hosts")
    deny_line = '  - {name: no-other-hosts, effect: deny, resources: [api], http: {hosts: ["*.internal"]}}\n'
    without_deny = POLICY.replace(deny_line, "")
    assert ask(PolicyEngine(load_policy_text(without_deny)), "GET", "/v1/reports/x", host=None).rule == "default-deny"


def test_approve_ranks_between_deny_and_allow(engine: PolicyEngine) -> None:
    decision = ask(engine, "DELETE", "/v1/reports/7")
    assert (decision.verdict, decision.rule) == (Verdict.APPROVE, "deletes-need-ops")
    assert decision.approval is not None and decision.approval.approver_groups == ("ops",)


def test_a_rule_without_an_http_block_covers_every_request(engine: PolicyEngine) -> None:
    assert ask(engine, "PATCH", "/anything", host=None, resource="other", agent="ops").rule == "ops-anything"
    assert ask(engine, "GET", "/anything", host=None, resource="other").rule == "default-deny"


def test_mask_rules_that_cover_the_request_add_their_masks(engine: PolicyEngine) -> None:
    allowed = ask(engine, "GET", "/v1/reports/x")
    assert [(m.rule, m.classifiers) for m in allowed.masks] == [("mask-emails", ("email",))]
    assert ask(engine, "GET", "/v1/reports/secret").masks == ()  # a denial carries none


@pytest.mark.parametrize(("host", "name"), [
    ("api.example.com", "api.example.com"), ("API.example.com.:8443", "api.example.com"),
    ("[2001:db8::1]:443", "2001:db8::1"), ("[::1]", "::1"), ("10.0.0.1:80", "10.0.0.1"), ("", None), (None, None),
])
def test_host_names_lose_port_case_and_trailing_dot(host: str | None, name: str | None) -> None:
    assert host_name(host) == name


def test_the_policy_test_case_and_its_errors() -> None:
    assert parse_http_case({"http": {"method": "get", "path": "/v1/x", "host": "h", "query": {"a": 1}}}) == \
        HttpRequest("GET", "/v1/x", (("a", "1"),), "h")
    with pytest.raises(ValueError, match="unknown key"):
        parse_http_case({"http": {"method": "GET", "path": "/v1/x", "verb": "get"}})
    with pytest.raises(ValueError, match="absolute path"):
        parse_http_case({"http": {"method": "GET", "path": "v1/x"}})
    with pytest.raises(KeyError):
        parse_http_case({"http": {"path": "/v1/x"}})


@pytest.mark.parametrize(("block", "message"), [
    ('{paths: ["v1/*"]}', "expected an absolute path glob"),
    ('{hosts: ["api.example.com:443"]}', "without scheme or port"),
    ('{hosts: ["https://api.example.com"]}', "without scheme or port"),
    ("{}", "http"),
    ('{methods: [GET], verbs: [get]}', "verbs"),
])
def test_bad_blocks_are_refused_at_load_with_their_place(block: str, message: str) -> None:
    text = POLICY.split("rules:")[0] + f"rules:\n  - {{name: r, effect: allow, resources: [api], http: {block}}}\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "bad.yaml")
    assert any(message in problem and problem.startswith("bad.yaml:") for problem in caught.value.problems)


def test_an_http_rule_on_a_resource_of_another_protocol_is_refused() -> None:
    text = """
version: 1
resources: {db: {protocol: postgres, addresses: ["10.0.0.7:5432"]}}
agents: {bot: {uids: [1001]}}
rules: [{name: r, effect: allow, resources: [db], http: {methods: [GET]}}]
"""
    with pytest.raises(PolicyError, match="http rule on resource 'db' whose protocol is postgres"):
        load_policy_text(text, "bad.yaml")


def test_options_are_checked_against_the_shared_schema() -> None:
    base = POLICY.split("rules:")[0].replace("options: {tls: true}", "options: {tls: {ca: /etc/ca.pem}, "
                                             "identity: bearer, token_header: X-Api-Key}")
    load_policy_text(base + "rules: []\n", "ok.yaml")
    with pytest.raises(PolicyError, match="identity"):
        load_policy_text(base.replace("identity: bearer", "identity: cookie") + "rules: []\n", "bad.yaml")
    assert set(spec_for("http").options_schema["properties"]) == {"tls", "identity", "token_header"}


def test_subjects_still_apply_to_http_rules() -> None:
    policy = load_policy_text(POLICY.replace("agents: [bot], resources: [api],\n     http: {methods: [GET, head]",
                                             "resources: [api], subjects: {groups: [readers]},\n     "
                                             "http: {methods: [GET, head]"), "groups.yaml")
    engine = PolicyEngine(policy)
    operation = HttpRequest("GET", "/v1/reports/x", (), "api.example.com")
    reader = Identity(issuer="https://idp", subject="u", groups=frozenset({"readers"}))
    assert engine.decide(Request(Subject("bot", reader), "api", operation)).rule == "reports-read"
    assert engine.decide(Request(Subject("bot", None), "api", operation)).rule == "default-deny"


def test_the_shipped_example_passes_policy_test() -> None:
    results = run_cases(Path(__file__).parents[2] / "policy" / "examples" / "http.tests.yaml")
    assert results and all(result.passed for result in results), [r for r in results if not r.passed]


# ---- deny and mask read the widest way servers route, allow the narrowest ------------------------

WIDE_POLICY = POLICY.split("rules:")[0] + """rules:
  - {name: reads, effect: allow, resources: [api], http: {methods: [GET], paths: ["/v1/*", "/Docs", "/exact"]}}
  - {name: heads, effect: allow, resources: [api], http: {methods: [HEAD, OPTIONS], paths: ["/v1/*"]}}
  - {name: no-admin, effect: deny, resources: [api], http: {paths: ["/v1/Admin/*", "/v1/export"]}}
  - {name: no-slash-export, effect: deny, resources: [api], http: {paths: ["/v1/dump/"]}}
  - {name: no-report-reads, effect: deny, resources: [api], http: {methods: [GET], paths: ["/v1/reports/*"]}}
  - {name: mask-users, effect: mask, resources: [api], http: {methods: [GET], paths: ["/v1/users/*"]},
     mask: {classifiers: [email]}}
"""


@pytest.fixture(scope="module")
def wide() -> PolicyEngine:
    return PolicyEngine(load_policy_text(WIDE_POLICY, "wide.yaml"))


@pytest.mark.parametrize(("method", "path", "rule"), [
    ("GET", "/v1/admin/users", "no-admin"), ("GET", "/V1/ADMIN/users", "no-admin"),
    ("GET", "/v1/EXPORT", "no-admin"), ("GET", "/v1/export/", "no-admin"), ("GET", "/V1/Export/", "no-admin"),
    ("GET", "/v1/dump", "no-slash-export"), ("GET", "/v1/dump/", "no-slash-export"),
    ("GET", "/v1/export.json", "no-admin"), ("GET", "/v1/Export.tar.gz/", "no-admin"),
    ("GET", "/v1/dump.csv", "no-slash-export"), ("GET", "/v1/admin.xml", "no-admin"),
    ("HEAD", "/v1/reports/x", "no-report-reads"), ("head", "/v1/Reports/x/", "no-report-reads"),
])
def test_deny_rules_cover_every_spelling_a_server_routes_alike(wide: PolicyEngine, method: str, path: str,
                                                               rule: str) -> None:
    decision = ask(wide, method, path)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, rule)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/adminx/users"), ("GET", "/v1/exports"), ("GET", "/v1/dumps"), ("GET", "/v1/exports.json"),
    ("GET", "/v1/.export"), ("GET", "/v1/export.d/x"),
    ("OPTIONS", "/v1/reports/x"),  # no common framework runs the GET handler for OPTIONS
    ("POST", "/v1/reports/x"),
])
def test_the_widening_stops_where_servers_route_elsewhere(wide: PolicyEngine, method: str, path: str) -> None:
    assert ask(wide, method, path).rule in ("reads", "heads", "default-deny")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/docs"), ("GET", "/DOCS"), ("GET", "/exact/"), ("GET", "/exact.json"), ("GET", "/V1/x"),
    ("HEAD", "/exact"), ("HEAD", "/Docs"),
])
def test_allow_rules_cover_only_what_they_name(wide: PolicyEngine, method: str, path: str) -> None:
    assert ask(wide, method, path).rule == "default-deny"
    assert ask(wide, "GET", "/Docs").rule == "reads" and ask(wide, "GET", "/exact").rule == "reads"


def test_mask_rules_cover_head_case_a_trailing_slash_and_an_extension(wide: PolicyEngine) -> None:
    for method, path in (("GET", "/v1/users/7"), ("HEAD", "/v1/users/7"), ("GET", "/v1/USERS/7/"),
                         ("GET", "/v1/users.csv")):
        assert [m.rule for m in ask(wide, method, path).masks] == ["mask-users"], (method, path)
    assert ask(wide, "OPTIONS", "/v1/users/7").masks == ()


def test_wide_spellings() -> None:
    assert wide_paths("/V1/x/") == wide_paths("/v1/x") == frozenset({"/v1/x", "/v1/x/"})
    assert wide_paths("/") == frozenset({"/"})
    assert wide_paths("/v1/X.tar.gz") == frozenset({"/v1/x.tar.gz", "/v1/x.tar.gz/", "/v1/x", "/v1/x/"})
    assert wide_paths("/.env") == frozenset({"/.env", "/.env/"})  # a leading dot is no extension
    assert wide_paths("/Stra\u00dfe") == frozenset({"/strasse", "/strasse/"})  # full case folding
    assert wide_methods("head") == ("HEAD", "GET") and wide_methods("OPTIONS") == ("OPTIONS",)


# ---- the plain dialect refuses what servers could run otherwise ----------------------------------

def head(method: str, target: str, headers: Pairs = ()) -> RequestHead:
    parsed = parse_target(method, target)
    return RequestHead(method, target, parsed.path, parsed.query, headers, "api.example.com")


def refused(method: str, target: str, headers: Pairs = (), body: bytes = b"") -> bool:
    try:
        PlainDialect().operation(head(method, target, headers), body)
    except ClientProtocolError:
        return True
    return False


@pytest.mark.parametrize("char", ["\u0131", "\u017f", "\u212a", "\u00df", "\uff21", "\ufb01", "\u0130", "\u2024",
                                  "\u00aa", "\uff0f"])
def test_a_path_with_a_character_some_server_reads_as_ascii_is_refused(char: str) -> None:
    assert folds_to_ascii(char)
    encoded = "".join(f"%{byte:02X}" for byte in char.encode())
    assert refused("GET", f"/v1/adm{encoded}n/users")


@pytest.mark.parametrize("char", ["\u00e9", "\u00fc", "\u4e2d", "\u044f", "\u20ac"])
def test_other_non_ascii_paths_are_judged(char: str) -> None:
    assert not folds_to_ascii(char)
    encoded = "".join(f"%{byte:02X}" for byte in char.encode())
    operation = PlainDialect().operation(head("GET", f"/v1/{encoded}"), b"")
    assert isinstance(operation, HttpRequest) and operation.path == f"/v1/{char}"


@pytest.mark.parametrize(("name", "override"), [
    ("_method", True), ("_METHOD", True), ("%20_method", True), (".method", True), ("_method%5B%5D", True),
    ("_HttpMethod", True), ("X-HTTP-Method-Override", True), ("x_http_method", True), ("%EF%BC%BFmethod", True),
    ("method", False), ("payment_method", False), ("_methods", False),
])
def test_a_method_override_in_the_query_is_refused_whatever_the_method(name: str, override: bool) -> None:
    assert is_override(unquote(name)) is override
    for method in ("GET", "POST", "PUT"):
        assert refused(method, f"/v1/items/1?a=1&{name}=DELETE") is override


FORM = (("content-type", "application/x-www-form-urlencoded"),)
MULTIPART = (("content-type", "multipart/form-data; boundary=b"),)
JSON = (("content-type", "application/json"),)


def part(disposition: bytes, value: bytes = b"DELETE") -> bytes:
    return b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


@pytest.mark.parametrize(("headers", "body"), [
    (FORM, b"confirm=1&_method=delete"), (FORM, b"confirm=1;%5Fmethod=delete"), (FORM, b"_Method=put"),
    ((), b"_method=delete"),  # Rack reads a POST without Content-Type as a form
    ((("content-type", ""),), b"_method=delete"),
    (MULTIPART, part(b'form-data; name="_method"') + b"--b--"),
    (MULTIPART, part(b'form-data; NAME=_method') + b"--b--"),
    (MULTIPART, part(b'form-data; name="a"', b"x") + b"--b\ncontent-disposition : form-data; name=\"\\_method\"\n\nx"),
    (MULTIPART, part(b"form-data; name*=UTF-8''%5Fmethod") + b"--b--"),
    (MULTIPART, part(b'form-data; name*0="_me"; name*1="thod"') + b"--b--"),
    (MULTIPART, part(b'form-data;\r\n name="_method"') + b"--b--"),  # a folded header line
    (JSON, b'{"title": "x", "_method": "DELETE"}'), (JSON, b'{"\\u005fmethod": "PUT"}'),
    ((("content-type", "application/vnd.api+json"),), b'{"_method": "PATCH"}'),
    ((("content-type", "text/json; charset=utf-8"),), b'{"_method": "PATCH"}'),
    (MULTIPART, b"--b\r\nContent-Disposition:name=_method\r\n\r\nx\r\n--b--"),  # PHP: any `key=value`
    (JSON, b'{"a": 1,'),  # declared JSON but not: nothing can be said about it
    (FORM + JSON, b"a=1"),  # servers pick one Content-Type or the other
    (FORM + (("content-encoding", "gzip"),), b"\x1f\x8b"),  # a server decoding bodies reads what is hidden
    ((("content-type", "application/x-www-form-urlencoded; charset=utf-16"),), "_method=put".encode("utf-16")),
    ((("content-type", 'application/json; charset="utf-7"'),), b'{"+AF8-method": "PUT"}'),
])
def test_a_method_override_in_a_post_body_is_refused(headers: Pairs, body: bytes) -> None:
    assert PlainDialect().body_limit(head("POST", "/v1/items/1", headers)) == FORM_BODY_LIMIT
    assert refused("POST", "/v1/items/1", headers, body)


@pytest.mark.parametrize(("method", "headers", "body"), [
    ("POST", FORM, b"payment_method=card&method=x"),
    ("POST", MULTIPART, part(b'form-data; name="file"; filename="_method"', b"_method=DELETE") + b"--b--"),
    ("POST", MULTIPART, part(b'form-data; name="html"', b'<input name="_method" value="DELETE">') + b"--b--"),
    ("POST", JSON, b'{"item": {"_method": "DELETE"}}'),  # only top-level keys are parameters
    ("POST", JSON, b'[{"_method": "DELETE"}]'),
    ("POST", (("content-type", "application/x-www-form-urlencoded; charset=ISO-8859-1"),), b"a=\xe9"),
    ("POST", FORM + (("content-encoding", "identity"),), b"a=1"),
    ("POST", JSON, b""),
])
def test_bodies_without_an_override_are_judged(method: str, headers: Pairs, body: bytes) -> None:
    assert not refused(method, "/v1/items/1", headers, body)


@pytest.mark.parametrize(("method", "headers"), [
    ("POST", (("content-type", "application/octet-stream"),)), ("POST", (("content-type", "text/plain"),)),
    ("PUT", FORM), ("PATCH", JSON), ("GET", ()),
])
def test_bodies_no_server_reads_an_override_from_are_not_read(method: str, headers: Pairs) -> None:
    assert PlainDialect().body_limit(head(method, "/v1/items/1", headers)) == 0


def sent(commands: list[Command], to: Side) -> bytes:
    return b"".join(bytes(piece) for c in commands if isinstance(c, Send) and c.to is to for piece in c.data)


def post(content_type: bytes, length: int, body: bytes = b"") -> tuple[bytes, bytes]:
    """What a session allowing everything sends upstream and to the agent for a POST."""
    judge = Judging(lambda operation: Decision(Verdict.ALLOW, "anything"))
    session = HttpSession(PlainDialect(), judge, server_name="api.example.com")
    out = session.receive(Side.CLIENT, b"POST /v1/upload HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: "
                                       + content_type + b"\r\nContent-Length: %d\r\n\r\n" % length + body)
    return sent(out, Side.SERVER), sent(out, Side.CLIENT)


def test_a_form_larger_than_the_bound_is_refused_and_an_upload_streams() -> None:
    upstream, agent = post(b"multipart/form-data; boundary=b", FORM_BODY_LIMIT + 1)
    assert upstream == b"" and agent.startswith(b"HTTP/1.1 413 ")
    upstream, agent = post(b"application/octet-stream", FORM_BODY_LIMIT + 1, b"x" * 10)
    assert upstream.startswith(b"POST /v1/upload ") and upstream.endswith(b"x" * 10) and agent == b""
    upstream, agent = post(b"application/x-www-form-urlencoded", 8, b"_method=")
    assert upstream == b"" and agent.startswith(b"HTTP/1.1 400 ") and b"method override" in agent
    upstream, agent = post(b"application/x-www-form-urlencoded", 9, b"confirm=1")
    assert upstream.endswith(b"\r\n\r\nconfirm=1") and agent == b""
