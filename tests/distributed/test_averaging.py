"""CompressedAverager across real ranks (torch.multiprocessing spawn, gloo, file rendezvous).

Each spawned job runs several checks so that the number of process launches (the slow
part: every rank imports torch) stays small.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors
from torch.distributed.algorithms.model_averaging.utils import average_parameters

import tenfold
from tenfold.codec.errors import PacketMismatchError
from tenfold.distributed import (
    CompressedAverager,
    NonFiniteWeightsError,
    ProcessGroupError,
    SimulatedAverager,
    named_tensors,
)
from tenfold.distributed.sender import round_seed

POLICIES = [
    tenfold.Fixed(8),
    tenfold.EntropyAdaptive(F=0.03, M=4, c=6, seed=3),
    tenfold.GradientRMS(5.0),
    tenfold.Lossless(),
]


def rank_tensors(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Different weights on each rank; a constant (zero) bias as after initialisation."""
    g = torch.Generator().manual_seed(1000 + rank)
    return [
        ("fc1.weight", torch.randn(48, 30, generator=g) * 0.1),
        ("fc1.bias", torch.zeros(48)),
        ("fc2.weight", torch.randn(10, 48, generator=g) * 0.3),
        ("fc2.bias", torch.rand(10, generator=g) - 0.5),
    ]


def grad_rms_of(rank: int) -> dict[str, float]:
    return {"fc1.weight": 0.01 * (rank + 1), "fc1.bias": 0.0, "fc2.weight": 0.5, "fc2.bias": 3.0}


# ---- job 1: every policy, 3 ranks ------------------------------------------------------------


def _policies_job(rank: int, world: int, rdzv: str, out: str) -> None:
    join_gloo(rank, world, rdzv)
    out_dir = Path(out)
    try:
        for i, policy in enumerate(POLICIES):
            avg = CompressedAverager(policy, transmit="weights")
            named = rank_tensors(rank)
            stats = avg.average(named, grad_rms=grad_rms_of(rank))
            save_tensors(out_dir, f"p{i}-r{rank}", named)
            # a second round on the same averager: new derived seeds, still identical ranks
            stats2 = avg.average(named, grad_rms=grad_rms_of(rank))
            save_tensors(out_dir, f"p{i}-r{rank}-round2", named)
            (out_dir / f"p{i}-r{rank}.json").write_text(
                json.dumps([stats.as_dict(), stats2.as_dict()])
            )
        # the torch reference for the plain mean
        ref = rank_tensors(rank)
        average_parameters(iter([t for _, t in ref]), dist.group.WORLD)
        save_tensors(out_dir, f"ref-r{rank}", ref)
        # plain tensors (not pairs) are accepted too, and named by position
        plain = [t for _, t in rank_tensors(rank)]
        s = CompressedAverager(tenfold.Lossless(), transmit="weights").average(plain)
        assert [t.name for t in s.tensors] == ["0", "1", "2", "3"]
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def policies_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policies")
    mp.spawn(_policies_job, args=(3, str(out / "rdzv"), str(out)), nprocs=3, join=True)
    return out


@pytest.mark.parametrize("i", range(len(POLICIES)), ids=[p.get_config()["id"] for p in POLICIES])
def test_every_rank_holds_bit_identical_weights(policies_run: Path, i: int) -> None:
    for suffix in ("", "-round2"):
        r0 = load_arrays(policies_run, f"p{i}-r0{suffix}")
        for rank in (1, 2):
            other = load_arrays(policies_run, f"p{i}-r{rank}{suffix}")
            assert list(other) == list(r0)
            for name in r0:
                assert r0[name].tobytes() == other[name].tobytes(), (POLICIES[i], name, rank)


@pytest.mark.parametrize("i", range(len(POLICIES)), ids=[p.get_config()["id"] for p in POLICIES])
def test_distributed_equals_simulated_and_decoded_mean(policies_run: Path, i: int) -> None:
    policy = POLICIES[i]
    workers = [rank_tensors(r) for r in range(3)]
    rms = [grad_rms_of(r) for r in range(3)]
    SimulatedAverager(policy, transmit="weights").average(workers, grad_rms=rms)
    got = load_arrays(policies_run, f"p{i}-r1")
    for name, t in workers[0]:
        assert t.numpy().tobytes() == got[name].tobytes(), name
    # and what that is: the float32 mean of every rank's decoded packet, summed in rank order
    decoded = [
        tenfold.decompress(
            tenfold.compress(
                {n: t for n, t in rank_tensors(r)},
                policy,
                grad_rms=grad_rms_of(r),
                seed=round_seed(policy, rank=r, round=0),
            )
        )
        for r in range(3)
    ]
    for name in got:
        acc = np.zeros_like(got[name])
        for d in decoded:
            acc += d[name]
        np.testing.assert_array_equal(acc / np.float32(3), got[name])


@pytest.mark.parametrize("i", range(len(POLICIES)), ids=[p.get_config()["id"] for p in POLICIES])
def test_bytes_sent_counts_the_padded_all_gather(policies_run: Path, i: int) -> None:
    """bytes_sent / bytes_received: every payload byte on the wire (gloo's all-gather of
    the packets padded to the largest: K - 1 of them each way); bits/param: own."""
    policy = POLICIES[i]
    sizes = [
        len(
            tenfold.compress(
                {n: t for n, t in rank_tensors(r)},
                policy,
                grad_rms=grad_rms_of(r),
                seed=round_seed(policy, rank=r, round=0),
            )
        )
        for r in range(3)
    ]
    for rank in range(3):
        stats = json.loads((policies_run / f"p{i}-r{rank}.json").read_text())[0]
        assert stats["bytes_sent"] == 2 * max(sizes)
        assert stats["collective"] == "all-gather"
        assert stats["packet_bytes"] == sizes
        assert stats["bytes_received"] == 2 * max(sizes)
        assert stats["num_values"] == 48 * 30 + 48 + 10 * 48 + 10
        assert stats["bits_per_param"] == pytest.approx(8 * sizes[rank] / stats["num_values"])
        assert [t["name"] for t in stats["tensors"]] == [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
        ]
        assert stats["tensors"][0]["grad_rms"] == pytest.approx(0.01 * (rank + 1))
        n = [t["N"] for t in stats["tensors"]]
        counts = [t["num_values"] for t in stats["tensors"]]
        assert stats["quantized_bits_per_param"] == pytest.approx(
            sum(a * b for a, b in zip(n, counts, strict=True)) / sum(counts)
        )
        assert stats["world_size"] == 3 and stats["rank"] == rank and stats["round"] == 0
        assert min(stats["encode_seconds"], stats["comm_seconds"], stats["decode_seconds"]) >= 0


def test_entropy_adaptive_reports_n_and_h(policies_run: Path) -> None:
    stats = json.loads((policies_run / "p1-r0.json").read_text())[0]
    weight = stats["tensors"][0]
    assert weight["H"] is not None and 0 < weight["H"] <= 4  # M = 4 bits
    assert weight["N"] == int(np.ceil(weight["H"] + 6 - 1e-9))


def test_lossless_equals_torch_average_parameters(policies_run: Path) -> None:
    """Same plain mean as torch's model averaging, up to float summation order.

    torch computes sum_r (x_r / 3) in gloo's reduction order; we compute (sum_r x_r) / 3
    in rank order. Both are within a few float32 ulps of the exact mean: we allow
    1e-6 relative + 1e-7 absolute (float32 eps is 1.2e-7; values here are O(1)).
    """
    ref = load_arrays(policies_run, "ref-r0")
    lossless = load_arrays(policies_run, f"p{len(POLICIES) - 1}-r0")
    exact = {
        n: np.stack([dict(rank_tensors(r))[n].double().numpy() for r in range(3)]).mean(axis=0)
        for n in ref
    }
    for name in ref:
        np.testing.assert_allclose(lossless[name], ref[name], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lossless[name], exact[name], rtol=1e-6, atol=1e-7)


# ---- job 2: failures ------------------------------------------------------------------------


def _failures_job(rank: int, world: int, rdzv: str, out: str) -> None:
    join_gloo(rank, world, rdzv, timeout_s=20.0)
    out_dir = Path(out)
    results: dict[str, str] = {}
    try:
        # a peer with another model: rank 1's fc2.weight has another shape
        named = rank_tensors(rank)
        if rank == 1:
            named[2] = ("fc2.weight", torch.zeros(48, 10))
        try:
            CompressedAverager(tenfold.Fixed(8), transmit="weights").average(named)
            results["mismatch"] = "no error"
        except PacketMismatchError as exc:
            results["mismatch"] = str(exc)
        # non-finite weights on rank 2: every rank fails at the same collective
        named = rank_tensors(rank)
        if rank == 2:
            named[3][1][4] = float("nan")
        try:
            CompressedAverager(tenfold.EntropyAdaptive(), transmit="weights").average(named)
            results["nonfinite"] = "no error"
        except NonFiniteWeightsError as exc:
            results["nonfinite"] = str(exc)
        # the group still works afterwards: nobody is stuck in a collective
        named = rank_tensors(rank)
        CompressedAverager(tenfold.Fixed(4), transmit="weights").average(named)
        results["after"] = "ok"
        # a rank that dies: the survivors fail fast, well within the 20 s timeout
        (out_dir / f"failures-r{rank}.json").write_text(json.dumps(results))
        dist.barrier()
        if rank == 1:
            import os

            os._exit(3)
        t0 = time.monotonic()
        try:
            for _ in range(5):  # gloo may need a collective or two to notice
                CompressedAverager(tenfold.Fixed(8), transmit="weights").average(rank_tensors(rank))
                time.sleep(0.2)
            results["dead_peer"] = "no error"
        except (RuntimeError, dist.DistError) as exc:
            results["dead_peer"] = f"{type(exc).__name__}: {exc}"
        results["dead_peer_seconds"] = str(time.monotonic() - t0)
    finally:
        (out_dir / f"failures-r{rank}.json").write_text(json.dumps(results))
        with contextlib.suppress(Exception):  # the group is broken after rank 1 died
            tenfold.distributed.destroy_process_group()


def test_mismatch_nonfinite_and_dead_peer(tmp_path: Path) -> None:
    ctx = mp.start_processes(
        _failures_job,
        args=(3, str(tmp_path / "rdzv"), str(tmp_path)),
        nprocs=3,
        join=False,
        start_method="spawn",
    )
    # Wait on the processes themselves: ProcessContext.join() would kill the survivors as
    # soon as rank 1 exits, and we want to see how they fail on their own.
    for p in ctx.processes:
        p.join(timeout=90)
    assert [p.exitcode for p in ctx.processes] == [0, 3, 0]
    res = {r: json.loads((tmp_path / f"failures-r{r}.json").read_text()) for r in (0, 2)}
    res1 = json.loads((tmp_path / "failures-r1.json").read_text())
    for r, got in [*res.items(), (1, res1)]:
        assert "fc2.weight" in got["mismatch"], (r, got["mismatch"])
        assert "rank 2" in got["nonfinite"], (r, got["nonfinite"])
        assert got["after"] == "ok"
    assert "fc2.bias" in json.loads((tmp_path / "failures-r2.json").read_text())["nonfinite"]
    for got in res.values():  # the survivors got an error, well before the 20 s timeout
        assert got["dead_peer"].startswith("CommunicationError: exchanging packet"), got
        assert float(got["dead_peer_seconds"]) < 20


# ---- not distributed -----------------------------------------------------------------------


def test_not_initialised_refuses_to_start() -> None:
    """A forgotten init_process_group would train K independent models: refused."""
    assert not dist.is_initialized()
    avg = CompressedAverager(tenfold.EntropyAdaptive(), transmit="weights")
    with pytest.raises(ProcessGroupError, match=r"init_process_group.*torchrun"):
        avg.average(rank_tensors(0))
    with pytest.raises(ProcessGroupError, match="allow_single_process=True"):
        avg.initialize(rank_tensors(0))


def test_not_initialised_with_allow_single_process_is_a_noop_with_stats() -> None:
    assert not dist.is_initialized()
    named = rank_tensors(0)
    before = [t.clone() for _, t in named]
    avg = CompressedAverager(
        tenfold.EntropyAdaptive(), transmit="weights", allow_single_process=True
    )
    stats = avg.average(named)
    for (_, t), b in zip(named, before, strict=True):
        assert torch.equal(t, b)
    assert stats.world_size == 1 and stats.bytes_sent == 0 and stats.bytes_received == 0
    assert stats.num_values == sum(t.numel() for _, t in named)
    assert avg.average(named).round == 1


def test_simulated_single_worker_is_a_noop() -> None:
    named = rank_tensors(0)
    before = [t.clone() for _, t in named]
    (stats,) = SimulatedAverager(tenfold.Fixed(2), transmit="weights").average([named])
    assert all(torch.equal(t, b) for (_, t), b in zip(named, before, strict=True))
    assert stats.bytes_sent == 0


def test_simulated_rejects_nonfinite_naming_worker_and_tensor() -> None:
    workers = [rank_tensors(r) for r in range(3)]
    workers[1][0][1][0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"worker 1: fc1\.weight"):
        SimulatedAverager(tenfold.Fixed(8), transmit="weights").average(workers)


def test_simulated_rejects_mismatching_worker() -> None:
    workers = [rank_tensors(r) for r in range(2)]
    workers[1][3] = ("fc2.bias", torch.zeros(11))
    with pytest.raises(PacketMismatchError, match=r"fc2\.bias"):
        SimulatedAverager(tenfold.Fixed(8), transmit="weights").average(workers)


def test_named_tensors_forms() -> None:
    a, b = torch.zeros(2), torch.ones(3)
    assert named_tensors([a, b]) == [("0", a), ("1", b)]
    assert named_tensors(iter([("x", a)])) == [("x", a)]
    with pytest.raises(TypeError, match="mix"):
        named_tensors([a, ("x", b)])
    with pytest.raises(ValueError, match="duplicate"):
        named_tensors([("x", a), ("x", b)])
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        named_tensors([("x", np.zeros(2))])  # type: ignore[list-item]


def test_round_seed_derives_distinct_reproducible_seeds() -> None:
    p = tenfold.EntropyAdaptive(seed=7)
    seeds = {(r, k): round_seed(p, rank=r, round=k) for r in range(3) for k in range(3)}
    assert len(set(seeds.values())) == 9
    assert round_seed(p, rank=1, round=2) == round_seed(p, rank=1, round=2)
    # the SeedSequence derivation the packets of earlier runs were made with
    want = np.random.SeedSequence([7, 1, 2]).generate_state(1, np.uint32)[0]
    assert round_seed(p, rank=1, round=2) == int(want)
    assert round_seed(tenfold.Fixed(5), rank=3, round=9) is None


def test_half_and_double_tensors_keep_their_dtype() -> None:
    # float16 travels as float32 (the codec's accumulators are float32/float64); the mean
    # is rounded back to float16. float64 travels and is summed as float64.
    workers = [
        [("h", torch.tensor([1.0, 2.0], dtype=torch.float16)), ("d", torch.ones(2).double() * r)]
        for r in range(2)
    ]
    workers[1][0][1].mul_(3)
    SimulatedAverager(tenfold.Lossless(), transmit="weights").average(workers)
    for named in workers:
        assert named[0][1].dtype == torch.float16 and named[1][1].dtype == torch.float64
        assert named[0][1].tolist() == [2.0, 4.0] and named[1][1].tolist() == [0.5, 0.5]
    with pytest.raises(TypeError, match="floating-point"):
        SimulatedAverager(tenfold.Lossless(), transmit="weights").average(
            [[torch.ones(2, dtype=torch.int32)]] * 2
        )


def test_absurd_announced_packet_sizes_are_refused_before_allocation() -> None:
    from tenfold.codec import CorruptPacketError
    from tenfold.distributed.protocol.packets import check_announced_sizes

    named = [("w", torch.zeros(100, 10)), ("b", torch.zeros(10))]
    honest = len(tenfold.compress(dict(named), tenfold.Lossless()))
    check_announced_sizes([honest, honest, 0], named)  # a Lossless packet always fits
    with pytest.raises(CorruptPacketError, match=r"rank 1 announced a packet of 1099511627776"):
        check_announced_sizes([honest, 2**40, honest], named)
