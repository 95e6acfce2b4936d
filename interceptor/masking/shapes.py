"""Masking the fields of a whole-row value: a composite in text or binary form, or the JSON
that row_to_json / to_json / to_jsonb / json_agg / jsonb_agg make of rows.

`select c from customers c` sends a row as one value; the fields of it that are masked
columns are replaced inside that value and every other byte is kept. A value that is not
the shape the caller said (another field count, malformed text, another JSON shape) is a
MaskingError: the caller must fail the query rather than forward the value.

What a masker sees is the field's text as the client would see it, as UTF-8 bytes whatever
the client encoding (classifiers work on bytes): a composite field de-quoted (as record_in
reads it), a JSON string member decoded (escapes resolved), any other JSON member value
(number, true/false, object, array) as its JSON text. In binary composites, text fields are
given to the masker as they arrive (the client encoding's bytes, like mask_datarow does).

Text values are decoded with the client encoding's Python codec, edited as text, and encoded
back; the codecs the enforcer uses (interceptor/policy/encodings.py) encode decoded text back
to the same bytes, so unmasked parts stay byte-exact. A value with nothing to replace is
returned as it came.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from interceptor.errors import MaskingError
from interceptor.masking.column import TEXT_TYPE_OIDS, ColumnMasker

# isspace() in the C locale: what record_in skips around a composite and record_out quotes.
_C_SPACE = " \t\n\v\f\r"
# One composite field as record_in reads it (rowtypes.c), up to the ',' or ')' after it:
# unquoted characters, backslash escapes anywhere, double-quoted sections (with "" and \
# escapes inside). Possessive quantifiers: no backtracking into a reading record_in would
# not make (in quotes, '""' is always a quote, never a close and a reopen).
_RECORD_FIELD = re.compile(r'(?:[^"\\,)]++|\\.|"(?:[^"\\]++|\\.|"")*+")*+(?=[,)])', re.DOTALL)
# The pieces of one field, for de-quoting it: a quoted section, an escaped character, plain text.
_RECORD_PIECE = re.compile(r'"((?:[^"\\]|\\.|"")*+)"|\\(.)|([^"\\]+)', re.DOTALL)
_QUOTED_ESCAPE = re.compile(r'\\(.)|""', re.DOTALL)
# record_out quotes a value that is empty or holds any of these.
_RECORD_QUOTE_IF = re.compile("[" + re.escape('"\\(),' + _C_SPACE) + "]")

_INT32 = struct.Struct("!i")
_BINARY_FIELD = struct.Struct("!Ii")  # type OID, length (-1: NULL)
_BINARY_NULL = _INT32.pack(-1)

# Not JSON whitespace (RFC 8259 section 2, the only kind PostgreSQL's json parser skips).
_JSON_NOT_SPACE = re.compile(r"[^ \t\n\r]")
_JSONB_VERSION = 1


def _refuse_constant(name: str) -> NoReturn:
    """NaN and Infinity are not JSON: PostgreSQL never prints them, Python would accept them."""
    raise MaskingError(f"JSON value holds {name}, which is not JSON")


_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def mask_record_text(value: bytes, fields: Sequence[ColumnMasker | None], encoding: str = "utf-8") -> bytes:
    """A composite's text output, `(f1,f2,...)`, with field i masked by `fields[i]` (None:
    kept byte-exact). The masker sees the de-quoted field as UTF-8; its result is quoted as
    record_out would quote it, and a None result is an empty unquoted field (NULL). NULL
    fields stay NULL without calling the masker.

    Format: docs 8.16.6 "Composite Type Input and Output Syntax"; parsed as record_in and
    written as record_out (src/backend/utils/adt/rowtypes.c). `encoding` is the Python codec
    of the client encoding. MaskingError: the value does not decode, is malformed, or has
    not exactly len(fields) fields.
    """
    text = _decode(value, encoding, "composite value")
    pieces: list[str] = []
    copied = 0
    for masker, (start, end) in zip(fields, _record_fields(text, len(fields))):
        if masker is None or start == end:
            continue
        masked = _mask_text(masker, _record_unquote(text[start:end]))
        pieces += [text[copied:start], "" if masked is None else _record_quote(masked)]
        copied = end
    if not pieces:
        return value
    pieces.append(text[copied:])
    return _encode("".join(pieces), encoding)


def _record_fields(text: str, count: int) -> list[tuple[int, int]]:
    """The `(start, end)` of each field's raw text in a composite's text (start == end: NULL),
    read as record_in does for a type of `count` fields: optional spaces, '(', the fields
    separated by ',', ')', optional spaces. MaskingError for anything else."""
    opening = len(text) - len(text.lstrip(_C_SPACE))
    if not text.startswith("(", opening):
        raise MaskingError("composite value does not start with '('")
    if count == 0 and text.startswith(")", opening + 1):
        spans: list[tuple[int, int]] = []
        closing = opening + 1
    else:
        spans, closing = _record_spans(text, opening)
    if len(spans) != count:
        raise MaskingError(f"composite value has {len(spans)} fields, expected {count}")
    if text[closing + 1 :].strip(_C_SPACE):
        raise MaskingError("composite value has more after its closing ')'")
    return spans


def _record_spans(text: str, opening: int) -> tuple[list[tuple[int, int]], int]:
    """The spans of the fields after the '(' at `opening` and the index of the closing ')'."""
    spans: list[tuple[int, int]] = []
    end = opening
    while not spans or text[end] == ",":
        field = _RECORD_FIELD.match(text, end + 1)
        if field is None:
            raise MaskingError(f"composite value is malformed or ends in field {len(spans)}")
        spans.append(field.span())
        end = field.end()
    return spans, end


def _record_unquote(raw: str) -> str:
    """A composite field's value from its raw text, as record_in reads it: quoted sections
    and unquoted text may alternate; '\\x' is x anywhere and '""' is '"' inside quotes."""
    parts: list[str] = []
    for match in _RECORD_PIECE.finditer(raw):
        quoted, escaped, plain = match.groups()
        if quoted is not None:
            parts.append(_QUOTED_ESCAPE.sub(lambda m: m.group(1) or '"', quoted))
        else:
            parts.append(escaped if escaped is not None else plain)
    return "".join(parts)


def _record_quote(value: str) -> str:
    """A field's text as record_out writes it: double-quoted when empty or holding '"', '\\',
    '(', ')', ',' or whitespace, with '"' and '\\' doubled."""
    if value and not _RECORD_QUOTE_IF.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '""') + '"'


def mask_record_binary(value: bytes, fields: Sequence[ColumnMasker | None]) -> bytes:
    """A composite's binary send format with field i masked by `fields[i]` (None: kept).

    Format (record_send in src/backend/utils/adt/rowtypes.c): int32 field count, then per
    field uint32 type OID, int32 length (-1: NULL) and that many bytes. A masked field of a
    text type (TEXT_TYPE_OIDS) gets the masker's bytes (the masker sees the field's bytes,
    in the client encoding), NULL for a None result; a NULL field stays NULL. A masked field
    of another type becomes NULL when the masker's style is "null", else it is refused (its
    binary form cannot hold a mask), even when it is NULL, so the answer does not depend on
    the row. MaskingError: that refusal, a count that is not len(fields), a value truncated
    or with bytes after its last field.
    """
    _binary_count(value, len(fields))
    view = memoryview(value)
    pieces: list[bytes | memoryview] = []
    copied = 0
    position = 4
    for index, masker in enumerate(fields):
        type_oid, length = _binary_field(value, position, index)
        end = position + 8 + max(length, 0)
        if masker is not None:
            replacement = _mask_binary_field(masker, type_oid, view[position + 8 : end] if length >= 0 else None)
            if replacement is not None:
                pieces += [view[copied : position + 4], replacement]
                copied = end
        position = end
    if position != len(value):
        raise MaskingError(f"binary composite has {len(value) - position} bytes after its {len(fields)} fields")
    if not pieces:
        return value
    pieces.append(view[copied:])
    return b"".join(pieces)


def _binary_count(value: bytes, expected: int) -> None:
    """Check a binary composite's int32 field count against `expected`; MaskingError if not."""
    if len(value) < 4:
        raise MaskingError(f"binary composite of {len(value)} bytes has no field count")
    (count,) = _INT32.unpack_from(value, 0)
    if count != expected:
        raise MaskingError(f"binary composite has {count} fields, expected {expected}")


def _binary_field(value: bytes, position: int, index: int) -> tuple[int, int]:
    """The type OID and length (-1: NULL) of the binary composite field whose header is at
    `position`; MaskingError when the header or the data is cut off."""
    if position + 8 > len(value):
        raise MaskingError(f"binary composite truncated in the header of field {index}")
    type_oid, length = _BINARY_FIELD.unpack_from(value, position)
    left = len(value) - position - 8
    if length < -1 or length > left:
        raise MaskingError(f"binary composite field {index} has length {length} with {left} bytes left")
    return type_oid, length


def _mask_binary_field(masker: ColumnMasker, type_oid: int, data: memoryview | None) -> bytes | None:
    """The new length and bytes of a masked binary composite field (`data` None: NULL), or
    None to keep the field as it is."""
    if type_oid not in TEXT_TYPE_OIDS:
        if masker.style == "null":
            return _BINARY_NULL
        raise MaskingError(f"cannot mask a composite field of type oid {type_oid} in binary with style "
                           f"{masker.style!r}; only style 'null' is safe")
    if data is None:
        return None
    masked = masker.mask(data)
    return _BINARY_NULL if masked is None else _INT32.pack(len(masked)) + masked


def mask_json_members(value: bytes, fields: Mapping[str, ColumnMasker], encoding: str = "utf-8",
                      jsonb_binary: bool = False) -> bytes:
    """JSON of rows with the value of each member named in `fields` masked: in the object
    when the value is one (row_to_json, to_json, to_jsonb), in each object of the array when
    it is an array of objects and nulls (json_agg, jsonb_agg). Nested objects are not rows:
    their members are kept, and an object or array at a masked key is masked whole.

    Keys are compared decoded (escapes resolved); each member with the key is masked, also
    a duplicate. A string value is masked on its decoded text, another value on its JSON
    text; the result is written as a JSON string (escaped as PostgreSQL's escape_json does),
    a None result as null; a null value stays null. All other bytes are kept.

    Format: docs 9.16 "JSON Functions and Operators" and 8.14 "JSON Types"; `jsonb_binary`:
    jsonb's binary send format, a version byte 1 then the text (jsonb_send in
    src/backend/utils/adt/jsonb.c; json's binary format is the text itself). `encoding` is
    the Python codec of the client encoding. MaskingError: another jsonb version, text that
    does not decode, malformed JSON, or a value that is not an object or such an array.
    """
    prefix, body = _jsonb_text(value) if jsonb_binary else (b"", value)
    text = _decode(body, encoding, "JSON value")
    edits = _json_edits(text, fields)
    if not edits:
        return value
    pieces: list[str] = []
    copied = 0
    for start, end, replacement in edits:
        pieces += [text[copied:start], replacement]
        copied = end
    pieces.append(text[copied:])
    return prefix + _encode("".join(pieces), encoding)


def _jsonb_text(value: bytes) -> tuple[bytes, bytes]:
    """A jsonb binary value split into its version byte and its text; MaskingError unless version 1."""
    if not value or value[0] != _JSONB_VERSION:
        version = value[0] if value else "missing"
        raise MaskingError(f"jsonb binary value has version {version}, expected {_JSONB_VERSION}")
    return value[:1], value[1:]


def _json_edits(text: str, fields: Mapping[str, ColumnMasker]) -> list[tuple[int, int, str]]:
    """The `(start, end, replacement)` of each masked member value of JSON text holding an
    object or an array of objects and nulls, in text order; MaskingError for other text."""
    edits: list[tuple[int, int, str]] = []
    position = _skip_space(text, 0)
    if text.startswith("{", position):
        position = _object_edits(text, position, fields, edits)
    elif text.startswith("[", position):
        position = _array_edits(text, position, fields, edits)
    else:
        raise MaskingError("JSON value is not an object or an array of objects")
    if _skip_space(text, position) != len(text):
        raise MaskingError(f"JSON value has more after its end at character {position}")
    return edits


def _array_edits(
    text: str, position: int, fields: Mapping[str, ColumnMasker], edits: list[tuple[int, int, str]]
) -> int:
    """Add the edits of the objects in the array opening at `position`; the index after it.
    MaskingError for an element that is not an object or null."""
    position = _skip_space(text, position + 1)
    if text.startswith("]", position):
        return position + 1
    done = False
    while not done:
        if text.startswith("{", position):
            position = _object_edits(text, position, fields, edits)
        elif text.startswith("null", position):
            position += 4
        else:
            raise MaskingError(f"JSON array element at character {position} is not an object or null")
        position, done = _next_item(text, position, "]")
    return position


def _object_edits(
    text: str, position: int, fields: Mapping[str, ColumnMasker], edits: list[tuple[int, int, str]]
) -> int:
    """Add the edits of the members of the object opening at `position` whose key is in
    `fields`; the index after the object."""
    position = _skip_space(text, position + 1)
    if text.startswith("}", position):
        return position + 1
    done = False
    while not done:
        key, start = _json_key(text, position)
        parsed, end = _json_value(text, start)
        masker = fields.get(key)
        if masker is not None and parsed is not None:
            edits.append((start, end, _masked_json(masker, parsed if isinstance(parsed, str) else text[start:end])))
        position, done = _next_item(text, end, "}")
    return position


def _json_key(text: str, position: int) -> tuple[str, int]:
    """The decoded key of the member at `position` and the index of its value."""
    if not text.startswith('"', position):
        raise MaskingError(f"JSON object has no member key at character {position}")
    key, position = _json_value(text, position)  # a JSON string: its text decoded
    position = _skip_space(text, position)
    if not text.startswith(":", position):
        raise MaskingError(f"JSON object has no ':' after the key at character {position}")
    return key, _skip_space(text, position + 1)


def _json_value(text: str, position: int) -> tuple[Any, int]:
    """The JSON value at `position`, parsed (a str for a JSON string, None for null), and the
    index after it."""
    try:
        parsed, end = _JSON.raw_decode(text, position)
    except json.JSONDecodeError as exc:
        raise MaskingError(f"JSON value is malformed: {exc}") from None
    except RecursionError:
        raise MaskingError(f"JSON value at character {position} is nested too deeply to read") from None
    return parsed, end


def _next_item(text: str, position: int, close: str) -> tuple[int, bool]:
    """Past the ',' or the `close` after an element or member: the next index, and whether it
    was `close`. MaskingError for anything else."""
    position = _skip_space(text, position)
    separator = text[position : position + 1]
    if separator == ",":
        return _skip_space(text, position + 1), False
    if separator == close:
        return position + 1, True
    raise MaskingError(f"JSON value has no ',' or {close!r} at character {position}")


def _skip_space(text: str, position: int) -> int:
    """The index of the first non-whitespace character at or after `position`."""
    found = _JSON_NOT_SPACE.search(text, position)
    return len(text) if found is None else found.start()


def _masked_json(masker: ColumnMasker, content: str) -> str:
    """A member's masked value as JSON: a string (escaped like escape_json in
    src/backend/utils/adt/json.c), or null when the masker says NULL."""
    masked = _mask_text(masker, content)
    return "null" if masked is None else json.dumps(masked, ensure_ascii=False)


def _mask_text(masker: ColumnMasker, content: str) -> str | None:
    """A field's text masked: the masker sees it as UTF-8; None for SQL NULL."""
    try:
        masked = masker.mask(content.encode("utf-8"))
    except UnicodeEncodeError:
        raise MaskingError("field text holds a lone surrogate (a \\u escape) and cannot be masked") from None
    if masked is None:
        return None
    try:
        return masked.decode("utf-8")
    except UnicodeDecodeError:
        raise MaskingError("masked value is not UTF-8 text") from None


def _decode(value: bytes, encoding: str, what: str) -> str:
    """`value` decoded with the Python codec `encoding`; MaskingError if it cannot be."""
    try:
        return value.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise MaskingError(f"{what} cannot be read as {encoding}: {exc}") from None


def _encode(text: str, encoding: str) -> bytes:
    """`text` encoded with the Python codec `encoding`; MaskingError if it cannot be."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        raise MaskingError(f"masked value cannot be written in {encoding}: {exc}") from None
