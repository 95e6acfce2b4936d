"""interceptor: least-privilege access for AI agents, enforced on the host."""

from interceptor.compiled import verify

__version__ = "0.1.0"

verify()
