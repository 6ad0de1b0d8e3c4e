"""Hugging Face Accelerate with tenfold's DDP communication hook.

``accelerator.prepare(model)`` wraps the model in ``DistributedDataParallel`` when several
processes run; register tenfold's hook on what it returns, before the first backward pass.
Each gradient bucket is then coded at about 1 bit per parameter instead of sent as
float32, and every rank applies the same averaged gradient (bit-identical parameters).
(Accelerate's own ``DistributedDataParallelKwargs(comm_hook=...)`` takes only torch's
built-in hooks, hence the explicit ``register_comm_hook``.)

Launch (one process per rank; Accelerate picks gloo on CPUs, NCCL on GPUs):

    pip install 'tenfold[examples]'    # transformers, lightning, accelerate
    torchrun --nproc-per-node 2 examples/05_accelerate_ddp_hook.py --steps 100
"""

import argparse
import gc
import hashlib

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import tenfold
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
    # Under torchrun, Accelerator() calls torch.distributed.init_process_group itself
    # (gloo on CPU, NCCL on GPU) from torchrun's environment. Without GPUs it must be told
    # cpu=True: otherwise every process trains alone, unsynchronised, without a warning.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes

    # The data: 32-dim points labelled by a fixed random "teacher"; the prepared loader
    # gives each rank its own share.
    torch.manual_seed(0)
    teacher = nn.Linear(32, 10)
    x = torch.randn(64 * args.steps * world, 32)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ddp, opt, loader = accelerator.prepare(model, opt, loader)

    state = CompressionState(tenfold.TargetRate(bits_per_param=args.rate))
    if isinstance(ddp, DistributedDataParallel):  # one process: nothing to average
        ddp.register_comm_hook(state, compressed_allreduce_hook)

    for step, (xb, yb) in enumerate(loader, start=1):
        loss = nn.functional.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        accelerator.backward(loss)  # the hook codes, exchanges and averages the gradients
        opt.step()
        if accelerator.is_main_process and step % 20 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
        if step == args.steps:
            break

    total = state.stats.total
    print(
        f"rank {rank}/{world}: tenfold hook sent {total.bytes_sent} bytes "
        f"({total.bits_per_param:.2f} bits/param), checksum {checksum(model)}",
        flush=True,
    )
    # torch 2.13's gloo can abort the process at exit when garbage holding its state is
    # collected after the group is gone: collect it first (as
    # tenfold.distributed.destroy_process_group does; its docstring has the measurement)
    gc.collect()
    accelerator.end_training()  # stops any trackers, destroys the process group


if __name__ == "__main__":
    main()
