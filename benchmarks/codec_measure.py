"""The codec benchmark: tenfold vs zstd level 3 vs a float16 cast, on weight-like data.

The measurements behind ``benchmarks/codec.py`` (``make bench``); each returns a JSON-safe dict.

What is measured, per size (float32 tensors of n values), single thread:

* ``tenfold.<policy>``: compress / decompress / accumulate speed in MB/s of float32 input
  (median of ``repeats`` runs after one warm-up), packet bytes, bits/param, N and mode;
* ``zstd3``: zstd level 3 on the raw float32 bytes (compress, decompress MB/s, bytes);
* ``float16``: the cast (bytes, MB/s);
* ``fixed8_indices_zstd3``: Fixed(8) bin indices as uint8, compressed by zstd-3 (bytes):
  what a generic compressor makes of the same quantization;
* ``vs_zstd3``: speed and size ratios, and whether the issue's targets are met (compress
  >= 3x, decompress >= 2x zstd-3's speed, >= 8x fewer bytes);
* ``target_rate_1`` / ``target_rate_0.5``: the delta-mode policy (rate control, mid-tread
  quantizer, ANS) on the same data, against the same zstd-3 figures;
* ``ans_vs_constriction``: tenfold's rANS kernels against the ``constriction`` library on
  the same symbols, both directions (``benchmarks/ans_measure.py``).

The numba first-call time (JIT compile, or loading the on-disk cache) is measured once,
before anything else, and reported separately.

The data: ``laplace(0, b=0.05)`` bulk, with 0.01% of the values replaced by outliers of
magnitude ``U(30, 60) * b`` and random sign (seeded). Trained layers look like this: a
peaked, heavy-tailed bulk plus a few weights tens of times larger than typical. The tails
matter: N comes from the entropy of a 16-bin histogram over [w_min, w_max], so the
range/scale ratio drives the bits/param (README: "the benchmark data").
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # siblings import by name
from ans_measure import ans_vs_constriction  # noqa: E402  (sibling module; see the line above)

__all__ = ["DISTRIBUTION", "MODEL_SHARES", "make_data", "run_benchmark", "run_threads_benchmark"]

DISTRIBUTION = (
    "float32 laplace(0, b=0.05) bulk; 0.01% of values replaced by outliers of magnitude "
    "U(30, 60)*b with random sign; numpy default_rng(seed)"
)

ZSTD_LEVEL = 3
_MB = 1e6


def make_data(n: int, seed: int = 0) -> np.ndarray:
    """The benchmark tensor: ``n`` float32 values (see :data:`DISTRIBUTION`)."""
    rng = np.random.default_rng(seed)
    b = 0.05
    x = rng.laplace(0.0, b, n)
    k = max(1, n // 10_000)
    where = rng.choice(n, k, replace=False)
    x[where] = rng.choice([-1.0, 1.0], k) * rng.uniform(30.0, 60.0, k) * b
    return x.astype(np.float32)


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, best) seconds of ``repeats`` calls after one warm-up call."""
    fn()  # warm-up: caches, page faults, lazy allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def _first_call_seconds() -> float:
    """Time of the first compress + decompress + accumulate in this process (JIT or cache)."""
    from tenfold.codec import EntropyAdaptive, Fixed, accumulate, compress, decompress

    t0 = time.perf_counter()
    x = make_data(4096, seed=1)
    for policy in (EntropyAdaptive(), Fixed(8), Fixed(20)):
        blob = compress({"w": x}, policy)
        decompress(blob)
        accumulate(blob, {"w": np.zeros_like(x)})
    return time.perf_counter() - t0


def _policy_figures(
    x: np.ndarray, policy: Any, repeats: int, zstd_c: float, zstd_d: float, zstd_bytes: int
) -> dict[str, Any]:
    from tenfold.codec import accumulate, compress, decompress, inspect

    tensors = {"w": x}
    mb = x.nbytes / _MB
    # threads=1: the single-thread figures this benchmark reports (one tensor is coded by
    # one thread anyway; run_threads_benchmark measures the threaded paths)
    blob = compress(tensors, policy, threads=1)
    acc = {"w": np.zeros_like(x)}
    t_c, best_c = _timed(lambda: compress(tensors, policy, threads=1), repeats)
    t_d, best_d = _timed(lambda: decompress(blob, threads=1), repeats)
    t_a, best_a = _timed(lambda: accumulate(blob, acc, threads=1), repeats)
    info = inspect(blob)
    (t,) = info.tensors
    c_speed, d_speed = mb / t_c, mb / t_d
    return {
        "policy": policy.get_config(),
        "bytes": len(blob),
        "bits_per_param": info.bits_per_param,
        "N": t.bits,
        "step": t.step,
        "entropy_estimate": t.entropy,
        "mode": t.mode,
        "compress_MBps": c_speed,
        "decompress_MBps": d_speed,
        "accumulate_MBps": mb / t_a,
        "best_MBps": {
            "compress": mb / best_c,
            "decompress": mb / best_d,
            "accumulate": mb / best_a,
        },
        "compress_Mvalues_per_s": x.size / t_c / 1e6,
        "decompress_Mvalues_per_s": x.size / t_d / 1e6,
        "vs_zstd3": {
            "compress_speed_ratio": c_speed / zstd_c,
            "decompress_speed_ratio": d_speed / zstd_d,
            "size_ratio": zstd_bytes / len(blob),
            "targets": {"compress_3x": 3.0, "decompress_2x": 2.0, "size_8x": 8.0},
            "met": {
                "compress_3x": c_speed / zstd_c >= 3.0,
                "decompress_2x": d_speed / zstd_d >= 2.0,
                "size_8x": zstd_bytes / len(blob) >= 8.0,
            },
        },
    }


def _size_figures(n: int, repeats: int, seed: int) -> dict[str, Any]:
    import zstandard

    from tenfold.codec import EntropyAdaptive, Fixed, TargetRate
    from tenfold.codec.quantize import Quantizer, quantize

    x = make_data(n, seed)
    raw = x.tobytes()
    mb = len(raw) / _MB
    zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    zd = zstandard.ZstdDecompressor()
    zblob = zc.compress(raw)
    t_zc, best_zc = _timed(lambda: zc.compress(raw), repeats)
    t_zd, best_zd = _timed(lambda: zd.decompress(zblob), repeats)
    cast_s, _ = _timed(lambda: x.astype(np.float16), repeats)
    zstd_c, zstd_d = mb / t_zc, mb / t_zd
    # Fixed(8)'s bin indices (the codec's own quantizer) as uint8, then zstd-3
    idx = quantize(x, Quantizer.for_range(float(x.min()), float(x.max()), 8))
    idx_blob = zc.compress(idx.astype(np.uint8).tobytes())
    return {
        "n": n,
        "input_bytes": len(raw),
        "zstd3": {
            "bytes": len(zblob),
            "bits_per_param": 8 * len(zblob) / n,
            "compress_MBps": zstd_c,
            "decompress_MBps": zstd_d,
            "best_MBps": {"compress": mb / best_zc, "decompress": mb / best_zd},
        },
        "float16": {"bytes": 2 * n, "bits_per_param": 16.0, "cast_MBps": mb / cast_s},
        "fixed8_indices_zstd3": {"bytes": len(idx_blob), "bits_per_param": 8 * len(idx_blob) / n},
        "tenfold": {
            "entropy_c6_M4": _policy_figures(
                x, EntropyAdaptive(c=6, M=4), repeats, zstd_c, zstd_d, len(zblob)
            ),
            "fixed8": _policy_figures(x, Fixed(8), repeats, zstd_c, zstd_d, len(zblob)),
            # the delta-mode policies (rate control, mid-tread steps, ANS), on the same data
            "target_rate_1": _policy_figures(
                x, TargetRate(bits_per_param=1.0), repeats, zstd_c, zstd_d, len(zblob)
            ),
            "target_rate_0.5": _policy_figures(
                x, TargetRate(bits_per_param=0.5), repeats, zstd_c, zstd_d, len(zblob)
            ),
        },
    }


def run_benchmark(
    sizes: Sequence[int] = (1_000_000, 10_000_000),
    *,
    repeats: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    ans_symbols: int | None = None,
) -> dict[str, Any]:
    """Run the codec benchmark and return its figures as a JSON-safe dict.

    Args:
        sizes: tensor sizes in values (float32).
        repeats: timed runs per figure (the median is reported), after one warm-up.
        seed: data seed.
        progress: called with a short message before each size (e.g. ``print`` to stderr).
        ans_symbols: symbols for the ANS kernels against ``constriction``
            (:func:`ans_measure.ans_vs_constriction`); default the largest size.
    """
    import numba
    import zstandard

    first_call = _first_call_seconds()
    results = []
    for n in sizes:
        if progress is not None:
            progress(f"benchmarking {n:,} values")
        results.append(_size_figures(int(n), repeats, seed))
    if progress is not None:
        progress("benchmarking the ANS kernels against constriction")
    ans = ans_vs_constriction(n=int(ans_symbols or max(sizes)), repeats=repeats, seed=seed)
    return {
        "benchmark": "tenfold codec vs zstd-3 / float16, single thread",
        "data": DISTRIBUTION,
        "repeats": repeats,
        "statistic": (
            "MB/s of float32 input (1 MB = 1e6 B): median of repeats after one warm-up "
            "(best_MBps: the fastest repeat); ratios use medians"
        ),
        "numba_first_call_seconds": first_call,
        "numba_first_call_note": (
            "first compress+decompress+accumulate in this process: JIT compilation when "
            "numba's on-disk cache (cache=True) is cold, only loading it otherwise"
        ),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "zstandard": zstandard.__version__,
        },
        "sizes": results,
        "ans_vs_constriction": ans,
    }


# ---- threads ------------------------------------------------------------------------------

#: how a model-like set of tensors splits its values: one embedding-sized tensor, a few
#: large projections, and smaller layers (eight tensors, shares summing to 1)
MODEL_SHARES = (0.30, 0.20, 0.12, 0.12, 0.10, 0.08, 0.05, 0.03)


def _model_tensors(total: int, seed: int) -> dict[str, np.ndarray]:
    sizes = [max(1, round(share * total)) for share in MODEL_SHARES]
    return {f"layer{i}": make_data(n, seed + i) for i, n in enumerate(sizes)}


def run_threads_benchmark(
    threads: Sequence[int] = (1, 2),
    *,
    total: int = 10_000_000,
    repeats: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """compress / decompress / accumulate time against the ``threads`` setting.

    Two layouts of ``total`` float32 values (:func:`make_data`): ``"model"``, eight tensors
    sized by :data:`MODEL_SHARES`, and ``"single"``, one tensor (which threads over
    tensors cannot split). Per layout, policy and thread count: the median of ``repeats``
    timed calls after a warm-up; the thread counts take turns within each repeat, so a
    change in the machine's load hits all of them alike. ``speedup`` is the first thread
    count's median over each one's (from the same run). Also checks that every thread
    count gives the same packet bytes and the same accumulated values.
    """
    from tenfold.codec import EntropyAdaptive, TargetRate, accumulate, compress, decompress

    counts = [int(t) for t in threads]
    policies = {
        "entropy_c6_M4": EntropyAdaptive(c=6, M=4),
        "target_rate_1": TargetRate(bits_per_param=1.0),
    }
    layouts = {
        "model": _model_tensors(total, seed),
        "single": {"w": make_data(total, seed)},
    }
    out: dict[str, Any] = {}
    for layout, tensors in layouts.items():
        mb = sum(x.nbytes for x in tensors.values()) / _MB
        out[layout] = {"tensors": {k: int(v.size) for k, v in tensors.items()}}
        for label, policy in policies.items():
            if progress is not None:
                progress(f"threads {counts}: {layout} layout, {label}")
            blob = compress(tensors, policy, threads=counts[0])
            ref = {k: np.zeros_like(v) for k, v in tensors.items()}
            accumulate(blob, ref, threads=counts[0])
            identical = True
            for t in counts:
                acc = {k: np.zeros_like(v) for k, v in tensors.items()}
                accumulate(blob, acc, threads=t)
                identical &= compress(tensors, policy, threads=t) == blob
                identical &= all(acc[k].tobytes() == ref[k].tobytes() for k in acc)
            acc = {k: np.zeros_like(v) for k, v in tensors.items()}
            calls: dict[str, Callable[[int], Any]] = {
                "compress": lambda t: compress(tensors, policy, threads=t),  # noqa: B023
                "decompress": lambda t: decompress(blob, threads=t),  # noqa: B023
                "accumulate": lambda t: accumulate(blob, acc, threads=t),  # noqa: B023
            }
            figures: dict[str, Any] = {}
            for op, call in calls.items():
                times: dict[int, list[float]] = {t: [] for t in counts}
                for t in counts:
                    call(t)  # warm-up
                for _ in range(repeats):
                    for t in counts:
                        t0 = time.perf_counter()
                        call(t)
                        times[t].append(time.perf_counter() - t0)
                med = {t: statistics.median(v) for t, v in times.items()}
                figures[op] = {
                    "median_s": {str(t): med[t] for t in counts},
                    "MBps": {str(t): mb / med[t] for t in counts},
                    "speedup": {str(t): med[counts[0]] / med[t] for t in counts},
                }
            out[layout][label] = {
                "bytes": len(blob),
                "identical_across_threads": bool(identical),
                **figures,
            }
    return {
        "benchmark": "tenfold codec: compress / decompress / accumulate vs threads=",
        "data": DISTRIBUTION,
        "threads": counts,
        "total_values": total,
        "repeats": repeats,
        "statistic": (
            "median seconds of repeats after one warm-up, thread counts interleaved per "
            f"repeat; speedup = median(threads={counts[0]}) / median(threads=t)"
        ),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "available_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "layouts": out,
    }
