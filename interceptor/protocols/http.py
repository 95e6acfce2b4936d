"""http: every HTTP/1.1 request is judged by method, path and host
(interceptor.policy.http_rules); its handler is interceptor.handlers.http. The resource options
here (`http_options_schema`) are shared by every protocol over HTTP (kubernetes, mcp)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interceptor.operations import HttpRequest
from interceptor.policy.http_rules import OPERATION_KEY, judge_http, parse_http_case, parse_http_match
from interceptor.protocols.spec import ProtocolSpec, Schema

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog

_STRINGS = {"$ref": "#/$defs/strings"}

TLS_OPTION: Schema = {
    "type": ["boolean", "object"], "additionalProperties": False,
    "properties": {
        "ca": {"type": "string", "minLength": 1,
               "description": "PEM file of the CA the server's certificate must chain to (instead of the system "
                              "store)."},
        "server_name": {"type": "string", "minLength": 1,
                        "description": "The name the server's certificate must hold (instead of the SNI the agent "
                                       "sent, or the resource's host name)."},
    },
    "description": "TLS to the server, always verified. Omitted: the same as the agent's connection (TLS when the "
                   "agent spoke TLS to the enforcer, which answers with a certificate of the host CA). `true`: TLS "
                   "verified against the system CA store; `{ca: /path, server_name: name}`: against that CA (and "
                   "that name); `false`: clear text. The name checked is `server_name`, else the SNI the agent "
                   "sent, else the resource's host name, else the destination IP address.",
}
IDENTITY_OPTION: Schema = {
    "enum": ["agent", "bearer"],
    "description": "Whose identity the policy judges requests by. `agent` (the default): the agent's configured "
                   "identity (`agents.NAME.identity`). `bearer`: the access token the agent presents in "
                   "`Authorization: Bearer`, validated with the agent's identity settings (issuer, audience, "
                   "algorithms, signature, expiry); a request without a valid one is answered 401 and audited. "
                   "Either way the agent's Authorization header never reaches the server.",
}
TOKEN_HEADER_OPTION: Schema = {
    "type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
    "description": "The request header the credentials' `token` is sent in, as is (an API key header such as "
                   "`X-Api-Key`). Omitted: `Authorization: Bearer TOKEN`. Whatever the agent sends in this header "
                   "is dropped.",
}
CREDENTIALS_NOTE = (" Credentials (`credentials:` of the resource, a mapping): `token` (sent as `Authorization: "
                    "Bearer`, or in `token_header`), or `user` and `password` (HTTP Basic, RFC 7617), and/or "
                    "`client_certificate` and `client_key` (paths of PEM files: TLS client authentication to the "
                    "server). Any other key is refused (502), so a misspelt one never sends a request "
                    "unauthenticated. No credentials: requests go up without any.")


def http_options_schema(description: str, extra: Mapping[str, Schema] | None = None) -> Schema:
    """The `options:` schema of a resource over HTTP: `tls`, `identity`, `token_header`, and
    the protocol's own `extra` properties; `description` leads the generated reference text."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": description + CREDENTIALS_NOTE,
        "properties": {"tls": TLS_OPTION, "identity": IDENTITY_OPTION, "token_header": TOKEN_HEADER_OPTION,
                       **(extra or {})},
    }


MATCH_SCHEMA: Schema = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": "Matches HTTP requests. Allow, approve and mask rules must cover the request (every condition "
                   "given holds); a deny rule matches when each condition given could hold (a request without a "
                   "Host matches any `hosts`). Where servers route one request differently, deny and mask rules "
                   "take the widest reading and allow and approve rules the narrowest (see `methods` and "
                   "`paths`).",
    "properties": {
        "methods": {**_STRINGS,
                    "description": "Request methods (`GET`, `HEAD`, `POST`, ...; globs, case-insensitive). In a deny "
                                   "or mask rule `GET` also covers `HEAD`, which servers run with the GET handler; "
                                   "an allow rule covers only the methods it names. A method override (`_method` "
                                   "and the like in the query or a POST form or JSON body) is refused before any "
                                   "rule."},
        "paths": {**_STRINGS, "description": (
            "Path globs, matched against the path percent-decoded once, without the query (`*` matches `/` too: "
            "`/v1/reports/*` is every path under /v1/reports/). Targets whose decoded path the server could read "
            "differently (dot segments, `//`, encoded `/` or `\\`, a non-ASCII character some server folds to "
            "ASCII such as `ı` or a fullwidth letter) are refused before any rule. Deny and mask rules match "
            "case-insensitively, with or without one trailing slash and without the last segment's extension "
            "(`/admin/*` covers `/Admin/x`, `/internal/export` covers `/internal/export/` and "
            "`/internal/export.json`); allow and approve rules match exactly.")},
        "hosts": {**_STRINGS, "description": "Host globs, matched against the Host header without its port, "
                                             "lower-cased."},
    },
}


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> HttpRequest:
    return parse_http_case(case)


SPEC: ProtocolSpec[HttpRequest] = ProtocolSpec(
    name="http",
    operation_key=OPERATION_KEY,
    operation=HttpRequest,
    description="Available: HTTP/1.1 (TLS towards the agent with the host CA), every request judged by method, "
                "path and host, the resource's credentials injected upstream, refusals as JSON.",
    handler="interceptor.handlers.http",
    match_schema=MATCH_SCHEMA,
    options_schema=http_options_schema("Settings of the http handler (shared by every protocol over HTTP)."),
    parse_match=parse_http_match,
    judge=judge_http,
    parse_case=_parse_case,
    masks=True,
)
