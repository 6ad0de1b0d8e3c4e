"""The beyond profile: its settings, the peer averager in the trainer, and the Pareto section.

The section's conclusions are computed from the runs: synthetic run files where the
opposite holds must flip them (a target met becomes missed, and the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from paper.analysis import analyze
from paper.compressor_comparison import draw_pareto, family_of, pareto_points, render_section
from paper.peer_averager import PeerAverager
from paper.peers import TopK
from paper.profiles import beyond_profile, full_profile
from paper.sweep import run_sweep, sweep_file
from tenfold.train.config import TrainConfig


def test_the_profile_shares_the_paper_settings_with_full() -> None:
    beyond = {s.name: s for s in beyond_profile().settings}
    full = {s.name: s for s in full_profile(epochs=12).settings}
    shared = set(beyond) & set(full)
    assert {"baseline", "entropy-c6-M4", "fixed-N08"} <= shared
    b, f = beyond_profile(), full_profile(epochs=12)
    for name in shared:  # same configuration: the same run file serves both
        assert b.config_for(beyond[name], 0) == f.config_for(full[name], 0), name
    assert b.config_for(beyond["delta-rate0p5-ans"], 1).transmit == "delta"
    assert b.config_for(beyond["delta-rate0p5-ans"], 1).policy["seed"] == 1
    assert beyond["peer-topk3"].peer == {"id": "topk", "fraction": 0.03, "value_bits": 2}
    assert not beyond["peer-fp16"].is_baseline and beyond["baseline"].is_baseline
    assert sweep_file(b) == "sweep-beyond.json" and sweep_file(f) == "sweep.json"


def test_families() -> None:
    delta = TrainConfig(transmit="delta").to_dict()
    assert family_of({"policy": {"id": "target_rate", "coder": "auto"}}, delta) == "tenfold-ans"
    assert family_of({"policy": {"id": "target_rate", "coder": "huffman"}}, delta) == (
        "tenfold-huffman"
    )
    assert family_of({"policy": {"id": "entropy"}}, {"transmit": "weights"}) == "paper-entropy"
    assert family_of({"policy": {"id": "entropy"}}, {}) == "paper-entropy"  # old run files
    assert family_of({"policy": {"id": "lossless"}, "peer": {"id": "powersgd"}}, delta) == (
        "peer-powersgd"
    )
    assert family_of({"policy": {"id": "lossless"}}, {}) is None


def test_peer_averager_keeps_workers_identical_and_feeds_back_errors() -> None:
    g = torch.Generator().manual_seed(0)
    workers = [[("w", torch.randn(50, 40, generator=g))] for _ in range(3)]
    avg = PeerAverager(TopK(fraction=0.05), error_feedback=True)
    avg.initialize(workers)
    for rank, named in enumerate(workers):
        named[0][1].add_(torch.randn(50, 40, generator=g) * 0.01 * (rank + 1))
    stats = avg.average(workers)
    assert all(torch.equal(workers[0][0][1], w[0][1]) for w in workers[1:])
    assert stats[0].bits_per_param < 2 and stats[0].world_size == 3
    residuals = avg.state_dict()["residuals"]
    assert all(r is not None and np.abs(r["w"]).max() > 0 for r in residuals)


# ---- the section, from synthetic run files ------------------------------------------------


def _doc(name: str, seed: int, acc: float, bits: float, **setting: Any) -> dict[str, Any]:
    policy = setting.pop("policy", {"id": "target_rate", "bits_per_param": bits, "coder": "auto"})
    transmit = setting.pop("transmit", "delta")
    n, k = 1000, 5
    return {
        "key": f"{name}__seed{seed}",
        "seed": seed,
        "setting": {
            "name": name,
            "label": name,
            "policy": policy,
            "groups": [],
            "overrides": {},
            **setting,
        },
        "config": {**TrainConfig(transmit=transmit).to_dict(), "seed": seed},
        "status": "ok",
        "entropy_grid": {"F": [0.03], "M": [4]},
        "epochs": [
            {
                "epoch": 1.0,
                "test_accuracy": acc,
                "bytes_all_ranks": bits * n * k / 8,
                "num_values": n,
                "world_size": k,
                "quantized_bits_per_param": bits,
                "layers": [],
                "entropy": {},
            }
        ],
    }


def _runs(ours: float, peer: float) -> list[dict[str, Any]]:
    """Baseline at 80% (+- seed noise); tenfold at 2 and 0.4 bits; a top-k peer at 0.4 bits."""
    docs = []
    for seed, noise in enumerate((0.0, 0.002, -0.002)):
        docs.append(_doc("baseline", seed, 0.80 + noise, 32, policy={"id": "lossless"}))
        docs.append(_doc("delta-rate2-ans", seed, 0.80 + noise + 0.0005 * (seed - 1), 2.0))
        docs.append(_doc("delta-rate0p4-ans", seed, ours + noise, 0.4))
        docs.append(
            _doc(
                "peer-topk3",
                seed,
                peer + noise,
                0.4,
                policy={"id": "lossless"},
                peer={"id": "topk", "fraction": 0.03},
            )  # fmt: skip
        )
    return docs


def test_the_section_states_what_the_runs_show(tmp_path: Path) -> None:
    a = analyze(_runs(ours=0.797, peer=0.77))
    assert a.baseline == "baseline"  # not the peer's placeholder Lossless policy
    points = {p.name: p for p in pareto_points(a)}
    assert points["delta-rate2-ans"].within_noise
    fig = draw_pareto(a, tmp_path / "figures" / "pareto.png")
    assert fig is not None and fig.stat().st_size > 10_000
    text = render_section(a, fig, tmp_path, 'make reproduce ARGS="--profile beyond"')
    assert "![accuracy vs bits/param](figures/pareto.png)" in text
    assert "within noise at <= 2.13 bits/param (15x): **met**" in text
    assert "within 0.5 pp at <= 0.5 bits/param: **met**" in text
    assert "above the best peer: **met**" in text and "+2.70 pp" in text


def test_the_section_flips_when_the_opposite_holds(tmp_path: Path) -> None:
    a = analyze(_runs(ours=0.70, peer=0.79))
    text = render_section(a, None, tmp_path, "cmd")
    assert "within 0.5 pp at <= 0.5 bits/param: **missed**" in text
    assert "above the best peer: **missed**" in text and "-9.00 pp" in text
    # and nothing within noise at all: the first target is missed too
    b = analyze([d for d in _runs(0.70, 0.79) if not d["key"].startswith("delta-rate2")])
    assert "(15x): **missed**" in render_section(b, None, tmp_path, "cmd")


@pytest.mark.parametrize("seeds", [(0, 1)])
def test_a_tiny_beyond_sweep_reports_its_section(
    tiny_dir: Path, tmp_path: Path, seeds: tuple[int, ...]
) -> None:
    profile = beyond_profile(epochs=2, seeds=seeds)
    keep = {"baseline", "delta-rate0p5-ans", "peer-topk3", "peer-powersgd-r1", "entropy-c6-M4"}
    settings = tuple(s for s in profile.settings if s.name in keep)
    tiny = profile.replace(
        settings=settings, data_dir=str(tiny_dir), train={**profile.train, "batch_size": 16}
    )
    result = run_sweep(tiny, tmp_path, progress=False)
    assert not result.failed
    from paper.report import write_report

    text = write_report(tmp_path, tiny).read_text()
    assert "## Beyond the paper" in text and (tmp_path / "figures" / "pareto.png").exists()
    assert "PowerSGD rank 1 + EF" in text and "top-k 3% + EF" in text
