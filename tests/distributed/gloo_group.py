"""What every multi-process test here does in its ranks: join a real gloo group through a
file rendezvous, and hand arrays back to the parent through ``.npz`` files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def join_gloo(rank: int, world: int, rdzv: str, *, timeout_s: float = 30.0) -> None:
    """``init_process_group("gloo")`` with the file rendezvous ``rdzv`` (a path in the test's
    temp dir), one torch thread per rank (the ranks share the machine's cores), and a
    collective timeout of ``timeout_s`` seconds, so a broken test fails instead of hanging."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=Path(rdzv).as_uri(),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )


def save_arrays(out: Path, key: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``out/key.npz`` (the parent reads them with :func:`load_arrays`)."""
    np.savez(out / f"{key}.npz", **arrays)


def save_tensors(out: Path, key: str, named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """:func:`save_arrays` of CPU tensors, copied (the tensors may change afterwards)."""
    save_arrays(out, key, {n: t.detach().numpy().copy() for n, t in named})


def load_arrays(out: Path, key: str) -> dict[str, np.ndarray]:
    """The arrays a rank wrote with :func:`save_arrays`, by name."""
    with np.load(out / f"{key}.npz") as f:
        return {k: f[k] for k in f.files}
