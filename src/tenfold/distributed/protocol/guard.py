"""The contribution guard: a rank whose decoded contribution's RMS exceeds a multiple of
the median rank's makes every rank raise :class:`ContributionRatioError`, before anything
is applied (the sums of squares are computed alike on every rank)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from tenfold.distributed.errors import ContributionRatioError
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "check_contributions",
    "check_ratio",
    "sum_of_squares",
    "totals_over_shards",
]


def check_ratio(ratio: float | None) -> float | None:
    """``max_contribution_ratio`` validated: None (off) or a finite number > 1."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise InputTypeError(f"max_contribution_ratio must be a number or None, got {ratio!r}")
    if not (math.isfinite(ratio) and ratio > 1):
        raise ConfigError(f"max_contribution_ratio must be finite and > 1, got {ratio!r}")
    return float(ratio)


def sum_of_squares(arrays: Mapping[str, np.ndarray]) -> float:
    """Sum of the squares of every value, in float64, array by array in order.

    Deterministic (same inputs, same bits), so ranks that compute it on the same decoded
    values agree on every decision taken from it.
    """
    total = 0.0
    for a in arrays.values():
        flat = a.reshape(-1).astype(np.float64, copy=False)
        total += float(np.dot(flat, flat))
    return total


def totals_over_shards(parts: Sequence[Sequence[float]]) -> list[float]:
    """Rank i's sum of squares from ``parts[j][i]`` (reducer j's share), added in shard
    order: the same float additions on every rank and in the simulation."""
    world = len(parts[0]) if parts else 0
    return [sum(row[i] for row in parts) for i in range(world)]


def check_contributions(
    sumsq: Sequence[float], num_values: int, limit: float | None, round: int
) -> None:
    """Raise :class:`ContributionRatioError` if some rank's RMS > ``limit`` x the median.

    ``sumsq``: each rank's sum of squares of its decoded contribution (every value of the
    model); every rank must pass the same numbers, so every rank decides the same. A
    median of 0 flags every rank that sent anything non-zero.
    """
    if limit is None or num_values == 0:
        return
    rms = [math.sqrt(max(s, 0.0) / num_values) for s in sumsq]
    median = float(np.median(rms))
    if any(v > limit * median and (v > 0 or median > 0) for v in rms):
        raise ContributionRatioError(rms, limit, round)
