"""``torchrun --standalone --nproc_per_node=2 -m tenfold train ...`` (a real subprocess).

``--standalone`` rendezvouses on ``localhost:0``: torchrun picks a free port, none is fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tenfold.cli import main as tenfold_main
from tenfold.train import final_weights, read_metrics, run_simulated
from tenfold.train.config import TrainConfig


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tenfold",
            "train",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_two_ranks_under_torchrun(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _torchrun(
        "--data",
        str(tiny_data),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done, 2 synchronisations" in proc.stdout  # rank 0's summary, printed once
    assert proc.stdout.count("final test accuracy") == 1
    records = read_metrics(out)
    assert [r["world_size"] for r in records] == [2, 2]
    run = (out / "run.json").read_text()
    assert '"mode": "torchrun"' in run
    # torchrun's world size became the worker count; same weights as the simulated run
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.workers == 2
    sim = run_simulated(config)
    weights = load_file(str(out / "model.safetensors"))
    for name, w in final_weights(sim.state).items():
        assert weights[name].tobytes() == w.tobytes(), name


def test_workers_must_match_the_world_size(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # torchrun's environment, in-process: the options are checked before joining any group
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost"}.items():
        monkeypatch.setenv(key, value)
    argv = ["train", "--data", str(tiny_data), "--workers", "3", "--out", str(tmp_path / "o")]
    assert tenfold_main(argv) == 2
    assert "--workers 3 differs from torchrun's world size 2" in capsys.readouterr().err
