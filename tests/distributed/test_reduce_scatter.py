"""``collective="reduce-scatter"`` across real gloo ranks, and its simulation.

One spawned job (3 ranks) runs every multi-process check, since process launch is slow:
bit-identical ranks in delta and weights modes, Lossless = the exact mean, the bytes on
the wire, a state_dict resume, a corrupt shard, the contribution guard (in
test_protocol_guard.py's terms, for both collectives) and, last, a dead peer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors
from torch.nn.parallel import DistributedDataParallel as DDP

import tenfold
from tenfold.codec.errors import CorruptPacketError
from tenfold.distributed import CompressedAverager, LocalSGD, SimulatedAverager
from tenfold.distributed.errors import ContributionRatioError
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook
from tenfold.distributed.protocol import packets as packets_module
from tenfold.distributed.protocol.guard import check_contributions
from tenfold.distributed.protocol.shards import Piece, shard_plan
from tenfold.distributed.transport import TorchTransport

WORLD = 3
ROUNDS = 3
RS = "reduce-scatter"


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Odd sizes; ``tiny`` has fewer values than ranks; ``fc1.weight`` spans two shards."""
    g = torch.Generator().manual_seed(70 + rank)
    return [
        ("fc1.weight", torch.randn(37, 23, generator=g) * 0.1),
        ("tiny", torch.randn(2, generator=g)),
        ("fc1.bias", torch.zeros(37)),
        ("fc2.weight", torch.randn(11, 37, generator=g) * 0.2),
        ("fc2.bias", torch.randn(11, generator=g) * 0.01),
    ]


def local_step(
    named: list[tuple[str, torch.Tensor]], rank: int, round_: int, gain: float = 1.0
) -> None:
    """A stand-in for local training: a rank- and round-specific move of every tensor."""
    g = torch.Generator().manual_seed(1000 * round_ + rank)
    with torch.no_grad():
        for _, t in named:
            t.add_(torch.randn(t.shape, generator=g) * 0.01 * gain)


class _CountSends:
    """Counts the bytes of every point-to-point send and of every all-gather of packets
    (gloo's ring: K - 1 inputs out per rank): the packets on the wire."""

    def __init__(self) -> None:
        self.bytes = 0
        self._isend = dist.isend
        self._gather = dist.all_gather_single

    def __enter__(self) -> _CountSends:
        def isend(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size()
            return self._isend(tensor, *args, **kwargs)

        def gather(out: torch.Tensor, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.bytes += (dist.get_world_size() - 1) * tensor.numel() * tensor.element_size()
            return self._gather(out, tensor, *args, **kwargs)

        dist.isend = isend  # type: ignore[assignment]
        dist.all_gather_single = gather  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        dist.isend = self._isend
        dist.all_gather_single = self._gather


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=20)
    out_dir = Path(out)
    results: dict[str, Any] = {}
    try:
        # 1. delta mode (two-stage error feedback); bytes counted at the isend calls
        avg = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS)
        named = start(rank)
        avg.initialize(named)
        stats, sent = [], []
        snapshot: dict[str, Any] = {}
        for r in range(ROUNDS + 1):
            if r == 2:  # what a checkpoint would hold
                snapshot = {"state": avg.state_dict(), "w": [t.clone() for _, t in named]}
            local_step(named, rank, r)
            with _CountSends() as counter:
                stats.append(avg.average(named).as_dict())
            sent.append(counter.bytes)
            save_tensors(out_dir, f"delta-r{rank}-round{r}", named)
        results["stats"] = stats
        results["sent"] = sent

        # 2. resume from the snapshot: the same two rounds, bit for bit
        resumed = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS)
        resumed.load_state_dict(snapshot["state"])
        again = [(n, w.clone()) for (n, _), w in zip(named, snapshot["w"], strict=True)]
        for r in (2, 3):
            local_step(again, rank, r)
            resumed.average(again)
        save_tensors(out_dir, f"resumed-r{rank}", again)

        # 3. weights mode with the paper's policy (seeded sampling)
        paper = CompressedAverager(
            tenfold.EntropyAdaptive(seed=5), transmit="weights", collective=RS
        )
        w = start(rank)
        for r in range(2):
            local_step(w, rank, r)
            paper.average(w)
            save_tensors(out_dir, f"weights-r{rank}-round{r}", w)

        # 4. Lossless weights: the exact mean (up to float32 rounding)
        exact = start(rank)
        save_tensors(out_dir, f"before-lossless-r{rank}", exact)
        CompressedAverager(tenfold.Lossless(), transmit="weights", collective=RS).average(exact)
        save_tensors(out_dir, f"lossless-r{rank}", exact)

        # 5. a corrupt shard (a byte flipped after compress, on rank 1): named everywhere
        broken = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS)
        b = start(rank)
        broken.initialize(b)
        local_step(b, rank, 0)
        real = packets_module.compress
        if rank == 1:

            def flipped(*args: Any, **kwargs: Any) -> bytes:
                blob = bytearray(real(*args, **kwargs))
                blob[len(blob) // 2] ^= 0x40
                return bytes(blob)

            packets_module.compress = flipped  # type: ignore[assignment]
        try:
            broken.average(b)
            results["corrupt"] = "no error"
        except CorruptPacketError as exc:
            results["corrupt"] = str(exc)
        finally:
            packets_module.compress = real

        # 5b. an absurd announced shard size (rank 1): refused on every rank, naming it
        real_sizes = TorchTransport.exchange_size_matrix
        if rank == 1:

            def inflated(self: Any, sizes: list[int], *args: Any, **kwargs: Any) -> Any:
                return real_sizes(self, [s * 1000 for s in sizes], *args, **kwargs)

            TorchTransport.exchange_size_matrix = inflated  # type: ignore[method-assign]
        try:
            CompressedAverager(tenfold.Fixed(8), transmit="weights", collective=RS).average(
                start(rank)
            )
            results["oversized"] = "no error"
        except CorruptPacketError as exc:
            results["oversized"] = str(exc)
        finally:
            TorchTransport.exchange_size_matrix = real_sizes  # type: ignore[method-assign]

        # 6. the guard: rank 2 sends 100x its delta, for both collectives
        for collective in ("all-gather", RS):
            guarded = CompressedAverager(
                tenfold.TargetRate(bits_per_param=1.0),
                collective=collective,
                max_contribution_ratio=10.0,
            )
            g = start(rank)
            guarded.initialize(g)
            local_step(g, rank, 0)
            guarded.average(g)  # healthy: passes
            local_step(g, rank, 1, gain=100.0 if rank == 2 else 1.0)
            try:
                guarded.average(g)
                results[f"guard-{collective}"] = "no error"
            except ContributionRatioError as exc:
                results[f"guard-{collective}"] = f"{exc} ranks={list(exc.ranks)}"

        # 7. the group still works after those errors
        ok = start(rank)
        CompressedAverager(tenfold.Fixed(4), transmit="weights", collective=RS).average(ok)
        results["after"] = "ok"

        # 8. the DDP hook and LocalSGD with the same option: bit-identical ranks
        torch.manual_seed(7)
        model = torch.nn.Sequential(torch.nn.Linear(13, 9), torch.nn.ReLU(), torch.nn.Linear(9, 5))
        ddp = DDP(model)
        hook_state = CompressionState(tenfold.TargetRate(bits_per_param=1.0), collective=RS)
        ddp.register_comm_hook(hook_state, compressed_allreduce_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for s in range(3):
            gen = torch.Generator().manual_seed(10 * s + rank)
            x, y = torch.randn(8, 13, generator=gen), torch.randint(0, 5, (8,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        save_tensors(out_dir, f"hook-r{rank}", list(model.named_parameters()))
        results["hook_residual2"] = sorted(hook_state.state_dict()["residual2"])
        torch.manual_seed(8)
        net = torch.nn.Linear(7, 3)
        sync = LocalSGD(net, sync_every=1, collective=RS)
        for s in range(2):
            local_step(list(net.named_parameters()), rank, s)
            sync.step()
        save_tensors(out_dir, f"localsgd-r{rank}", list(net.named_parameters()))
        results["localsgd_collective"] = getattr(sync.averager, "collective", None)
        (out_dir / f"r{rank}.json").write_text(json.dumps(results))

        # 9. rank 2 dies mid-collective (after the scatter, before the verdicts)
        dist.barrier()
        dying = CompressedAverager(tenfold.Fixed(8), transmit="weights", collective=RS)
        if rank == 2:

            def die(*args: Any, **kwargs: Any) -> Any:
                os._exit(3)

            TorchTransport.exchange_verdicts = die  # type: ignore[method-assign]
        t0 = time.monotonic()
        try:
            dying.average(start(rank))
            results["dead_peer"] = "no error"
        except (RuntimeError, dist.DistError) as exc:
            results["dead_peer"] = f"{type(exc).__name__}: {exc}"
        results["dead_peer_seconds"] = time.monotonic() - t0
    finally:
        (out_dir / f"r{rank}.json").write_text(json.dumps(results))
        # the group is broken after rank 2 died: tearing it down could wait on it
        os._exit(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collectives")
    ctx = mp.start_processes(
        _job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    # Wait on the processes themselves: ProcessContext.join() would kill the survivors as
    # soon as rank 2 exits, and we want to see how they fail on their own.
    for p in ctx.processes:
        p.join(timeout=120)
    assert [p.exitcode for p in ctx.processes] == [0, 0, 3]
    return out


def _results(run: Path, rank: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((run / f"r{rank}.json").read_text())
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[n].tobytes() == b[n].tobytes() for n in a)


def test_the_plan_cuts_a_tensor_and_keeps_a_tiny_one_whole() -> None:
    layout = [(n, t.numel()) for n, t in start(0)]
    plan = shard_plan(layout, WORLD)
    assert plan[0] == (Piece("fc1.weight", 0, 436),)
    assert Piece("fc1.weight", 436, 851) in plan[1] and Piece("tiny", 0, 2) in plan[1]
    flat = [(p.tensor, i) for pieces in plan for p in pieces for i in range(p.lo, p.hi)]
    assert flat == [(n, i) for n, size in layout for i in range(size)]  # each value once


def test_the_plan_handles_fewer_values_than_ranks_and_empty_tensors() -> None:
    plan = shard_plan([("a", 2), ("e", 0), ("b", 1)], 5)
    assert sum(p.size for pieces in plan for p in pieces) == 3
    assert sum(p.tensor == "e" for pieces in plan for p in pieces) == 1
    assert any(not pieces for pieces in plan)


def test_ranks_are_bit_identical_in_delta_mode(run: Path) -> None:
    for r in range(ROUNDS + 1):
        r0 = load_arrays(run, f"delta-r0-round{r}")
        for rank in range(1, WORLD):
            assert _same(r0, load_arrays(run, f"delta-r{rank}-round{r}")), (rank, r)


def test_ranks_are_bit_identical_in_weights_mode(run: Path) -> None:
    for r in range(2):
        r0 = load_arrays(run, f"weights-r0-round{r}")
        for rank in range(1, WORLD):
            assert _same(r0, load_arrays(run, f"weights-r{rank}-round{r}")), (rank, r)


def test_lossless_reduce_scatter_is_the_exact_mean(run: Path) -> None:
    before = [load_arrays(run, f"before-lossless-r{r}") for r in range(WORLD)]
    for rank in range(WORLD):
        got = load_arrays(run, f"lossless-r{rank}")
        for n in got:
            want = np.mean([b[n].astype(np.float64) for b in before], axis=0)
            np.testing.assert_allclose(got[n], want, rtol=1e-6, atol=1e-7)


def test_bytes_sent_is_every_byte_on_the_wire(run: Path) -> None:
    res = [_results(run, r) for r in range(WORLD)]
    for round_ in range(ROUNDS + 1):
        stats = [res[r]["stats"][round_] for r in range(WORLD)]
        for rank in range(WORLD):
            assert stats[rank]["bytes_sent"] == res[rank]["sent"][round_], (rank, round_)
            assert stats[rank]["collective"] == RS
        assert sum(s["bytes_sent"] for s in stats) == sum(s["bytes_received"] for s in stats)
        n = stats[0]["num_values"]
        # n + n/P coded, 2n (+ the own shards for the residual) decoded
        assert all(n < s["values_encoded"] < n + n // 2 + 50 for s in stats)
        assert all(s["values_decoded"] < 3 * n for s in stats)


def test_a_resumed_averager_continues_bit_for_bit(run: Path) -> None:
    for rank in range(WORLD):
        assert _same(
            load_arrays(run, f"resumed-r{rank}"), load_arrays(run, f"delta-r{rank}-round3")
        )


def test_a_corrupt_shard_names_its_sender_on_every_rank(run: Path) -> None:
    for rank in range(WORLD):
        text = _results(run, rank)["corrupt"]
        assert "shard packet from rank 1 is corrupt" in text, (rank, text)


def test_an_oversized_shard_names_its_sender_on_every_rank(run: Path) -> None:
    for rank in range(WORLD):
        text = _results(run, rank)["oversized"]
        assert text.startswith("rank 1 announced a shard of"), (rank, text)


def test_the_codec_threads_do_not_change_the_bits() -> None:
    def go(threads: int) -> list[bytes]:
        sim = SimulatedAverager(
            tenfold.TargetRate(bits_per_param=1.0), collective=RS, threads=threads
        )
        workers = [start(r) for r in range(WORLD)]
        sim.initialize(workers)
        for r in range(2):
            for rank, named in enumerate(workers):
                local_step(named, rank, r)
            sim.average(workers)
        return [t.numpy().tobytes() for _, t in workers[0]]

    assert go(1) == go(2)
    assert CompressedAverager(tenfold.Lossless()).threads == len(os.sched_getaffinity(0))


def test_the_guard_names_the_100x_rank_on_every_rank(run: Path) -> None:
    for collective in ("all-gather", RS):
        for rank in range(WORLD):
            text = _results(run, rank)[f"guard-{collective}"]
            assert "ranks=[2]" in text and "rank 2 (" in text, (collective, rank, text)
            assert "max_contribution_ratio=10" in text


def test_the_hook_and_local_sgd_keep_ranks_bit_identical(run: Path) -> None:
    for key in ("hook", "localsgd"):
        r0 = load_arrays(run, f"{key}-r0")
        for rank in range(1, WORLD):
            assert _same(r0, load_arrays(run, f"{key}-r{rank}")), (key, rank)
    got = _results(run, 0)
    assert got["hook_residual2"] and got["localsgd_collective"] == RS


def test_local_sgd_takes_the_option_only_for_its_own_averager() -> None:
    """(That the default averager gets the option is checked in the gloo job, step 8.)"""
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="collective"):
        LocalSGD(net, sync_every=2, averager=CompressedAverager(tenfold.Lossless()), collective=RS)


def test_the_group_survives_the_errors_and_a_dead_peer_ends_the_others(run: Path) -> None:
    for rank in range(WORLD - 1):
        got = _results(run, rank)
        assert got["after"] == "ok"
        assert got["dead_peer"].startswith("CommunicationError"), got["dead_peer"]
        assert got["dead_peer_seconds"] < 20


# ---- the simulation mirrors the ranks ---------------------------------------------------------


def test_simulated_reduce_scatter_equals_the_gloo_ranks(run: Path) -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS)
    workers = [start(r) for r in range(WORLD)]
    sim.initialize(workers)
    for r in range(ROUNDS + 1):
        for rank, named in enumerate(workers):
            local_step(named, rank, r)
        stats = sim.average(workers)
        assert _same({n: t.numpy() for n, t in workers[0]}, load_arrays(run, f"delta-r0-round{r}"))
        real = [_results(run, rank)["stats"][r] for rank in range(WORLD)]
        assert [s.bytes_sent for s in stats] == [s["bytes_sent"] for s in real]
        assert [s.packet_bytes for s in stats] == [tuple(s["packet_bytes"]) for s in real]
    paper = SimulatedAverager(tenfold.EntropyAdaptive(seed=5), transmit="weights", collective=RS)
    workers = [start(r) for r in range(WORLD)]
    for r in range(2):
        for rank, named in enumerate(workers):
            local_step(named, rank, r)
        paper.average(workers)
        assert _same(
            {n: t.numpy() for n, t in workers[1]}, load_arrays(run, f"weights-r0-round{r}")
        )


def test_simulated_state_dict_resumes_bit_for_bit() -> None:
    def go(split: bool) -> list[bytes]:
        sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5), collective=RS)
        workers = [start(r) for r in range(WORLD)]
        sim.initialize(workers)
        for r in range(4):
            if split and r == 2:
                state = sim.state_dict()
                assert all(v is not None for v in state["residual2"].values())
                sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=0.5), collective=RS)
                sim.load_state_dict(state)
            for rank, named in enumerate(workers):
                local_step(named, rank, r)
            sim.average(workers)
        return [t.numpy().tobytes() for _, t in workers[0]]

    assert go(False) == go(True)


def test_a_state_of_the_other_collective_is_refused() -> None:
    state = SimulatedAverager(tenfold.Lossless(), collective="all-gather").state_dict()
    with pytest.raises(ValueError, match="collective"):
        SimulatedAverager(tenfold.Lossless(), collective=RS).load_state_dict(state)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="collective"):
        CompressedAverager(tenfold.Lossless(), collective="ring")
    with pytest.raises(ValueError, match="max_contribution_ratio"):
        CompressedAverager(tenfold.Lossless(), max_contribution_ratio=0.5)


def test_the_guard_rule() -> None:
    check_contributions([1.0, 1.2, 0.9], 1, 10.0, 0)  # healthy
    check_contributions([1.0, 1e6, 0.9], 1, None, 0)  # off
    with pytest.raises(ContributionRatioError) as info:
        check_contributions([1.0, 1.0, 1e4], 1, 10.0, 4)
    assert info.value.ranks == (2,) and info.value.ratios == (pytest.approx(100.0),)
    assert "sync round 4" in str(info.value)
