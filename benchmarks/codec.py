"""Codec benchmark: tenfold vs zstd-3 vs float16 on weight-like float32 data; prints JSON.

    .venv/bin/python benchmarks/codec.py                 # 1M and 10M values, 5 repeats
    .venv/bin/python benchmarks/codec.py --quick         # CI smoke: small sizes, 3 repeats
    .venv/bin/python benchmarks/codec.py --threads 1 2   # threads= speed-ups, same run

Without ``--threads`` this is ``tenfold bench``; the work is done by
``tenfold.benchmarks_codec``. With ``--threads T [T ...]`` it measures compress,
decompress and accumulate at each thread count (1 is added first when missing: the
baseline of the speed-ups) on a model-like set of eight tensors and on one tensor of
``--total`` values (:func:`tenfold.benchmarks_codec.run_threads_benchmark`).
"""

from __future__ import annotations

import argparse
import json
import sys

from tenfold.cli import main


def _threads_main(argv: list[str]) -> int:
    from tenfold.benchmarks_codec import run_threads_benchmark

    p = argparse.ArgumentParser(prog="benchmarks/codec.py", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", required=True, metavar="T")
    p.add_argument("--total", type=float, default=1e7, help="values per layout (default 1e7)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (default 5)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.repeats < 1 or args.total < 8:
        p.error("--threads must be >= 1, --repeats >= 1, --total >= 8")
    counts = list(dict.fromkeys([1, *args.threads]))  # the baseline first, no repeats
    result = run_threads_benchmark(
        counts,
        total=int(args.total),
        repeats=args.repeats,
        seed=args.seed,
        progress=lambda msg: print(f"benchmarks/codec.py: {msg}", file=sys.stderr),
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if any(a == "--threads" or a.startswith("--threads=") for a in argv):
        sys.exit(_threads_main(argv))
    sys.exit(main(["bench", *argv]))
