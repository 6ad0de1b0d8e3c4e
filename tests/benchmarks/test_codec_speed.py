"""benchmarks/codec_speed.py: its --quick run produces every figure (not timed: the smoke
run checks the JSON's shape and the bits, never a speed). The measurement itself is
``tenfold.bench``'s (tests/bench/)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "codec_speed.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenfold_bench_codec_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_synthetic_run_reports_every_figure(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--data", "synthetic", "--reps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tensors"] >= 20 and result["values"] > 100_000
    tf = result["single_thread"]["tenfold"]
    assert set(tf) == {"0.25", "1.0", "4.0"}
    for rate, row in tf.items():
        assert abs(row["bits_per_param"] / float(rate) - 1) < 0.1, rate
        assert row["compress_Mvps"] > 0 and row["decompress_Mvps"] > 0
    assert 0 < tf["4.0"]["rel_rmse"] < tf["0.25"]["rel_rmse"]
    assert result["single_thread"]["copy"]["compress_Mvps"] > 0
    assert set(result["memory"]) >= {"compress_peak_extra_over_input"}
    assert set(result["threads2_over_1_at_rate_1"]) >= {"compress", "decompress", "decompress_into"}
    assert len(result["rate_distortion"]["tenfold"]) >= 2
