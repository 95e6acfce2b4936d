"""kubernetes: every request to a Kubernetes API server is judged by the attributes the API
server derives from it (interceptor.policy.kube_request; rules in interceptor.policy.kube_rules),
Secret values and issued tokens are masked in responses unless a rule reveals them; its handler is
interceptor.handlers.http.kubernetes (the HTTP session with the Kubernetes dialect)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interceptor.operations import KubeRequest
from interceptor.policy.kube_rules import OPERATION_KEY, judge_kube, parse_kube_case, parse_kube_match
from interceptor.protocols.http import http_options_schema
from interceptor.protocols.spec import ProtocolSpec, Schema

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog

_STRINGS = {"$ref": "#/$defs/strings"}
_STRINGS_OR_EMPTY = {"type": "array", "items": {"type": "string"}, "minItems": 1}

MATCH_SCHEMA: Schema = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": (
        "Matches Kubernetes API requests by the attributes the API server derives from the method, path and query "
        "(its RequestInfo, what RBAC authorizes), in the shape of an RBAC rule; every field is a list of globs. "
        "Allow and approve rules must cover the request as RBAC does (`pods` is not `pods/log`; `names` never "
        "covers a list or a create; `namespaces` never covers a cluster-wide request unless it lists `\"\"`). A deny "
        "rule (and a mask rule) matches when the request could touch what it names: `pods` also matches every "
        "subresource of pods, and a request without a name or namespace matches any `names` or `namespaces`. A "
        "rule without `resources` and `non_resource_urls` matches every resource request. Discovery reads (GET "
        "/api, /apis, /version, /openapi and below) are allowed by default (rule builtin-kubernetes-discovery) "
        "unless a rule denies them. Credentials are masked in every response (rule kubernetes-secret-values) "
        "unless the rule that allowed the request says `reveal_secrets: true`: Secret values (`data`, "
        "`stringData` and the kubectl.kubernetes.io/last-applied-configuration annotation) and the token a "
        "TokenRequest (`serviceaccounts/token`) answers with (`status.token`)."),
    "properties": {
        "verbs": {**_STRINGS, "description": (
            "Kubernetes verbs: `get list watch create update patch delete deletecollection`, `proxy` (the "
            "deprecated /proxy/ prefix), or `*`. A connect subresource (`pods/exec`, `pods/attach`, "
            "`pods/portforward`, `pods/proxy`, `services/proxy`, `nodes/proxy`) is `create` whatever the method "
            "(SPDY's POST and WebSocket's GET alike, as kube-apiserver 1.31 and later authorize exec, attach "
            "and portforward): allowing one takes `create`, and a deny rule naming any verb the server may "
            "authorize it by (`get`, `create`; for proxy also `update`, `patch`, `delete`) matches it. For "
            "non-resource URLs, the lower-cased HTTP method (`get`, `post`, ...).")},
        "api_groups": {**_STRINGS_OR_EMPTY, "description": (
            "API groups: `\"\"` is the core group (/api/v1), `apps`, `batch`, `*`, ...")},
        "resources": {**_STRINGS, "description": (
            "Resources, lower-case plural as in the URL (`pods`, `deployments`), or `resource/subresource` "
            "(`pods/log`, `pods/exec`, `deployments/scale`, `pods/*`); `*` is every resource and subresource.")},
        "names": {**_STRINGS, "description": (
            "Object names (from the path, or a list's or watch's `fieldSelector=metadata.name=...`).")},
        "namespaces": {**_STRINGS_OR_EMPTY, "description": (
            "Namespaces (`prod`, `team-*`); `\"\"` is no namespace: cluster-scoped resources and lists across "
            "every namespace. A namespace object's own requests (/api/v1/namespaces/prod) are in its namespace.")},
        "non_resource_urls": {**_STRINGS, "description": (
            "Paths of non-resource requests (`/version`, `/healthz*`, `/metrics`); a rule with only these is not "
            "about resource requests. A deny (or mask) rule matches the path with and without one trailing "
            "slash, as the server may route both alike (`/version` denies `/version/`); an allow or approve "
            "rule covers the path as written, as RBAC does (`/version` allows `/version` only).")},
        "reveal_secrets": {"type": "boolean", "description": (
            "`true` on an allow or approve rule: the Secret values and TokenRequest tokens of the responses it "
            "allows are not masked. Mask rules still apply.")},
    },
}


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> KubeRequest:
    return parse_kube_case(case[OPERATION_KEY])


SPEC: ProtocolSpec[KubeRequest] = ProtocolSpec(
    name="kubernetes",
    operation_key=OPERATION_KEY,
    operation=KubeRequest,
    description="Available: Kubernetes API requests judged by verb, API group, resource and subresource, namespace "
                "and name as the API server derives them (exec, attach, portforward, log included), approvals, "
                "Secret values masked in every JSON response shape unless a rule reveals them, refusals as "
                "Kubernetes Status objects; tested with kubectl and the python client.",
    handler="interceptor.handlers.http.kubernetes",
    match_schema=MATCH_SCHEMA,
    options_schema=http_options_schema("Settings of the kubernetes handler (the HTTP handler's)."),
    parse_match=parse_kube_match,
    judge=judge_kube,
    parse_case=_parse_case,
    masks=True,
)
