"""Judge a KubeRequest by the rules about Kubernetes (sans-IO), in the shape of an RBAC
PolicyRule (k8s.io/api/rbac/v1): a rule's `kubernetes:` block names verbs, API groups,
resources (`resource` or `resource/subresource`), object names, namespaces and non-resource
URLs, all globs (fnmatch: `*` matches `/` too, `""` is the core group or no namespace).

- A resource request is matched by `verbs`, `api_groups`, `resources`, `names`, `namespaces`;
  a rule with `non_resource_urls` and no `resources` is not about resource requests.
- A non-resource request (`/version`, `/healthz`, discovery) is matched only by a rule with
  `non_resource_urls` (its path) and `verbs` (the lower-cased method). The server's routers
  may serve `/version/` as `/version` (go-restful web services), so a deny or mask rule
  matches the path with and without one trailing slash (a deny on `/version` holds for
  `/version/`, one on `/healthz/*` for `/healthz`); an allow or approve rule covers the path
  as written, as RBAC does (system:discovery lists `/version` and `/version/`).
- A connect subresource (pods/exec, pods/attach, pods/portforward, pods/proxy, services/proxy,
  nodes/proxy) is requested with verb `create` whatever the method (interceptor.policy.
  kube_request): an allow or approve rule needs `create`; a deny or mask rule matches when its
  `verbs` name any verb the server may authorize the connect by (`get` or `create`, and for
  proxy also `update`, `patch`, `delete`).
- Allow and approve rules must cover the request, as RBAC does: `pods` is not `pods/log`;
  `names` never covers a request without a name (a list, a create); `namespaces` never covers
  one without a namespace (a cluster-scoped resource, a list across namespaces) unless it
  lists `""` or a glob matching it.
- Deny and mask rules match when the request falls in them, could it touch what they name:
  `pods` also matches `pods/exec` and every other subresource of pods; a request without a
  name matches any `names` (a list, watch or deletecollection returns or removes them all, a
  create names its object in the body); a request without a namespace matches any
  `namespaces` (a list across namespaces holds theirs).

Precedence is interceptor.policy.judgement's: deny, then approve, then allow, else default
deny; discovery reads (GET of `/api`, `/apis`, `/version`, `/openapi` and below, and the older
`/swagger*` OpenAPI documents) are allowed by default (rule builtin-kubernetes-discovery)
unless a rule denies them, as RBAC's system:discovery role does for every authenticated user.

Credentials are masked in every response (`SECRET_RULE`), unless the allow or approve rule
that decided says `reveal_secrets: true`: in a request about `secrets`, every `data` (base64),
`stringData` and last-applied annotation (which holds a Secret's whole previous manifest); in
any other, those of every object whose `kind` is `Secret`, however deep; and in a TokenRequest
(`serviceaccounts/token`, k8s.io/api authentication/v1 TokenRequestStatus), `status.token`,
a bearer token for the service account. These are the answers that carry a credential by the
API's design; a CertificateSigningRequest's `status.certificate` is public, and what users put
in ConfigMaps, annotations or a pod's environment is theirs to mask with mask rules. Not in
the responses of `log`, `exec`, `attach`, `portforward` and `proxy` (streams and bytes, not API
objects).
Mask rules about the request add their `paths` (JSON paths relative to each object the
response carries: interceptor.masking.json_paths; the Kubernetes dialect roots them at the
document, each list item, each Table row's object and each watch event's object) and
`classifiers`; a rule with paths masks the last-applied annotation too (a copy of the object's
values as JSON text). A mask rule reaches a `log`, `exec`, `attach`, `portforward` or `proxy` request
only when its `resources` name the subresource (`pods/log`): a pod log is masked line by line by
the rule's classifiers; what cannot be masked (paths in a log, an exec's byte stream) is
withheld by the dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from interceptor.decision import Decision, MaskSpec, Verdict
from interceptor.operations import KubeRequest, Request
from interceptor.policy.judgement import DEFAULT_DENY, Judgement, pick
from interceptor.policy.kube_request import CONNECT_SUBRESOURCES, connect, go_query, kube_request
from interceptor.policy.learn import UNLEARNED_NOTE, is_learning, learning_rule
from interceptor.policy.model import Rule

if TYPE_CHECKING:  # the protocol registry imports this module
    from interceptor.protocols.spec import Context, Problem

OPERATION_KEY = "kubernetes"  # a rule's `kubernetes:` block, a test case's `kubernetes:` request
SECRET_RULE = "kubernetes-secret-values"
DISCOVERY_RULE = "builtin-kubernetes-discovery"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# What a request about secrets may return them in: every shape (object, list, Table, watch)
SECRETS_REQUEST_PATHS = ("**.data|base64", "**.stringData", f'**.metadata.annotations["{LAST_APPLIED}"]')
# Any other response: the Secrets it carries, by kind, wherever they sit
SECRET_KIND_PATHS = ('**[?kind=="Secret"].data|base64', '**[?kind=="Secret"].stringData',
                     f'**[?kind=="Secret"].metadata.annotations["{LAST_APPLIED}"]')
# A TokenRequest's answer: the service account token it issued
TOKEN_REQUEST_PATHS = (*SECRET_KIND_PATHS, "status.token")
# Subresources and verbs whose responses are streams or another server's bytes, not API objects
RAW_SUBRESOURCES = frozenset({"log", "exec", "attach", "portforward", "proxy"})
# RBAC's system:discovery non-resource URLs, and the OpenAPI documents older clients (kubectl 1.20's
# apply and explain) fetch
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/version", "/version/", "/openapi", "/openapi/*",
                   "/swagger-2.0.0.pb-v1", "/swagger.json", "/swaggerapi", "/swaggerapi/*")
CASE_ATTRIBUTES = ("verb", "path", "api_group", "api_version", "resource", "subresource", "namespace", "name",
                   "label_selector", "field_selector", "dry_run", "command")


@dataclass(frozen=True, slots=True)
class KubeMatch:
    """A rule's `kubernetes:` block; every given field must hold (see the module's doc)."""

    verbs: tuple[str, ...] | None = None
    api_groups: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None  # `resource` or `resource/subresource` globs
    names: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    non_resource_urls: tuple[str, ...] | None = None
    reveal_secrets: bool = False


def parse_kube_match(raw: Mapping[str, Any], problem: Problem) -> KubeMatch:
    """A schema-valid `kubernetes:` block as a KubeMatch; a resource pattern of more than
    `resource/subresource`, a non-resource URL that is not a path, and a block with
    `non_resource_urls` and fields only resource requests have, are reported to `problem`."""
    for i, pattern in enumerate(raw.get("resources", ())):
        if pattern.count("/") > 1 or any(not part for part in pattern.split("/")):
            problem(("resources", i), f"resource pattern {pattern!r}: expected resource or resource/subresource "
                    "(globs allowed, e.g. pods, pods/log, deployments/*)")
    for i, pattern in enumerate(raw.get("non_resource_urls", ())):
        if not pattern.startswith(("/", "*")):
            problem(("non_resource_urls", i), f"non-resource URL {pattern!r}: expected a path glob such as /healthz*")
    if "non_resource_urls" in raw and "resources" not in raw:
        for key in ("api_groups", "names", "namespaces"):
            if key in raw:
                problem((key,), f"{key} is about resource requests; this rule has non_resource_urls only")
    def listed(key: str) -> tuple[str, ...] | None:
        return tuple(raw[key]) if key in raw else None

    return KubeMatch(listed("verbs"), listed("api_groups"), listed("resources"), listed("names"),
                     listed("namespaces"), listed("non_resource_urls"), bool(raw.get("reveal_secrets", False)))


def kube_match(rule: Rule) -> KubeMatch | None:
    """The rule's `kubernetes:` block; None for a rule about any operation."""
    return rule.match if isinstance(rule.match, KubeMatch) else None


def judge_kube(context: Context, request: Request, operation: KubeRequest) -> Decision:
    """The Decision for one Kubernetes request: the precedence of interceptor.policy.judgement,
    the discovery default, the Secret masks unless the deciding rule reveals them, and the
    masks of the mask rules the request falls in. Never raises."""
    rules = context.rules(request, OPERATION_KEY)
    deciding = [r for r in rules if r.effect != "mask" and matches(r, operation)]
    judgement = pick(deciding, f"no rule allows {describe(operation)}" + (
        UNLEARNED_NOTE if learning_rule(rules) is not None and never_learned(operation) else ""))
    if judgement.rule == DEFAULT_DENY and _discovery(operation):
        judgement = Judgement(Verdict.ALLOW, DISCOVERY_RULE, "discovery reads are allowed by default")
    if judgement.verdict is Verdict.DENY:
        return judgement.decision()
    masks: list[MaskSpec] = []
    decided = next((r for r in deciding if r.name == judgement.rule), None)
    match = kube_match(decided) if decided is not None else None
    if operation.resource_request and not (match is not None and match.reveal_secrets) and not _raw(operation):
        masks.append(MaskSpec(paths=credential_paths(operation), rule=SECRET_RULE))
    for rule in rules:
        if rule.effect == "mask" and rule.mask is not None and (rule.mask.paths or rule.mask.classifiers) \
                and matches(rule, operation) and (not _raw(operation) or _names_subresource(rule, operation)):
            masks.append(MaskSpec(classifiers=rule.mask.classifiers, style=rule.mask.style, rule=rule.name,
                                  paths=_with_last_applied(rule.mask.paths)))
    return judgement.decision(tuple(masks))


def _with_last_applied(paths: tuple[str, ...]) -> tuple[str, ...]:
    """A mask rule's paths, and with them the last-applied annotation whole: kubectl apply
    keeps the object's previous manifest there as JSON text, a copy of the values the paths
    mask (`data.*` of a ConfigMap) that no path into the object reaches."""
    return (*paths, f'metadata.annotations["{LAST_APPLIED}"]') if paths else ()


def credential_paths(operation: KubeRequest) -> tuple[str, ...]:
    """The JSON paths of the credentials a response to the resource request may carry (see
    the module's doc)."""
    if operation.resource == "secrets":
        return SECRETS_REQUEST_PATHS
    if (operation.resource, operation.subresource) == ("serviceaccounts", "token"):
        return TOKEN_REQUEST_PATHS
    return SECRET_KIND_PATHS


def matches(rule: Rule, operation: KubeRequest) -> bool:
    """Does the rule cover the request (allow, approve) or does the request fall in it (deny,
    mask)? A rule without a `kubernetes:` block is about every request."""
    match = kube_match(rule)
    if match is None:
        return rule.operation is None and not (is_learning(rule) and never_learned(operation))
    loose = rule.effect in ("deny", "mask")
    if not _verbs(match.verbs, operation, loose):
        return False
    if not operation.resource_request:
        return match.non_resource_urls is not None and _urls(match.non_resource_urls, operation.path, loose)
    if match.non_resource_urls is not None and match.resources is None:
        return False
    return (_globs(match.api_groups, operation.api_group)
            and _resource(match.resources, operation, loose)
            and _unless_absent(match.names, operation.name, loose)
            and _unless_absent(match.namespaces, operation.namespace, loose))


# What changes permissions (never learned, never_learned): RBAC objects and admission control
# (webhooks that see and rewrite every request, policies that refuse) written, and the verbs
# that act as another user, grant a role or write one beyond the writer's own rights
RBAC_GROUP = "rbac.authorization.k8s.io"
ADMISSION_GROUP = "admissionregistration.k8s.io"
READ_VERBS = frozenset({"get", "list", "watch"})
PERMISSION_VERBS = frozenset({"impersonate", "bind", "escalate", "approve", "sign"})
# Subresources whose writes issue a credential or run code in a running pod: a certificate
# signing request approved or its certificate written, an ephemeral container (what
# `kubectl debug` runs, as exec does)
UNLEARNED_SUBRESOURCES = frozenset({("certificatesigningrequests", "approval"), ("certificatesigningrequests", "status"),
                                    ("pods", "ephemeralcontainers")})
HOST_PATHS = ("/logs", "/logs/*", "/debug", "/debug/*")  # non-resource URLs of the API server's host


def never_learned(operation: KubeRequest) -> bool:
    """What the learning rule (interceptor.policy.learn) does not cover, as a rule naming it
    alone does: running code in a pod or reaching through the API server (exec, attach,
    portforward, proxy, an ephemeral container written), issuing a credential (a certificate
    approved or signed), and changing permissions (an RBAC or admission object written,
    impersonate, bind, escalate); and the API server's own host
    files and memory (`/logs`: its /var/log; `/debug`: profiles, heap dumps holding tokens)."""
    if not operation.resource_request:
        return _urls(HOST_PATHS, operation.path, loose=True)
    return (connect(operation.api_group, operation.resource, operation.subresource) or operation.verb == "proxy"
            or operation.verb in PERMISSION_VERBS
            or (operation.api_group in (RBAC_GROUP, ADMISSION_GROUP) and operation.verb not in READ_VERBS)
            or ((operation.resource, operation.subresource) in UNLEARNED_SUBRESOURCES
                and operation.verb not in READ_VERBS))


def _globs(patterns: tuple[str, ...] | None, value: str) -> bool:
    return patterns is None or any(fnmatchcase(value, p) for p in patterns)


def _verbs(patterns: tuple[str, ...] | None, operation: KubeRequest, loose: bool) -> bool:
    """A loose rule takes a connect request as any verb the server may authorize it by."""
    verbs: tuple[str, ...] = (operation.verb,)
    if loose and operation.resource_request and connect(operation.api_group, operation.resource,
                                                        operation.subresource):
        verbs = CONNECT_SUBRESOURCES[operation.resource, operation.subresource]
    return any(_globs(patterns, verb) for verb in verbs)


def _urls(patterns: tuple[str, ...], path: str, loose: bool) -> bool:
    """Non-resource URL globs against `path`; for a loose rule, against it with and without
    one trailing slash too (`/` stays `/`)."""
    spellings = {path}
    if loose and path != "/":
        bare = path.removesuffix("/")
        spellings |= {bare, f"{bare}/"}
    return any(fnmatchcase(spelling, p) for p in patterns for spelling in spellings)


def _resource(patterns: tuple[str, ...] | None, operation: KubeRequest, loose: bool) -> bool:
    if patterns is None:
        return True
    resource, subresource = operation.resource, operation.subresource
    target = f"{resource}/{subresource}" if subresource else resource
    if any(fnmatchcase(target, p) for p in patterns):
        return True
    return loose and bool(subresource) and any("/" not in p and fnmatchcase(resource, p) for p in patterns)


def _unless_absent(patterns: tuple[str, ...] | None, value: str, loose: bool) -> bool:
    """`names`, `namespaces`: a loose rule takes a request without one as touching any."""
    if patterns is None or (loose and not value):
        return True
    return any(fnmatchcase(value, p) for p in patterns)


def _names_subresource(rule: Rule, operation: KubeRequest) -> bool:
    """A mask rule reaches a log, exec, attach, portforward or proxy request (a stream, not an
    API object) only when its `resources` name that subresource (`pods/log`, `pods/*`), or
    when it has no `kubernetes:` block (it is about every request): a mask on `pods` is about
    pod objects and leaves `kubectl logs` and `exec` usable."""
    match = kube_match(rule)
    if match is None:
        return True
    target = f"{operation.resource}/{operation.subresource}"
    return match.resources is not None and any(
        "/" in pattern and fnmatchcase(target, pattern) for pattern in match.resources)


def _discovery(operation: KubeRequest) -> bool:
    return not operation.resource_request and operation.verb in ("get", "head") and _urls(
        DISCOVERY_PATHS, operation.path, loose=False)


def _raw(operation: KubeRequest) -> bool:
    return operation.verb == "proxy" or operation.subresource in RAW_SUBRESOURCES


def describe(operation: KubeRequest) -> str:
    """The request as an approver and a refusal say it: `get secrets "db" in namespace
    "prod"`, `create pods/exec "web" in namespace "dev"`, `list nodes`, `get /version`."""
    if not operation.resource_request:
        return f"{operation.verb} {operation.path}"
    what = f"{operation.resource}/{operation.subresource}" if operation.subresource else operation.resource
    if operation.api_group:
        what += f".{operation.api_group}"
    text = f"{operation.verb} {what}"
    if operation.name:
        text += f' "{operation.name}"'
    if operation.namespace:
        text += f' in namespace "{operation.namespace}"'
    return text


def parse_kube_case(block: Mapping[str, Any]) -> KubeRequest:
    """A `policy test` case's `kubernetes:` request: `{method: GET, path: /api/v1/namespaces/
    prod/secrets/x?watch=1}` derived as the API server derives it, or the attributes
    themselves (`{verb: get, resource: secrets, namespace: prod, name: x, api_group: ""}`;
    without `resource`, a non-resource request of `path`; a connect subresource's verb is
    `create`). ValueError or TypeError for a bad case (interceptor.errors.ClientProtocolError is a ValueError)."""
    if not isinstance(block, Mapping):
        raise TypeError("kubernetes: expected {method, path} or the request's attributes {verb, resource, ...}")
    if "method" in block:
        unknown = sorted(set(block) - {"method", "path"})
        if unknown or not isinstance(block.get("path"), str) or not isinstance(block["method"], str):
            raise ValueError("kubernetes: a derived request is {method: GET, path: /api/v1/...?query}")
        path, _, query = block["path"].partition("?")
        return kube_request(block["method"].upper(), path, go_query(query))
    unknown = sorted(set(block) - set(CASE_ATTRIBUTES))
    if unknown or "verb" not in block:
        raise ValueError(f"kubernetes: unknown key(s) {', '.join(unknown) or 'none'}; expected {{method, path}} or "
                         f"verb and any of {', '.join(CASE_ATTRIBUTES[1:])}")
    fields = {k: block[k] for k in CASE_ATTRIBUTES if k in block and k != "command"}
    if "resource" not in block and "path" not in block:
        raise ValueError("kubernetes: a non-resource request needs its path")
    for key, value in fields.items():
        if not isinstance(value, bool if key == "dry_run" else str):
            raise TypeError(f"kubernetes: {key} must be {'true or false' if key == 'dry_run' else 'a string'}")
    command = block.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise TypeError("kubernetes: command must be a list of strings")
    fields.setdefault("path", "")
    operation = KubeRequest(**fields, resource_request="resource" in block, command=tuple(command))
    if operation.resource_request and operation.verb != "create" and connect(
            operation.api_group, operation.resource, operation.subresource):
        raise ValueError(f"kubernetes: {operation.resource}/{operation.subresource} is a connect subresource, "
                         "requested with verb create whatever the method")
    return operation
