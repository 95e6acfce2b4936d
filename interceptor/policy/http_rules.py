"""Judge an HttpRequest by the rules about HTTP (sans-IO): a rule's `http:` block names
methods, paths and hosts (globs); an allow, approve or mask rule must cover the request (each
condition it gives holds, and a value the request lacks, as a Host, never does); a deny rule
covers it as soon as each condition it gives could hold (a missing Host is taken as any).
Precedence is interceptor.policy.judgement's: deny, then approve, then allow.

Paths are the request's path percent-decoded once (interceptor.operations.HttpRequest) and
matched with fnmatch globs, so `*` also matches `/`: `/v1/reports/*` covers every path under
`/v1/reports/`. Where servers route one request differently, a deny or mask rule takes the
widest reading and an allow or approve rule the narrowest:

- case: deny and mask paths match case-insensitively (both sides case-folded; Express,
  ASP.NET Core and IIS route `/Admin` to `/admin`); allow and approve paths match exactly;
- a trailing slash: deny and mask paths match the path with and without one trailing slash
  (Express without `strict`, Spring MVC before 6 serve `/x/` as `/x`);
- an extension: deny and mask paths match the path without the last segment's extension
  (Rails routes `/x.json` to `/x` with format json, Spring MVC's suffix pattern match before
  5.3 `/x.anything`);
- HEAD: a deny or mask rule naming GET also covers HEAD (RFC 9110 section 9.3.2; Go
  net/http, Starlette, Express, Flask and Django run the GET handler for HEAD). OPTIONS is
  not widened: no common framework runs a GET handler for it (they answer it themselves).

Hosts are matched without their port, lower-cased, without a trailing dot
(RFC 9110 section 7.2: Host is `uri-host [":" port]`; RFC 3986 section 3.2.2: host names are
case-insensitive).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from interceptor.decision import Decision, MaskSpec
from interceptor.operations import HttpRequest, Request
from interceptor.policy.judgement import pick
from interceptor.policy.model import Rule

if TYPE_CHECKING:  # the protocol registry imports this module
    from interceptor.protocols.spec import Context, Problem

OPERATION_KEY = "http"  # a rule's `http:` block, a test case's `http:` request


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """A rule's `http:` block; every given field must hold. Methods upper-cased, hosts
    lower-cased without a trailing dot; all three are globs."""

    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None


def parse_http_match(raw: Mapping[str, Any], problem: Problem) -> HttpMatch:
    """A schema-valid `http:` block as an HttpMatch; a path pattern that does not start with
    `/` (or is not `*`) and a host pattern with a port or a scheme are reported to
    `problem` (path within the block, message)."""
    for i, pattern in enumerate(raw.get("paths", ())):
        if not pattern.startswith(("/", "*")):
            problem(("paths", i), f"path pattern {pattern!r}: expected an absolute path glob such as /v1/reports/*")
    for i, pattern in enumerate(raw.get("hosts", ())):
        if "/" in pattern or (":" in pattern and not pattern.startswith("[")):
            problem(("hosts", i), f"host pattern {pattern!r}: expected a host name glob without scheme or port "
                    "(the resource's addresses say the ports)")
    return HttpMatch(
        methods=tuple(m.upper() for m in raw["methods"]) if "methods" in raw else None,
        paths=tuple(raw["paths"]) if "paths" in raw else None,
        hosts=tuple(h.lower().rstrip(".") for h in raw["hosts"]) if "hosts" in raw else None,
    )


def host_name(host: str | None) -> str | None:
    """The host of a Host header value without its port, lower-cased, without a trailing dot
    and the brackets of an IPv6 literal (`[::1]:8443` -> `::1`); None when absent or empty."""
    if not host:
        return None
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.lower().rstrip(".") or None


def covers(match: HttpMatch, effect: str, request: HttpRequest) -> bool:
    """Does the `http:` block of a rule of `effect` cover the request? A deny rule takes an
    unknown host as any, the others need every condition to hold; deny and mask rules read
    method and path the widest way servers do (the module docstring: case, trailing slash,
    extension, HEAD as GET), allow and approve rules exactly."""
    deny, wide = effect == "deny", effect in ("deny", "mask")
    methods = wide_methods(request.method) if wide else (request.method.upper(),)
    if match.methods is not None and not any(fnmatchcase(method, m) for method in methods for m in match.methods):
        return False
    if match.paths is not None and not _path_covered(match.paths, request.path, wide):
        return False
    if match.hosts is None:
        return True
    host = host_name(request.host)
    if host is None:
        return deny
    return any(fnmatchcase(host, h) for h in match.hosts)


def wide_methods(method: str) -> tuple[str, ...]:
    """The methods whose handlers a `method` request may run: HEAD runs GET's (RFC 9110
    section 9.3.2), every other method only its own; upper-cased."""
    method = method.upper()
    return (method, "GET") if method == "HEAD" else (method,)


def wide_paths(path: str) -> frozenset[str]:
    """The spellings of `path` a server may route as it: case-folded, with and without one
    trailing slash (`/x/` and `/x`; `/` stays `/`), and without the last segment's extension
    (`/x.json`, `/x.tar.gz` as `/x`; not a leading dot, `/.env`)."""
    folded = path.casefold()
    bare = folded[:-1] if folded.endswith("/") and len(folded) > 1 else folded
    parent, _, last = bare.rpartition("/")
    stem = f"{parent}/{last[:1]}{last[1:].partition('.')[0]}"
    return frozenset(form + slash for form in {bare, stem} for slash in ("", "/") if form != "/" or not slash)


def _path_covered(patterns: tuple[str, ...], path: str, wide: bool) -> bool:
    if not wide:
        return any(fnmatchcase(path, p) for p in patterns)
    spellings = wide_paths(path)
    return any(fnmatchcase(spelling, p.casefold()) for spelling in spellings for p in patterns)


def _matches(rule: Rule, request: HttpRequest) -> bool:
    if not isinstance(rule.match, HttpMatch):
        return rule.operation is None  # a rule about every operation of the resource
    return covers(rule.match, rule.effect, request)


def judge_http(context: Context, request: Request, operation: HttpRequest) -> Decision:
    """The Decision for one request: the winning rule among those that cover it, with the
    masks of the mask rules that cover it (JSON paths and classifiers, for the response
    body; a denial carries none). Never raises on bad input: no rule is default deny."""
    rules = context.rules(request, OPERATION_KEY)
    judgement = pick((r for r in rules if r.effect != "mask" and _matches(r, operation)),
                     f"no rule allows {operation.method} {operation.path} on {request.resource}")
    masks = tuple(MaskSpec(classifiers=r.mask.classifiers, style=r.mask.style, rule=r.name, paths=r.mask.paths)
                  for r in rules if r.effect == "mask" and r.mask is not None and _matches(r, operation))
    return judgement.decision(masks)


def parse_http_case(case: Mapping[str, Any]) -> HttpRequest:
    """A `policy test` case's request: `http: {method: GET, path: /v1/x, host: h, query:
    {name: value}}`; method and path are required. ValueError/KeyError/TypeError when bad."""
    raw = case[OPERATION_KEY]
    if not isinstance(raw, Mapping):
        raise TypeError("http: expected a mapping {method: GET, path: /v1/x, host: api.example.com}")
    unknown = sorted(set(raw) - {"method", "path", "host", "query"})
    if unknown:
        raise ValueError(f"http: unknown key(s) {', '.join(map(str, unknown))} (expected method, path, host, query)")
    method, path, host = raw["method"], raw["path"], raw.get("host")
    if not isinstance(method, str) or not method or not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("http: method must be a token such as GET and path an absolute path such as /v1/x")
    if host is not None and not isinstance(host, str):
        raise TypeError("http: host must be a string")
    query = raw.get("query") or {}
    if not isinstance(query, Mapping):
        raise TypeError("http: query must be a mapping of parameter names to values")
    return HttpRequest(method.upper(), path, tuple((str(k), str(v)) for k, v in query.items()), host)
