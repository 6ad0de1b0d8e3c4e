"""The base of the compressed averagers (real ranks and simulated): their options, the
round counter and the shared model; and how ranks come to agree on their starting weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from tenfold.codec import Policy
from tenfold.codec.parallel import resolve_threads
from tenfold.distributed.collective import PROTOCOLS, check_collective, resolve_collective
from tenfold.distributed.params import array_dict, host_arrays, tensor_dict
from tenfold.distributed.process_group import comm_device
from tenfold.distributed.protocol.chunks import DEFAULT_CHUNK_VALUES, check_chunk_values
from tenfold.distributed.protocol.guard import check_ratio
from tenfold.distributed.protocol.rank_order import BufferPool
from tenfold.distributed.sender import SharedReference, check_transmit, reference_tag, round_seed
from tenfold.distributed.transport import exchange_sizes_and_tags
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "AveragerBase",
    "align_ranks",
    "broadcast_exact",
]


def align_ranks(named: Sequence[tuple[str, torch.Tensor]], group: dist.ProcessGroup | None) -> int:
    """Make every rank hold rank 0's tensors, at the cost of one hash exchange when they
    already agree; returns the bytes this rank received (0 when they agreed).

    The hash is :func:`reference_tag` of the wire-dtype values (one int64 per rank). Only
    when the ranks differ is each tensor broadcast from rank 0, in its own dtype: float16
    and bfloat16 as their raw bytes (uint8), which every backend carries, so the copy is
    exact whatever the dtype. Collective.
    """
    _, tags = exchange_sizes_and_tags(0, reference_tag(host_arrays(named)), group=group)
    if len(set(tags)) == 1:
        return 0
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for _, t in named:
            broadcast_exact(t, src=src, group=group)
    if dist.get_rank(group) == 0:
        return 0
    return sum(t.numel() * t.element_size() for _, t in named)


def broadcast_exact(t: torch.Tensor, *, src: int, group: dist.ProcessGroup | None) -> None:
    """Broadcast ``t`` (in place) from global rank ``src``, bit for bit, whatever its dtype.

    float32/float64/int64 go as they are; other dtypes (float16, bfloat16, bool, ...) as
    their bytes, since not every backend reduces or carries them. A tensor off the
    collective's device (a CPU tensor under NCCL) travels through a copy.
    """
    device = comm_device(group)
    direct = t.dtype in (torch.float32, torch.float64, torch.int64)
    if direct and t.device == device and t.is_contiguous():
        dist.broadcast(t.data, src=src, group=group)
        return
    buf = t.detach().to(device).contiguous().reshape(-1)
    if not direct:
        buf = buf.view(torch.uint8)
    dist.broadcast(buf, src=src, group=group)
    if not direct:
        buf = buf.view(t.dtype)
    t.data.copy_(buf.view(t.shape))


class AveragerBase:
    """What both compressed averagers hold: options, round, pools and the shared model."""

    def __init__(
        self,
        policy: Policy,
        transmit: str,
        error_feedback: bool,
        collective: str,
        max_contribution_ratio: float | None,
        threads: int | None,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
    ) -> None:
        if not isinstance(policy, Policy):
            raise InputTypeError(
                "policy must be a tenfold policy, e.g. tenfold.TargetRate(bits_per_param=1.0), "
                f"got {policy!r}"
            )
        check_transmit(transmit, error_feedback)
        #: the all-gather's chunk size in values (the same on every rank)
        self.chunk_values = check_chunk_values(chunk_values)
        #: the codec's ``threads`` for every compress/decode (an int >= 1)
        self.threads = resolve_threads(threads)
        self.policy = policy
        self.transmit = transmit
        self.error_feedback = error_feedback
        #: as asked: a protocol, or "auto" (resolved at the first sync, then fixed)
        self.collective = check_collective(collective)
        self._protocol: str | None = None if collective == "auto" else collective
        self.max_contribution_ratio = check_ratio(max_contribution_ratio)
        self.round = 0
        self._pool = BufferPool()
        self._shard_pool = BufferPool()  # reduce-scatter: the shard accumulators
        #: the shared model (delta mode) and its hash chain
        self.reference = SharedReference()

    def _seed(self, policy: Policy, rank: int, round: int) -> int | None:
        """The sampling seed ``rank`` codes with in ``round`` (:func:`round_seed`)."""
        return round_seed(policy, rank=rank, round=round)

    def _protocol_for(self, arrays: Mapping[str, Any], world_size: int) -> str:
        """The protocol of this sync: ``collective``, or what ``"auto"`` resolves to for
        this model and group (fixed from the first sync on: the residuals belong to it)."""
        if self._protocol is None:
            # numpy arrays (a rank's host copies) or torch tensors (a simulated worker's)
            n = sum(int(a.numel() if hasattr(a, "numel") else a.size) for a in arrays.values())
            self._protocol = resolve_collective(self.collective, n, world_size)
        return self._protocol

    def _shared_state(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "transmit": self.transmit,
            "tag": self.reference.tag,
            "collective": self._protocol or self.collective,
            "reference": tensor_dict(self.reference.arrays),
        }

    def _load_shared(self, state: Mapping[str, Any]) -> None:
        if state.get("transmit", self.transmit) != self.transmit:
            raise ConfigError(
                f"state is for transmit={state['transmit']!r}, this averager sends "
                f"{self.transmit!r}"
            )
        saved = state.get("collective", self._protocol or self.collective)
        if self.collective == "auto" and saved in PROTOCOLS:
            self._protocol = saved  # what "auto" resolved to in the saved run
        elif saved != (self._protocol or self.collective):
            # the second-stage residuals belong to one protocol (and world size)
            raise ConfigError(
                f"state is for collective={saved!r}, this averager uses {self.collective!r}"
            )
        self.round = int(state["round"])
        self.reference.tag = int(state.get("tag", 0))
        self.reference.arrays = array_dict(state.get("reference"))
