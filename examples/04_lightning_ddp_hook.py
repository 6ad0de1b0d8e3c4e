"""PyTorch Lightning with tenfold's DDP communication hook, on GPUs and on CPUs.

Lightning wraps the model in ``DistributedDataParallel``; tenfold's hook then codes each
gradient bucket at about 1 bit per parameter instead of sending float32, and every rank
applies the same averaged gradient (bit-identical parameters).

The trap: ``DDPStrategy(ddp_comm_state=..., ddp_comm_hook=...)`` registers the hook only
when the model is on CUDA. On CPU (gloo) Lightning ignores both arguments without a
warning, and DDP sends plain float32 gradients. So:

* on GPUs, pass the hook to ``DDPStrategy`` (or use the callback below: both work);
* on CPUs, use ``tenfold.integrations.lightning.CompressedDDPHook``, a callback that
  registers the hook on the wrapped model itself, whatever the device.

Launch (one process per rank; CPU ranks talk over gloo, GPU ranks over NCCL):

    pip install 'tenfold[examples]'    # transformers, lightning, accelerate
    torchrun --nproc-per-node 2 examples/04_lightning_ddp_hook.py --steps 100
"""

import argparse
import hashlib
import os

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tenfold
from tenfold.distributed import destroy_process_group
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook
from tenfold.integrations.lightning import CompressedDDPHook


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


class Classifier(pl.LightningModule):
    """A small MLP; nothing tenfold-specific in it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main() -> None:
    args = parse_args()
    on_gpu = torch.cuda.is_available()

    # Start the process group ourselves (torchrun's environment; Lightning then reuses it),
    # so that tenfold's hook state can be built before the Trainer.
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # The data: 32-dim points labelled by a fixed random "teacher"; Lightning's
    # DistributedSampler gives each rank its own share.
    torch.manual_seed(0)
    teacher = nn.Linear(32, 10)
    x = torch.randn(64 * args.steps * world, 32)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    state = CompressionState(tenfold.TargetRate(bits_per_param=args.rate))
    callbacks: list[pl.Callback] = []
    if on_gpu:
        # CUDA: Lightning registers the hook itself.
        strategy = DDPStrategy(ddp_comm_state=state, ddp_comm_hook=compressed_allreduce_hook)
    else:
        # CPU: DDPStrategy would silently drop ddp_comm_hook; the callback registers it.
        strategy = DDPStrategy()
        callbacks.append(CompressedDDPHook(state=state))

    trainer = pl.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=int(os.environ["LOCAL_WORLD_SIZE"]),  # what torchrun started on this node
        num_nodes=world // int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy=strategy,
        callbacks=callbacks,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Classifier()
    trainer.fit(model, loader)

    total = state.stats.total  # zero bytes here would mean the hook never ran
    print(
        f"rank {rank}/{world}: tenfold hook sent {total.bytes_sent} bytes in {total.calls} "
        f"calls ({total.bits_per_param:.2f} bits/param), checksum {checksum(model)}",
        flush=True,
    )
    destroy_process_group()  # tenfold's: collects garbage first (see its docstring)


if __name__ == "__main__":
    main()
