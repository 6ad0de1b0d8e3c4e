"""What every worker of a run derives from the run's seed: seeds, shards and input tensors.

Each random choice has its own stream ``(seed, stream, ...)`` (:func:`derive_seed`), so the
initial weights, the split into shards and each worker's shuffles are independent and
reproducible; shards are exclusive and equal in size, so every worker runs the same number
of steps per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tenfold.errors import ConfigError

__all__ = [
    "STREAM_SHUFFLE",
    "derive_seed",
    "grad_rms",
    "init_generator",
    "one_hot",
    "shard_indices",
    "to_inputs",
]

# Stream ids for derive_seed: each random choice has its own independent stream.
_INIT, _SPLIT = 1, 2
#: The stream of the paper worker's per-epoch shuffles, ``(seed, 3, rank)``.
STREAM_SHUFFLE = 3


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream ``(seed, *keys)`` (numpy SeedSequence mixing)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def init_generator(seed: int) -> torch.Generator:
    """The generator every worker initialises its model from (stream ``(seed, 1)``): the
    same on every worker, so all start from the same weights."""
    return torch.Generator().manual_seed(derive_seed(seed, _INIT))


def to_inputs(images: np.ndarray) -> torch.Tensor:
    """``(n, 28, 28)`` uint8 -> ``(n, 784)`` float32 in [0, 1]."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1))
    return flat.to(torch.float32).div_(255.0)


def one_hot(labels: np.ndarray, classes: int = 10) -> torch.Tensor:
    """``(n,)`` integer labels -> ``(n, classes)`` float32 one-hot targets (1 / 0)."""
    idx = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(idx, classes).to(torch.float32)


def grad_rms(
    names: Sequence[str], params: Sequence[torch.Tensor], grad_sq: torch.Tensor, steps: int
) -> dict[str, float]:
    """Per-tensor gradient RMS ``sqrt(sum_steps sum_i g_i^2 / (steps * n))`` by name, from
    the per-tensor sums of squares ``grad_sq`` (float64, one per tensor); ``{}`` if no step."""
    if steps == 0:
        return {}
    return {
        name: math.sqrt(float(sq) / (steps * p.numel()))
        for name, p, sq in zip(names, params, grad_sq, strict=True)
    }


def shard_indices(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """Exclusive, equal shards of ``range(n)`` from a seeded permutation, one per worker.

    Each worker gets ``n // workers`` examples; the ``n % workers`` left over are unused, so
    every worker runs the same number of steps per epoch (needed to synchronise every k
    steps). Example: 60,000 images, 5 workers -> 5 x 12,000.
    """
    if n < workers:
        raise ConfigError(f"{n} training examples cannot feed {workers} workers")
    perm = np.random.default_rng(derive_seed(seed, _SPLIT)).permutation(n)
    size = n // workers
    return [np.sort(perm[r * size : (r + 1) * size]) for r in range(workers)]
