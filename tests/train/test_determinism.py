"""The same seed gives the same run: identical metrics (timings aside) and weights.

In-process with simulated workers (bit for bit what real ranks compute, see
test_cli_train.py); with real ranks in the slow tier. A different seed must give a
different run, or these comparisons could not fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_checkpoint import TIMINGS, without_timings

import tenfold
from tenfold.cli import main
from tenfold.train import TrainConfig, TrainResult, final_weights, read_metrics, run_simulated


def config(data: Path, **changes: object) -> TrainConfig:
    kwargs: dict = {
        "workers": 3,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.1,
        "sync_every": 5,
        "data_dir": str(data),
        "policy": tenfold.EntropyAdaptive(F=0.1).get_config(),  # seeded sampling
        **changes,
    }
    return TrainConfig(**kwargs)


def weights_bytes(result: TrainResult) -> dict[str, bytes]:
    return {n: w.tobytes() for n, w in final_weights(result.state).items()}


def test_same_seed_same_run(tiny_data: Path) -> None:
    a = run_simulated(config(tiny_data))
    b = run_simulated(config(tiny_data))
    assert weights_bytes(a) == weights_bytes(b)
    assert without_timings(a.metrics) == without_timings(b.metrics)
    assert len(a.metrics) == 3 and set(a.metrics[0]) > TIMINGS  # there is more to compare


@pytest.mark.parametrize("change", [{"seed": 1}, {"policy": tenfold.Fixed(6).get_config()}])
def test_another_seed_or_policy_is_another_run(tiny_data: Path, change: dict) -> None:
    a = run_simulated(config(tiny_data))
    c = run_simulated(config(tiny_data, **change))
    assert weights_bytes(a) != weights_bytes(c)
    assert without_timings(a.metrics) != without_timings(c.metrics)


def test_only_the_codec_seed_differs(tiny_data: Path) -> None:
    """The codec's sampling seed alone changes the weights: it is part of what is fixed."""
    a = run_simulated(config(tiny_data))
    policy = tenfold.EntropyAdaptive(F=0.1, seed=123).get_config()
    c = run_simulated(config(tiny_data, policy=policy))
    assert weights_bytes(a) != weights_bytes(c)


@pytest.mark.slow
def test_two_distributed_runs_are_identical(tiny_data: Path, tmp_path: Path) -> None:
    argv = ["train", "--data", str(tiny_data), "--workers", "2", "--epochs", "2"]
    argv += ["--batch-size", "16", "--sync-every", "6", "--quiet", "--out"]
    assert main([*argv, str(tmp_path / "a")]) == 0
    assert main([*argv, str(tmp_path / "b")]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert without_timings(read_metrics(a)) == without_timings(read_metrics(b))
