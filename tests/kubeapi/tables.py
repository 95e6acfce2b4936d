"""Table output (meta.k8s.io/v1 Table, what `kubectl get` asks for with `Accept: ...;as=Table`):
column definitions, one row per object with its cells and, per `includeObject`, nothing, the
object's PartialObjectMetadata or the whole object."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from .errors import JSON
from .resources import Kind

Cell = Callable[[JSON], Any]


def age(obj: JSON) -> str:
    """kubectl's short human duration since creationTimestamp (apimachinery duration.HumanDuration)."""
    created = datetime.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    seconds = int((datetime.datetime.utcnow() - created).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    minutes, hours = seconds // 60, seconds // 3600
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if hours < 3:
        return f"{minutes}m"
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def _ready(obj: JSON) -> str:
    statuses = obj.get("status", {}).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(obj.get('spec', {}).get('containers') or [])}"


def _replicas(obj: JSON) -> str:
    return f"{obj.get('status', {}).get('readyReplicas', 0)}/{obj.get('spec', {}).get('replicas', 0)}"


COLUMNS: dict[str, list[tuple[str, str, int, Cell]]] = {
    "pods": [("Ready", "string", 0, _ready), ("Status", "string", 0, lambda o: o.get("status", {}).get("phase", "")),
             ("Restarts", "integer", 0, lambda o: 0), ("IP", "string", 1, lambda o: o.get("status", {}).get("podIP")),
             ("Node", "string", 1, lambda o: o.get("spec", {}).get("nodeName"))],
    "deployments": [("Ready", "string", 0, _replicas),
                    ("Up-to-date", "integer", 0, lambda o: o.get("status", {}).get("updatedReplicas", 0)),
                    ("Available", "integer", 0, lambda o: o.get("status", {}).get("availableReplicas", 0))],
    "secrets": [("Type", "string", 0, lambda o: o.get("type", "")),
                ("Data", "integer", 0, lambda o: len(o.get("data") or {}))],
    "configmaps": [("Data", "integer", 0, lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))],
    "namespaces": [("Status", "string", 0, lambda o: o.get("status", {}).get("phase", ""))],
    "services": [("Type", "string", 0, lambda o: o.get("spec", {}).get("type", "ClusterIP")),
                 ("Cluster-IP", "string", 0, lambda o: o.get("spec", {}).get("clusterIP", "None"))],
}


def _row_object(obj: JSON, include: str, version: str) -> JSON | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}", "metadata": obj["metadata"]}


def table(kind: Kind, objects: list[JSON], include: str, version: str, meta: JSON) -> JSON:
    """A Table of `objects`; `include` is None, Metadata or Object; `version` v1 or v1beta1."""
    extra = COLUMNS.get(kind.resource, [])
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a "
                "namespace.", "priority": 0},
               *({"name": name, "type": type_, "format": "", "description": name, "priority": priority}
                 for name, type_, priority, _ in extra if priority == 0),
               {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp", "priority": 0},
               *({"name": name, "type": type_, "format": "", "description": name, "priority": priority}
                 for name, type_, priority, _ in extra if priority > 0)]
    rows = []
    for obj in objects:
        cells = [obj["metadata"]["name"], *(cell(obj) for _, _, p, cell in extra if p == 0), age(obj),
                 *(cell(obj) for _, _, p, cell in extra if p > 0)]
        row: JSON = {"cells": cells}
        if (included := _row_object(obj, include, version)) is not None:
            row["object"] = included
        rows.append(row)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": meta, "columnDefinitions": columns,
            "rows": rows}
