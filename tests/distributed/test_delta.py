"""Delta mode (pseudo-gradients + error feedback) across real gloo ranks, and its simulation.

One spawned job runs several checks so that few processes are launched (each imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.algorithms.model_averaging.utils import average_parameters

import tenfold
from tenfold.distributed import CompressedAverager, ReferenceMismatchError, SimulatedAverager

WORLD = 3
ROUNDS = 3


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Different starting weights per rank (initialize() must make them agree)."""
    g = torch.Generator().manual_seed(50 + rank)
    return [
        ("fc1.weight", torch.randn(64, 40, generator=g) * 0.1),
        ("fc1.bias", torch.zeros(64)),
        ("fc2.weight", torch.randn(10, 64, generator=g) * 0.2),
    ]


def local_step(named: list[tuple[str, torch.Tensor]], rank: int, round_: int) -> None:
    """A stand-in for local training: a rank- and round-specific move of every tensor."""
    g = torch.Generator().manual_seed(1000 * round_ + rank)
    with torch.no_grad():
        for _, t in named:
            t.add_(torch.randn(t.shape, generator=g) * 0.01)


def _delta_job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv)
    out_dir = Path(out)
    try:
        # 1. rate-controlled deltas: initialize aligns the ranks, then every round agrees
        avg = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0))
        named = start(rank)
        received = avg.initialize(named)
        save_tensors(out_dir, f"init-r{rank}", named)
        stats = []
        for r in range(ROUNDS):
            local_step(named, rank, r)
            stats.append(avg.average(named).as_dict())
            save_tensors(out_dir, f"rate-r{rank}-round{r}", named)
        (out_dir / f"stats-r{rank}.json").write_text(json.dumps({"received": received, "s": stats}))
        stale = avg.state_dict()  # after round 3

        # 2. Lossless deltas equal plain weight averaging, up to float rounding
        lossless = CompressedAverager(tenfold.Lossless())
        same = start(0)
        lossless.initialize(same)
        local_step(same, rank, 7)
        reference = [(n, t.clone()) for n, t in same]
        lossless.average(same)
        average_parameters(iter([t for _, t in reference]), dist.group.WORLD)
        save_tensors(out_dir, f"lossless-r{rank}", same)
        save_tensors(out_dir, f"allreduce-r{rank}", reference)

        # 3. a rank resumed from a stale state is caught, on every rank, naming it
        local_step(named, rank, 9)
        avg.average(named)  # one more round: rank 2 will pretend it missed it
        if rank == 2:
            avg.load_state_dict(stale)
            with torch.no_grad():
                for (_, t), ref in zip(named, stale["reference"].values(), strict=True):
                    t.copy_(ref)
        local_step(named, rank, 10)
        try:
            avg.average(named)
            message = "no error"
        except ReferenceMismatchError as exc:
            message = f"{type(exc).__name__}: {exc} ranks={list(exc.ranks)}"
        (out_dir / f"mismatch-r{rank}.txt").write_text(message)
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def delta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("delta")
    mp.spawn(_delta_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return out


def test_initialize_aligns_the_ranks_on_rank_0s_weights(delta_run: Path) -> None:
    want = {n: t.numpy() for n, t in start(0)}
    for rank in range(WORLD):
        got = load_arrays(delta_run, f"init-r{rank}")
        assert all(got[n].tobytes() == want[n].tobytes() for n in want)
    stats = [json.loads((delta_run / f"stats-r{r}.json").read_text()) for r in range(WORLD)]
    assert stats[0]["received"] == 0 and stats[1]["received"] > 0


def test_every_rank_holds_bit_identical_weights_in_delta_mode(delta_run: Path) -> None:
    for r in range(ROUNDS):
        r0 = load_arrays(delta_run, f"rate-r0-round{r}")
        for rank in range(1, WORLD):
            other = load_arrays(delta_run, f"rate-r{rank}-round{r}")
            assert all(r0[n].tobytes() == other[n].tobytes() for n in r0), (rank, r)


def test_delta_packets_cost_about_the_target(delta_run: Path) -> None:
    stats = json.loads((delta_run / "stats-r0.json").read_text())["s"]
    for s in stats:
        big = [t for t in s["tensors"] if t["num_values"] >= 2000]
        assert all(t["step"] is not None for t in big)
        assert 0.5 < s["bits_per_param"] < 1.6


def test_lossless_deltas_equal_weight_averaging(delta_run: Path) -> None:
    for rank in range(WORLD):
        ours = load_arrays(delta_run, f"lossless-r{rank}")
        ref = load_arrays(delta_run, f"allreduce-r{rank}")
        for n in ours:
            np.testing.assert_allclose(ours[n], ref[n], rtol=1e-6, atol=1e-7)


def test_a_stale_reference_is_named_on_every_rank(delta_run: Path) -> None:
    for rank in range(WORLD):
        text = (delta_run / f"mismatch-r{rank}.txt").read_text()
        assert text.startswith("ReferenceMismatchError"), text
        assert "rank(s) 2 hold a different shared model" in text and "ranks=[2]" in text


# ---- the simulated group mirrors the real one ------------------------------------------------


def test_simulated_delta_equals_the_gloo_ranks(delta_run: Path) -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0))
    workers = [start(r) for r in range(WORLD)]
    sim.initialize(workers)
    for r in range(ROUNDS):
        for rank, named in enumerate(workers):
            local_step(named, rank, r)
        sim.average(workers)
        real = load_arrays(delta_run, f"rate-r0-round{r}")
        for n, t in workers[0]:
            assert t.numpy().tobytes() == real[n].tobytes(), (r, n)


def test_state_dict_resumes_bit_for_bit() -> None:
    def run(split: bool) -> list[np.ndarray]:
        sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5))
        workers = [start(r) for r in range(WORLD)]
        sim.initialize(workers)
        for r in range(4):
            if split and r == 2:
                state = sim.state_dict()
                sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5))
                sim.load_state_dict(state)
            for rank, named in enumerate(workers):
                local_step(named, rank, r)
            sim.average(workers)
        return [t.numpy().copy() for _, t in workers[0]]

    for a, b in zip(run(False), run(True), strict=True):
        assert a.tobytes() == b.tobytes()


def test_without_error_feedback_no_residual_is_kept() -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5), error_feedback=False)
    workers = [start(r) for r in range(2)]
    sim.initialize(workers)
    for rank, named in enumerate(workers):
        local_step(named, rank, 0)
    sim.average(workers)
    assert all(v is None for v in sim.state_dict()["residual"].values())


def test_first_sync_without_initialize_averages_the_weights_exactly() -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5))
    workers = [start(r) for r in range(2)]
    want = [(a + b) / 2 for (_, a), (_, b) in zip(*workers, strict=True)]
    (stats, _) = sim.average(workers)
    assert stats.bits_per_param > 31  # Lossless packets, once
    for (_, t), w in zip(workers[1], want, strict=True):
        np.testing.assert_allclose(t.numpy(), w.numpy(), rtol=1e-6)


def test_bad_transmit_is_refused() -> None:
    with pytest.raises(ValueError, match="transmit"):
        CompressedAverager(tenfold.Lossless(), transmit="gradients")


# ---- error feedback: what is not sent now is sent later --------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2.0, 0.5, 0.1]))
def test_decoded_sum_tracks_the_true_sum_within_one_step(seed: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    residual = np.zeros(5000, dtype=np.float32)
    true_sum = np.zeros(5000, dtype=np.float64)
    sent_sum = np.zeros(5000, dtype=np.float64)
    for _ in range(6):
        d = rng.laplace(0, 0.01, 5000).astype(np.float32)
        x = d + residual
        blob = tenfold.compress({"d": x}, tenfold.TargetRate(bits_per_param=rate))
        step = tenfold.inspect(blob).tensors[0].step
        decoded = tenfold.decompress(blob)["d"]
        residual = x - decoded
        true_sum += d
        sent_sum += decoded
        assert step is not None
        # the gap is exactly the residual, which one step bounds (no clamping here)
        gap = np.abs(true_sum - sent_sum)
        assert np.all(gap <= step / 2 * (1 + 1e-5) + 1e-6)
