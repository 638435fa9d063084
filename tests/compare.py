"""Comparing metric records from two computations (stream vs batch, run vs run)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from stream.formulas import COUNT_FIELDS

# Fields that describe the emission rather than the metrics.
EMISSION_FIELDS = frozenset({"revision", "watermark", "final"})


def _is_empty(record: Mapping[str, object]) -> bool:
    return all(record[field] == 0 for field in COUNT_FIELDS)


def _same(left: object, right: object) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12)
    return left == right


def differences(
    actual: Mapping[str, Mapping[str, object]],
    expected: Mapping[str, Mapping[str, object]],
    ignore: frozenset[str] = EMISSION_FIELDS,
) -> list[str]:
    """Human-readable differences; a key present on one side only must be all zeros."""
    problems = []
    for key in sorted(actual.keys() | expected.keys()):
        left, right = actual.get(key), expected.get(key)
        if left is None or right is None:
            present = left if right is None else right
            assert present is not None
            if not _is_empty(present):
                side = "actual" if right is None else "expected"
                problems.append(f"{key}: only in {side}")
            continue
        for field in left.keys() - ignore:
            if not _same(left[field], right[field]):
                problems.append(f"{key}.{field}: {left[field]!r} != {right[field]!r}")
    return problems
