"""The all-gather's chunks: the model cut into groups of whole tensors of about
``chunk_values`` values (a larger tensor split into flat pieces), each coded into its own
packet, so that one chunk is coded while the previous one is on the wire. A pure function
of the layout, identical on every rank; a model of one chunk codes exactly the packet of
an unchunked sync."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tenfold.codec import derive_seed
from tenfold.distributed.delta_kernels import all_finite
from tenfold.errors import ConfigError

__all__ = [
    "DEFAULT_CHUNK_VALUES",
    "Chunk",
    "Part",
    "nonfinite_arrays",
    "check_chunk_values",
    "chunk_hints",
    "chunk_named",
    "chunk_plan",
    "chunk_seed",
    "chunk_views",
    "split_parts",
]

#: Values per chunk: 1.5M float32 values (6 MB). Each chunk costs about a millisecond of
#: Python per rank, so larger chunks cost less CPU and hold more memory: 1.5M is the
#: largest measured size that keeps the sync's transient under `LocalSGD` within 0.5x of
#: a 25M-value model (docs/PROTOCOL.md, "The chunk size").
DEFAULT_CHUNK_VALUES = 3 << 19


@dataclass(frozen=True)
class Part:
    """One tensor, or values ``[lo, hi)`` of its flattened form, in a chunk.

    Attributes:
        tensor: the tensor's name.
        lo, hi: flat range (the whole tensor when ``whole``).
        whole: the tensor itself, coded under its own name and shape.
    """

    tensor: str
    lo: int
    hi: int
    whole: bool

    @property
    def key(self) -> str:
        """The name in the packet: the tensor's, or ``"name[lo:hi]"`` for a piece."""
        return self.tensor if self.whole else f"{self.tensor}[{self.lo}:{self.hi}]"

    @property
    def size(self) -> int:
        return self.hi - self.lo


Chunk = tuple[Part, ...]


def check_chunk_values(chunk_values: int) -> int:
    """``chunk_values`` validated: an int >= 1."""
    if isinstance(chunk_values, bool) or not isinstance(chunk_values, int) or chunk_values < 1:
        raise ConfigError(f"chunk_values must be an int >= 1, got {chunk_values!r}")
    return chunk_values


def chunk_plan(layout: Sequence[tuple[str, int]], chunk_values: int) -> tuple[Chunk, ...]:
    """Cut the tensors (name, number of values), in order, into chunks.

    Whole tensors are grouped greedily while a chunk stays within ``chunk_values``; a
    tensor larger than that becomes ``ceil(n / chunk_values)`` equal flat pieces, each a
    chunk of its own. Every tensor appears exactly once (an empty one whole).
    """
    check_chunk_values(chunk_values)
    chunks: list[Chunk] = []
    current: list[Part] = []
    filled = 0
    for name, n in layout:
        n = int(n)
        if n > chunk_values:
            if current:
                chunks.append(tuple(current))
                current, filled = [], 0
            k = math.ceil(n / chunk_values)
            bounds = [i * n // k for i in range(k + 1)]
            chunks.extend(
                (Part(name, lo, hi, False),) for lo, hi in zip(bounds, bounds[1:], strict=False)
            )
            continue
        if current and filled + n > chunk_values:
            chunks.append(tuple(current))
            current, filled = [], 0
        current.append(Part(name, 0, n, True))
        filled += n
    if current or not chunks:
        chunks.append(tuple(current))
    return tuple(chunks)


def split_parts(plan: Sequence[Chunk]) -> bool:
    """Whether some tensor is cut into pieces."""
    return any(not p.whole for chunk in plan for p in chunk)


def chunk_views(arrays: Mapping[str, np.ndarray], chunk: Chunk) -> dict[str, np.ndarray]:
    """``{part key: view}`` of C-contiguous ``arrays`` (no copy; writes go through)."""
    return {
        p.key: arrays[p.tensor] if p.whole else arrays[p.tensor].reshape(-1)[p.lo : p.hi]
        for p in chunk
    }


def chunk_named(
    named: Sequence[tuple[str, torch.Tensor]], chunk: Chunk
) -> list[tuple[str, torch.Tensor]]:
    """The chunk's layout as ``(key, meta tensor)`` pairs (no memory)."""
    tensors = dict(named)
    out = []
    for p in chunk:
        t = tensors[p.tensor]
        shape = tuple(t.shape) if p.whole else (p.size,)
        out.append((p.key, torch.empty(shape, dtype=t.dtype, device="meta")))
    return out


def chunk_hints(values: Mapping[str, float] | None, chunk: Chunk) -> dict[str, float] | None:
    """Per-tensor hints (grad_rms, scale) keyed by part: each part gets its tensor's."""
    if values is None:
        return None
    return {p.key: values[p.tensor] for p in chunk if p.tensor in values}


def chunk_seed(seed: int | None, index: int) -> int | None:
    """The sampling seed of chunk ``index``: the round's seed for chunk 0 (so a one-chunk
    sync codes the packet it always did), one derived from it for the others."""
    if seed is None or index == 0:
        return seed
    return derive_seed(int(seed), index, 0)


def nonfinite_arrays(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or Inf (one pass over each; no temporaries)."""
    return [name for name, a in arrays.items() if not all_finite(a)]
