"""The codec benchmark's configuration and run: every contender on one tensor set."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenfold.bench import contenders as c
from tenfold.bench.data import load_tensors
from tenfold.errors import ConfigError

__all__ = ["CodecBenchConfig", "run_codec_bench"]

#: the rates (bits/param) the speed targets are stated at
SPEED_RATES = (0.25, 1.0, 4.0)
#: the rate-distortion sweep (tenfold), and the baselines' settings beside it
RD_RATES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
ZFP_RATES = (2.0, 4.0, 8.0, 16.0)
SZ3_BOUNDS = (2.0, 1.0, 0.5, 0.25, 0.1, 0.03)


@dataclass(frozen=True)
class CodecBenchConfig:
    """What :func:`run_codec_bench` measures.

    Attributes:
        data: ``"char-gpt"``, ``"synthetic"`` or an ``.npz`` file (:func:`load_tensors`).
        rates: the ``TargetRate`` bits/param timed single-threaded.
        reps: timed runs per figure (the median is reported); 0: 5, or 2 when ``quick``.
        threads: the thread count compared with one thread (at 1 bit/param); 1: skipped.
        quick: a small model, few reps and a short sweep (a smoke run, seconds).
        rate_distortion: also sweep bits/param against error, with zfp and SZ3 beside.
        cache: where the char-gpt data is kept between runs (None: regenerated each run).
    """

    data: str = "char-gpt"
    rates: tuple[float, ...] = SPEED_RATES
    reps: int = 0
    threads: int = 2
    quick: bool = False
    rate_distortion: bool = True
    cache: Path | None = field(default_factory=lambda: Path("~/.cache/tenfold/bench").expanduser())

    def __post_init__(self) -> None:
        if not self.rates or not all(
            isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in self.rates
        ):
            raise ConfigError(f"rates must be positive bits/param, got {self.rates!r}")
        if isinstance(self.reps, bool) or not isinstance(self.reps, int) or self.reps < 0:
            raise ConfigError(f"reps must be an int >= 1 (or 0: the default), got {self.reps!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be an int >= 1, got {self.threads!r}")

    @property
    def timed_reps(self) -> int:
        """The reps used: ``reps``, or its default."""
        return self.reps or (2 if self.quick else 5)


def run_codec_bench(
    config: CodecBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure every contender on ``config.data``; the result as JSON-able dicts.

    Keys: ``data``, ``tensors``, ``values``, ``load_average_before/after`` (the 1, 5, 15
    minute load averages), ``single_thread`` (``copy``, ``zstd3``, ``tenfold`` by rate: bits
    per param, relative RMSE, compress and decompress M values/s), ``ratio_to_zstd3``,
    ``constriction``, ``threads<N>_over_1_at_rate_1`` (and ``machine_threads<N>_over_1``:
    the machine's own ceiling, :func:`~tenfold.bench.contenders.machine_thread_speedups`),
    ``memory`` and ``rate_distortion``.
    A contender whose package is missing is None. ``progress`` is called with a short
    line before each measurement.
    """
    say = progress or (lambda _line: None)
    say(f"loading {config.data} data")
    data, desc = load_tensors(config.data, config.quick, config.cache)
    n = sum(v.size for v in data.values())
    reps = config.timed_reps
    result: dict[str, Any] = {
        "data": desc,
        "tensors": len(data),
        "values": n,
        "smallest_tensor": min(v.size for v in data.values()),
        "reps": reps,
        "load_average_before": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    say("numpy copy and zstd-3")
    base = {"copy": c.bench_copy(data, reps), "zstd3": c.bench_zstd(data, reps)}
    tf = {}
    for rate in config.rates:
        say(f"tenfold TargetRate({rate:g})")
        tf[str(float(rate))] = c.bench_tenfold(data, rate, reps)
    result["single_thread"] = {**base, "tenfold": tf}
    z = base["zstd3"]
    if z is not None:
        result["ratio_to_zstd3"] = {
            r: {
                "compress": round(v["compress_Mvps"] / z["compress_Mvps"], 2),
                "decompress": round(v["decompress_Mvps"] / z["decompress_Mvps"], 2),
                "decompress_into": round(v["decompress_into_Mvps"] / z["decompress_Mvps"], 2),
            }
            for r, v in tf.items()
        }
    say("constriction")
    result["constriction"] = c.bench_constriction(data, reps)
    if config.threads > 1:
        say(f"tenfold with {config.threads} threads (interleaved with one thread)")
        result[f"threads{config.threads}_over_1_at_rate_1"] = c.thread_speedups(
            data, 1.0, config.threads, 3 * reps
        )
        say(f"this machine's {config.threads} threads over 1 (compute, memory reads)")
        result[f"machine_threads{config.threads}_over_1"] = c.machine_thread_speedups(
            config.threads, 3 * reps, (32 if config.quick else 256) << 20
        )
    say("memory")
    result["memory"] = c.bench_memory(data)
    if config.rate_distortion:
        rd_reps = 1 if config.quick else max(1, reps // 2)
        rd_rates = (1.0, 4.0) if config.quick else RD_RATES
        say("rate-distortion sweep (tenfold, zfp, SZ3)")
        result["rate_distortion"] = {
            "tenfold": [{"rate": r, **c.bench_tenfold(data, r, rd_reps)} for r in rd_rates],
            "zfp_fixed_rate": c.bench_zfp(
                data, [4.0] if config.quick else list(ZFP_RATES), rd_reps
            ),
            "sz3_abs": c.bench_sz3(data, [0.5] if config.quick else list(SZ3_BOUNDS), rd_reps),
        }
    result["load_average_after"] = list(os.getloadavg())
    return result
