"""TrainConfig: defaults, validation naming the field, JSON round trip, digest."""

from __future__ import annotations

import json

import pytest

import tenfold
from tenfold.train.config import DEFAULT_RATE, TrainConfig


def test_defaults_are_the_papers_where_it_gives_them() -> None:
    cfg = TrainConfig()
    assert cfg.workers == 5 and cfg.sync_every == 0 and cfg.threads == 1
    assert cfg.timeout_s == 60 and cfg.dataset == "fashion-mnist"
    # beyond the paper: rate-controlled pseudo-gradients with error feedback
    assert cfg.transmit == "delta" and cfg.error_feedback
    assert cfg.make_policy() == tenfold.TargetRate(bits_per_param=DEFAULT_RATE)
    assert cfg.averager_options() == {
        "transmit": "delta",
        "error_feedback": True,
        "collective": "auto",
        "threads": 1,
    }


def test_configs_saved_before_delta_mode_load_as_the_weights_runs_they_were() -> None:
    old = TrainConfig(transmit="weights").to_dict()
    del old["transmit"], old["error_feedback"]
    cfg = TrainConfig.from_dict(old)
    assert cfg.transmit == "weights" and cfg.error_feedback


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workers", 0),
        ("workers", 2.5),
        ("epochs", 0),
        ("batch_size", -1),
        ("threads", 0),
        ("eval_every", 0),
        ("eval_batch_size", 0),
        ("sync_every", -1),
        ("sync_every", True),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("timeout_s", -5.0),
        ("lr_decay", 0.0),
        ("lr_decay", 1.5),
        ("l1", -1e-6),
        ("init", "he"),
        ("seed", -1),
        ("dataset", "cifar"),
        ("transmit", "gradients"),
        ("collective", "ring"),
        ("error_feedback", 1),
        ("data_dir", 3),
        ("policy", "entropy"),
        ("policy", {"id": "nope"}),
        ("policy", {"id": "fixed", "bits": 99}),
        ("policy", {"id": "grad_rms"}),  # c1 missing
    ],
)
def test_bad_values_raise_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_the_collective_choices_are_the_averagers() -> None:
    from tenfold.distributed import collective
    from tenfold.train import config

    assert config.COLLECTIVES == collective.COLLECTIVES
    opts = TrainConfig(collective="reduce-scatter").averager_options()
    assert opts["collective"] == "reduce-scatter"
    assert TrainConfig().collective == "auto"


def test_json_round_trip_and_private_policy_copy() -> None:
    policy = tenfold.Fixed(6).get_config()
    cfg = TrainConfig(workers=3, epochs=2, policy=policy, data_dir="/x", sync_every=7)
    policy["bits"] = 2  # the caller's dict changing must not change the config
    assert cfg.policy["bits"] == 6
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.digest() == cfg.digest()


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


def test_digest_changes_with_any_field() -> None:
    base = TrainConfig()
    assert len(base.digest()) == 8
    assert base.replace(seed=1).digest() != base.digest()
    assert base.replace(policy=tenfold.Lossless().get_config()).digest() != base.digest()


def test_replace_validates() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig().replace(epochs=0)
