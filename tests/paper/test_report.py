"""REPORT.md and the figures from a (partial) sweep of a tiny profile."""

from __future__ import annotations

from pathlib import Path

from paper.figures import ceiling_floor
from paper.profiles import (
    Profile,
    ablation_settings,
    entropy_setting,
    fixed_setting,
    lossless_setting,
)
from paper.report import write_report
from paper.sweep import run_sweep, write_json_atomic


def _profile(data: Path) -> Profile:
    settings = (
        lossless_setting(),
        fixed_setting(4),
        fixed_setting(10, groups=("fig1", "fig4a")),
        entropy_setting(c=5, M=4, groups=("fig4b", "fig5", "headline")),
        entropy_setting(c=6, M=4, groups=("fig4a", "fig4b", "fig5", "headline", "ablation")),
        *ablation_settings(
            ("glorot-uniform", "lecun-normal"),
            (1e-5, 1e-3),
            base_init="lecun-normal",
            base_l1=1e-5,
        ),
    )
    return Profile(
        name="tiny",
        description="test",
        epochs=3,
        seeds=(0, 1, 2),
        settings=settings,
        data_dir=str(data),
        train={"batch_size": 8, "init": "lecun-normal", "l1": 1e-5},
    )


def test_report_of_a_partial_sweep(tiny_dir: Path, tmp_path: Path) -> None:
    profile = _profile(tiny_dir)
    # train seeds 0 and 1 only: the report must say it is partial
    run_sweep(profile.replace(seeds=(0, 1)), tmp_path, progress=False)
    write_json_atomic(tmp_path / "runs" / "stranger__seed0.json", {"format": "x"})
    path = write_report(tmp_path, profile)
    text = path.read_text()
    n_all, n_done = len(profile.runs()), len(profile.replace(seeds=(0, 1)).runs())
    assert f"Partial results: {n_done} of {n_all} runs" in text
    # headline table: paper beside ours for both headline settings
    assert "| `entropy-c5-M4` (9:5) | 6.80 /" in text and "| `entropy-c6-M4` (10:6) |" in text
    assert "3.55 /" in text and "3.78 /" in text and "10.32 /" in text
    # every hyperparameter and the machine
    for field in ("batch_size", "lr", "lr_decay", "l1", "init", "workers"):
        assert f"| {field} |" in text, field
    assert "**Machine**" in text and "**Wall time**" in text
    # accuracy statements follow the paired-CI rule
    assert "95%" in text and ("within noise" in text or "better" in text or "worse" in text)
    # the ablation table covers the grid, the headline cell included
    assert text.count("| lecun-normal |") == 2 and "Which setting the headline uses" in text
    assert "lecun-normal with L1 = 1e-05" in text  # the headline cell, from the runs
    assert "- glorot-uniform: L1 1e-05 → 0.001" in text  # measured L1 effect per init
    for png in (
        "fig1_fixed_bits",
        "fig2_grad_rms",
        "fig3_entropy",
        "fig3b_correlation",
        "fig4_floor_ceiling",
        "fig5_bits",
        "fig6_ablation",
    ):
        assert (tmp_path / "figures" / f"{png}.png").stat().st_size > 10_000, png
        assert f"figures/{png}.png" in text


def test_ceiling_floor_labels() -> None:
    assert ceiling_floor({"id": "entropy", "F": 0.03, "M": 4, "c": 5}) == (9, 5)
    assert ceiling_floor({"id": "fixed", "bits": 10}) == (10, 10)
    assert ceiling_floor({"id": "lossless"}) is None
