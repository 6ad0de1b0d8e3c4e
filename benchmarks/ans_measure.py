"""tenfold's rANS kernels (:mod:`tenfold.codec.ans`) against the ``constriction`` library.

Used by :func:`codec_measure.run_benchmark` (``benchmarks/codec.py``); returns a JSON-safe dict.

For each target rate (bits/symbol), ``n`` symbols are drawn i.i.d. from a discretised
Laplace distribution, ``round(laplace(0, 1) / step)`` shifted to start at 0, with ``step``
chosen (by bisection on the distribution's exact entropy) so that the entropy is the
target. Both coders then code the SAME symbols with a model of their empirical histogram,
single thread:

* tenfold: ``quantize_frequencies`` at ``scale_bits_for(used)`` bits of precision; timed
  ``encode`` (symbols -> 4 lanes, its tables included) and ``build_decode_table`` +
  ``decode`` into float32 (the value table is the symbol itself, so both sides produce 4
  bytes per symbol);
* constriction: ``constriction.stream.stack.AnsCoder`` with a
  ``constriction.stream.model.Categorical(probabilities, perfect=False)`` model built once
  (untimed); timed ``encode_reverse(symbols, model)`` + ``get_compressed()`` and
  ``AnsCoder(compressed).decode(model, n)`` (int32 symbols).

Both round trips are checked. Speeds are M symbols/s, the median of ``repeats`` timed runs
after one warm-up.
"""

from __future__ import annotations

import importlib.metadata
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ans_vs_constriction", "laplace_step_for_entropy"]


def _laplace_pmf(step: float, kmax: int) -> np.ndarray:
    """P(round(z / step) = k) for z ~ Laplace(0, 1), k = -kmax..kmax (tails folded in)."""
    k = np.arange(1, kmax + 1, dtype=np.float64)
    side = 0.5 * (np.exp(-(k - 0.5) * step) - np.exp(-(k + 0.5) * step))
    centre = 1.0 - math.exp(-0.5 * step)
    side[-1] += 0.5 * math.exp(-(kmax + 0.5) * step)
    return np.concatenate([side[::-1], [centre], side])


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def laplace_step_for_entropy(bits: float) -> float:
    """The step for which ``round(laplace(0, 1) / step)`` has ``bits`` bits of entropy.

    Example:
        >>> round(laplace_step_for_entropy(2.0), 3)
        1.429
    """
    if not 0.05 <= bits <= 12.0:
        raise ValueError(f"target entropy must be in [0.05, 12] bits, got {bits}")
    lo, hi = 1e-4, 50.0  # entropy decreases with the step
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        kmax = int(40.0 / mid) + 2
        if _entropy(_laplace_pmf(mid, kmax)) > bits:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: JIT/cache load, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _one_rate(
    target: float, n: int, repeats: int, rng: np.random.Generator, constriction: Any
) -> dict[str, Any]:
    from tenfold.codec import ans

    step = laplace_step_for_entropy(target)
    z = np.round(rng.laplace(0.0, 1.0, n) / step).astype(np.int64)
    z -= z.min()
    if int(z.max()) >= ans.MAX_SYMBOLS:
        raise ValueError(f"rate {target}: alphabet of {int(z.max()) + 1} symbols is too large")
    symbols = z.astype(np.uint16)
    counts = np.bincount(symbols).astype(np.int64)
    k = counts.size
    empirical = _entropy(counts / n)

    # tenfold
    scale = ans.scale_bits_for(int(np.count_nonzero(counts)))
    freq = ans.quantize_frequencies(counts, scale)
    lut = np.arange(k, dtype=np.float32)
    lanes = ans.encode(symbols, freq, scale)
    sizes = np.array([lane.size for lane in lanes], dtype=np.int64)
    data = np.concatenate(lanes)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty(n, dtype=np.float32)

    def tf_decode() -> int:
        table = ans.build_decode_table(freq, scale, lut)
        return ans.decode(data, starts, ends, table, out, add=False)

    if tf_decode() != 0 or not np.array_equal(out, symbols.astype(np.float32)):
        raise RuntimeError(f"rate {target}: tenfold ANS did not round-trip")
    tf_enc = _median_seconds(lambda: ans.encode(symbols, freq, scale), repeats)
    tf_dec = _median_seconds(tf_decode, repeats)

    # constriction, on the same symbols and histogram
    model = constriction.stream.model.Categorical(counts / n, perfect=False)
    sym32 = symbols.astype(np.int32)

    def c_encode() -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(sym32, model)
        return coder.get_compressed()

    compressed = c_encode()

    def c_decode() -> np.ndarray:
        return constriction.stream.stack.AnsCoder(compressed).decode(model, n)

    if not np.array_equal(c_decode(), sym32):
        raise RuntimeError(f"rate {target}: constriction did not round-trip")
    c_enc = _median_seconds(c_encode, repeats)
    c_dec = _median_seconds(c_decode, repeats)

    tf_bytes = int(data.size)
    c_bytes = int(compressed.nbytes)
    tf_enc_speed, tf_dec_speed = n / tf_enc / 1e6, n / tf_dec / 1e6
    c_enc_speed, c_dec_speed = n / c_enc / 1e6, n / c_dec / 1e6
    return {
        "target_bits": target,
        "laplace_step": step,
        "alphabet": k,
        "entropy_bits": empirical,
        "tenfold": {
            "scale_bits": scale,
            "bytes": tf_bytes,
            "bits_per_symbol": 8 * tf_bytes / n,
            "encode_Msym_per_s": tf_enc_speed,
            "decode_Msym_per_s": tf_dec_speed,
        },
        "constriction": {
            "bytes": c_bytes,
            "bits_per_symbol": 8 * c_bytes / n,
            "encode_Msym_per_s": c_enc_speed,
            "decode_Msym_per_s": c_dec_speed,
        },
        "tenfold_over_constriction": {
            "encode_speed": tf_enc_speed / c_enc_speed,
            "decode_speed": tf_dec_speed / c_dec_speed,
            "bytes": tf_bytes / c_bytes,
        },
    }


def ans_vs_constriction(
    n: int = 10_000_000,
    rates: Sequence[float] = (0.4, 1.0, 2.0),
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Time tenfold's rANS and constriction's ANS coder on the same symbols (module docstring).

    Args:
        n: symbols per rate.
        rates: target entropies in bits/symbol (0.05..12).
        repeats: timed runs per figure (median), after one warm-up.
        seed: numpy ``default_rng`` seed for the symbols.

    Returns:
        A JSON-safe dict: per rate the entropy, both coders' bytes and M symbols/s in both
        directions, and the tenfold/constriction ratios; or ``{"skipped": reason}`` when
        constriction is not installed.
    """
    try:
        import constriction
    except ImportError as exc:  # an optional benchmark dependency (the "test" extra)
        return {"skipped": f"constriction is not importable: {exc}"}
    if n < 1 or repeats < 1:
        raise ValueError("need n >= 1 and repeats >= 1")
    rng = np.random.default_rng(seed)
    per_rate = [_one_rate(float(r), int(n), int(repeats), rng, constriction) for r in rates]
    enc = [r["tenfold_over_constriction"]["encode_speed"] for r in per_rate]
    dec = [r["tenfold_over_constriction"]["decode_speed"] for r in per_rate]
    return {
        "benchmark": "tenfold rANS (4 lanes, numba) vs constriction AnsCoder, single thread",
        "data": (
            "round(laplace(0, 1) / step) shifted to >= 0, step set for the target entropy; "
            f"numpy default_rng({seed}), {n} symbols per rate"
        ),
        "statistic": f"M symbols/s: median of {repeats} runs after one warm-up",
        "constriction_version": importlib.metadata.version("constriction"),
        "rates": per_rate,
        "targets": {
            "encode_speed_ratio_min": min(enc),
            "decode_speed_ratio_min": min(dec),
            "encode_at_least_1x": min(enc) >= 1.0,
            "decode_at_least_3x": min(dec) >= 3.0,
        },
    }
