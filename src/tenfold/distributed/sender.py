"""What one rank keeps between synchronisations as a sender: the shared model its deltas
are taken against (the *reference*, with its hash chained through the packets), its
error-feedback residuals, and its per-round sampling seed. The protocol keeps none of it:
the drivers own these objects and hand the protocol only what a rank sends."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tenfold.codec import Policy, derive_seed
from tenfold.distributed.delta_kernels import delta_input, delta_input_rms, delta_rms
from tenfold.distributed.params import host_arrays, wire_layout
from tenfold.distributed.protocol.chunks import Chunk, chunk_views
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "TRANSMIT_MODES",
    "SenderState",
    "SharedReference",
    "aligned_reference",
    "chain_tag",
    "check_transmit",
    "reference_tag",
    "round_seed",
]


def round_seed(policy: Policy, *, rank: int, round: int) -> int | None:
    """The sampling seed ``rank`` codes with in ``round``: ``derive_seed(policy.seed, rank,
    round)`` for a policy that samples (EntropyAdaptive, TargetRate), None for one without
    a seed (the policy is then used as it is). Passed to ``compress(..., seed=...)``; the
    real ranks, the simulation and the DDP hook all take it from here."""
    seed = getattr(policy, "seed", None)
    return None if seed is None else derive_seed(int(seed), rank, round)


#: What a rank sends: its pseudo-gradient (plus residual) or its weights (the paper).
TRANSMIT_MODES = ("delta", "weights")


def check_transmit(transmit: str, error_feedback: bool) -> None:
    """Validate the averager's ``transmit`` and ``error_feedback`` arguments."""
    if transmit not in TRANSMIT_MODES:
        raise ConfigError(f"transmit must be one of {TRANSMIT_MODES}, got {transmit!r}")
    if not isinstance(error_feedback, bool):
        raise InputTypeError(f"error_feedback must be a bool, got {error_feedback!r}")


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
    layout = {n: (shape, dtype) for n, shape, dtype in wire_layout(named)}
    expected = {n: (tuple(a.shape), a.dtype.str) for n, a in ref.items()}
    if layout != expected:
        missing = sorted(set(expected) - set(layout))
        extra = sorted(set(layout) - set(expected))
        reshaped = sorted(n for n in set(layout) & set(expected) if layout[n] != expected[n])
        raise ConfigError(
            "params do not match the averager's shared model (the same tensors every sync): "
            f"missing {missing}, unexpected {extra}, other shapes or dtypes {reshaped}"
        )
    return {n: ref[n] for n, _ in named}


@dataclass
class SenderState:
    """One rank's error feedback: what its packets failed to carry.

    Attributes:
        residual: ``x - decoded(x)`` of its last packet(s), per tensor (None: none yet).
        residual2: reduce-scatter only: the second-stage residual of the shard this rank
            reduces (piece key -> 1-D array), what its re-coded mean failed to carry.
    """

    residual: dict[str, np.ndarray] | None = None
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
        residual = self.residual if error_feedback else None
        for name, w in host.items():
            e = None if residual is None else residual[name]
            if scale is None:
                x[name] = delta_input(w, reference[name], e)
            else:  # one pass for both (the same values as the two calls)
                x[name], scale[name] = delta_input_rms(w, reference[name], e)
        return x, scale

    def chunk_inputs(
        self,
        host: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        *,
        error_feedback: bool,
        scale: dict[str, float] | None = None,
    ) -> Callable[[Chunk], dict[str, np.ndarray]]:
        """``x = (w - w_shared) + e`` computed one chunk at a time (on the coding thread):
        the same float operations as :meth:`inputs`, never a whole-model ``x``.

        ``scale`` (when given) receives the fresh deltas' RMS per tensor, the values
        :meth:`inputs` returns, by the time a chunk's values are returned: a whole tensor's
        in the same pass as its ``x`` (one read of ``w`` and ``w_shared``, not two), a
        tensor cut into pieces in a pass of its own when its first piece is coded.
        """
        residual = self.residual if error_feedback else None

        def values(chunk: Chunk) -> dict[str, np.ndarray]:
            w, ref = chunk_views(host, chunk), chunk_views(reference, chunk)
            e = chunk_views(residual, chunk) if residual is not None else None
            out: dict[str, np.ndarray] = {}
            for p in chunk:
                key = p.key
                e_part = None if e is None else e[key]
                if scale is not None and p.whole:
                    out[key], scale[p.tensor] = delta_input_rms(w[key], ref[key], e_part)
                    continue
                if scale is not None and p.tensor not in scale:
                    scale[p.tensor] = delta_rms(host[p.tensor], reference[p.tensor])
                out[key] = delta_input(w[key], ref[key], e_part)
            return out

        return values

    def keep_residual(self, x: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]) -> None:
        """``e = x - decoded(x)``: what this rank's packet failed to carry."""
        self.residual = {name: np.subtract(v, decoded[name]) for name, v in x.items()}

    def keep_residual2(
        self, y: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]
    ) -> None:
        """``e2 = y - decoded(y)``: what this reducer's re-coded shard failed to carry."""
        self.residual2 = {key: np.subtract(v, decoded[key]) for key, v in y.items()}


class SharedReference:
    """The shared model ``w_shared`` every rank holds bit for bit, and its hash.

    The hash starts as :func:`reference_tag` of the values and then chains through each
    round's packets (:func:`chain_tag`); every size exchange carries it, so a rank whose
    copy differs is named before anything is averaged.

    Attributes:
        arrays: name -> array in the wire dtype (None: not established yet).
        tag: its hash (0 when there is none).
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] | None = None
        self.tag = 0

    def set(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take a copy of ``arrays`` as the reference, hashed afresh."""
        self.arrays = {n: a.copy() for n, a in arrays.items()}
        self.tag = reference_tag(self.arrays)

    def rebase(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Take ``named``'s values as the reference (copied into the existing arrays, which
        must hold the same tensors), hashed afresh: what ``set_reference`` does on every
        rank after an outer step."""
        values = host_arrays(named)
        if self.arrays is None:
            self.set(values)
            return
        # into the arrays it has (the same tensors, or a clear error): no second model
        # alive while the new one is copied, no fresh pages to fault in
        reference = self.align(named)
        for name, a in values.items():
            np.copyto(reference[name], a)
        self.tag = reference_tag(reference)

    def align(self, named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
        """The reference in the order of ``named``, after checking it holds the same tensors."""
        assert self.arrays is not None
        self.arrays = aligned_reference(named, self.arrays)
        return self.arrays

    def chain(self, round: int, packets: Sequence[Any]) -> None:
        """The hash after a sync whose chunks were added in place (``apply_mean``)."""
        self.tag = chain_tag(self.tag, round, packets)

    def advance(
        self, mean: Mapping[str, np.ndarray], round: int, packets: Sequence[Any]
    ) -> dict[str, np.ndarray]:
        """``w_shared += mean`` in place, the hash chained through the round's packets;
        returns the new reference."""
        assert self.arrays is not None
        for name, ref in self.arrays.items():
            np.add(ref, mean[name], out=ref)
        self.tag = chain_tag(self.tag, round, packets)
        return self.arrays
