"""The OpenAPI v2 document at /openapi/v2: JSON, or the protobuf encoding kubectl asks for
(`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, answered as
application/octet-stream as kube-openapi does: gnostic's openapi.v2.Document, fields
swagger = 1, info = 2 {title = 1, version = 2}, paths = 8, definitions = 9).

The document has no definitions: kubectl skips the validation of a kind it finds no schema for
(kubectl/pkg/util/openapi/validation: "resource is not present, let's just skip validation") and
computes apply's patch from its built-in types, so `kubectl apply` works without `--validate=false`.
"""

from __future__ import annotations

from .errors import JSON

PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
TITLE, VERSION = "Kubernetes", "v1.20.2"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string or an embedded message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def document_json() -> JSON:
    return {"swagger": "2.0", "info": {"title": TITLE, "version": VERSION}, "paths": {}, "definitions": {}}


def document_protobuf() -> bytes:
    info = _field(1, TITLE.encode()) + _field(2, VERSION.encode())
    return _field(1, b"2.0") + _field(2, info) + _field(8, b"") + _field(9, b"")
