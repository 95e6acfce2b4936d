"""Protocol handlers: each registered protocol (interceptor.protocols) names the module of its
handler, which exports `HANDLER`; the enforcer finds it by the resource's protocol name."""

from __future__ import annotations

import importlib

from interceptor.handlers.base import Handler, Services
from interceptor.protocols import spec_for

__all__ = ["Handler", "Services", "handler_for"]


def handler_for(protocol: str) -> Handler:
    """The handler instance for a resource protocol; LookupError for a protocol with none."""
    module = importlib.import_module(spec_for(protocol).handler)
    handler: Handler = module.HANDLER
    return handler
