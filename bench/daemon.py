"""Start and stop the real daemon for a benchmark, with throwaway settings."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from interceptor.control import ControlClient, ControlError

INTERCEPTOR = str(Path(sys.executable).parent / "interceptor")


class BenchDaemon:
    def __init__(self, workdir: Path, policy_text: str, redirect: str = "bpf", audit: dict | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.policy = workdir / "policy.yaml"
        self.policy.write_text(policy_text)
        self.socket = workdir / "control.sock"
        self.settings = workdir / "interceptor.yaml"
        self.settings.write_text(json.dumps({
            "policy": str(self.policy), "redirect": redirect, "state_dir": str(workdir / "state"),
            "control_socket": str(self.socket),
            "audit": audit or {"store": "sqlite", "path": str(workdir / "audit.db"), "durability": "strict"}}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        log = open(self.workdir / "daemon.log", "ab")
        self.proc = subprocess.Popen([INTERCEPTOR, "--config", str(self.settings), "run", "--log-level", "WARNING"],
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = ControlClient(self.socket).call("status")
                self.cgroup_root = Path(status["cgroup_root"])
                return
            except ControlError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not start; see {self.workdir / 'daemon.log'}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def uninstall(self) -> None:
        subprocess.run([INTERCEPTOR, "--config", str(self.settings), "uninstall"], capture_output=True, check=True)
