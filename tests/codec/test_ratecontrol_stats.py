"""ratecontrol.tensor_stats against a straightforward reference (the one-pass kernel must
give bit-identical statistics: they decide every step of a TargetRate packet)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import ratecontrol
from tenfold.codec.ratecontrol import EXACT_VALUES, STRIDE, TensorStats, tensor_stats


def _buckets_f64(x: np.ndarray) -> np.ndarray:
    # the float bucket of binary64 values (that of the value's binary32 rounding, by
    # frexp; -0.0 in bucket 0)
    m, e = np.frexp(np.abs(x))
    ex = np.clip(e.astype(np.int64) + 126, 0, 254)
    mant = np.minimum(15, ((2.0 * m - 1.0) * 16.0).astype(np.int64))
    b = np.where(m == 0.0, 0, (ex << 4) | mant)
    return np.where(x < 0, b | (1 << 12), b)


def _sum_squares(x: np.ndarray) -> float:
    # four sequential partial sums (value j in sum j % 4, the tail in sum 0), as the kernel
    s = [0.0, 0.0, 0.0, 0.0]
    n4 = x.size - x.size % 4
    for j, v in enumerate(x.astype(np.float64).tolist()):
        s[j % 4 if j < n4 else 0] += v * v
    return (s[0] + s[1]) + (s[2] + s[3])


def reference_stats(x: np.ndarray) -> TensorStats:
    """tensor_stats as first written: numpy's min and max, then a histogram of every
    stride-th value, then the RMS."""
    w_min, w_max = float(x.min()), float(x.max())
    finite = math.isfinite(w_min) and math.isfinite(w_max)
    n = x.size
    stride = 1 if n <= EXACT_VALUES else STRIDE
    if finite:
        sample = x[::stride]
        if x.dtype == np.float32:
            b = (sample.view(np.uint32) >> np.uint32(19)).astype(np.int64)
        else:
            b = _buckets_f64(sample)
        hist = np.bincount(b, minlength=ratecontrol.BUCKETS)
    else:
        hist = np.zeros(ratecontrol.BUCKETS, dtype=np.int64)
    used = np.flatnonzero(hist)
    lows = ratecontrol._LOWS[used].copy()
    highs = ratecontrol._HIGHS[used].copy()
    counts = (hist[used] * stride).astype(np.float64)
    if not finite:
        rms = math.inf
    elif stride == 1:
        sq = _sum_squares(x)
        if math.isfinite(sq):
            rms = math.sqrt(sq / n)
        else:
            amax = max(abs(w_min), abs(w_max))
            rms = amax * math.sqrt(float(np.mean(np.square(x / amax))))
    else:
        mid = 0.5 * (lows + highs)
        rms = math.sqrt(float(np.sum(counts * mid * mid)) / float(counts.sum()))
    return TensorStats(w_min, w_max, rms, n, finite, lows, highs, counts)


def assert_identical(got: TensorStats, want: TensorStats) -> None:
    for field in ("w_min", "w_max", "rms"):
        a, b = getattr(got, field), getattr(want, field)
        assert type(a) is float, field
        # bit patterns: -0.0 is not 0.0 here, a NaN equals a NaN
        assert np.float64(a).tobytes() == np.float64(b).tobytes() or (a != a and b != b), (
            field,
            a,
            b,
        )
    assert got.n == want.n and type(got.n) is int
    assert got.finite is want.finite
    for field in ("lows", "highs", "counts"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype == np.float64, field
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), field


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-38, -3.4e38, 3.4e38, math.inf,
            -math.inf, math.nan, 1e-300, -1e300, 5e-324]  # fmt: skip


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.sampled_from([1, 2, 3, 7, 64, 385, 4099, EXACT_VALUES, EXACT_VALUES + 1,
                              EXACT_VALUES + 13, 300_001]))  # fmt: skip
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["laplace", "wide", "zeros", "nonneg", "nonpos", "int"]))
    if kind == "laplace":
        x = rng.laplace(0.0, 10.0 ** rng.uniform(-8, 2), size=n)
    elif kind == "wide":  # magnitudes over the whole binary32 range (and beyond)
        x = rng.choice([-1.0, 1.0], size=n) * 10.0 ** rng.uniform(-50, 50, size=n)
    elif kind == "zeros":
        x = rng.choice([0.0, -0.0], size=n)
    elif kind == "nonneg":
        x = np.abs(rng.normal(size=n))
    elif kind == "nonpos":
        x = -np.abs(rng.normal(size=n))
    else:
        x = rng.integers(-3, 4, size=n).astype(np.float64)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    # a few special values at drawn positions (signed zeros, subnormals, extremes, NaN, Inf)
    for value in draw(st.lists(st.sampled_from(_SPECIAL), max_size=4)):
        with np.errstate(over="ignore"):
            x[draw(st.integers(0, n - 1))] = dtype(value)
    return x


@settings(deadline=None)
@given(arrays(), st.sampled_from([1, 2, 3]))
def test_tensor_stats_matches_the_reference(x: np.ndarray, threads: int) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        want = reference_stats(x)
        assert_identical(tensor_stats(x, threads), want)
        assert_identical(tensor_stats(x, 1), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [5, EXACT_VALUES + 7, 600_003])
@pytest.mark.parametrize("zeros", [(0.0, -0.0), (-0.0, 0.0)])
def test_signed_zero_extremes_are_numpys(dtype: type, n: int, zeros: tuple[float, float]) -> None:
    # a zero extreme with both zeros present: the sign numpy's min and max give
    x: np.ndarray = np.abs(np.random.default_rng(n).normal(size=n)).astype(dtype)
    x[n // 3] = zeros[0]
    x[2 * n // 3] = zeros[1]
    for y in (x, -x):
        for threads in (1, 2):
            assert_identical(tensor_stats(y, threads), reference_stats(y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 2047, 2048, 300_000, 599_999])
def test_non_finite_anywhere(dtype: type, bad: float, where: int) -> None:
    x: np.ndarray = np.random.default_rng(where).normal(size=600_000).astype(dtype)
    x[where] = bad
    for threads in (1, 2, 3):
        st_ = tensor_stats(x, threads)
        assert not st_.finite and st_.rms == math.inf and st_.counts.size == 0
        assert_identical(st_, reference_stats(x))
    # the per-thread scratch histogram was left clean: a finite tensor after it is exact
    y: np.ndarray = np.random.default_rng(1).normal(size=1000).astype(dtype)
    assert_identical(tensor_stats(y), reference_stats(y))


def test_float16_and_strided_inputs() -> None:
    x = np.random.default_rng(0).normal(size=3000)
    assert_identical(tensor_stats(x.astype(np.float16)), reference_stats(x.astype(np.float16)
                                                                        .astype(np.float64)))  # fmt: skip
    y = x.astype(np.float32)[::3]
    assert_identical(tensor_stats(y), reference_stats(np.ascontiguousarray(y)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_int64_counts_kernel_agrees(dtype: type) -> None:
    # tensors of 2**31 values or more count in int64 (too big to build here): the same
    # kernels with an int64 histogram give the same statistics
    x: np.ndarray = np.random.default_rng(2).laplace(size=EXACT_VALUES + 5).astype(dtype)
    kernel = ratecontrol._stats_f32 if dtype == np.float32 else ratecontrol._stats_f64
    hist = np.zeros((1, 2, ratecontrol.BUCKETS), dtype=np.int64)
    got = kernel(x, STRIDE, hist, ratecontrol._LOWS, ratecontrol._HIGHS)
    want = reference_stats(x)
    assert got[:3] == (want.w_min, want.w_max, 0)
    for a, b in zip(got[3:6], (want.lows, want.highs, want.counts), strict=True):
        assert a.tobytes() == b.tobytes()
    assert not hist.any()  # left zeroed
