"""A DDP communication hook that sends tenfold-coded gradients: every rank applies the same bits.

``DistributedDataParallel`` hands each gradient bucket (a flat tensor of many parameters'
gradients, ``bucket.buffer()``) to a communication hook instead of allreducing it. This
hook, on each of K ranks and for each bucket:

1. adds this rank's error-feedback residual for the bucket, ``x = g + e``, and codes
   ``x`` into one packet with :func:`tenfold.compress`, using this rank's policy for this
   step and bucket (:func:`~tenfold.distributed.params.round_policy`: per-rank,
   per-round sampling seeds); keeps ``e' = x - decoded(x)`` (what the packet failed to
   carry, sent with the next step's gradient);
2. exchanges packet sizes (one collective; a rank whose gradient holds NaN/Inf sends a
   status instead, so every rank raises :class:`NonFiniteGradientsError` there instead of
   the healthy ones waiting for the timeout), then the exact packets as uint8 tensors
   (:class:`~tenfold.distributed.exchange.PacketTransfer`, no pickle, no padding);
3. decodes every rank's packet and sums them in RANK ORDER 0..K-1 into a float32
   accumulator (:class:`~tenfold.distributed.rank_order.RankOrderSum`, overlapped with the
   transfers), divides by K, writes the mean into the bucket and returns a completed
   ``torch.futures.Future`` holding it.

With ``CompressionState(..., collective="reduce-scatter")`` steps 1-3 are the averager's
reduce-scatter instead (:mod:`tenfold.distributed.collectives`): the flat bucket is cut
into K shards, rank j reduces shard j (rank-order sum, divide by K) and codes it again
with its own second-stage residual, and every rank decodes the same K reduced packets.

Every rank runs the same additions in the same order on the same K packets, so the
averaged gradient, hence the optimizer step, is bit-identical on every rank for any policy
(lossy or not), and so are the parameters after each step.

Policies: the step policies ``tenfold.TargetRate(bits_per_param=b)`` (rate control) and
``tenfold.RelativeStep(alpha=a)`` (a step of ``a`` times the fresh gradient's RMS: the
RMS is taken from ``g``, not from ``g + e``, so a residual backlog never coarsens the step,
as in :class:`~tenfold.distributed.averaging.CompressedAverager`), ``tenfold.Lossless()``
(exact fp32 gradients: the mean equals a plain allreduce up to float rounding), or any
other tenfold policy.

What is coded: the whole bucket as ONE flat tensor (not one tensor per parameter).
Measured on small MLPs (17k, 51k and 400k values, real gradients): at
``TargetRate(1.0)`` the flat bucket cost 1.00 bits/param with a relative L2 error of
0.50 / 0.60 / 0.52, one tensor per parameter 1.12 / 1.07 / 1.01 bits/param with 0.52 /
0.58 / 0.62; at ``RelativeStep(1.0)`` flat 1.88 / 2.02 / 1.86 vs per-parameter 2.21 /
2.15 / 2.09 bits/param at the same error. One step for the whole bucket is what minimises
the total squared error at a given rate (equal slope everywhere), and one record header
and code table per bucket instead of per parameter saves ~0.1 bits/param on small models.

Coding order: a bucket's parameters are coded in the order the hook first saw them (their
*canonical index*: DDP's initial bucket layout, which is deterministic for a model and a
bucket size), whatever order DDP's buffer holds them in. DDP rebuilds its buckets after
the first iteration, in the order the gradients became ready (for a feed-forward model,
the reverse of the initial order); with this, a rebuild that only reorders a bucket (the
whole model in one bucket: every model under DDP's 1 MB first bucket) codes exactly the
same vector, and a run resumed in a fresh DDP (which starts from the initial layout
again) codes what the uninterrupted run codes.

Error feedback and bucket layout: the residual is kept per bucket (keyed by
``bucket.index()``) with the canonical indices and sizes of its parameters. When a
bucket's parameters change (a rebuild that moves parameters between buckets), every
stored residual is split by parameter and each new bucket reassembles its own, so nothing
is lost (a parameter new to the state starts at zero).

Statistics: :attr:`CompressionState.stats` (a :class:`HookStats`), cumulative and for the
last completed backward pass.

Resume: :meth:`CompressionState.state_dict` holds the residuals (CPU tensors, per bucket
index, with their parameters' canonical indices and sizes) and the step counter; a run
restored from it (with the model and the optimizer, in a fresh DDP with the same bucket
size) continues bit for bit when each bucket holds the same parameters before and after
DDP's rebuild (in particular a model that fits one bucket). Where the rebuild moves
parameters between buckets, the resumed run's first step groups them as DDP's initial
layout does, unlike the uninterrupted run: the residuals still follow their parameters,
but that step's packets (hence the bits) differ.

CUDA/NCCL: a CUDA bucket is copied to the CPU, coded there, the packets travel as CUDA
uint8 tensors (:func:`~tenfold.distributed.exchange.comm_device`), decoding and the sum
run on the CPU, and the mean is copied back into the CUDA bucket. The hook runs
synchronously (the returned Future is already complete), so it does not overlap with the
rest of the backward pass on the GPU; the coding is the cost.

Example (each rank, after ``torch.distributed.init_process_group``)::

    import tenfold
    from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = CompressionState(tenfold.TargetRate(bits_per_param=1.0))
    ddp.register_comm_hook(state, compressed_allreduce_hook)
    for x, y in data:
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()      # gradients: coded, exchanged, averaged
        opt.step()                          # the same step on every rank
    state.stats.last_step.bits_per_param, state.stats.total.bytes_sent
    torch.save({"model": ..., "hook": state.state_dict()}, path)
"""

# No ``from __future__ import annotations`` here: DDP's ``register_comm_hook`` compares the
# hook's annotations with ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]``
# themselves, and string annotations fail that check.
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tenfold.codec import PacketInfo, compress, decompress, inspect
from tenfold.codec.policy import rms
from tenfold.distributed.collectives import (
    DEFAULT_COLLECTIVE,
    check_collective,
    resolve_collective,
)
from tenfold.distributed.errors import NonFiniteWeightsError, ReferenceMismatchError
from tenfold.distributed.exchange import (
    STATUS_NONFINITE,
    PacketTransfer,
    PeerStatusError,
    exchange_sizes_and_tags,
)
from tenfold.distributed.packets import check_announced_sizes
from tenfold.distributed.params import round_policy, uses_scale
from tenfold.distributed.rank_order import BufferPool, RankOrderSum, divide_in_place
from tenfold.distributed.reduce_scatter import reduce_scatter_sync
from tenfold.distributed.reference import DeltaRank

__all__ = [
    "BucketMismatchError",
    "CompressionState",
    "HookStats",
    "NonFiniteGradientsError",
    "StepCost",
    "compressed_allreduce_hook",
]

#: Any tenfold policy.
Policy = Any

#: The name of the one tensor in each bucket's packet (short: it is in every packet).
_NAME = "g"

#: ``round_policy``'s round for step s and bucket b is ``s * _ROUND_STRIDE + b``, so every
#: (step, bucket) pair draws its own sampling seed.
_ROUND_STRIDE = 1 << 32


class NonFiniteGradientsError(NonFiniteWeightsError):
    """A gradient held NaN/Inf (training diverged), on this rank or a peer.

    Raised on every rank, at the same collective of the same bucket (it surfaces from
    ``loss.backward()``). ``statuses`` maps the failing ranks to their status; ``bucket``
    is the DDP bucket index.
    """

    def __init__(self, statuses: dict[int, int], bucket: int, local: bool) -> None:
        super().__init__(statuses)
        self.bucket = bucket
        ranks = ", ".join(str(r) for r in sorted(statuses))
        here = " (this rank included)" if local else ""
        self.args = (
            f"gradient synchronisation aborted: rank(s) {ranks}{here} have non-finite "
            f"gradients (NaN or Inf) in DDP bucket {bucket}; training diverged: lower the "
            "learning rate or check the data",
        )


class BucketMismatchError(RuntimeError):
    """Ranks disagree on a bucket's layout or on the step counter (raised on every rank).

    Happens when a rank's hook state was restored from another checkpoint, or the ranks
    bucket the model differently.
    """


@dataclass(frozen=True)
class StepCost:
    """What a number of hook calls cost this rank.

    Attributes:
        calls: hook calls counted (one per bucket per backward pass).
        bytes_sent: bytes of this rank's packets (what it contributes; the transport's
            per-rank 16-byte size exchange and the ring's forwarding of others' packets
            are not counted).
        bytes_received: bytes of the other ranks' packets.
        num_values: gradient values coded (parameters, once per call).
        bits_per_param: ``8 * bytes_sent / num_values`` (0 when nothing was coded).
        encode_seconds: wall time adding the residual, coding, decoding the own packet
            for the new residual (s).
        comm_seconds: wall time blocked on the network: the size exchange and waiting for
            packets the decoding did not overlap (s).
        decode_seconds: the rest: decoding and summing the K packets, dividing, writing
            the bucket (s).
    """

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    num_values: int = 0
    encode_seconds: float = 0.0
    comm_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def bits_per_param(self) -> float:
        """Bytes sent as bits per gradient value (0 when nothing was coded)."""
        return 8.0 * self.bytes_sent / self.num_values if self.num_values else 0.0

    def __add__(self, other: "StepCost") -> "StepCost":
        return StepCost(
            calls=self.calls + other.calls,
            bytes_sent=self.bytes_sent + other.bytes_sent,
            bytes_received=self.bytes_received + other.bytes_received,
            num_values=self.num_values + other.num_values,
            encode_seconds=self.encode_seconds + other.encode_seconds,
            comm_seconds=self.comm_seconds + other.comm_seconds,
            decode_seconds=self.decode_seconds + other.decode_seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, ``bits_per_param`` included."""
        return {
            "calls": self.calls,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "num_values": self.num_values,
            "bits_per_param": self.bits_per_param,
            "encode_seconds": self.encode_seconds,
            "comm_seconds": self.comm_seconds,
            "decode_seconds": self.decode_seconds,
        }


@dataclass(frozen=True)
class HookStats:
    """The hook's costs on this rank.

    Attributes:
        steps: completed backward passes (the hook saw their last bucket).
        total: every hook call since the state was created (not restored by
            :meth:`CompressionState.load_state_dict`: costs are per process).
        last_step: the hook calls of the last completed backward pass (all its buckets).
        current: the calls of the backward pass in progress (empty between passes).
    """

    steps: int
    total: StepCost
    last_step: StepCost
    current: StepCost

    @property
    def calls(self) -> int:
        """Hook calls, cumulative (``total.calls``)."""
        return self.total.calls

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the step count and the three :class:`StepCost` totals."""
        return {
            "steps": self.steps,
            "calls": self.calls,
            "total": self.total.as_dict(),
            "last_step": self.last_step.as_dict(),
            "current": self.current.as_dict(),
        }


@dataclass
class _Residual:
    """One bucket's residual: flat, in the coding order, with the parameters it covers."""

    params: tuple[int, ...]  # canonical index of each parameter, in coding order
    sizes: tuple[int, ...]  # numel of each parameter, in the same order
    values: np.ndarray  # 1-D, sum(sizes) values, in the wire dtype


@dataclass(frozen=True)
class _Layout:
    """How one bucket's parameters are laid out in its buffer and in its packet.

    ``params``/``sizes``/``starts`` are in coding order (ascending canonical index);
    ``starts`` are the parameters' offsets in the bucket buffer. ``identity``: the buffer is
    already in coding order (no gather/scatter copies).
    """

    params: tuple[int, ...]
    sizes: tuple[int, ...]
    starts: tuple[int, ...]
    identity: bool

    def gather(self, g: np.ndarray) -> np.ndarray:
        """The bucket's values in coding order (``g`` itself when already in order)."""
        if self.identity:
            return g
        return np.concatenate([g[s : s + n] for s, n in zip(self.starts, self.sizes, strict=True)])

    def scatter(self, x: np.ndarray, out: np.ndarray) -> None:
        """Write ``x`` (coding order) into ``out`` (bucket order)."""
        if self.identity:
            out[...] = x
            return
        pos = 0
        for s, n in zip(self.starts, self.sizes, strict=True):
            out[s : s + n] = x[pos : pos + n]
            pos += n

    def copy_into(self, x: np.ndarray, buffer: torch.Tensor) -> None:
        """Write ``x`` (coding order) into the bucket's ``buffer`` tensor (bucket order)."""
        if not self.identity:
            scattered = np.empty_like(x)
            self.scatter(x, scattered)
            x = scattered
        with torch.no_grad():
            buffer.copy_(torch.from_numpy(x))


def _layout_tag(layout: _Layout, dtype: np.dtype, step: int) -> int:
    """CRC-32 of a bucket's layout and the step counter: ranks must agree on both."""
    crc = zlib.crc32(f"{dtype.str}{layout.params}{layout.sizes}".encode())
    return zlib.crc32(struct.pack("<Q", step), crc)


class CompressionState:
    """State of :func:`compressed_allreduce_hook`: policy, residuals, step counter, stats.

    Args:
        policy: a tenfold policy, the same on every rank (``tenfold.TargetRate(1.0)``,
            ``tenfold.RelativeStep(2.0)``, ``tenfold.Lossless()``, ...).
        process_group: the group to average over (None: the default group; DDP's own
            ``process_group`` must be the same).
        error_feedback: keep what each packet failed to carry and add it to the next
            step's gradient of the same bucket (lossy policies; Lossless has none).
        collective: ``"auto"`` (per bucket), ``"reduce-scatter"`` or ``"all-gather"``, as for
            :class:`~tenfold.distributed.averaging.CompressedAverager` (the bucket is one
            flat tensor, cut into P shards; each reducer keeps a second-stage residual for
            its shard of each bucket, dropped when DDP moves parameters between buckets).

    Attributes:
        step: index of the backward pass in progress (advanced after each pass's last
            bucket); with the rank, it derives the policy's sampling seed. Part of
            :meth:`state_dict`.
        stats: :class:`HookStats` (read-only snapshot).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        process_group: dist.ProcessGroup | None = None,
        error_feedback: bool = True,
        collective: str = DEFAULT_COLLECTIVE,
    ) -> None:
        self.collective = check_collective(collective)
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got {error_feedback!r}")
        if not hasattr(policy, "get_config"):
            raise TypeError(f"policy must be a tenfold policy, got {policy!r}")
        self.policy = policy
        self.process_group = process_group
        self.error_feedback = error_feedback
        self.step = 0
        self._residuals: dict[int, _Residual] = {}
        # reduce-scatter: bucket index -> ((params, sizes, world), this rank's second-stage
        # residual of its shard, piece key -> values)
        self._residuals2: dict[int, tuple[tuple[Any, ...], dict[str, np.ndarray]]] = {}
        # Per-parameter residuals of dissolved buckets (canonical index -> values), waiting
        # for the bucket that holds the parameter in the new layout.
        self._loose: dict[int, np.ndarray] = {}
        # id(parameter) -> canonical index: the order the hook first saw the parameters in
        # (module docstring, "Coding order").
        self._canonical: dict[int, int] = {}
        self._steps_done = 0
        self._total = StepCost()
        self._last = StepCost()
        self._current = StepCost()

    # -- stats ---------------------------------------------------------------------------

    @property
    def stats(self) -> HookStats:
        """What the hook has cost so far: totals, the last full step, the step in progress."""
        return HookStats(
            steps=self._steps_done, total=self._total, last_step=self._last, current=self._current
        )

    def _record(self, cost: StepCost, last: bool) -> None:
        self._total = self._total + cost
        self._current = self._current + cost
        if last:
            self._last, self._current = self._current, StepCost()
            self._steps_done += 1

    # -- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The step counter and the residuals, as plain types and CPU tensors.

        ``{"step": int, "error_feedback": bool, "residual": {str(bucket index): 1-D float
        tensor}, "params": {str(bucket index): [canonical parameter index, ...]},
        "sizes": {str(bucket index): [numel, ...]}, "loose": {str(canonical index): 1-D
        tensor}, "collective": str, "residual2": {str(bucket index): {piece key: 1-D
        tensor}}, "residual2_layout": {str(bucket index): [params, sizes, world]}}``
        (``loose``: residuals dissolved by a bucket rebuild whose new bucket has not run
        yet; empty between backward passes; ``residual2``: reduce-scatter's second-stage
        residuals of this rank's shards). Loadable with
        ``torch.load(..., weights_only=True)``.
        """
        return {
            "step": self.step,
            "error_feedback": self.error_feedback,
            "residual": {
                str(i): torch.from_numpy(r.values.copy()) for i, r in self._residuals.items()
            },
            "params": {str(i): list(r.params) for i, r in self._residuals.items()},
            "sizes": {str(i): list(r.sizes) for i, r in self._residuals.items()},
            "loose": {str(k): torch.from_numpy(v.copy()) for k, v in self._loose.items()},
            "collective": self.collective,
            "residual2": {
                str(i): {k: torch.from_numpy(v.copy()) for k, v in r.items()}
                for i, (_, r) in self._residuals2.items()
            },
            "residual2_layout": {
                str(i): [list(key[0]), list(key[1]), key[2]]
                for i, (key, _) in self._residuals2.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the stats are not part of it).

        Raises:
            ValueError: a residual's length does not match its layout.
        """
        restored: dict[int, _Residual] = {}
        for key, tensor in (state.get("residual") or {}).items():
            values = _flat_array(tensor)
            params = tuple(int(p) for p in state["params"][key])
            sizes = tuple(int(n) for n in state["sizes"][key])
            if len(params) != len(sizes) or sum(sizes) != values.size:
                raise ValueError(
                    f"hook state: bucket {key} residual has {values.size} values, its "
                    f"layout {sum(sizes)} in {len(sizes)} parameters ({len(params)} indices)"
                )
            restored[int(key)] = _Residual(params, sizes, values)
        second: dict[int, tuple[tuple[Any, ...], dict[str, np.ndarray]]] = {}
        layouts = state.get("residual2_layout") or {}
        for key, values in (state.get("residual2") or {}).items():
            params, sizes, world = layouts[key]
            second[int(key)] = (
                (tuple(int(p) for p in params), tuple(int(n) for n in sizes), int(world)),
                {k: _flat_array(v) for k, v in values.items()},
            )
        self.step = int(state["step"])
        self._residuals = restored
        self._residuals2 = second
        self._loose = {int(k): _flat_array(v) for k, v in (state.get("loose") or {}).items()}

    # -- coding order and error feedback ---------------------------------------------------

    def _layout(self, params: Sequence[torch.Tensor], total: int) -> _Layout:
        """The bucket's coding order: its parameters by canonical index."""
        for p in params:  # first sight: the next index (DDP runs buckets in index order)
            self._canonical.setdefault(id(p), len(self._canonical))
        sizes = [int(p.numel()) for p in params]
        if sum(sizes) != total:  # pragma: no cover - DDP's own invariant
            raise ValueError(f"bucket holds {total} values, its parameters {sum(sizes)}")
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        canon = [self._canonical[id(p)] for p in params]
        order = sorted(range(len(params)), key=canon.__getitem__)
        return _Layout(
            params=tuple(canon[i] for i in order),
            sizes=tuple(sizes[i] for i in order),
            starts=tuple(int(starts[i]) for i in order),
            identity=order == list(range(len(params))),
        )

    def _residual_for(self, index: int, layout: _Layout, dtype: np.dtype) -> np.ndarray | None:
        """The residual for this bucket's layout, or None if there is none (zeros).

        A stored residual of another layout (DDP rebuilt its buckets) dissolves every
        stored bucket into per-parameter pieces; each bucket then reassembles its own
        from them, so each parameter's residual lives in exactly one place throughout.
        """
        entry = self._residuals.get(index)
        if entry is not None:
            same = (entry.params, entry.sizes) == (layout.params, layout.sizes)
            if same and entry.values.dtype == dtype:
                return entry.values
            self._dissolve()
        if not self._loose:
            return None
        pieces = [self._loose.pop(p, None) for p in layout.params]
        if all(p is None for p in pieces):
            return None
        return np.concatenate(
            [
                np.zeros(n, dtype) if p is None else p.astype(dtype, copy=False)
                for p, n in zip(pieces, layout.sizes, strict=True)
            ]
        )

    def _dissolve(self) -> None:
        for entry in self._residuals.values():
            offsets = np.cumsum((0, *entry.sizes)).tolist()
            for k, lo, hi in zip(entry.params, offsets[:-1], offsets[1:], strict=True):
                self._loose[k] = entry.values[lo:hi]
        self._residuals.clear()

    # -- one bucket --------------------------------------------------------------------------

    def _run(self, bucket: dist.GradBucket) -> torch.Tensor:
        group = self.process_group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        buffer = bucket.buffer()
        index = bucket.index()
        last = bucket.is_last()
        wire = torch.float64 if buffer.dtype == torch.float64 else torch.float32
        step = self.step

        t0 = time.perf_counter()
        layout = self._layout(bucket.parameters(), buffer.numel())
        # A CPU view when possible (gloo, float32): no copy; CUDA/half buffers are copied.
        host = buffer.detach().to("cpu", wire).contiguous().numpy().reshape(-1)
        g = layout.gather(host)
        dtype = g.dtype
        policy = round_policy(self.policy, rank=rank, round=step * _ROUND_STRIDE + index)
        feedback = self.error_feedback and not policy.lossless
        residual = self._residual_for(index, layout, dtype) if feedback else None
        # The step's unit is the fresh gradient's RMS, not that of g + e (module docstring).
        scale = {_NAME: rms(g) if g.size else 0.0} if uses_scale(policy) else None
        x = g if residual is None else np.add(g, residual)
        # "auto" per bucket (the same bucket sizes on every rank: the same answer)
        if resolve_collective(self.collective, x.size, world) == "reduce-scatter":
            return self._run_reduce_scatter(
                bucket, layout, x, scale, feedback, t0, wire, world, group
            )
        try:
            blob = compress({_NAME: x}, policy, scale=scale)
        except ValueError:
            # The codec refuses NaN/Inf (ValueError); finiteness is only checked then.
            if np.isfinite(x).all():
                raise
            self._fail_nonfinite(index, group)
        own: dict[str, np.ndarray] | None = None
        info: PacketInfo | None = None
        kept: _Residual | None = None
        if feedback:
            # Decoded once: for the residual here, and added as this rank's term in the sum.
            own, info = decompress(blob), inspect(blob)
            kept = _Residual(layout.params, layout.sizes, np.subtract(x, own[_NAME]))
        t_encode = time.perf_counter() - t0

        t1 = time.perf_counter()
        try:
            packet_sizes, tags = exchange_sizes_and_tags(
                len(blob), _layout_tag(layout, dtype, step), group=group
            )
        except PeerStatusError as exc:
            raise NonFiniteGradientsError(exc.statuses, index, local=False) from None
        t_sizes = time.perf_counter() - t1
        if len(set(tags)) > 1:
            raise BucketMismatchError(
                f"DDP bucket {index} at step {step}: the ranks disagree on its layout or on "
                f"the step counter (tags {', '.join(f'{t:08x}' for t in tags)}): every rank "
                "must resume from the same checkpoint and bucket the model the same way"
            )
        named = [(_NAME, torch.empty(g.shape, dtype=wire, device="meta"))]
        check_announced_sizes(packet_sizes, named)
        summer = RankOrderSum(named, world)
        if own is None:
            summer.offer(rank, blob)
        else:
            assert info is not None
            summer.offer_decoded(rank, own, info)
        with PacketTransfer(blob, packet_sizes, group=group) as transfer:
            # Decode what can be decoded; wait for the network only when nothing can.
            while not summer.done:
                item = transfer.poll()
                if item is None and not summer.step():
                    item = transfer.get()
                if item is not None:
                    summer.offer(*item)
        divide_in_place(summer.acc, world)
        layout.copy_into(summer.acc[_NAME].reshape(-1), buffer)
        t_comm = t_sizes + transfer.wait_seconds
        t_rest = max(0.0, time.perf_counter() - t1 - t_comm)

        if kept is not None:  # only once the step went through (not on an error above)
            self._residuals[index] = kept
        sent = int(packet_sizes[rank])
        self._record(
            StepCost(
                calls=1,
                bytes_sent=sent,
                bytes_received=int(sum(packet_sizes)) - sent,
                num_values=int(g.size),
                encode_seconds=t_encode,
                comm_seconds=t_comm,
                decode_seconds=t_rest,
            ),
            last,
        )
        if last:
            self.step += 1
        return buffer

    def _run_reduce_scatter(
        self,
        bucket: dist.GradBucket,
        layout: _Layout,
        x: np.ndarray,
        scale: dict[str, float] | None,
        feedback: bool,
        t0: float,
        wire: torch.dtype,
        world: int,
        group: dist.ProcessGroup | None,
    ) -> torch.Tensor:
        """One bucket through the averager's reduce-scatter (its flat values: one tensor)."""
        buffer, index, last, step = bucket.buffer(), bucket.index(), bucket.is_last(), self.step
        named = [(_NAME, torch.empty(x.shape, dtype=wire, device="meta"))]
        key = (layout.params, layout.sizes, world)
        second = self._residuals2.get(index)
        holder = DeltaRank(None, second[1] if feedback and second and second[0] == key else None)
        kept: list[np.ndarray] = []

        def keep(own: dict[str, np.ndarray]) -> None:
            kept.append(np.subtract(x, own[_NAME].reshape(-1)))

        t_prep = time.perf_counter() - t0
        try:
            stats, acc, _ = reduce_scatter_sync(
                named, {_NAME: x}, self.policy, None, scale,
                _layout_tag(layout, x.dtype, step), step * _ROUND_STRIDE + index,
                keep if feedback else None, feedback,
                group=group, state=holder, pool=BufferPool(), shard_pool=BufferPool(),
                threads=None, ratio=None,
            )  # fmt: skip
        except NonFiniteWeightsError as exc:
            raise NonFiniteGradientsError(
                exc.statuses, index, local=bool(exc.local_tensors)
            ) from None
        except ReferenceMismatchError as exc:
            raise BucketMismatchError(
                f"DDP bucket {index} at step {step}: the ranks disagree on its layout or on "
                f"the step counter (rank(s) {', '.join(map(str, exc.ranks))} differ): every "
                "rank must resume from the same checkpoint and bucket the model the same way"
            ) from None
        layout.copy_into(acc[_NAME].reshape(-1), buffer)
        if kept:
            self._residuals[index] = _Residual(layout.params, layout.sizes, kept[0])
        if feedback and holder.residual2 is not None:
            self._residuals2[index] = (key, holder.residual2)
        self._record(
            StepCost(
                calls=1,
                bytes_sent=stats.bytes_sent,
                bytes_received=stats.bytes_received,
                num_values=int(x.size),
                encode_seconds=t_prep + stats.encode_seconds,
                comm_seconds=stats.comm_seconds,
                decode_seconds=stats.decode_seconds,
            ),
            last,
        )
        if last:
            self.step += 1
        return buffer

    def _fail_nonfinite(self, index: int, group: dist.ProcessGroup | None) -> Any:
        """Send a status instead of a packet size; every rank then raises."""
        try:
            exchange_sizes_and_tags(0, 0, group=group, status=STATUS_NONFINITE)
        except PeerStatusError as exc:
            raise NonFiniteGradientsError(exc.statuses, index, local=True) from None
        raise AssertionError("unreachable: own status was not reported")  # pragma: no cover


def _flat_array(value: Any) -> np.ndarray:
    """A 1-D numpy copy of a tensor or array (from a state dict)."""
    arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return np.ascontiguousarray(arr).reshape(-1).copy()


def compressed_allreduce_hook(
    state: CompressionState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the rank-order mean of every rank's coded bucket gradient.

    Register with ``ddp_model.register_comm_hook(state, compressed_allreduce_hook)``. Runs
    synchronously (see the module docstring for the protocol) and returns a completed
    Future holding ``bucket.buffer()``, which now holds the mean gradient (same shape and
    dtype as the bucket, bit-identical on every rank).

    Raises (from ``loss.backward()``):
        NonFiniteGradientsError: on every rank, if any rank's bucket holds NaN/Inf.
        BucketMismatchError: on every rank, if the ranks disagree on the bucket's layout
            or the step counter.
        tenfold.distributed.CommunicationError: a peer died or the group's timeout expired.
    """
    result = state._run(bucket)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(result)
    return fut
