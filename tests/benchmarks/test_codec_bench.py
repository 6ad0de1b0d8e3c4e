"""benchmarks/codec.py (``make bench``): its JSON, in-process on tiny sizes, both modes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "codec.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenfold_bench_codec", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "2000", "--repeats", "1", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    (size,) = result["sizes"]
    assert size["n"] == 2000 and "laplace" in result["data"]
    for key in ("zstd3", "float16", "fixed8_indices_zstd3"):
        assert size[key]["bytes"] > 0
    for fig in size["tenfold"].values():
        assert fig["bytes"] * 8 / 2000 == fig["bits_per_param"]
        assert fig["compress_MBps"] > 0 and fig["decompress_MBps"] > 0
        assert set(fig["vs_zstd3"]["met"]) == {"compress_3x", "decompress_2x", "size_8x"}
    assert result["numba_first_call_seconds"] > 0
    assert {"target_rate_1", "target_rate_0.5"} <= set(size["tenfold"])
    ans = result["ans_vs_constriction"]
    assert "skipped" in ans or ans
    # the default output: a short table, every target it checks explained in one line
    table = bench.format_table(result)
    assert len(table) < 4000 and "{" not in table
    assert "tenfold TargetRate(1.0) (the default)" in table and "zstd level 3" in table
    checked = set(size["tenfold"]["target_rate_1"]["vs_zstd3"]["met"])
    checked |= {k for k, v in ans.get("targets", {}).items() if isinstance(v, bool)}
    for key in checked:
        assert key in bench.TARGETS, key
        (line,) = [ln for ln in table.splitlines() if ln.startswith(f"  {key}: ")]
        assert len(line) > 40


def test_bench_prints_the_table_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "2000", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("tenfold codec") and "compress_3x: " in printed
    assert "every figure: --json (or --out FILE)" in printed
    assert json.loads(out.read_text())["sizes"][0]["n"] == 2000  # the JSON went to --out


def test_bench_rejects_bad_options() -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--sizes", "0"])
    assert exc.value.code == 2


def test_threads_benchmark_smoke() -> None:
    """``--threads``' work, tiny: JSON-safe, and the bytes agree across thread counts."""
    from codec_measure import run_threads_benchmark  # the script put benchmarks/ on sys.path

    result = run_threads_benchmark((1, 2), total=4000, repeats=1)
    json.dumps(result)
    for layout in ("model", "single"):
        for policy in ("entropy_c6_M4", "target_rate_1"):
            fig = result["layouts"][layout][policy]
            assert fig["identical_across_threads"]
            assert set(fig["compress"]["speedup"]) == {"1", "2"}
    assert len(result["layouts"]["model"]["tensors"]) == 8
    table = bench.format_threads(result)
    assert "target_rate_1" in table and "speed-up over threads=1" in table


@pytest.mark.slow
def test_bench_quick_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["n"] for s in result["sizes"]] == [100_000, 1_000_000]
