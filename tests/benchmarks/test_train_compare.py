"""benchmarks/train_compare.py: its method matrix, summaries and table, and a 2-rank smoke
run on loopback (a few steps of two methods; it checks that each runs, never how fast)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_compare.py"


def _load() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("tenfold_bench_train_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tc = _load()


def test_the_method_matrix_is_the_issues() -> None:
    names = [m.name for m in tc.all_methods()]
    assert len(names) == len(set(names)) == 15
    assert {"ddp-fp32", "ddp-fp16", "ddp-powersgd4"} <= set(names)
    assert sum(n.startswith("ddp-tenfold") for n in names) == 2  # two rates
    for k in tc.SYNC_EVERY:
        assert f"local{k}-fp32" in names
        assert sum(n.startswith(f"diloco{k}-") for n in names) == 2  # with the outer optimizer


def test_summary_takes_the_slowest_rank_and_the_lead_s_curve() -> None:
    method = tc.Method("ddp-fp32", "ddp", "fp32")

    def steps(rank: int) -> list[dict]:
        return [
            {"kind": "step", "step": i + 1, "loss": 3.0 - i, "seconds": 0.1 * (rank + 1),
             "tx_bytes": 100 * (i + 1) * (rank + 1), **({"val_loss": 2.5} if i == 1 else {})}
            for i in range(2)
        ]  # fmt: skip

    s = tc._summarise(method, [steps(0), steps(1)], 2)
    assert s["seconds_per_step_median"] == pytest.approx(0.2)  # rank 1 is the slower
    assert s["bytes_per_rank"] == [200, 400] and s["final_val_loss"] == 2.5
    assert [c["bytes_per_rank"] for c in s["curve"]] == [100, 200]
    assert "error" in tc._summarise(method, [steps(0), steps(1)[:1]], 2)
    table = tc.markdown_table({"methods": {"ddp-fp32": {**s, "bytes_vs_ddp_fp32": 1.0}}})
    assert "| ddp-fp32 | 0.00 | 1x | 0.200 | 2.500 |" in table


@pytest.mark.slow
def test_two_methods_run_on_loopback(tmp_path: Path) -> None:
    out = tmp_path / "tc.json"
    cmd = [sys.executable, str(SCRIPT), "--network", "loopback", "--ranks", "2", "--steps", "3"]
    cmd += ["--eval-every", "3", "--eval-windows", "4", "--methods", "ddp-tenfold1,local10-fp32"]
    subprocess.run([*cmd, "--out", str(out)], check=True, timeout=600, capture_output=True)
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"ddp-tenfold1", "local10-fp32"}
    assert all("error" not in s for s in report["methods"].values())
    assert out.with_suffix(".png").exists()
