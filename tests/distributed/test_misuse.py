"""Arguments of the wrong kind fail at once, with a message that says what to pass:
never at the first synchronisation, and never as a Python error from deep inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tenfold
from tenfold.distributed import CompressedAverager, LocalSGD


@pytest.mark.parametrize("policy", [1.0, "1bit", None])
def test_a_policy_that_is_not_a_tenfold_policy_fails_at_construction(policy: object) -> None:
    with pytest.raises(tenfold.InputTypeError, match="policy must be a tenfold policy"):
        CompressedAverager(policy)  # type: ignore[arg-type]
    if policy is None:  # LocalSGD's default: TargetRate(1.0)
        return
    with pytest.raises(tenfold.InputTypeError, match="policy must be a tenfold policy"):
        LocalSGD(torch.nn.Linear(2, 2), sync_every=5, policy=policy, allow_single_process=True)  # type: ignore[arg-type]


def test_local_sgd_wants_the_module_not_its_state_dict() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(tenfold.InputTypeError, match=r"not its state_dict\(\)"):
        LocalSGD(model.state_dict(), sync_every=1, allow_single_process=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (torch.nn.Linear(2, 2), r"model.named_parameters\(\)"),
        (torch.zeros(3), "iterable of tensors"),
        (3, "iterable of tensors"),
    ],
)
def test_average_names_what_it_takes(params: object, match: str) -> None:
    averager = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0))
    with pytest.raises(tenfold.InputTypeError, match=match):
        averager.average(params)  # type: ignore[arg-type]


def test_compress_says_how_many_values_are_not_finite_and_where() -> None:
    x = np.ones(10, np.float32)
    x[3], x[7] = np.nan, np.inf
    for policy in (tenfold.TargetRate(bits_per_param=1.0), tenfold.Fixed(8)):
        with pytest.raises(
            tenfold.ConfigError, match=r"1 NaN, 1 Inf of 10 values; the first at flat index 3"
        ):
            tenfold.compress({"w": x}, policy)
