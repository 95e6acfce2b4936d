"""The seam between the PostgreSQL session and interceptor.masking: how each result column
of a statement is masked, once the server has described it (RowDescription), and what an
error or notice raised while masked values were read may say.

A column is masked by where its values come from (`Origin`), in this order of trust:
- the server's word: RowDescription names the table and column a value comes straight
  from (docs, 55.7 "RowDescription"): a masked column is masked in its rule's style; a
  column whose type is a relation's row type is that relation's composite, masked field
  by field;
- the analysis: a whole row in a shape it recognised (the composite, row JSON) is masked
  field by field; a value only it ties to a masked column becomes one constant (the policy
  refuses results computed from masked columns before they run: this is the fallback);
- classifiers: rules that name them mask what they find in any text value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from interceptor.decision import MaskSpec
from interceptor.handlers.postgres.codec import Column
from interceptor.masking import (
    CLASSIFIERS,
    REDACTED,
    TEXT_TYPE_OIDS,
    ColumnMasker,
    ConstantMasker,
    FieldMasker,
    MaskingError,
    classify,
    mask_datarow,
    mask_json_members,
    mask_record_binary,
    mask_record_text,
)
from interceptor.policy.catalog import Relation

# A DataRow body, masked (the same view when no field changed); raises MaskingError rather than guess.
RowMask = Callable[[memoryview], bytes | memoryview]
JSON, JSONB = 114, 3802  # pg_type OIDs
# ErrorResponse / NoticeResponse fields kept when the text is withheld (docs, 55.8 "Error and
# Notice Message Fields"): severity, SQLSTATE, positions, the server's source location, and
# names of schema, table, column, data type and constraint; anything else is dropped.
_KEPT_FIELDS = frozenset(b"SVCPpFLRstcdn")
_TEXT_FIELDS = frozenset(b"MDHWq")  # message, detail, hint, where (context), internal query


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one result column's values come from, as far as masking cares.

    column: "schema.table.column" the values are (RowDescription, or the analysis);
    derived: the masked columns ("schema.table.column") they are computed from;
    row: the relation whose whole row each value is, as `shape` ("record": its composite,
    "json": a JSON object per row, or an array of them), `row_type` its composite's OID."""

    column: str | None = None
    derived: tuple[str, ...] = ()
    row: Relation | None = None
    shape: str | None = None
    row_type: int | None = None


MaskFactory = Callable[[tuple[MaskSpec, ...], tuple[Column, ...], tuple[Origin, ...], str], "RowMask | None"]


@dataclass(frozen=True, slots=True)
class _ShapeMasker:
    mask: Callable[[bytes | memoryview], bytes | None]
    nulls: bool = False


def mask_factory(key: bytes = b"") -> MaskFactory:
    """A DataRow rewriter for a described result, or None when no column needs masking (rows
    then stream untouched). `encoding` is the session's client encoding (a Python codec).
    Raises MaskingError when a column must be masked but cannot be safely (the result is
    then withheld)."""

    def build(specs: tuple[MaskSpec, ...], columns: tuple[Column, ...], origins: tuple[Origin, ...],
              encoding: str) -> RowMask | None:
        maskers: dict[int, FieldMasker] = {}
        for index, (column, origin) in enumerate(zip(columns, origins)):
            masker = _column_masker(specs, column, origin, encoding, key)
            if masker is not None:
                maskers[index] = masker
        if not maskers:
            return None
        return lambda body: mask_datarow(body, maskers)

    return build


def _column_masker(specs: tuple[MaskSpec, ...], column: Column, origin: Origin, encoding: str,
                   key: bytes) -> FieldMasker | None:
    if origin.row is not None:
        return _row_masker(specs, column, origin, encoding, key)
    spec = _spec_for(specs, origin.column) if origin.column is not None else None
    if spec is not None:
        return ColumnMasker.for_column(spec, whole=True, type_oid=column.type_oid, format_code=column.format, key=key)
    if origin.derived:
        return _constant(specs, column, origin.derived)
    textual = column.format == 0 or column.type_oid in TEXT_TYPE_OIDS
    spec = next((s for s in specs if s.classifiers), None)
    if spec is not None and textual:
        return ColumnMasker.for_column(spec, whole=False, type_oid=column.type_oid, format_code=column.format, key=key)
    return None


def _spec_for(specs: Sequence[MaskSpec], name: str) -> MaskSpec | None:
    """The first rule masking column `name`: one the analysis found, or one whose patterns match."""
    return next((s for s in specs if any(fnmatch.fnmatchcase(name, p) for p in (*s.columns, *s.patterns))), None)


def _constant(specs: tuple[MaskSpec, ...], column: Column, derived: tuple[str, ...]) -> ConstantMasker:
    """One value for every row: '****' for a value of a text type, NULL when every rule
    involved has style null or the value is of another type (an integer column cannot hold
    '****': a client would fail to read it)."""
    styles = {spec.style for name in derived if (spec := _spec_for(specs, name)) is not None}
    return ConstantMasker(REDACTED if column.type_oid in TEXT_TYPE_OIDS and styles != {"null"} else None)


def _row_masker(specs: tuple[MaskSpec, ...], column: Column, origin: Origin, encoding: str,
                key: bytes) -> FieldMasker | None:
    """Field by field masking of a whole row, or None when no field of the relation is masked."""
    relation = origin.row
    assert relation is not None
    fields = [_field_masker(specs, f"{relation.qualified}.{name}", key) for name in relation.columns]
    if not any(fields):
        return None
    binary = column.format == 1
    if origin.shape == "json":
        if column.type_oid not in (JSON, JSONB):
            raise MaskingError(f"a row of {relation.qualified} as JSON came back as type oid {column.type_oid}")
        members = {name: masker for name, masker in zip(relation.columns, fields) if masker is not None}
        jsonb_binary = binary and column.type_oid == JSONB
        return _ShapeMasker(lambda value: mask_json_members(bytes(value), members, encoding, jsonb_binary))
    if origin.row_type is not None and column.type_oid != origin.row_type:
        raise MaskingError(f"a row of {relation.qualified} came back as type oid {column.type_oid}, not its row type")
    if binary:
        return _ShapeMasker(lambda value: mask_record_binary(bytes(value), fields))
    return _ShapeMasker(lambda value: mask_record_text(bytes(value), fields, encoding))


def _field_masker(specs: tuple[MaskSpec, ...], name: str, key: bytes) -> ColumnMasker | None:
    spec = _spec_for(specs, name)
    return ColumnMasker(spec.style, (), key) if spec is not None else None


# ---- errors and notices -----------------------------------------------------------------


def withhold_error_text(body: bytes | memoryview, rules: Sequence[str]) -> bytes:
    """An ErrorResponse / NoticeResponse body whose text fields are replaced by a message
    that a value was withheld by `rules`: the server's text may quote a masked value (a
    failed cast quotes its input). SQLSTATE, severity and positions are kept, so clients
    behave as the server meant."""
    named = ", ".join(repr(rule) for rule in rules)
    kept = [part for part in _fields(body) if part[0] in _KEPT_FIELDS]
    message = (f"interceptor: the server's message was withheld by rule{'s' if len(rules) > 1 else ''} {named}: "
               "it may quote a masked value")
    return _rebuild(kept + [b"M" + message.encode()])


def scrub_error_text(body: bytes | memoryview, classifiers: Sequence[str] = tuple(CLASSIFIERS)) -> bytes | None:
    """The body with what `classifiers` find in its text fields replaced by '****', or None
    when they find nothing (the frame is then forwarded as it came)."""
    parts = _fields(body)
    changed = False
    for index, part in enumerate(parts):
        if part[0] in _TEXT_FIELDS:
            spans = classify(part[1:], tuple(classifiers))
            if spans:
                parts[index] = part[:1] + _replace(part[1:], spans)
                changed = True
    return _rebuild(parts) if changed else None


def _replace(text: bytes, spans: list[tuple[int, int, str]]) -> bytes:
    pieces, position = [], 0
    for start, end, _ in spans:
        pieces += [text[position:start], REDACTED]
        position = end
    return b"".join(pieces) + text[position:]


def _fields(body: bytes | memoryview) -> list[bytes]:
    return [part for part in bytes(body).split(b"\0") if part]


def _rebuild(parts: list[bytes]) -> bytes:
    return b"".join(part + b"\0" for part in parts) + b"\0"
