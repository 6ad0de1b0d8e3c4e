"""tenfold.distributed.outer_delay: the delayed outer step's stability (known answers, the
recurrence itself) and the warning LocalSGD(overlap=True) gives for an unstable one."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.distributed import LocalSGD, OuterStepWarning
from tenfold.distributed.outer_delay import (
    delayed_spectral_radius,
    max_stable_lr,
    overlap_outer_warning,
)


def _iterate(lr: float, momentum: float, nesterov: bool, delay: int, steps: int) -> float:
    """|error| after ``steps`` boundaries of torch's SGD update on the delayed error."""
    errors = [1.0] * (delay + 1)
    v = 0.0
    for _ in range(steps):
        g = errors[-1 - delay]
        if momentum:
            v = momentum * v + g
            step = g + momentum * v if nesterov else v
        else:
            step = g
        errors.append(errors[-1] - lr * step)
        if abs(errors[-1]) > 1e12:  # diverged (before inf - inf makes it nan)
            return math.inf
    return abs(errors[-1])


def test_known_answers() -> None:
    # no momentum, one round late: z^2 - z + lr = 0, complex roots of modulus sqrt(lr)
    for lr in (0.3, 0.5, 0.9):
        assert delayed_spectral_radius(lr) == pytest.approx(math.sqrt(lr))
    # blocking: e' = (1 - lr) e
    for lr in (0.2, 1.0, 1.5):
        assert delayed_spectral_radius(lr, delay=0) == pytest.approx(abs(1 - lr), abs=1e-12)
    assert delayed_spectral_radius(1.0) == pytest.approx(1.0)  # plain Local SGD overlapped
    assert max_stable_lr() == 0.999
    assert 0.2 < max_stable_lr(0.9, nesterov=True) < 0.3  # DiLoCo's momentum, delayed
    assert max_stable_lr(0.9, nesterov=True, delay=0) > 1.3  # ... blocking
    assert max_stable_lr(0.9) < max_stable_lr(0.9, nesterov=True)


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(0.05, 1.5),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
    delay=st.integers(0, 2),
)
def test_the_radius_predicts_the_recurrence(
    lr: float, momentum: float, nesterov: bool, delay: int
) -> None:
    radius = delayed_spectral_radius(lr, momentum, nesterov=nesterov and momentum > 0, delay=delay)
    final = _iterate(lr, momentum, nesterov and momentum > 0, delay, 3000)
    if radius < 0.99:
        assert final < 1e-6
    elif radius > 1.01:
        assert final > 1e6


def _model() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def test_overlapped_diloco_with_its_usual_outer_step_warns_at_the_callers_line() -> None:
    model = _model()
    outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    with pytest.warns(OuterStepWarning, match=r"lr 0.7, momentum 0.9, Nesterov.*lr < 0.25") as rec:
        LocalSGD(model, sync_every=2, outer_optimizer=outer, overlap=True,
                 allow_single_process=True)  # fmt: skip
    assert rec[0].filename == __file__


def test_plain_overlapped_local_sgd_warns_and_names_the_damped_step() -> None:
    with pytest.warns(OuterStepWarning, match=r"plain Local SGD.*SGD\(lr=0.5\)"):
        LocalSGD(_model(), sync_every=2, overlap=True, allow_single_process=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.5),  # tenfold train --overlap's default
        lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=0.7),  # not modelled: no claim either way
    ],
)
def test_stable_or_unmodelled_outer_steps_do_not_warn(make: object) -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OuterStepWarning)
        LocalSGD(model, sync_every=2, outer_optimizer=make(model.parameters()), overlap=True,  # type: ignore[operator]
                 allow_single_process=True)  # fmt: skip


def test_blocking_never_warns() -> None:
    model = _model()
    outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OuterStepWarning)
        LocalSGD(model, sync_every=2, outer_optimizer=outer, allow_single_process=True)
    assert overlap_outer_warning(outer) is not None  # it would, overlapped
