"""AllReduceAverager (the fp32 baseline), the Averager protocol and set_reference, on gloo.

One spawned job (3 ranks) runs every multi-rank check; the test functions read its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_arrays
from torch.distributed.algorithms.model_averaging.utils import average_parameters

import tenfold
from tenfold.distributed import (
    AllReduceAverager,
    Averager,
    CompressedAverager,
    LocalSGD,
    ProcessGroupError,
    ReferenceMismatchError,
    SimulatedAverager,
)
from tenfold.errors import ConfigError, InputTypeError

WORLD = 3


def rank_tensors(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Different values per rank, in every dtype the averager handles."""
    g = torch.Generator().manual_seed(300 + rank)
    return [
        ("w32", torch.randn(37, 11, generator=g)),
        ("b32", torch.randn(5, generator=g) * 1e-3),
        ("w64", torch.randn(9, 4, generator=g, dtype=torch.float64)),
        ("wbf16", torch.randn(6, 7, generator=g).to(torch.bfloat16)),
        ("w16", torch.randn(13, generator=g).to(torch.float16)),
    ]


def _np(t: torch.Tensor) -> np.ndarray:
    """Exact numpy copy (half dtypes widened to float32, which is exact)."""
    t = t.detach()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().copy()


def _save(out: Path, key: str, named: list[tuple[str, torch.Tensor]]) -> None:
    save_arrays(out, key, {n: _np(t) for n, t in named})


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv)
    out_dir = Path(out)
    info: dict[str, object] = {}
    try:
        # 1. the exact mean, bit-identical on every rank, grad_rms accepted
        avg = AllReduceAverager()
        named = rank_tensors(rank)
        fp32 = [t.detach().double().float() if t.dtype != torch.float64 else t.clone()
                for _, t in named]  # fmt: skip
        stats = avg.average(named, grad_rms={"w32": 0.5})
        _save(out_dir, f"mean-r{rank}", named)
        average_parameters(iter(fp32), dist.group.WORLD)  # torch's own, for comparison
        _save(out_dir, f"torch-r{rank}", [(n, t) for (n, _), t in zip(named, fp32, strict=True)])
        info["stats"] = stats.as_dict()
        info["round_after"] = avg.round

        # 2. initialize: rank 0's tensors everywhere (half dtypes too), then no cost
        fresh = rank_tensors(rank)
        info["received"] = AllReduceAverager().initialize(fresh)
        _save(out_dir, f"init-r{rank}", fresh)
        info["received_again"] = AllReduceAverager().initialize(fresh)
        half = [("h", torch.randn(8, generator=torch.Generator().manual_seed(rank)).half())]
        CompressedAverager(tenfold.Lossless()).initialize(half)
        _save(out_dir, f"init-half-r{rank}", half)

        # 3. set_reference: same values on every rank -> the next sync works and is a delta
        #    from them; one rank with other values -> named at the next sync
        comp = CompressedAverager(tenfold.TargetRate(bits_per_param=2.0))
        model = [(n, t) for n, t in rank_tensors(0) if t.dtype == torch.float32]
        comp.initialize(model)
        with torch.no_grad():
            for _, t in model:
                t.mul_(0.5)  # an "outer step", the same everywhere
        comp.set_reference(model)
        ref_tag = comp.state_dict()["tag"]
        with torch.no_grad():
            for _, t in model:
                t.add_(0.01 * (rank + 1))
        comp.average(model)
        _save(out_dir, f"setref-r{rank}", model)
        info["ref_tag"] = ref_tag
        with torch.no_grad():
            for _, t in model:
                t.mul_(0.5 if rank != 1 else 0.25)  # rank 1's outer step differs
        comp.set_reference(model)
        try:
            comp.average(model)
            info["mismatch"] = "no error"
        except ReferenceMismatchError as exc:
            info["mismatch"] = f"{exc} ranks={list(exc.ranks)}"
        (out_dir / f"info-r{rank}.json").write_text(json.dumps(info))
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    mp.spawn(_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return out


def _info(run: Path, rank: int) -> dict:
    return json.loads((run / f"info-r{rank}.json").read_text())


def test_every_rank_holds_the_bit_identical_mean(run: Path) -> None:
    r0 = load_arrays(run, "mean-r0")
    for rank in range(1, WORLD):
        other = load_arrays(run, f"mean-r{rank}")
        assert all(r0[n].tobytes() == other[n].tobytes() for n in r0), rank


def test_the_mean_is_the_exact_mean(run: Path) -> None:
    want = {n: np.mean([_np(t) for t in ts], axis=0) for n, *ts in _columns()}
    ours, torchs = load_arrays(run, "mean-r0"), load_arrays(run, "torch-r0")
    for n, w in want.items():
        # values are O(1): float32 sums are good to ~1e-7 absolute; half dtypes are
        # rounded to their own precision when copied back
        tol = {"wbf16": 1e-2, "w16": 1e-3}.get(n, 1e-6)
        np.testing.assert_allclose(ours[n], w, rtol=tol, atol=tol)
        np.testing.assert_allclose(ours[n], torchs[n], rtol=tol, atol=tol)


def _columns() -> list[tuple]:
    per_rank = [rank_tensors(r) for r in range(WORLD)]
    return [(n, *(dict(p)[n] for p in per_rank)) for n, _ in per_rank[0]]


def test_stats_count_the_ring_traffic_and_32_bits(run: Path) -> None:
    stats = _info(run, 1)["stats"]
    payload = 4 * (37 * 11 + 5 + 6 * 7 + 13) + 8 * 9 * 4  # float64 travels as float64
    n = 37 * 11 + 5 + 9 * 4 + 6 * 7 + 13
    assert stats["world_size"] == WORLD and stats["rank"] == 1 and stats["round"] == 0
    assert stats["bytes_sent"] == 2 * (WORLD - 1) * payload // WORLD
    assert stats["bytes_received"] == stats["bytes_sent"]
    assert stats["packet_bytes"] == [payload] * WORLD
    assert stats["num_values"] == n
    assert stats["bits_per_param"] == pytest.approx(8 * payload / n)
    by_name = {t["name"]: t for t in stats["tensors"]}
    assert by_name["w32"]["N"] == 32 and by_name["w64"]["N"] == 64
    assert by_name["w32"]["grad_rms"] == 0.5 and by_name["b32"]["grad_rms"] is None
    assert _info(run, 1)["round_after"] == 1


def test_initialize_takes_rank_0s_tensors_exactly(run: Path) -> None:
    want = {n: _np(t) for n, t in rank_tensors(0)}
    for rank in range(WORLD):
        got = load_arrays(run, f"init-r{rank}")
        assert all(got[n].tobytes() == want[n].tobytes() for n in want), rank
        assert _info(run, rank)["received_again"] == 0
    assert _info(run, 0)["received"] == 0 and _info(run, 2)["received"] > 0
    half0 = load_arrays(run, "init-half-r0")["h"]
    for rank in range(1, WORLD):
        assert load_arrays(run, f"init-half-r{rank}")["h"].tobytes() == half0.tobytes()


def test_set_reference_moves_the_shared_model_on_every_rank(run: Path) -> None:
    tags = {_info(run, r)["ref_tag"] for r in range(WORLD)}
    assert len(tags) == 1
    # the deltas were taken from the halved model: the mean is ~ half + mean offset
    base = {n: _np(t) * 0.5 for n, t in rank_tensors(0) if t.dtype == torch.float32}
    r0 = load_arrays(run, "setref-r0")
    for rank in range(1, WORLD):
        other = load_arrays(run, f"setref-r{rank}")
        assert all(r0[n].tobytes() == other[n].tobytes() for n in r0)
    for n, b in base.items():
        # TargetRate(2.0) codes a constant shift of 0.01..0.03 almost exactly
        np.testing.assert_allclose(r0[n], b + 0.02, atol=2e-3)


def test_a_rank_with_another_reference_is_named(run: Path) -> None:
    for rank in range(WORLD):
        text = _info(run, rank)["mismatch"]
        assert "rank(s) 1 hold a different shared model" in text and "ranks=[1]" in text


# ---- in one process ------------------------------------------------------------------------


def test_the_distributed_averagers_follow_the_protocol() -> None:
    assert isinstance(AllReduceAverager(), Averager)
    assert isinstance(CompressedAverager(tenfold.Lossless()), Averager)
    # K workers in, K stats out: the simulation is the twin of a group, not of one rank;
    # it has the protocol's method names, so LocalSGD refuses it by name
    model = torch.nn.Linear(2, 2)
    with pytest.raises(InputTypeError, match="SimulatedLocalSGD"):
        LocalSGD(model, sync_every=2, averager=SimulatedAverager(tenfold.Lossless()))


def test_not_distributed_refuses_to_run_unless_asked() -> None:
    with pytest.raises(ProcessGroupError, match="init_process_group"):
        AllReduceAverager().average(rank_tensors(0))
    with pytest.raises(ProcessGroupError, match="allow_single_process=True"):
        AllReduceAverager().initialize(rank_tensors(0))


def test_not_distributed_leaves_the_tensors_alone() -> None:
    avg = AllReduceAverager(allow_single_process=True)
    named = rank_tensors(0)
    before = [_np(t) for _, t in named]
    stats = avg.average(named)
    assert stats.world_size == 1 and stats.bytes_sent == 0
    assert all(a.tobytes() == _np(t).tobytes() for a, (_, t) in zip(before, named, strict=True))
    assert avg.initialize(named) == 0
    avg.set_reference(named)  # a no-op
    state = avg.state_dict()
    again = AllReduceAverager()
    again.load_state_dict(state)
    assert again.round == avg.round == 1


def test_set_reference_in_weights_mode_does_nothing() -> None:
    avg = CompressedAverager(tenfold.Lossless(), transmit="weights")
    avg.set_reference(rank_tensors(0))
    assert avg.state_dict()["reference"] is None


def test_set_reference_refuses_other_tensors() -> None:
    avg = CompressedAverager(tenfold.Lossless(), allow_single_process=True)
    avg.initialize(rank_tensors(0))
    with pytest.raises(ConfigError, match="missing"):
        avg.set_reference(rank_tensors(0)[:2])
