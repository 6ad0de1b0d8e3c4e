"""The contenders the codec benchmark times on one tensor set: tenfold, zstd-3, a numpy
copy, constriction's ANS, zfp and SZ3. Each returns a JSON-able dict, or None when its
package is not installed (zstandard and constriction come with ``tenfold[bench]``; zfpy and
pysz are optional)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from numba import njit

from tenfold.bench.data import Arrays
from tenfold.bench.timing import median_seconds, mvps, paired_speedup, peak_bytes, rel_rmse

__all__ = [
    "bench_constriction",
    "bench_copy",
    "bench_memory",
    "bench_sz3",
    "bench_tenfold",
    "bench_zfp",
    "bench_zstd",
    "machine_thread_speedups",
    "thread_speedups",
]

Row = dict[str, Any]


def _count(data: Arrays) -> int:
    return sum(v.size for v in data.values())


def bench_tenfold(data: Arrays, rate: float, reps: int, threads: int = 1) -> Row:
    """``TargetRate(rate)`` on the whole set: bits/param, relative RMSE, both speeds, and
    decompression into the arrays of an earlier call (``decompress(out=)``: no fresh
    memory for the operating system to zero)."""
    import tenfold

    n = _count(data)
    policy = tenfold.TargetRate(bits_per_param=rate)
    blob = tenfold.compress(data, policy, threads=threads)
    out = tenfold.decompress(blob, threads=threads)
    enc = median_seconds(lambda: tenfold.compress(data, policy, threads=threads), reps)
    dec = median_seconds(lambda: tenfold.decompress(blob, threads=threads), reps)
    into = median_seconds(lambda: tenfold.decompress(blob, out=out, threads=threads), reps)
    return {
        "bits_per_param": round(8 * len(blob) / n, 4),
        "rel_rmse": round(rel_rmse(data, out), 5),
        "compress_Mvps": mvps(n, enc),
        "decompress_Mvps": mvps(n, dec),
        "decompress_into_Mvps": mvps(n, into),
    }


def thread_speedups(data: Arrays, rate: float, threads: int, pairs: int) -> Row:
    """``TargetRate(rate)`` with ``threads`` threads over one thread, each direction timed
    in ``pairs`` interleaved pairs (:func:`paired_speedup`); decompression into the arrays
    of an earlier call too."""
    import tenfold

    policy = tenfold.TargetRate(bits_per_param=rate)
    blob = tenfold.compress(data, policy, threads=1)
    out = tenfold.decompress(blob)

    def speedup(call: Callable[[int], Any]) -> float:
        return round(paired_speedup(lambda: call(1), lambda: call(threads), pairs), 2)

    return {
        "compress": speedup(lambda t: tenfold.compress(data, policy, threads=t)),
        "decompress": speedup(lambda t: tenfold.decompress(blob, threads=t)),
        "decompress_into": speedup(lambda t: tenfold.decompress(blob, out=out, threads=t)),
        "pairs": pairs,
    }


@njit(cache=True, nogil=True)
def _integer_loop(steps: int, seed: int) -> int:
    # compute only: a 64-bit LCG with a xorshift, in registers
    x = seed
    for _ in range(steps):
        x = x * 6364136223846793005 + 1442695040888963407
        x ^= x >> 13
    return x


@njit(cache=True, nogil=True)
def _read_loop(a: np.ndarray) -> float:
    # memory only: a sum with four accumulators (no dependency chain to wait on)
    s0 = s1 = s2 = s3 = 0.0
    for i in range(0, a.size - a.size % 4, 4):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
    return (s0 + s1) + (s2 + s3)


def _split(work: Callable[[int], Any], threads: int) -> Callable[[], None]:
    """Run ``work(part)`` for parts 0 .. threads - 1, each in its own thread (the first in
    the calling one)."""

    def run() -> None:
        helpers = [threading.Thread(target=work, args=(k,)) for k in range(1, threads)]
        for t in helpers:
            t.start()
        work(0)
        for t in helpers:
            t.join()

    return run


def machine_thread_speedups(threads: int, pairs: int, read_bytes: int = 256 << 20) -> Row:
    """What ``threads`` threads gain over one on this machine for work that holds no GIL:
    an integer loop (``compute``) and reading ``read_bytes`` of float64 (``memory``, larger
    than the caches), split evenly, timed in ``pairs`` interleaved pairs. The codec's
    own speed-ups are bounded by these: its passes over the values are partly limited by
    memory bandwidth, and its per-record Python holds the GIL."""
    steps = 20_000_000
    values = np.ones(read_bytes // 8, dtype=np.float64)
    bounds = [values.size * k // threads for k in range(threads + 1)]
    _integer_loop(10, 1)
    _read_loop(values[:8])

    def count(part: int) -> None:
        _integer_loop(steps // threads, part + 1)

    def read(part: int) -> None:
        _read_loop(values[bounds[part] : bounds[part + 1]])

    return {
        "compute": round(
            paired_speedup(lambda: _integer_loop(steps, 1), _split(count, threads), pairs), 2
        ),
        "memory": round(
            paired_speedup(lambda: _read_loop(values), _split(read, threads), pairs), 2
        ),
        "read_GBps_one_thread": round(
            read_bytes / median_seconds(lambda: _read_loop(values), pairs) / 1e9, 1
        ),
        "pairs": pairs,
    }


def bench_zstd(data: Arrays, reps: int) -> Row | None:
    """zstd level 3 (lossless), one frame per tensor."""
    try:
        import zstandard
    except ImportError:
        return None
    n = _count(data)
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    blobs = [cctx.compress(v.tobytes()) for v in data.values()]
    enc = median_seconds(lambda: [cctx.compress(v.data) for v in data.values()], reps)
    dec = median_seconds(lambda: [dctx.decompress(b) for b in blobs], reps)
    return {
        "bits_per_param": round(8 * sum(len(b) for b in blobs) / n, 3),
        "compress_Mvps": mvps(n, enc),
        "decompress_Mvps": mvps(n, dec),
    }


def bench_copy(data: Arrays, reps: int) -> Row:
    """A plain numpy copy of every tensor: what moving the values through memory costs,
    into new arrays and (``copy_into_Mvps``) into existing ones."""
    n = _count(data)
    t = median_seconds(lambda: [v.copy() for v in data.values()], reps)
    dst = [v.copy() for v in data.values()]

    def copy_into() -> None:
        for d, v in zip(dst, data.values(), strict=True):
            np.copyto(d, v)

    t_into = median_seconds(copy_into, reps)
    return {
        "bits_per_param": 32,
        "compress_Mvps": mvps(n, t),
        "decompress_Mvps": mvps(n, t),
        "copy_into_Mvps": mvps(n, t_into),
    }


def bench_constriction(data: Arrays, reps: int) -> Row | None:
    """constriction's ANS coder on the levels tenfold's ``TargetRate(1)`` sends, as one
    stream with one model (coder time only: no quantization, no headers)."""
    try:
        import constriction
    except ImportError:
        return None
    import tenfold

    blob = tenfold.compress(data, tenfold.TargetRate(bits_per_param=1.0), threads=1)
    info = {t.name: t for t in tenfold.inspect(blob).tensors}
    out = tenfold.decompress(blob)
    levels = []
    for k, v in out.items():
        step = info[k].step or 1.0
        levels.append(np.rint(v.reshape(-1).astype(np.float64) / step).astype(np.int64))
    q = np.concatenate(levels)
    q -= q.min()
    counts = np.bincount(q)
    model = constriction.stream.model.Categorical(counts / q.size, perfect=False)
    sym = q.astype(np.int32)

    def enc() -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(sym, model)
        return coder.get_compressed()

    comp = enc()
    t_enc = median_seconds(enc, reps)
    t_dec = median_seconds(
        lambda: constriction.stream.stack.AnsCoder(comp).decode(model, sym.size), reps
    )
    return {
        "what": "entropy coder only, on TargetRate(1)'s levels (no quantization, no headers)",
        "bits_per_param": round(32 * comp.size / sym.size, 4),
        "compress_Mvps": mvps(sym.size, t_enc),
        "decompress_Mvps": mvps(sym.size, t_dec),
    }


def _zfp_shape(v: np.ndarray) -> np.ndarray:
    # zfpy 1.0.1 corrupts its heap decoding 1-D fixed-rate streams below ~4 bits: code
    # vectors as (n/16, 16) blocks, zero-padded (the padding's bits are counted)
    if v.ndim in (2, 3, 4):
        return v
    flat = v.reshape(-1)
    pad = (-flat.size) % 16
    return np.concatenate([flat, np.zeros(pad, flat.dtype)]).reshape(-1, 16)


def _zfp_back(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    return y.reshape(-1)[: like.size].reshape(like.shape)


def _zfp_all(data: Arrays, rate: float) -> list[bytes]:
    import zfpy

    return [zfpy.compress_numpy(_zfp_shape(v), rate=rate) for v in data.values()]


def _unzfp_all(blobs: list[bytes]) -> list[np.ndarray]:
    import zfpy

    return [zfpy.decompress_numpy(b) for b in blobs]


def bench_zfp(data: Arrays, rates: list[float], reps: int) -> list[Row] | None:
    """zfp in fixed-rate mode at each of ``rates`` bits/value (>= 2: zfpy 1.0.1 corrupts its
    heap decoding some rate-1 streams)."""
    try:
        import zfpy
    except ImportError:
        return None
    n = _count(data)
    rows = []
    for r in rates:
        blobs = _zfp_all(data, r)
        out = {
            k: _zfp_back(zfpy.decompress_numpy(b), data[k])
            for k, b in zip(data, blobs, strict=True)
        }
        enc = median_seconds(partial(_zfp_all, data, r), reps)
        dec = median_seconds(partial(_unzfp_all, blobs), reps)
        rows.append({
            "rate": r, "bits_per_param": round(8 * sum(len(b) for b in blobs) / n, 4),
            "rel_rmse": round(rel_rmse(data, out), 5),
            "compress_Mvps": mvps(n, enc), "decompress_Mvps": mvps(n, dec),
        })  # fmt: skip
    return rows


def bench_sz3(data: Arrays, bounds: list[float], reps: int) -> list[Row] | None:
    """SZ3 with an absolute error bound of ``b`` times the RMS of the whole set, for each
    ``b`` of ``bounds``."""
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    n = _count(data)
    rms = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in data.values()) / n)

    def comp(eb: float) -> list[np.ndarray]:
        blobs = []
        for v in data.values():
            cfg = szConfig(v.shape)
            cfg.errorBoundMode = szErrorBoundMode.ABS
            cfg.absErrorBound = eb
            blobs.append(sz.compress(np.ascontiguousarray(v), cfg)[0])
        return blobs

    def decomp(blobs: list[np.ndarray]) -> Arrays:
        return {
            k: sz.decompress(b, np.float32, v.shape)[0]
            for (k, v), b in zip(data.items(), blobs, strict=True)
        }

    rows = []
    for b in bounds:
        eb = b * rms
        blobs = comp(eb)
        out = decomp(blobs)
        enc = median_seconds(partial(comp, eb), reps)
        dec = median_seconds(partial(decomp, blobs), reps)
        rows.append({
            "abs_bound_over_rms": b, "bits_per_param": round(8 * sum(x.size for x in blobs) / n, 4),
            "rel_rmse": round(rel_rmse(data, out), 5),
            "compress_Mvps": mvps(n, enc), "decompress_Mvps": mvps(n, dec),
        })  # fmt: skip
    return rows


def bench_memory(data: Arrays) -> Row:
    """tenfold's peak extra memory at ``TargetRate(1)``: compressing, over the input's
    bytes; decompressing, beyond the output, over the output's bytes."""
    import tenfold

    nbytes = sum(v.nbytes for v in data.values())
    policy = tenfold.TargetRate(bits_per_param=1.0)
    blob = tenfold.compress(data, policy, threads=1)
    enc = peak_bytes(lambda: tenfold.compress(data, policy, threads=1))
    dec = peak_bytes(lambda: tenfold.decompress(blob, threads=1))
    return {
        "input_bytes": nbytes,
        "compress_peak_extra_over_input": round(enc / nbytes, 3),
        "decompress_peak_extra_over_output": round((dec - nbytes) / nbytes, 3),
    }
