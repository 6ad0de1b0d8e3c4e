"""The reduce-scatter: each rank codes P shard packets, rank j sums the P packets of shard
j in rank order, divides, re-codes the mean, and every rank decodes the same P reduced
packets (docs/PROTOCOL.md). The phases are functions, so the simulation runs them for
K workers in one process and the ranks run them over a transport.

Pipelined on a rank: a coding thread codes the shard packets in :func:`coding_order`;
each goes out as soon as it is coded and its size agreed (a ring step), while the next
is coded, and arriving packets are summed in rank order meanwhile. The rank's own
packets are decoded again for its residual by whichever thread is idle.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tenfold.codec import PacketInfo, Policy
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.codec.policy import rms
from tenfold.distributed.errors import (
    STATUS_NONFINITE,
    NonFiniteWeightsError,
    PeerStatusError,
    ReferenceMismatchError,
)
from tenfold.distributed.params import uses_scale, zeros_like_wire
from tenfold.distributed.protocol.guard import check_contributions, totals_over_shards
from tenfold.distributed.protocol.packets import (
    accumulate_from,
    check_announced_size,
    encode_timed,
    packet_info,
)
from tenfold.distributed.protocol.rank_order import BufferPool, divide_in_place
from tenfold.distributed.protocol.shards import (
    Piece,
    TensorLayout,
    coding_order,
    layout_difference,
    layout_of,
    layout_tag,
    piece_map,
    pieces_of,
    shard_named,
    shard_plan,
    shard_views,
)
from tenfold.distributed.protocol.steps import (
    Cursor,
    Outgoing,
    RankOrderFeed,
    SyncResult,
    fail_nonfinite,
)
from tenfold.distributed.protocol.transport import ShardStream, Transport
from tenfold.distributed.stats import SyncStats, packet_stats
from tenfold.errors import ConfigError

__all__ = [
    "VERDICT_CORRUPT",
    "VERDICT_MISMATCH",
    "VERDICT_OK",
    "CodedShard",
    "apply_reduced",
    "check_residual2",
    "decode_own_shards",
    "encode_shard",
    "encode_shards",
    "raise_layout_mismatch",
    "raise_verdicts",
    "recode_shard",
    "reduce_scatter",
    "reduce_scatter_stats",
]

#: Codes of the first field of a reducer's verdict.
VERDICT_OK, VERDICT_CORRUPT, VERDICT_MISMATCH = 0, 1, 2

#: How often (s) the protocol's thread, waiting for the coder, looks for arrived packets
#: (a packet that arrives meanwhile is summed within this delay).
_POLL_SECONDS = 0.002


@dataclass
class CodedShard:
    """One stage-1 packet as its rank coded it: the shard's index, the packet, and the
    coding thread's wall and CPU seconds."""

    shard: int
    blob: bytes
    seconds: float
    cpu_seconds: float


def encode_shard(
    send: Outgoing, plan: Sequence[Sequence[Piece]], j: int, threads: int | None = None
) -> CodedShard:
    """This rank's packet of shard ``j`` (stage 1; see :func:`encode_shards`)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    blob, _ = encode_timed(
        shard_views(send.arrays, plan[j]), send.policy, piece_map(send.grad_rms, plan[j]),
        piece_map(send.scale, plan[j]), threads, send.seed,
    )  # fmt: skip
    return CodedShard(j, blob, time.perf_counter() - t0, time.thread_time() - c0)


class _Coder:
    """The coding thread: this rank's shard packets in coding order, as fast as it can
    (a packet is a few bytes per value and the values are views: nothing to bound)."""

    def __init__(
        self,
        send: Outgoing,
        plan: Sequence[Sequence[Piece]],
        order: Sequence[int],
        threads: int | None,
        decodes: _OwnDecodes | None = None,
    ) -> None:
        self._send, self._plan, self._order, self._threads = send, plan, order, threads
        self._decodes = decodes  # the own packets to decode again, once all are coded
        self._done: list[CodedShard | BaseException | None] = [None] * len(order)
        self._cond = threading.Condition()
        self._stop = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="tenfold-rs-coder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for k, j in enumerate(self._order):
                if self._stop:
                    return
                item: CodedShard | BaseException
                try:
                    item = encode_shard(self._send, self._plan, j, self._threads)
                    if k and self._decodes is not None:  # the own shard: the caller's
                        self._decodes.add(j, item.blob)
                except BaseException as exc:  # raised by get(), on the protocol's thread
                    item = exc
                with self._cond:
                    self._done[k] = item
                    self._cond.notify_all()
                if isinstance(item, BaseException):
                    return
            while self._decodes is not None and not self._stop and self._decodes.run_one():
                pass
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def ready(self, k: int) -> bool:
        """Whether packet ``k`` (in coding order) is coded, or its coding failed."""
        return self._done[k] is not None or self._ended

    def wait(self, k: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for packet ``k``."""
        with self._cond:
            self._cond.wait_for(lambda: self.ready(k), timeout)

    def get(self, k: int) -> CodedShard:
        """Packet ``k``, waiting for it; raises what its coding raised."""
        with self._cond:
            self._cond.wait_for(lambda: self.ready(k))
            item = self._done[k]
        if isinstance(item, BaseException):
            raise item
        if item is None:  # pragma: no cover - the thread ended without coding it
            raise ConfigError(f"reduce-scatter: shard packet {k} was never coded")
        return item

    def close(self, *, stop: bool = True) -> None:
        """Join the thread (``stop``: as soon as its current packet is done)."""
        self._stop = stop
        self._thread.join()


class _OwnDecodes:
    """This rank's shard packets decoded into ``own`` (its residual), one at a time by
    whichever thread is idle: the coder once it has coded every packet, the protocol's
    thread while it waits for the network. A failure is kept for the verdicts."""

    def __init__(
        self,
        rank: int,
        plan: Sequence[Sequence[Piece]],
        own: dict[str, np.ndarray],
        threads: int | None,
    ) -> None:
        self._rank, self._plan, self._own, self._threads = rank, plan, own, threads
        self._todo: deque[tuple[int, bytes]] = deque()
        self._busy = 0
        self._cond = threading.Condition()
        self.infos: dict[int, PacketInfo] = {}
        self.error: CorruptPacketError | PacketMismatchError | None = None
        self._unexpected: BaseException | None = None
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def add(self, j: int, blob: bytes) -> None:
        with self._cond:
            self._todo.append((j, blob))

    def run_one(self) -> bool:
        """Decode one packet if one is left (False: none)."""
        with self._cond:
            if not self._todo or self.error is not None or self._unexpected is not None:
                return False
            j, blob = self._todo.popleft()
            self._busy += 1
        c0, t0 = time.thread_time(), time.perf_counter()
        info: PacketInfo | None = None
        error: CorruptPacketError | PacketMismatchError | None = None
        unexpected: BaseException | None = None
        try:
            info = accumulate_from(
                self._rank, blob, shard_views(self._own, self._plan[j]), self._threads
            )
        except (CorruptPacketError, PacketMismatchError) as exc:
            error = exc
        except BaseException as exc:  # re-raised by finish(), on the protocol's thread
            unexpected = exc
        with self._cond:
            if info is not None:
                self.infos[j] = info
            if error is not None and self.error is None:
                self.error = error
            if unexpected is not None and self._unexpected is None:
                self._unexpected = unexpected
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.thread_time() - c0
            self._busy -= 1
            self._cond.notify_all()
        return unexpected is None

    def finish(self) -> None:
        """Decode what is left here and wait for the other thread's decode."""
        while self.run_one():
            pass
        with self._cond:
            self._cond.wait_for(lambda: self._busy == 0)
        if self._unexpected is not None:
            raise self._unexpected


class _Reduction:
    """The rank-order sum of this rank's shard, fed as packets arrive. A packet that
    fails to decode is kept as the verdict (not raised: the rank goes on with the steps
    and the exchange, so no peer is left waiting); later packets are then discarded."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.cursor = Cursor(rank)
        self.feed: RankOrderFeed | None = None
        self.verdict, self.culprit, self.problem = VERDICT_OK, 0, ""

    def fail(self, exc: CorruptPacketError | PacketMismatchError, culprit: int) -> None:
        if self.verdict == VERDICT_OK:
            self.verdict = (
                VERDICT_CORRUPT if isinstance(exc, CorruptPacketError) else VERDICT_MISMATCH
            )
            self.culprit, self.problem = culprit, str(exc)
        self.feed = None

    def _guarded(self, work: Any) -> bool:
        try:
            return bool(work())
        except (CorruptPacketError, PacketMismatchError) as exc:
            self.fail(exc, self.rank if self.cursor.rank is None else self.cursor.rank)
            return True

    def take(self, peer: int, packet: Any) -> None:
        feed = self.feed
        if feed is not None:
            self._guarded(lambda: feed.take(peer, packet))

    def step(self) -> bool:
        feed = self.feed
        return feed is not None and self._guarded(feed.step)

    def work(self, stream: ShardStream) -> bool:
        """One unit of work (take an arrived packet, or add the next in rank order);
        False when none can be done before another packet arrives."""
        item = stream.poll()
        if item is not None:
            self.take(*item)
            return True
        return self.step()

    def finish(self) -> None:
        feed = self.feed
        if feed is not None:
            self._guarded(feed.finish)


def reduce_scatter(
    transport: Transport,
    send: Outgoing,
    named: Sequence[tuple[str, torch.Tensor]],
    *,
    round: int,
    pool: BufferPool | None = None,
    shard_pool: BufferPool | None = None,
    threads: int | None = None,
    ratio: float | None = None,
) -> SyncResult:
    """One reduce-scatter synchronisation of this rank (arguments as for
    :func:`~tenfold.distributed.protocol.all_gather`; ``shard_pool``: the shard
    accumulators' pool).

    Stage 1 is a pipeline of P-1 ring steps (docs/PROTOCOL.md): the coding thread codes
    the shards in :func:`coding_order`; at step s every rank agrees on the sizes of the
    packets it sends at that step (the first exchange also carries every rank's reference
    tag, layout hash, own packet's size and NaN/Inf status), then sends its packet of shard
    ``rank - s`` and receives rank ``rank + s``'s packet of its own shard, while the next
    packet is coded and arrived packets are summed in rank order. A failure only one
    reducer sees (a corrupt or mismatching shard packet) travels in the verdicts'
    all-gather, so every rank raises the same error naming the sender.
    """
    t_start = time.perf_counter()
    pool = pool if pool is not None else BufferPool()
    rank, world = transport.rank, transport.world_size
    plan = shard_plan([(n, t.numel()) for n, t in named], world)
    desc = layout_of(named)
    mine = plan[rank]
    residual2 = send.residual2 if send.recode_feedback else None
    check_residual2(residual2, mine)  # before any collective
    layouts = [shard_named(named, pieces) for pieces in plan]
    order = coding_order(rank, world)
    own_full = pool.take(named) if send.keep_own else None
    own_infos: list[PacketInfo | None] = [None] * world
    decodes = _OwnDecodes(rank, plan, own_full, threads) if own_full is not None else None
    red = _Reduction(rank, world)
    blobs: list[bytes] = [b""] * world
    matrix = [[0] * world for _ in range(world)]
    t_comm = t_encode = c_encode = t_own = c_own = 0.0

    def take(coder: _Coder, k: int, stream: ShardStream) -> CodedShard:
        """Packet k of the coder; summing what arrives while it is coded."""
        nonlocal t_encode, c_encode
        while not coder.ready(k):
            if not red.work(stream):
                coder.wait(k, _POLL_SECONDS)
        try:
            coded = coder.get(k)
        except ValueError:  # the codec refuses NaN/Inf: every rank fails at this step
            bad = [n for n, a in send.arrays.items() if not np.isfinite(a).all()]
            if not bad:
                raise
            fail_nonfinite(
                lambda: transport.exchange_size_matrix([], 0, 0, status=STATUS_NONFINITE), bad
            )
        t_encode += coded.seconds
        c_encode += coded.cpu_seconds
        blobs[coded.shard] = coded.blob
        return coded

    def agree(s: int, row: list[int]) -> None:
        """Step s's size exchange, and the checks every rank makes alike."""
        nonlocal t_comm
        t0 = time.perf_counter()
        try:
            first = s == 1
            got, tags, layout_tags = transport.exchange_size_matrix(
                row, (send.tag or 0) if first else 0, layout_tag(desc) if first else 0
            )
        except PeerStatusError as exc:
            raise NonFiniteWeightsError(exc.statuses) from None
        finally:
            t_comm += time.perf_counter() - t0
        if first and len(set(layout_tags)) > 1:
            raise_layout_mismatch(desc, transport.gather_payloads(json.dumps(desc).encode()))
        if first and send.tag is not None and len(set(tags)) > 1:
            raise ReferenceMismatchError(tags, round)
        for i in range(world):  # every rank checks every size: the same error everywhere
            for j in ((i - s) % world, i) if first else ((i - s) % world,):
                matrix[i][j] = got[i][j]
        for j in range(world):
            for i in range(world):
                if (i - s) % world == j or (first and i == j):
                    check_announced_size(i, matrix[i][j], layouts[j], what="shard")

    def start(own: CodedShard) -> None:
        """The rank's own packet: decoded once (its residual needs it) and summed."""
        nonlocal t_own, c_own
        decoded = None
        if own_full is not None:
            c0, t0 = time.thread_time(), time.perf_counter()
            views = shard_views(own_full, mine)
            try:
                info = accumulate_from(rank, own.blob, views, threads)
            except (CorruptPacketError, PacketMismatchError) as exc:
                red.fail(exc, rank)
                return
            finally:
                t_own += time.perf_counter() - t0
                c_own += time.thread_time() - c0
            own_infos[rank] = info
            decoded = {rank: (views, info)}
        feed = RankOrderFeed(
            layouts[rank], world, decoded=decoded, guard=ratio is not None, pool=shard_pool,
            threads=threads, cursor=red.cursor,
        )  # fmt: skip
        red.feed = feed
        if decoded is None:
            red.take(rank, own.blob)

    coder = _Coder(send, plan, order, threads, decodes)
    finished = False
    try:
        with transport.shard_stream() as stream:
            own = take(coder, 0, stream)
            start(own)
            for s in range(1, max(world, 2)):
                coded = take(coder, s, stream) if s < world else None
                row = [0] * world
                if s == 1:
                    row[rank] = len(own.blob)
                if coded is not None:
                    row[coded.shard] = len(coded.blob)
                agree(s, row)
                if coded is not None:
                    source = (rank + s) % world
                    stream.post(coded.shard, coded.blob, source, matrix[source][rank])
            # the last packets: summed as they come, own packets decoded meanwhile
            while not stream.done:
                if red.work(stream) or (decodes is not None and decodes.run_one()):
                    continue
                red.take(*stream.get())
            red.finish()
            t_comm += stream.wait_seconds
            sent, received = stream.sent_bytes, stream.received_bytes
        if decodes is not None:
            decodes.finish()  # with the coder, if it is still at it
        finished = True
    finally:
        coder.close(stop=not finished)
    if decodes is not None:
        t_own += decodes.seconds
        c_own += decodes.cpu_seconds
        for j, info in decodes.infos.items():
            own_infos[j] = info
        if decodes.error is not None:
            red.fail(decodes.error, rank)
    feed = red.feed
    summed = feed.finish() if feed is not None else None
    t_decode = feed.seconds if feed is not None else 0.0
    c_decode = feed.cpu_seconds if feed is not None else 0.0
    sumsq = summed.sumsq if summed is not None else [0.0] * world
    t0 = time.perf_counter()
    verdicts = transport.exchange_verdicts(red.verdict, red.culprit, sumsq)
    t_comm += time.perf_counter() - t0
    raise_verdicts(verdicts, rank, red.problem)
    assert summed is not None
    n_all = sum(t.numel() for _, t in named)
    if ratio is not None:
        check_contributions(totals_over_shards([v[2:] for v in verdicts]), n_all, ratio, round)
    c0, t0 = time.thread_time(), time.perf_counter()
    divide_in_place(summed.acc, world)
    t_decode += time.perf_counter() - t0
    c_decode += time.thread_time() - c0
    c0, t0 = time.thread_time(), time.perf_counter()
    blob2, y = recode_shard(summed.acc, mine, send, residual2, threads)
    t_encode += time.perf_counter() - t0
    c_encode += time.thread_time() - c0
    if shard_pool is not None:
        shard_pool.give(summed.acc)
    t1 = time.perf_counter()
    sizes2, _, _ = transport.exchange_sizes(len(blob2), 0)
    t_comm += time.perf_counter() - t1
    for j in range(world):
        check_announced_size(j, sizes2[j], layouts[j])
    result = pool.take(named)
    reduced: list[Any] = [None] * world
    reduced[rank] = blob2
    c0, t0 = time.thread_time(), time.perf_counter()
    with transport.all_gather(blob2, sizes2) as ring:
        # Own packet decoded inside the exchange: if it fails, the peers (which decode
        # the same bytes) fail too, and nobody is left waiting in the ring.
        own2 = apply_reduced(result, plan, rank, blob2, threads)
        while not ring.done:
            peer, packet = ring.get()
            reduced[peer] = packet
            apply_reduced(result, plan, peer, packet, threads)
    t_comm += ring.wait_seconds
    t_decode += time.perf_counter() - t0 - ring.wait_seconds
    c_decode += time.thread_time() - c0
    infos_out = [
        info if info is not None else (summed.infos[j] if j == rank else packet_info(blobs[j]))
        for j, info in enumerate(own_infos)
    ]
    stats = reduce_scatter_stats(
        named, plan, rank, round, send, infos_out, [sum(row) for row in matrix],
        encode_seconds=t_encode + t_own, comm_seconds=t_comm, decode_seconds=t_decode,
        sent=sent + ring.sent_bytes, received=received + ring.received_bytes,
        encode_cpu_seconds=c_encode + c_own, decode_cpu_seconds=c_decode,
        wall_seconds=time.perf_counter() - t_start,
    )  # fmt: skip
    recoded = (y, own2) if send.recode_feedback else None
    return SyncResult(result, own_full, recoded, reduced, [*blobs, blob2], stats)


def reduce_scatter_stats(
    named: Sequence[tuple[str, torch.Tensor]],
    plan: Sequence[Sequence[Piece]],
    rank: int,
    round: int,
    send: Outgoing,
    infos: Sequence[PacketInfo],
    packet_bytes: Sequence[int],
    *,
    encode_seconds: float,
    comm_seconds: float,
    decode_seconds: float,
    sent: int,
    received: int,
    encode_cpu_seconds: float = 0.0,
    decode_cpu_seconds: float = 0.0,
    wall_seconds: float = 0.0,
) -> SyncStats:
    """One rank's :class:`SyncStats` of a reduce-scatter (per tensor, pieces merged)."""
    n_mine = sum(p.size for p in plan[rank])
    n_all = sum(t.numel() for _, t in named)
    return packet_stats(
        infos=infos,
        world_size=len(plan),
        rank=rank,
        round=round,
        packet_bytes=packet_bytes,
        grad_rms=send.grad_rms,
        pieces=pieces_of(named, plan),
        encode_seconds=encode_seconds,
        comm_seconds=comm_seconds,
        decode_seconds=decode_seconds,
        bytes_sent=sent,
        bytes_received=received,
        collective="reduce-scatter",
        values_encoded=n_all + n_mine,
        values_decoded=len(plan) * n_mine + (n_all - n_mine if send.keep_own else 0) + n_all,
        encode_cpu_seconds=encode_cpu_seconds,
        decode_cpu_seconds=decode_cpu_seconds,
        wall_seconds=wall_seconds,
    )


def check_residual2(residual2: Mapping[str, np.ndarray] | None, pieces: Sequence[Piece]) -> None:
    """A second-stage residual must be for this shard (the same model and world size)."""
    if residual2 is not None and list(residual2) != [p.key for p in pieces]:
        raise ConfigError(
            "the second-stage residual in this averager's state is for another shard "
            "plan (another model or world size)"
        )


def encode_shards(
    send: Outgoing,
    plan: Sequence[Sequence[Piece]],
    threads: int | None = None,
    rank: int | None = None,
) -> tuple[list[bytes], float]:
    """One packet per shard of ``send.arrays`` (stage 1), in shard order, and the seconds
    it took; coded in ``rank``'s :func:`coding_order` (None: shard order), as that rank's
    coding thread codes them (the packets do not depend on the order).

    Step policies get the whole tensor's RMS hint for each of its pieces, so a tensor cut
    by a shard boundary is quantized with the same step on both sides (as in all-gather).
    """
    order = range(len(plan)) if rank is None else coding_order(rank, len(plan))
    coded = {j: encode_shard(send, plan, j, threads) for j in order}
    return [coded[j].blob for j in range(len(plan))], sum(c.seconds for c in coded.values())


def decode_own_shards(
    rank: int,
    blobs: Sequence[Any],
    plan: Sequence[Sequence[Piece]],
    named: Sequence[tuple[str, torch.Tensor]],
    threads: int | None = None,
    pool: BufferPool | None = None,
) -> tuple[dict[str, np.ndarray], list[PacketInfo]]:
    """A rank's stage-1 packets decoded into full-size arrays (for its residual); zeroed
    arrays from ``pool`` when given (fresh memory costs page faults)."""
    full = pool.take(named) if pool is not None else zeros_like_wire(named)
    infos = [
        accumulate_from(rank, blob, shard_views(full, pieces), threads)
        for blob, pieces in zip(blobs, plan, strict=True)
    ]
    return full, infos


def recode_shard(
    mean: Mapping[str, np.ndarray],
    pieces: Sequence[Piece],
    send: Outgoing,
    residual2: Mapping[str, np.ndarray] | None,
    threads: int | None = None,
) -> tuple[bytes, dict[str, np.ndarray]]:
    """Stage 2 on a reducer: code the shard's mean (plus its second-stage residual) with
    ``send.recode_seed``.

    Step policies take their RMS from the reduced values themselves (per piece), not from
    the residual backlog, for the same reason as stage 1. Returns the packet and what it
    coded (``y``, its own arrays when ``send.recode_feedback``: the residual is
    ``y - decoded``).
    """
    policy: Policy = send.policy
    scale = (
        {k: (rms(v.reshape(-1)) if v.size else 0.0) for k, v in mean.items()}
        if uses_scale(policy)
        else None
    )
    y: dict[str, np.ndarray]
    if send.recode_feedback:
        y = {
            k: (np.add(v, residual2[k]) if residual2 is not None else v.copy())
            for k, v in mean.items()
        }
    else:
        y = dict(mean)
    blob, _ = encode_timed(
        y, policy, piece_map(send.grad_rms, pieces), scale, threads, send.recode_seed
    )
    return blob, y


def apply_reduced(
    result: dict[str, np.ndarray],
    plan: Sequence[Sequence[Piece]],
    j: int,
    packet: Any,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Decode reducer ``j``'s re-coded shard into its views of the zeroed ``result``;
    returns those views (its decoded values)."""
    views = shard_views(result, plan[j])
    accumulate_from(j, packet, views, threads)
    return views


def raise_layout_mismatch(desc: Sequence[TensorLayout], payloads: Sequence[bytes]) -> None:
    """Ranks hold different tensors: say which and how, on every rank (``payloads``:
    every rank's layout as JSON, gathered on this failure path only)."""
    layouts = [
        [(str(n), tuple(int(d) for d in shape), str(dt)) for n, shape, dt in json.loads(p)]
        for p in payloads
    ]
    for rank, other in enumerate(layouts[1:], start=1):
        problem = layout_difference(layouts[0], other, f"rank {rank}")
        if problem is not None:
            raise PacketMismatchError(f"ranks hold different tensors: {problem}")
    raise PacketMismatchError("ranks hold different tensors")  # pragma: no cover


def raise_verdicts(verdicts: Sequence[Sequence[float]], rank: int, problem: str) -> None:
    """Raise, on every rank alike, the first decode failure a reducer reported."""
    for reducer, row in enumerate(verdicts):
        code, culprit = int(row[0]), int(row[1])
        if code == VERDICT_OK:
            continue
        detail = f": {problem}" if reducer == rank and problem else ""
        kind = "is corrupt" if code == VERDICT_CORRUPT else "does not match"
        text = (
            f"shard packet from rank {culprit} {kind} (rank {reducer} reduces that shard{detail})"
        )
        if code == VERDICT_CORRUPT:
            raise CorruptPacketError(text)
        raise PacketMismatchError(text)
