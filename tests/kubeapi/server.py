"""A STATEFUL TEST STAND-IN for the Kubernetes API server - not Kubernetes, and not for use
outside tests. No real kube-apiserver can be installed on the test hosts, so this one follows
the API conventions closely enough for kubectl and the python `kubernetes` client:

- discovery: /version, /api, /api/v1, /apis, /apis/<group>[/<version>] (APIResourceList with
  subresources pods/log, pods/exec, pods/attach, pods/portforward, */status) and /openapi/v2
  (JSON or protobuf, no definitions: see openapi.py)
- namespaces, pods, services, configmaps, secrets, events, deployments and replicasets with
  create / get / list / update / patch (JSON, merge, strategic merge) / delete / deletecollection,
  one resourceVersion counter, uid, creationTimestamp, generateName, dryRun, label and field
  selectors, limit/continue, Status errors (400, 401, 403, 404, 405, 406, 409, 415, 422)
- watch (`?watch=true` or `/watch/` paths): chunked newline-delimited JSON events (ADDED, MODIFIED,
  DELETED) from a resourceVersion or from the current state, then live until timeoutSeconds
- Table output for `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` (includeObject)
- pods/log (text; follow streams a new line every `log_interval` seconds), pods/exec over
  WebSocket (v4/v5.channel.k8s.io) or SPDY/3.1 running the fake commands of `pods.py`, and
  pods/attach (the same transports; prints the pod's log, then exits 0), pods/portforward over
  SPDY/3.1 (every port echoes)
- bearer-token authentication (401 Status without the token) and namespaces whose every call is
  403 Forbidden; every request (method, target, headers, body) is recorded for assertions

Reference: Kubernetes API concepts (kubernetes.io/docs/reference/using-api/api-concepts/).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import traceback
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from . import openapi, pods, resources, spdy, websocket
from .errors import JSON, ApiError, bad_request, forbidden
from .patch import apply_patch
from .resources import Kind
from .selection import field_matcher, label_matcher
from .store import Event, Store, Watcher
from .tables import table
from .wire import Reply, Request, Response, Streaming

USER = "stand-in-user"
VERSION = {"major": "1", "minor": "20", "gitVersion": "v1.20.2", "gitCommit": "stand-in", "gitTreeState": "clean",
           "buildDate": "2021-01-13T13:20:00Z", "goVersion": "go1.15.5", "compiler": "gc",
           "platform": "linux/amd64"}
NOT_ALLOWED = "the server does not allow this method on the requested resource"
WATCH_TIMEOUT = 1800.0
GZIP_MIN = 128 * 1024  # the API server gzips bodies from this size when asked (apiserver defaultGzipThresholdBytes)
RECORDED_BODY = 65536


def not_served() -> ApiError:
    """What the API server answers for a path no API group serves."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def json_response(code: int, body: JSON) -> Response:
    return Response(code, json.dumps(body).encode())


def _gzip_if_asked(request: Request, reply: Reply, threshold: int) -> Reply:
    """`reply` gzip-encoded when the client accepts gzip and the body is `threshold` bytes or more."""
    accepts = (request.header("accept-encoding") or "").lower()
    if not isinstance(reply, Response) or len(reply.body) < threshold or "gzip" not in accepts:
        return reply
    return Response(reply.status, gzip.compress(reply.body), reply.content_type,
                    [*reply.headers, ("content-encoding", "gzip")])


@dataclass(frozen=True)
class Target:
    """What a resource URL names (apiserver's RequestInfo, without the verb)."""

    kind: Kind
    namespace: str
    name: str
    subresource: str
    watch_path: bool


def _flag(request: Request, name: str) -> bool:
    return (request.param(name) or "").lower() in ("true", "1")


def _table_version(request: Request) -> str | None:
    """meta.k8s.io version of the Table the client accepts first, None for plain JSON."""
    for media in (request.header("accept") or "").split(","):
        params = dict(part.strip().partition("=")[::2] for part in media.split(";")[1:])
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v", "v1")
        if media.split(";")[0].strip() in ("application/json", "*/*", "application/*"):
            return None
    return None


def _accepts_json(request: Request) -> bool:
    accept = request.header("accept")
    if not accept:
        return True
    types = {media.split(";")[0].strip().lower() for media in accept.split(",")}
    return bool(types & {"application/json", "*/*", "application/*", "text/plain", "application/yaml"})


def _body(request: Request) -> Any:
    content_type = (request.header("content-type") or "application/json").split(";")[0].strip().lower()
    try:
        if content_type == "application/yaml":
            return yaml.safe_load(request.body)
        return json.loads(request.body)
    except (ValueError, yaml.YAMLError) as exc:
        raise bad_request(f"the request body could not be decoded as {content_type}: {exc}") from None


def _target(segments: list[str]) -> Target:
    if len(segments) >= 3 and segments[0] == "api":
        group, version, rest = "", segments[1], segments[2:]
    elif len(segments) >= 4 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        raise not_served()
    watch_path = rest[0] == "watch"
    rest = rest[1:] if watch_path else rest
    namespace = ""
    namespace_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if len(rest) >= 3 and rest[0] == "namespaces" and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise not_served()
    kind = resources.find(group, version, rest[0])
    name, sub = (rest[1] if len(rest) > 1 else ""), (rest[2] if len(rest) > 2 else "")
    if kind is None or (namespace and not kind.namespaced) or (kind.namespaced and name and not namespace):
        raise not_served()
    if sub and sub not in {entry[0] for entry in kind.subresources}:
        raise not_served()
    return Target(kind, namespace, name, sub, watch_path)


def _continue_token(revision: int, start: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": revision, "start": start}).encode()).decode()


def _continue_start(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["start"])
    except (ValueError, KeyError, TypeError):
        raise bad_request(f"invalid continue token {token!r}") from None


class KubeApiServer:
    """The request handler. `token`: the bearer token required (None: no authentication);
    `request_log`: JSONL file each request is appended to; `forbidden_namespaces`: every call in
    them is answered 403; `log_interval`: seconds between followed log lines; `gzip_min`: bytes from
    which a body is gzipped for a client that accepts it."""

    def __init__(self, token: str | None = None, request_log: Path | None = None,
                 forbidden_namespaces: tuple[str, ...] = (), log_interval: float = 0.5,
                 gzip_min: int = GZIP_MIN) -> None:
        self.store = Store()
        self.token, self.request_log, self.gzip_min = token, request_log, gzip_min
        self.forbidden_namespaces, self.log_interval = set(forbidden_namespaces), log_interval

    def _record(self, request: Request) -> None:
        entry = {"time": time.time(), "peer": request.peer, "method": request.method, "target": request.target,
                 "path": request.path, "query": request.query, "headers": request.headers,
                 "body": request.body[:RECORDED_BODY].decode("utf-8", "replace")}
        if self.request_log is not None:
            with open(self.request_log, "a") as log:
                log.write(json.dumps(entry) + "\n")

    async def handle(self, request: Request) -> Reply:
        self._record(request)
        return _gzip_if_asked(request, await self._answer(request), self.gzip_min)

    async def _answer(self, request: Request) -> Reply:
        try:
            if self.token is not None and request.header("authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if request.path == "/openapi/v2":
                return self._openapi(request)
            if not _accepts_json(request):
                raise ApiError(406, "NotAcceptable", "only the following media types are accepted: "
                               "application/json, application/yaml, application/json;as=Table;g=meta.k8s.io;v=v1")
            segments = [unquote(part) for part in request.path.split("/") if part]
            fixed = self._fixed(segments)
            if fixed is not None:
                return fixed
            return self._resource(request, _target(segments))
        except ApiError as exc:
            return json_response(exc.code, exc.status())
        except Exception as exc:  # a bug in the stand-in: say so in a Status, keep the traceback in its log
            traceback.print_exc()
            return json_response(500, ApiError(500, "InternalError", f"stand-in failure: {exc!r}").status())

    def _openapi(self, request: Request) -> Response:
        if openapi.PROTOBUF in (request.header("accept") or ""):
            return Response(200, openapi.document_protobuf(), "application/octet-stream")
        return json_response(200, openapi.document_json())

    def _fixed(self, segments: list[str]) -> Reply | None:
        """Discovery and health documents; None for a resource path."""
        path = "/" + "/".join(segments)
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        documents: dict[str, JSON] = {
            "/": {"paths": ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/healthz", "/version"]},
            "/version": VERSION,
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/apis": resources.group_list()}
        if path in documents:
            return json_response(200, documents[path])
        if segments[:1] == ["apis"] and len(segments) == 2:
            document = resources.group(segments[1])
            return json_response(200, document) if document else None
        if (segments[:1] == ["api"] and len(segments) == 2) or (segments[:1] == ["apis"] and len(segments) == 3):
            group, version = ("", segments[1]) if segments[0] == "api" else (segments[1], segments[2])
            listing = resources.resource_list(group, version)
            return json_response(200, listing) if listing else None
        return None

    def _authorize(self, target: Target, verb: str) -> None:
        namespace = target.namespace or (target.name if target.kind.resource == "namespaces" else "")
        if namespace in self.forbidden_namespaces:
            raise forbidden(USER, verb, target.kind.resource, target.kind.group, namespace)

    def _resource(self, request: Request, target: Target) -> Reply:
        method, kind = request.method, target.kind
        if target.subresource == "log" and method == "GET":
            self._authorize(target, "get")
            return self._log(request, target)
        if target.subresource == "portforward" and method in ("GET", "POST"):
            self._authorize(target, "create")
            self.store.get(target.kind, target.namespace, target.name)
            if "spdy/3.1" not in (request.header("upgrade") or "").lower():
                raise bad_request("this stand-in forwards ports over SPDY/3.1 only: Upgrade request required")
            return spdy.port_forward(request)
        if target.subresource in ("exec", "attach") and method in ("GET", "POST"):
            self._authorize(target, "create")
            return self._exec(request, target)
        if target.subresource == "status":
            return self._status(request, target)
        if method == "GET":
            if target.name and not target.watch_path:
                self._authorize(target, "get")
                return self._single(request, target, self.store.get(kind, target.namespace, target.name))
            watch = target.watch_path or _flag(request, "watch")
            self._authorize(target, "watch" if watch else "list")
            return self._watch(request, target) if watch else self._list(request, target)
        handlers = {"POST": self._create, "PUT": self._update, "PATCH": self._patch, "DELETE": self._delete}
        if method not in handlers or (method == "POST" and target.name) or (method in ("PUT", "PATCH") and
                                                                            not target.name):
            raise ApiError(405, "MethodNotAllowed", NOT_ALLOWED)
        return handlers[method](request, target)

    def _single(self, request: Request, target: Target, obj: JSON, code: int = 200) -> Response:
        version = _table_version(request)
        if version is None:
            return json_response(code, obj)
        include = request.param("includeObject") or "Metadata"
        return json_response(code, table(target.kind, [obj], include, version,
                                         {"resourceVersion": obj["metadata"].get("resourceVersion", "")}))

    def _matching(self, request: Request, target: Target) -> Any:
        labels, fields = label_matcher(request.param("labelSelector")), field_matcher(request.param("fieldSelector"))
        name = target.name
        return lambda obj: labels(obj) and fields(obj) and (not name or obj["metadata"]["name"] == name)

    def _list(self, request: Request, target: Target) -> Response:
        items = self.store.select(target.kind, target.namespace, self._matching(request, target))
        meta: JSON = {"resourceVersion": str(self.store.revision)}
        limit, start = int(request.param("limit") or 0), _continue_start(request.param("continue"))
        if limit > 0:
            page = items[start:start + limit]
            if start + limit < len(items):
                meta["continue"] = _continue_token(self.store.revision, start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        version = _table_version(request)
        if version is not None:
            return json_response(200, table(target.kind, items, request.param("includeObject") or "Metadata",
                                            version, meta))
        return json_response(200, {"kind": f"{target.kind.kind}List", "apiVersion": target.kind.api_version,
                                   "metadata": meta, "items": items})

    def _event_line(self, request: Request, event: Event) -> bytes:
        obj: JSON = event.object
        version = _table_version(request)
        if version is not None:
            obj = table(event.kind, [obj], request.param("includeObject") or "Metadata", version,
                        {"resourceVersion": obj["metadata"]["resourceVersion"]})
        return json.dumps({"type": event.type, "object": obj}).encode() + b"\n"

    def _watch(self, request: Request, target: Target) -> Streaming:
        accepts = self._matching(request, target)
        since = request.param("resourceVersion") or "0"
        if not since.isdigit():
            raise bad_request(f"invalid resourceVersion {since!r}")
        timeout = float(request.param("timeoutSeconds") or WATCH_TIMEOUT)
        watcher = Watcher(target.kind, target.namespace, accepts)
        if since == "0":
            initial = [Event(self.store.revision, target.kind, "ADDED", obj)
                       for obj in self.store.select(target.kind, target.namespace, accepts)]
        else:
            initial = [event for event in self.store.events_since(target.kind, target.namespace, int(since))
                       if accepts(event.object)]
        self.store.watchers.add(watcher)

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                for event in initial:
                    yield self._event_line(request, event)
                deadline = asyncio.get_running_loop().time() + timeout
                while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                    try:
                        event = await asyncio.wait_for(watcher.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                    yield self._event_line(request, event)
            finally:
                self.store.watchers.discard(watcher)
        return Streaming(200, chunks())

    def _create(self, request: Request, target: Target) -> Response:
        self._authorize(target, "create")
        obj = self.store.create(target.kind, target.namespace, _body(request), bool(request.param("dryRun")))
        return self._single(request, target, obj, 201)

    def _update(self, request: Request, target: Target) -> Response:
        self._authorize(target, "update")
        obj = self.store.update(target.kind, target.namespace, target.name, _body(request),
                                bool(request.param("dryRun")))
        return self._single(request, target, obj)

    def _patch(self, request: Request, target: Target) -> Response:
        self._authorize(target, "patch")
        old = self.store.get(target.kind, target.namespace, target.name)
        patched = apply_patch(request.header("content-type") or "", old, _body(request))
        obj = self.store.update(target.kind, target.namespace, target.name, patched, bool(request.param("dryRun")))
        return self._single(request, target, obj)

    def _delete(self, request: Request, target: Target) -> Response:
        kind, dry_run = target.kind, bool(request.param("dryRun"))
        self._authorize(target, "delete" if target.name else "deletecollection")
        if not target.name:
            gone = [self.store.delete(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], dry_run)
                    for obj in self.store.select(kind, target.namespace, self._matching(request, target))]
            return json_response(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                       "metadata": {"resourceVersion": str(self.store.revision)}, "items": gone})
        obj = self.store.delete(kind, target.namespace, target.name, dry_run)
        if kind.resource == "pods":
            return json_response(200, obj)
        details = {"name": target.name, "kind": kind.resource, "uid": obj["metadata"]["uid"],
                   **({"group": kind.group} if kind.group else {})}
        return json_response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": details})

    def _status(self, request: Request, target: Target) -> Response:
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(request.method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", NOT_ALLOWED)
        self._authorize(target, verb)
        old = self.store.get(target.kind, target.namespace, target.name)
        if verb == "get":
            return self._single(request, target, old)
        body = _body(request)
        new = body if verb == "update" else apply_patch(request.header("content-type") or "", old, body)
        obj = self.store.replace_status(target.kind, target.namespace, target.name,
                                        new.get("status") if isinstance(new, dict) else None)
        return self._single(request, target, obj)

    def _log(self, request: Request, target: Target) -> Reply:
        pod = self.store.get(target.kind, target.namespace, target.name)
        pods.container_name(pod, request.param("container"))
        tail = request.param("tailLines")
        key, uid = (target.kind.resource, target.namespace, target.name), pod["metadata"]["uid"]

        def alive() -> bool:
            current = self.store.objects.get(key)
            return current is not None and current["metadata"]["uid"] == uid

        lines = pods.log_stream(pod, int(tail) if tail else None, _flag(request, "timestamps"),
                                _flag(request, "follow"), self.log_interval, alive)
        return Streaming(200, lines, "text/plain")

    def _exec(self, request: Request, target: Target) -> Reply:
        """pods/exec runs the fake command; pods/attach streams the main process's output - the
        pod's log - and then ends as if the process exited 0."""
        pod = self.store.get(target.kind, target.namespace, target.name)
        container = pods.container_name(pod, request.param("container"))
        command = request.query.get("command", [])
        if target.subresource == "exec" and not command:
            raise bad_request("you must specify at least 1 command")

        async def run(io: pods.ExecIO) -> JSON:
            if target.subresource == "attach":
                await io.stdout("".join(f"{line}\n" for line in pods.log_lines(pod)).encode())
                return pods.exit_status(0, [])
            return pods.exit_status(await pods.run(pod, container, command, io), command)

        upgrade = (request.header("upgrade") or "").lower()
        if "websocket" in upgrade:
            return websocket.upgrade(request, run, _flag(request, "stdin"))
        if "spdy/3.1" in upgrade:
            return spdy.upgrade(request, run, _flag(request, "stdin"))
        raise bad_request("Upgrade request required")
