"""The driver loop (simulated path, in-process) and the run directory it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

import tenfold
from tenfold.distributed import NonFiniteWeightsError, SimulatedAverager
from tenfold.train import (
    TrainConfig,
    final_weights,
    load_dataset,
    make_workers,
    read_metrics,
    run_simulated,
    simulated_state,
    train_loop,
)

REQUIRED = {
    "epoch",
    "test_accuracy",
    "test_loss",
    "bits_per_param",
    "quantized_bits_per_param",
    "bytes_sent",
    "layers",
}


def tiny_config(data: Path, **changes: object) -> TrainConfig:
    kwargs: dict = {
        "workers": 3,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.1,
        "data_dir": str(data),
        "policy": tenfold.EntropyAdaptive().get_config(),
        **changes,
    }
    return TrainConfig(**kwargs)


def test_run_directory_contents(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen: list[dict] = []
    res = run_simulated(tiny_config(tiny_data, epochs=3), run_dir=out, on_record=seen.append)
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png",
        "bits.png",
        "checkpoint.safetensors",  # the last one: resuming a finished run only rewrites files
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "run.json",
    ]
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == res.state.config
    records = read_metrics(out)
    assert records == seen == res.metrics
    assert [r["epoch"] for r in records] == [1.0, 2.0, 3.0]
    for r in records:
        assert set(r) >= REQUIRED
        assert [t["name"] for t in r["layers"]] == [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias",
        ]
        assert {"N", "H", "grad_rms"} <= set(r["layers"][0])
        assert r["layers"][0]["grad_rms"] > 0 and r["layers"][0]["H"] is not None
        # bytes_sent: this rank's packet plus the two it forwards around the 3-rank ring
        own = r["bits_per_param"] * r["num_values"] / 8
        assert own < r["bytes_sent"] < r["bytes_all_ranks"]
        assert r["world_size"] == 3
    # the synthetic task is easy: the averaged model learns it
    assert records[-1]["test_accuracy"] > 0.5
    weights = load_file(str(out / "model.safetensors"))
    for name, w in final_weights(res.state).items():
        assert weights[name].tobytes() == w.tobytes()
    for png in ("accuracy.png", "bits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "simulated" and run["syncs"] == 3
    assert run["final_test_accuracy"] == records[-1]["test_accuracy"]


def test_sync_every_k_steps_and_eval_every(tiny_data: Path) -> None:
    # 7 steps per epoch, 2 epochs = 14 steps; every 4 steps -> syncs after 4, 8, 12, 14
    res = run_simulated(tiny_config(tiny_data, sync_every=4, eval_every=3))
    m = res.metrics
    assert [r["step"] for r in m] == [4, 8, 12, 14]
    assert [r["epoch"] for r in m] == pytest.approx([4 / 7, 8 / 7, 12 / 7, 2.0])
    # evaluated after the 3rd sync and after the last one only
    assert [r["test_accuracy"] is not None for r in m] == [False, False, True, True]
    # the learning rate at each round's first step (rounds start at steps 0, 4, 8, 12)
    assert [r["lr"] for r in m] == pytest.approx([0.1, 0.1, 0.1 * 0.95, 0.1 * 0.95])


def test_workers_agree_after_every_sync(tiny_data: Path) -> None:
    res = run_simulated(tiny_config(tiny_data, epochs=1, workers=3))
    first = res.state.workers[0].model.state_dict()
    for w in res.state.workers[1:]:
        for name, t in w.model.state_dict().items():
            assert t.numpy().tobytes() == first[name].numpy().tobytes()


def test_preloaded_data_gives_the_same_run(tiny_data: Path) -> None:
    cfg = tiny_config(tiny_data, epochs=1)
    a = run_simulated(cfg)
    b = run_simulated(cfg, data=load_dataset(data_dir=tiny_data))
    for (name, x), (_, y) in zip(
        final_weights(a.state).items(), final_weights(b.state).items(), strict=True
    ):
        assert x.tobytes() == y.tobytes(), name


def test_nonfinite_weights_stop_the_run_with_a_clear_error(tiny_data: Path) -> None:
    # weights mode: in delta mode a fresh run first aligns every worker on worker 0's
    # weights (as DDP does), which would replace worker 1's NaN (see the next test)
    cfg = tiny_config(tiny_data, epochs=1, transmit="weights")
    state = simulated_state(cfg, load_dataset(data_dir=tiny_data))
    with torch.no_grad():
        state.workers[1].model.fc2.bias[0] = float("nan")  # as if training had diverged
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite.*worker 1: fc2\.weight"):
        train_loop(state)


def test_nonfinite_weights_stop_a_delta_run_too(tiny_data: Path) -> None:
    cfg = tiny_config(tiny_data, epochs=1)
    assert cfg.transmit == "delta"
    workers = make_workers(cfg, load_dataset(data_dir=tiny_data), [0, 1, 2])
    averager = SimulatedAverager(cfg.make_policy(), **cfg.averager_options())
    averager.initialize([w.named_parameters() for w in workers])
    with torch.no_grad():
        workers[2].model.fc1.weight[0, 0] = float("inf")  # diverged after the start
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite.*worker 2: fc1\.weight"):
        averager.average([w.named_parameters() for w in workers])
