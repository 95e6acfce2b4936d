"""Kubernetes `Status` errors (apimachinery pkg/api/errors): the body every failed call returns."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


class ApiError(Exception):
    """A failure answered as a `Status` object with HTTP `code` and machine-readable `reason`."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(resource: str, group: str) -> str:
    """`pods`, or `deployments.apps` for a resource outside the core group, as messages spell it."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(resource, group)} "{name}" not found',
                    {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource})


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists',
                    {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource})


def conflict(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": the '
                    "object has been modified; please apply your changes to the latest version and try again",
                    {"name": name, "kind": resource})


def invalid(kind: str, name: str, field: str, value: object, why: str) -> ApiError:
    message = f'{field}: Invalid value: "{value}": {why}'
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {message}',
                    {"name": name, "kind": kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": f"Invalid value: \"{value}\": {why}",
                                 "field": field}]})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(user: str, verb: str, resource: str, group: str, namespace: str) -> ApiError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiError(403, "Forbidden", f'{qualified(resource, group)} is forbidden: User "{user}" cannot {verb} '
                    f'resource "{resource}" in API group "{group}"{where}', {"kind": resource, "group": group})
