"""The resource types the stand-in serves, as discovery documents describe them
(APIResourceList, APIGroupList: Kubernetes API concepts, "API discovery")."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import JSON

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (name, kind, verbs)
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


STATUS = ("status", "", ("get", "patch", "update"))
KINDS = [
    Kind("", "v1", "namespaces", "Namespace", False, ("ns",), (STATUS,)),
    Kind("", "v1", "pods", "Pod", True, ("po",),
         (STATUS, ("log", "Pod", ("get",)), ("exec", "PodExecOptions", ("create", "get")),
          ("attach", "PodAttachOptions", ("create", "get")),
          ("portforward", "PodPortForwardOptions", ("create", "get"))), ("all",)),
    Kind("", "v1", "services", "Service", True, ("svc",), (STATUS,), ("all",)),
    Kind("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("", "v1", "events", "Event", True, ("ev",)),
    Kind("apps", "v1", "deployments", "Deployment", True, ("deploy",), (STATUS,), ("all",)),
    Kind("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), (STATUS,), ("all",)),
]


def find(group: str, version: str, resource: str) -> Kind | None:
    return next((kind for kind in KINDS if (kind.group, kind.version, kind.resource) == (group, version, resource)),
                None)


def resource_list(group: str, version: str) -> JSON | None:
    """The APIResourceList of group/version ("" for core), None when it is not served."""
    kinds = [kind for kind in KINDS if (kind.group, kind.version) == (group, version)]
    if not kinds:
        return None
    resources: list[JSON] = []
    for kind in kinds:
        resources.append({"name": kind.resource, "singularName": kind.singular, "namespaced": kind.namespaced,
                          "kind": kind.kind, "verbs": VERBS, "shortNames": list(kind.short_names),
                          "categories": list(kind.categories), "storageVersionHash": kind.kind.lower()})
        for sub, sub_kind, verbs in kind.subresources:
            resources.append({"name": f"{kind.resource}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                              "kind": sub_kind or kind.kind, "verbs": list(verbs)})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": kinds[0].api_version,
            "resources": resources}


def group_list() -> JSON:
    """The APIGroupList of /apis: every group other than the core one."""
    groups: dict[str, list[str]] = {}
    for kind in KINDS:
        if kind.group and kind.version not in groups.setdefault(kind.group, []):
            groups[kind.group].append(kind.version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": name, "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
         "preferredVersion": {"groupVersion": f"{name}/{versions[0]}", "version": versions[0]}}
        for name, versions in groups.items()]}


def group(name: str) -> JSON | None:
    """The APIGroup document of /apis/<name>, None when not served."""
    found = [entry for entry in group_list()["groups"] if entry["name"] == name]
    return {"kind": "APIGroup", "apiVersion": "v1", **found[0]} if found else None
