"""Every codec call of the protocol: coding a rank's packet with its per-round seed,
decoding a peer's with the sender named, and refusing absurd announced sizes before any
buffer is allocated for them."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tenfold.codec import (
    PacketInfo,
    Policy,
    accumulate,
    compress,
    compress_and_decode,
    inspect,
)
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError

__all__ = [
    "accumulate_from",
    "check_announced_size",
    "check_announced_sizes",
    "encode_and_decode",
    "encode_timed",
    "packet_info",
]


def check_announced_sizes(
    sizes: Sequence[int], named: Sequence[tuple[str, torch.Tensor]], *, what: str = "packet"
) -> None:
    """Refuse absurd sizes before any buffer is allocated for them.

    No packet of this model can exceed its raw bytes plus headers (the codec never picks a
    mode bigger than raw), so a larger announcement is a broken or hostile peer. Every
    rank sees the same sizes and raises the same error at the same point, so nobody is
    left waiting in the transfer. ``sizes[r]`` is rank r's; ``what`` names the payload.
    """
    for peer, size in enumerate(sizes):
        check_announced_size(peer, size, named, what=what)


def check_announced_size(
    peer: int, size: int, named: Sequence[tuple[str, torch.Tensor]], *, what: str = "packet"
) -> None:
    """:func:`check_announced_sizes` for one rank's announced size (bytes)."""
    raw = sum(t.numel() * t.element_size() for _, t in named)
    limit = 2 * raw + 65_536 + sum(1024 + 16 * t.dim() + len(n) for n, t in named)
    if size > limit:
        raise CorruptPacketError(
            f"rank {peer} announced a {what} of {size} bytes, more than any {what} of "
            f"this model can need ({limit} bytes): refusing to allocate it"
        )


def encode_timed(
    arrays: Mapping[str, np.ndarray],
    policy: Policy,
    grad_rms: Mapping[str, float] | None,
    scale: Mapping[str, float] | None = None,
    threads: int | None = None,
    seed: int | None = None,
) -> tuple[bytes, float]:
    """``compress(arrays, policy, ..., seed=seed)`` and the seconds it took (the stats'
    encode time); ``seed``: this rank's sampling seed for this round (None: the policy's)."""
    t0 = time.perf_counter()
    blob = compress(arrays, policy, grad_rms=grad_rms, scale=scale, threads=threads, seed=seed)
    return blob, time.perf_counter() - t0


def encode_and_decode(
    arrays: Mapping[str, np.ndarray],
    policy: Policy,
    grad_rms: Mapping[str, float] | None,
    scale: Mapping[str, float] | None = None,
    threads: int | None = None,
    seed: int | None = None,
) -> tuple[bytes, tuple[dict[str, np.ndarray], PacketInfo]]:
    """:func:`encode_timed`'s packet, its decoding (in the wire dtypes) and its info: the
    coder writes the decoding as it codes (``compress_and_decode``) instead of decoding
    the packet again; error feedback and the rank-order sum use the same arrays."""
    blob, decoded, info = compress_and_decode(
        arrays, policy, grad_rms=grad_rms, scale=scale, threads=threads, seed=seed
    )
    return blob, (decoded, info)


def accumulate_from(
    rank: int,
    packet: Any,
    out: dict[str, np.ndarray],
    threads: int | None = None,
    *,
    overwrite: bool = False,
) -> PacketInfo:
    """``accumulate(packet, out, overwrite=overwrite)``, with the sending rank named in its
    errors."""
    try:
        return accumulate(packet, out, threads=threads, overwrite=overwrite)
    except PacketMismatchError as exc:
        raise PacketMismatchError(f"packet from rank {rank} does not match: {exc}") from exc
    except CorruptPacketError as exc:
        raise CorruptPacketError(f"packet from rank {rank} is corrupt: {exc}") from exc


def packet_info(packet: Any) -> PacketInfo:
    """What a packet holds, from its headers (no decoding)."""
    return inspect(packet)
