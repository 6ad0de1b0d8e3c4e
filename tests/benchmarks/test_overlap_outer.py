"""benchmarks/overlap_outer.py: the sweep's plumbing (one JSON per run, resumed, summed up);
the runs themselves are char-gpt trainings, run by hand (its docstring)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overlap_outer.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenfold_bench_overlap_outer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_sweep_keeps_each_run_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load()
    calls: list[tuple[Any, ...]] = []

    def fake(label: str, lr: float, momentum: float, overlap: bool, seed: int, steps: int) -> dict:
        calls.append((label, seed))
        return {"label": label, "seed": seed, "val_loss": [[steps, 2.5 + lr]]}

    monkeypatch.setattr(bench, "one_run", fake)
    out = tmp_path / "s.json"
    argv = ["--seeds", "0", "--steps", "7", "--jobs", "1", "--out-dir", str(tmp_path / "runs")]
    assert bench.main([*argv, "--out", str(out)]) == 0
    assert len(calls) == len(bench.CONFIGS) == len(list((tmp_path / "runs").glob("*.json")))
    summary = json.loads(out.read_text())
    assert summary["final_val_loss"]["overlap sgd lr0.5"] == [3.0]
    calls.clear()
    assert bench.main(argv) == 0  # every run on disk: nothing is run again
    assert calls == []
