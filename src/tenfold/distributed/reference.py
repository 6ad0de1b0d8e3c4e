"""Delta mode's shared model (the *reference*): its hash, its chaining through the
packets, and one rank's error-feedback residuals against it."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tenfold.codec.policy import rms
from tenfold.distributed.params import zeros_like_wire

__all__ = [
    "DeltaRank",
    "TRANSMIT_MODES",
    "aligned_reference",
    "chain_tag",
    "check_transmit",
    "reference_tag",
]


#: What a rank sends: its pseudo-gradient (plus residual) or its weights (the paper).
TRANSMIT_MODES = ("delta", "weights")


def check_transmit(transmit: str, error_feedback: bool) -> None:
    """Validate the averager's ``transmit`` and ``error_feedback`` arguments."""
    if transmit not in TRANSMIT_MODES:
        raise ValueError(f"transmit must be one of {TRANSMIT_MODES}, got {transmit!r}")
    if not isinstance(error_feedback, bool):
        raise TypeError(f"error_feedback must be a bool, got {error_feedback!r}")


def reference_tag(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a reference's names, shapes and bytes, in order (one pass over the model)."""
    crc = 0
    for name, a in arrays.items():
        crc = zlib.crc32(f"{name}{a.shape}{a.dtype.str}".encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return crc


def chain_tag(tag: int, round: int, packets: Sequence[Any]) -> int:
    """The next reference's hash: the last one, the round, and every packet's CRC trailer.

    The new reference is a function of the old one and the K packets, so chaining their
    CRC-32s (already in every packet) costs nothing, unlike hashing the model again.
    """
    crc = zlib.crc32(struct.pack("<IQ", tag, round))
    for packet in packets:
        crc = zlib.crc32(bytes(memoryview(packet)[-4:]), crc)
    return crc


def aligned_reference(
    named: Sequence[tuple[str, torch.Tensor]], ref: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``ref`` in the order of ``named``, after checking it holds the same tensors.

    (A checkpoint may store the reference in another order: safetensors sorts its keys.)
    """
    wire = {n: a.dtype.str for n, a in zeros_like_wire(named, shape_only=True).items()}
    layout = {n: (tuple(t.shape), wire[n]) for n, t in named}
    expected = {n: (tuple(a.shape), a.dtype.str) for n, a in ref.items()}
    if layout != expected:
        missing = sorted(set(expected) - set(layout))
        extra = sorted(set(layout) - set(expected))
        reshaped = sorted(n for n in set(layout) & set(expected) if layout[n] != expected[n])
        raise ValueError(
            "params do not match the averager's shared model (the same tensors every sync): "
            f"missing {missing}, unexpected {extra}, other shapes or dtypes {reshaped}"
        )
    return {n: ref[n] for n, _ in named}


@dataclass
class DeltaRank:
    """One rank's delta-mode state: nothing but the residual (the reference is shared)."""

    residual: dict[str, np.ndarray] | None = None
    #: reduce-scatter only: the second-stage residual of the shard this rank reduces
    #: (piece key -> 1-D array), what its re-coded mean failed to carry
    residual2: dict[str, np.ndarray] | None = None

    def inputs(
        self,
        host: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        *,
        error_feedback: bool,
        want_scale: bool,
    ) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
        """``x = (w - w_shared) + e`` per tensor, and the fresh deltas' RMS (step hints)."""
        x: dict[str, np.ndarray] = {}
        scale: dict[str, float] | None = {} if want_scale else None
        for name, w in host.items():
            d = np.subtract(w, reference[name])
            if scale is not None:
                scale[name] = rms(d.reshape(-1)) if d.size else 0.0
            if error_feedback and self.residual is not None:
                np.add(d, self.residual[name], out=d)
            x[name] = d
        return x, scale

    def keep_residual(self, x: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]) -> None:
        """``e = x - decoded(x)``: what this rank's packet failed to carry."""
        self.residual = {name: np.subtract(v, decoded[name]) for name, v in x.items()}
