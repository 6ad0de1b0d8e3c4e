"""Building blocks of the reduce-scatter collective of :class:`CompressedAverager`.

``collective="reduce-scatter"`` (see :mod:`tenfold.distributed.averaging`) runs, on each
of P ranks:

1. **shard**: the tensors, flattened in packet (name) order into one virtual vector of n
   values, are cut into P nearly equal contiguous ranges (:func:`shard_plan`); a cut
   moves to a tensor boundary when one is within 1/16 of a shard (fewer pieces, no
   accuracy cost). Shard j is a list of :class:`Piece` s, named sub-arrays
   ``"fc1.weight[0:1234]"`` of flattened tensors, so the codec still sees each tensor's
   own scale. The plan is a pure function of the layout and P: identical on every rank;
2. **scatter**: the rank codes each shard into its own packet; one ``all_gather`` of
   ``P + 2`` int64 per rank (:func:`exchange_size_matrix`: status, reference hash, the P
   packet sizes) tells every rank every size, so statuses, hash mismatches and absurd
   sizes fail on every rank at once; then packet j goes to rank j, exact sizes
   (:class:`ShardTransfer`, isend/irecv of uint8 tensors, all posted at once);
3. **reduce**: rank j decodes the P packets of shard j as they arrive and sums them in
   rank order 0..P-1 (:class:`tenfold.distributed.rank_order.RankOrderSum`), then every
   rank all-gathers ``P + 2`` float64 (:func:`exchange_verdicts`): whether its decode
   failed and whose packet it was, and the sums of squares of each rank's contribution
   (the :class:`ContributionRatioError` guard), so every rank raises the same error at the
   same point;
4. **re-code and all-gather**: rank j divides by P, codes the mean of shard j (delta mode
   with error feedback: plus its second-stage residual for shard j), and the P reduced
   packets go round the ring of :class:`tenfold.distributed.exchange.PacketTransfer`;
   every rank decodes the same P packets into the result, so every rank ends bit-identical.

Per rank, whatever P: about ``n + n/P`` values coded, ``2n`` decoded (plus ``n(P-1)/P``
with error feedback: the rank's own packets, decoded for its residual) and
``2n(P-1)/P`` coded values sent, against ``n`` coded, ``n`` decoded and ``n(P-1)`` sent
by the all-gather ring.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch
import torch.distributed as dist

from tenfold.distributed.exchange import (
    PACKET_TAG,
    CommunicationError,
    PeerStatusError,
    all_gather_row,
    comm_device,
    translate_comm_errors,
)

__all__ = [
    "AUTO_MIN_RANKS",
    "AUTO_MIN_VALUES",
    "COLLECTIVES",
    "PROTOCOLS",
    "DEFAULT_COLLECTIVE",
    "ContributionRatioError",
    "Piece",
    "ShardTransfer",
    "check_contributions",
    "layout_difference",
    "resolve_collective",
    "exchange_size_matrix",
    "exchange_verdicts",
    "shard_plan",
    "shard_views",
    "sum_of_squares",
]

#: The protocols of one synchronisation (see :mod:`tenfold.distributed.averaging`).
PROTOCOLS = ("all-gather", "reduce-scatter")
#: What ``collective=`` accepts: a protocol, or ``"auto"`` (:func:`resolve_collective`).
COLLECTIVES = ("auto", *PROTOCOLS)

#: ``"auto"`` picks reduce-scatter from this many ranks and this many values up. Measured
#: on the 2-core build machine (every rank on the same two cores): at 4.2M values and
#: P = 3-4 all-gather was as fast or faster (``benchmarks/collectives.py``: reduce-scatter
#: codes ~1.3n values per rank, all-gather n, and total CPU work decides); at 25M values
#: and P = 4 reduce-scatter was faster on both 1 Gbit/s topologies, delta and weights
#: (``benchmarks/sync.py``: 1.43 s against 1.60 s, switch, delta). 8M lies between the
#: two measured sizes; at P = 2 all-gather always measured faster (the shards save
#: nothing when there is one peer).
AUTO_MIN_RANKS = 3
AUTO_MIN_VALUES = 8_000_000

#: The default: ``"auto"``, i.e. whichever protocol measured faster here for the model's
#: size and the number of ranks (see :data:`AUTO_MIN_VALUES`).
DEFAULT_COLLECTIVE = "auto"


def resolve_collective(collective: str, num_values: int, world_size: int) -> str:
    """The protocol ``collective`` means for ``num_values`` values among ``world_size``
    ranks: itself, or for ``"auto"`` reduce-scatter when ``world_size >= AUTO_MIN_RANKS``
    and ``num_values >= AUTO_MIN_VALUES``, else all-gather. Every rank computes the same
    answer (same model, same group), so the ranks always agree on the protocol.

    Example:
        >>> resolve_collective("auto", 25_000_000, 4), resolve_collective("auto", 318_010, 5)
        ('reduce-scatter', 'all-gather')
    """
    check_collective(collective)
    if collective != "auto":
        return collective
    big = world_size >= AUTO_MIN_RANKS and num_values >= AUTO_MIN_VALUES
    return "reduce-scatter" if big else "all-gather"


#: Tag of the shard messages of step 2 (distinct from the ring's, so the two never mix).
SHARD_TAG = PACKET_TAG + 1

#: Codes of the first field of :func:`exchange_verdicts`.
VERDICT_OK, VERDICT_CORRUPT, VERDICT_MISMATCH = 0, 1, 2


def check_collective(collective: str) -> str:
    """``collective`` itself, or ValueError if it is not one of :data:`COLLECTIVES`."""
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    return collective


def check_ratio(ratio: float | None) -> float | None:
    """``max_contribution_ratio`` validated: None (off) or a finite number > 1."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"max_contribution_ratio must be a number or None, got {ratio!r}")
    if not (math.isfinite(ratio) and ratio > 1):
        raise ValueError(f"max_contribution_ratio must be finite and > 1, got {ratio!r}")
    return float(ratio)


# ---- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Values ``[lo, hi)`` of one tensor, flattened (C order): a part of one shard.

    Attributes:
        tensor: the tensor's name.
        lo: first flat index (inclusive).
        hi: last flat index (exclusive).
    """

    tensor: str
    lo: int
    hi: int

    @property
    def key(self) -> str:
        """The piece's name in a packet: ``"fc1.weight[0:1234]"``."""
        return f"{self.tensor}[{self.lo}:{self.hi}]"

    @property
    def size(self) -> int:
        """Number of values."""
        return self.hi - self.lo


def shard_plan(layout: Sequence[tuple[str, int]], world: int) -> tuple[tuple[Piece, ...], ...]:
    """Cut the tensors (name, number of values), in order, into ``world`` contiguous shards.

    The cuts are at ``j * n // world`` of the concatenated values, moved to the nearest
    tensor boundary when one is within ``n / (16 world)`` values (a tensor then stays
    whole where that is cheap; the shards stay within ~6% of equal). An empty tensor goes
    to the shard its offset falls in (the last one at the end), as a ``[0:0]`` piece, so
    every tensor appears in some packet. Shards may be empty when n < world.

    Returns:
        One tuple of :class:`Piece` per shard, in order; concatenated they cover every
        value of every tensor exactly once, in order.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    sizes = [int(s) for _, s in layout]
    starts = np.cumsum([0, *sizes]).tolist()
    n = int(starts[-1])
    boundaries = sorted(set(starts))
    slack = n // (16 * world)
    cuts = [0]
    for j in range(1, world):
        cut = j * n // world
        if slack:
            nearest = min(boundaries, key=lambda b: (abs(b - cut), b))
            if abs(nearest - cut) <= slack:
                cut = nearest
        cuts.append(max(cut, cuts[-1]))
    cuts.append(n)
    shards: list[list[Piece]] = [[] for _ in range(world)]
    for (name, size), start in zip(layout, starts[:-1], strict=True):
        if size == 0:
            j = next((j for j in range(world) if cuts[j] <= start < cuts[j + 1]), world - 1)
            shards[j].append(Piece(name, 0, 0))
            continue
        for j in range(world):
            lo, hi = max(start, cuts[j]), min(start + size, cuts[j + 1])
            if lo < hi:
                shards[j].append(Piece(name, lo - start, hi - start))
    return tuple(tuple(s) for s in shards)


def shard_views(arrays: Mapping[str, np.ndarray], pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """``{piece.key: flat view}`` of C-contiguous ``arrays`` (no copy; writes go through)."""
    return {p.key: arrays[p.tensor].reshape(-1)[p.lo : p.hi] for p in pieces}


def shard_named(
    named: Sequence[tuple[str, torch.Tensor]], pieces: Sequence[Piece]
) -> list[tuple[str, torch.Tensor]]:
    """The shard's layout as ``(key, meta tensor)`` pairs: 1-D, the tensor's dtype (no memory)."""
    dtypes = {n: t.dtype for n, t in named}
    return [(p.key, torch.empty((p.size,), dtype=dtypes[p.tensor], device="meta")) for p in pieces]


#: A tensor as the layout check sees it: name, shape, wire dtype (numpy ``dtype.str``).
TensorLayout = tuple[str, tuple[int, ...], str]


def layout_tag(layout: Sequence[TensorLayout]) -> int:
    """CRC-32 of the tensors' names, shapes and dtypes, in order."""
    crc = 0
    for name, shape, dtype in layout:
        crc = zlib.crc32(f"{name}{shape}{dtype};".encode(), crc)
    return crc


def layout_difference(
    first: Sequence[TensorLayout], other: Sequence[TensorLayout], who: str
) -> str | None:
    """What differs between rank 0's layout (``first``) and ``who``'s (None: nothing)."""
    for i, (a, b) in enumerate(zip(first, other, strict=False)):
        if a[0] != b[0]:
            return f"tensor {i}: {who} has {b[0]!r}, rank 0 has {a[0]!r}"
        if a != b:
            return (
                f"tensor {a[0]!r}: {who} has shape {b[1]} dtype {b[2]}, rank 0 has shape "
                f"{a[1]} dtype {a[2]}"
            )
    if len(first) != len(other):
        longer = first if len(first) > len(other) else other
        return (
            f"{who} has {len(other)} tensors, rank 0 {len(first)} (tensor "
            f"{longer[min(len(first), len(other))][0]!r})"
        )
    return None


def sum_of_squares(arrays: Mapping[str, np.ndarray]) -> float:
    """Sum of the squares of every value, in float64, array by array in order.

    Deterministic (same inputs, same bits), so ranks that compute it on the same decoded
    values agree on every decision taken from it.
    """
    total = 0.0
    for a in arrays.values():
        flat = a.reshape(-1).astype(np.float64, copy=False)
        total += float(np.dot(flat, flat))
    return total


# ---- the contribution guard ----------------------------------------------------------------


class ContributionRatioError(RuntimeError):
    """A rank's decoded contribution is far larger (RMS) than the median rank's.

    Raised on every rank at the same collective, before anything is applied, when
    ``max_contribution_ratio`` is set. Attributes: ``ranks`` (the offenders), ``ratios``
    (each one's RMS over the median RMS), ``rms`` (every rank's contribution RMS) and
    ``round``.
    """

    def __init__(self, rms: Sequence[float], limit: float, round: int) -> None:
        self.rms = tuple(float(r) for r in rms)
        median = float(np.median(self.rms))
        self.ranks = tuple(
            r for r, v in enumerate(self.rms) if v > limit * median and (v > 0 or median > 0)
        )
        self.ratios = tuple(self.rms[r] / median if median > 0 else math.inf for r in self.ranks)
        self.round = round
        parts = ", ".join(
            f"rank {r} ({ratio:.3g}x)" for r, ratio in zip(self.ranks, self.ratios, strict=True)
        )
        super().__init__(
            f"sync round {round}: the contribution of {parts} exceeds "
            f"max_contribution_ratio={limit:g} times the median rank's RMS ({median:.4g}); "
            "nothing was applied (a diverging or faulty rank: check its data and learning rate)"
        )


def check_contributions(
    sumsq: Sequence[float], num_values: int, limit: float | None, round: int
) -> None:
    """Raise :class:`ContributionRatioError` if some rank's RMS > ``limit`` x the median.

    ``sumsq``: each rank's sum of squares of its decoded contribution (every value of the
    model); every rank must pass the same numbers, so every rank decides the same. A
    median of 0 flags every rank that sent anything non-zero.
    """
    if limit is None or num_values == 0:
        return
    rms = [math.sqrt(max(s, 0.0) / num_values) for s in sumsq]
    median = float(np.median(rms))
    if any(v > limit * median and (v > 0 or median > 0) for v in rms):
        raise ContributionRatioError(rms, limit, round)


# ---- the small agreement collectives -------------------------------------------------------


def exchange_size_matrix(
    sizes: Sequence[int],
    tag: int,
    layout: int = 0,
    *,
    group: dist.ProcessGroup | None = None,
    status: int = 0,
) -> tuple[list[list[int]], tuple[int, ...], tuple[int, ...]]:
    """All-gather each rank's P packet sizes (one per destination) and two tags.

    One ``all_gather`` of ``P + 3`` int64 per rank (gloo has no all-to-all of sizes in
    every version; every rank learning every size also lets every rank check them).
    ``tag``: the hash of the rank's reference (delta mode); ``layout``: a hash of its
    tensors' names, shapes and dtypes (the shards are flat pieces: a reshaped tensor
    would otherwise go unnoticed).

    Returns:
        ``(matrix, tags, layouts)``: ``matrix[i][j]`` is the size (bytes) of rank i's
        packet for rank j; ``tags[i]`` and ``layouts[i]`` are rank i's.

    Raises:
        PeerStatusError: on every rank, when any rank sent a negative status.
        CommunicationError: a peer is gone or the group's timeout expired.
    """
    world = dist.get_world_size(group)
    if len(sizes) != world and status == 0:
        raise ValueError(f"sizes: {len(sizes)} entries for {world} ranks")
    row = [status, tag, layout, *([0] * world if status < 0 else sizes)]
    rows = all_gather_row(row, group=group, what="exchanging shard sizes")
    failed = {r: int(v[0]) for r, v in enumerate(rows) if v[0] < 0}
    if failed:
        raise PeerStatusError(failed)
    matrix = [[int(s) for s in v[3:]] for v in rows]
    return matrix, tuple(int(v[1]) for v in rows), tuple(int(v[2]) for v in rows)


def exchange_verdicts(
    verdict: int, culprit: int, sumsq: Sequence[float], *, group: dist.ProcessGroup | None
) -> list[list[float]]:
    """All-gather ``[verdict, culprit, sumsq_0..sumsq_{P-1}]`` (float64) from every rank.

    ``verdict``: :data:`VERDICT_OK`, or what went wrong decoding the packet of rank
    ``culprit``; ``sumsq[i]``: sum of squares of rank i's decoded packet of this rank's
    shard (zeros when the guard is off). Returns every rank's row, in rank order.
    """
    world = dist.get_world_size(group)
    row = [float(verdict), float(culprit), *(float(s) for s in sumsq)]
    if len(row) != world + 2:
        raise ValueError(f"sumsq: {len(sumsq)} entries for {world} ranks")
    rows = all_gather_row(
        row, dtype=torch.float64, group=group, what="exchanging the shards' verdicts"
    )
    return [[float(v) for v in r] for r in rows]


# ---- the scatter ---------------------------------------------------------------------------


class ShardTransfer:
    """Packet j of this rank to rank j; rank i's packet of this rank's shard from every i.

    Every receive and send is posted on entry (gloo moves the bytes on its own threads,
    so the caller decodes early packets while later ones are on the wire); exact sizes
    from :func:`exchange_size_matrix`, no padding. The exit completes every transfer, also
    when the caller raised (so the peers are never left waiting), unless the group broke.

    Args:
        packets: this rank's packet for each rank, in rank order (its own is not sent).
        matrix: the size matrix of :func:`exchange_size_matrix`.
        group: the process group.

    Attributes:
        wait_seconds: time the caller spent blocked in :meth:`get` and in the exit (s).
        sent_bytes: bytes this rank sends; received_bytes: bytes it receives.

    Backends: gloo (CPU) is what runs and is tested here. Under NCCL the buffers live on
    the device and every operation is posted from this thread, which NCCL may need
    batched (``batch_isend_irecv``): untested, there is no GPU on the build machines.
    """

    def __init__(
        self,
        packets: Sequence[bytes],
        matrix: Sequence[Sequence[int]],
        *,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.device = comm_device(group)
        self._packets = list(packets)
        self._sizes = [int(matrix[i][self.rank]) for i in range(self.world)]
        self.sent_bytes = sum(len(p) for j, p in enumerate(packets) if j != self.rank)
        self.received_bytes = sum(s for i, s in enumerate(self._sizes) if i != self.rank)
        self.wait_seconds = 0.0
        self._recv: dict[int, tuple[dist.Work | None, torch.Tensor]] = {}
        self._sends: list[dist.Work] = []
        self._send_bufs: list[torch.Tensor] = []
        self._broken = False

    def __enter__(self) -> ShardTransfer:
        t0 = time.perf_counter()
        try:
            with translate_comm_errors("sending shards"):
                # Receives first: gloo pairs a send with a posted receive (rendezvous).
                for peer in range(self.world):
                    if peer == self.rank:
                        continue
                    buf = torch.empty(self._sizes[peer], dtype=torch.uint8, device=self.device)
                    work = (
                        dist.irecv(buf, group=self.group, group_src=peer, tag=SHARD_TAG)
                        if buf.numel()
                        else None
                    )
                    self._recv[peer] = (work, buf)
                # Sends in ring order from rank+1, so that the P-1 senders of a shard do
                # not all start on the same receiver at once.
                for step in range(1, self.world):
                    peer = (self.rank + step) % self.world
                    data = np.frombuffer(self._packets[peer], dtype=np.uint8).copy()
                    if not data.size:
                        continue
                    buf = torch.from_numpy(data).to(self.device)
                    self._send_bufs.append(buf)
                    work = dist.isend(buf, group=self.group, group_dst=peer, tag=SHARD_TAG)
                    assert work is not None
                    self._sends.append(work)
        except BaseException:
            self._broken = True
            raise
        finally:
            self.wait_seconds += time.perf_counter() - t0
        return self

    @property
    def pending(self) -> list[int]:
        """Peers whose packet has not been returned yet, in rank order."""
        return sorted(self._recv)

    def _deliver(self, peer: int) -> tuple[int, np.ndarray]:
        _, buf = self._recv.pop(peer)
        arr = buf.cpu().numpy()
        arr.setflags(write=False)
        return peer, arr

    def poll(self) -> tuple[int, np.ndarray] | None:
        """The lowest-ranked packet that has arrived and was not returned yet, or None."""
        for peer in self.pending:
            work, _ = self._recv[peer]
            if work is None or work.is_completed():
                if work is not None:
                    with translate_comm_errors("receiving shards"):
                        work.wait()  # completed: raises if it completed with an error
                return self._deliver(peer)
        return None

    def get(self) -> tuple[int, np.ndarray]:
        """The lowest-ranked pending packet, waiting for it (bounded by the group timeout)."""
        peer = self.pending[0]
        work, _ = self._recv[peer]
        t0 = time.perf_counter()
        try:
            if work is not None:
                with translate_comm_errors("receiving shards"):
                    work.wait()
        except BaseException:
            self._broken = True
            raise
        finally:
            self.wait_seconds += time.perf_counter() - t0
        return self._deliver(peer)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, Exception):
            return  # KeyboardInterrupt/SystemExit: leave now
        if self._broken or isinstance(exc, CommunicationError):
            return  # the group is broken: waiting could only run into the timeout
        t0 = time.perf_counter()
        try:
            with translate_comm_errors("sending shards"):
                for work, _ in self._recv.values():
                    if work is not None:
                        work.wait()
                for work in self._sends:
                    work.wait()
        except Exception:
            if exc is None:
                raise
        finally:
            self._recv.clear()
            self._sends.clear()
            self._send_bufs.clear()
            self.wait_seconds += time.perf_counter() - t0
