"""The patch types PATCH accepts: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and a
strategic merge patch (Kubernetes "strategic merge patch": lists of objects merged by their key,
`$patch` / `$setElementOrder` / `$retainKeys` / `$deleteFromPrimitiveList` directives)."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE_KEYS = ("name", "containerPort", "mountPath", "port", "ip", "type")
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 section 2: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _merge_key(items: list[Any]) -> str | None:
    for key in MERGE_KEYS:
        if items and all(isinstance(item, dict) and key in item for item in items):
            return key
    return None


def _strategic_list(target: Any, patch: list[Any]) -> list[Any]:
    key = _merge_key([item for item in patch if not (isinstance(item, dict) and "$patch" in item and len(item) == 1)])
    if key is None or not isinstance(target, list) or _merge_key(target) != key:
        return [strategic(None, item) for item in patch]
    result = list(target)
    for item in patch:
        index = next((i for i, old in enumerate(result) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic(None, item))
        else:
            result[index] = strategic(result[index], item)
    return result


def strategic(target: Any, patch: Any) -> Any:
    """A strategic merge patch applied to `target`; directives are obeyed or dropped."""
    if isinstance(patch, list):
        return _strategic_list(target, patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        else:
            result[key] = strategic(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _parent(doc, parts)
    return parent.pop(int(parts[-1])) if isinstance(parent, list) else parent.pop(parts[-1])


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        parent.insert(len(parent) if parts[-1] == "-" else int(parts[-1]), value)
    else:
        parent[parts[-1]] = value
    return doc


def _get(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _operation(doc: Any, op: dict[str, Any]) -> Any:
    kind, parts = op.get("op"), _pointer(str(op.get("path", "")))
    if kind == "add":
        return _add(doc, parts, copy.deepcopy(op.get("value")))
    if kind == "remove":
        _remove(doc, parts)
        return doc
    if kind == "replace":
        _remove(doc, parts)
        return _add(doc, parts, copy.deepcopy(op.get("value")))
    if kind in ("move", "copy"):
        source = _pointer(str(op.get("from", "")))
        value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
        return _add(doc, parts, value)
    if kind == "test":
        if _get(doc, parts) != op.get("value"):
            raise ApiError(422, "Invalid", f"the test operation on {op.get('path')} failed")
        return doc
    raise bad_request(f"unknown JSON patch operation {kind!r}")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 applied to a copy of `target`; a bad path or operation raises ApiError 422 / 400."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be an array of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            doc = _operation(doc, op if isinstance(op, dict) else {})
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch operation {op!r} cannot be applied: {exc}") from exc
    return doc


def apply_patch(content_type: str, target: Any, patch: Any) -> Any:
    """`patch` of media type `content_type` applied to `target`; raises ApiError 415 for another type."""
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH:
        return json_patch(target, patch)
    if media == MERGE_PATCH:
        return merge(target, patch)
    if media == STRATEGIC_PATCH:
        return strategic(target, patch)
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media "
                   f"types include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}")
