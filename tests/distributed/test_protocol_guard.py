"""``max_contribution_ratio``: a rank far larger than the median is named, nothing applied.

In-process (SimulatedAverager, the ranks' arithmetic); the real gloo ranks are checked in
test_reduce_scatter.py's spawned job (the same 100x rank, both collectives).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tenfold
from tenfold.distributed import SimulatedAverager
from tenfold.distributed.collective import COLLECTIVES
from tenfold.distributed.errors import ContributionRatioError

K = 4


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3 + rank)
    return [("w", torch.randn(33, 17, generator=g) * 0.1), ("b", torch.randn(5, generator=g))]


def step(workers: list[list[tuple[str, torch.Tensor]]], round_: int, gains: list[float]) -> None:
    for rank, named in enumerate(workers):
        g = torch.Generator().manual_seed(100 * round_ + rank)
        with torch.no_grad():
            for _, t in named:
                t.add_(torch.randn(t.shape, generator=g) * 0.01 * gains[rank])


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_a_100x_delta_is_named_and_nothing_is_applied(collective: str) -> None:
    sim = SimulatedAverager(
        tenfold.TargetRate(bits_per_param=2.0), collective=collective, max_contribution_ratio=10
    )
    workers = [start(r) for r in range(K)]
    sim.initialize(workers)
    step(workers, 0, [1.0] * K)
    sim.average(workers)  # healthy
    reference = {n: t.numpy().copy() for n, t in sim.state_dict()["reference"].items()}
    step(workers, 1, [1.0, 1.0, 100.0, 1.0])
    before = [[t.clone() for _, t in w] for w in workers]
    with pytest.raises(ContributionRatioError, match=r"rank 2 \(") as info:
        sim.average(workers)
    assert info.value.ranks == (2,)
    assert 30 < info.value.ratios[0] < 300  # ~100x, through the codec
    # nothing applied: the workers' tensors and the shared model are untouched
    for w, b in zip(workers, before, strict=True):
        assert all(torch.equal(t, c) for (_, t), c in zip(w, b, strict=True))
    after = sim.state_dict()["reference"]
    assert all(np.array_equal(after[n].numpy(), reference[n]) for n in reference)


@pytest.mark.parametrize("collective", COLLECTIVES)
def test_the_guard_lets_ordinary_spread_through(collective: str) -> None:
    sim = SimulatedAverager(
        tenfold.EntropyAdaptive(seed=1),
        transmit="weights",
        collective=collective,
        max_contribution_ratio=3.0,
    )
    workers = [start(r) for r in range(K)]
    step(workers, 0, [1.0, 2.0, 0.5, 1.5])
    stats = sim.average(workers)
    assert len(stats) == K


def test_off_by_default() -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=2.0))
    workers = [start(r) for r in range(K)]
    sim.initialize(workers)
    step(workers, 0, [1.0, 1.0, 100.0, 1.0])
    sim.average(workers)  # no guard: averaged
    assert sim.max_contribution_ratio is None
