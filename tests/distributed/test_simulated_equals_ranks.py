"""One protocol: the simulated driver and 3 real gloo ranks code the same bytes.

The same inputs go through :class:`SimulatedAverager` (3 workers in this process) and
through :class:`CompressedAverager` on 3 spawned gloo ranks, for both collectives and both
transmit modes, three rounds each (delta mode: residuals, second-stage residuals and the
hash chain in play). Every packet each rank codes (stage 1 and the reduce-scatter's
re-coded shard, recorded at the codec call) and the final weights must be the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors

import tenfold
from tenfold.distributed import CompressedAverager, SimulatedAverager
from tenfold.distributed.protocol import packets as packets_module

WORLD = 3
ROUNDS = 3
CASES = [
    (collective, transmit)
    for collective in ("all-gather", "reduce-scatter", "all-gather-chunked")
    for transmit in ("delta", "weights")
]
#: "all-gather-chunked": chunks of 300 values (fc1.weight cut in four pieces, the small
#: tensors grouped), so every sync sends several packets per rank through the pipeline
CHUNK = 300


def averager_args(collective: str) -> dict[str, Any]:
    if collective == "all-gather-chunked":
        return {"collective": "all-gather", "chunk_values": CHUNK}
    return {"collective": collective}


def policy_for(transmit: str) -> Any:
    """Seeded sampling in both modes, so the per-rank, per-round seeds are exercised."""
    if transmit == "delta":
        return tenfold.TargetRate(bits_per_param=1.0)
    return tenfold.EntropyAdaptive(seed=5)


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    """Odd sizes; ``fc1.weight`` spans two shards; ``tiny`` has fewer values than ranks."""
    g = torch.Generator().manual_seed(40 + rank)
    return [
        ("fc1.weight", torch.randn(41, 29, generator=g) * 0.1),
        ("tiny", torch.randn(2, generator=g)),
        ("fc1.bias", torch.randn(41, generator=g) * 0.01),
        ("fc2.weight", torch.randn(13, 41, generator=g) * 0.2),
    ]


def local_step(named: list[tuple[str, torch.Tensor]], rank: int, round_: int) -> None:
    g = torch.Generator().manual_seed(1000 * round_ + rank)
    with torch.no_grad():
        for _, t in named:
            t.add_(torch.randn(t.shape, generator=g) * 0.01)


@contextmanager
def recorded() -> Iterator[list[bytes]]:
    """Every packet the protocol codes in this process, in call order."""
    got: list[bytes] = []
    real = packets_module.compress
    real_and_decode = packets_module.compress_and_decode

    def compress(*args: Any, **kwargs: Any) -> bytes:
        blob = real(*args, **kwargs)
        got.append(bytes(blob))
        return blob

    def compress_and_decode(*args: Any, **kwargs: Any) -> tuple[bytes, Any, Any]:
        blob, decoded, info = real_and_decode(*args, **kwargs)
        got.append(bytes(blob))
        return blob, decoded, info

    packets_module.compress = compress  # type: ignore[assignment]
    packets_module.compress_and_decode = compress_and_decode  # type: ignore[assignment]
    try:
        yield got
    finally:
        packets_module.compress = real
        packets_module.compress_and_decode = real_and_decode


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=60)
    try:
        sent: dict[str, list[list[str]]] = {}
        for collective, transmit in CASES:
            key = f"{collective}-{transmit}"
            avg = CompressedAverager(
                policy_for(transmit), transmit=transmit, threads=1, **averager_args(collective)
            )
            named = start(rank)
            avg.initialize(named)
            sent[key] = []
            for r in range(ROUNDS):
                local_step(named, rank, r)
                with recorded() as got:
                    avg.average(named)
                sent[key].append([p.hex() for p in got])
            save_tensors(Path(out), f"{key}-r{rank}", named)
        (Path(out) / f"sent-r{rank}.json").write_text(json.dumps(sent))
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("equal")
    mp.start_processes(
        _job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return out


def _by_rank(packets: list[bytes], collective: str) -> list[list[bytes]]:
    """The simulation's packets of one round, in its call order, regrouped as each rank
    codes them: all-gather, worker r's packet; reduce-scatter, worker r's shard packets
    (every worker in turn), then the re-coded shard of reducer r (every reducer in turn)."""
    if collective == "all-gather":
        assert len(packets) == WORLD
        return [[p] for p in packets]
    if collective == "all-gather-chunked":  # chunk by chunk, every worker in turn
        assert len(packets) % WORLD == 0 and len(packets) > WORLD
        return [packets[r::WORLD] for r in range(WORLD)]
    assert len(packets) == WORLD * WORLD + WORLD
    stage1, stage2 = packets[: WORLD * WORLD], packets[WORLD * WORLD :]
    return [[*stage1[r * WORLD : (r + 1) * WORLD], stage2[r]] for r in range(WORLD)]


@pytest.mark.parametrize(("collective", "transmit"), CASES)
def test_every_packet_and_the_weights_match_the_ranks(
    ranks: Path, collective: str, transmit: str
) -> None:
    key = f"{collective}-{transmit}"
    sim = SimulatedAverager(
        policy_for(transmit), transmit=transmit, threads=1, **averager_args(collective)
    )
    workers = [start(r) for r in range(WORLD)]
    sim.initialize(workers)
    sent = [json.loads((ranks / f"sent-r{r}.json").read_text())[key] for r in range(WORLD)]
    for round_ in range(ROUNDS):
        for r, named in enumerate(workers):
            local_step(named, r, round_)
        with recorded() as got:
            sim.average(workers)
        expected = _by_rank(got, collective)
        for r in range(WORLD):
            real = [bytes.fromhex(h) for h in sent[r][round_]]
            assert real == expected[r], (key, round_, r)
    for r in range(WORLD):
        weights = load_arrays(ranks, f"{key}-r{r}")
        for name, t in workers[r]:
            assert t.numpy().tobytes() == weights[name].tobytes(), (key, r, name)
    assert not all(
        np.array_equal(a, b) for (_, a), (_, b) in zip(workers[0], start(0), strict=True)
    )  # the weights did move
