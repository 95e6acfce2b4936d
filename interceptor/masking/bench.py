"""Throughput of DataRow masking, in MB/s of DataRow bodies, for `interceptor` perf checks.

Run: python -m interceptor.masking.bench [seconds]
"""

from __future__ import annotations

import struct
import sys
import time

from interceptor.masking.column import ColumnMasker
from interceptor.masking.datarow import mask_datarow

_ROW_VALUES = (
    b"1048576",
    b"Ada Lovelace",
    b"ada.lovelace@example.com",
    b"4111 1111 1111 1111",
    b"2026-11-28 20:24:05+00",
    b"Paid with card 4111-1111-1111-1111, receipt sent to ada@example.com; ref 7c9e6679-7425-40de",
    b"active",
    b"DE89370400440532013000",
    b"Customer asked about the delivery window for order 88412; promised a call back tomorrow morning.",
)


_ALL = ("card", "email", "national_id", "iban", "api_key")


def _datarow(values: tuple[bytes, ...]) -> bytes:
    fields = b"".join(struct.pack("!i", len(value)) + value for value in values)
    return struct.pack("!h", len(values)) + fields


def _cases() -> list[tuple[str, dict[int, ColumnMasker]]]:
    key = b"bench-key"
    return [
        ("passthrough (no masked column)", {}),
        ("redact 2 columns", {2: ColumnMasker("redact"), 3: ColumnMasker("redact")}),
        ("partial 2 columns", {2: ColumnMasker("partial"), 3: ColumnMasker("partial")}),
        ("hash 2 columns", {2: ColumnMasker("hash", key=key), 3: ColumnMasker("hash", key=key)}),
        ("null 2 columns", {2: ColumnMasker("null"), 3: ColumnMasker("null")}),
        ("classifiers card+email on 1 column", {5: ColumnMasker("redact", ("card", "email"))}),
        ("all classifiers on 1 column", {5: ColumnMasker("partial", _ALL)}),
        ("all classifiers on 1 column, no secrets", {8: ColumnMasker("partial", _ALL)}),
    ]


def run(seconds: float = 1.0) -> list[dict[str, object]]:
    """Mask the same realistic 9-column row repeatedly per case, `seconds` split across cases."""
    row = _datarow(_ROW_VALUES)
    cases = _cases()
    budget = seconds / len(cases)
    results: list[dict[str, object]] = []
    for name, maskers in cases:
        rows = 0
        started = time.perf_counter()
        deadline = started + budget
        while time.perf_counter() < deadline:
            for _ in range(1000):
                mask_datarow(row, maskers)
            rows += 1000
        elapsed = time.perf_counter() - started
        megabytes = rows * len(row) / 1e6
        results.append(
            {
                "case": name,
                "rows": rows,
                "row_bytes": len(row),
                "seconds": round(elapsed, 3),
                "mb_per_s": round(megabytes / elapsed, 1),
                "classifiers": any(m.classifiers for m in maskers.values()),
            }
        )
    return results


if __name__ == "__main__":
    for result in run(float(sys.argv[1]) if len(sys.argv) > 1 else 7.0):
        print(f"{result['case']:40} {result['mb_per_s']:>10} MB/s  ({result['rows']} rows of {result['row_bytes']} B)")
