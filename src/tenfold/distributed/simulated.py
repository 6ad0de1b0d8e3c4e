"""K workers in one process, averaged bit for bit as K ranks would be (the sweeps' engine)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tenfold.codec import Lossless, PacketInfo, decompress, inspect
from tenfold.codec.errors import PacketMismatchError
from tenfold.distributed.collectives import (
    DEFAULT_COLLECTIVE,
    check_contributions,
    layout_difference,
    shard_named,
    shard_plan,
    shard_views,
    sum_of_squares,
)
from tenfold.distributed.errors import NonFiniteWeightsError
from tenfold.distributed.exchange import STATUS_NONFINITE
from tenfold.distributed.packets import accumulate_from, decode_own, encode_timed
from tenfold.distributed.params import (
    ParamsLike,
    Policy,
    array_dict,
    copy_back,
    host_arrays,
    layout_of,
    named_tensors,
    nonfinite_names,
    require_parameters,
    round_policy,
    tensor_dict,
    uses_scale,
    zeros_like_wire,
)
from tenfold.distributed.rank_order import decode_mean, divide_in_place
from tenfold.distributed.reduce_scatter import (
    decode_own_shards,
    encode_shards,
    pieces_of,
    recode_shard,
)
from tenfold.distributed.reference import DeltaRank, aligned_reference, chain_tag, reference_tag
from tenfold.distributed.shared_model import SharedModel
from tenfold.distributed.stats import SyncStats, noop_stats, packet_stats, ring_sent

__all__ = [
    "SimulatedAverager",
]


class SimulatedAverager(SharedModel):
    """K workers in one process, averaged exactly as K ranks of :class:`CompressedAverager`.

    Same per-rank policy seeds (:func:`round_policy`), same packets, same decode-and-sum in
    worker order, same division, same reference and residuals in delta mode: the weights
    are bit for bit those of a real run with K ranks. Packets are decoded once (every rank
    would decode the same K packets), and the result copied into every worker's tensors.
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
    ) -> None:
        super().__init__(
            policy, transmit, error_feedback, collective, max_contribution_ratio, threads
        )
        self._ranks: list[DeltaRank] = []

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`CompressedAverager.state_dict`, with one residual (and one
        second-stage residual) per worker."""
        residuals = {str(r): tensor_dict(s.residual) for r, s in enumerate(self._ranks)}
        second = {str(r): tensor_dict(s.residual2) for r, s in enumerate(self._ranks)}
        return {**self._shared_state(), "residual": residuals, "residual2": second}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._load_shared(state)
        residuals = state.get("residual") or {}
        second = state.get("residual2") or {}
        self._ranks = [
            DeltaRank(array_dict(residuals[str(r)]), array_dict(second.get(str(r))))
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
        self._reference = {n: a.copy() for n, a in host_arrays(named[0]).items()}
        self._tag = reference_tag(self._reference)
        self._ranks = [DeltaRank() for _ in named]
        return received

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
            raise ValueError(f"grad_rms: {len(grad_rms)} mappings for {k} workers")
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
        delta = self.transmit == "delta" and self._reference is not None
        if delta:
            assert self._reference is not None
            for worker in named:  # every worker: one with other tensors is named clearly
                self._reference = aligned_reference(worker, self._reference)
            if len(self._ranks) != k:
                raise ValueError(f"the averager holds {len(self._ranks)} workers' state, got {k}")
        if protocol == "reduce-scatter":
            acc, packets, stats = self._reduce_scatter(named, hosts, delta, rms_, round_)
        else:
            acc, packets, stats = self._all_gather(named, hosts, delta, rms_, round_)
        t0 = time.perf_counter()
        if delta:
            assert self._reference is not None
            for name, ref in self._reference.items():
                np.add(ref, acc[name], out=ref)
            result = self._reference
        else:
            result = acc
        copy_back(named[0], result)
        # What one rank does ends here; the rest only exists in the simulation.
        t_apply = time.perf_counter() - t0
        for n in named[1:]:
            copy_back(n, result)
        if delta:
            self._tag = chain_tag(self._tag, round_, packets)
        elif self.transmit == "delta":
            self._reference = {n: a.copy() for n, a in acc.items()}
            self._tag = reference_tag(self._reference)
            self._ranks = [DeltaRank() for _ in range(k)]
        self._pool.give(acc)
        return [dataclasses.replace(st, decode_seconds=st.decode_seconds + t_apply) for st in stats]

    def _all_gather(
        self,
        named: Sequence[Sequence[tuple[str, torch.Tensor]]],
        hosts: Sequence[Mapping[str, np.ndarray]],
        delta: bool,
        rms_: Sequence[Mapping[str, float] | None],
        round_: int,
    ) -> tuple[dict[str, np.ndarray], list[Any], list[SyncStats]]:
        """The all-gather collective for K workers: the mean, the packets, the stats."""
        k = len(named)
        packets: list[bytes] = []
        t_encode: list[float] = []
        inputs: list[dict[str, np.ndarray]] = []
        for r in range(k):
            policy = round_policy(self.policy, rank=r, round=round_)
            scale = None
            arrays: Mapping[str, np.ndarray] = hosts[r]
            if delta:
                assert self._reference is not None
                arrays, scale = self._ranks[r].inputs(
                    hosts[r], self._reference, error_feedback=self.error_feedback,
                    want_scale=uses_scale(policy),
                )  # fmt: skip
                inputs.append(arrays)
            elif self.transmit == "delta":  # no shared model yet: the weights, exactly
                policy = Lossless()
            blob, seconds = encode_timed(arrays, policy, rms_[r], scale, self.threads)
            packets.append(blob)
            t_encode.append(seconds)
        t0 = time.perf_counter()
        decoded = None
        if delta and self.error_feedback:  # each packet decoded once: residual and sum
            decoded = [decode_own(p, self.threads) for p in packets]
        n_all = sum(t.numel() for _, t in named[0])
        if self.max_contribution_ratio is not None:
            # decompress and accumulate-into-zeros differ at most in the sign of a zero:
            # the same sums of squares as the ranks'
            values = (
                [d[0] for d in decoded]
                if decoded
                else [decompress(p, threads=self.threads) for p in packets]
            )
            sumsq = [sum_of_squares(v) for v in values]
            check_contributions(sumsq, n_all, self.max_contribution_ratio, round_)
        if decoded is not None:
            for r, (arrays, _) in enumerate(decoded):
                self._ranks[r].keep_residual(inputs[r], arrays)
        acc, infos = decode_mean(packets, named[0], self._pool, decoded, self.threads)
        t_decode = time.perf_counter() - t0
        sizes = [len(p) for p in packets]
        stats = [
            packet_stats(
                infos=[infos[r]],
                world_size=k,
                rank=r,
                round=round_,
                packet_bytes=sizes,
                grad_rms=rms_[r],
                encode_seconds=t_encode[r],
                comm_seconds=0.0,
                decode_seconds=t_decode,
                bytes_sent=ring_sent(sizes, r),
                bytes_received=sum(sizes) - sizes[r],
                collective="all-gather",
                values_encoded=n_all,
                values_decoded=k * n_all,
            )
            for r in range(k)
        ]
        return acc, list(packets), stats

    def _reduce_scatter(
        self,
        named: Sequence[Sequence[tuple[str, torch.Tensor]]],
        hosts: Sequence[Mapping[str, np.ndarray]],
        delta: bool,
        rms_: Sequence[Mapping[str, float] | None],
        round_: int,
    ) -> tuple[dict[str, np.ndarray], list[Any], list[SyncStats]]:
        """The reduce-scatter collective for K workers, with K ranks' arithmetic exactly:
        the mean, the reduced packets (rank order), the stats."""
        k = len(named)
        model = named[0]
        plan = shard_plan([(n, t.numel()) for n, t in model], k)
        layouts = [shard_named(model, pieces) for pieces in plan]
        # the first delta-mode sync (no shared model yet) averages the weights exactly
        base = Lossless() if self.transmit == "delta" and not delta else self.policy
        feedback = delta and self.error_feedback
        guard = self.max_contribution_ratio is not None
        n_all = sum(t.numel() for _, t in model)
        blobs: list[list[bytes]] = []
        t_encode: list[float] = []
        inputs: list[Mapping[str, np.ndarray]] = []
        own_full: list[dict[str, np.ndarray] | None] = []
        own_infos: list[list[PacketInfo] | None] = []
        for r in range(k):
            policy = round_policy(base, rank=r, round=round_)
            scale = None
            arrays: Mapping[str, np.ndarray] = hosts[r]
            if delta:
                assert self._reference is not None
                arrays, scale = self._ranks[r].inputs(
                    hosts[r], self._reference, error_feedback=self.error_feedback,
                    want_scale=uses_scale(policy),
                )  # fmt: skip
            shard_blobs, seconds = encode_shards(arrays, plan, policy, rms_[r], scale, self.threads)
            blobs.append(shard_blobs)
            t_encode.append(seconds)
            inputs.append(arrays)
            full, infos = (
                decode_own_shards(r, shard_blobs, plan, model, self.threads)
                if feedback
                else (None, None)
            )
            own_full.append(full)
            own_infos.append(infos)
        t0 = time.perf_counter()
        accs: list[dict[str, np.ndarray]] = []
        parts: list[list[float]] = []  # [reducer j][rank i]: sums of squares
        for j in range(k):
            acc = zeros_like_wire(layouts[j])
            sumsq = [0.0] * k
            for i in range(k):
                if guard:
                    spare = zeros_like_wire(layouts[j])
                    accumulate_from(i, blobs[i][j], spare, self.threads)
                    sumsq[i] = sum_of_squares(spare)
                    for key, a in acc.items():
                        np.add(a, spare[key], out=a)
                else:
                    accumulate_from(i, blobs[i][j], acc, self.threads)
            accs.append(acc)
            parts.append(sumsq)
        if guard:
            totals = [sum(v[i] for v in parts) for i in range(k)]
            check_contributions(totals, n_all, self.max_contribution_ratio, round_)
        result = self._pool.take(model)
        reduced: list[bytes] = []
        t_recode = [0.0] * k
        for j in range(k):
            divide_in_place(accs[j], k)
            recode = round_policy(base, rank=k + j, round=round_)
            residual2 = self._ranks[j].residual2 if feedback else None
            if residual2 is not None and list(residual2) != [p.key for p in plan[j]]:
                raise ValueError(
                    "the second-stage residual in this averager's state is for another "
                    "shard plan (another model or world size)"
                )
            t1 = time.perf_counter()
            blob2, y = recode_shard(
                accs[j], plan[j], recode, rms_[j], residual2, feedback, self.threads
            )
            t_recode[j] = time.perf_counter() - t1
            views = shard_views(result, plan[j])
            accumulate_from(j, blob2, views, self.threads)
            if feedback:
                self._ranks[j].residual2 = {key: np.subtract(v, views[key]) for key, v in y.items()}
            reduced.append(blob2)
        if feedback:
            for r in range(k):
                full = own_full[r]
                assert full is not None
                self._ranks[r].keep_residual(inputs[r], full)
        t_decode = time.perf_counter() - t0 - sum(t_recode)
        sizes2 = [len(b) for b in reduced]
        piece_tensors = pieces_of(model, plan)
        stats = []
        for r in range(k):
            infos = own_infos[r] or [inspect(b) for b in blobs[r]]
            n_mine = sum(p.size for p in plan[r])
            stats.append(
                packet_stats(
                    infos=infos,
                    world_size=k,
                    rank=r,
                    round=round_,
                    packet_bytes=[sum(len(b) for b in row) for row in blobs],
                    grad_rms=rms_[r],
                    pieces=piece_tensors,
                    encode_seconds=t_encode[r] + t_recode[r],
                    comm_seconds=0.0,
                    decode_seconds=max(0.0, t_decode),
                    bytes_sent=sum(len(b) for j, b in enumerate(blobs[r]) if j != r)
                    + ring_sent(sizes2, r),
                    bytes_received=sum(len(blobs[i][r]) for i in range(k) if i != r)
                    + sum(sizes2)
                    - sizes2[r],
                    collective="reduce-scatter",
                    values_encoded=n_all + n_mine,
                    values_decoded=k * n_mine + (n_all - n_mine if feedback else 0) + n_all,
                )
            )
        return result, list(reduced), stats
