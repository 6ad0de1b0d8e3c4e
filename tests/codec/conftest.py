"""Fixtures and helpers shared by the codec tests."""

from __future__ import annotations

import numpy as np
import pytest


def weight_like(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Laplacian bulk (b = 0.05) with a few outliers: what a trained layer looks like."""
    x = rng.laplace(0.0, 0.05, size=shape)
    flat = x.reshape(-1)
    if flat.size:
        k = max(1, flat.size // 1000)
        flat[rng.choice(flat.size, k, replace=False)] *= 20.0
    return x.astype(dtype)


def half_bin_bound(w_min: float, w_max: float, bits: int) -> float:
    """(w_max - w_min) / 2**(bits + 1), computed without overflow for float64 extremes."""
    return w_max / 2.0 ** (bits + 1) - w_min / 2.0 ** (bits + 1)


def rounding_slack(x: np.ndarray) -> float:
    """Output-dtype rounding (one ulp at the largest magnitude) + float64 quantizer noise."""
    big = float(np.max(np.abs(x.astype(np.float64)))) if x.size else 0.0
    ulp = float(np.finfo(x.dtype).eps) * big  # >= the spacing of every |value| <= big
    tiny = float(np.finfo(x.dtype).smallest_subnormal)
    return ulp + big * 2.0**-45 + tiny


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
