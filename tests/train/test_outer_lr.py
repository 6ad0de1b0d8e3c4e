"""``outer_lr`` / ``--outer-lr``: a damped outer step for (overlapped) Local SGD.

The config's validation and default, the option reaching the synchroniser (its effect on
the first sync, which is known exactly), and resuming an overlapped damped run bit for
bit (its checkpoint holds no outer-optimizer state: outer SGD without momentum has none).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file
from test_checkpoint import DELTA, SimulatedCrash, assert_same_run, tiny_config

from tenfold.cli import main
from tenfold.errors import ConfigError
from tenfold.train import (
    TrainConfig,
    final_weights,
    load_dataset,
    run_simulated,
    simulated_state,
)
from tenfold.train.config import OVERLAP_OUTER_LR
from tenfold.train.outer import outer_optimizer


@pytest.mark.parametrize("value", [0, 0.0, -0.5, float("nan"), float("inf"), True, "0.5"])
def test_bad_outer_lr_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ConfigError, match="outer_lr"):
        TrainConfig(outer_lr=value)  # type: ignore[arg-type]


def test_an_outer_step_needs_delta_transmit() -> None:
    with pytest.raises(ConfigError, match="outer_lr 0.5 needs transmit='delta'"):
        TrainConfig(transmit="weights", outer_lr=0.5)
    TrainConfig(transmit="weights", outer_lr=1.0)  # 1: no outer step, any transmit


def test_default_is_the_average_blocking_and_damped_overlapped() -> None:
    assert TrainConfig().outer_lr is None and TrainConfig().effective_outer_lr == 1.0
    assert TrainConfig(overlap=True).effective_outer_lr == OVERLAP_OUTER_LR < 1
    assert TrainConfig(overlap=True, outer_lr=1).effective_outer_lr == 1.0
    assert TrainConfig(outer_lr=0.25).effective_outer_lr == 0.25
    # a config saved before the field existed keeps its undamped outer step
    old = TrainConfig(overlap=True).to_dict()
    del old["outer_lr"]
    assert TrainConfig.from_dict(old).effective_outer_lr == 1.0
    cfg = TrainConfig(overlap=True, outer_lr=0.75)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_flag_sets_the_field() -> None:
    from tenfold.cli import build_parser
    from tenfold.cli.train import config_from_args

    def config(*argv: str) -> TrainConfig:
        return config_from_args(build_parser().parse_args(["train", *argv]))

    assert config().outer_lr is None
    assert config("--overlap", "--outer-lr", "0.25").effective_outer_lr == 0.25
    with pytest.raises(ValueError, match="outer_lr"):
        config("--outer-lr", "-1")


def test_outer_optimizer_is_plain_sgd_or_none() -> None:
    model = torch.nn.Linear(3, 2)
    assert outer_optimizer(TrainConfig(), model) is None
    opt = outer_optimizer(TrainConfig(outer_lr=0.5), model)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [0.5]
    assert opt.param_groups[0]["momentum"] == 0  # stateless: nothing to checkpoint


def test_the_first_sync_moves_the_shared_model_by_outer_lr(tiny_data: Path) -> None:
    """One blocking round from the same start: s + beta * (average - s)."""
    cfg = tiny_config(tiny_data, **DELTA, workers=2, steps=4)
    start = final_weights(simulated_state(cfg, load_dataset(data_dir=tiny_data)))
    full = final_weights(run_simulated(cfg).state)
    half = final_weights(run_simulated(cfg.replace(outer_lr=0.5)).state)
    for name, s in start.items():
        want = torch.from_numpy(s + 0.5 * (full[name] - s))
        torch.testing.assert_close(torch.from_numpy(half[name]), want, rtol=0, atol=1e-6)


OVERLAP = {**DELTA, "overlap": True}


@pytest.fixture(scope="module", params=[None, 1.0], ids=["damped", "undamped"])
def overlap_reference(
    request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainConfig, Path]:
    """An uninterrupted overlapped run: the default damped outer step, or Local SGD's."""
    cfg = tiny_config(tiny_data, **OVERLAP, outer_lr=request.param)
    out = tmp_path_factory.mktemp("overlap-reference") / "run"
    run_simulated(cfg, run_dir=out)
    return cfg, out


@pytest.mark.parametrize("crash_at", [2, 5])
def test_an_overlapped_run_resumes_bit_identically(
    tmp_path: Path, overlap_reference: tuple[TrainConfig, Path], crash_at: int
) -> None:
    cfg, reference = overlap_reference
    out = tmp_path / "run"

    def die(record: dict) -> None:
        if record["sync"] == crash_at:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_simulated(cfg, run_dir=out, on_record=die)
    run_simulated(cfg, run_dir=out, resume=True)
    assert_same_run(reference, out)


def test_ranks_and_simulation_agree_bit_for_bit(tiny_data: Path, tmp_path: Path) -> None:
    """Two spawned ranks (LocalSGD with the outer SGD, CompressedAverager.set_reference)
    end with the simulation's weights (SimulatedAverager) to the bit."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_data), "--workers", "2", "--epochs", "1"]
    argv += ["--batch-size", "16", "--lr", "0.1", "--sync-every", "3", "--overlap"]
    assert main([*argv, "--outer-lr", "0.75", "--out", str(out), "--quiet"]) == 0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.effective_outer_lr == 0.75
    weights = load_file(str(out / "model.safetensors"))
    for name, w in final_weights(run_simulated(config).state).items():
        assert weights[name].tobytes() == w.tobytes(), name
