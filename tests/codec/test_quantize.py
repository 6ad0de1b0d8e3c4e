"""Quantizer, dequantization LUT, min/max and the sampled entropy estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tenfold
from tenfold.codec.quantize import (
    Quantizer,
    dequantization_lut,
    entropy_bits,
    finite_min_max,
    kernel_view,
    quantize,
    quantize_histogram,
    sample_size,
    sampled_entropy,
)

from .conftest import half_bin_bound


def test_bins_follow_the_errata_formula() -> None:
    # i = floor(2^N (w - w_min) / (w_max - w_min)), clamped to [0, 2^N - 1]
    x = np.array([0.0, 0.24, 0.25, 0.5, 0.74, 0.99, 1.0])
    idx = quantize(x, Quantizer.for_range(0.0, 1.0, 2))
    assert idx.tolist() == [0, 0, 1, 2, 2, 3, 3]  # the top value is clamped into bin 3


def test_histogram_counts_per_stream() -> None:
    x = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)
    idx, hist = quantize_histogram(x, Quantizer.for_range(0.0, 1.0, 1))
    assert idx.tolist() == [0, 1, 1, 1, 0, 0]
    # value j belongs to stream j % 4
    assert hist.tolist() == [[2, 0], [1, 1], [0, 1], [0, 1]]


def test_lut_is_bin_centres() -> None:
    lut = dequantization_lut(Quantizer.for_range(-1.0, 1.0, 2), np.dtype(np.float64))
    assert lut.tolist() == [-0.75, -0.25, 0.25, 0.75]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bits", [1, 3, 8, 12, 16])
def test_half_bin_bound(dtype: type, bits: int, rng: np.random.Generator) -> None:
    x: np.ndarray = rng.normal(size=2000).astype(dtype)
    lo, hi, ok = finite_min_max(x)
    assert ok
    q = Quantizer.for_range(lo, hi, bits)
    xhat = dequantization_lut(q, np.dtype(dtype))[quantize(kernel_view(x), q)]
    err = np.abs(xhat.astype(np.float64) - x.astype(np.float64)).max()
    ulp = float(np.spacing(np.asarray(max(abs(lo), abs(hi)), dtype=dtype)))
    assert err <= half_bin_bound(lo, hi, bits) + ulp


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (-1e308, 1e308),  # w_max - w_min overflows float64
        (-1.7976931348623157e308, 1.7976931348623157e308),
        (0.0, 5e-324),  # a range of one subnormal
        (-3e-310, 7e-310),
        (1e300, 1e300 * (1 + 2**-50)),
    ],
)
def test_extreme_float64_ranges(lo: float, hi: float) -> None:
    x = np.linspace(lo, hi, 101) if math.isfinite(hi - lo) else np.array([lo, 0.0, hi])
    x = np.concatenate([x, [lo, hi]])
    q = Quantizer.for_range(lo, hi, 8)
    assert math.isfinite(q.inv) and math.isfinite(q.dp) and q.dp > 0
    idx = quantize(x, q)
    assert idx.min() == 0 and idx.max() == 255
    xhat = dequantization_lut(q, np.dtype(np.float64))[idx]
    assert np.all(np.isfinite(xhat))
    assert np.all((xhat >= lo) & (xhat <= hi))
    err = np.abs(xhat / 2 - x / 2).max() * 2  # halves: no overflow for +-1e308
    assert err <= half_bin_bound(lo, hi, 8) * (1 + 1e-9) + 5e-324


def test_finite_min_max_flags_nan_and_inf() -> None:
    assert finite_min_max(np.array([1.0, 2.0])) == (1.0, 2.0, True)
    assert not finite_min_max(np.array([1.0, np.nan, 2.0]))[2]
    assert not finite_min_max(np.array([np.inf, 2.0]))[2]
    assert not finite_min_max(np.array([-np.inf], dtype=np.float16))[2]


def test_entropy_known_values() -> None:
    assert entropy_bits(np.array([4, 2, 1, 1])) == 1.75
    assert entropy_bits(np.array([5, 0, 0])) == 0.0
    assert math.copysign(1.0, entropy_bits(np.array([5]))) == 1.0  # +0.0, not -0.0
    assert entropy_bits(np.ones(1024)) == pytest.approx(10.0)


def test_sample_size() -> None:
    assert sample_size(10, 0.03) == 1  # at least one value
    assert sample_size(1000, 0.03) == 30
    assert sample_size(1000, 1.0) == 1000
    with pytest.raises(ValueError):
        sample_size(0, 0.5)


def test_full_sample_is_the_whole_tensor(rng: np.random.Generator) -> None:
    x = rng.normal(size=1001)
    lo, hi = float(x.min()), float(x.max())
    q = Quantizer.for_range(lo, hi, 4)
    exact = entropy_bits(np.bincount(quantize(x, q), minlength=16))
    assert sampled_entropy(x, lo, hi, bits=4, fraction=1.0, seed=7) == exact


def test_sampled_entropy_is_seeded_and_close(rng: np.random.Generator) -> None:
    x = rng.laplace(size=200_000)
    lo, hi = float(x.min()), float(x.max())
    full = sampled_entropy(x, lo, hi, bits=4, fraction=1.0, seed=0)
    a = sampled_entropy(x, lo, hi, bits=4, fraction=0.03, seed=1)
    b = sampled_entropy(x, lo, hi, bits=4, fraction=0.03, seed=1)
    c = sampled_entropy(x, lo, hi, bits=4, fraction=0.03, seed=2)
    d = sampled_entropy(x, lo, hi, bits=4, fraction=0.03, seed=1, position=1)
    assert a == b  # same seed, same estimate
    assert len({a, c, d}) == 3  # other seeds / positions draw other samples
    assert abs(a - full) < 0.05 and abs(c - full) < 0.05


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 33, 1000])
@pytest.mark.parametrize("fraction", [1e-6, 0.03, 0.5, 0.999])
def test_sampling_small_tensors_stays_in_bounds(n: int, fraction: float) -> None:
    x = np.arange(n, dtype=np.float32)
    h = sampled_entropy(x, 0.0, float(max(n - 1, 1)), bits=4, fraction=fraction, seed=5)
    assert 0.0 <= h <= 4.0


def test_quantizer_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError):
        Quantizer.for_range(1.0, 1.0, 4)
    with pytest.raises(ValueError):
        Quantizer.for_range(0.0, math.inf, 4)
    with pytest.raises(ValueError):
        Quantizer.for_range(0.0, 1.0, 25)


def test_the_clamp_keeps_a_bounds_value_with_its_own_sign() -> None:
    """FORMAT.md 4.1: with w_min = -0.0 the first bin's centre rounds to +0.0, which equals
    the bound and is kept (np.clip), not replaced by the bound's -0.0 (as fmax may)."""
    blob = tenfold.compress({"a": np.array([-0.0, 5e-324])}, tenfold.Fixed(2))
    info = tenfold.inspect(blob).tensors[0]
    assert info.w_min == 0.0 and np.signbit(info.w_min)
    out = tenfold.decompress(blob)["a"]
    assert out.tolist() == [0.0, 5e-324] and not np.signbit(out[0])
