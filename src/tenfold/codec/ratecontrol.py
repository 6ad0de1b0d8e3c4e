"""Packet-level rate control for :class:`~tenfold.codec.policy.TargetRate`.

One pass per tensor (:func:`tensor_stats`) gives its range, its RMS and a histogram of its
values over :data:`BUCKETS` float buckets (sign, exponent and 3 mantissa bits of the
binary32 value: 1/16-octave wide). From those histograms alone, :func:`plan_steps` finds one
multiplier ``alpha`` for the whole packet, each tensor's step being ``alpha * RMS``
(the same relative error everywhere), such that the modelled packet size meets the
budget ``bits_per_param * values / 8`` bytes, headers and tables included. Its cost is
O(tensors * occupied buckets) per trial, not O(values): no re-sampling, no per-tensor
bisection.

The model of a tensor's coded size at step ``s``: each bucket's count is spread uniformly
over its value range and apportioned to the levels ``round(x / s)`` it overlaps (wide
buckets, more than :data:`_SPREAD_LEVELS` levels, in closed form); the payload is the
empirical entropy of those level counts (ANS codes within a fraction of a percent of it),
the table about 1.25 bytes per used level.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import partial

import numpy as np
from numba import njit

from tenfold.codec.midtread import LEVEL_LIMIT
from tenfold.codec.parallel import run_in_order
from tenfold.codec.quantize import finite_min_max

__all__ = [
    "BUCKETS",
    "PacketModel",
    "TensorStats",
    "level_counts",
    "plan_alpha",
    "steps_for",
    "tensor_stats",
]

#: float buckets: the top 13 bits of a binary32 (sign, exponent, 4 mantissa bits)
BUCKETS = 1 << 13
_SHIFT = 19
#: buckets spanning more levels than this are modelled in closed form
_SPREAD_LEVELS = 32
#: values per chunk of the histogram pass (a multiple of STRIDE)
_BLOCK = 1 << 18
#: tensors up to this many values: every value in the histogram, an exact RMS
EXACT_VALUES = 1 << 16
#: larger tensors: every STRIDE-th value in the histogram
STRIDE = 4
#: the level range modelled level by level (beyond it: closed form)
_MODEL_LEVELS = 4096


#: values per block of the one-pass scan: the range pass reads them from memory, the
#: histogram pass from L1 (measured on a CharGPT pseudo-gradient: 2048 beats 512 to 4096)
_SCAN = 2048
_I32_MAX = (1 << 31) - 1
_I64_MAX = (1 << 63) - 1
#: magnitudes (sign bit cleared) from these on are Inf or NaN
_INF32 = 0x7F800000
_INF64 = 0x7FF0000000000000


@njit(cache=True, nogil=True)
def _extremes_i32(v: np.ndarray) -> tuple[int, int, int, int]:
    # (min key, max key, min magnitude, max magnitude) of binary32 bit patterns, as int32:
    # the key (sign-magnitude made two's complement) orders like the floats, with
    # -0.0 < 0.0 and NaNs beyond the infinities. Integer reductions vectorise (float ones
    # do not without fastmath, which would drop the NaN semantics)
    kmin = np.int32(_I32_MAX)
    kmax = np.int32(-_I32_MAX - 1)
    mmin = np.int32(_I32_MAX)
    mmax = np.int32(0)
    for j in range(v.size):  # range(size), not (lo, hi): numba then skips the index checks
        w = v[j]
        k = np.int32(w ^ ((w >> np.int32(31)) & np.int32(_I32_MAX)))
        m = np.int32(w & np.int32(_I32_MAX))
        if k < kmin:
            kmin = k
        if k > kmax:
            kmax = k
        if m < mmin:
            mmin = m
        if m > mmax:
            mmax = m
    return kmin, kmax, mmin, mmax


@njit(cache=True, nogil=True)
def _extremes_i64(v: np.ndarray) -> tuple[int, int, int, int]:
    # as _extremes_i32, for binary64 bit patterns
    kmin = np.int64(_I64_MAX)
    kmax = np.int64(-_I64_MAX - 1)
    mmin = np.int64(_I64_MAX)
    mmax = np.int64(0)
    for j in range(v.size):
        w = v[j]
        k = w ^ ((w >> np.int64(63)) & np.int64(_I64_MAX))
        m = w & np.int64(_I64_MAX)
        if k < kmin:
            kmin = k
        if k > kmax:
            kmax = k
        if m < mmin:
            mmin = m
        if m > mmax:
            mmax = m
    return kmin, kmax, mmin, mmax


@njit(cache=True, nogil=True)
def _hist_f32(bits: np.ndarray, stride: int, hist: np.ndarray) -> None:
    # the bucket of every stride-th value, alternately into two rows (repeated buckets
    # would otherwise wait on each other's stores; four rows measured slower)
    h0 = hist[0]
    h1 = hist[1]
    n = bits.size
    step = 2 * stride
    last = n - n % step
    for j in range(0, last, step):
        h0[bits[j] >> 19] += 1
        h1[bits[j + stride] >> 19] += 1
    for j in range(last, n, stride):
        h0[bits[j] >> 19] += 1


@njit(cache=True, nogil=True)
def _hist_f64(x: np.ndarray, stride: int, hist: np.ndarray, ext: np.ndarray) -> None:
    # as _hist_f32, for finite binary64 values: the bucket of the value rounded to binary32
    # (saturating at its largest exponent); ext[4], ext[5]: the least and greatest bucket
    # magnitude (sign bit cleared) seen
    bmin = ext[4]
    bmax = ext[5]
    for j in range(0, x.size, stride):
        a = x[j]
        m, e = math.frexp(abs(a))
        if m == 0.0:
            b = 0
        else:
            ex = min(max(e + 126, 0), 254)  # binary32 biased exponent of |a| = m * 2**e
            b = (ex << 4) | min(15, int((2.0 * m - 1.0) * 16.0))
        bmin = min(bmin, b)
        bmax = max(bmax, b)
        if a < 0:
            b |= 1 << 12
        hist[0, b] += 1
    ext[4] = bmin
    ext[5] = bmax


@njit(cache=True, nogil=True)
def _init_ext(ext: np.ndarray) -> None:
    # the running extremes of _scan_f32 / _scan_f64 before any value
    ext[0] = _I64_MAX  # least key
    ext[1] = -_I64_MAX - 1  # greatest key
    ext[2] = _I64_MAX  # least magnitude
    ext[3] = 0  # greatest magnitude
    ext[4] = BUCKETS  # least bucket magnitude histogrammed
    ext[5] = -1  # greatest bucket magnitude histogrammed


@njit(cache=True, nogil=True)
def _scan_f32(
    ints: np.ndarray, bits: np.ndarray, stride: int, hist: np.ndarray, ext: np.ndarray
) -> None:
    # one pass over binary32 values (`ints`, `bits`: their int32 and uint32 views): ext
    # (see _init_ext) merged with the values' extremes, every stride-th value's bucket
    # added to hist (2 rows). Stops at the first block holding a NaN or an Inf (the
    # histogram is then not used). `ints` starts at a multiple of the stride.
    n = ints.size
    for lo in range(0, n, _SCAN):
        hi = min(lo + _SCAN, n)
        kmin, kmax, mmin, mmax = _extremes_i32(ints[lo:hi])
        ext[0] = min(ext[0], kmin)
        ext[1] = max(ext[1], kmax)
        ext[2] = min(ext[2], mmin)
        ext[3] = max(ext[3], mmax)
        if mmax >= _INF32:
            break
        _hist_f32(bits[lo:hi], stride, hist)
    if n:  # the bucket magnitude is bits 19..30: within those of the extreme magnitudes
        ext[4] = min(ext[4], ext[2] >> 19)
        ext[5] = max(ext[5], ext[3] >> 19)


@njit(cache=True, nogil=True)
def _scan_f64(
    ints: np.ndarray, x: np.ndarray, stride: int, hist: np.ndarray, ext: np.ndarray
) -> None:
    # as _scan_f32, for binary64 values (`ints`: their int64 view)
    n = ints.size
    for lo in range(0, n, _SCAN):
        hi = min(lo + _SCAN, n)
        kmin, kmax, mmin, mmax = _extremes_i64(ints[lo:hi])
        ext[0] = min(ext[0], kmin)
        ext[1] = max(ext[1], kmax)
        ext[2] = min(ext[2], mmin)
        ext[3] = max(ext[3], mmax)
        if mmax >= _INF64:
            break
        _hist_f64(x[lo:hi], stride, hist, ext)


@njit(cache=True, nogil=True)
def _collect(
    hists: np.ndarray,
    stride: int,
    bmin: int,
    bmax: int,
    all_lows: np.ndarray,
    all_highs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # the occupied buckets of the summed histograms, in bucket order; every bucket used
    # has a magnitude (bucket & 0xFFF) within [bmin, bmax], and those are left zeroed
    half = BUCKETS // 2
    used = 0
    for base in (0, half):
        for b in range(base + bmin, base + bmax + 1):
            for w in range(hists.shape[0]):
                if hists[w, 0, b] or hists[w, 1, b]:
                    used += 1
                    break
    lows = np.empty(used, dtype=np.float64)
    highs = np.empty(used, dtype=np.float64)
    counts = np.empty(used, dtype=np.float64)
    i = 0
    for base in (0, half):
        for b in range(base + bmin, base + bmax + 1):
            c = 0
            for w in range(hists.shape[0]):
                c += np.int64(hists[w, 0, b]) + np.int64(hists[w, 1, b])
                hists[w, 0, b] = 0
                hists[w, 1, b] = 0
            if c:
                lows[i] = all_lows[b]
                highs[i] = all_highs[b]
                counts[i] = np.float64(c * stride)
                i += 1
    return lows, highs, counts


@njit(cache=True, nogil=True)
def _key_f32(k: int) -> float:
    # the binary32 value of an _extremes_i32 key (the key map is its own inverse)
    w = np.empty(1, dtype=np.int32)
    w[0] = np.int32(k ^ ((k >> 31) & _I32_MAX))
    return np.float64(w.view(np.float32)[0])


@njit(cache=True, nogil=True)
def _key_f64(k: int) -> float:
    w = np.empty(1, dtype=np.int64)
    w[0] = k ^ ((k >> 63) & _I64_MAX)
    return w.view(np.float64)[0]


@njit(cache=True, nogil=True)
def _finish(
    hists: np.ndarray,
    ext: np.ndarray,
    stride: int,
    f32: bool,
    all_lows: np.ndarray,
    all_highs: np.ndarray,
) -> tuple[float, float, int, np.ndarray, np.ndarray, np.ndarray]:
    # (w_min, w_max, status, lows, highs, counts) from the scans' histograms (left zeroed)
    # and extremes (one row of ext per scan); status 0: exact, 1: not finite, 2: an
    # extreme is a zero (whose sign, with both zeros present, is numpy's choice). w_min
    # and w_max only hold for status 0.
    kmin = ext[0, 0]
    kmax = ext[0, 1]
    mmax = ext[0, 3]
    bmin = ext[0, 4]
    bmax = ext[0, 5]
    for w in range(1, ext.shape[0]):
        kmin = min(kmin, ext[w, 0])
        kmax = max(kmax, ext[w, 1])
        mmax = max(mmax, ext[w, 3])
        bmin = min(bmin, ext[w, 4])
        bmax = max(bmax, ext[w, 5])
    lows, highs, counts = _collect(hists, stride, bmin, bmax, all_lows, all_highs)
    if f32:
        finite = mmax < _INF32
        w_min, w_max = _key_f32(kmin), _key_f32(kmax)
    else:
        finite = mmax < _INF64
        w_min, w_max = _key_f64(kmin), _key_f64(kmax)
    if not finite:
        return w_min, w_max, 1, lows[:0], highs[:0], counts[:0]
    status = 2 if w_min == 0.0 or w_max == 0.0 else 0
    return w_min, w_max, status, lows, highs, counts


@njit(cache=True, nogil=True)
def _stats_f32(
    x: np.ndarray, stride: int, hist: np.ndarray, all_lows: np.ndarray, all_highs: np.ndarray
) -> tuple[float, float, int, np.ndarray, np.ndarray, np.ndarray, float]:
    # a single-threaded tensor_stats of binary32 values in one call (the histogram `hist`,
    # shape (1, 2, BUCKETS), zeroed, is left zeroed): _finish's results and the sum of
    # squares if stride == 1
    ext = np.empty((1, 6), dtype=np.int64)
    _init_ext(ext[0])
    _scan_f32(x.view(np.int32), x.view(np.uint32), stride, hist[0], ext[0])
    w_min, w_max, status, lows, highs, counts = _finish(
        hist, ext, stride, True, all_lows, all_highs
    )
    sq = _sum_squares(x) if stride == 1 and status != 1 else 0.0
    return w_min, w_max, status, lows, highs, counts, sq


@njit(cache=True, nogil=True)
def _stats_f64(
    x: np.ndarray, stride: int, hist: np.ndarray, all_lows: np.ndarray, all_highs: np.ndarray
) -> tuple[float, float, int, np.ndarray, np.ndarray, np.ndarray, float]:
    # as _stats_f32, for binary64 values
    ext = np.empty((1, 6), dtype=np.int64)
    _init_ext(ext[0])
    _scan_f64(x.view(np.int64), x, stride, hist[0], ext[0])
    w_min, w_max, status, lows, highs, counts = _finish(
        hist, ext, stride, False, all_lows, all_highs
    )
    sq = _sum_squares(x) if stride == 1 and status != 1 else 0.0
    return w_min, w_max, status, lows, highs, counts, sq


@njit(cache=True, nogil=True)
def _sum_squares(x: np.ndarray) -> float:
    # float64 sum of squares in four partial sums (deterministic)
    s0 = s1 = s2 = s3 = 0.0
    n4 = x.size - x.size % 4
    for j in range(0, n4, 4):
        s0 += np.float64(x[j]) * np.float64(x[j])
        s1 += np.float64(x[j + 1]) * np.float64(x[j + 1])
        s2 += np.float64(x[j + 2]) * np.float64(x[j + 2])
        s3 += np.float64(x[j + 3]) * np.float64(x[j + 3])
    for j in range(n4, x.size):
        s0 += np.float64(x[j]) * np.float64(x[j])
    return (s0 + s1) + (s2 + s3)


@dataclass(frozen=True)
class TensorStats:
    """What rate control knows about one tensor (from one pass over it).

    Attributes:
        w_min, w_max: its range (finite only if every value is finite).
        rms: root mean square, float64 accumulation.
        n: number of values.
        finite: every value is finite.
        lows, highs, counts: the occupied buckets: value ranges ``[low, high)`` (for
            negative buckets ``(low, high]`` mirrored: ``low < high`` always) and counts.
    """

    w_min: float
    w_max: float
    rms: float
    n: int
    finite: bool
    lows: np.ndarray
    highs: np.ndarray
    counts: np.ndarray


def _bucket_edges() -> tuple[np.ndarray, np.ndarray]:
    b = np.arange(BUCKETS, dtype=np.uint64)
    with np.errstate(invalid="ignore"):
        return _edges(b)


def _edges(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = (b << np.uint64(_SHIFT)).astype(np.uint32).view(np.float32).astype(np.float64)
    nxt = ((b + np.uint64(1)) << np.uint64(_SHIFT)) & np.uint64(0xFFFFFFFF)
    stop = nxt.astype(np.uint32).view(np.float32).astype(np.float64)
    flt_max = float(np.finfo(np.float32).max)
    start, stop = np.abs(start), np.abs(stop)
    stop = np.where(np.isfinite(stop) & (stop >= start), stop, flt_max)
    start = np.minimum(start, flt_max)
    neg = b >= BUCKETS // 2  # the sign bit: the interval mirrored, still low < high
    return np.where(neg, -stop, start), np.where(neg, -start, stop)


_LOWS, _HIGHS = _bucket_edges()


_local = threading.local()


def _scratch_hist() -> np.ndarray:
    # this thread's histogram, (1, 2, BUCKETS) uint32, all zero between calls (the kernels
    # zero what they used): a fresh 64 KiB np.zeros cost more than the scan of a small
    # tensor
    hist = getattr(_local, "hist", None)
    if hist is None:
        hist = _local.hist = np.zeros((1, 2, BUCKETS), dtype=np.uint32)
    return hist


def _stats_threads(
    x: np.ndarray, stride: int, threads: int
) -> tuple[float, float, int, np.ndarray, np.ndarray, np.ndarray]:
    # _finish's results from chunks of _BLOCK values scanned by up to `threads` workers;
    # chunks start at multiples of the stride: the same values counted whatever the split
    n = x.size
    bounds = [(lo, min(lo + _BLOCK, n)) for lo in range(0, n, _BLOCK)]
    workers = max(1, min(threads, len(bounds)))
    runs = [bounds[w * len(bounds) // workers : (w + 1) * len(bounds) // workers]
            for w in range(workers)]  # fmt: skip
    hists = np.zeros((workers, 2, BUCKETS), dtype=np.uint32 if n < 1 << 31 else np.int64)
    ext = np.empty((workers, 6), dtype=np.int64)
    f32 = x.dtype == np.float32
    ints = x.view(np.int32 if f32 else np.int64)
    other = x.view(np.uint32) if f32 else x

    def one(w: int) -> None:
        _init_ext(ext[w])
        for lo, hi in runs[w]:
            if f32:
                _scan_f32(ints[lo:hi], other[lo:hi], stride, hists[w], ext[w])
            else:
                _scan_f64(ints[lo:hi], other[lo:hi], stride, hists[w], ext[w])

    run_in_order([partial(one, w) for w in range(workers)], threads)
    return _finish(hists, ext, stride, bool(f32), _LOWS, _HIGHS)


def tensor_stats(x: np.ndarray, threads: int = 1) -> TensorStats:
    """Range, RMS and bucket histogram of a non-empty 1-D float32/float64 array.

    The range is exact, and equal to numpy's min and max: one pass finds it from the
    values' bit patterns together with the histogram, and defers to numpy where the choice
    is numpy's (a NaN or Inf present, or a zero extreme: which sign). Tensors of
    :data:`EXACT_VALUES` values or fewer get every value in the histogram and an exact
    RMS (float64); larger ones every :data:`STRIDE`-th value (their counts scaled up) and
    the RMS of the histogram's bucket midpoints (within a few percent: it only sets the
    tensors' relative steps, and integer counts make it the same on every machine and
    thread count). ``threads`` > 1 splits a large array into chunks (the same result).

    Example:
        >>> st = tensor_stats(np.array([0.0, 1.0, -1.0, 2.0], np.float32))
        >>> st.w_min, st.w_max, st.rms, int(st.counts.sum())
        (-1.0, 2.0, 1.224744871391589, 4)
    """
    n = x.size
    if n == 0:
        x.min()  # numpy's ValueError for an empty reduction, as ever
    stride = 1 if n <= EXACT_VALUES else STRIDE
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float64)  # exact for float16 and small integers
    if not x.flags.c_contiguous:  # the kernels read the values' bits through a view
        x = np.ascontiguousarray(x)
    kernel = _stats_f32 if x.dtype == np.float32 else _stats_f64
    # one pass: the exact range (the float order of the values' bit patterns, NaN and Inf
    # found) and the histogram together, then only the bucket range that can be occupied
    if threads <= 1 or n <= _BLOCK:
        # 2**31 values or more: int64 counts (uint32 ones could overflow)
        hist = _scratch_hist() if n < 1 << 31 else np.zeros((1, 2, BUCKETS), dtype=np.int64)
        w_min, w_max, status, lows, highs, counts, sq = kernel(x, stride, hist, _LOWS, _HIGHS)
    else:
        w_min, w_max, status, lows, highs, counts = _stats_threads(x, stride, threads)
        sq = float(_sum_squares(x)) if stride == 1 and status != 1 else 0.0
    finite = status != 1
    if status:  # NaN, Inf or a zero extreme: numpy's min and max, as finite_min_max gives
        w_min, w_max, finite = finite_min_max(x, threads)
    if not finite:
        rms = math.inf
    elif stride == 1:
        amax = max(abs(w_min), abs(w_max))
        if math.isfinite(sq):
            rms = math.sqrt(sq / n)
        else:  # beyond binary64 (float64 values over 1e154): rescaled
            rms = amax * math.sqrt(float(np.mean(np.square(x / amax))))
    else:
        mid = 0.5 * (lows + highs)
        rms = math.sqrt(float(np.sum(counts * mid * mid)) / float(counts.sum()))
    return TensorStats(
        w_min=float(w_min),
        w_max=float(w_max),
        rms=rms,
        n=int(n),
        finite=finite,
        lows=lows,
        highs=highs,
        counts=counts,
    )


@njit(cache=True, nogil=True)
def _model_kernel(
    lows: np.ndarray, highs: np.ndarray, counts: np.ndarray, step: float, lev: np.ndarray
) -> tuple[float, float]:
    # (payload bits, used levels) of one tensor at `step`; `lev` (2 * _MODEL_LEVELS + 1
    # zeros) is returned zeroed.
    total = 0.0
    for i in range(counts.size):
        total += counts[i]
    bits = 0.0
    used = 0.0
    mid = _MODEL_LEVELS
    first = lev.size
    last = -1
    # A trial's time was its two divisions and its read-modify-write of lev per bucket
    # (the CharGPT set, 76 tensors, 16k buckets: 68 us; 42 without them): a reciprocal,
    # and consecutive buckets of one level (most of them) summed in a register (run, for
    # level run_k), added to lev once per run. Bucket counts are integers, so a run's sum
    # is exact; a level that also received a spread share, or a bucket edge within an ulp
    # of a level's edge, may round differently, which moves the modelled size by ~1e-16.
    run_k = mid
    run = 0.0
    inv = 1.0 / step
    for i in range(counts.size):
        a = lows[i]
        b = highs[i]
        c = counts[i]
        # np.floor stays a float: numba's math.floor returns an int64, which wraps for
        # a bucket billions of steps from zero (binary32 buckets of binary64 values far
        # below them) and indexed `lev` out of bounds (found by Hypothesis in CI)
        qa = np.floor(a * inv + 0.5)
        qb = np.floor(b * inv + 0.5)
        if qa == qb and abs(qa) <= mid:
            k = int(qa) + mid
            if k != run_k:
                lev[run_k] += run
                run_k = k
                run = 0.0
            run += c
            first = min(first, k)
            last = max(last, k)
            continue
        width = b - a
        if (qb - qa) <= _SPREAD_LEVELS and abs(qa) <= mid and abs(qb) <= mid:
            for q in range(int(qa), int(qb) + 1):
                lo = max(a, (q - 0.5) * step)
                hi = min(b, (q + 0.5) * step)
                if hi > lo:
                    k = q + mid
                    lev[k] += c * (hi - lo) / width
                    first = min(first, k)
                    last = max(last, k)
            continue
        # wide bucket: c values spread evenly over width / step levels
        span = max(width / step, 1.0)
        bits += c * math.log2(total * span / c)
        used += span
    lev[run_k] += run
    for k in range(first, last + 1):
        v = lev[k]
        if v > 0.0:
            bits -= v * math.log2(v / total)
            used += 1.0
            lev[k] = 0.0
    return bits, used


@njit(cache=True, nogil=True)
def _spread_kernel(
    lows: np.ndarray, highs: np.ndarray, counts: np.ndarray, step: float, qlo: int, out: np.ndarray
) -> None:
    # each bucket's count spread evenly over its value range, apportioned to the levels
    # (clamped to [qlo, qlo + out.size - 1]) its range overlaps
    qhi = qlo + out.size - 1
    for i in range(counts.size):
        a = lows[i]
        b = highs[i]
        c = counts[i]
        qa = min(max(np.floor(a / step + 0.5), qlo), qhi)  # floats: see _model_kernel
        qb = min(max(np.floor(b / step + 0.5), qlo), qhi)
        if qa == qb:
            out[int(qa) - qlo] += c
            continue
        width = b - a
        for q in range(int(qa), int(qb) + 1):
            lo = a if q == qa else max(a, (q - 0.5) * step)
            hi = b if q == qb else min(b, (q + 0.5) * step)
            if hi > lo:
                out[q - qlo] += c * (hi - lo) / width


def level_counts(st: TensorStats, step: float, qlo: int, qhi: int) -> np.ndarray:
    """Modelled counts of the levels ``qlo .. qhi`` at ``step`` (int64, every one >= 1).

    From the bucket histogram alone (no pass over the values): frequencies quantized from
    them code the tensor within a few hundredths of a percent of its own histogram's
    (measured on a CharGPT pseudo-gradient at 0.25, 1 and 4 bits/param), and every level
    of the range has a nonzero frequency, so any value in it can be coded.

    Example:
        >>> st = tensor_stats(np.array([0.0, 0.0, 0.0, 1.0], np.float32))
        >>> level_counts(st, 0.5, 0, 2).tolist()
        [805306369, 1, 268435457]
    """
    out = np.zeros(qhi - qlo + 1, dtype=np.float64)
    _spread_kernel(st.lows, st.highs, st.counts, float(step), int(qlo), out)
    return np.floor(out * (float(1 << 30) / st.n)).astype(np.int64) + 1


class PacketModel:
    """The modelled coded size of a packet's tensors as a function of ``alpha``.

    Args:
        stats: one :class:`TensorStats` per rate-controlled tensor.
        fixed_bytes: bytes that do not depend on ``alpha`` (record headers, packet header,
            the group's header).
        grouped: which tensors share one table (their tables are counted once).
    """

    def __init__(
        self,
        stats: list[TensorStats],
        fixed_bytes: float,
        grouped: list[bool],
        refs: list[float] | None = None,
        caps: list[float] | None = None,
    ):
        self.stats = stats
        self.refs = [st.rms for st in stats] if refs is None else refs
        #: per tensor, the largest multiplier it is coded at (inf: no limit)
        self.caps = [math.inf] * len(stats) if caps is None else caps
        self.fixed = fixed_bytes
        self.grouped = grouped
        # every tensor's buckets in one set of arrays: one kernel call per trial
        self._lows = np.concatenate([st.lows for st in stats] or [np.zeros(0)])
        self._highs = np.concatenate([st.highs for st in stats] or [np.zeros(0)])
        self._counts = np.concatenate([st.counts for st in stats] or [np.zeros(0)])
        self._offsets = np.cumsum([0] + [st.counts.size for st in stats]).astype(np.int64)
        self._refs = np.asarray(self.refs, dtype=np.float64)
        self._caps = np.asarray(self.caps, dtype=np.float64)
        self._amax = np.array([max(abs(st.w_min), abs(st.w_max)) for st in stats], np.float64)
        self._n = np.array([st.n for st in stats], dtype=np.float64)
        self._grouped = np.asarray(grouped, dtype=np.bool_)
        self._lev = np.zeros(2 * _MODEL_LEVELS + 1, dtype=np.float64)

    def nbytes(self, alpha: float) -> float:
        """Modelled packet bytes at multiplier ``alpha`` (steps ``steps_for(model, alpha)``)."""
        return self.fixed + float(
            _packet_kernel(
                float(alpha), self._lows, self._highs, self._counts, self._offsets,
                self._refs, self._caps, self._amax, self._n, self._grouped, self._lev,
            )
        )  # fmt: skip


@njit(cache=True, nogil=True)
def _step_kernel(ref: float, amax: float, alpha: float) -> float:
    step = max(alpha * ref, amax / LEVEL_LIMIT, 2.0**-1000)
    return step if step < np.inf else np.finfo(np.float64).max


@njit(cache=True, nogil=True)
def _packet_kernel(
    alpha: float,
    lows: np.ndarray,
    highs: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
    refs: np.ndarray,
    caps: np.ndarray,
    amax: np.ndarray,
    n: np.ndarray,
    grouped: np.ndarray,
    lev: np.ndarray,
) -> float:
    # the alpha-dependent bytes of PacketModel.nbytes: payloads, tables, lane states
    total = 0.0
    group_used = 0.0
    any_group = False
    for t in range(refs.size):
        step = _step_kernel(refs[t], amax[t], min(alpha, caps[t]))
        a, b = offsets[t], offsets[t + 1]
        bits, used = _model_kernel(lows[a:b], highs[a:b], counts[a:b], step, lev)
        total += bits / 8.0
        if grouped[t]:
            any_group = True
            group_used = max(group_used, used)
        elif used > 1.0:  # an ANS record: table (~1.25 B per used level), 4 lane states
            total += 1.25 * min(used, n[t]) + 22.0
    if any_group:
        total += 1.25 * group_used + 22.0
    return total


def _step(st: TensorStats, ref: float, alpha: float) -> float:
    # never finer than the level clamp allows, never so fine that 1 / step overflows
    return float(_step_kernel(ref, max(abs(st.w_min), abs(st.w_max)), alpha))


def steps_for(model: PacketModel, alpha: float) -> list[float]:
    """Each tensor's step at multiplier ``alpha`` (at most its cap) times its reference
    scale, but at least ``max|x| / 32767`` (the finest the level clamp allows)."""
    return [
        _step(st, ref, min(alpha, cap))
        for st, ref, cap in zip(model.stats, model.refs, model.caps, strict=True)
    ]


#: bisection steps on log2(alpha)
_ITERATIONS = 40
#: stop once the model is within this fraction below the budget
_TOLERANCE = 0.002


def plan_alpha(model: PacketModel, budget: float, small_alpha: float) -> float:
    """The smallest ``alpha`` (finest steps) whose modelled size is within ``budget`` bytes.

    When the fixed bytes (headers) exceed half the budget (a packet of a few thousand
    values or less), the payload gets half the budget and ``alpha`` is at most
    ``small_alpha``: such a packet overshoots its target rather than sending nothing,
    round after round (a frozen bias cost 11 points of accuracy on the paper's task).
    """
    if not model.stats:
        return 1.0
    cap = math.inf
    if model.fixed > 0.5 * budget:
        budget = model.fixed + 0.5 * budget
        cap = small_alpha
    ratio = [
        max(abs(st.w_min), abs(st.w_max)) / ref
        for st, ref in zip(model.stats, model.refs, strict=True)
        if ref > 0
    ]
    if not ratio:  # no tensor has a scale to multiply (RMS underflow: subnormal values)
        return 1.0
    lo = math.log2(min(ratio) / LEVEL_LIMIT) - 1.0  # every tensor at its finest step
    hi = math.log2(2.0 * max(ratio)) + 1.0  # every value rounds to 0
    # Every tensor at its finest step is the answer when even that fits the budget. Its
    # trial is the dearest (most buckets span many levels: half of this function's 1 ms
    # on the CharGPT set), so it is made only when the bisection's first trial fits too:
    # the modelled size falls as alpha grows (coarser steps; the bucket histogram is too
    # smooth for the exceptions a few point masses can make), so a first trial over the
    # budget means the finest steps are over it as well.
    for k in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        cost = model.nbytes(2.0**mid)
        if k == 0 and cost <= budget and model.nbytes(2.0**lo) <= budget:
            return float(min(2.0**lo, cap))
        if cost > budget:
            lo = mid
        else:
            hi = mid
            if cost >= (1.0 - _TOLERANCE) * budget:
                break
    return float(min(2.0**hi, cap))
