"""The seam between the PostgreSQL session and interceptor.masking: which result columns a
decision masks, and how, once the server has described them (RowDescription)."""

from __future__ import annotations

import fnmatch

from interceptor.decision import MaskSpec
from interceptor.handlers.postgres.codec import Column
from interceptor.handlers.postgres.session import RowMask
from interceptor.masking import TEXT_TYPE_OIDS, ColumnMasker, mask_datarow


def mask_factory(key: bytes = b""):
    """The seam to interceptor.masking: a DataRow rewriter for the columns the policy masks,
    or None when no column of this result needs it (rows then stream untouched)."""

    def build(specs: tuple[MaskSpec, ...], columns: tuple[Column, ...], names: tuple[str | None, ...]) -> RowMask | None:
        maskers: dict[int, ColumnMasker] = {}
        for index, (column, name) in enumerate(zip(columns, names)):
            for spec in specs:
                whole = name is not None and any(fnmatch.fnmatchcase(name, p) for p in spec.columns)
                textual = column.format == 0 or column.type_oid in TEXT_TYPE_OIDS
                if whole or (spec.classifiers and textual):
                    maskers[index] = ColumnMasker.for_column(spec, whole=whole, type_oid=column.type_oid,
                                                             format_code=column.format, key=key)
                    break
        if not maskers:
            return None
        return lambda body: mask_datarow(body, maskers)

    return build
