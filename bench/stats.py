"""Median, spread and percentiles of repeated measurements."""

from __future__ import annotations

import statistics


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "n": n,
        "median": statistics.median(ordered),
        "p99": ordered[min(n - 1, int(n * 0.99))],
        "iqr": ordered[(3 * n) // 4] - ordered[n // 4],
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
