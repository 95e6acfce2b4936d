from interceptor.doctor import Check, verdict


def checks(*failed: str) -> list[Check]:
    kinds = ("daemon", "bpf", "iptables", "optional")
    return [Check(kind, kind not in failed, "", needed_for=kind) for kind in kinds]


def test_verdicts():
    assert verdict(checks()) == (True, "ready: BPF redirection")
    assert verdict(checks("optional")) == (True, "ready: BPF redirection")
    assert verdict(checks("bpf")) == (True, "degraded: BPF unavailable, the daemon will use the iptables fallback")
    assert verdict(checks("bpf", "iptables"))[0] is False
    assert verdict(checks("daemon")) == (False, "the daemon cannot run")
