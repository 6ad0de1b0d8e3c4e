"""Synchronous model averaging with compressed weights: every rank ends bit-identical.

The protocol of one synchronisation ("round"), on each of K ranks:

1. compress the local tensors into ONE packet with this rank's policy for this round
   (:func:`round_policy`: the policy's sampling seed is derived from ``(seed, rank, round)``);
2. if that failed because a tensor holds NaN/Inf, send a status instead (every rank
   fails, see below);
3. exchange packet sizes (:func:`tenfold.distributed.exchange.exchange_sizes`), then the packets
   themselves around a ring of point-to-point transfers
   (:class:`tenfold.distributed.exchange.PacketTransfer`: exact sizes, no padding; the peers'
   packets arrive one after the other);
4. decode every rank's packet, its own included, and add it into float32 accumulators
   (:func:`tenfold.codec.accumulate`, which validates names/shapes/dtypes first) in rank
   order 0..K-1, divide by K, copy into the parameters in place.

Steps 3 and 4 overlap: a packet is decoded while the next ones are still on the wire
(:class:`RankOrderSum`). The SUM is still formed in rank order 0..K-1 on every rank: a
packet that arrives before its predecessors are in is decoded into zeroed spare arrays
and added when its turn comes, which is bit for bit the same as decoding it into the
accumulators then (``0 + v == v``, and an accumulator started at +0.0 is never -0.0).
Every rank therefore runs the same additions in the same order on the same K packets,
so the result is bit-identical on every rank whatever the policy (lossy or not). Nobody
keeps its own unquantized weights: that is what makes the ranks agree.

:class:`SimulatedAverager` runs the same arithmetic (same functions) for K workers held in
one process; it produces bit for bit the weights K real ranks would.

A rank whose weights are not finite sends a status instead of a packet size; every rank
then raises :class:`NonFiniteWeightsError` at the same collective, instead of the healthy
ones blocking until the timeout.

**What travels: ``transmit="delta"`` (the default) or ``"weights"`` (the paper).** Every
rank holds the last shared model ``w_shared`` (the *reference*), bit for bit. In delta mode
a rank sends only how far it moved, the pseudo-gradient ``d = w_local - w_shared``, plus
its error-feedback residual ``e`` (what its previous packets failed to carry):
``x = d + e`` is coded, ``e' = x - decoded(x)`` is kept, and every rank sets
``w_shared' = w_shared + (sum_k decoded(x_k)) / K``, the sum in rank order, and continues
from it. Deltas are small, centred and peaked, so the same error costs far fewer bits than
coding weights (docs/DESIGN.md). Step policies take their RMS from the fresh ``d``, not
from ``x``: a residual backlog must not coarsen the step (that starved a probe to 22%
accuracy). In weights mode each rank codes its weights and the mean replaces them.

The reference is established once: :meth:`CompressedAverager.initialize` (call it before
training, like DDP's constructor) makes the ranks agree on the starting weights at no cost
when they already do (a hash is compared) and broadcasts rank 0's otherwise; a first sync
without it averages the weights exactly (Lossless packets, 32 bits/param, once). From then
on every size exchange carries a hash of each rank's reference, chained through the
packets' CRCs (a scheme that moves the model between syncs in the same way on every rank,
DiLoCo's outer step, re-bases it with :meth:`CompressedAverager.set_reference`, which
hashes the new reference); a rank whose reference differs (resumed from another checkpoint, or one
that missed a sync) makes every rank raise :class:`ReferenceMismatchError` naming it at
that collective, before anything is averaged.

**Two collectives: ``collective="all-gather"`` or ``"reduce-scatter"``, and ``"auto"``
(the default), which picks reduce-scatter from 3 ranks and 8M values up
(:func:`tenfold.distributed.collectives.resolve_collective`, measurements below).**
The protocol above is the all-gather: every rank decodes all P packets (P n values) and
each link carries every packet. The reduce-scatter (:mod:`tenfold.distributed.collectives`)
cuts the flat model into P contiguous shards (named pieces ``"fc1.weight[lo:hi]"`` of the
flattened tensors, so the codec still sees each tensor's own scale); each rank codes each
shard into its own packet and sends shard j to rank j (exact sizes, one all-gather of
the P x P sizes first, so every rank can check them); rank j decodes the P packets of its
shard as they arrive, sums them in rank order, divides by P, and codes the mean again
(in delta mode with error feedback, with its own second-stage residual for shard j:
``e2' = y - decoded(y)``, ``y = mean + e2``; in :meth:`CompressedAverager.state_dict` as
``residual2``); the P reduced packets go round the all-gather ring and every rank decodes
the same P reduced packets, so the ranks stay bit-identical. Step policies take their
RMS from the fresh delta in stage 1 (per tensor, for all of its pieces) and from the
reduced values in stage 2; the stage-2 policy's seed is derived as for rank ``P + j``. The
reference hash chains the reduced packets' CRCs. Per rank: n + n/P values coded,
2n decoded (plus n(P-1)/P with error feedback: its own packets, for its residual),
2n(P-1)/P coded values sent, against n, P n and (P-1) n for the all-gather. A failure only
one reducer can see (a corrupt or mismatching shard packet) is reported in a small
all-gather of verdicts, so every rank raises the same error naming the sender.

Measured on the 2-core build machine (``benchmarks/collectives.py --threads 1``: 4.1M
float32 values in four tensors, delta mode, ``TargetRate(1.0)``, every rank on the same
two cores under a busy load; median of 5 syncs, rank 0, two runs): P = 3, all-gather
0.76 / 0.54 s, reduce-scatter 1.07 / 0.89 s; P = 4, 1.05 / 0.77 s vs 1.14 / 0.77 s (a first
run of 3 syncs: 0.65 vs 1.22 s and 0.90 vs 0.60 s). With all ranks on two cores the total
CPU work decides, and the
reduce-scatter codes more (coding costs more than decoding). At 25M values and P = 4
(``benchmarks/sync.py``, 1 Gbit/s) reduce-scatter was faster on both topologies, delta and
weights (switch, delta: 1.43 s against 1.60 s): it sends 1/2 of the bytes at P = 4 and
decodes less per rank. Hence **"auto"**: reduce-scatter from 3 ranks and 8M values up,
all-gather below (at P = 2 all-gather always measured faster).

**The contribution guard** (``max_contribution_ratio=``, off by default): each rank's
decoded contribution's RMS over the whole model, from sums of squares every rank computes
alike (reduce-scatter: per shard, on its reducer, combined through the verdicts'
all-gather); a rank above that multiple of the median rank's makes every rank raise
:class:`ContributionRatioError` naming it, at the same collective, before anything is
applied.

**One interface.** :class:`Averager` is the protocol every in-process-group averager
follows: :class:`CompressedAverager`, and :class:`AllReduceAverager`, the uncompressed
fp32 baseline (one ``all_reduce``). :class:`tenfold.distributed.LocalSGD` drives any of
them. :class:`SimulatedAverager` has the same methods lifted over K workers (a list of
``ParamsLike`` in, a list of :class:`SyncStats` out), so it is not an :class:`Averager`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from tenfold.codec import Lossless
from tenfold.distributed.allreduce import AllReduceAverager
from tenfold.distributed.collectives import (
    DEFAULT_COLLECTIVE,
    ContributionRatioError,
    check_contributions,
    sum_of_squares,
)
from tenfold.distributed.errors import NonFiniteWeightsError, ReferenceMismatchError
from tenfold.distributed.exchange import (
    PacketTransfer,
    PeerStatusError,
    exchange_sizes_and_tags,
    is_distributed,
    local_rank_or_zero,
)
from tenfold.distributed.packets import (
    accumulate_from,
    check_announced_sizes,
    decode_own,
    encode_timed,
)
from tenfold.distributed.params import (
    ParamsLike,
    Policy,
    array_dict,
    copy_back,
    fail_nonfinite,
    host_arrays,
    named_tensors,
    nonfinite_names,
    require_parameters,
    round_policy,
    tensor_dict,
    uses_scale,
    zeros_like_wire,
)
from tenfold.distributed.rank_order import BufferPool, RankOrderSum, divide_in_place
from tenfold.distributed.reduce_scatter import reduce_scatter_sync
from tenfold.distributed.reference import (
    TRANSMIT_MODES,
    DeltaRank,
    aligned_reference,
    chain_tag,
    reference_tag,
)
from tenfold.distributed.shared_model import SharedModel, align_ranks
from tenfold.distributed.simulated import SimulatedAverager
from tenfold.distributed.stats import (
    SyncStats,
    TensorStats,
    all_gather_sent,
    noop_stats,
    packet_stats,
)

__all__ = [
    "AllReduceAverager",
    "Averager",
    "BufferPool",
    "CompressedAverager",
    "ContributionRatioError",
    "NonFiniteWeightsError",
    "ParamsLike",
    "RankOrderSum",
    "ReferenceMismatchError",
    "SimulatedAverager",
    "SyncStats",
    "TRANSMIT_MODES",
    "TensorStats",
    "named_tensors",
    "reference_tag",
    "round_policy",
]


@runtime_checkable
class Averager(Protocol):
    """What :class:`tenfold.distributed.LocalSGD` (and any training loop) needs of an averager.

    Implemented by :class:`CompressedAverager` (tenfold packets) and
    :class:`AllReduceAverager` (the uncompressed fp32 baseline), so one can stand in for
    the other. Each method is called on every rank of the averager's group, with the same
    tensors (names, shapes, dtypes) every time. :class:`SimulatedAverager` has the same
    methods over K workers held in one process (``Sequence[ParamsLike]`` in,
    ``list[SyncStats]`` out) and is deliberately not an :class:`Averager`: it is the
    sweep-time twin of K ranks, not one rank.

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


class CompressedAverager(SharedModel):
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

    Attributes:
        round: index of the next synchronisation (part of the training state: restore it
            on resume so the derived sampling seeds continue the same sequence).

    Not distributed (torch.distributed unavailable or not initialised, or a group of one
    rank): :meth:`average` leaves the tensors untouched and returns stats with
    ``world_size=1`` and nothing sent.

    Memory: between synchronisations the averager keeps the float32 arrays it summed into
    (:class:`BufferPool`): one model-sized accumulator, plus one per packet that arrived
    before its turn in the rank-order sum (up to K-1 on the rank worst placed in the
    ring), so up to K times the model in float32; a fresh averager starts empty. Delta
    mode adds the reference and the residual, one model each.

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
    ) -> None:
        super().__init__(
            policy, transmit, error_feedback, collective, max_contribution_ratio, threads
        )
        self.process_group = process_group
        self._rank_state = DeltaRank()

    def _distributed(self) -> bool:
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
            "residual": tensor_dict(self._rank_state.residual),
            "residual2": tensor_dict(self._rank_state.residual2),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run continues bit for bit)."""
        self._load_shared(state)
        self._rank_state = DeltaRank(
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
        """
        named = named_tensors(params)
        require_parameters(named)
        received = align_ranks(named, self.process_group) if self._distributed() else 0
        self._reference = {n: a.copy() for n, a in host_arrays(named).items()}
        self._tag = reference_tag(self._reference)
        self._rank_state = DeltaRank()
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
            ValueError: ``params`` are not the tensors of the current reference (names,
                shapes, dtypes), when there is one.
        """
        if self.transmit != "delta":
            return
        named = named_tensors(params)
        require_parameters(named)
        if self._reference is not None:
            aligned_reference(named, self._reference)  # the same tensors, or a clear error
        self._reference = {n: a.copy() for n, a in host_arrays(named).items()}
        self._tag = reference_tag(self._reference)

    # -- one synchronisation ----------------------------------------------------------------------

    def average(
        self,
        params: ParamsLike,
        *,
        grad_rms: Mapping[str, float] | None = None,
    ) -> SyncStats:
        """Synchronise, in place: every rank ends with the same (new shared) weights.

        Delta mode: the tensors become ``w_shared + mean_k decoded(d_k + e_k)``; weights
        mode: the mean over ranks of the decoded weights.

        Args:
            params: the tensors, as ``model.parameters()`` or ``model.named_parameters()``
                (names must then match across ranks: they are in the packet).
            grad_rms: per-tensor RMS of the loss gradient, keyed by name (required by
                ``GradientRMS``; recorded in the stats for every policy).

        Returns:
            This rank's :class:`SyncStats`.

        Raises:
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
            rank = local_rank_or_zero()
            return noop_stats(named, rank=rank, round=round_)
        group = self.process_group
        rank = dist.get_rank(group)
        policy = round_policy(self.policy, rank=rank, round=round_)
        host = host_arrays(named)
        if self.transmit == "weights":
            stats, acc, _ = self._sync(named, host, self.policy, grad_rms, None, None, round_)
            copy_back(named, acc)
            self._pool.give(acc)
        elif self._reference is None:  # no shared model yet: average the weights exactly
            stats, acc, _ = self._sync(named, host, Lossless(), grad_rms, None, None, round_)
            copy_back(named, acc)
            self._reference = {n: a.copy() for n, a in acc.items()}
            self._pool.give(acc)
            self._tag = reference_tag(self._reference)
        else:
            self._reference = aligned_reference(named, self._reference)
            x, scale = self._rank_state.inputs(
                host, self._reference, error_feedback=self.error_feedback,
                want_scale=uses_scale(policy),
            )  # fmt: skip
            keep = (
                (lambda own: self._rank_state.keep_residual(x, own))
                if self.error_feedback
                else None
            )
            stats, acc, packets = self._sync(
                named, x, self.policy, grad_rms, scale, self._tag, round_, keep_own=keep,
                recode_feedback=self.error_feedback,
            )  # fmt: skip
            for name, ref in self._reference.items():
                np.add(ref, acc[name], out=ref)
            self._pool.give(acc)
            copy_back(named, self._reference)
            self._tag = chain_tag(self._tag, round_, packets)
        return stats

    def _sync(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        arrays: Mapping[str, np.ndarray],
        base_policy: Policy,
        grad_rms: Mapping[str, float] | None,
        scale: Mapping[str, float] | None,
        tag: int | None,
        round_: int,
        keep_own: Callable[[dict[str, np.ndarray]], None] | None = None,
        recode_feedback: bool = False,
    ) -> tuple[SyncStats, dict[str, np.ndarray], list[Any]]:
        """One collective over ``arrays`` with ``base_policy`` (seeded per rank and round).

        Returns this rank's stats, the mean (pool arrays: give them back) and the packets
        every rank decoded, in rank order (the reference hash chains their CRCs).
        """
        world = dist.get_world_size(self.process_group)
        if self._protocol_for(arrays, world) == "all-gather":
            rank = dist.get_rank(self.process_group)
            policy = round_policy(base_policy, rank=rank, round=round_)
            return self._exchange(named, arrays, policy, grad_rms, scale, tag, round_, keep_own)
        return reduce_scatter_sync(
            named, arrays, base_policy, grad_rms, scale, tag, round_, keep_own, recode_feedback,
            group=self.process_group, state=self._rank_state, pool=self._pool,
            shard_pool=self._shard_pool, threads=self.threads,
            ratio=self.max_contribution_ratio,
        )  # fmt: skip

    def _exchange(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        arrays: Mapping[str, np.ndarray],
        policy: Policy,
        grad_rms: Mapping[str, float] | None,
        scale: Mapping[str, float] | None,
        tag: int | None,
        round_: int,
        keep_own: Callable[[dict[str, np.ndarray]], None] | None = None,
    ) -> tuple[SyncStats, dict[str, np.ndarray], list[Any]]:
        """Code ``arrays``, all-gather the packets, decode-sum in rank order, divide by K.

        ``keep_own`` receives this rank's packet decoded (for error feedback), before the
        exchange; the sum then adds those arrays rather than decoding the packet twice.
        Returns this rank's stats, the mean (pool arrays: give them back) and every packet.
        """
        group = self.process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        try:
            # The codec refuses NaN/Inf itself (ValueError), so finiteness is only
            # checked, tensor by tensor, when encoding failed: no extra pass when healthy.
            blob, t_encode = encode_timed(arrays, policy, grad_rms, scale, self.threads)
        except ValueError:
            bad = nonfinite_names(named)
            if not bad:
                raise
            fail_nonfinite(bad, group)
        t_start = time.perf_counter()
        try:
            sizes, tags = exchange_sizes_and_tags(len(blob), tag or 0, group=group)
        except PeerStatusError as exc:
            raise NonFiniteWeightsError(exc.statuses) from None
        t_sizes = time.perf_counter() - t_start
        if tag is not None and len(set(tags)) > 1:
            raise ReferenceMismatchError(tags, round_)
        check_announced_sizes(sizes, named)
        guard = self.max_contribution_ratio is not None
        sumsq = [0.0] * world
        summer = RankOrderSum(named, world, pool=self._pool, threads=self.threads)
        own: dict[str, np.ndarray] | None = None
        if keep_own is not None:
            own, info = decode_own(blob, self.threads)
            if guard:
                sumsq[rank] = sum_of_squares(own)
            summer.offer_decoded(rank, own, info)
        elif guard:
            spare = zeros_like_wire(named)
            info = accumulate_from(rank, blob, spare, self.threads)
            sumsq[rank] = sum_of_squares(spare)
            summer.offer_decoded(rank, spare, info)
        else:
            summer.offer(rank, blob)
        packets: list[Any] = [None] * world
        packets[rank] = blob
        with PacketTransfer(blob, sizes, group=group) as transfer:
            # Decode whatever can be decoded; wait for the network only when nothing can.
            # On an error (a peer's packet does not match) the exit still completes the
            # exchange, so every rank raises the same error and the group stays usable.
            while not summer.done:
                item = transfer.poll()
                if item is None and not summer.step():
                    item = transfer.get()
                if item is not None:
                    packets[item[0]] = item[1]
                    if guard:  # each contribution decoded alone, for its sum of squares
                        spare = zeros_like_wire(named)
                        info = accumulate_from(item[0], item[1], spare, self.threads)
                        sumsq[item[0]] = sum_of_squares(spare)
                        summer.offer_decoded(item[0], spare, info)
                    else:
                        summer.offer(*item)
        # Every rank decoded the same K packets: the same sums, the same verdict.
        n_all = sum(t.numel() for _, t in named)
        check_contributions(sumsq, n_all, self.max_contribution_ratio, round_)
        if keep_own is not None:  # the sync went through: keep the residual
            assert own is not None
            keep_own(own)
        divide_in_place(summer.acc, world)
        t_comm = t_sizes + transfer.wait_seconds
        t_total = time.perf_counter() - t_start
        stats = packet_stats(
            infos=[summer.infos[rank]],
            world_size=world,
            rank=rank,
            round=round_,
            packet_bytes=sizes,
            grad_rms=grad_rms,
            encode_seconds=t_encode,
            comm_seconds=t_comm,
            # everything else between the start of the exchange and the end: decoding
            # and adding (mostly overlapped with the transfers), dividing (the caller's
            # copy back is not included)
            decode_seconds=max(0.0, t_total - t_comm),
            bytes_sent=all_gather_sent(sizes, rank, group),
            bytes_received=int(sum(sizes)) - int(sizes[rank]),
            collective="all-gather",
            values_encoded=n_all,
            values_decoded=world * n_all,
        )
        return stats, summer.acc, packets
