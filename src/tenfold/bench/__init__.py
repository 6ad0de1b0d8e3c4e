"""Codec speed on a model's full tensor set, beside the baselines, in one process.

``tenfold bench`` (:mod:`tenfold.cli.bench_cmd`) and ``benchmarks/codec_speed.py`` run
:func:`run_codec_bench`; its result is plain JSON. Speeds are M values/s (float32 values in
or out), the median of several timed runs, with zstd-3 and a numpy copy measured in the
same run so the ratios hold on a busy machine.

Example:
    >>> from tenfold.bench import CodecBenchConfig, run_codec_bench
    >>> result = run_codec_bench(CodecBenchConfig(data="synthetic", quick=True, reps=1,
    ...                                           rate_distortion=False))  # doctest: +SKIP
    >>> result["single_thread"]["tenfold"]["1.0"]["bits_per_param"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from tenfold.bench.codec_speed import CodecBenchConfig, run_codec_bench
from tenfold.bench.data import load_tensors

__all__ = ["CodecBenchConfig", "load_tensors", "run_codec_bench"]
