"""K workers in one process, averaged bit for bit as K ranks would be (the sweeps' engine)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tenfold.codec import Lossless, PacketInfo, Policy
from tenfold.codec.errors import PacketMismatchError
from tenfold.distributed.averager_base import AveragerBase
from tenfold.distributed.collective import DEFAULT_COLLECTIVE
from tenfold.distributed.errors import STATUS_NONFINITE, NonFiniteWeightsError
from tenfold.distributed.params import (
    ParamsLike,
    array_dict,
    copy_back,
    host_arrays,
    named_tensors,
    nonfinite_names,
    require_parameters,
    tensor_dict,
    uses_scale,
    zeros_like_wire,
)
from tenfold.distributed.protocol import LocalArrivals, Outgoing
from tenfold.distributed.protocol.all_gather import encode_chunk
from tenfold.distributed.protocol.chunks import (
    DEFAULT_CHUNK_VALUES,
    chunk_named,
    chunk_plan,
    chunk_views,
    split_parts,
)
from tenfold.distributed.protocol.guard import check_contributions, totals_over_shards
from tenfold.distributed.protocol.packets import packet_info
from tenfold.distributed.protocol.rank_order import divide_in_place
from tenfold.distributed.protocol.reduce_scatter import (
    apply_reduced,
    check_residual2,
    decode_own_shards,
    encode_shards,
    recode_shard,
    reduce_scatter_stats,
)
from tenfold.distributed.protocol.shards import (
    layout_difference,
    layout_of,
    shard_named,
    shard_plan,
    shard_views,
)
from tenfold.distributed.protocol.steps import sum_in_rank_order
from tenfold.distributed.sender import SenderState, reference_tag
from tenfold.distributed.stats import SyncStats, noop_stats, packet_stats
from tenfold.distributed.transport import gathered_bytes
from tenfold.errors import ConfigError

__all__ = [
    "SimulatedAverager",
]

_Named = Sequence[tuple[str, torch.Tensor]]


class SimulatedAverager(AveragerBase):
    """K workers in one process, averaged exactly as K ranks of :class:`CompressedAverager`.

    A thin driver of the same protocol functions (:mod:`tenfold.distributed.protocol`):
    same per-rank seeds, same packets, same decode-and-sum in worker order, same
    division, same reference and residuals in delta mode, so the weights are bit for bit
    those of a real run with K ranks. The receiving side runs once (every rank would
    decode the same K packets), and the result is copied into every worker's tensors.
    The accumulator stays allocated between rounds (:class:`BufferPool`), as in
    :class:`CompressedAverager`.

    Args:
        policy: a tenfold policy, as for :class:`CompressedAverager`.
        transmit: ``"delta"`` or ``"weights"``, as for :class:`CompressedAverager`.
        error_feedback: as for :class:`CompressedAverager`.
        collective: as for :class:`CompressedAverager`: the weights are bit for bit those
            of K ranks using the same collective (the two collectives differ: the
            reduce-scatter re-codes the reduced shards).
        max_contribution_ratio: as for :class:`CompressedAverager`.
        threads: as for :class:`CompressedAverager`.
        chunk_values: as for :class:`CompressedAverager` (the same chunks, the same bits).

    Attributes:
        round: index of the next synchronisation (see :class:`CompressedAverager`).

    Example::

        sim = SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0))
        sim.initialize([m.named_parameters() for m in models])
        stats = sim.average([m.named_parameters() for m in models])  # one SyncStats each
    """

    def __init__(
        self,
        policy: Policy,
        *,
        transmit: str = "delta",
        error_feedback: bool = True,
        collective: str = DEFAULT_COLLECTIVE,
        max_contribution_ratio: float | None = None,
        threads: int | None = None,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
    ) -> None:
        super().__init__(
            policy, transmit, error_feedback, collective, max_contribution_ratio, threads,
            chunk_values,
        )  # fmt: skip
        #: one sender state (residuals) per worker
        self.senders: list[SenderState] = []

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`CompressedAverager.state_dict`, with one residual (and one
        second-stage residual) per worker."""
        residuals = {str(r): tensor_dict(s.residual) for r, s in enumerate(self.senders)}
        second = {str(r): tensor_dict(s.residual2) for r, s in enumerate(self.senders)}
        return {**self._shared_state(), "residual": residuals, "residual2": second}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._load_shared(state)
        residuals = state.get("residual") or {}
        second = state.get("residual2") or {}
        self.senders = [
            SenderState(array_dict(residuals[str(r)]), array_dict(second.get(str(r))))
            for r in range(len(residuals))
        ]

    def initialize(self, workers: Sequence[ParamsLike]) -> int:
        """As :meth:`CompressedAverager.initialize`: if the workers differ, worker 0's
        weights are copied into all. Returns the bytes each other worker would receive."""
        named = [named_tensors(p) for p in workers]
        for tensors in named:
            require_parameters(tensors)
        tags = [reference_tag(host_arrays(n)) for n in named]
        received = 0
        if len(set(tags)) > 1:
            with torch.no_grad():
                for other in named[1:]:
                    for (_, dst), (_, src) in zip(other, named[0], strict=True):
                        dst.copy_(src)
            received = sum(t.numel() * t.element_size() for _, t in named[0])
        self.reference.set(host_arrays(named[0]))
        self.senders = [SenderState() for _ in named]
        return received

    def set_reference(self, workers: Sequence[ParamsLike]) -> None:
        """As :meth:`CompressedAverager.set_reference` on every rank (the same copy, the
        same hash), once for the group: worker 0's tensors (every worker holds the same
        after an outer step) become the shared model; nothing in weights mode."""
        if self.transmit != "delta":
            return
        named = named_tensors(workers[0])
        require_parameters(named)
        self.reference.rebase(named)

    def average(
        self,
        workers: Sequence[ParamsLike],
        *,
        grad_rms: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[SyncStats]:
        """Synchronise the K workers' tensors in place (K = ``len(workers)``).

        Args:
            workers: one ``ParamsLike`` per worker, in rank order.
            grad_rms: one mapping (or None) per worker, as for
                :meth:`CompressedAverager.average`.

        Returns:
            One :class:`SyncStats` per worker, as that rank would have reported it
            (``comm_seconds`` is 0; ``decode_seconds`` is the one shared decode-and-sum,
            division and copy into one worker: what each rank would do, without overlap).

        Raises:
            NonFiniteWeightsError: if any worker's tensors hold NaN/Inf (names the first).
            tenfold.codec.PacketMismatchError: workers hold different tensors.
        """
        named = [named_tensors(p) for p in workers]
        for tensors in named:
            require_parameters(tensors)
        k = len(named)
        if grad_rms is not None and len(grad_rms) != k:
            raise ConfigError(f"grad_rms: {len(grad_rms)} mappings for {k} workers")
        rms_ = list(grad_rms) if grad_rms is not None else [None] * k
        round_ = self.round
        self.round += 1
        if k <= 1:
            return [noop_stats(n, rank=r, round=round_) for r, n in enumerate(named)]

        bad = {r: nonfinite_names(n) for r, n in enumerate(named)}
        bad = {r: names for r, names in bad.items() if names}
        if bad:
            first = min(bad)
            raise NonFiniteWeightsError(
                {r: STATUS_NONFINITE for r in bad}, [f"worker {first}: {n}" for n in bad[first]]
            )
        protocol = self._protocol_for(dict(named[0]), k)
        if protocol == "reduce-scatter":
            # flat shards cannot tell a reshaped tensor: check the layouts (as the ranks do)
            layout0 = layout_of(named[0])
            for r, worker in enumerate(named[1:], start=1):
                problem = layout_difference(layout0, layout_of(worker), f"worker {r}")
                if problem is not None:
                    raise PacketMismatchError(f"workers hold different tensors: {problem}")
        hosts = [host_arrays(n) for n in named]
        delta = self.transmit == "delta" and self.reference.arrays is not None
        if delta:
            for worker in named:  # every worker: one with other tensors is named clearly
                self.reference.align(worker)
            if len(self.senders) != k:
                raise ConfigError(f"the averager holds {len(self.senders)} workers' state, got {k}")
        sends = [self._outgoing(r, k, hosts[r], delta, rms_[r], round_) for r in range(k)]
        if protocol == "reduce-scatter":
            acc, packets, stats = self._reduce_scatter(named[0], sends, round_)
        else:
            acc, packets, stats = self._all_gather(named[0], sends, round_)
        t0 = time.perf_counter()
        result = self.reference.advance(acc, round_, packets) if delta else acc
        copy_back(named[0], result)
        # What one rank does ends here; the rest only exists in the simulation.
        t_apply = time.perf_counter() - t0
        for n in named[1:]:
            copy_back(n, result)
        if not delta and self.transmit == "delta":
            self.reference.set(acc)
            self.senders = [SenderState() for _ in range(k)]
        self._pool.give(acc)
        return [dataclasses.replace(st, decode_seconds=st.decode_seconds + t_apply) for st in stats]

    def _outgoing(
        self,
        rank: int,
        k: int,
        host: Mapping[str, np.ndarray],
        delta: bool,
        grad_rms: Mapping[str, float] | None,
        round_: int,
    ) -> Outgoing:
        """What worker ``rank`` sends, as its sender on a real rank computes it."""
        if not delta:
            # weights mode, or the first delta-mode sync (no shared model yet): the
            # weights, exactly in delta mode
            policy = Lossless() if self.transmit == "delta" else self.policy
            return Outgoing(
                host, policy, seed=self._seed(policy, rank, round_),
                recode_seed=self._seed(policy, k + rank, round_), grad_rms=grad_rms,
            )  # fmt: skip
        assert self.reference.arrays is not None
        sender = self.senders[rank]
        x, scale = sender.inputs(
            host, self.reference.arrays, error_feedback=self.error_feedback,
            want_scale=uses_scale(self.policy),
        )  # fmt: skip
        feedback = self.error_feedback
        return Outgoing(
            x, self.policy, seed=self._seed(self.policy, rank, round_),
            recode_seed=self._seed(self.policy, k + rank, round_), grad_rms=grad_rms,
            scale=scale, keep_own=feedback,
            residual2=sender.residual2 if feedback else None, recode_feedback=feedback,
        )  # fmt: skip

    def _all_gather(
        self, model: _Named, sends: Sequence[Outgoing], round_: int
    ) -> tuple[dict[str, np.ndarray], list[Any], list[SyncStats]]:
        """The all-gather for K workers, chunk by chunk as the ranks code it: the mean, the
        packets (chunk by chunk, in rank order), the stats."""
        k = len(sends)
        plan = chunk_plan([(n, t.numel()) for n, t in model], self.chunk_values)
        acc = self._pool.take(model)
        own_full = [zeros_like_wire(model) if send.keep_own else None for send in sends]
        packets: list[Any] = []
        infos: list[list[PacketInfo]] = [[] for _ in range(k)]
        sumsq = [0.0] * k
        t_encode = [0.0] * k
        t_decode = 0.0
        sizes = [0] * k
        wire = 0  # bytes each rank sends and receives (the padded all-gathers)
        for i, chunk in enumerate(plan):
            coded = [encode_chunk(send, chunk, i, self.threads) for send in sends]
            t0 = time.perf_counter()
            decoded = {r: c.own for r, c in enumerate(coded) if c.own is not None}
            summed = sum_in_rank_order(
                chunk_named(model, chunk), k, LocalArrivals(),
                local={r: c.blob for r, c in enumerate(coded)}, decoded=decoded,
                guard=self.max_contribution_ratio is not None, threads=self.threads,
            )  # fmt: skip
            divide_in_place(summed.acc, k)
            for key, view in chunk_views(acc, chunk).items():
                view[...] = summed.acc[key]
            for r, own in enumerate(own_full):
                own_chunk = coded[r].own
                if own is not None and own_chunk is not None:
                    for key, view in chunk_views(own, chunk).items():
                        view[...] = own_chunk[0][key]
            for r in range(k):
                sumsq[r] += summed.sumsq[r]
                infos[r].append(summed.infos[r])
                t_encode[r] += coded[r].seconds
                sizes[r] += len(coded[r].blob)
            wire += gathered_bytes([len(c.blob) for c in coded])
            packets.extend(summed.packets)
            t_decode += time.perf_counter() - t0
        n_all = sum(t.numel() for _, t in model)
        check_contributions(sumsq, n_all, self.max_contribution_ratio, round_)
        for r, own in enumerate(own_full):
            if own is not None:
                self.senders[r].keep_residual(sends[r].arrays, own)
        pieces = (
            {p.key: (p.tensor, tuple(dict(model)[p.tensor].shape)) for c in plan for p in c}
            if split_parts(plan)
            else None
        )
        stats = [
            packet_stats(
                infos=infos[r],
                world_size=k,
                rank=r,
                round=round_,
                packet_bytes=sizes,
                grad_rms=sends[r].grad_rms,
                pieces=pieces,
                encode_seconds=t_encode[r],
                comm_seconds=0.0,
                decode_seconds=t_decode,
                bytes_sent=wire,
                bytes_received=wire,
                collective="all-gather",
                values_encoded=n_all,
                values_decoded=k * n_all,
                chunks=len(plan),
            )
            for r in range(k)
        ]
        return acc, packets, stats

    def _reduce_scatter(
        self, model: _Named, sends: Sequence[Outgoing], round_: int
    ) -> tuple[dict[str, np.ndarray], list[Any], list[SyncStats]]:
        """The reduce-scatter for K workers, every reducer's phases in turn: the mean, the
        reduced packets (rank order), the stats."""
        k = len(sends)
        plan = shard_plan([(n, t.numel()) for n, t in model], k)
        layouts = [shard_named(model, pieces) for pieces in plan]
        for j, send in enumerate(sends):  # before anything changes
            check_residual2(send.residual2 if send.recode_feedback else None, plan[j])
        blobs: list[list[bytes]] = []
        t_encode: list[float] = []
        own_full: list[dict[str, np.ndarray] | None] = []
        own_infos: list[list[PacketInfo] | None] = []
        for r, send in enumerate(sends):
            shard_blobs, seconds = encode_shards(send, plan, self.threads, rank=r)
            blobs.append(shard_blobs)
            t_encode.append(seconds)
            full, infos = (
                decode_own_shards(r, shard_blobs, plan, model, self.threads)
                if send.keep_own
                else (None, None)
            )
            own_full.append(full)
            own_infos.append(infos)
        t0 = time.perf_counter()
        accs, parts = [], []  # per reducer j: the shard sum, each rank's sum of squares
        for j in range(k):
            full, infos = own_full[j], own_infos[j]
            decoded = (
                {j: (shard_views(full, plan[j]), infos[j])}
                if full is not None and infos is not None
                else {}
            )
            summed = sum_in_rank_order(
                layouts[j], k, LocalArrivals(), local={i: blobs[i][j] for i in range(k)},
                decoded=decoded, guard=self.max_contribution_ratio is not None,
                threads=self.threads,
            )  # fmt: skip
            accs.append(summed.acc)
            parts.append(summed.sumsq)
        n_all = sum(t.numel() for _, t in model)
        if self.max_contribution_ratio is not None:
            totals = totals_over_shards(parts)
            check_contributions(totals, n_all, self.max_contribution_ratio, round_)
        result = self._pool.take(model)
        reduced: list[bytes] = []
        t_recode = [0.0] * k
        for j, send in enumerate(sends):
            divide_in_place(accs[j], k)
            t1 = time.perf_counter()
            residual2 = send.residual2 if send.recode_feedback else None
            blob2, y = recode_shard(accs[j], plan[j], send, residual2, self.threads)
            t_recode[j] = time.perf_counter() - t1
            own2 = apply_reduced(result, plan, j, blob2, self.threads)
            if send.recode_feedback:
                self.senders[j].keep_residual2(y, own2)
            reduced.append(blob2)
        for r, full in enumerate(own_full):
            if full is not None:
                self.senders[r].keep_residual(sends[r].arrays, full)
        t_decode = time.perf_counter() - t0 - sum(t_recode)
        sizes2 = [len(b) for b in reduced]
        contributed = [sum(len(b) for b in row) for row in blobs]
        stats = [
            reduce_scatter_stats(
                model,
                plan,
                r,
                round_,
                sends[r],
                own_infos[r] or [packet_info(b) for b in blobs[r]],
                contributed,
                encode_seconds=t_encode[r] + t_recode[r],
                comm_seconds=0.0,
                decode_seconds=max(0.0, t_decode),
                sent=sum(len(b) for j, b in enumerate(blobs[r]) if j != r) + gathered_bytes(sizes2),
                received=sum(len(blobs[i][r]) for i in range(k) if i != r) + gathered_bytes(sizes2),
            )  # fmt: skip
            for r in range(k)
        ]
        return result, reduced, stats
