"""RankOrderSum: packets arriving in any order are summed exactly as in rank order (in-process)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import tenfold
from tenfold.codec.errors import PacketMismatchError
from tenfold.distributed.protocol.rank_order import BufferPool, RankOrderSum, decode_mean

K = 4


def worker_tensors(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Per-rank weights, a constant bias, a float64 tensor, and signed zeros."""
    g = torch.Generator().manual_seed(77 + rank)
    w = torch.randn(40, 30, generator=g) * 0.1
    w[0, :4] = torch.tensor([0.0, -0.0, -0.0, 0.0])  # -0.0 + 0.0 orders matter in IEEE
    return [
        ("w", w),
        ("b", torch.zeros(40)),
        ("d", torch.randn(17, generator=g, dtype=torch.float64)),
        ("z", torch.full((5,), -0.0)),
    ]


def packets(policy: object) -> list[bytes]:
    return [
        tenfold.compress({n: t for n, t in worker_tensors(r)}, policy)  # type: ignore[arg-type]
        for r in range(K)
    ]


def drain(s: RankOrderSum) -> None:
    while s.step():
        pass


@pytest.mark.parametrize(
    "policy",
    [tenfold.Fixed(6), tenfold.EntropyAdaptive(seed=1), tenfold.Lossless()],
    ids=["fixed", "entropy", "lossless"],
)
def test_every_arrival_order_gives_the_rank_order_sum_bit_for_bit(policy: object) -> None:
    blobs = packets(policy)
    ref_acc, ref_infos = decode_mean(blobs, worker_tensors(0))
    for order in itertools.permutations(range(K)):
        # Work done as soon as possible after each arrival (spares used for early ones)...
        eager = RankOrderSum(worker_tensors(0), K)
        for r in order:
            eager.offer(r, blobs[r])
            drain(eager)
        # ...and all arrivals before any work (no spare needed).
        lazy = RankOrderSum(worker_tensors(0), K)
        for r in order:
            lazy.offer(r, blobs[r])
        drain(lazy)
        for s in (eager, lazy):
            assert s.done and not s.step()
            for name, ref in ref_acc.items():
                got = s.acc[name] / s.acc[name].dtype.type(K)
                assert got.dtype == ref.dtype
                assert got.tobytes() == ref.tobytes(), (order, name)
            assert [s.infos[r] for r in range(K)] == ref_infos


def test_signed_zeros_survive_the_spare_path() -> None:
    blobs = packets(tenfold.Lossless())
    s = RankOrderSum(worker_tensors(0), K)
    for r in (3, 2, 1, 0):  # everything but rank 0 goes through a spare
        s.offer(r, blobs[r])
        drain(s)
    # -0.0 added four times to a +0.0 accumulator: +0.0, as in rank order
    assert np.signbit(s.acc["z"]).sum() == 0
    ref, _ = decode_mean(blobs, worker_tensors(0))
    assert (s.acc["z"] / np.float32(K)).tobytes() == ref["z"].tobytes()


@pytest.mark.parametrize(("world", "deferred"), [(2, 0), (2, 1), (4, 3)])
def test_a_deferred_contribution_added_last_is_the_same_sum(world: int, deferred: int) -> None:
    """The last rank, or either of two, may be left out and added after: ``acc + own`` is
    the rank-order sum bit for bit, signed zeros included (Lossless keeps every -0.0)."""
    named = worker_tensors(0)
    for policy in (tenfold.Lossless(), tenfold.Fixed(6)):
        blobs = packets(policy)[:world]
        ref, _ = decode_mean(blobs, named)
        s = RankOrderSum(named, world, deferred=deferred)
        for r in range(world):
            if r != deferred:
                s.offer(r, blobs[r])
        drain(s)
        assert s.done
        own = tenfold.decompress(blobs[deferred])
        for name, want in ref.items():
            acc = s.acc[name]
            got = (acc + own[name].astype(acc.dtype)) / acc.dtype.type(world)
            assert got.tobytes() == want.tobytes(), (policy, name)


def test_only_the_last_rank_or_one_of_two_can_be_deferred() -> None:
    for bad in ((4, 1), (2, 7), (2, -1), (4, 4)):
        with pytest.raises(ValueError, match="deferred"):
            RankOrderSum(worker_tensors(0), bad[0], deferred=bad[1])
    RankOrderSum(worker_tensors(0), 4, deferred=3)
    RankOrderSum(worker_tensors(0), 2, deferred=0)


def test_step_reports_when_it_must_wait() -> None:
    blobs = packets(tenfold.Fixed(4))
    s = RankOrderSum(worker_tensors(0), K)
    assert not s.step()  # nothing offered
    s.offer(2, blobs[2])
    assert not s.step()  # rank 2 is held as bytes (no spare); rank 0 is missing
    s.offer(0, blobs[0])
    assert s.step() and not s.step()  # 0 added; 1 missing
    s.offer(1, blobs[1])
    s.offer(3, blobs[3])
    drain(s)
    assert s.done


def test_offer_rejects_repeats_and_bad_ranks() -> None:
    blobs = packets(tenfold.Fixed(4))
    s = RankOrderSum(worker_tensors(0), K)
    s.offer(1, blobs[1])
    with pytest.raises(ValueError, match="already"):
        s.offer(1, blobs[1])
    with pytest.raises(ValueError, match="rank"):
        s.offer(K, blobs[0])
    s.offer(0, blobs[0])
    drain(s)
    with pytest.raises(ValueError, match="already"):
        s.offer(0, blobs[0])


def test_a_mismatching_packet_names_its_rank_in_turn() -> None:
    blobs = packets(tenfold.Fixed(4))
    other = worker_tensors(3)
    other[0] = ("w", torch.zeros(30, 40))
    bad = tenfold.compress({n: t for n, t in other}, tenfold.Fixed(4))
    # held as bytes until its turn, and named then
    s = RankOrderSum(worker_tensors(0), K)
    s.offer(3, bad)
    assert not s.step()
    s = RankOrderSum(worker_tensors(0), K)
    for r in range(K):
        s.offer(r, bad if r == 3 else blobs[r])
    with pytest.raises(PacketMismatchError, match=r"rank 3 .*'w'"):
        drain(s)


def test_buffer_pool_reuses_zeroed_arrays_per_layout() -> None:
    pool = BufferPool()
    named = worker_tensors(0)
    a = pool.take(named)
    assert {n: (x.shape, x.dtype) for n, x in a.items()} == {
        "w": ((40, 30), np.float32),
        "b": ((40,), np.float32),
        "d": ((17,), np.float64),
        "z": ((5,), np.float32),
    }
    a["w"][:] = -0.0  # dirty, and with negative zeros
    a["d"][:] = 7.0
    pool.give(a)
    assert pool.pooled_bytes == sum(x.nbytes for x in a.values())
    b = pool.take(named)
    assert b["w"] is a["w"]  # the same memory again...
    assert all(not x.any() and not np.signbit(x).any() for x in b.values())  # ...all +0.0
    assert pool.pooled_bytes == 0
    # another set of tensors: the pool starts over, and stale arrays are not taken back
    other = [("w", torch.zeros(3))]
    c = pool.take(other)
    pool.give(b)
    assert pool.pooled_bytes == 0
    pool.give(c)
    assert pool.take(other)["w"] is c["w"]


def test_a_shared_pool_across_rounds_changes_no_bit() -> None:
    pool = BufferPool()
    for policy in (tenfold.Fixed(5), tenfold.Lossless()):
        blobs = packets(policy)
        ref, _ = decode_mean(blobs, worker_tensors(0))
        for order in ((3, 2, 1, 0), (1, 2, 3, 0), (2, 0, 3, 1)):
            s = RankOrderSum(worker_tensors(0), K, pool=pool)
            for r in order:
                s.offer(r, blobs[r])
                drain(s)
            for name, want in ref.items():
                assert (s.acc[name] / s.acc[name].dtype.type(K)).tobytes() == want.tobytes()
            pool.give(s.acc)


def test_the_first_rank_overwrites_whatever_the_accumulators_held() -> None:
    # the accumulators are not zeroed: the first rank added (a packet, or arrays decoded
    # beforehand) writes +0.0 + its values; NaN garbage from the pool never shows
    named = worker_tensors(0)
    blobs = packets(tenfold.Lossless())  # keeps every -0.0
    ref, ref_infos = decode_mean(blobs, named)
    for first_decoded in (False, True):
        pool = BufferPool()
        dirty = pool.take(named)
        for a in dirty.values():
            a.fill(np.nan)
        pool.give(dirty)
        s = RankOrderSum(named, K, pool=pool)
        assert s.acc["w"] is dirty["w"]
        if first_decoded:
            s.offer_decoded(0, tenfold.decompress(blobs[0]), ref_infos[0])
        else:
            s.offer(0, blobs[0])
        for r in range(1, K):
            s.offer(r, blobs[r])
        drain(s)
        for name, want in ref.items():
            assert (s.acc[name] / s.acc[name].dtype.type(K)).tobytes() == want.tobytes()
        assert not np.signbit(s.acc["z"]).any()  # -0.0 four times into +0.0


def test_a_sum_of_only_a_deferred_rank_is_zero() -> None:
    pool = BufferPool()
    dirty = pool.take(worker_tensors(0))
    dirty["w"].fill(np.nan)
    pool.give(dirty)
    s = RankOrderSum(worker_tensors(0), 1, pool=pool, deferred=0)
    drain(s)
    assert s.done
    assert all(not a.any() and not np.signbit(a).any() for a in s.acc.values())


def test_buffer_pool_hands_out_unzeroed_arrays_on_request() -> None:
    pool = BufferPool()
    named = worker_tensors(0)
    fresh = pool.take(named, zeroed=False)
    assert {n: (x.shape, x.dtype) for n, x in fresh.items()} == {
        n: (x.shape, x.dtype) for n, x in pool.take(named).items()
    }
    fresh["w"].fill(5.0)
    pool.give(fresh)
    again = pool.take(named, zeroed=False)
    assert again["w"] is fresh["w"] and (again["w"] == 5.0).all()
