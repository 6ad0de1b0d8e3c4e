"""Codec speed on a model's full tensor set, beside zstd-3, a numpy copy and float compressors.

    .venv/bin/python benchmarks/codec_speed.py                      # CharGPT 6x384, ~2 min
    .venv/bin/python benchmarks/codec_speed.py --data synthetic     # no torch needed
    .venv/bin/python benchmarks/codec_speed.py --quick --out r.json # smoke run, seconds

The data (``--data char-gpt``, the default) is the pseudo-gradient an averager hands the
codec: a widened ``tenfold.train`` CharGPT (6 layers, 384 wide, 76 tensors, ~10.7M values)
after 8 AdamW steps on random tokens, ``before - after`` per parameter, float32, error
feedback off. It is cached (``--cache``) so repeated runs measure the same values.
``--data synthetic`` draws a transformer-shaped set instead: Student-t (3 d.o.f.) values with
log-normal per-tensor scales, the same names and shapes.

Everything is measured in one process, one thread unless said, median of ``--reps`` timed
runs after a warm-up, so the ratios to zstd-3 and to a numpy copy hold on a busy machine
(the load average is recorded). Speeds are M values/s (float32 values in or out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


# ---- data ---------------------------------------------------------------------------------


def char_gpt_delta(n_layer: int, n_embd: int, steps: int, seed: int = 0) -> Arrays:
    """The pseudo-gradient (before - after) of a CharGPT after ``steps`` AdamW steps."""
    import torch

    from tenfold.train.models import CharGPT, CharGPTConfig

    torch.manual_seed(seed)
    cfg = CharGPTConfig(vocab_size=88, context=128, n_layer=n_layer, n_head=6, n_embd=n_embd)
    model = CharGPT(cfg)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 88, (8, 129), generator=gen)
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        k: (before[k] - v.detach()).numpy().astype(np.float32) for k, v in model.named_parameters()
    }


def synthetic_delta(n_layer: int, n_embd: int, seed: int = 0) -> Arrays:
    """Transformer-shaped tensors of Student-t values with log-normal per-tensor scales."""
    rng = np.random.default_rng(seed)
    c, v, t = n_embd, 88, 128
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (v, c), "pos_emb.weight": (t, c)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        shapes.update({
            p + "ln1.weight": (c,), p + "ln1.bias": (c,),
            p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
            p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
            p + "ln2.weight": (c,), p + "ln2.bias": (c,),
            p + "mlp.fc.weight": (4 * c, c), p + "mlp.fc.bias": (4 * c,),
            p + "mlp.proj.weight": (c, 4 * c), p + "mlp.proj.bias": (c,),
        })  # fmt: skip
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,), "head.weight": (v, c)})
    out = {}
    for name, shape in shapes.items():
        scale = 1e-3 * math.exp(rng.normal(0.0, 1.0))
        out[name] = (scale * rng.standard_t(3, size=shape)).astype(np.float32)
    return out


def load_data(kind: str, quick: bool, cache: Path | None) -> tuple[Arrays, str]:
    """The tensor set and a one-line description of it."""
    n_layer, n_embd, steps = (2, 192, 3) if quick else (6, 384, 8)
    desc = f"{kind} n_layer={n_layer} n_embd={n_embd}"
    if kind == "synthetic":
        return synthetic_delta(n_layer, n_embd), desc
    desc += f" AdamW lr=1e-3 steps={steps} (random tokens), delta = before - after"
    path = None if cache is None else cache / f"chargpt_{n_layer}x{n_embd}_{steps}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, desc
    arrays = char_gpt_delta(n_layer, n_embd, steps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)  # type: ignore[arg-type]
    return arrays, desc


# ---- measuring ----------------------------------------------------------------------------


def median_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak memory (tracemalloc: numpy buffers included) ``fn`` allocates beyond its start."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return int(peak)


def rel_rmse(ref: Arrays, out: Arrays) -> float:
    """sqrt(sum (out - ref)^2 / sum ref^2) over every value of the set."""
    num = sum(float(np.sum((out[k].astype(np.float64) - v) ** 2)) for k, v in ref.items())
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in ref.values())
    return math.sqrt(num / den)


def mvps(n: int, seconds: float) -> float:
    return round(n / seconds / 1e6, 1)


# ---- the contenders -------------------------------------------------------------------------


def bench_tenfold(data: Arrays, rate: float, reps: int, threads: int = 1) -> dict[str, Any]:
    import tenfold

    n = sum(v.size for v in data.values())
    policy = tenfold.TargetRate(bits_per_param=rate)
    blob = tenfold.compress(data, policy, threads=threads)
    out = tenfold.decompress(blob, threads=threads)
    enc = median_seconds(lambda: tenfold.compress(data, policy, threads=threads), reps)
    dec = median_seconds(lambda: tenfold.decompress(blob, threads=threads), reps)
    return {
        "bits_per_param": round(8 * len(blob) / n, 4),
        "rel_rmse": round(rel_rmse(data, out), 5),
        "compress_Mvps": mvps(n, enc),
        "decompress_Mvps": mvps(n, dec),
    }


def bench_zstd(data: Arrays, reps: int) -> dict[str, Any] | None:
    try:
        import zstandard
    except ImportError:
        return None
    n = sum(v.size for v in data.values())
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    blobs = [cctx.compress(v.tobytes()) for v in data.values()]
    enc = median_seconds(lambda: [cctx.compress(v.data) for v in data.values()], reps)
    dec = median_seconds(lambda: [dctx.decompress(b) for b in blobs], reps)
    return {
        "bits_per_param": round(8 * sum(len(b) for b in blobs) / n, 3),
        "compress_Mvps": mvps(n, enc),
        "decompress_Mvps": mvps(n, dec),
    }


def bench_copy(data: Arrays, reps: int) -> dict[str, Any]:
    n = sum(v.size for v in data.values())
    t = median_seconds(lambda: [v.copy() for v in data.values()], reps)
    return {"bits_per_param": 32, "compress_Mvps": mvps(n, t), "decompress_Mvps": mvps(n, t)}


def bench_constriction(data: Arrays, reps: int) -> dict[str, Any] | None:
    """constriction's ANS on the levels tenfold's TargetRate(1) sends (coder time only)."""
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
    if v.ndim == 2 or v.ndim == 3 or v.ndim == 4:
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


def bench_zfp(data: Arrays, rates: list[float], reps: int) -> list[dict[str, Any]] | None:
    # (zfpy 1.0.1 corrupts its heap decoding some fixed-rate 1 streams: rates >= 2 only)
    try:
        import zfpy
    except ImportError:
        return None
    n = sum(v.size for v in data.values())
    rows = []
    for r in rates:
        blobs = [zfpy.compress_numpy(_zfp_shape(v), rate=r) for v in data.values()]
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


def bench_sz3(data: Arrays, bounds: list[float], reps: int) -> list[dict[str, Any]] | None:
    """SZ3 with an absolute error bound ``b * RMS`` (the RMS of the whole set)."""
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    n = sum(v.size for v in data.values())
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


def bench_memory(data: Arrays) -> dict[str, Any]:
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


# ---- main ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    cache = None if args.no_cache else Path(args.cache).expanduser()
    data, desc = load_data(args.data, args.quick, cache)
    n = sum(v.size for v in data.values())
    reps = args.reps or (2 if args.quick else 5)
    rates = [0.25, 1.0, 4.0]
    rd_rates = [1.0, 4.0] if args.quick else [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    result: dict[str, Any] = {
        "data": desc,
        "tensors": len(data),
        "values": n,
        "smallest_tensor": min(v.size for v in data.values()),
        "reps": reps,
        "load_average_before": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    base = {"copy": bench_copy(data, reps), "zstd3": bench_zstd(data, reps)}
    tf = {str(r): bench_tenfold(data, r, reps) for r in rates}
    result["single_thread"] = {**base, "tenfold": tf}
    z = base["zstd3"]
    if z is not None:
        result["ratio_to_zstd3"] = {
            r: {
                "compress": round(v["compress_Mvps"] / z["compress_Mvps"], 2),
                "decompress": round(v["decompress_Mvps"] / z["decompress_Mvps"], 2),
            }
            for r, v in tf.items()
        }
    result["constriction"] = bench_constriction(data, reps)
    two = bench_tenfold(data, 1.0, reps, threads=2)
    result["threads2_over_1_at_rate_1"] = {
        "compress": round(two["compress_Mvps"] / tf["1.0"]["compress_Mvps"], 2),
        "decompress": round(two["decompress_Mvps"] / tf["1.0"]["decompress_Mvps"], 2),
    }
    result["memory"] = bench_memory(data)
    rd_reps = 1 if args.quick else max(1, reps // 2)
    result["rate_distortion"] = {
        "tenfold": [
            {"rate": r, **bench_tenfold(data, r, rd_reps)} for r in rd_rates
        ],
        "zfp_fixed_rate": bench_zfp(data, [2.0, 4.0, 8.0, 16.0] if not args.quick else [4.0],
                                    rd_reps),
        "sz3_abs": bench_sz3(data, [2.0, 1.0, 0.5, 0.25, 0.1, 0.03] if not args.quick else [0.5],
                             rd_reps),
    }  # fmt: skip
    result["load_average_after"] = list(os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/codec_speed.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", choices=("char-gpt", "synthetic"), default="char-gpt")
    p.add_argument("--quick", action="store_true", help="a small model and few reps (smoke)")
    p.add_argument("--reps", type=int, default=0, help="timed runs per figure (default 5; 2)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--cache", default="~/.cache/tenfold/bench", help="where the data is kept")
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
