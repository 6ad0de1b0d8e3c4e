"""Measuring: the median of timed runs, the peak memory of a call, the error of a set."""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["median_seconds", "mvps", "paired_speedup", "peak_bytes", "rel_rmse"]


def median_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time (s) of ``reps`` calls of ``fn``, after one untimed warm-up call
    (numba's first call compiles or loads its cache; the first touch of fresh memory)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def paired_speedup(base: Callable[[], Any], other: Callable[[], Any], reps: int) -> float:
    """How many times faster ``other`` runs than ``base``: the ratio of their median wall
    times over ``reps`` interleaved pairs (A B, then B A, ...), after a warm-up call of each.

    Interleaving puts both under the same conditions: on a VM whose speed drifts by tens
    of percent from minute to minute, two medians taken one after the other compare the
    minutes as much as the code.
    """
    base()
    other()
    times: dict[int, list[float]] = {0: [], 1: []}
    calls = (base, other)
    for rep in range(reps):
        for which in (0, 1) if rep % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            calls[which]()
            times[which].append(time.perf_counter() - t0)
    return float(np.median(times[0]) / np.median(times[1]))


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak memory (bytes; tracemalloc, numpy buffers included) ``fn`` allocates beyond
    what was allocated when it started."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return int(peak)


def rel_rmse(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> float:
    """``sqrt(sum (out - ref)^2 / sum ref^2)`` over every value of the set (float64 sums).

    Example:
        >>> rel_rmse({"a": np.array([1.0, 1.0])}, {"a": np.array([1.0, 0.0])})
        0.7071067811865476
    """
    num = sum(float(np.sum((out[k].astype(np.float64) - v) ** 2)) for k, v in ref.items())
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in ref.values())
    return math.sqrt(num / den) if den > 0 else 0.0


def mvps(n: int, seconds: float) -> float:
    """``n`` values in ``seconds``, in millions of values per second (1 decimal)."""
    return round(n / seconds / 1e6, 1)
