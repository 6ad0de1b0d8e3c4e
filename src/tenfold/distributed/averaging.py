"""Averaging over the ranks of a process group through compressed packets: the
:class:`Averager` interface and :class:`CompressedAverager`, a thin driver of
:mod:`tenfold.distributed.protocol` (the protocol, its two collectives and what they
measured: docs/PROTOCOL.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.graph import increment_version

from tenfold.codec import Lossless, Policy
from tenfold.distributed.averager_base import AveragerBase, align_ranks
from tenfold.distributed.collective import DEFAULT_COLLECTIVE
from tenfold.distributed.delta_kernels import apply_mean
from tenfold.distributed.params import (
    ParamsLike,
    array_dict,
    copy_back,
    copy_parts,
    host_arrays,
    named_tensors,
    require_parameters,
    shares_memory,
    tensor_dict,
    uses_scale,
    zeros_like_wire,
)
from tenfold.distributed.process_group import (
    is_distributed,
    local_rank_or_zero,
    require_process_group,
)
from tenfold.distributed.protocol import Outgoing, SyncResult, all_gather, reduce_scatter
from tenfold.distributed.protocol.all_gather import ChunkSink
from tenfold.distributed.protocol.chunks import DEFAULT_CHUNK_VALUES, Chunk, chunk_views
from tenfold.distributed.protocol.rank_order import divide_in_place
from tenfold.distributed.sender import SenderState, reference_tag
from tenfold.distributed.stats import SyncStats, noop_stats
from tenfold.distributed.transport import TorchTransport

__all__ = [
    "Averager",
    "CompressedAverager",
]


@runtime_checkable
class Averager(Protocol):
    """What :class:`tenfold.distributed.LocalSGD` (and any training loop) needs of an averager.

    Implemented by :class:`CompressedAverager` (tenfold packets) and
    :class:`AllReduceAverager` (the uncompressed fp32 baseline), so one can stand in for
    the other. Each method is called on every rank of the averager's group, with the same
    tensors (names, shapes, dtypes) every time. :class:`SimulatedAverager` has the same
    method names over K workers held in one process (``Sequence[ParamsLike]`` in,
    ``list[SyncStats]`` out), so it passes ``isinstance`` structurally, but it is not an
    :class:`Averager`: it is the sweep-time twin of K ranks, not one rank, and
    :class:`~tenfold.distributed.LocalSGD` refuses it by name.

    ``isinstance(x, Averager)`` checks that the methods exist (``runtime_checkable``), not
    their signatures.
    """

    def initialize(self, params: ParamsLike) -> int:
        """Make every rank start from rank 0's tensors (collective); bytes received."""
        ...

    def average(
        self, params: ParamsLike, *, grad_rms: Mapping[str, float] | None = None
    ) -> SyncStats:
        """Synchronise ``params`` in place (collective): bit-identical on every rank."""
        ...

    def set_reference(self, params: ParamsLike) -> None:
        """Take ``params`` (bit-identical on every rank) as the shared model the next
        synchronisation starts from; a no-op for averagers that keep no shared model."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """This rank's averager state (CPU tensors and plain values), for a checkpoint."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        ...


class AllGatherPlan:
    """One all-gather sync of a :class:`CompressedAverager` (its seeds, guard, chunks)."""

    def __init__(
        self,
        avg: CompressedAverager,
        transport: TorchTransport,
        named: Sequence[tuple[str, torch.Tensor]],
        round_: int,
    ) -> None:
        self.avg, self.transport, self.named, self.round = avg, transport, named, round_

    def run(self, send: Outgoing, sink: ChunkSink, *, sink_adds_own: bool = False) -> SyncResult:
        t = self.transport
        return all_gather(
            t, self.avg._seeded(send, t.rank, t.world_size, self.round), self.named,
            round=self.round, threads=self.avg.threads, ratio=self.avg.max_contribution_ratio,
            chunk_values=self.avg.chunk_values, sink=sink, sink_adds_own=sink_adds_own,
        )  # fmt: skip


class CompressedAverager(AveragerBase):
    """Average parameters across the ranks of a process group through compressed packets.

    Args:
        policy: a tenfold policy: for deltas the step policies ``tenfold.TargetRate(b)`` and
            ``tenfold.RelativeStep(alpha)``; the paper's ``EntropyAdaptive``, ``Fixed``,
            ``GradientRMS`` and ``Lossless`` work in either mode. Every rank must use the same.
        process_group: the group to average over (None: the default group).
        transmit: ``"delta"`` (send ``w - w_shared`` plus the residual; module docstring)
            or ``"weights"`` (the paper's scheme: send the weights).
        error_feedback: in delta mode, keep what each packet failed to carry and add it to
            the next delta (ignored in weights mode); with reduce-scatter, each reducer
            also keeps what its re-coded shard failed to carry (the second stage).
        collective: ``"auto"`` (the default: whichever protocol measured faster here for
            this model and group, resolved at the first sync: reduce-scatter from 3 ranks
            and 8M values, else all-gather; module docstring), ``"all-gather"`` (every rank
            decodes every rank's packet) or ``"reduce-scatter"``. Every rank must use
            the same.
        max_contribution_ratio: None (off, the default), or a number > 1: a rank whose
            decoded contribution's RMS exceeds this multiple of the median rank's makes
            every rank raise :class:`ContributionRatioError` naming it, at the same
            collective, before anything is applied. Costs one more decode pass into
            separate arrays (and, in reduce-scatter, nothing on the wire: the sums of
            squares ride with the verdicts that are exchanged anyway).
        threads: the codec's threads for every compress/decode (None: every core this
            process may run on, ``len(os.sched_getaffinity(0))``); results do not depend
            on it. With several ranks per machine, pass ``cores // ranks``.
        allow_single_process: without an initialised process group, :meth:`initialize`
            and :meth:`average` raise :class:`~tenfold.distributed.errors.ProcessGroupError`
            (a forgotten ``init_process_group`` would otherwise train K independent
            models); True accepts that, and then every sync is a no-op.
        chunk_values: the all-gather codes the model in chunks of about this many values
            (one packet each; the next is coded while the previous one travels, and no
            whole-model temporary is made); the same on every rank. A model of one chunk
            sends exactly the packet of an unchunked sync.

    Attributes:
        round: index of the next synchronisation (part of the training state: restore it
            on resume so the derived sampling seeds continue the same sequence).

    A group of one rank (or no group, with ``allow_single_process=True``): :meth:`average`
    leaves the tensors untouched and returns stats with ``world_size=1`` and nothing sent.

    Memory: delta mode keeps the reference and the residual, one model each in float32;
    the all-gather's sync adds chunk-sized buffers only (docs/PROTOCOL.md, "Memory"). The
    reduce-scatter keeps its result and own-decode arrays between syncs (two more).

    Backends: gloo codes and exchanges on the CPU. With NCCL the tensors are copied to the
    CPU, coded there, the packets are exchanged as CUDA uint8 tensors and the averaged
    values are copied back to the device (``tests/gpu``, skipped without CUDA: the build
    machines have none).

    Example (inside each rank, after ``init_process_group``)::

        avg = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0))
        avg.initialize(model.named_parameters())      # agree on the starting model
        ...                                           # local training steps
        stats = avg.average(model.named_parameters())
        stats.bits_per_param, stats.bytes_sent
    """

    def __init__(
        self,
        policy: Policy,
        *,
        process_group: dist.ProcessGroup | None = None,
        transmit: str = "delta",
        error_feedback: bool = True,
        collective: str = DEFAULT_COLLECTIVE,
        max_contribution_ratio: float | None = None,
        threads: int | None = None,
        allow_single_process: bool = False,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
    ) -> None:
        super().__init__(
            policy, transmit, error_feedback, collective, max_contribution_ratio, threads,
            chunk_values,
        )  # fmt: skip
        self.process_group = process_group
        self.allow_single_process = allow_single_process
        #: this rank's residuals (error feedback)
        self.sender = SenderState()

    def _distributed(self) -> bool:
        require_process_group(self.process_group, self.allow_single_process, type(self).__name__)
        return is_distributed(self.process_group)

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``round``, ``collective``, and in delta mode the reference, its hash and this
        rank's residuals (``residual``; ``residual2``, the second-stage residual of the
        shard it reduces, reduce-scatter only).

        Tensors are CPU torch tensors (for a safetensors checkpoint); see
        :meth:`load_state_dict`.
        """
        return {
            **self._shared_state(),
            "residual": tensor_dict(self.sender.residual),
            "residual2": tensor_dict(self.sender.residual2),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run continues bit for bit)."""
        self._load_shared(state)
        self.sender = SenderState(
            array_dict(state.get("residual")), array_dict(state.get("residual2"))
        )

    # -- the shared starting point ---------------------------------------------------------------

    def initialize(self, params: ParamsLike) -> int:
        """Make every rank start from the same weights and take them as the shared model.

        Compares a hash of each rank's weights (one int64 per rank); only if they differ is
        rank 0's model broadcast into every rank's tensors (fp32, like DDP at start).
        Collective: every rank must call it. Weights mode needs no reference; calling it
        there still aligns the ranks.

        Returns:
            Bytes this rank received in the broadcast (0 when the ranks agreed).

        Raises:
            ProcessGroupError: no process group (see ``allow_single_process``).
        """
        named = named_tensors(params)
        require_parameters(named)
        received = align_ranks(named, self.process_group) if self._distributed() else 0
        self.reference.set(host_arrays(named))
        self.sender = SenderState()
        return received

    def set_reference(self, params: ParamsLike) -> None:
        """Take ``params`` as the new shared model, the one the next deltas are taken from.

        For schemes that change the weights between synchronisations in a way every rank
        repeats exactly, e.g. DiLoCo's outer optimizer step applied to the averaged
        pseudo-gradient (:class:`tenfold.distributed.LocalSGD`): after :meth:`average`
        the reference is the average, after the outer step the model is elsewhere, and
        without this call the next delta would include the outer step, on every rank.

        Not collective (no communication), but every rank must call it with bit-identical
        tensors: the reference hash becomes the hash of their values (as after
        :meth:`initialize`), so a rank that passed other values (an outer optimizer
        resumed from another checkpoint) is named by :class:`ReferenceMismatchError` at
        the next :meth:`average`. The error-feedback residual is kept: it is what this
        rank's packets failed to carry, wherever the reference moved. The round counter
        is not advanced. In weights mode (no reference) it does nothing.

        Raises:
            tenfold.ConfigError: ``params`` are not the tensors of the current reference
                (names, shapes, dtypes), when there is one.
        """
        if self.transmit != "delta":
            return
        named = named_tensors(params)
        require_parameters(named)
        self.reference.rebase(named)

    # -- one synchronisation ----------------------------------------------------------------------

    def average(
        self,
        params: ParamsLike,
        *,
        grad_rms: Mapping[str, float] | None = None,
        advance_reference: bool = True,
    ) -> SyncStats:
        """Synchronise, in place: every rank ends with the same (new shared) weights.

        Delta mode: the tensors become ``w_shared + mean_k decoded(d_k + e_k)``; weights
        mode: the mean over ranks of the decoded weights.

        Args:
            params: the tensors, as ``model.parameters()`` or ``model.named_parameters()``
                (names must then match across ranks: they are in the packet).
            grad_rms: per-tensor RMS of the loss gradient, keyed by name (required by
                ``GradientRMS``; recorded in the stats for every policy).
            advance_reference: delta mode, once there is a shared model: False leaves it
                (and its hash) at ``w_shared`` while the tensors still get the new values,
                for a caller that moves the model on and calls :meth:`set_reference`
                before the next sync (DiLoCo's outer step: ``LocalSGD`` uses the
                reference's memory for the pseudo-gradient meanwhile).

        Returns:
            This rank's :class:`SyncStats`.

        Raises:
            ProcessGroupError: no process group (see ``allow_single_process``).
            NonFiniteWeightsError: on every rank, if any rank's tensors hold NaN/Inf.
            ReferenceMismatchError: on every rank, if ranks hold different shared models.
            tenfold.codec.PacketMismatchError: a peer's packet has other tensors (names,
                shapes or dtypes); the message names the rank and the tensor.
            tenfold.codec.CorruptPacketError: a peer's packet (or shard packet) is corrupt
                or announced absurdly large; on every rank, naming the sender.
            ContributionRatioError: on every rank, with ``max_contribution_ratio`` set,
                when a rank's contribution is that much larger than the median's.
            tenfold.distributed.CommunicationError: a peer died or the group's timeout expired.
        """
        named = named_tensors(params)
        require_parameters(named)
        round_ = self.round
        self.round += 1
        if not self._distributed():
            return noop_stats(named, rank=local_rank_or_zero(), round=round_)
        transport = TorchTransport(self.process_group)
        if self._protocol_for(dict(named), transport.world_size) == "all-gather":
            return self._all_gather(transport, named, grad_rms, advance_reference)
        host = host_arrays(named)
        if self.transmit == "weights":
            result = self._sync(transport, named, Outgoing(host, self.policy, grad_rms=grad_rms))
            assert result.mean is not None
            copy_back(named, result.mean)
        elif self.reference.arrays is None:  # no shared model yet: average the weights exactly
            result = self._sync(transport, named, Outgoing(host, Lossless(), grad_rms=grad_rms))
            assert result.mean is not None
            copy_back(named, result.mean)
            self.reference.set(result.mean)
        else:
            reference = self.reference.align(named)
            x, scale = self.sender.inputs(
                host, reference, error_feedback=self.error_feedback,
                want_scale=uses_scale(self.policy),
            )  # fmt: skip
            send = Outgoing(
                x, self.policy, grad_rms=grad_rms, scale=scale, tag=self.reference.tag,
                keep_own=self.error_feedback, residual2=self.sender.residual2,
                recode_feedback=self.error_feedback,
            )  # fmt: skip
            result = self._sync(transport, named, send)
            assert result.mean is not None
            # the sync went through: keep the residuals (a failed one changes nothing)
            if result.own is not None:
                self.sender.keep_residual(x, result.own)
                self._pool.give(result.own)
            if result.recoded is not None:
                self.sender.keep_residual2(*result.recoded)
            if advance_reference:
                copy_back(named, self.reference.advance(result.mean, round_, result.packets))
            else:  # w_shared + mean into the tensors only: the same additions
                for name, m in result.mean.items():
                    np.add(reference[name], m, out=m)
                copy_back(named, result.mean)
        assert result.mean is not None
        self._pool.give(result.mean)
        return result.stats

    def _all_gather(
        self,
        transport: TorchTransport,
        named: Sequence[tuple[str, torch.Tensor]],
        grad_rms: Mapping[str, float] | None,
        advance_reference: bool = True,
    ) -> SyncStats:
        """The pipelined all-gather: each finished chunk is applied at once (reference,
        residual, parameters), so only chunk-sized temporaries exist."""
        round_ = self.round - 1
        host = host_arrays(named)  # views of CPU float32 parameters: no copy
        tensors = dict(named)
        plan = AllGatherPlan(self, transport, named, round_)
        if self.transmit == "weights" or self.reference.arrays is None:
            first = self.transmit == "delta"  # the first delta sync: the weights, exactly
            fresh = zeros_like_wire(named) if first else None

            def apply_weights(
                chunk: Chunk, mean: dict[str, np.ndarray], k: int, *_: Any, **__: Any
            ) -> None:
                divide_in_place(mean, k)
                copy_parts(tensors, chunk, mean)
                if fresh is not None:
                    for key, view in chunk_views(fresh, chunk).items():
                        view[...] = mean[key]

            policy = Lossless() if first else self.policy
            result = plan.run(Outgoing(host, policy, grad_rms=grad_rms), apply_weights)
            if fresh is not None:
                self.reference.arrays = fresh
                self.reference.tag = reference_tag(fresh)
                self.sender = SenderState()
            return result.stats
        reference = self.reference.align(named)
        sender = self.sender
        feedback = self.error_feedback
        residual = sender.residual if sender.residual is not None else zeros_like_wire(named)

        # CPU float32/float64 parameters are written in place by the fused pass; the others
        # (CUDA, half precision) get the result through a copy
        direct = {name for name, t in named if shares_memory(t, host[name])}

        def apply_delta(
            chunk: Chunk,
            total: dict[str, np.ndarray],
            k: int,
            x: Mapping[str, np.ndarray],
            own: dict[str, np.ndarray] | None,
            /,
            *,
            own_pending: bool = False,
        ) -> None:
            ref, out = chunk_views(reference, chunk), chunk_views(host, chunk)
            e = chunk_views(residual, chunk) if own is not None else None
            copies = []
            for p in chunk:
                key = p.key
                dst = out[key] if p.tensor in direct else total[key]
                apply_mean(
                    total[key], k, ref[key], dst, advance=advance_reference,
                    residual=None if e is None or own is None else (x[key], own[key], e[key]),
                    plus=own[key] if own_pending and own is not None else None,
                )  # fmt: skip
                if p.tensor in direct:
                    increment_version(tensors[p.tensor])  # as the in-place copy_ did
                else:
                    copies.append(p)
            if copies:
                copy_parts(tensors, copies, total)

        # the coding thread fills in each tensor's scale as it forms the chunk's values
        scale: dict[str, float] | None = {} if uses_scale(self.policy) else None
        send = Outgoing(
            host, self.policy, grad_rms=grad_rms, scale=scale, tag=self.reference.tag,
            keep_own=feedback,
            values=sender.chunk_inputs(host, reference, error_feedback=feedback, scale=scale),
        )  # fmt: skip
        result = plan.run(send, apply_delta, sink_adds_own=True)
        if feedback:
            sender.residual = residual
        if advance_reference:
            self.reference.chain(round_, result.packets)
        return result.stats

    def _seeded(self, send: Outgoing, rank: int, world: int, round_: int) -> Outgoing:
        """``send`` with this rank's sampling seeds for this round."""
        return dataclasses.replace(
            send,
            seed=self._seed(send.policy, rank, round_),
            recode_seed=self._seed(send.policy, world + rank, round_),
        )

    def _sync(
        self, transport: TorchTransport, named: Sequence[tuple[str, torch.Tensor]], send: Outgoing
    ) -> SyncResult:
        """One collective: ``send`` with this rank's seeds for this round."""
        rank, world = transport.rank, transport.world_size
        round_ = self.round - 1
        send = dataclasses.replace(
            send,
            seed=self._seed(send.policy, rank, round_),
            recode_seed=self._seed(send.policy, world + rank, round_),
        )
        if self._protocol_for(dict(named), world) == "all-gather":
            return all_gather(
                transport, send, named, round=round_, pool=self._pool, threads=self.threads,
                ratio=self.max_contribution_ratio,
            )  # fmt: skip
        return reduce_scatter(
            transport, send, named, round=round_, pool=self._pool, shard_pool=self._shard_pool,
            threads=self.threads, ratio=self.max_contribution_ratio,
        )  # fmt: skip
