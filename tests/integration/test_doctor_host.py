"""`interceptor doctor` on this host: every check runs for real (BPF programs are loaded)."""

import json
import subprocess

from daemon import INTERCEPTOR


def test_doctor_reports_every_check_and_a_verdict():
    result = subprocess.run([INTERCEPTOR, "doctor", "--json"], capture_output=True, text=True)
    report = json.loads(result.stdout)
    names = {c["name"]: c for c in report["checks"]}
    for expected in ("root privileges", "cgroup v2", "BTF", "kernel headers for bcc", "python bcc",
                     "BPF programs compile and load", "iptables fallback"):
        assert expected in names, expected
    failed = [f"{c['name']}: {c['detail']} (fix: {c['fix']})" for c in report["checks"]
              if not c["ok"] and c["needed_for"] != "optional"]
    assert result.returncode == 0 and report["ok"], f"this host cannot run the daemon: {failed}"
    assert report["summary"] == "ready: BPF redirection", failed


def test_doctor_human_output_names_fixes():
    result = subprocess.run([INTERCEPTOR, "doctor"], capture_output=True, text=True)
    assert "ok    BPF programs compile and load" in result.stdout
    assert result.stdout.rstrip().endswith("ready: BPF redirection")
