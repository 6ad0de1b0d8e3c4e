"""The sender's per-sync arithmetic in single passes (numba), bit for bit the numpy
expressions they replace: the fresh delta's RMS without a delta array, and the coder's
input ``x = (w - w_shared) + e`` without a temporary (docs/PROTOCOL.md, "per-sync costs").

Each function takes float32 or float64 arrays of one dtype (C-contiguous, the same shape)
and falls back to the numpy expression for anything else (float16, bfloat16 held other
ways, mixed dtypes), so the result never depends on which path ran.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tenfold.codec.policy import rms

__all__ = ["delta_input", "delta_rms"]


def _fusable(*arrays: np.ndarray) -> bool:
    first = arrays[0]
    return first.dtype in (np.float32, np.float64) and all(
        a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous for a in arrays
    )


@njit(cache=True, nogil=True)
def _delta_rms_kernel(w: np.ndarray, ref: np.ndarray) -> float:
    # tenfold.codec.policy's _rms_kernel over d = w - ref (rounded to the arrays' dtype,
    # as np.subtract does): the same four float64 partial sums, in the same order.
    s0 = s1 = s2 = s3 = 0.0
    n = w.size
    n4 = n - n % 4
    for j in range(0, n4, 4):
        a0 = np.float64(w[j] - ref[j])
        a1 = np.float64(w[j + 1] - ref[j + 1])
        a2 = np.float64(w[j + 2] - ref[j + 2])
        a3 = np.float64(w[j + 3] - ref[j + 3])
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
    for j in range(n4, n):
        a = np.float64(w[j] - ref[j])
        s0 += a * a
    return math.sqrt(((s0 + s1) + (s2 + s3)) / n)


def delta_rms(w: np.ndarray, ref: np.ndarray) -> float:
    """``rms(w - ref)`` (float64 accumulation) without forming ``w - ref``; 0.0 when empty.

    Example:
        >>> delta_rms(np.array([3.0, 1.0], np.float32), np.array([0.0, 1.0], np.float32))
        2.1213203435596424
    """
    if w.size == 0:
        return 0.0
    if _fusable(w, ref):
        return float(_delta_rms_kernel(w.reshape(-1), ref.reshape(-1)))
    return rms(np.subtract(w, ref).reshape(-1))


@njit(cache=True, nogil=True)
def _delta_input_kernel(w: np.ndarray, ref: np.ndarray, e: np.ndarray, out: np.ndarray) -> None:
    for j in range(w.size):
        out[j] = (w[j] - ref[j]) + e[j]


@njit(cache=True, nogil=True)
def _delta_kernel(w: np.ndarray, ref: np.ndarray, out: np.ndarray) -> None:
    for j in range(w.size):
        out[j] = w[j] - ref[j]


def delta_input(w: np.ndarray, ref: np.ndarray, e: np.ndarray | None) -> np.ndarray:
    """A new array ``(w - ref) + e`` (``w - ref`` when ``e`` is None), in one pass.

    Example:
        >>> one = np.ones(3, np.float32)
        >>> delta_input(3 * one, one, one).tolist()
        [3.0, 3.0, 3.0]
    """
    arrays = (w, ref) if e is None else (w, ref, e)
    if not _fusable(*arrays):
        d = np.subtract(w, ref)
        if e is not None:
            np.add(d, e, out=d)
        return d
    out = np.empty(w.shape, dtype=w.dtype)
    if e is None:
        _delta_kernel(w.reshape(-1), ref.reshape(-1), out.reshape(-1))
    else:
        _delta_input_kernel(w.reshape(-1), ref.reshape(-1), e.reshape(-1), out.reshape(-1))
    return out
