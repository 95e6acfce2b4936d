"""The stand-in's state: objects by (resource, namespace, name), one resourceVersion counter for
all of them (as etcd's revision), and the event history watches replay from (Kubernetes API
concepts: "Resource versions", "Efficient detection of changes")."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import datetime
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import JSON, ApiError, already_exists, bad_request, conflict, invalid, not_found
from .resources import Kind, find

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
NAME_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
             "must start and end with an alphanumeric character")
LABEL_RULE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
              "and end with an alphanumeric character")
Key = tuple[str, str, str]


def now() -> str:
    """RFC 3339 in UTC at second precision, as metav1.Time marshals."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """A watch event: type ADDED / MODIFIED / DELETED, the object after the change."""

    resource_version: int
    kind: Kind
    type: str
    object: JSON


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str
    accepts: Callable[[JSON], bool]
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        meta = event.object["metadata"]
        if event.kind == self.kind and self.namespace in ("", meta.get("namespace", "")) and self.accepts(event.object):
            self.queue.put_nowait(event)


def _validate_name(kind: Kind, name: str) -> None:
    label_only = kind.resource == "namespaces"
    if not name:
        raise invalid(kind.kind, name, "metadata.name", name, "name or generateName is required")
    if len(name) > (63 if label_only else 253) or not (LABEL if label_only else NAME).match(name):
        raise invalid(kind.kind, name, "metadata.name", name, LABEL_RULE if label_only else NAME_RULE)


def _pod_status(obj: JSON, old: JSON | None) -> JSON:
    if old is not None:
        return dict(old.get("status", {}))
    containers = obj.get("spec", {}).get("containers") or []
    started = now()
    return {"phase": "Running", "hostIP": "10.96.0.10", "podIP": f"10.244.0.{len(containers) + 10}",
            "startTime": started, "qosClass": "BestEffort",
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": started}
                           for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": c.get("name", ""), "image": c.get("image", ""), "ready": True,
                                   "started": True, "restartCount": 0, "imageID": "", "containerID": "",
                                   "state": {"running": {"startedAt": started}}} for c in containers]}


def _secret(obj: JSON) -> None:
    """stringData is write-only: folded into data as base64, as the API server does."""
    data = dict(obj.get("data") or {})
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error:
            raise invalid("Secret", obj["metadata"]["name"], f"data[{key}]", "<secret>",
                          "illegal base64 data") from None
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    obj["data"] = data
    obj.setdefault("type", "Opaque")


def _default_ports(pod_spec: JSON) -> None:
    for container in pod_spec.get("containers") or []:
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")


def _defaults(kind: Kind, obj: JSON, old: JSON | None) -> None:
    if kind.resource == "pods":
        _default_ports(obj.setdefault("spec", {}))
        obj["status"] = _pod_status(obj, old)
        obj.setdefault("spec", {}).setdefault("nodeName", "stand-in-node")
    elif kind.resource == "secrets":
        _secret(obj)
    elif kind.resource == "namespaces":
        obj["status"] = {"phase": "Active"}
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    elif kind.resource == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", f"10.96.{len(obj['metadata']['name'])}.{len(spec.get('ports') or []) + 10}")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
    elif kind.resource in ("deployments", "replicasets"):
        _default_ports(obj.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {}))
        replicas = obj["spec"].setdefault("replicas", 1)
        obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                         "readyReplicas": replicas, "availableReplicas": replicas, "updatedReplicas": replicas}


class Store:
    """Every object of every kind. Calls raise ApiError with the API server's Status for failures."""

    def __init__(self) -> None:
        self.objects: dict[Key, JSON] = {}
        self.revision = 0
        self.history: list[Event] = []
        self.watchers: set[Watcher] = set()
        for name in ("default", "kube-system", "kube-public"):
            self.create(_kind("namespaces"), "", {"metadata": {"name": name}})

    def _record(self, kind: Kind, type_: str, obj: JSON) -> None:
        event = Event(self.revision, kind, type_, copy.deepcopy(obj))
        self.history.append(event)
        for watcher in list(self.watchers):
            watcher.offer(event)

    def _bump(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _namespace_exists(self, kind: Kind, namespace: str) -> None:
        if kind.namespaced and ("namespaces", "", namespace) not in self.objects:
            raise not_found("namespaces", "", namespace)

    def get(self, kind: Kind, namespace: str, name: str) -> JSON:
        obj = self.objects.get((kind.resource, namespace, name))
        if obj is None:
            raise not_found(kind.resource, kind.group, name)
        return copy.deepcopy(obj)

    def select(self, kind: Kind, namespace: str, accepts: Callable[[JSON], bool]) -> list[JSON]:
        found = [obj for (resource, ns, _), obj in self.objects.items()
                 if resource == kind.resource and namespace in ("", ns) and accepts(obj)]
        return copy.deepcopy(sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])))

    def _prepare(self, kind: Kind, namespace: str, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if kind.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if obj.get("kind", kind.kind) != kind.kind or obj.get("apiVersion", kind.api_version) != kind.api_version:
            raise bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                              f"API version ({kind.api_version})")
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        return obj

    def create(self, kind: Kind, namespace: str, body: Any, dry_run: bool = False) -> JSON:
        obj = self._prepare(kind, namespace, body)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        _validate_name(kind, str(meta.get("name", "")))
        self._namespace_exists(kind, namespace)
        key = (kind.resource, namespace, meta["name"])
        if key in self.objects:
            raise already_exists(kind.resource, kind.group, meta["name"])
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        for transient in ("resourceVersion", "deletionTimestamp", "selfLink"):
            meta.pop(transient, None)
        _defaults(kind, obj, None)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._bump()
        self.objects[key] = obj
        self._record(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def update(self, kind: Kind, namespace: str, name: str, body: Any, dry_run: bool = False) -> JSON:
        old = self.get(kind, namespace, name)
        obj = self._prepare(kind, namespace, body)
        meta = obj["metadata"]
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                              f"({name})")
        sent = meta.get("resourceVersion")
        if sent and sent != old["metadata"]["resourceVersion"]:
            raise conflict(kind.resource, kind.group, name)
        meta.update(name=name, uid=old["metadata"]["uid"], creationTimestamp=old["metadata"]["creationTimestamp"])
        spec_changed = obj.get("spec") != old.get("spec")
        meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        _defaults(kind, obj, old)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run or obj == old:
            return obj
        meta["resourceVersion"] = self._bump()
        self.objects[(kind.resource, namespace, name)] = obj
        self._record(kind, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def replace_status(self, kind: Kind, namespace: str, name: str, status: Any) -> JSON:
        """The status subresource written: only `status` changes (a new resourceVersion)."""
        obj = self.get(kind, namespace, name)
        if not isinstance(status, dict):
            raise bad_request("status must be an object")
        obj["status"] = status
        obj["metadata"]["resourceVersion"] = self._bump()
        self.objects[(kind.resource, namespace, name)] = obj
        self._record(kind, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def delete(self, kind: Kind, namespace: str, name: str, dry_run: bool = False) -> JSON:
        obj = self.get(kind, namespace, name)
        if dry_run:
            return obj
        del self.objects[(kind.resource, namespace, name)]
        if kind.resource == "namespaces":
            for key in [key for key in self.objects if key[1] == name]:
                inner = self.objects.pop(key)
                inner["metadata"]["resourceVersion"] = self._bump()
                self._record(_kind(key[0]), "DELETED", inner)
        obj["metadata"]["resourceVersion"] = self._bump()
        obj["metadata"]["deletionTimestamp"] = now()
        self._record(kind, "DELETED", obj)
        return obj

    def events_since(self, kind: Kind, namespace: str, revision: int) -> list[Event]:
        """History after `revision` for `kind` in `namespace` ("" = all)."""
        return [event for event in self.history if event.resource_version > revision and event.kind == kind
                and namespace in ("", event.object["metadata"].get("namespace", ""))]


def _kind(resource: str) -> Kind:
    group = "apps" if resource in ("deployments", "replicasets") else ""
    kind = find(group, "v1", resource)
    if kind is None:
        raise ApiError(500, "InternalError", f"unknown resource {resource}")
    return kind
