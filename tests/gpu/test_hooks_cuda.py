"""The compressed DDP hook on CUDA buckets over NCCL (skipped without CUDA).

Two ranks on two GPUs when there are at least two, else a one-rank NCCL group on one GPU.
CUDA buckets are copied to the CPU (on a side stream, by the worker thread in the default
asynchronous mode; both modes run), coded there, the packets travel as CUDA uint8 tensors
and the mean is copied back; a one-rank group returns the bucket unchanged; the checks: every rank's parameters are bit-identical after
each step, and the first step's averaged bucket is bit for bit the rank-order mean of the
decoded packets recomputed on the CPU from the bucket gradients the hook was given.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tenfold
from tenfold.codec.policy import rms
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook
from tenfold.distributed.sender import round_seed

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not dist.is_nccl_available(),
    reason="needs CUDA and NCCL",
)

STEPS = 3
POLICY = tenfold.TargetRate(bits_per_param=1.0)


def _world() -> int:
    return 2 if torch.cuda.device_count() >= 2 else 1


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)
    )  # fmt: skip


def _job(rank: int, world: int, rdzv: str, out: str, asynchronous: bool) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl",
        init_method=Path(rdzv).as_uri(),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    out_dir = Path(out)
    try:
        device = torch.device("cuda", rank)
        model = _model().to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        state = CompressionState(POLICY, asynchronous=asynchronous)
        first: list[Any] = []

        # unannotated: DDP rejects string annotations (this file has future annotations)
        def recording_hook(s: CompressionState, bucket):  # type: ignore[no-untyped-def]
            step = s.step  # the hook advances it after the last bucket
            if step == 0:
                first.append(bucket.buffer().detach().cpu().clone())
            fut = compressed_allreduce_hook(s, bucket)
            if step == 0:
                first.append(fut.wait().detach().cpu().clone())
            return fut

        ddp.register_comm_hook(state, recording_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(STEPS):
            g = torch.Generator().manual_seed(10 * step + rank)
            x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x.to(device)), y.to(device)).backward()
            opt.step()
            params = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
            np.savez(out_dir / f"params-r{rank}-s{step}.npz", **params)
            assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())
        np.save(out_dir / f"input-r{rank}.npy", first[0].numpy())
        np.save(out_dir / f"output-r{rank}.npy", first[1].numpy())
        (out_dir / f"stats-r{rank}.json").write_text(json.dumps(state.stats.as_dict()))
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module", params=[True, False], ids=["async", "sync"])
def cuda_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Both hook modes: the worker thread (side-stream copies) and the in-call one."""
    out = tmp_path_factory.mktemp("hooks_cuda")
    world = _world()
    mp.spawn(
        _job, args=(world, str(out / "rdzv"), str(out), request.param), nprocs=world, join=True
    )
    return out


def test_ranks_agree_bit_for_bit_after_every_step(cuda_run: Path) -> None:
    for step in range(STEPS):
        with np.load(cuda_run / f"params-r0-s{step}.npz") as f0:
            r0 = {k: f0[k] for k in f0.files}
        assert all(np.isfinite(v).all() for v in r0.values())
        for rank in range(1, _world()):
            with np.load(cuda_run / f"params-r{rank}-s{step}.npz") as f:
                assert all(f[k].tobytes() == r0[k].tobytes() for k in r0), (rank, step)


def test_the_cuda_mean_is_the_cpu_rank_order_mean(cuda_run: Path) -> None:
    world = _world()
    if world == 1:  # one rank: the bucket comes back unchanged, nothing is coded
        got = np.load(cuda_run / "output-r0.npy")
        assert got.tobytes() == np.load(cuda_run / "input-r0.npy").tobytes()
        return
    # Step 0: DDP's initial layout is the coding order (canonical), no residual yet.
    acc: np.ndarray | None = None  # rank-order sum from +0.0, as the hook's accumulator
    for rank in range(world):
        g = np.load(cuda_run / f"input-r{rank}.npy").astype(np.float32).reshape(-1)
        seed = round_seed(POLICY, rank=rank, round=0)
        blob = tenfold.compress({"g": g}, POLICY, scale={"g": rms(g)}, seed=seed)
        decoded = tenfold.decompress(blob)["g"]
        acc = (np.zeros_like(decoded) if acc is None else acc) + decoded
    assert acc is not None
    mean = np.divide(acc, np.float32(world))
    got = np.load(cuda_run / "output-r0.npy").reshape(-1)
    assert got.tobytes() == mean.tobytes()


def test_stats_count_every_call(cuda_run: Path) -> None:
    stats = json.loads((cuda_run / "stats-r0.json").read_text())
    assert stats["steps"] == STEPS and stats["calls"] >= STEPS
    if _world() > 1:  # one rank sends nothing
        assert 0.5 < stats["total"]["bits_per_param"] < 2.0
