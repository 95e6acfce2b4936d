import ipaddress
from pathlib import Path

from interceptor.redirect import mapped, unmap
from interceptor.redirect.iptables import IptablesRedirect
from interceptor.redirect.plan import AgentEntry, DestEntry, Indexer, RedirectPlan

ROOT = Path("/sys/fs/cgroup")


def plan(unprotected_allow: bool = False) -> RedirectPlan:
    return RedirectPlan(
        enforcer_port=999, refuse_port=998, daemon_tgid=1, managed_root=str(ROOT / "interceptor"),
        agents=(AgentEntry(1, "analytics", (str(ROOT / "interceptor/analytics"), str(ROOT / "system.slice/a.service")),
                           (1500,), unprotected_allow),),
        dests=(DestEntry(ipaddress.ip_network("10.0.0.5/32"), 5432, 1),
               DestEntry(ipaddress.ip_network("10.1.0.0/16"), 0, 2),
               DestEntry(ipaddress.ip_network("2001:db8::1/128"), 5432, 1)),
        access=frozenset({(1, 1)}), resource_names={1: "db", 2: "net"})


def test_indexer_is_stable_across_reloads():
    ix = Indexer()
    assert (ix("b"), ix("a"), ix("b")) == (1, 2, 1)


def test_address_mapping_round_trips():
    assert mapped("10.0.0.5") == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 5])
    assert unmap(mapped("10.0.0.5")) == ipaddress.ip_address("10.0.0.5")
    assert unmap(mapped("2001:db8::1")) == ipaddress.ip_address("2001:db8::1")
    assert unmap(mapped("::ffff:10.0.0.5")) == ipaddress.ip_address("10.0.0.5")


def test_plan_names():
    assert plan().agent_name(1) == "analytics"
    assert plan().agent_name(7) is None


def test_iptables_rules_redirect_allowed_and_refuse_the_rest():
    rules = IptablesRedirect(ROOT)._rules(plan(), 4).splitlines()
    # agent matchers: its own cgroups and uid first, then the managed parent (unassigned)
    jumps = [r for r in rules if r.startswith("-A ICPT_OUT")]
    assert jumps == [
        "-A ICPT_OUT -p tcp -m cgroup --path interceptor/analytics -g ICPT_A1",
        "-A ICPT_OUT -p tcp -m cgroup --path system.slice/a.service -g ICPT_A1",
        "-A ICPT_OUT -p tcp -m owner --uid-owner 1500 -g ICPT_A1",
        "-A ICPT_OUT -p tcp -m cgroup --path interceptor -g ICPT_A0",
    ]
    agent = [r for r in rules if r.startswith("-A ICPT_A1 ")]
    assert "-A ICPT_A1 -p tcp -d 10.0.0.5/32 --dport 5432 -j REDIRECT --to-ports 999" in agent
    assert "-A ICPT_A1 -p tcp -d 10.1.0.0/16  -j REDIRECT --to-ports 998" in agent  # no access: refused
    assert agent[0].startswith("-A ICPT_A1 -p tcp -d 127.0.0.0/8 -m multiport --dports 999,998")
    assert agent[-1] == "-A ICPT_A1 -p tcp -j REDIRECT --to-ports 998"  # unprotected: deny
    assert not any("2001:db8" in r for r in rules)  # IPv6 goes to ip6tables
    unassigned = [r for r in rules if r.startswith("-A ICPT_A0 ")]
    assert not any("--to-ports 999" in r for r in unassigned if "127.0.0.0/8" not in r)


def test_iptables_unprotected_allow_and_udp():
    rules = IptablesRedirect(ROOT)._rules(plan(unprotected_allow=True), 6).splitlines()
    agent = [r for r in rules if r.startswith("-A ICPT_A1 ")]
    assert "-A ICPT_A1 -p tcp -d 2001:db8::1/128 --dport 5432 -j REDIRECT --to-ports 999" in agent
    assert agent[-1] != "-A ICPT_A1 -p tcp -j REDIRECT --to-ports 998"
    udp = [r for r in rules if r.startswith("-A ICPT_U1 ")]
    assert udp == ["-A ICPT_U1 -p udp -d 2001:db8::1/128 --dport 5432 -j REJECT",
                   "-A ICPT_U1 -p udp --dport 53 -j RETURN"]


def test_build_plan_resolves_hostnames_and_keeps_indices_stable():
    from interceptor.policy import load_policy_text
    from interceptor.redirect.plan import HostAddresses, build_plan

    policy = load_policy_text("""version: 1
resources:
  db: {protocol: postgres, addresses: ["db.internal:5432", "10.0.0.5:5432"]}
  web: {protocol: tcp, addresses: ["10.9.0.0/16:443"]}
agents:
  bot: {uids: [1001]}
  other: {unprotected: allow}
rules:
  - {name: r, effect: allow, agents: [bot], resources: [db], sql: {kinds: [select]}}
""", "p.yaml")
    addresses = {"db.internal": [ipaddress.ip_network("10.0.0.7/32"), ipaddress.ip_network("fd00::7/128")]}
    agents_ix, resources_ix = Indexer(), Indexer()

    def plan_with(resolve):
        return build_plan(policy, lambda agent, resource: agent == "bot" and resource == "db",
                          managed_root="/cg/interceptor", agent_paths={"bot": ["/cg/interceptor/bot"],
                                                                        "other": ["/cg/interceptor/other"]},
                          enforcer_port=999, refuse_port=998, daemon_tgid=1, agents_ix=agents_ix,
                          resources_ix=resources_ix, resolve=resolve)

    hosts = HostAddresses(lambda host: list(addresses[host]))
    first = plan_with(hosts)
    db = next(i for i, name in first.resource_names.items() if name == "db")
    bot = next(a for a in first.agents if a.name == "bot")
    assert {(str(d.network), d.port) for d in first.dests if d.resource_index == db} == {
        ("10.0.0.7/32", 5432), ("fd00::7/128", 5432), ("10.0.0.5/32", 5432)}
    assert first.access == frozenset({(bot.index, db)})
    assert bot.uids == (1001,) and not bot.unprotected_allow
    addresses["db.internal"] = [ipaddress.ip_network("10.0.0.8/32")]  # the name moved
    second = plan_with(hosts)
    assert ("10.0.0.8/32", 5432) in {(str(d.network), d.port) for d in second.dests}
    assert second.resource_names == first.resource_names and second.agents == first.agents
    addresses["db.internal"] = []  # DNS fails: the name keeps the addresses it had (fail closed)
    third = plan_with(hosts)
    assert {str(d.network) for d in third.dests if d.resource_index == db} == {"10.0.0.8/32", "10.0.0.5/32"}
