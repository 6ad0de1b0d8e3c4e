"""The uncompressed baseline: one fp32 ``all_reduce`` per dtype, behind the same interface."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from tenfold.distributed.averager_base import align_ranks
from tenfold.distributed.params import ParamsLike, named_tensors, require_parameters, wire_dtype
from tenfold.distributed.process_group import (
    comm_device,
    is_distributed,
    local_rank_or_zero,
    require_process_group,
)
from tenfold.distributed.stats import SyncStats, TensorStats, noop_stats

__all__ = [
    "AllReduceAverager",
]


class AllReduceAverager:
    """The uncompressed baseline: the exact fp32 mean of every rank's tensors, one all_reduce.

    Each sync copies the tensors into one flat float32 buffer (float64 tensors into a
    float64 one), sums it over the ranks with one ``dist.all_reduce``, divides by the
    world size P in that dtype and copies the mean back, rounded to each tensor's dtype.
    gloo's and NCCL's
    all_reduce give every rank the same sum for the same inputs (each chunk is reduced
    once, then distributed), and every rank divides it identically, so the ranks end
    bit-identical (tested). The mean equals
    ``torch.distributed.algorithms.model_averaging.utils.average_parameters`` up to the
    order of the additions.

    It has no shared model, no residual and no sampling seed: :meth:`set_reference` does
    nothing and the state is the round counter. Interchangeable with
    :class:`CompressedAverager` (:class:`Averager`): ``grad_rms`` is accepted, ignored for
    the arithmetic and recorded in the per-tensor stats.

    Stats, per rank:

    * ``packet_bytes``: every rank's payload, ``4 n`` bytes for n float32 values (8 per
      float64 value), so ``bits_per_param`` (``8 * payload / n``) and
      ``quantized_bits_per_param`` are 32: the figure to compare with a
      :class:`CompressedAverager`'s packet cost.
    * ``bytes_sent``: what a ring all_reduce puts on the wire from each rank,
      ``2 (P - 1) / P * payload`` bytes (reduce-scatter, then all-gather), rounded down;
      ``bytes_received`` is the same. Unlike :class:`CompressedAverager`'s ``bytes_sent``
      (one packet, the ring's forwarding not counted), this is traffic, so
      ``bits_per_param != 8 * bytes_sent / num_values`` here. The backend may pick
      another algorithm; the figure is the bandwidth-optimal one.
    * ``encode_seconds``: the copy into the flat buffer; ``comm_seconds``: the all_reduce
      (CUDA is synchronised around it); ``decode_seconds``: division and copy back.

    NaN/Inf are not checked: they spread to every rank's mean, as with DDP.

    Backends: the flat buffer lives on :func:`tenfold.distributed.process_group.comm_device`
    (CUDA under NCCL, so CUDA tensors never leave the device; the CPU under gloo).

    Args:
        process_group: the group to average over (None: the default group).
        allow_single_process: as for :class:`CompressedAverager`: without an initialised
            process group :meth:`initialize` and :meth:`average` raise
            :class:`~tenfold.distributed.errors.ProcessGroupError`; True accepts that, and
            then every sync is a no-op.

    Attributes:
        round: index of the next synchronisation.

    Example::

        avg = AllReduceAverager()
        avg.initialize(model.named_parameters())
        stats = avg.average(model.named_parameters())   # stats.bits_per_param == 32.0
    """

    def __init__(
        self,
        *,
        process_group: dist.ProcessGroup | None = None,
        allow_single_process: bool = False,
    ) -> None:
        self.process_group = process_group
        self.allow_single_process = allow_single_process
        self.round = 0

    def _distributed(self) -> bool:
        require_process_group(self.process_group, self.allow_single_process, type(self).__name__)
        return is_distributed(self.process_group)

    def state_dict(self) -> dict[str, Any]:
        """``{"round": int}``: nothing else outlives a sync."""
        return {"round": self.round}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.round = int(state["round"])

    def initialize(self, params: ParamsLike) -> int:
        """As :meth:`CompressedAverager.initialize`: rank 0's tensors everywhere, at the
        cost of one hash exchange when the ranks already agree. Returns bytes received."""
        named = named_tensors(params)
        require_parameters(named)
        return align_ranks(named, self.process_group) if self._distributed() else 0

    def set_reference(self, params: ParamsLike) -> None:
        """Nothing to do: every sync averages the whole tensors, from no shared model."""

    def average(
        self,
        params: ParamsLike,
        *,
        grad_rms: Mapping[str, float] | None = None,
    ) -> SyncStats:
        """Replace the tensors, in place, by their mean over the ranks (exact in fp32).

        Args:
            params: as for :meth:`CompressedAverager.average` (the same tensors, in the
                same order, on every rank: a mismatch is not detected, as with DDP).
            grad_rms: accepted for interchangeability; only recorded in the stats.

        Returns:
            This rank's :class:`SyncStats` (see the class docstring for the byte counts).
        """
        named = named_tensors(params)
        require_parameters(named)
        round_ = self.round
        self.round += 1
        if not self._distributed():
            rank = local_rank_or_zero()
            return noop_stats(named, rank=rank, round=round_)
        group = self.process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        device = comm_device(group)
        t0 = time.perf_counter()
        # One flat buffer per wire dtype: one collective each (like a DDP bucket).
        by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
        for name, t in named:
            by_dtype.setdefault(wire_dtype(t.dtype), []).append((name, t))
        flats = {
            dtype: torch.cat([t.detach().reshape(-1).to(device, dtype) for _, t in group_])
            for dtype, group_ in by_dtype.items()
        }
        t1 = time.perf_counter()
        for flat in flats.values():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        with torch.no_grad():
            for dtype, group_ in by_dtype.items():
                flat = flats[dtype]
                flat.div_(world)  # in the buffer's dtype: the same rounding on every rank
                offset = 0
                for _, t in group_:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view(t.shape))
                    offset += n
        t3 = time.perf_counter()
        payload = sum(t.numel() * wire_dtype(t.dtype).itemsize for _, t in named)
        wire = 2 * (world - 1) * payload // world
        tensors = tuple(
            TensorStats(
                name=name,
                shape=tuple(t.shape),
                num_values=t.numel(),
                bits=8 * wire_dtype(t.dtype).itemsize,
                entropy=None,
                nbytes=t.numel() * wire_dtype(t.dtype).itemsize,
                bits_per_param=8.0 * wire_dtype(t.dtype).itemsize if t.numel() else math.inf,
                grad_rms=None
                if grad_rms is None or name not in grad_rms
                else float(grad_rms[name]),
                mode="raw",
            )
            for name, t in named
        )
        n_values = sum(t.numel() for _, t in named)
        bits = 8.0 * payload / n_values if n_values else 0.0
        return SyncStats(
            world_size=world,
            rank=rank,
            round=round_,
            bytes_sent=wire,
            bytes_received=wire,
            packet_bytes=(payload,) * world,
            num_values=n_values,
            bits_per_param=bits,
            quantized_bits_per_param=bits,
            tensors=tensors,
            encode_seconds=t1 - t0,
            comm_seconds=t2 - t1,
            decode_seconds=t3 - t2,
        )
