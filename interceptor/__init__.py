"""interceptor: least-privilege access for AI agents, enforced on the host."""

from interceptor.compiled import StaleBuild, verify

__version__ = "0.1.0"

try:
    verify()
except StaleBuild as exc:  # every command (the daemon, the CLI, the tests) stops here, saying what to run
    raise SystemExit(f"interceptor: {exc}") from None
