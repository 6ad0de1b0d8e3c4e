"""benchmarks/train_compare.py: its method matrix, summaries, verdicts, and a --quick run on
loopback (2 ranks, a few steps of a subset of methods; it checks that each runs and that the
report has its schema, never how fast)."""

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
    methods = tc.all_methods()
    names = [m.name for m in methods]
    assert names[0] == "ddp-fp32" and len(names) == len(set(names))
    assert {"ddp-fp16", "ddp-powersgd", "ddp-tenfold", "local-fp32"} <= set(names)
    for base in ("local-tenfold", "diloco-tenfold"):  # blocking and overlapped
        assert base in names and f"{base}-overlap" in names
    assert set(tc.TENFOLD_METHODS) <= set(names) and set(tc.TORCH_HOOKS) <= set(names)
    assert tc.hook_mode()["label"]  # async / synchronous / unavailable, always labelled


def _steps(rank: int, n: int = 4) -> list[dict]:
    return [
        {"kind": "step", "step": i + 1, "loss": 3.0 - i, "seconds": 0.1 * (rank + 1),
         "train_seconds": 0.1 * (rank + 1) * (i + 1), "tx_bytes": 100 * (i + 1) * (rank + 1),
         **({"val_loss": 3.0 - 0.5 * i} if rank == 0 and i % 2 == 1 else {})}
        for i in range(n)
    ]  # fmt: skip


def test_summary_finds_the_first_evaluation_at_the_target() -> None:
    method = tc.Method("ddp-tenfold", "ddp", "tenfold")
    s = tc.summarise(method, [_steps(0), _steps(1)], target=2.0)
    # val losses: step 2 -> 2.5, step 4 -> 1.5: the target 2.0 is first reached at step 4
    assert s["reached"] and s["steps_to_target"] == 4
    assert s["time_to_target_s"] == pytest.approx(0.4)  # rank 0's training clock
    assert s["seconds_per_step_median"] == pytest.approx(0.2)  # the slower rank
    assert s["bytes_per_rank"] == [400, 800]
    miss = tc.summarise(method, [_steps(0), _steps(1)], target=1.0)
    assert not miss["reached"] and miss["time_to_target_s"] is None


def test_verdicts_come_from_the_numbers() -> None:
    def run(t: float | None, sps: float = 1.0) -> dict:
        return {"reached": t is not None, "time_to_target_s": t,
                "seconds_per_step_median_after_warmup": sps}  # fmt: skip

    slow = {
        "calibration": {"R": 12.0},
        "seeds": {"0": {"ddp-fp32": run(100.0), "ddp-fp16": run(60.0), "ddp-powersgd": run(40.0),
                        "ddp-tenfold": run(30.0), "diloco-tenfold": run(15.0),
                        "local-tenfold-overlap": {"not_available": "no"}}},
    }  # fmt: skip
    fast = {
        "calibration": {"R": 0.2},
        "seeds": {"0": {"ddp-fp32": run(10.0, 0.5), "ddp-tenfold": run(12.0, 0.6)}},
    }
    out = tc.verdicts({"10mbit": slow, "1gbit": fast})
    v = out["links"]["10mbit"]
    assert v["best_tenfold"] == "diloco-tenfold" and v["best_torch_hook"] == "ddp-powersgd"
    assert v["speedup_vs_ddp_fp32"] == pytest.approx(100 / 15)
    assert v["speedup_vs_best_torch_hook"] == pytest.approx(40 / 15)
    assert v["met"] is True
    w = out["links"]["1gbit"]
    assert w["target"] == "R < 1" and w["met"] is False  # 0.6 s/step > 0.5


@pytest.mark.timeout(900)
def test_quick_run_on_loopback(tmp_path: Path) -> None:
    out = tmp_path / "tc.json"
    methods = "ddp-tenfold,local-tenfold,diloco-tenfold-overlap"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--methods", methods]
    cmd += ["--out-dir", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(cmd, timeout=850, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    link = report["links"]["loopback"]
    assert link["calibration"]["R"] > 0
    runs = link["seeds"]["0"]
    assert set(runs) == {"ddp-fp32", *methods.split(",")}
    target = runs["ddp-fp32"]["final_val_loss"]
    for name, s in runs.items():
        if "not_available" in s:  # the overlapped LocalSGD is not built yet
            assert name.endswith("-overlap")
            continue
        assert "error" not in s, s
        assert s["target"] == pytest.approx(target)
        assert s["steps"] <= s["max_steps"] and s["val_loss"]
    assert runs["ddp-tenfold"]["hook_mode"]
    assert "loopback" in report["targets"]["links"]
    assert out.with_suffix(".png").exists()
    # resumable: a second run reuses every file and only aggregates
    again = subprocess.run(cmd, timeout=300, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and json.loads(out.read_text())["links"]["loopback"] == link
