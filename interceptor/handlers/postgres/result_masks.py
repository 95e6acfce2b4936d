"""Which rewriter a masked statement's result rows pass through.

The policy's lineage of the statement says which result positions derive from masked
columns; the server's RowDescription, read against the catalog, says where each column's
values come from. Together they make each column's Origin, and masks.py's factory the
rewriter. A rewriter is built once per decision, statement, columns, catalog version and
client encoding: a statement run again and again reuses it.
"""

from __future__ import annotations

from typing import Any

from interceptor.decision import Decision
from interceptor.errors import MaskingError
from interceptor.handlers.postgres import codec
from interceptor.handlers.postgres.codec import Column
from interceptor.handlers.postgres.masks import MaskFactory, Origin, RowMask
from interceptor.handlers.postgres.state import Portal, catalog_version, listed
from interceptor.policy.catalog import Catalog, CatalogUnavailable

_CACHED = 256  # row rewriters a session keeps for statements it runs again


class ResultMasks:
    """A session's row rewriters, by `factory` (None: no masker is configured, so a result
    the policy masks is withheld)."""

    def __init__(self, factory: MaskFactory | None) -> None:
        self.factory = factory
        # (id of the decision, statement, columns, catalog version, codec) -> (the decision, its rewriter)
        self._cache: dict[tuple[object, ...], tuple[Decision, RowMask | None]] = {}
        # the last one asked for: (decision, columns, catalog, index, encoding, rewriter), matched by identity
        self._last: tuple[object, object, object, int, str, RowMask | None] = (None, None, None, -1, "", None)

    def for_columns(self, decision: Decision, columns: tuple[Column, ...], index: int,
                    catalog: Catalog | CatalogUnavailable | None, encoding: str) -> RowMask | None:
        """The rewriter of the rows of the `index`-th statement of `decision`, whose result
        has `columns` (None: they pass as they are); `encoding` is the client's Python codec.
        MaskingError when which column is which, or where one comes from, cannot be told."""
        last = self._last
        if (last[0] is decision and last[1] is columns and last[2] is catalog and last[3] == index
                and last[4] == encoding):  # the same statement's result again: no key to hash
            return last[5]
        key = (id(decision), index, columns, catalog_version(catalog), encoding)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is decision:
            self._last = (decision, columns, catalog, index, encoding, cached[1])
            return cached[1]
        mask = self._build(decision, columns, index, catalog if isinstance(catalog, Catalog) else None, encoding)
        if len(self._cache) >= _CACHED:
            self._cache.clear()
        self._cache[key] = (decision, mask)
        self._last = (decision, columns, catalog, index, encoding, mask)
        return mask

    def for_portal(self, portal: Portal, catalog: Catalog | CatalogUnavailable | None,
                   encoding: str) -> RowMask | None:
        """The rewriter of an Execute's rows, with the columns a Describe of the portal or of
        its statement found (None: they pass as they are); one that withholds them when
        neither was described or the mask cannot be built (raised when the first row arrives,
        on the server side)."""
        columns = portal.columns
        prepared = portal.prepared
        if columns is None and prepared.columns is not None:
            columns = tuple(_with_format(c, portal.formats, i) for i, c in enumerate(prepared.columns))
        if columns is None:
            return withheld("the policy masks this statement's result but its columns were never described")
        try:
            return self.for_columns(portal.decision, columns, 0, catalog, encoding)
        except MaskingError as exc:
            return withheld(str(exc))

    def _build(self, decision: Decision, columns: tuple[Column, ...], index: int, known: Catalog | None,
               encoding: str) -> RowMask | None:
        if self.factory is None:
            return withheld("the policy masks this result but no masker is configured")
        outputs = _masked_outputs(decision, index, len(columns))
        origins = tuple(_origin(column, outputs.get(i), known) for i, column in enumerate(columns))
        return self.factory(decision.masks, columns, origins, encoding)


def withheld(reason: str) -> RowMask:
    """A rewriter that lets no row through: MaskingError(`reason`) at the first."""
    def refuse(body: memoryview) -> bytes:
        raise MaskingError(reason)
    return refuse


# A RowDescription's columns; the same bytes give the same tuple (a prepared statement run again
# sends the same description).
described = codec.BodyMemo(codec.read_row_description, 1024)


def _masked_outputs(decision: Decision, index: int, columns: int) -> dict[int, dict[str, Any]]:
    """The result positions of the `index`-th statement of a decision that the policy's
    lineage found derived from a masked column, with what it found (`columns`, and `shape` and
    `table` for a whole row it can mask field by field). A MaskingError when the analysis
    counted another number of result columns than the server sent (`columns`): which
    position is which could not be told."""
    detail = decision.details[index] if index < len(decision.details) else {}
    found = {int(o["position"]): dict(o) for o in listed(detail, "masked_outputs")}
    counted = detail.get("output_count")
    if found and counted != columns:
        raise MaskingError(f"the enforcer counted {counted} result columns where the server sent {columns}: which "
                           "are masked cannot be told")
    return found


def _origin(column: Column, output: dict[str, Any] | None, catalog: Catalog | None) -> Origin:
    """Where a result column's values come from: the server's RowDescription (the column
    it comes straight from, or a relation's row type) and the analysis (`output`). A table
    OID the catalog does not hold (read again once for it) is a MaskingError: masked or not,
    the enforcer cannot tell."""
    if column.table_oid and (catalog is None or column.table_oid not in catalog.by_oid):
        raise MaskingError(f"result column {column.name!r} comes from table oid {column.table_oid}, which the "
                           "catalog does not hold")
    named = catalog.column_at(column.table_oid, column.attnum) if catalog is not None and column.table_oid else None
    if output is not None and "shape" in output:
        schema, _, name = str(output["table"]).partition(".")
        relation = catalog.relation(schema, name) if catalog is not None else None
        if relation is None or catalog is None:
            raise MaskingError(f"the catalog does not hold {output['table']}, whose rows the result embeds")
        row_type = catalog.row_type(relation) if catalog.complete else None
        return Origin(row=relation, shape=str(output["shape"]), row_type=row_type)
    if output is not None and named not in output["columns"]:
        return Origin(derived=tuple(output["columns"]))  # computed: one constant
    relation = catalog.row_types.get(column.type_oid) if catalog is not None and output is None else None
    if relation is not None:
        return Origin(row=relation, shape="record", row_type=column.type_oid)
    return Origin(column=named)


def _with_format(column: Column, formats: tuple[int, ...], index: int) -> Column:
    fmt = formats[index] if len(formats) > 1 else (formats[0] if formats else 0)
    return Column(column.name, column.table_oid, column.attnum, column.type_oid, fmt)
