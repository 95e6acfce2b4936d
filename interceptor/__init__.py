"""interceptor: least-privilege access for AI agents, enforced on the host."""

__version__ = "0.1.0"
