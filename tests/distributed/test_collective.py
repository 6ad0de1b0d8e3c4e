"""``collective="auto"``: which protocol it picks, and that it is exactly that protocol."""

from __future__ import annotations

import pytest
import torch

import tenfold
from tenfold.distributed import SimulatedAverager
from tenfold.distributed import collective as choice
from tenfold.distributed.collective import resolve_collective


def test_auto_picks_reduce_scatter_only_for_big_models_and_three_ranks() -> None:
    n = choice.AUTO_MIN_VALUES
    assert resolve_collective("auto", n, 3) == "reduce-scatter"
    assert resolve_collective("auto", n - 1, 3) == "all-gather"
    assert resolve_collective("auto", 10 * n, 2) == "all-gather"  # one peer: nothing to shard
    assert resolve_collective("all-gather", 10 * n, 8) == "all-gather"  # explicit wins
    with pytest.raises(ValueError, match="collective must be one of"):
        resolve_collective("ring", n, 3)


def _workers(k: int) -> list[list[tuple[str, torch.Tensor]]]:
    out = []
    for r in range(k):
        g = torch.Generator().manual_seed(r)
        out.append([("w", torch.randn(40, 30, generator=g)), ("b", torch.randn(7, generator=g))])
    return out


@pytest.mark.parametrize(("k", "expected"), [(3, "reduce-scatter"), (2, "all-gather")])
def test_auto_runs_exactly_the_protocol_it_resolves_to(
    monkeypatch: pytest.MonkeyPatch, k: int, expected: str
) -> None:
    monkeypatch.setattr(choice, "AUTO_MIN_VALUES", 1000)  # the model has 1207 values
    policy = tenfold.TargetRate(bits_per_param=1.0)
    results = {}
    for collective in ("auto", expected):
        avg = SimulatedAverager(policy, collective=collective)
        workers = _workers(k)
        avg.initialize(workers)
        for w in workers:
            for _, t in w:
                t.add_(0.01)
        stats = avg.average(workers)
        results[collective] = [t.clone() for _, t in workers[0]]
        assert stats[0].collective == expected
        assert avg.state_dict()["collective"] == expected  # resolved, and fixed from now on
    assert all(torch.equal(a, b) for a, b in zip(*results.values(), strict=True))


def test_a_resumed_auto_averager_keeps_the_saved_protocol() -> None:
    saved = SimulatedAverager(tenfold.Lossless(), collective="reduce-scatter").state_dict()
    avg = SimulatedAverager(tenfold.Lossless())  # auto
    avg.load_state_dict(saved)
    assert avg.state_dict()["collective"] == "reduce-scatter"
    with pytest.raises(ValueError, match="state is for collective='reduce-scatter'"):
        SimulatedAverager(tenfold.Lossless(), collective="all-gather").load_state_dict(saved)
