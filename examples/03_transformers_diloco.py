"""A Hugging Face ``transformers`` causal language model trained with DiLoCo through tenfold.

The model is a small GPT-2 built from a config (random initialisation: nothing is
downloaded); it reads bytes, so the "tokenizer" is ``bytes(text)``, and the text is this
file. Each rank trains on its own windows with AdamW; every ``--sync-every`` steps
``LocalSGD`` sends the pseudo-gradient coded by tenfold and applies DiLoCo's outer Nesterov
step. GPT-2 ties its input embedding and its output layer: ``model.named_parameters()``
lists the shared tensor once, so it is synchronised once and the tie survives.

For a pretrained model, use ``AutoModelForCausalLM.from_pretrained(name)`` instead of
``from_config``: the rest is the same.

Launch (one process per rank; CPU ranks talk over gloo, GPU ranks over NCCL):

    pip install 'tenfold[examples]'    # transformers, lightning, accelerate
    torchrun --nproc-per-node 2 examples/03_transformers_diloco.py --steps 200
"""

import argparse
import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

import tenfold
from tenfold.distributed import LocalSGD


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="inner steps per rank")
    p.add_argument("--sync-every", type=int, default=20, help="inner steps between syncs")
    p.add_argument("--rate", type=float, default=1.0, help="bits per parameter sent")
    p.add_argument("--context", type=int, default=64, help="tokens (bytes) per window")
    return p.parse_args()


def checksum(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: equal on every rank after a sync."""
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

    # A byte-level GPT-2 of ~0.12M parameters (n_embd 64, 2 layers), randomly initialised.
    config = GPT2Config(
        vocab_size=256,
        n_positions=args.context,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device)
    model.train()

    # The data: this file as bytes, 90% to train (random windows, a different stream on
    # each rank), the last 10% to validate (the same on every rank).
    data = torch.tensor(list(Path(__file__).read_bytes()), dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    gen = torch.Generator().manual_seed(1 + rank)

    def windows(source: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return torch.stack([source[s : s + args.context] for s in starts.tolist()]).to(device)

    inner = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    # Collective: every rank starts from rank 0's weights.
    sync = LocalSGD(
        model,
        sync_every=args.sync_every,
        policy=tenfold.TargetRate(bits_per_param=args.rate),
        outer_optimizer=outer,  # DiLoCo; without it, Local SGD (the plain average)
    )

    for step in range(1, args.steps + 1):
        ids = windows(train, torch.randint(0, len(train) - args.context, (16,), generator=gen))
        loss = model(input_ids=ids, labels=ids).loss  # the model shifts the labels itself
        inner.zero_grad()
        loss.backward()
        inner.step()
        stats = sync.step()  # every sync_every-th call synchronises (collective)
        if stats is not None and rank == 0:
            print(
                f"step {step}: loss {loss.item():.3f} nats/byte, sent "
                f"{stats.bits_per_param:.2f} bits/param",
                flush=True,
            )
    if sync.num_steps % args.sync_every:
        sync.sync()  # end on a shared model whatever --steps is

    model.eval()
    with torch.no_grad():
        ids = windows(val, torch.arange(0, len(val) - args.context, args.context))
        val_loss = model(input_ids=ids, labels=ids).loss.item()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    print(
        f"rank {rank}/{world}: validation loss {val_loss:.3f} nats/byte, "
        f"embeddings tied: {tied}, checksum {checksum(model)}",
        flush=True,
    )
    tenfold.distributed.destroy_process_group()  # collects garbage first: see its docstring


if __name__ == "__main__":
    main()
