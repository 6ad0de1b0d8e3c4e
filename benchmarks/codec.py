"""Codec benchmark: tenfold vs zstd-3 vs float16 on weight-like float32 data; prints JSON.

    .venv/bin/python benchmarks/codec.py                 # 1M and 10M values, 5 repeats
    .venv/bin/python benchmarks/codec.py --quick         # CI smoke: small sizes, 3 repeats

Same as ``tenfold bench``; the work is done by ``tenfold.benchmarks_codec``.
"""

from __future__ import annotations

import sys

from tenfold.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
