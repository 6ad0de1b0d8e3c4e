"""The reduce-scatter's shards: the flat model cut into P contiguous ranges of named
pieces (``"fc1.weight[0:1234]"``), a pure function of the layout and P, identical on every
rank; and the layout check that flat pieces need (a reshaped tensor would pass unseen)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tenfold.distributed.params import wire_layout
from tenfold.errors import ConfigError

__all__ = [
    "Piece",
    "coding_order",
    "TensorLayout",
    "layout_difference",
    "layout_of",
    "layout_tag",
    "piece_map",
    "pieces_of",
    "shard_named",
    "shard_plan",
    "shard_views",
]


@dataclass(frozen=True)
class Piece:
    """Values ``[lo, hi)`` of one tensor, flattened (C order): a part of one shard.

    Attributes:
        tensor: the tensor's name.
        lo: first flat index (inclusive).
        hi: last flat index (exclusive).
    """

    tensor: str
    lo: int
    hi: int

    @property
    def key(self) -> str:
        """The piece's name in a packet: ``"fc1.weight[0:1234]"``."""
        return f"{self.tensor}[{self.lo}:{self.hi}]"

    @property
    def size(self) -> int:
        """Number of values."""
        return self.hi - self.lo


def shard_plan(layout: Sequence[tuple[str, int]], world: int) -> tuple[tuple[Piece, ...], ...]:
    """Cut the tensors (name, number of values), in order, into ``world`` contiguous shards.

    The cuts are at ``j * n // world`` of the concatenated values, moved to the nearest
    tensor boundary when one is within ``n / (16 world)`` values (a tensor then stays
    whole where that is cheap; the shards stay within ~6% of equal). An empty tensor goes
    to the shard its offset falls in (the last one at the end), as a ``[0:0]`` piece, so
    every tensor appears in some packet. Shards may be empty when n < world.

    Returns:
        One tuple of :class:`Piece` per shard, in order; concatenated they cover every
        value of every tensor exactly once, in order.
    """
    if world < 1:
        raise ConfigError(f"world must be >= 1, got {world}")
    sizes = [int(s) for _, s in layout]
    starts = np.cumsum([0, *sizes]).tolist()
    n = int(starts[-1])
    boundaries = sorted(set(starts))
    slack = n // (16 * world)
    cuts = [0]
    for j in range(1, world):
        cut = j * n // world
        if slack:
            nearest = min(boundaries, key=lambda b: (abs(b - cut), b))
            if abs(nearest - cut) <= slack:
                cut = nearest
        cuts.append(max(cut, cuts[-1]))
    cuts.append(n)
    shards: list[list[Piece]] = [[] for _ in range(world)]
    for (name, size), start in zip(layout, starts[:-1], strict=True):
        if size == 0:
            j = next((j for j in range(world) if cuts[j] <= start < cuts[j + 1]), world - 1)
            shards[j].append(Piece(name, 0, 0))
            continue
        for j in range(world):
            lo, hi = max(start, cuts[j]), min(start + size, cuts[j + 1])
            if lo < hi:
                shards[j].append(Piece(name, lo - start, hi - start))
    return tuple(tuple(s) for s in shards)


def coding_order(rank: int, world: int) -> tuple[int, ...]:
    """The shards in the order ``rank`` codes its packets of them (the pipelined scatter).

    Its own shard first (its reduction starts from it; it is never sent), then at step
    s = 1..P-1 shard ``rank - s`` (mod P), sent as soon as it is coded. Each step is a
    ring: every rank sends one packet and receives one, from ``rank + s``, so no rank
    receives from several at once, and rank i receives i+1, ..., P-1, 0, ..., i-1 (ranks
    0 and P-1 in the order of the sum). Identical on every rank and in the simulation.

    >>> coding_order(1, 4)
    (1, 0, 3, 2)
    """
    return tuple((rank - s) % world for s in range(world))


def shard_views(arrays: Mapping[str, np.ndarray], pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """``{piece.key: flat view}`` of C-contiguous ``arrays`` (no copy; writes go through)."""
    return {p.key: arrays[p.tensor].reshape(-1)[p.lo : p.hi] for p in pieces}


def shard_named(
    named: Sequence[tuple[str, torch.Tensor]], pieces: Sequence[Piece]
) -> list[tuple[str, torch.Tensor]]:
    """The shard's layout as ``(key, meta tensor)`` pairs: 1-D, the tensor's dtype (no memory)."""
    dtypes = {n: t.dtype for n, t in named}
    return [(p.key, torch.empty((p.size,), dtype=dtypes[p.tensor], device="meta")) for p in pieces]


#: A tensor as the layout check sees it: name, shape, wire dtype (numpy ``dtype.str``).
TensorLayout = tuple[str, tuple[int, ...], str]


def layout_tag(layout: Sequence[TensorLayout]) -> int:
    """CRC-32 of the tensors' names, shapes and dtypes, in order."""
    crc = 0
    for name, shape, dtype in layout:
        crc = zlib.crc32(f"{name}{shape}{dtype};".encode(), crc)
    return crc


def layout_difference(
    first: Sequence[TensorLayout], other: Sequence[TensorLayout], who: str
) -> str | None:
    """What differs between rank 0's layout (``first``) and ``who``'s (None: nothing)."""
    for i, (a, b) in enumerate(zip(first, other, strict=False)):
        if a[0] != b[0]:
            return f"tensor {i}: {who} has {b[0]!r}, rank 0 has {a[0]!r}"
        if a != b:
            return (
                f"tensor {a[0]!r}: {who} has shape {b[1]} dtype {b[2]}, rank 0 has shape "
                f"{a[1]} dtype {a[2]}"
            )
    if len(first) != len(other):
        longer = first if len(first) > len(other) else other
        return (
            f"{who} has {len(other)} tensors, rank 0 {len(first)} (tensor "
            f"{longer[min(len(first), len(other))][0]!r})"
        )
    return None


def piece_map(
    values: Mapping[str, float] | None, pieces: Sequence[Piece]
) -> dict[str, float] | None:
    """Per-tensor hints (grad_rms, scale) keyed by piece: each piece gets its tensor's."""
    if values is None:
        return None
    return {p.key: values[p.tensor] for p in pieces if p.tensor in values}


def pieces_of(
    named: Sequence[tuple[str, torch.Tensor]], plan: Sequence[Sequence[Piece]]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Piece key -> (tensor name, tensor shape), for the per-tensor stats."""
    shapes = {n: tuple(t.shape) for n, t in named}
    return {p.key: (p.tensor, shapes[p.tensor]) for pieces in plan for p in pieces}


def layout_of(named: Sequence[tuple[str, torch.Tensor]]) -> list[TensorLayout]:
    """Names, shapes and wire dtypes, for the reduce-scatter's layout check."""
    return list(wire_layout(named))
