"""The mid-tread quantizer: known answers, the half-step bound, the clamp, and sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tenfold.codec.midtread import (
    LEVEL_LIMIT,
    LevelCounter,
    StepQuantizer,
    midtread_lut,
    midtread_symbols,
    sample_values,
)
from tenfold.codec.quantize import kernel_view


def test_known_levels_and_alphabet() -> None:
    # levels: round(x / 0.5) = -2, 0, 1 (0.3 / 0.5 = 0.6 -> 1), 2; qmin = -2, qmax = 2
    q = StepQuantizer.for_range(-1.0, 1.0, 0.5)
    assert (q.qmin, q.qmax, q.bits, q.needs_clamp) == (-2, 2, 3, False)
    sym, hist, clamped = midtread_symbols(np.array([-1.0, 0.1, 0.3, 1.0, 0.0]), q)
    assert sym.tolist() == [0, 2, 3, 4, 2]
    assert clamped == 0
    # value j goes to histogram row j % 4
    assert hist[0].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]  # values 0 and 4: symbols 0 and 2
    assert hist.sum() == 5


def test_zero_is_exact_and_half_up_rounds_up() -> None:
    q = StepQuantizer.for_range(-0.75, 0.75, 0.5)
    sym, _, _ = midtread_symbols(np.array([0.0, 0.25, -0.25, 0.75]), q)
    lut = midtread_lut(q.qmin, q.step, q.bits, np.dtype(np.float64))
    # floor(x / s + 0.5): 0.25 -> 1 (0.5), -0.25 -> 0, 0.75 -> 2 (1.0)
    assert lut[sym].tolist() == [0.0, 0.5, 0.0, 1.0]


def test_lut_is_one_product_then_one_cast() -> None:
    lut = midtread_lut(-3, 0.1, 3, np.dtype(np.float32))
    expected = (np.arange(-3, 5, dtype=np.float64) * 0.1).astype(np.float32)
    assert lut.tobytes() == expected.tobytes()
    assert midtread_lut(7, 0.25, 0, np.dtype(np.float32)).tolist() == [1.75]


def test_single_level_has_zero_bits() -> None:
    q = StepQuantizer.for_range(-0.1, 0.2, 10.0)
    assert (q.qmin, q.qmax, q.bits) == (0, 0, 0)


def test_clamp_is_counted() -> None:
    step = 1.0
    x = np.array([0.0, 40000.0, -40000.0, 5.0])
    q = StepQuantizer.for_range(float(x.min()), float(x.max()), step)
    assert q.needs_clamp and (q.qmin, q.qmax) == (-LEVEL_LIMIT, LEVEL_LIMIT)
    assert q.bits == 16
    sym, _, clamped = midtread_symbols(x, q)
    assert clamped == 2
    lut = midtread_lut(q.qmin, q.step, q.bits, np.dtype(np.float64))
    assert lut[sym].tolist() == [0.0, LEVEL_LIMIT, -LEVEL_LIMIT, 5.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 1e-320])
def test_bad_steps_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="step"):
        StepQuantizer.for_range(0.0, 1.0, bad)


@given(
    hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e3, 1e3, width=32)),
    st.floats(1e-3, 1e2),
)
def test_every_value_within_half_a_step_unless_clamped(x: np.ndarray, step: float) -> None:
    q = StepQuantizer.for_range(float(x.min()), float(x.max()), step)
    if q.bits == 0:
        return
    sym, _, clamped = midtread_symbols(kernel_view(x), q)
    decoded = midtread_lut(q.qmin, q.step, q.bits, np.dtype(np.float64))[sym]
    err = np.abs(decoded - x.astype(np.float64))
    inside = np.abs(x.astype(np.float64)) <= (LEVEL_LIMIT - 0.5) * step
    assert np.all(err[inside] <= step / 2 * (1 + 1e-9) + 1e-12)
    assert clamped == int(np.count_nonzero(err > step / 2 * (1 + 1e-9) + 1e-12))


def test_sample_is_deterministic_and_drawn_from_the_tensor() -> None:
    x = np.arange(100_000, dtype=np.float32)
    a = sample_values(x, 4096, seed=7)
    assert a.tolist() == sample_values(x, 4096, seed=7).tolist()
    assert a.tolist() != sample_values(x, 4096, seed=8).tolist()
    assert 4000 <= a.size <= 4096 and len(set(a.tolist())) == a.size
    assert np.array_equal(sample_values(x[:100], 4096, seed=0), x[:100].astype(np.float64))


def test_level_counter_counts_and_resets() -> None:
    c = LevelCounter(np.array([0.0, 0.1, 1.0, -1.0, 1.2]))
    assert sorted(c.counts(0.5).tolist()) == [1, 2, 2]  # levels -2, 0 (x2), 2 (x2)
    assert sorted(c.counts(0.5).tolist()) == [1, 2, 2]  # scratch was reset
    assert c.counts(100.0).tolist() == [5]


# ---- values beyond int64 levels: clamped to the nearest extreme, not wrapped ----------------
# |x / step| >= 2**63 once wrapped to INT64_MIN in the level's float -> int64 conversion
# (numba's math.floor returns an int64), so a huge positive value took the bottom level.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_values_clamp_to_the_nearest_extreme_level(dtype: type) -> None:
    x: np.ndarray = np.array([0.0, 1e30, -1e30, 0.5, 3e38, -2.0, 1e30, 7.0], dtype=dtype)
    q = StepQuantizer.for_range(float(x.min()), float(x.max()), 0.1)
    assert (q.qmin, q.qmax, q.needs_clamp) == (-LEVEL_LIMIT, LEVEL_LIMIT, True)
    for threads in (1, 2):
        sym, hist, clamped = midtread_symbols(kernel_view(x), q, threads)
        levels = sym.astype(np.int64) + q.qmin
        top, bottom = LEVEL_LIMIT, -LEVEL_LIMIT
        assert levels.tolist() == [0, top, bottom, 5, top, -20, top, 70]
        assert clamped == 4
        assert hist.sum() == x.size and hist[1, top - q.qmin] == 1  # value 1 is row 1's


def test_range_beyond_binary64_levels_is_clamped_not_an_overflow() -> None:
    # w * (1 / step) overflows to inf: math.floor(inf) raised OverflowError
    q = StepQuantizer.for_range(-1e30, 1e30, 1e-300)
    assert (q.qmin, q.qmax, q.bits, q.needs_clamp) == (-LEVEL_LIMIT, LEVEL_LIMIT, 16, True)
    sym, _, clamped = midtread_symbols(np.array([1e30, -1e30, 0.0, 1e-310]), q)
    assert (sym.astype(np.int64) + q.qmin).tolist() == [LEVEL_LIMIT, -LEVEL_LIMIT, 0, 0]
    assert clamped == 2
    q = StepQuantizer.for_range(1e30, 2e30, 1e-300)  # wholly beyond the clamp: one level
    assert (q.qmin, q.qmax, q.bits) == (LEVEL_LIMIT, LEVEL_LIMIT, 0)


def test_level_counter_clamps_huge_values_to_the_top_level() -> None:
    # counts in order of first appearance: 1e30, 1e6 and 3e38 share the top level
    c = LevelCounter(np.array([1e30, 1e6, 0.0, 3e38]))
    assert c.counts(0.1).tolist() == [3, 1]
    assert c.counts(1e-300).tolist() == [3, 1]  # x / step beyond binary64
    c = LevelCounter(np.array([1e30, -1e30, -1e6]))
    assert c.counts(0.1).tolist() == [1, 2]  # the top level, then the bottom one
