"""The numba baseline of the rANS SIMD probe: tenfold.codec.ans on bench.c's distributions.

    .venv/bin/python benchmarks/rans_probe_src/numba_baseline.py [--runs 7] [--values N] 0 1 2

Times :func:`tenfold.codec.ans.encode` / :func:`~tenfold.codec.ans.decode` (the API) and
their kernels alone (``_encode_kernel`` / ``_decode_kernel``, no validation or table
building) on ``--values`` symbols of each distribution, checks every round trip, and
prints one JSON object (one line) per distribution. Run by ``benchmarks/rans_simd_probe.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

import numpy as np

from tenfold.codec import ans

SCALE_BITS = 12


def dist(which: int) -> np.ndarray:
    """bench.c's distributions: 0 = 81 quads of (.7, .15, .15), 1 = 256 quads of
    (.55, .2, .2, .05), 2 = 3 symbols (.96, .02, .02)."""
    if which == 2:
        return np.array([0.96, 0.02, 0.02])
    levels = {0: [0.70, 0.15, 0.15], 1: [0.55, 0.20, 0.20, 0.05]}[which]
    return np.array([np.prod(c) for c in itertools.product(levels, repeat=4)])


def _ns(seconds: float, n: int) -> float:
    return round(1e9 * seconds / n, 3)


def measure(which: int, runs: int, n: int) -> dict[str, Any]:
    """The median (and min) ns per symbol of ``runs`` timed runs after one warm-up run."""
    p = dist(which)
    rng = np.random.default_rng(1)
    sym = rng.choice(p.size, size=n, p=p / p.sum()).astype(np.uint16)
    counts = np.bincount(sym, minlength=p.size)
    freq = ans.quantize_frequencies(counts, SCALE_BITS)
    table = ans.build_decode_table(freq, SCALE_BITS, np.arange(p.size, dtype=np.float32))
    expected = sym.astype(np.float32)
    out = np.zeros(n, np.float32)
    tab = ans._encoder_table(freq.astype(np.int64), SCALE_BITS)
    kends, buf = ans._lane_buffer(n)
    fbtab, valtab = table
    te: list[float] = []
    td: list[float] = []
    tk: list[float] = []
    tdk: list[float] = []
    data = np.empty(0, np.uint8)
    branchless = False
    for r in range(runs + 1):  # the first run compiles / warms
        t0 = time.perf_counter()
        lanes = ans.encode(sym, freq, SCALE_BITS)
        t1 = time.perf_counter()
        data = np.concatenate(lanes)
        sizes = np.array([lane.size for lane in lanes])
        ends = np.cumsum(sizes)
        t2 = time.perf_counter()
        bad = ans.decode(data, ends - sizes, ends, table, out, add=False)
        t3 = time.perf_counter()
        if bad != 0 or not np.array_equal(out, expected):
            raise SystemExit(f"numba dist {which}: decode() failed (lane error {bad})")
        # decode()'s own choice of renormalisation for this payload
        words_bits = 8 * (data.size - 4 * ans.LANES)
        branchless = words_bits >= ans._DECODE_BRANCHLESS_BITS * n
        t4 = time.perf_counter()
        kstarts = ans._encode_kernel(sym, tab, buf, kends)
        t5 = time.perf_counter()
        klanes = ans._lane_bytes(buf, kstarts, kends, copy=False)
        if not all(np.array_equal(a, b) for a, b in zip(klanes, lanes, strict=True)):
            raise SystemExit(f"numba dist {which}: _encode_kernel's bytes differ from encode()'s")
        st = (ends - sizes).astype(np.int64)
        en = ends.astype(np.int64)
        out[:] = 0
        t6 = time.perf_counter()
        b2 = ans._decode_kernel(data, st, en, fbtab, valtab, SCALE_BITS, out, False, branchless)
        t7 = time.perf_counter()
        if b2 != 0 or not np.array_equal(out, expected):
            raise SystemExit(f"numba dist {which}: _decode_kernel failed (lane mask {b2})")
        if r:
            te.append(t1 - t0)
            td.append(t3 - t2)
            tk.append(t5 - t4)
            tdk.append(t7 - t6)
    return {
        "dist": which,
        "values": n,
        "runs": runs,
        "lanes": ans.LANES,
        "scale_bits": SCALE_BITS,
        "encode_ns_per_symbol": _ns(float(np.median(te)), n),
        "decode_ns_per_symbol": _ns(float(np.median(td)), n),
        "encode_ns_per_symbol_min": _ns(min(te), n),
        "decode_ns_per_symbol_min": _ns(min(td), n),
        "bits_per_symbol": round(8 * data.size / n, 4),
        "kernels_only": {
            "encode_ns_per_symbol": _ns(float(np.median(tk)), n),
            "decode_ns_per_symbol": _ns(float(np.median(tdk)), n),
            "encode_ns_per_symbol_min": _ns(min(tk), n),
            "decode_ns_per_symbol_min": _ns(min(tdk), n),
        },
        "branchless": bool(branchless),
        "checks_passed": True,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/rans_probe_src/numba_baseline.py",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument("dists", type=int, nargs="+", choices=(0, 1, 2), help="distributions")
    p.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    p.add_argument("--values", type=int, default=10_000_000, help="symbols per run")
    args = p.parse_args(argv)
    for which in args.dists:
        print(json.dumps(measure(which, args.runs, args.values)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
