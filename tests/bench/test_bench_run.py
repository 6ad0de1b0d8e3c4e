"""tenfold.bench.run_codec_bench: every figure present and plausible (never timed: the
checks are on the JSON's shape, the bits and the errors, not on a speed)."""

from __future__ import annotations

import json

import pytest

from tenfold.bench import CodecBenchConfig, run_codec_bench
from tenfold.errors import ConfigError


def test_quick_synthetic_run_reports_every_figure() -> None:
    lines: list[str] = []
    config = CodecBenchConfig(data="synthetic", quick=True, reps=1, cache=None)
    result = run_codec_bench(config, lines.append)
    json.dumps(result)  # plain JSON
    assert result["tensors"] >= 20 and result["values"] > 100_000
    assert len(result["load_average_before"]) == 3
    tf = result["single_thread"]["tenfold"]
    assert set(tf) == {"0.25", "1.0", "4.0"}
    for rate, row in tf.items():
        assert abs(row["bits_per_param"] / float(rate) - 1) < 0.1, rate
        assert row["compress_Mvps"] > 0 and row["decompress_Mvps"] > 0
        assert row["decompress_into_Mvps"] > 0
    assert 0 < tf["4.0"]["rel_rmse"] < tf["1.0"]["rel_rmse"] < tf["0.25"]["rel_rmse"]
    assert result["single_thread"]["copy"]["bits_per_param"] == 32
    assert result["single_thread"]["copy"]["copy_into_Mvps"] > 0
    if result["single_thread"]["zstd3"] is not None:
        assert set(result["ratio_to_zstd3"]) == set(tf)
        assert all(
            set(r) == {"compress", "decompress", "decompress_into"}
            for r in result["ratio_to_zstd3"].values()
        )
    speedups = result["threads2_over_1_at_rate_1"]
    assert set(speedups) == {"compress", "decompress", "decompress_into", "pairs"}
    assert all(speedups[k] > 0 for k in ("compress", "decompress", "decompress_into"))
    machine = result["machine_threads2_over_1"]
    assert set(machine) == {"compute", "memory", "read_GBps_one_thread", "pairs"}
    assert machine["compute"] > 0 and machine["memory"] > 0 and machine["read_GBps_one_thread"] > 0
    assert any(s.startswith("this machine's 2 threads") for s in lines)
    assert result["memory"]["input_bytes"] == 4 * result["values"]
    rd = result["rate_distortion"]["tenfold"]
    assert [p["rate"] for p in rd] == [1.0, 4.0] and rd[1]["rel_rmse"] < rd[0]["rel_rmse"]
    assert lines[0].startswith("loading") and any("TargetRate(1)" in s for s in lines)


def test_options_shape_the_run() -> None:
    config = CodecBenchConfig(
        data="synthetic", quick=True, reps=1, rates=(2.0,), threads=1,
        rate_distortion=False, cache=None,
    )  # fmt: skip
    result = run_codec_bench(config)
    assert set(result["single_thread"]["tenfold"]) == {"2.0"}
    assert "rate_distortion" not in result
    assert not any(k.startswith("threads") for k in result)


@pytest.mark.parametrize(
    ("field", "value"),
    [("rates", ()), ("rates", (0.0,)), ("rates", (float("nan"),)), ("reps", -1),
     ("reps", True), ("threads", 0)],
)  # fmt: skip
def test_bad_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CodecBenchConfig(**{field: value})  # type: ignore[arg-type]


def test_default_reps() -> None:
    assert CodecBenchConfig().timed_reps == 5
    assert CodecBenchConfig(quick=True).timed_reps == 2
    assert CodecBenchConfig(reps=3).timed_reps == 3
