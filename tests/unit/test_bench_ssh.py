"""The SSH bench section's arithmetic and its Markdown (no servers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, where bench/ lives

from bench import report, ssh  # noqa: E402


def test_ssh_rows_give_ratios_to_both_direct_paths_and_a_failed_path_its_error() -> None:
    samples = {"direct": [ssh.Sample(4.0, 250.0, 300.0, None), ssh.Sample(3.0, 330.0, 400.0, None)],
               "direct-kex": [ssh.Sample(5.0, 200.0, 240.0, None)],
               "interceptor": [ssh.Sample(2.5, 400.0, 500.0, 12.5)]}
    kex = {"direct": "sntrup761x25519-sha512", "direct-kex": "curve25519-sha256", "interceptor": "curve25519-sha256"}
    result = ssh.summarize(samples, {}, kex, rounds=2, count=10, logins=43)
    rows = {row["route"]: row for row in result["cells"]}
    assert rows["direct"]["round_trips_per_s"]["median"] == 3.5
    assert rows["interceptor"]["ratios"]["round_trips_per_s_vs_direct"] == round(2.5 / 3.5, 3)
    assert rows["interceptor"]["ratios"]["round_trips_per_s_vs_direct_kex"] == 0.5
    assert rows["interceptor"]["proxy_cpu_ms"]["median"] == 12.5 and "proxy_cpu_ms" not in rows["direct"]
    assert result["round_trips"] == 43  # 4 runs of 10, and one per path for its key exchange
    lines = "\n".join(report.render("ssh", result))
    assert "| interceptor, batched audit | 2.5 | 0.0 | 0.714 | 0.500 | 400.0 | 500.0 | 12.5 |" in lines
    assert "direct to sshd sntrup761x25519-sha512" in lines
    assert "sshd logged 43 logins for 43 successful round trips" in lines


def test_a_path_that_failed_shows_its_error_and_no_ratio() -> None:
    result = ssh.summarize({"direct": [ssh.Sample(4.0, 250.0, 300.0, None)]},
                           {"interceptor": "ssh exited with 255: Connection closed"}, {"direct": None},
                           rounds=1, count=5, logins=5)
    interceptor = next(row for row in result["cells"] if row["route"] == "interceptor")
    assert interceptor["ratios"] == {} and interceptor["error"].startswith("ssh exited with 255")
    lines = "\n".join(report.render("ssh", result))
    assert "| interceptor, batched audit | not measured: ssh exited with 255: Connection closed |" in lines
    assert "Key exchange" not in lines
