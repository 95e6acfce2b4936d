"""The Kubernetes request attributes of one HTTP request, derived exactly as the API server
derives them before it authorizes (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go,
RequestInfoFactory.NewRequestInfo, with APIPrefixes {api, apis} and the groupless prefix api),
and the query parameters as the server's Go code reads them (net/url ParseQuery).

One attribute is read more strictly than RequestInfo does: a request to a connect subresource
(CONNECT_SUBRESOURCES: a rest.Connecter of the core group, pods exec, attach, portforward and
proxy, services/proxy and nodes/proxy; k8s.io/kubernetes pkg/registry/core) has verb `create`
whatever its method. RequestInfo gives the method's verb (`get` for a WebSocket upgrade's GET,
`create` for SPDY's POST), but kube-apiserver 1.31 and later also require `create` for a
WebSocket upgrade of pods exec, attach and portforward (feature gate
AuthorizePodWebsocketUpgradeCreatePermission), and a GET through nodes/proxy reaches the
kubelet's exec; so allowing a connect takes `create`, and kube_rules lets a deny rule naming
any verb the server may authorize the connect by match it too.

Where our reading could differ from the server's, the request is refused with
ClientProtocolError instead: dot and empty path segments (the enforcer's HTTP session refuses
them and encoded slashes before this runs), a method the API server does not serve on
resources, query text that is not UTF-8 once decoded, a `watch` value that is not ASCII (Go
folds case with Unicode rules), and - when a list or watch takes its name from
`fieldSelector=metadata.name=...` - a `limit` or `timeoutSeconds` that is not an integer
(the server would then read no name, and answer the request 400).

One reading is taken on trust: when a list or watch names its object by field selector and
also has a label selector the server cannot parse, the server authorizes it without the name
and then answers it 400 BadRequest (its list handler decodes the same options); the name is
kept here, so no listing the name would not cover gets through.
"""

from __future__ import annotations

import re

from interceptor.errors import ClientProtocolError
from interceptor.operations import KubeRequest, Pairs

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})  # verbs written as a path prefix (deprecated)
SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
VERBS_WITH_SELECTORS = frozenset({"list", "watch", "deletecollection"})
# The core group's connect subresources (rest.Connecter), with the verbs the API server may
# authorize them by: the verbs of the methods each serves (ConnectMethods), and `create`
CONNECT_SUBRESOURCES = {
    ("pods", "exec"): ("get", "create"), ("pods", "attach"): ("get", "create"),
    ("pods", "portforward"): ("get", "create"),
    **{(resource, "proxy"): ("get", "create", "update", "patch", "delete")
       for resource in ("pods", "services", "nodes")},
}
METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_GO_INT64 = re.compile(r"[+-]?[0-9]+")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_FIELD_OPERATORS = ("!=", "==", "=")


def kube_request(method: str, path: str, query: Pairs) -> KubeRequest:
    """The attributes of `method` on `path` (percent-decoded once) with `query` (as
    `go_query` reads it); a connect subresource's verb is `create` (see the module's doc).
    ClientProtocolError where the server's reading could differ."""
    _check_path(path)
    trimmed = path.strip("/")
    parts = trimmed.split("/") if trimmed else []
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return KubeRequest(method.lower(), path, resource_request=False)
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return KubeRequest(method.lower(), path, resource_request=False)
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    via_prefix = parts[0] in SPECIAL_VERBS
    if via_prefix:
        if len(parts) < 2:
            raise ClientProtocolError(f"{path}: the API server cannot tell the resource after /{parts[0]}/")
        verb, parts = parts[0], parts[1:]
    elif method in METHOD_VERBS:
        verb = METHOD_VERBS[method]
    else:
        raise ClientProtocolError(f"method {method} is not one the Kubernetes API serves on resources")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES else ""
    values = _values(query)
    if not name and verb == "get":
        verb = "watch" if _watch(values.get("watch")) else "list"
        name = _name_from_fields(values)
    if not name and verb == "delete":
        verb = "deletecollection"
    if not via_prefix and connect(group, resource, subresource):
        verb = "create"
    selects = not via_prefix and verb in VERBS_WITH_SELECTORS
    return KubeRequest(
        verb, path, True, group, version, resource, subresource, namespace, name,
        label_selector=_first(values, "labelSelector") if selects else "",
        field_selector=_first(values, "fieldSelector") if selects else "",
        dry_run="All" in values.get("dryRun", ()),
        command=tuple(values.get("command", ())) if subresource == "exec" else (),
    )


def connect(group: str, resource: str, subresource: str) -> bool:
    """Is `resource/subresource` of API group `group` ("" the core group) a connect
    subresource (CONNECT_SUBRESOURCES), judged as `create` whatever the method?"""
    return group == "" and (resource, subresource) in CONNECT_SUBRESOURCES


def _check_path(path: str) -> None:
    """Only one trailing slash may follow the last segment; no empty or dot segment elsewhere."""
    segments = path[1:].removesuffix("/").split("/")
    if not path.startswith("/") or (path != "/" and any(s in ("", ".", "..") for s in segments)):
        raise ClientProtocolError(f"path {path!r}: empty or dot segments could read differently at the API server")


def _values(query: Pairs) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in query:
        values.setdefault(key, []).append(value)
    return values


def _first(values: dict[str, list[str]], key: str) -> str:
    found = values.get(key)
    return found[0] if found else ""


def _watch(values: list[str] | None) -> bool:
    """ListOptions.watch as apimachinery converts it (runtime.Convert_Slice_string_To_bool):
    absent, "0" or "false" in any case: no; anything else, the empty string too: yes."""
    if not values:
        return False
    if not values[0].isascii():
        raise ClientProtocolError(f"watch={values[0]!r}: only ASCII values are read alike by the API server")
    return values[0] != "0" and values[0].lower() != "false"


def _name_from_fields(values: dict[str, list[str]]) -> str:
    """The name a list or watch selects with `fieldSelector` (fields.Selector.RequiresExactMatch
    of metadata.name, when it is a valid path segment name); "" when the server reads none."""
    raw = values.get("fieldSelector")
    if not raw:
        return ""
    terms = parse_field_selector(raw[0])
    if terms is None:
        return ""
    name = next((value for field, op, value in terms if field == "metadata.name" and op != "!="), "")
    if not name or name in (".", "..") or "/" in name or "%" in name:
        return ""  # not a path segment name (content.IsPathSegmentName): the server ignores it
    for key in ("limit", "timeoutSeconds"):
        given = values.get(key)
        if given and not _go_int64(given[0]):
            raise ClientProtocolError(f"{key}={given[0]!r} is not an integer: the API server would not read the "
                                      f"name {name!r} from the field selector")
    return name


def _go_int64(text: str) -> bool:
    return _GO_INT64.fullmatch(text) is not None and -(2 ** 63) <= int(text) < 2 ** 63


def parse_field_selector(selector: str) -> list[tuple[str, str, str]] | None:
    """A field selector's terms `(field, operator, value)` in the order the server keeps them
    (sorted as written), values unescaped; None when the server would refuse it
    (apimachinery pkg/fields/selector.go parseSelector)."""
    terms: list[tuple[str, str, str]] = []
    for part in sorted(_split_terms(selector)):
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            return None
        field, op, value = split
        unescaped = _unescape_value(value)
        if unescaped is None:
            return None
        terms.append((field, op, unescaped))
    return terms


def _split_terms(selector: str) -> list[str]:
    if not selector:
        return []
    terms = []
    start = 0
    escaped = False
    for i, c in enumerate(selector):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ",":
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in _FIELD_OPERATORS:
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None


def _unescape_value(value: str) -> str | None:
    out = []
    escaped = False
    for c in value:
        if escaped:
            if c not in "\\,=":
                return None
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in ",=":
            return None
        else:
            out.append(c)
    return None if escaped else "".join(out)


def go_query(raw: str) -> Pairs:
    """The query string `raw` (after the `?`) as Go's net/url ParseQuery reads it, which is
    what the API server sees: pairs split on `&`, pairs holding `;` or a bad percent escape
    skipped, keys and values unescaped (`+` is a space). ClientProtocolError for decoded text
    that is not UTF-8."""
    pairs: list[tuple[str, str]] = []
    for piece in raw.split("&"):
        if not piece or ";" in piece:
            continue
        key, _, value = piece.partition("=")
        decoded_key, decoded_value = _query_unescape(key), _query_unescape(value)
        if decoded_key is not None and decoded_value is not None:
            pairs.append((decoded_key, decoded_value))
    return tuple(pairs)


def _query_unescape(text: str) -> str | None:
    data = text.encode("utf-8", "surrogateescape").replace(b"+", b" ")
    if data.count(b"%") != len(_PERCENT.findall(data)):
        return None
    try:
        return _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), data).decode("utf-8")
    except UnicodeDecodeError:
        raise ClientProtocolError(f"query text {text!r} is not UTF-8 once decoded") from None
