"""The sweep's simulated runs give the weights of real torch.distributed ranks, bit for bit.

The sweep trains with its own driver (:func:`tenfold.experiments.sweep.simulate`, built from
the trainer's public pieces so it can record entropy grids after every synchronisation).
This test runs the same configuration as K real gloo processes (``spawn_training``, what
``tenfold train`` does) and compares the final weights byte for byte, and the per-epoch
accuracy and packet sizes exactly, over a few epochs of a lossy, seeded policy.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.numpy import load_file

from paper.profiles import Profile, entropy_setting
from paper.sweep import load_data, simulate
from tenfold.train import final_weights, read_metrics, spawn_training


def test_sweep_driver_equals_torch_distributed(tiny_dir: Path, tmp_path: Path) -> None:
    profile = Profile(
        name="equal",
        description="simulated vs distributed",
        epochs=3,
        seeds=(7,),
        settings=(entropy_setting(c=5, M=4),),
        data_dir=str(tiny_dir),
        train={"workers": 3, "batch_size": 16, "lr": 0.1},
    )
    (spec,) = profile.runs()
    doc, state = simulate(spec, load_data(spec))

    out = tmp_path / "dist"
    spawn_training(spec.config, out, progress=False)

    weights = load_file(str(out / "model.safetensors"))
    sim = final_weights(state)
    assert sorted(weights) == sorted(sim)
    for name, w in sim.items():
        assert weights[name].tobytes() == w.tobytes(), name
    records = read_metrics(out)
    assert len(records) == len(doc["epochs"]) == 3
    for key in ("test_accuracy", "test_loss", "bytes_all_ranks", "quantized_bits_per_param"):
        assert [r[key] for r in records] == [r[key] for r in doc["epochs"]], key
    # the policy really was lossy and seeded: N per layer came from entropy estimates
    assert all(
        layer["H"] is not None
        for r in doc["epochs"]
        for layer in r["layers"]
        if layer["name"].endswith("weight")
    )
