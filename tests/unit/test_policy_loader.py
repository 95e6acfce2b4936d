"""The policy language: schema and semantic errors with positions, the shapes consumers use."""

import ipaddress
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from interceptor.policy import PolicyError, load_policy, load_policy_text, parse_address
from interceptor.policy.cli import policy

ROOT = Path(__file__).resolve().parents[2] / "policy"
GOOD = """version: 1
resources:
  db: {protocol: postgres, addresses: ["10.0.0.5:5432", "db.example.com:5432", "[2001:db8::1]:5432", "10.1.0.0/16:443"]}
agents:
  bot: {uids: [1001], cgroups: [system.slice/bot.service]}
rules:
  - {name: r1, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select]}}
"""


def problems(text):
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    return str(info.value)


def test_good_policy_shapes():
    loaded = load_policy_text(GOOD, "p.yaml")
    addresses = loaded.resources["db"].addresses
    assert addresses[0].network == ipaddress.ip_network("10.0.0.5/32") and addresses[0].port == 5432
    assert addresses[1].hostname == "db.example.com" and addresses[1].network is None
    assert addresses[2].network == ipaddress.ip_network("2001:db8::1/128")
    assert addresses[3].network == ipaddress.ip_network("10.1.0.0/16") and addresses[3].port == 443
    agent = loaded.agents["bot"]
    assert agent.uids == (1001,) and agent.cgroups == ("system.slice/bot.service",) and agent.unprotected == "deny"
    assert len(loaded.version) == 12 and loaded.version != load_policy_text(GOOD + "\n  - {name: r2, effect: deny}\n", "p").version
    with pytest.raises(TypeError):
        loaded.resources["x"] = None


def test_unknown_key_has_its_position():
    text = GOOD.replace("agents:\n  bot: {", "agents:\n  bot: {colour: red, ")
    assert "p.yaml:5:9: unknown key 'colour'" in problems(text)


def test_identity_config_is_checked_where_it_is_written():
    text = GOOD.replace("bot: {uids: [1001],", "bot: {identity: {source: login, issuer: 'https://x.okta.com/oauth2/default'}, uids: [1001],")
    assert "p.yaml:5:19: agent 'bot' identity source login needs audience, client_id" in problems(text)
    text = GOOD.replace("bot: {uids: [1001],", "bot: {identity: {source: none, colour: red}, uids: [1001],")
    assert "agent 'bot' identity has unknown field(s) colour" in problems(text)


def test_uid_zero_cannot_be_an_agent():
    assert "uid 0 cannot be an agent" in problems(GOOD.replace("uids: [1001]", "uids: [0]"))


def test_unknown_agent_and_resource_names_in_rules():
    text = GOOD.replace("agents: [bot], resources: [db]", "agents: [robot], resources: [dbx]")
    found = problems(text)
    assert "p.yaml:7:40: unknown agent 'robot'" in found and "unknown resource 'dbx'" in found


@pytest.mark.parametrize("address,message", [
    ("10.0.0.300:5432", "bad IP address"), ("10.0.0.5:70000", "out of range"), ("10.0.0.5", "expected host:port"),
    ("10.0.0.1/8:22", "bad IP address"), ("[::1]5432", "expected [ipv6]:port"), ("bad_host!:22", "bad hostname"),
])
def test_bad_addresses(address, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_address(address)
    assert message in problems(GOOD.replace('"10.0.0.5:5432"', f'"{address}"'))


def test_schema_errors_say_what_was_expected():
    assert "effect" in problems(GOOD.replace("effect: allow", "effect: maybe"))
    assert "'approval' is a required property" in problems(GOOD.replace("effect: allow", "effect: approve"))
    assert "p.yaml:1:1" in problems("version: 1\n")
    assert "duplicate key 'db'" in problems(GOOD.replace("agents:\n", "  db: {protocol: tcp, addresses: ['1.2.3.4:1']}\nagents:\n"))
    assert "invalid YAML" in problems("version: [1\n")
    assert "p.yaml:7:63: sql rule on resource 'db' whose protocol is tcp" in problems(GOOD.replace("protocol: postgres", "protocol: tcp"))


def test_a_protocol_without_a_handler_is_refused_where_it_is_named():
    found = problems(GOOD.replace("protocol: postgres", "protocol: rdp"))
    assert "p.yaml:3:18: resources/db/protocol: no handler for protocol 'rdp' (protocols with a handler: " \
           "tcp, postgres, http, kubernetes, mcp, ssh)" in found
    found = problems(GOOD.replace("sql: {kinds: [select]}", "rdp: {commands: [uptime]}"))
    assert "p.yaml:7:63: unknown key 'rdp'" in found and "operation key names a protocol with a handler: " \
           "tcp (tcp), sql (postgres), http (http), kubernetes (kubernetes), mcp (mcp), ssh (ssh)" in found


def test_a_rule_is_about_one_kind_of_operation():
    found = problems(GOOD.replace("sql: {kinds: [select]}", "sql: {kinds: [select]}, tcp: true"))
    assert "p.yaml:7:87: a rule matches one kind of operation; got sql, tcp" in found
    masked = GOOD.replace("effect: allow, agents: [bot], resources: [db], sql: {kinds: [select]}",
                          "effect: mask, tcp: true, mask: {columns: [a.b.c]}")
    assert "mask rules apply to sql, http, kubernetes, mcp operations" in problems(masked)


def test_resource_options_are_the_protocols_own():
    options = GOOD.replace('"10.1.0.0/16:443"]}', '"10.1.0.0/16:443"], options: {databases: [app], tls: {ca: /x.pem}}}')
    assert load_policy_text(options, "p.yaml").resources["db"].options == {"databases": ["app"], "tls": {"ca": "/x.pem"}}
    assert "unknown key 'database' (expected one of: databases, tls)" in problems(options.replace("databases", "database"))
    assert "tls: 'yes' is not of type 'boolean', 'object'" in problems(options.replace("{ca: /x.pem}", "'yes'"))
    tcp = options.replace("protocol: postgres", "protocol: tcp").replace(", sql: {kinds: [select]}", "")
    assert "unknown key 'databases' (expected one of: none)" in problems(tcp)


def test_sql_patterns_are_checked_where_they_are_written():
    found = problems(GOOD.replace("sql: {kinds: [select]}", "sql: {tables: [orders], columns: [a.b]}"))
    assert "p.yaml:7:78: table pattern 'orders': expected schema.table" in found
    assert "p.yaml:7:97: column pattern 'a.b': expected column or schema.table.column" in found


def test_load_policy_from_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_cli_check_ok_and_error(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(policy, ["check", str(ROOT / "default.yaml")])
    assert ok.exit_code == 0 and "ok (version" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("sql: {kinds", "sql: {kind"))
    result = runner.invoke(policy, ["check", "--json", str(bad)])
    assert result.exit_code == 1 and "unknown key 'kind'" in result.output


@pytest.mark.parametrize("tests", sorted(ROOT.glob("**/*.tests.yaml")), ids=lambda p: p.name)
def test_shipped_policies_pass_their_tests(tests):
    result = CliRunner().invoke(policy, ["test", str(tests)])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output


def test_cli_test_reports_failures(tmp_path):
    (tmp_path / "p.yaml").write_text(GOOD)
    cases = tmp_path / "p.tests.yaml"
    cases.write_text("policy: p.yaml\ncases:\n  - {name: wrong, agent: bot, resource: db, sql: 'delete from t',"
                     " expect: {verdict: allow}}\n")
    result = CliRunner().invoke(policy, ["test", "--json", str(cases)])
    assert result.exit_code == 1 and '"failed": 1' in result.output
