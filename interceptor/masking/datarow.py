"""Rewriting a PostgreSQL DataRow body, touching only the masked fields.

Body layout: Int16 field count, then per field an Int32 length (-1 for NULL) and that
many bytes. Fields before the last masked index are walked (only their lengths are
read); everything else is copied as memoryview slices and joined once.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TypeVar

from interceptor.errors import MaskingError
from interceptor.masking.column import FieldMasker

Body = TypeVar("Body", bytes, memoryview)  # a DataRow body as the caller holds it
_COUNT = struct.Struct("!h")
_LENGTH = struct.Struct("!i")
_NULL = _LENGTH.pack(-1)


def mask_datarow(payload: Body, column_maskers: Mapping[int, FieldMasker]) -> Body | bytes:
    """The DataRow body with the fields at `column_maskers`' indexes masked: `payload` itself
    when no field changed, else new bytes.

    With no maskers the payload is returned as it is (no per-row work). A malformed row,
    or a masker index the row does not have, is a MaskingError: the caller must fail the
    query rather than forward the row.
    """
    if not column_maskers:
        return payload
    size = len(payload)
    if size < 2:
        raise MaskingError(f"DataRow body of {size} bytes has no field count")
    (count,) = _COUNT.unpack_from(payload, 0)
    last = max(column_maskers)
    if last >= count or min(column_maskers) < 0:
        raise MaskingError(f"DataRow has {count} fields but masking was resolved for field {last}")
    view = memoryview(payload)
    pieces: list[bytes | memoryview] = []
    copied = 0
    position = 2
    for index in range(last + 1):
        if position + 4 > size:
            raise MaskingError(f"DataRow truncated in the length of field {index}")
        (length,) = _LENGTH.unpack_from(payload, position)
        start = position + 4
        end = start + length if length > 0 else start
        if length < -1 or end > size:
            raise MaskingError(f"DataRow field {index} has length {length} with {size - start} bytes left")
        masker = column_maskers.get(index)
        if masker is not None and (length >= 0 or masker.nulls):
            masked = masker.mask(view[start:end])
            pieces.append(view[copied:position])
            pieces.append(_NULL if masked is None else _LENGTH.pack(len(masked)) + masked)
            copied = end
        position = end
    if not pieces:
        return payload
    pieces.append(view[copied:])
    return b"".join(pieces)
