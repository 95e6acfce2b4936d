"""The policy file's JSON Schema (draft 2020-12): the base below plus what each registered
protocol contributes (its `protocol:` name, its resource options, its rule block).

policy/schema.json is this schema as shipped for editors and the service install; the loader
validates with `composed()` itself, and a unit test holds the file equal to it. Rewrite the file
with `python scripts/gen_policy_reference.py --schema`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from interceptor.protocols import ProtocolSpec, protocols

_STRINGS = {"$ref": "#/$defs/strings"}
_NAMES = {"type": "array", "items": {"$ref": "#/$defs/name"}, "minItems": 1}

_DEFS: dict[str, Any] = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
    "strings": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    "resource": {
        "type": "object",
        "additionalProperties": False,
        "required": ["protocol", "addresses"],
        "properties": {
            "addresses": _STRINGS,
            "credentials": {"$ref": "#/$defs/credentials"},
            "options": {"type": "object"},
        },
    },
    "credentials": {
        "oneOf": [
            {"type": "object", "additionalProperties": False, "required": ["from", "path"],
             "properties": {"from": {"const": "file"}, "path": {"type": "string", "pattern": "^/"}}},
            {"type": "object", "additionalProperties": False, "required": ["from", "name"],
             "properties": {"from": {"const": "env"}, "name": {"type": "string", "minLength": 1}}},
            {"type": "object", "additionalProperties": False, "required": ["from", "argv"],
             "properties": {"from": {"const": "command"}, "argv": _STRINGS}},
        ],
    },
    "agent": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "cgroups": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "uids": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 4294967294}},
            "identity": {"$ref": "#/$defs/identity"},
            "unprotected": {"enum": ["allow", "deny"]},
        },
    },
    "identity": {
        "type": "object",
        "description": "Each field is checked by interceptor.identity.config, which names the agent and field of "
                       "any problem",
        "required": ["source"],
        "properties": {"source": {"enum": ["client_credentials", "token_file", "login", "none"]}},
    },
    "subjects": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "groups": _STRINGS,
            "scopes": _STRINGS,
            "subject": _STRINGS,
            "client_id": _STRINGS,
            "exe": _STRINGS,
            "uid": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        },
    },
    "approval": {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": _STRINGS,
            "grant": {"enum": ["one-shot", "time-boxed"]},
            "grant_seconds": {"type": "integer", "minimum": 1, "maximum": 604800},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
        },
    },
    "mask": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "columns": _STRINGS,
            "paths": {**_STRINGS, "description": (
                "JSON paths of the values to mask in HTTP, Kubernetes and MCP bodies (each object of a Kubernetes "
                "list or watch, an MCP tool's result): `a.b`, `a[*].b`, `[\"quoted.key\"]`, `*`, `**.name`, "
                "filters `[?key==\"value\"]`, `|base64` for values held in base64 (see interceptor.masking."
                "json_paths).")},
            "classifiers": {"type": "array", "items": {"enum": ["card", "email", "national_id", "iban", "api_key"]},
                            "minItems": 1},
            "style": {"enum": ["redact", "partial", "hash", "null"]},
        },
    },
}
# A rule: who it is about, then (from the protocols) which operations, then what it does
_RULE_WHO: dict[str, Any] = {
    "name": {"$ref": "#/$defs/name"},
    "effect": {"enum": ["allow", "deny", "approve", "mask"]},
    "reason": {"type": "string"},
    "agents": _NAMES,
    "resources": _NAMES,
    "subjects": {"$ref": "#/$defs/subjects"},
}
_RULE_WHAT: dict[str, Any] = {
    "approval": {"$ref": "#/$defs/approval"},
    "mask": {"$ref": "#/$defs/mask"},
}
_RULE_CONDITIONS = [
    {"if": {"properties": {"effect": {"const": "approve"}}}, "then": {"required": ["approval"]},
     "else": {"not": {"required": ["approval"]}}},
    {"if": {"properties": {"effect": {"const": "mask"}}}, "then": {"required": ["mask"]},
     "else": {"not": {"required": ["mask"]}}},
]


def options_def(spec: ProtocolSpec[Any]) -> str:
    """The `$defs` name of a protocol's resource options."""
    return f"{spec.name}-options"


def _where_asked(spec: ProtocolSpec[Any]) -> str:
    if spec.every_resource:
        return f"About the `{spec.operation_key}` operation, which every resource's connection is."
    return f"About `{spec.operation_key}` operations; only on `{spec.name}` resources."


@lru_cache(maxsize=1)
def composed() -> dict[str, Any]:
    """The whole schema (a structure of its own: no part is shared with a module's constant);
    callers must not change it, as it is cached."""
    specs = protocols()
    resource = {**_DEFS["resource"],
                "properties": {"protocol": {"enum": [s.name for s in specs]}, **_DEFS["resource"]["properties"]},
                "allOf": [{"if": {"properties": {"protocol": {"const": s.name}}},
                           "then": {"properties": {"options": {"$ref": f"#/$defs/{options_def(s)}"}}}}
                          for s in specs]}
    keys = {s.operation_key: {"$ref": f"#/$defs/{s.operation_key}", "description": _where_asked(s)} for s in specs}
    rule = {"type": "object", "additionalProperties": False, "required": ["name", "effect"],
            "properties": {**_RULE_WHO, **keys, **_RULE_WHAT}, "allOf": _RULE_CONDITIONS}
    defs = {**_DEFS, "resource": resource, "rule": rule}
    for spec in specs:
        defs[spec.operation_key] = spec.match_schema
        defs[options_def(spec)] = spec.options_schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://interceptor.dev/policy/schema.json",
        "title": "interceptor policy",
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "resources", "agents", "rules"],
        "properties": {
            "version": {"const": 1},
            "resources": {"type": "object", "additionalProperties": {"$ref": "#/$defs/resource"}},
            "agents": {"type": "object", "additionalProperties": {"$ref": "#/$defs/agent"}},
            "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
        },
        "$defs": json.loads(json.dumps(defs)),
    }


def text() -> str:
    """policy/schema.json's content: the composed schema, indented, with a final newline."""
    return json.dumps(composed(), indent=2) + "\n"
