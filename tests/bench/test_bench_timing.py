"""tenfold.bench.timing: the measuring helpers (their arithmetic and call order, never a
speed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tenfold.bench import timing


def test_paired_speedup_interleaves_and_divides_the_medians(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    # a fake clock: each call of `base` takes 3 ticks, each call of `other` 1 tick
    clock = itertools.count()
    now = [0.0]

    def tick(n: int) -> None:
        for _ in range(n):
            now[0] = float(next(clock))

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def base() -> None:
        calls.append("A")
        tick(3)

    def other() -> None:
        calls.append("B")
        tick(1)

    ratio = timing.paired_speedup(base, other, 4)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]  # warm-ups, then ABBA
    assert ratio == pytest.approx(3.0)


def test_mvps_and_rel_rmse() -> None:
    assert timing.mvps(2_000_000, 0.5) == 4.0
    x = {"a": np.array([3.0, 4.0])}
    assert timing.rel_rmse(x, x) == 0.0
    assert timing.rel_rmse({"z": np.zeros(2)}, {"z": np.ones(2)}) == 0.0  # no reference energy
