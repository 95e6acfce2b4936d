"""Protocol handlers: each module `interceptor.handlers.<protocol>` exports `HANDLER`.

A new protocol is a new module here plus an operation type in `interceptor.operations`;
the enforcer finds it by the resource's protocol name.
"""

from __future__ import annotations

import importlib

from interceptor.handlers.base import Handler, Services

__all__ = ["Handler", "Services", "handler_for"]

_PROTOCOLS = ("tcp", "postgres", "http", "kubernetes", "ssh")


def handler_for(protocol: str) -> Handler:
    """The handler instance for a resource protocol; unknown protocols are a config error."""
    if protocol not in _PROTOCOLS:
        raise LookupError(f"no handler for protocol {protocol!r}")
    module = importlib.import_module(f"interceptor.handlers.{protocol}")
    handler: Handler = module.HANDLER
    return handler
