"""The zero-centred (mid-tread) uniform quantizer, for pseudo-gradients and other deltas.

A tensor coded with step ``s > 0`` sends, per value, the integer ``q = round(x / s)`` and
decodes it as ``q * s``: zero is a reconstruction level (a delta of exactly 0 stays 0),
every decoded value is within ``s / 2`` of the input (plus float rounding), and the levels
do not depend on the tensor's range, so one outlier does not coarsen every other value
(as it does for the paper's min/max bins).

On the wire (docs/FORMAT.md, section 4.2) a tensor carries ``step`` (binary64) and
``qmin``, the smallest level sent; symbol ``i`` stands for level ``qmin + i`` and decodes to
``float64(qmin + i) * step``, rounded once to the tensor's dtype. The alphabet is
``2**bits`` symbols with ``bits = ceil(log2(qmax - qmin + 1))``.

**Bounded alphabet: a clamp, not escape codes.** Levels are clamped to
``[-LEVEL_LIMIT, LEVEL_LIMIT]`` (``2**15 - 1``), so there are at most ``2**16 - 1`` symbols
and every entropy coder's tables stay bounded. A value beyond the clamp decodes to the
nearest extreme level; the encoder counts such values and records the count in the packet
(``TensorInfo.clamped``, shown by ``tenfold inspect``). We clamp rather than add escape
codes because the clamp only bites when the step is below ``max|x| / 32767``: a step that
fine is a near-lossless setting, where the raw mode is usually smaller anyway, and in the
delta transmit mode error feedback carries the clamped remainder into the next round.
Escape codes would cost a second payload and parser for a case our policies never reach
(RelativeStep and TargetRate choose steps of about the RMS: ``max|x| / RMS`` would have to
exceed 32767).

Rounding is ``floor(x * (1 / s) + 0.5)`` in binary64: monotone in ``x``, so the levels of
``w_min`` and ``w_max`` bound all others and the alphabet is known before the pass over the
data. Kernels are numba, single-threaded, with the house rules of ``quantize.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from numba import njit

from tenfold.codec.parallel import chunk_bounds, run_in_order
from tenfold.codec.quantize import sample_run, sample_runs
from tenfold.errors import ConfigError

__all__ = [
    "LEVEL_LIMIT",
    "StepQuantizer",
    "midtread_lut",
    "midtread_symbols",
    "LevelCounter",
    "sample_values",
]

#: The largest level magnitude sent; larger ones are clamped (and counted).
LEVEL_LIMIT = (1 << 15) - 1


def _level(value: float, inv: float) -> float:
    """``floor(value * inv + 0.5)`` as a float, clamped to the level range (no overflow)."""
    # clamped before the floor: math.floor of an inf (value * inv beyond binary64 for a
    # tiny step) raises OverflowError; floor commutes with a clamp to integer bounds
    t = min(max(value * inv + 0.5, -LEVEL_LIMIT - 1.0), LEVEL_LIMIT + 1.0)
    return float(math.floor(t))


@dataclass(frozen=True)
class StepQuantizer:
    """The mid-tread quantizer with step ``step`` for a tensor spanning ``[w_min, w_max]``.

    Attributes:
        step: s, the distance between levels (finite, > 0).
        inv: ``1 / s`` in binary64 (what the encoder multiplies by).
        qmin, qmax: the smallest and largest level sent (after the clamp).
        bits: symbol width, ``ceil(log2(qmax - qmin + 1))`` (0 when ``qmin == qmax``).
        needs_clamp: whether some values lie beyond ``+-LEVEL_LIMIT`` steps.
    """

    step: float
    inv: float
    qmin: int
    qmax: int
    bits: int
    needs_clamp: bool

    @classmethod
    def for_range(cls, w_min: float, w_max: float, step: float) -> StepQuantizer:
        """The quantizer for values in ``[w_min, w_max]`` (finite) with step ``step``.

        Example:
            >>> q = StepQuantizer.for_range(-1.0, 0.5, 0.25)
            >>> q.qmin, q.qmax, q.bits
            (-4, 2, 3)
        """
        s = float(step)
        if not (math.isfinite(s) and s > 0.0):
            raise ConfigError(f"step must be finite and > 0, got {step!r}")
        inv = 1.0 / s
        if not math.isfinite(inv):  # a subnormal step: 1/s overflows
            raise ConfigError(f"step {s!r} is too small to invert")
        lo, hi = _level(float(w_min), inv), _level(float(w_max), inv)
        needs_clamp = lo < -LEVEL_LIMIT or hi > LEVEL_LIMIT
        # both ends inside the clamp (a range wholly beyond it collapses to one extreme)
        qmin = int(min(max(lo, -LEVEL_LIMIT), LEVEL_LIMIT))
        qmax = int(max(min(hi, LEVEL_LIMIT), -LEVEL_LIMIT))
        span = qmax - qmin + 1
        bits = 0 if span == 1 else int(math.ceil(math.log2(span)))
        return cls(step=s, inv=inv, qmin=qmin, qmax=qmax, bits=bits, needs_clamp=needs_clamp)


@njit(cache=True, nogil=True)
def _symbols_kernel(
    x: np.ndarray, inv: float, qmin: int, qmax: int, sym: np.ndarray, hist: np.ndarray
) -> int:
    # One fused pass: level, clamp, offset, store, and the per-stream histogram (row j % 4,
    # which is also the Huffman stream / ANS lane of value j). Returns the clamp count.
    # The level stays a float until it is known to be in range: numba's math.floor returns
    # an int64, which wraps for |x * inv| >= 2**63 (a huge value went to qmin, not qmax).
    # A NaN (never passed: callers refuse non-finite tensors) takes the bottom level.
    lo = np.float64(qmin)
    hi = np.float64(qmax)
    clamped = 0
    for j in range(x.size):
        t = np.floor(np.float64(x[j]) * inv + 0.5)
        if t > hi:
            q = qmax
            clamped += 1
        elif t >= lo:
            q = np.int64(t)
        else:
            q = qmin
            clamped += 1
        s = q - qmin
        sym[j] = s
        hist[j & 3, s] += 1
    return clamped


def midtread_symbols(
    x: np.ndarray, q: StepQuantizer, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbols ``level - qmin`` of ``x``, their per-stream histogram, and the clamp count.

    Args:
        x: 1-D float32/float64 values (``tenfold.codec.quantize.kernel_view``).
        q: the quantizer (``q.bits >= 1``).

    Returns:
        ``(symbols, hist, clamped)``: uint16 ``(n,)``; int64 ``(4, 2**bits)`` where row
        ``r`` counts the values at positions ``j % 4 == r``; how many values were clamped.

    ``threads`` > 1 splits a large ``x`` into chunks (starting at multiples of 4, so every
    value lands in its row) coded in parallel: the same symbols, histogram and count.

    Example:
        >>> q = StepQuantizer.for_range(-1.0, 1.0, 0.5)
        >>> sym, hist, clamped = midtread_symbols(np.array([-1.0, 0.1, 0.3, 1.0]), q)
        >>> sym.tolist(), clamped
        ([0, 2, 3, 4], 0)
    """
    sym = np.empty(x.size, dtype=np.uint16)
    bounds = chunk_bounds(x.size, threads)
    hists = [np.zeros((4, 1 << q.bits), dtype=np.int64) for _ in bounds]

    def one(c: int) -> int:
        lo, hi = bounds[c]
        return int(_symbols_kernel(x[lo:hi], q.inv, q.qmin, q.qmax, sym[lo:hi], hists[c]))

    clamped = sum(run_in_order([partial(one, c) for c in range(len(bounds))], threads))
    hist = hists[0]
    for h in hists[1:]:  # integer counts: exact whatever the chunking
        hist += h
    return sym, hist, clamped


def midtread_lut(qmin: int, step: float, bits: int, dtype: np.dtype) -> np.ndarray:
    """The ``2**bits`` decoded values ``float64(qmin + i) * step``, cast to ``dtype`` once.

    This is the normative decode rule (docs/FORMAT.md, section 4.2): one correctly rounded
    binary64 product per level, then one round-to-nearest-even cast, so every receiver
    decodes bit-identical values. ``bits = 0`` gives the single value of a constant record.

    Example:
        >>> midtread_lut(-2, 0.5, 2, np.dtype(np.float32))
        array([-1. , -0.5,  0. ,  0.5], dtype=float32)
    """
    levels = np.arange(qmin, qmin + (1 << bits), dtype=np.float64)
    with np.errstate(over="ignore"):
        return (levels * np.float64(step)).astype(dtype)


# ---- sampling, for rate control -------------------------------------------------------------


@njit(cache=True, nogil=True)
def _gather_kernel(x: np.ndarray, count: int, state: int, out: np.ndarray) -> int:
    # Stratified runs, exactly as tenfold.codec.quantize's entropy sample. Returns how many
    # values were written.
    n = x.size
    length, runs = sample_runs(count)
    s = np.uint64(state)
    taken = 0
    for r in range(runs):
        s, first, run = sample_run(s, r, runs, length, count - taken, n)
        for j in range(first, first + run):
            out[taken] = x[j]
            taken += 1
    return taken


def sample_values(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A deterministic stratified sample of ``count`` values of ``x`` (all of it if smaller).

    Args:
        x: 1-D float32/float64 values.
        count: the sample size wanted (>= 1).
        seed: splitmix64 start state (0 <= seed < 2**64).

    Returns:
        float64 ``(m,)`` with ``m <= count`` (``x`` itself, widened, when ``count >= n``).
    """
    if count >= x.size:
        return x.astype(np.float64)
    out = np.empty(count, dtype=np.float64)
    taken = _gather_kernel(x, count, np.uint64(seed % (1 << 64)), out)
    return out[:taken]


@njit(cache=True, nogil=True)
def _level_counts_kernel(
    sample: np.ndarray, inv: float, scratch: np.ndarray, touched: np.ndarray, counts: np.ndarray
) -> int:
    # Counts of the distinct clamped levels, written compactly into `counts` (in order of
    # first appearance). `scratch` (2 * LEVEL_LIMIT + 1 zeros) is returned zeroed: only the
    # bins touched are reset, so one call costs O(sample), not O(alphabet).
    # The level is clamped as a float (np.floor), then converted: see _symbols_kernel.
    used = 0
    for j in range(sample.size):
        t = np.floor(sample[j] * inv + 0.5)
        t = t if t > -32767.0 else -32767.0  # (a NaN, never passed, to the bottom)
        t = t if t < 32767.0 else 32767.0
        i = np.int64(t) + 32767
        if scratch[i] == 0:
            touched[used] = i
            used += 1
        scratch[i] += 1
    for u in range(used):
        counts[u] = scratch[touched[u]]
        scratch[touched[u]] = 0
    return used


class LevelCounter:
    """Histograms of the clamped levels of one sample at many steps (rate control's inner loop).

    Example:
        >>> c = LevelCounter(np.array([0.0, 0.1, 1.0, -1.0]))
        >>> sorted(c.counts(0.5).tolist())
        [1, 1, 2]
    """

    def __init__(self, sample: np.ndarray) -> None:
        self.sample = np.ascontiguousarray(sample, dtype=np.float64)
        self._scratch = np.zeros(2 * LEVEL_LIMIT + 1, dtype=np.int64)
        size = max(1, min(self.sample.size, 2 * LEVEL_LIMIT + 1))
        self._touched = np.empty(size, dtype=np.int64)
        self._counts = np.empty(size, dtype=np.int64)

    def counts(self, step: float) -> np.ndarray:
        """The nonzero level counts at ``step`` (int64, one per distinct level, a copy)."""
        used = _level_counts_kernel(
            self.sample, 1.0 / float(step), self._scratch, self._touched, self._counts
        )
        return self._counts[:used].copy()
