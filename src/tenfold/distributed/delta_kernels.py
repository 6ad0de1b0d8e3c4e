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
from tenfold.errors import ConfigError

__all__ = [
    "all_finite",
    "apply_mean",
    "delta_input",
    "delta_input_rms",
    "delta_rms",
    "swap_difference",
]


def _fusable(*arrays: np.ndarray) -> bool:
    first = arrays[0]
    return first.dtype in (np.float32, np.float64) and all(
        a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous for a in arrays
    )


@njit(cache=True, nogil=True)
def _delta_rms_kernel(w: np.ndarray, ref: np.ndarray, e: np.ndarray, out: np.ndarray) -> float:
    # tenfold.codec.policy's _rms_kernel over d = w - ref (rounded to the arrays' dtype,
    # as np.subtract does): the same four float64 partial sums, in the same order. With a
    # non-empty ``out``, also out = d + e (``e`` empty: out = d) in the same pass: the
    # all-gather's chunks need both, and a second pass over w and ref cost as much as
    # the first (docs/PROTOCOL.md, "per-sync costs").
    s0 = s1 = s2 = s3 = 0.0
    n = w.size
    n4 = n - n % 4
    write = out.size > 0
    add = e.size > 0
    for j in range(0, n4, 4):
        d0 = w[j] - ref[j]
        d1 = w[j + 1] - ref[j + 1]
        d2 = w[j + 2] - ref[j + 2]
        d3 = w[j + 3] - ref[j + 3]
        if write:
            out[j] = d0 + e[j] if add else d0
            out[j + 1] = d1 + e[j + 1] if add else d1
            out[j + 2] = d2 + e[j + 2] if add else d2
            out[j + 3] = d3 + e[j + 3] if add else d3
        a0 = np.float64(d0)
        a1 = np.float64(d1)
        a2 = np.float64(d2)
        a3 = np.float64(d3)
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
    for j in range(n4, n):
        d = w[j] - ref[j]
        if write:
            out[j] = d + e[j] if add else d
        a = np.float64(d)
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
        empty = np.empty(0, dtype=w.dtype)
        return float(_delta_rms_kernel(w.reshape(-1), ref.reshape(-1), empty, empty))
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


def delta_input_rms(
    w: np.ndarray, ref: np.ndarray, e: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """:func:`delta_input` and :func:`delta_rms` (of ``w - ref``, without ``e``) in one
    pass over ``w`` and ``ref``, bit for bit what the two calls return.

    Example:
        >>> one = np.ones(2, np.float32)
        >>> x, r = delta_input_rms(3 * one, one, one)
        >>> x.tolist(), r
        ([3.0, 3.0], 2.0)
    """
    arrays = (w, ref) if e is None else (w, ref, e)
    if w.size == 0 or not _fusable(*arrays):
        return delta_input(w, ref, e), delta_rms(w, ref)
    out = np.empty(w.shape, dtype=w.dtype)
    e_flat = np.empty(0, dtype=w.dtype) if e is None else e.reshape(-1)
    r = _delta_rms_kernel(w.reshape(-1), ref.reshape(-1), e_flat, out.reshape(-1))
    return out, float(r)


@njit(cache=True, nogil=True)
def _apply_mean_kernel(
    total: np.ndarray,
    k: float,
    x: np.ndarray,
    own: np.ndarray,
    residual: np.ndarray,
    ref: np.ndarray,
    out: np.ndarray,
    advance: bool,
    plus: np.ndarray,
) -> None:
    # As apply_mean's numpy expressions, element by element in the arrays' dtype (``k``
    # arrives as that dtype's value, so ``total / k`` rounds as np.divide does).
    keep = residual.size > 0
    add = plus.size > 0
    for j in range(total.size):
        if keep:
            residual[j] = x[j] - own[j]
        t = total[j] + plus[j] if add else total[j]
        r = ref[j] + t / k
        if advance:
            ref[j] = r
        out[j] = r


def apply_mean(
    total: np.ndarray,
    k: int,
    ref: np.ndarray,
    out: np.ndarray,
    *,
    advance: bool,
    residual: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    plus: np.ndarray | None = None,
) -> None:
    """A delta sync's last step for one piece, in one pass: ``out = ref + total / k`` (and
    ``ref = out`` when ``advance``), and with ``residual = (x, own, e)`` the error
    feedback ``e = x - own``; bit for bit those numpy expressions in the arrays' dtype.

    ``total``: the rank-order sum of ``k`` decoded packets; ``out`` may be ``total``
    itself or the parameters' own memory. ``plus``: the sum's last contribution, not yet
    in ``total`` (``total + plus`` is divided: the addition the sum would have made, fused
    into this pass). Replaces four passes (the division, the residual, the reference's
    add, the copy into the parameters): docs/PROTOCOL.md, "per-sync costs".

    Example:
        >>> ref, total = np.ones(2, np.float32), np.array([2.0, 4.0], np.float32)
        >>> apply_mean(total, 2, ref, total, advance=True)
        >>> ref.tolist(), total.tolist()
        ([2.0, 3.0], [2.0, 3.0])
    """
    arrays = (total, ref, out) if residual is None else (total, ref, out, *residual)
    if plus is not None:
        arrays = (*arrays, plus)
    if _fusable(*arrays):
        kk = total.dtype.type(k)
        flat = [a.reshape(-1) for a in arrays]
        empty = np.empty(0, dtype=total.dtype)
        x, own, e = (empty, empty, empty) if residual is None else flat[3:6]
        extra = empty if plus is None else flat[-1]
        _apply_mean_kernel(flat[0], kk, x, own, e, flat[1], flat[2], advance, extra)
        return
    if plus is not None:  # rounded into the sum's dtype, as the sum's own add would be
        total = total.copy()
        np.add(total, plus, out=total)
    if residual is not None:
        x, own, e = residual
        np.subtract(x, own, out=e)
    mean = np.divide(total, total.dtype.type(k))
    np.add(ref, mean, out=out)
    if advance:
        np.copyto(ref, out)


@njit(cache=True, nogil=True)
def _swap_difference_kernel(ref: np.ndarray, w: np.ndarray) -> None:
    for j in range(ref.size):
        r = ref[j]
        ref[j] = r - w[j]
        w[j] = r


#: the fallback's piece (values): a bounded temporary instead of one as large as a tensor
SWAP_PIECE = 1 << 18


def swap_difference(ref: np.ndarray, w: np.ndarray) -> None:
    """In place, element by element: ``ref, w = ref - w, ref`` (both the same shape and
    dtype), bit for bit ``np.subtract`` in that dtype.

    DiLoCo's outer step forms its pseudo-gradient ``w_shared - w_avg`` where the
    reference held ``w_shared`` and puts ``w_shared`` back into the parameters. A
    temporary per tensor, freed and re-made at another size for the next, left up to 0.6x
    the model of freed heap resident after each outer step (README, host memory);
    here nothing larger than :data:`SWAP_PIECE` values is allocated.

    Example:
        >>> ref, w = np.array([3.0, 5.0], np.float32), np.ones(2, np.float32)
        >>> swap_difference(ref, w)
        >>> ref.tolist(), w.tolist()
        ([2.0, 4.0], [3.0, 5.0])
    """
    if ref.shape != w.shape or ref.dtype != w.dtype:
        raise ConfigError(
            f"swap_difference: arrays of one shape and dtype, got {ref.dtype}{ref.shape} "
            f"and {w.dtype}{w.shape}"
        )
    if _fusable(ref, w):
        _swap_difference_kernel(ref.reshape(-1), w.reshape(-1))
        return
    if not (ref.flags.c_contiguous and w.flags.c_contiguous):  # rare: one temporary
        d = np.subtract(ref, w)
        np.copyto(w, ref)
        np.copyto(ref, d)
        return
    flat_ref, flat_w = ref.reshape(-1), w.reshape(-1)  # views of contiguous arrays
    for lo in range(0, flat_ref.size, SWAP_PIECE):
        r, x = flat_ref[lo : lo + SWAP_PIECE], flat_w[lo : lo + SWAP_PIECE]
        d = np.subtract(r, x)
        np.copyto(x, r)
        np.copyto(r, d)


@njit(cache=True, nogil=True)
def _nonfinite_count_kernel(bits: np.ndarray, mask: int) -> int:
    # how many values have every exponent bit set (NaN or Inf): an integer count
    # vectorizes (2.9 ms per 25M float32 against numpy min + max's 6.0 ms; a running max
    # with a branch did not, 17 ms)
    n = 0
    for j in range(bits.size):
        n += (bits[j] & mask) == mask
    return n


#: the exponent field of each IEEE binary format, by unsigned view: all ones is NaN or Inf
_EXPONENT = {np.dtype(np.uint32): 0x7F800000, np.dtype(np.uint64): 0x7FF0000000000000}


def all_finite(a: np.ndarray) -> bool:
    """Whether ``a`` holds no NaN or Inf, in one pass over its bits (float32/float64; other
    dtypes through numpy). True when empty.

    The all-gather checks the whole model before its first exchange (docs/PROTOCOL.md);
    numpy's ``min`` and ``max`` took two passes over it.

    Example:
        >>> all_finite(np.array([1.0, -2.0], np.float32)), all_finite(np.array([np.inf]))
        (True, False)
    """
    if a.size == 0:
        return True
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous:
        bits = a.reshape(-1).view(np.uint32 if a.dtype == np.float32 else np.uint64)
        mask = _EXPONENT[bits.dtype]
        return int(_nonfinite_count_kernel(bits, bits.dtype.type(mask))) == 0
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))
