"""Codec speed on a model's full tensor set, beside zstd-3, a numpy copy and float compressors.

    .venv/bin/python benchmarks/codec_speed.py                      # CharGPT 6x384, ~2 min
    .venv/bin/python benchmarks/codec_speed.py --data synthetic     # no torch needed
    .venv/bin/python benchmarks/codec_speed.py --quick --out r.json # smoke run, seconds

The same measurement as ``tenfold bench --json`` (:mod:`tenfold.bench`, where the data, the
contenders and the timing are documented); this script prints its JSON and keeps the
options the committed results were made with. The data (``--data char-gpt``, the default)
is the pseudo-gradient an averager hands the codec: a CharGPT (6 layers, 384 wide, 76
tensors, ~10.7M values) after 8 AdamW steps on random tokens, cached in ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tenfold.bench import CodecBenchConfig, run_codec_bench
from tenfold.bench.data import char_gpt_delta, synthetic_delta

__all__ = ["char_gpt_delta", "main", "synthetic_delta"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/codec_speed.py", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--data", default="char-gpt", help="char-gpt, synthetic or an .npz file")
    p.add_argument("--quick", action="store_true", help="a small model and few reps (smoke)")
    p.add_argument("--reps", type=int, default=0, help="timed runs per figure (default 5; 2)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--cache", default="~/.cache/tenfold/bench", help="where the data is kept")
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    config = CodecBenchConfig(
        data=args.data,
        reps=args.reps,
        quick=args.quick,
        cache=None if args.no_cache else Path(args.cache).expanduser(),
    )
    text = json.dumps(run_codec_bench(config), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
