"""Profiles: validation, expansion into runs, and what the shipped profiles contain."""

from __future__ import annotations

import dataclasses

import pytest

from paper.profiles import (
    FIG1_BITS,
    TRAIN,
    Profile,
    RunSpec,
    Setting,
    ablation_settings,
    entropy_setting,
    fixed_setting,
    get_profile,
    lossless_setting,
)
from tenfold.train import TrainConfig


def _profile(**changes: object) -> Profile:
    fields: dict[str, object] = {
        "name": "t",
        "description": "test",
        "epochs": 2,
        "seeds": (0, 1),
        "settings": (lossless_setting(), fixed_setting(8)),
    }
    fields.update(changes)
    return Profile(**fields)  # type: ignore[arg-type]


def test_runs_are_seed_major_with_complete_configs() -> None:
    p = _profile(
        settings=(lossless_setting(), entropy_setting(c=6, M=4), fixed_setting(4)),
        seeds=(3, 5),
    )
    runs = p.runs()
    assert [r.key for r in runs] == [
        "baseline__seed3",
        "entropy-c6-M4__seed3",
        "fixed-N04__seed3",
        "baseline__seed5",
        "entropy-c6-M4__seed5",
        "fixed-N04__seed5",
    ]
    cfg = runs[4].config
    assert cfg.seed == 5 and cfg.epochs == 2 and cfg.download is False
    # EntropyAdaptive samples with the run's seed (as `tenfold train --seed` does)
    assert cfg.policy == {"id": "entropy", "F": 0.03, "M": 4, "c": 6, "seed": 5}
    assert runs[5].config.policy == {"id": "fixed", "bits": 4}
    assert p.total_epochs() == 12


def test_setting_seeds_and_overrides() -> None:
    abl = entropy_setting(c=6, M=4, overrides={"init": "lecun-normal", "l1": 1e-4}, seeds=(1,))
    p = _profile(settings=(lossless_setting(), abl), seeds=(0, 1, 2))
    runs = p.runs()
    assert [r.key for r in runs] == [
        "baseline__seed0",
        "baseline__seed1",
        "entropy-c6-M4__seed1",
        "baseline__seed2",
    ]
    assert runs[2].config.init == "lecun-normal" and runs[2].config.l1 == 1e-4


def test_runspec_round_trips_through_json_dict() -> None:
    spec = _profile(train_limit=100).runs()[1]
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.key == spec.key


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (1, 1)}, "seeds"),
        ({"settings": (lossless_setting(), lossless_setting())}, "settings"),
        ({"train": {"lr": -1.0}}, "lr"),
        ({"train": {"seed": 3}}, "train"),
        ({"train_limit": 0}, "train_limit"),
        ({"entropy_F": (0.0,)}, "entropy_F"),
        ({"entropy_M": (17,)}, "entropy_M"),
        ({"dataset": "cifar"}, "dataset"),
        ({"name": "a/b"}, "name"),
    ],
)
def test_profile_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _profile(**changes)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "a__b"}, "name"),
        ({"policy": {"id": "fixed", "bits": 99}}, "policy"),
        ({"policy": {"id": "entropy", "seed": 1}}, "policy"),
        ({"groups": ("fig9",)}, "groups"),
        ({"overrides": {"seed": 1}}, "overrides"),
    ],
)
def test_setting_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"name": "x", "label": "x", "policy": {"id": "lossless"}}
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        Setting(**base)  # type: ignore[arg-type]


def test_ablation_grid_skips_the_headline_cell() -> None:
    cells = ablation_settings(
        ("glorot-uniform", "lecun-normal"), (1e-6, 1e-3), base_init="glorot-uniform", base_l1=1e-6
    )
    assert [(s.overrides["init"], s.overrides["l1"]) for s in cells] == [
        ("glorot-uniform", 1e-3),
        ("lecun-normal", 1e-6),
        ("lecun-normal", 1e-3),
    ]
    assert len({s.name for s in cells}) == 3


def test_ablation_grid_always_holds_the_headline_cell() -> None:
    cells = ablation_settings(("glorot-uniform",), (1e-4,), base_init="lecun-normal", base_l1=1e-5)
    assert sorted((s.overrides["init"], s.overrides["l1"]) for s in cells) == [
        ("glorot-uniform", 1e-5),
        ("glorot-uniform", 1e-4),
        ("lecun-normal", 1e-4),
    ]


def test_pinned_hyperparameters_are_the_trainers_defaults() -> None:
    # The profiles pin TRAIN so saved results keep matching them; if TrainConfig's documented
    # defaults move, this fails and someone decides whether the reproduction follows.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {k: defaults[k] for k in TRAIN} == TRAIN


def test_full_profile_covers_every_figure_with_three_seeds() -> None:
    p = get_profile("full")
    assert p.train_limit is None and p.test_limit is None and p.dataset == "fashion-mnist"
    assert all(len(s.seeds or p.seeds) >= 3 for s in p.settings)
    by_group: dict[str, list[Setting]] = {}
    for s in p.settings:
        for g in s.groups:
            by_group.setdefault(g, []).append(s)
    assert sorted(s.policy["bits"] for s in by_group["fig1"]) == list(FIG1_BITS)
    assert sorted(s.label for s in by_group["fig4a"]) == sorted(
        [f"10:{c}" for c in range(2, 10)] + ["N=10"]
    )
    assert sorted(s.label for s in by_group["fig4b"]) == sorted(f"{c + 4}:{c}" for c in range(2, 9))
    assert {s.name for s in by_group["headline"]} == {"entropy-c5-M4", "entropy-c6-M4"}
    assert {s.name for s in by_group["fig5"]} == {"entropy-c5-M4", "entropy-c6-M4"}
    # 3 inits x 3 L1 strengths, the headline cell included once
    cells = {
        (s.overrides.get("init", TRAIN["init"]), s.overrides.get("l1", TRAIN["l1"]))
        for s in by_group["ablation"]
    }
    assert len(cells) == 9 == len(by_group["ablation"])
    assert sum(s.is_baseline for s in p.settings) == 1


def test_quick_profile_is_small_and_touches_every_figure() -> None:
    p = get_profile("quick")
    groups = {g for s in p.settings for g in s.groups}
    assert groups == {"baseline", "fig1", "fig4a", "fig4b", "fig5", "headline", "ablation"}
    assert p.total_epochs() <= 60 and p.train_limit is not None
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
