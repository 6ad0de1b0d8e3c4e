"""``tenfold bench``: the codec benchmark (tenfold vs zstd-3 vs float16), as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Measure the codec on weight-like float32 data (Laplacian bulk + 0.01% outliers), single
thread: compress/decompress/accumulate speed and bits/param under EntropyAdaptive(c=6, M=4)
and Fixed(8), against zstd level 3 on the raw bytes, a float16 cast, and Fixed(8) indices
compressed by zstd. Prints JSON (and writes it to --out). Speeds are medians of --repeats
runs after a warm-up; the numba first-call (compile/cache load) time is reported apart.
"""

EPILOG = """\
examples:
  tenfold bench                        # 1M and 10M values (~1 minute)
  tenfold bench --quick                # CI smoke test: 100k and 1M values, 3 repeats
  tenfold bench --sizes 1e6 --repeats 9 --out bench.json

exit codes: 0 done, 1 the benchmark failed to run, 2 bad option.
"""

QUICK_SIZES = (100_000, 1_000_000)


def _size(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 1 and value == int(value) and value <= 1e9):
        raise argparse.ArgumentTypeError(f"size must be an integer in [1, 1e9], got {text!r}")
    return int(value)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tenfold bench``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark the codec against zstd-3 and float16 (JSON)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (CI smoke)")
    p.add_argument(
        "--sizes", type=_size, nargs="+", metavar="N", help="values per tensor (default 1e6 1e7)"
    )
    p.add_argument("--repeats", type=_positive, help="timed runs per figure (default 5)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its JSON; 0 on success, 1 if it failed."""
    from tenfold.benchmarks_codec import run_benchmark

    sizes = args.sizes or (QUICK_SIZES if args.quick else (1_000_000, 10_000_000))
    repeats = args.repeats or (3 if args.quick else 5)
    try:
        result = run_benchmark(
            sizes,
            repeats=repeats,
            seed=args.seed,
            progress=lambda msg: print(f"tenfold bench: {msg}", file=sys.stderr),
        )
    except MemoryError as exc:
        print(f"tenfold bench: out of memory ({exc}); try smaller --sizes", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        except OSError as exc:
            print(f"tenfold bench: cannot write {args.out}: {exc}", file=sys.stderr)
            return 1
    return 0
