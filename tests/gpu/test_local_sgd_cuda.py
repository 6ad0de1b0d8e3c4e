"""LocalSGD / DiLoCo with CUDA models (skipped without CUDA).

* NCCL: two ranks on two GPUs when there are two, else a one-rank NCCL group on one GPU.
  With one rank nothing is averaged, so the NCCL collectives LocalSGD issues itself (the
  buffers' all_reduce, the integer-buffer check's all_gather, the exact broadcast) are
  then also called directly, on CUDA buffers, and must leave them bit for bit unchanged.
* gloo with CUDA tensors: two ranks sharing one GPU. The parameters are copied to the
  CPU, coded and exchanged there and the mean copied back; the buffers' collectives run on
  CPU copies. Every rank must hold bit-identical parameters and buffers after each sync,
  and the parameters, their gradients and DiLoCo's shared model must stay on the GPU.
* Both blocking and overlapped (``overlap=True``: the sync in a background thread, its
  row on the CPU, the round's start beside the parameters on the GPU).
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
from torch import nn

import tenfold.distributed
from tenfold.distributed import AllReduceAverager, LocalSGD
from tenfold.distributed.averager_base import align_ranks, broadcast_exact
from tenfold.distributed.transport import all_gather_row
from tenfold.train.config import TrainConfig
from tenfold.train.loop import check_same_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

STEPS = 6
SYNC_EVERY = 2


def _model(rank: int, device: torch.device) -> nn.Module:
    """The same architecture everywhere, weights perturbed per rank (construction aligns)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        net[0].weight.add_(0.01 * rank)
    return net.to(device)


def _snap(net: nn.Module) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy().copy() for n, t in net.state_dict().items()}


def _job(rank: int, world: int, backend: str, rdzv: str, out: str) -> None:
    device = torch.device("cuda", rank if backend == "nccl" else 0)
    torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=Path(rdzv).as_uri(),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    o = Path(out)
    info: dict[str, Any] = {}
    try:
        for overlap in (True, False):  # the blocking run last: its model is used below
            mode = "overlap" if overlap else "blocking"
            net = _model(rank, device)
            inner = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
            outer = torch.optim.SGD(net.parameters(), lr=0.7, momentum=0.9, nesterov=True)
            sync = LocalSGD(net, sync_every=SYNC_EVERY, outer_optimizer=outer, overlap=overlap)
            g = torch.Generator().manual_seed(100 + rank)  # different data per rank
            for step in range(STEPS):
                x = torch.randn(32, 32, generator=g).to(device)
                y = torch.randint(0, 4, (32,), generator=g).to(device)
                inner.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                inner.step()
                sync.step()
                if (step + 1) % SYNC_EVERY == 0:
                    np.savez(o / f"{backend}-{mode}-r{rank}-s{step}.npz", **_snap(net))
            sync.wait()
            np.savez(o / f"{backend}-{mode}-r{rank}-end.npz", **_snap(net))
            kept = sync._replicas[0].start if overlap else sync._shared_model(sync._replicas[0])
            assert kept is not None
            info[f"{mode}_devices"] = sorted(
                {str(p.device) for p in net.parameters()}
                | {str(p.grad.device) for p in net.parameters() if p.grad is not None}
                | {str(t.device) for t in kept.values()}
                | {str(b.device) for b in net.buffers()}
            )
        # the plain fp32 baseline on CUDA tensors
        plain = AllReduceAverager()
        stats = plain.average(net.named_parameters())
        info["plain_world"] = stats.world_size
        np.savez(o / f"{backend}-plain-r{rank}.npz", **_snap(net))

        # the collectives LocalSGD issues, on this backend's device, directly
        before = _snap(net)
        named = list(net.named_buffers())
        sync._sync_buffers()
        sync._check_equal([[(n, b) for n, b in named if not b.dtype.is_floating_point]])
        half = torch.randn(17, device=device).to(torch.bfloat16)
        half_before = half.clone()
        broadcast_exact(half, src=0, group=None)
        info["aligned_received"] = align_ranks(list(net.named_parameters()), None)
        # the small agreement messages (sizes, digests) on the group's device
        info["rows"] = all_gather_row([rank, 7], group=None)
        check_same_config(TrainConfig(), None)  # every rank the same: no error
        after = _snap(net)
        if world == 1:  # a mean over one rank and a broadcast from oneself change nothing
            info["unchanged"] = all(before[n].tobytes() == after[n].tobytes() for n in before)
            info["half_unchanged"] = bool(torch.equal(half, half_before))
        (o / f"{backend}-info-r{rank}.json").write_text(json.dumps(info))
    finally:
        tenfold.distributed.destroy_process_group()


def _run(tmp_path: Path, backend: str, world: int) -> list[dict[str, Any]]:
    mp.spawn(
        _job, args=(world, backend, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=world, join=True
    )
    return [json.loads((tmp_path / f"{backend}-info-r{r}.json").read_text()) for r in range(world)]


def _identical_across_ranks(tmp_path: Path, key: str, world: int) -> None:
    with np.load(tmp_path / key.format(rank=0)) as f0:
        r0 = {k: f0[k] for k in f0.files}
    assert "1.running_mean" in r0 and "1.num_batches_tracked" in r0
    for rank in range(1, world):
        with np.load(tmp_path / key.format(rank=rank)) as f:
            assert all(f[k].tobytes() == r0[k].tobytes() for k in r0), (key, rank)


@pytest.mark.skipif(not dist.is_nccl_available(), reason="needs NCCL")
def test_nccl_local_sgd_on_cuda(tmp_path: Path) -> None:
    world = 2 if torch.cuda.device_count() >= 2 else 1
    infos = _run(tmp_path, "nccl", world)
    for mode in ("blocking", "overlap"):
        for step in [*range(SYNC_EVERY - 1, STEPS, SYNC_EVERY), "end"]:
            s = step if step == "end" else f"s{step}"
            _identical_across_ranks(tmp_path, f"nccl-{mode}-r{{rank}}-{s}.npz", world)
    _identical_across_ranks(tmp_path, "nccl-plain-r{rank}.npz", world)
    for rank, info in enumerate(infos):
        assert info["blocking_devices"] == info["overlap_devices"] == [f"cuda:{rank}"]
        assert info["plain_world"] == world
        if world == 1:
            assert info["unchanged"] and info["half_unchanged"]
        assert info["aligned_received"] == 0  # already aligned
        assert info["rows"] == [[r, 7] for r in range(world)]


def test_gloo_with_cuda_tensors_on_one_gpu(tmp_path: Path) -> None:
    infos = _run(tmp_path, "gloo", 2)
    for mode in ("blocking", "overlap"):
        for step in [*range(SYNC_EVERY - 1, STEPS, SYNC_EVERY), "end"]:
            s = step if step == "end" else f"s{step}"
            _identical_across_ranks(tmp_path, f"gloo-{mode}-r{{rank}}-{s}.npz", 2)
    _identical_across_ranks(tmp_path, "gloo-plain-r{rank}.npz", 2)
    for info in infos:
        assert info["blocking_devices"] == info["overlap_devices"] == ["cuda:0"]
        assert info["plain_world"] == 2
        assert info["aligned_received"] == 0
