"""tenfold's DDP communication hook in a plain PyTorch training loop.

``DistributedDataParallel`` averages the gradients of every step; with tenfold's hook each
gradient bucket is coded at about 1 bit per parameter (with error feedback: what a packet
failed to carry is sent with the next step's gradient) instead of sent as float32. Every
rank decodes the same packets in the same order, so the averaged gradient, hence every
optimizer step, is bit-identical on every rank.

Launch (one process per rank; CPU ranks talk over gloo, GPU ranks over NCCL):

    torchrun --nproc-per-node 2 examples/02_ddp_hook.py --steps 100

Across machines, use torchrun's usual ``--nnodes N --rdzv-endpoint HOST:PORT`` instead.
"""

import argparse
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import tenfold
from tenfold.distributed import destroy_process_group
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--rate", type=float, default=1.0, help="bits per gradient value sent")
    return p.parse_args()


def checksum(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal on every rank."""
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def main() -> None:
    args = parse_args()

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ... ; init_process_group reads them.
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # The task: classify 32-dim points by a fixed random "teacher"; each rank draws its
    # own points (its shard of the data), the test set is the same everywhere.
    torch.manual_seed(0)
    teacher = nn.Linear(32, 10).to(device)
    train_gen = torch.Generator(device=device).manual_seed(1 + rank)
    test_gen = torch.Generator(device=device).manual_seed(12345)

    def batch(gen: torch.Generator, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(size, 32, generator=gen, device=device)
        with torch.no_grad():
            return x, teacher(x).argmax(dim=1)

    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    # DDP broadcasts rank 0's weights at construction; then register the hook, before the
    # first backward pass. The state holds the policy and the error-feedback residuals.
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    state = CompressionState(tenfold.TargetRate(bits_per_param=args.rate))
    ddp.register_comm_hook(state, compressed_allreduce_hook)

    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(1, args.steps + 1):
        x, y = batch(train_gen)
        loss = loss_fn(ddp(x), y)
        opt.zero_grad()
        loss.backward()  # the hook codes, exchanges and averages each gradient bucket
        opt.step()  # the same step on every rank
        if rank == 0 and step % 20 == 0:
            sent = state.stats.last_step
            print(f"step {step}: loss {loss.item():.3f}, sent {sent.bits_per_param:.2f} bits/param")

    x, y = batch(test_gen, 1024)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    total = state.stats.total
    print(
        f"rank {rank}/{world}: accuracy {accuracy:.3f}, {total.bytes_sent} bytes sent "
        f"(float32: {4 * total.num_values}), checksum {checksum(model)}",
        flush=True,
    )
    destroy_process_group()  # tenfold's: collects garbage first (see its docstring)


if __name__ == "__main__":
    main()
