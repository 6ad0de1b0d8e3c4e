"""DiLoCo and Local SGD with tenfold, in a plain PyTorch training loop.

Each rank trains its own copy of the model on its own data. Every ``--sync-every`` steps
``LocalSGD`` sends what the model moved since the last shared model (the pseudo-gradient),
coded by tenfold at about 1 bit per parameter, and every rank ends the sync with
bit-identical weights. With an outer optimizer (Nesterov SGD) this is DiLoCo; without one,
plain Local SGD (the new shared model is the average).

Launch (one process per rank; CPU ranks talk over gloo, GPU ranks over NCCL):

    torchrun --nproc-per-node 2 examples/01_local_sgd_diloco.py --steps 200
    torchrun --nproc-per-node 2 examples/01_local_sgd_diloco.py --steps 200 --scheme local-sgd

Across machines, use torchrun's usual ``--nnodes N --rdzv-endpoint HOST:PORT`` instead.
"""

import argparse
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

import tenfold
from tenfold.distributed import LocalSGD


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="inner steps per rank")
    p.add_argument("--sync-every", type=int, default=20, help="inner steps between syncs")
    p.add_argument("--scheme", choices=["diloco", "local-sgd"], default="diloco")
    p.add_argument("--rate", type=float, default=1.0, help="bits per parameter sent")
    return p.parse_args()


def checksum(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal on every rank after a sync."""
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def main() -> None:
    args = parse_args()

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ... ; init_process_group reads them
    # (started with plain `python`, it stops for want of them). Without a process group
    # there is nothing to synchronise with: tenfold refuses to start rather than let each
    # process train alone.
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # The task: classify 32-dim points by a fixed random "teacher" (the same on every
    # rank); each rank draws its own points (its own shard of the data).
    torch.manual_seed(0)
    teacher = nn.Linear(32, 10).to(device)
    train_gen = torch.Generator(device=device).manual_seed(1 + rank)
    test_gen = torch.Generator(device=device).manual_seed(12345)  # one test set for all

    def batch(gen: torch.Generator, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, 32, generator=gen, device=device)
        with torch.no_grad():
            return x, teacher(x).argmax(dim=1)

    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)  # each rank's own optimizer
    outer = None
    if args.scheme == "diloco":
        # DiLoCo's outer step: the averaged pseudo-gradient becomes .grad, this steps it.
        outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    # Collective: every rank starts from rank 0's weights.
    sync = LocalSGD(
        model,
        sync_every=args.sync_every,
        policy=tenfold.TargetRate(bits_per_param=args.rate),
        outer_optimizer=outer,
    )

    loss_fn = nn.CrossEntropyLoss()
    for step in range(1, args.steps + 1):
        x, y = batch(train_gen)
        loss = loss_fn(model(x), y)
        inner.zero_grad()
        loss.backward()
        inner.step()
        stats = sync.step()  # every sync_every-th call synchronises (collective)
        if stats is not None and rank == 0:
            print(
                f"step {step}: loss {loss.item():.3f}, sent {stats.bits_per_param:.2f} "
                f"bits/param ({stats.bytes_sent} bytes from rank 0)"
            )
    if sync.num_steps % args.sync_every:
        sync.sync()  # end on a shared model whatever --steps is

    x, y = batch(test_gen, 1024)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    print(f"rank {rank}/{world}: accuracy {accuracy:.3f}, checksum {checksum(model)}", flush=True)
    tenfold.distributed.destroy_process_group()  # collects garbage first: see its docstring


if __name__ == "__main__":
    main()
