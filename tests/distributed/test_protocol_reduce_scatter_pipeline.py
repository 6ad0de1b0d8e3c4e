"""The pipelined reduce-scatter (``protocol.reduce_scatter``): the coding order, and, on 3
real gloo ranks, that it overlaps, shown by the order of events (never by timing).

The ranks' last stage-1 packet cannot finish coding until a peer's packet has arrived
(rank 1) or has been added into the rank-order sum (ranks 0 and 2, which receive in the
order of the sum): only a pipeline that sends the earlier packets and sums arrivals while
coding gets there; a protocol that codes every packet before the first exchange waits out
the test's deadline. The same job checks the bits against the simulation, a NaN found in
a later shard (after packets were sent) and a peer that dies between two steps.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors

import tenfold
from tenfold.distributed import CompressedAverager, SimulatedAverager
from tenfold.distributed import transport as transport_module
from tenfold.distributed.errors import CommunicationError, NonFiniteWeightsError
from tenfold.distributed.protocol import packets as packets_module
from tenfold.distributed.protocol import rank_order as rank_order_module
from tenfold.distributed.protocol import steps as steps_module
from tenfold.distributed.protocol.reduce_scatter import CodedShard, encode_shards
from tenfold.distributed.protocol.shards import coding_order, shard_plan
from tenfold.distributed.protocol.steps import Outgoing

# the module (the package exports a function of the same name)
rs_module = importlib.import_module("tenfold.distributed.protocol.reduce_scatter")

WORLD = 3
RS = "reduce-scatter"
#: how long a rank's last packet waits for the event that shows the overlap (s); only a
#: broken pipeline waits this long
DEADLINE = 20.0


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(90 + rank)
    return [
        ("a.weight", torch.randn(64, 48, generator=g) * 0.1),
        ("a.bias", torch.randn(64, generator=g) * 0.01),
        ("b.weight", torch.randn(32, 64, generator=g) * 0.2),
    ]


def local_step(named: list[tuple[str, torch.Tensor]], rank: int, round_: int) -> None:
    g = torch.Generator().manual_seed(500 * round_ + rank)
    with torch.no_grad():
        for _, t in named:
            t.add_(torch.randn(t.shape, generator=g) * 0.01)


class _Events:
    """What one rank's sync did, in order, from every thread; the last stage-1 packet
    waits (in ``compress``) for ``wanted`` before it is coded."""

    def __init__(self, wanted: str) -> None:
        self.log: list[tuple[str, int]] = []
        self.wanted = wanted
        self.seen = threading.Event()
        self.met: bool | None = None
        self._coded = 0

    def add(self, kind: str, who: int) -> None:
        self.log.append((kind, who))  # list.append is atomic under the GIL
        if kind == self.wanted:
            self.seen.set()

    def install(self, rank: int) -> None:
        real_compress = packets_module.compress
        real_accumulate = rank_order_module.accumulate_from
        real_take = steps_module.RankOrderFeed.take
        real_post = transport_module.ShardStream.post

        def compress(*args: Any, **kwargs: Any) -> bytes:
            self._coded += 1
            if self._coded == WORLD:  # the last stage-1 packet (the coder's third)
                self.met = self.seen.wait(DEADLINE)
            blob = real_compress(*args, **kwargs)
            self.add("coded", self._coded)
            return blob

        def accumulate_from(peer: int, *args: Any, **kwargs: Any) -> Any:
            out = real_accumulate(peer, *args, **kwargs)
            if peer != rank:
                self.add("summed", peer)
            return out

        def take(feed: Any, peer: int, packet: Any) -> None:
            if peer != rank:
                self.add("arrived", peer)
            real_take(feed, peer, packet)

        def post(stream: Any, dest: int, *args: Any, **kwargs: Any) -> None:
            real_post(stream, dest, *args, **kwargs)
            self.add("posted", dest)

        packets_module.compress = compress  # type: ignore[assignment]
        rank_order_module.accumulate_from = accumulate_from  # type: ignore[assignment]
        steps_module.RankOrderFeed.take = take  # type: ignore[method-assign]
        transport_module.ShardStream.post = post  # type: ignore[method-assign]
        self._restore = (real_compress, real_accumulate, real_take, real_post)

    def uninstall(self) -> None:
        (
            packets_module.compress,
            rank_order_module.accumulate_from,
            steps_module.RankOrderFeed.take,
            transport_module.ShardStream.post,
        ) = self._restore  # type: ignore[assignment]


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=20)
    out_dir = Path(out)
    results: dict[str, Any] = {}
    try:
        # 1. one delta-mode sync (two-stage error feedback), instrumented
        avg = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS, threads=1)
        named = start(rank)
        avg.initialize(named)
        local_step(named, rank, 0)
        # ranks 0 and 2 receive in the order of the sum: they add a peer's packet at once
        events = _Events("arrived" if rank == 1 else "summed")
        events.install(rank)
        try:
            stats = avg.average(named)
        finally:
            events.uninstall()
        save_tensors(out_dir, f"synced-r{rank}", named)
        results["met"] = events.met
        results["log"] = events.log
        results["stats"] = stats.as_dict()

        # 2. NaN in a shard this rank codes after it has sent packets (rank 1: its last)
        nan = start(rank)
        nan_avg = CompressedAverager(tenfold.Fixed(8), transmit="weights", collective=RS)
        if rank == 1:
            last = shard_plan([(n, t.numel()) for n, t in nan], WORLD)[coding_order(1, WORLD)[-1]]
            with torch.no_grad():
                dict(nan)[last[0].tensor].view(-1)[last[0].lo] = float("nan")
        try:
            nan_avg.average(nan)
            results["nan"] = "no error"
        except NonFiniteWeightsError as exc:
            results["nan"] = f"{exc} ranks={sorted(exc.statuses)}"
        ok = start(rank)
        CompressedAverager(tenfold.Fixed(4), transmit="weights", collective=RS).average(ok)
        results["after"] = "ok"
        (out_dir / f"r{rank}.json").write_text(json.dumps(results))

        # 3. rank 2 dies while coding its second packet (between two steps)
        dist.barrier()
        dying = CompressedAverager(tenfold.Fixed(8), transmit="weights", collective=RS)
        if rank == 2:
            calls = [0]
            real = packets_module.compress

            def die(*args: Any, **kwargs: Any) -> bytes:
                calls[0] += 1
                if calls[0] == 2:
                    os._exit(3)
                return real(*args, **kwargs)

            packets_module.compress = die  # type: ignore[assignment]
        t0 = time.monotonic()
        try:
            dying.average(start(rank))
            results["dead_peer"] = "no error"
        except (RuntimeError, dist.DistError) as exc:
            results["dead_peer"] = f"{type(exc).__name__}: {exc}"
            results["dead_peer_is_comm_error"] = isinstance(exc, CommunicationError)
        results["dead_peer_seconds"] = time.monotonic() - t0
    finally:
        (out_dir / f"r{rank}.json").write_text(json.dumps(results))
        os._exit(0)  # the group is broken after rank 2 died


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rs_pipeline")
    ctx = mp.start_processes(
        _job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(timeout=120)
    assert [p.exitcode for p in ctx.processes] == [0, 0, 3]
    return out


def _results(run: Path, rank: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((run / f"r{rank}.json").read_text())
    return out


def _first(log: list[list[Any]], kind: str, who: int | None = None) -> int:
    return next(i for i, (k, w) in enumerate(log) if k == kind and (who is None or w == who))


# ---- no processes ----------------------------------------------------------------------------


def test_every_step_of_the_coding_order_is_a_ring() -> None:
    for world in range(1, 7):
        orders = [coding_order(r, world) for r in range(world)]
        for r, order in enumerate(orders):
            assert sorted(order) == list(range(world)) and order[0] == r
        for s in range(1, world):
            dests = [orders[r][s] for r in range(world)]
            assert sorted(dests) == list(range(world))  # each rank receives one packet
            for j in range(world):  # rank j receives from j + s
                assert orders[(j + s) % world][s] == j
    assert coding_order(1, 4) == (1, 0, 3, 2)


def test_the_coding_order_does_not_change_the_packets() -> None:
    g = np.random.default_rng(3)
    arrays = {"w": g.standard_normal(1000).astype(np.float32) * 0.1}
    plan = shard_plan([("w", 1000)], 4)
    send = Outgoing(arrays, tenfold.TargetRate(bits_per_param=1.0), seed=11)
    recorded: list[bytes] = []
    real = packets_module.compress

    def compress(*args: Any, **kwargs: Any) -> bytes:
        blob = real(*args, **kwargs)
        recorded.append(blob)
        return blob

    packets_module.compress = compress  # type: ignore[assignment]
    try:
        in_order, _ = encode_shards(send, plan, 1)
        calls = len(recorded)
        rotated, _ = encode_shards(send, plan, 1, rank=2)
    finally:
        packets_module.compress = real
    assert in_order == rotated  # shard order, whatever the coding order
    assert recorded[calls:] == [in_order[j] for j in coding_order(2, 4)]  # coded in order


def test_the_coder_hands_out_packets_in_coding_order_whenever_they_are_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The protocol's thread may ask for packet k before the coder reached it, or long
    after; a failed packet (NaN/Inf) is raised by ``get``, not lost in the thread."""

    def fake(send: Any, plan: Any, j: int, threads: Any) -> CodedShard:
        if j == 9:
            raise ValueError("shard 9 cannot be coded")
        return CodedShard(j, bytes([j]), 0.0, 0.0)

    monkeypatch.setattr(rs_module, "encode_shard", fake)
    send = Outgoing(arrays={}, policy=tenfold.Fixed(8))
    for _ in range(200):
        order = coding_order(2, 5)
        coder = rs_module._Coder(send, [()] * 5, order, 1)
        got = [coder.get(k).shard for k in range(5)]
        coder.close(stop=False)
        assert got == list(order)
    coder = rs_module._Coder(send, [()] * 10, list(range(10)), 1)
    assert coder.get(8).blob == bytes([8])
    with pytest.raises(ValueError, match="shard 9"):
        coder.get(9)
    coder.close()


# ---- 3 gloo ranks ----------------------------------------------------------------------------


def test_sends_go_out_and_packets_are_summed_while_the_last_packet_is_coded(run: Path) -> None:
    for rank in range(WORLD):
        got = _results(run, rank)
        assert got["met"] is True, (rank, got["log"])
        log = got["log"]
        last_coded = _first(log, "coded", WORLD)
        # coding overlaps the transfers: the first packet left before the last was coded
        assert _first(log, "posted", coding_order(rank, WORLD)[1]) < last_coded, (rank, log)
        # a peer's packet arrived (ranks 0 and 2: was summed) while the last was coded
        assert _first(log, "arrived") < last_coded, (rank, log)
        if rank != 1:
            assert _first(log, "summed") < last_coded, (rank, log)
        assert len([e for e in log if e[0] == "posted"]) == WORLD - 1


def test_the_pipelined_ranks_equal_the_simulation(run: Path) -> None:
    sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0), collective=RS, threads=1)
    workers = [start(r) for r in range(WORLD)]
    sim.initialize(workers)
    for r, named in enumerate(workers):
        local_step(named, r, 0)
    sim.average(workers)
    for rank in range(WORLD):
        real = load_arrays(run, f"synced-r{rank}")
        for name, t in workers[rank]:
            assert t.numpy().tobytes() == real[name].tobytes(), (rank, name)


def test_the_stats_report_each_phase(run: Path) -> None:
    for rank in range(WORLD):
        st = _results(run, rank)["stats"]
        assert st["collective"] == RS
        assert st["wall_seconds"] > 0 and st["encode_cpu_seconds"] > 0
        assert st["decode_cpu_seconds"] > 0 and st["comm_seconds"] > 0
        # encode_seconds adds two threads' times inside the sync (the coder's packets, the
        # own packet's decoding on the protocol's thread), which overlap when the sync
        # pipelines: each is within the wall, their sum within twice it (a strict "< wall"
        # failed once on a loaded machine: 0.150 against 0.142 s)
        assert st["encode_seconds"] < 2 * st["wall_seconds"]


def test_a_nan_after_packets_were_sent_fails_every_rank_and_the_group_survives(
    run: Path,
) -> None:
    for rank in range(WORLD):
        got = _results(run, rank)
        assert "ranks=[1]" in got["nan"], (rank, got["nan"])
        assert got["after"] == "ok"


def test_a_peer_dying_between_two_steps_ends_the_others(run: Path) -> None:
    for rank in range(WORLD - 1):
        got = _results(run, rank)
        assert got["dead_peer_is_comm_error"] is True, got["dead_peer"]
        assert got["dead_peer_seconds"] < 20
