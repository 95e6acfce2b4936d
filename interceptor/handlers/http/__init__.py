"""HTTP/1.1 through the handler runtime, for every protocol over HTTP.

- `session`: the sans-IO HTTP/1.1 session (h11): requests judged one by one, smuggling shapes
  refused, the agent's credentials dropped and the resource's sent, responses streamed;
- `dialect`: the seam where a protocol says what a request is, how a refusal looks to its
  clients and how its responses are masked (`plain`: `http`; the kubernetes and mcp dialects);
- `handler`: the asyncio glue (agent-facing TLS, the upstream, credentials, the record);
- `credentials`: what a resource's credentials send upstream;
- `bearer`: the dialect as one flow uses it, and the agent's bearer token as its identity;
- `target`, `headers`, `sse`: request-targets, header rules and server-sent events.

`HANDLER` serves `protocol: http` resources.
"""

from __future__ import annotations

from interceptor.handlers.http.handler import HttpHandler
from interceptor.handlers.http.plain import PlainDialect

HANDLER = HttpHandler("http", lambda services: PlainDialect(services.mask_key))
