"""The all-gather: every rank codes its packets (one per chunk of the model), every packet
goes to every rank, and every rank decodes all K of each chunk in rank order, divides by
K: the same bits everywhere.

Pipelined (docs/PROTOCOL.md): a coding thread codes the chunks ahead; each chunk's sizes
go out as soon as it is coded and its packets as soon as its sizes are known, a few
chunks ahead of the one being decoded, so a sync pays a few round trips, not two per
chunk; each finished chunk goes to the caller's ``sink`` and its buffers are dropped, so
no whole-model temporary exists.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from tenfold.codec import PacketInfo
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.distributed.errors import (
    STATUS_NONFINITE,
    NonFiniteWeightsError,
    PeerStatusError,
    ReferenceMismatchError,
)
from tenfold.distributed.params import zeros_like_wire
from tenfold.distributed.protocol.chunks import (
    DEFAULT_CHUNK_VALUES,
    Chunk,
    chunk_hints,
    chunk_named,
    chunk_plan,
    chunk_seed,
    chunk_views,
    nonfinite_arrays,
    split_parts,
)
from tenfold.distributed.protocol.guard import check_contributions
from tenfold.distributed.protocol.packets import (
    check_announced_sizes,
    encode_and_decode,
    encode_timed,
)
from tenfold.distributed.protocol.rank_order import BufferPool
from tenfold.distributed.protocol.reduce_scatter import raise_layout_mismatch
from tenfold.distributed.protocol.shards import layout_of, layout_tag
from tenfold.distributed.protocol.steps import (
    Outgoing,
    RankOrderFeed,
    SyncResult,
    fail_nonfinite,
)
from tenfold.distributed.protocol.transport import (
    Arrivals,
    ChunkStream,
    LocalArrivals,
    SizeRows,
    Transport,
)
from tenfold.distributed.stats import packet_stats

__all__ = ["ChunkSink", "Coded", "all_gather", "encode", "encode_chunk"]


class ChunkSink(Protocol):
    """Takes each finished chunk: ``(chunk, total, k, values, own)``. ``total`` is the
    chunk's rank-order sum of the ``k`` packets (part key -> array, the sink's to use up:
    the mean is ``total / k`` in its dtype, e.g. ``divide_in_place``, or fused into the
    sink's own pass), ``values`` what this rank coded and ``own`` their decoding (None
    without keep_own). With ``own_pending`` (only for a sink given to :func:`all_gather`
    with ``sink_adds_own``) ``total`` lacks this rank's contribution, which the sink adds
    first: ``total + own``, the same sum bit for bit
    (:class:`~tenfold.distributed.protocol.rank_order.RankOrderSum`'s ``deferred``)."""

    def __call__(
        self,
        chunk: Chunk,
        total: dict[str, np.ndarray],
        k: int,
        values: Mapping[str, np.ndarray],
        own: dict[str, np.ndarray] | None,
        /,
        *,
        own_pending: bool = False,
    ) -> None: ...


def encode(send: Outgoing, threads: int | None) -> tuple[bytes, float]:
    """This rank's packet of the whole model and the seconds it took (one chunk)."""
    return encode_timed(send.arrays, send.policy, send.grad_rms, send.scale, threads, send.seed)


@dataclass
class Coded:
    """One chunk as its rank coded it: the values, the packet, their decoding (keep_own),
    and the coding thread's wall and CPU seconds."""

    values: Mapping[str, np.ndarray]
    blob: bytes
    own: tuple[dict[str, np.ndarray], PacketInfo] | None
    seconds: float
    cpu_seconds: float


def encode_chunk(send: Outgoing, chunk: Chunk, index: int, threads: int | None) -> Coded:
    """Code chunk ``index`` of ``send`` (and decode it again when ``send.keep_own``)."""
    c0 = time.thread_time()
    t0 = time.perf_counter()
    values = send.values(chunk) if send.values is not None else chunk_views(send.arrays, chunk)
    args = (
        values, send.policy, chunk_hints(send.grad_rms, chunk), chunk_hints(send.scale, chunk),
        threads, chunk_seed(send.seed, index),
    )  # fmt: skip
    own = None
    if send.keep_own:
        blob, own = encode_and_decode(*args)
    else:
        blob, _ = encode_timed(*args)
    return Coded(values, blob, own, time.perf_counter() - t0, time.thread_time() - c0)


class _Coder:
    """The coding thread: chunks in order, one ahead of the consumer (the chunk being
    coded while the previous one travels; more look-ahead would only hold more chunks'
    values in memory)."""

    def __init__(self, send: Outgoing, plan: Sequence[Chunk], threads: int | None) -> None:
        self._send, self._plan, self._threads = send, plan, threads
        # Two lists of the same futures, one per thread: each side drops its own reference
        # when done with a chunk (the consumer may take chunk i before the coder reaches
        # it, so the coder must not read the consumer's list), and a chunk's values are
        # freed once both have.
        self._futures: list[Future[Coded] | None] = [Future() for _ in plan]
        self._to_code: list[Future[Coded] | None] = list(self._futures)
        self._allowed = threading.Semaphore(1)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tenfold-coder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for i, chunk in enumerate(self._plan):
            self._allowed.acquire()
            if self._stop:
                return
            fut = self._to_code[i]
            self._to_code[i] = None
            assert fut is not None  # only this thread empties _to_code
            try:
                fut.set_result(encode_chunk(self._send, chunk, i, self._threads))
            except BaseException as exc:
                fut.set_exception(exc)
                return
            del fut  # the consumer drops the chunk when it is done with it

    def ready(self, i: int) -> bool:
        """Whether chunk i is coded (or failed): :meth:`get` would not wait."""
        fut = self._futures[i]
        return fut is None or fut.done()

    def get(self, i: int) -> Coded:
        """Chunk i, waiting for it; lets the thread start one more."""
        fut = self._futures[i]
        assert fut is not None
        self._futures[i] = None  # the chunk lives only as long as the consumer holds it
        coded = fut.result()
        self._allowed.release()
        return coded

    def close(self) -> None:
        self._stop = True
        self._allowed.release()
        self._thread.join()


#: Failures every rank raises at the same point of the same chunk (a drain keeps the
#: group usable); a dead peer or a rank's own bug are not among them.
_AGREED = (NonFiniteWeightsError, ReferenceMismatchError, CorruptPacketError, PacketMismatchError)

#: Chunks coded ahead of the one being decoded: they travel while it is decoded (each
#: holds its values and own decoding until it is decoded: memory).
AHEAD = 4

#: The status of the chunks a rank sends after a failure, only so that every rank has
#: sent all of them (never raised: the sync has already failed).
_STATUS_DRAINED = -2


class _Exchanges:
    """This rank's side of one sync's chunk stream (docs/PROTOCOL.md, "The pipeline
    (all-gather) and memory").

    Chunk 0's sizes are one blocking exchange (it carries the checks that must stop every
    rank before anything else is sent: layout, reference, NaN/Inf) and its packets one
    all-gather; chunks 1..n-1 go through a :class:`ChunkStream`: chunk c's row and packet
    leave as soon as it is coded (``c <= d + AHEAD`` while chunk d is decoded) and arrive
    in one trip; they are checked and decoded at chunk c's turn, alike on every rank. A
    failure found at a turn (a status, a size, a tag, a corrupt packet) is raised by every
    rank there; :meth:`drain` first sends the rest of the chunks (with a status) and
    completes every exchange, so the group stays usable.
    """

    def __init__(self, coder: _Coder, send: Outgoing, plan: Sequence[Chunk]) -> None:
        self.coder, self.send, self.plan = coder, send, plan
        self.n = len(plan)
        self.stream: ChunkStream | None = None
        self.first: Arrivals | None = None  # chunk 0's all-gather
        self.coded: dict[int, Coded] = {}
        #: the arrays this rank found NaN/Inf in (a later chunk the codec refused): it
        #: sends a status from that chunk on, and every rank raises at that chunk's turn
        self.nonfinite: list[str] | None = None
        self.wait_seconds = 0.0  # blocked on the stream
        self.encode_seconds = self.encode_cpu = 0.0

    def take_coded(self, i: int) -> Coded | None:
        """Chunk i from the coder (waiting for it); None when the codec refused NaN/Inf."""
        try:
            coded = self.coder.get(i)
        except ValueError:  # the codec refuses NaN/Inf
            send = self.send
            values = send.values(self.plan[i]) if send.values is not None else send.arrays
            failing = nonfinite_arrays(values)
            if not failing:
                raise
            self.nonfinite = failing
            return None
        self.encode_seconds += coded.seconds
        self.encode_cpu += coded.cpu_seconds
        self.coded[i] = coded
        return coded

    def progress(self, d: int, *, block_until: int = 0) -> None:
        """Send the chunks coded so far, up to ``d + AHEAD`` (waiting for the coder up to
        chunk ``block_until``)."""
        stream = self.stream
        if stream is None:
            return
        last = min(self.n - 1, d + AHEAD)
        while stream.sent + 1 <= last:
            c = stream.sent + 1
            coded = None
            if self.nonfinite is None:
                if c > block_until and not self.coder.ready(c):
                    return
                coded = self.take_coded(c)
            if coded is None:
                stream.send(None, 0, status=STATUS_NONFINITE)
            else:
                stream.send(coded.blob, self.send.tag or 0)

    def receive(self, c: int) -> tuple[SizeRows, dict[int, Any]]:
        """Every rank's row and packet of chunk c >= 1 (sent by this rank first)."""
        assert self.stream is not None
        self.progress(c, block_until=c)
        t0 = time.perf_counter()
        try:
            return self.stream.wait(c - 1)
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def drain(self, exc: BaseException) -> None:
        """After a failure every rank raises at the same turn: send the rest of the chunks
        (a status), wait for every chunk in and out."""
        if self.stream is not None:
            while self.stream.sent < self.n - 1:
                self.stream.send(None, 0, status=_STATUS_DRAINED)
            self.stream.close()
        self.close(exc)

    def close(self, exc: BaseException | None) -> None:
        """Complete (or, after a communication error, abandon) chunk 0's all-gather."""
        first, self.first = self.first, None
        if first is not None:
            first.__exit__(type(exc) if exc is not None else None, exc, None)


def all_gather(
    transport: Transport,
    send: Outgoing,
    named: Sequence[tuple[str, torch.Tensor]],
    *,
    round: int,
    pool: BufferPool | None = None,
    threads: int | None = None,
    ratio: float | None = None,
    chunk_values: int = DEFAULT_CHUNK_VALUES,
    sink: ChunkSink | None = None,
    sink_adds_own: bool = False,
) -> SyncResult:
    """One all-gather synchronisation of this rank (docs/PROTOCOL.md).

    Code ``send`` chunk by chunk on a coding thread; exchange each chunk's sizes (the
    first exchange also carries every rank's reference tag, layout hash and NaN/Inf
    status, so a NaN/Inf rank, a rank on another reference or with other tensors fail on
    every rank there, before anything is applied); exchange the packets; decode each
    chunk in rank order while the next chunks' sizes and packets travel (a few chunks in
    flight: a sync pays a few round trips, not two per chunk); apply the guard
    (``ratio``); divide by K.

    Args:
        transport: this rank's side of the group.
        send: what this rank contributes.
        named: the layout (names, shapes, dtypes; meta tensors will do).
        round: the sync's index (for error messages and stats).
        pool: where the assembled mean comes from (no ``sink``).
        threads: the codec's threads.
        ratio: ``max_contribution_ratio`` (None: no guard).
        chunk_values: values per chunk (:func:`chunk_plan`); the same on every rank.
        sink: called with each finished chunk, in order (with the guard on: after the
            last chunk passed it). None: the mean (and the own decoding) are assembled
            into model-sized arrays and returned.
        sink_adds_own: the sink can add this rank's own decoding to the sum itself
            (:class:`ChunkSink`'s ``own_pending``): where that is the same sum (two ranks,
            or this rank the last; no guard, which needs every contribution alone), the
            sum skips it and the sink fuses the addition into its pass, saving one pass
            over the chunk per sync.

    A failure after the first chunk was applied (a corrupt packet, a dead peer) leaves
    the earlier chunks applied, alike on every rank that saw it.
    """
    rank, world = transport.rank, transport.world_size
    t_start = time.perf_counter()
    plan = chunk_plan([(n, t.numel()) for n, t in named], chunk_values)
    layouts = [chunk_named(named, chunk) for chunk in plan]
    assembled: dict[str, np.ndarray] | None = None
    own_full: dict[str, np.ndarray] | None = None
    assembling = sink is None
    if sink is None:
        assembled = pool.take(named) if pool is not None else zeros_like_wire(named)
        own_full = zeros_like_wire(named) if send.keep_own else None
        sink = _assemble(assembled, own_full)
    guard = ratio is not None
    # the caller's sink only (``_assemble`` does not add), the guard off (it needs every
    # contribution alone), where adding it last is the same sum
    defer_own = sink_adds_own and not assembling and not guard and (world == 2 or rank == world - 1)
    held: list[tuple[Chunk, dict[str, np.ndarray], int, Mapping[str, np.ndarray], Any]] = []
    sumsq = [0.0] * world
    infos: list[PacketInfo] = []
    all_packets: list[Any] = []
    sizes_total = [0] * world
    sent = received = 0
    t_comm = t_decode = c_decode = 0.0

    def check(i: int, rows: SizeRows) -> tuple[int, ...]:
        """The checks every rank makes on chunk i's sizes, alike (the same rows)."""
        sizes, tags, layout_tags = rows
        if len(set(layout_tags)) > 1:
            desc = layout_of(named)
            raise_layout_mismatch(desc, transport.gather_payloads(json.dumps(desc).encode()))
        if send.tag is not None and len(set(tags)) > 1:
            raise ReferenceMismatchError(tags, round)
        check_announced_sizes(sizes, layouts[i])
        return sizes

    def decode(i: int, coded: Coded, arrivals: Arrivals) -> None:
        """Chunk i's packets in rank order as they arrive, the next chunks' exchanges
        posted whenever they can go; hands the finished chunk to the sink."""
        nonlocal t_decode, c_decode
        pending = defer_own and coded.own is not None
        decoded = {rank: coded.own} if coded.own is not None and not pending else None
        deferred = (rank, coded.own[1]) if pending and coded.own is not None else None
        feed = RankOrderFeed(
            layouts[i], world, decoded=decoded, guard=guard, threads=threads, deferred=deferred
        )
        feed.take(rank, coded.blob)
        while not arrivals.done:
            ex.progress(i)
            item = arrivals.poll()
            if item is None:
                if feed.step():
                    continue
                item = arrivals.get()
            feed.take(*item)
        while feed.step():  # the rest of the chunk, still posting what can go
            ex.progress(i)
        summed = feed.finish()
        c0, t0 = time.thread_time(), time.perf_counter()
        own = coded.own[0] if coded.own is not None else None
        if guard:
            for r, s in enumerate(summed.sumsq):
                sumsq[r] += s
            held.append((plan[i], summed.acc, world, coded.values, own))
        else:
            sink(plan[i], summed.acc, world, coded.values, own, own_pending=pending)
        infos.append(summed.infos[rank])
        all_packets.extend(summed.packets)
        t_decode += feed.seconds + time.perf_counter() - t0
        c_decode += feed.cpu_seconds + time.thread_time() - c0

    # NaN/Inf anywhere is found before the first exchange: nothing is applied then
    bad = nonfinite_arrays(send.arrays) if len(plan) > 1 else []
    if bad:
        fail_nonfinite(lambda: _report(transport), bad)
    coder = _Coder(send, plan, threads)
    ex = _Exchanges(coder, send, plan)
    order = [(rank + s) % world for s in range(1, world)]  # the peers, as the ring delivers
    try:
        # chunk 0's sizes: one blocking exchange that carries the checks of the whole sync
        first = ex.take_coded(0)
        if first is None:
            assert ex.nonfinite is not None
            fail_nonfinite(lambda: _report(transport), ex.nonfinite)
        t1 = time.perf_counter()
        try:
            rows0 = transport.exchange_sizes(
                len(first.blob), send.tag or 0, layout=_layout_tag(named, 0)
            )
        except PeerStatusError as exc:
            raise NonFiniteWeightsError(exc.statuses) from None
        t_comm += time.perf_counter() - t1
        sizes_of = {0: check(0, rows0)}
        ex.first = transport.all_gather(first.blob, sizes_of[0]).__enter__()
        if len(plan) > 1:  # every rank has the same chunks now: the stream of the rest
            capacities = [_packet_capacity(layout) for layout in layouts[1:]]
            ex.stream = transport.chunk_stream(capacities, lead=AHEAD + 2)
        for d in range(len(plan)):
            try:
                ex.progress(d)
                if d == 0:
                    assert ex.first is not None
                    arrivals = ex.first
                else:
                    rows, packets = ex.receive(d)
                    failed = {r: s for r, s in enumerate(rows[0]) if s < 0}
                    if failed:
                        mine = ex.nonfinite if rank in failed else None
                        raise NonFiniteWeightsError(failed, mine or ())
                    sizes_of[d] = check(d, rows)
                    own = sizes_of[d][rank]
                    arrivals = LocalArrivals(
                        [(p, packets[p]) for p in order],
                        sent_bytes=(world - 1) * own,
                        received_bytes=sum(sizes_of[d]) - own,
                    )
                decode(d, ex.coded.pop(d), arrivals)
            except _AGREED as exc:
                ex.drain(exc)  # every rank raises this, at this turn: the same state
                raise
            if d == 0:
                ex.first = None
                arrivals.__exit__(None, None, None)
            t_comm += arrivals.wait_seconds
            sent += arrivals.sent_bytes
            received += arrivals.received_bytes
        if ex.stream is not None:
            ex.stream.close()
    except BaseException as exc:
        ex.close(exc)
        raise
    finally:
        coder.close()
    for sizes in sizes_of.values():
        for r, s in enumerate(sizes):
            sizes_total[r] += s
    t_comm += ex.wait_seconds
    n_all = sum(t.numel() for _, t in named)
    check_contributions(sumsq, n_all, ratio, round)
    for item in held:
        sink(*item)
    pieces = (
        {p.key: (p.tensor, tuple(dict(named)[p.tensor].shape)) for c in plan for p in c}
        if split_parts(plan)
        else None
    )
    stats = packet_stats(
        infos=infos,
        world_size=world,
        rank=rank,
        round=round,
        packet_bytes=sizes_total,
        grad_rms=send.grad_rms,
        pieces=pieces,
        encode_seconds=ex.encode_seconds,
        comm_seconds=t_comm,
        decode_seconds=t_decode,
        bytes_sent=sent,
        bytes_received=received,
        collective="all-gather",
        values_encoded=n_all,
        values_decoded=world * n_all,
        encode_cpu_seconds=ex.encode_cpu,
        decode_cpu_seconds=c_decode,
        wall_seconds=time.perf_counter() - t_start,
        chunks=len(plan),
    )
    return SyncResult(assembled, own_full, None, all_packets, [], stats)


def _report(transport: Transport) -> object:
    return transport.exchange_sizes(0, 0, status=STATUS_NONFINITE)


def _packet_capacity(named: Sequence[tuple[str, torch.Tensor]]) -> int:
    """The largest packet of ``named`` a peer may announce (bytes): the bound
    :func:`check_announced_size` enforces (the receive buffer of a chunk's packet)."""
    raw = sum(t.numel() * t.element_size() for _, t in named)
    return 2 * raw + 65_536 + sum(1024 + 16 * t.dim() + len(n) for n, t in named)


def _layout_tag(named: Sequence[tuple[str, torch.Tensor]], index: int) -> int:
    """The layout hash the first exchange carries (0 in later ones: checked once)."""
    return layout_tag(layout_of(named)) if index == 0 else 0


def _assemble(mean: dict[str, np.ndarray], own: dict[str, np.ndarray] | None) -> ChunkSink:
    """A sink that copies each chunk into model-sized arrays."""

    def sink(
        chunk: Chunk,
        total: dict[str, np.ndarray],
        k: int,
        values: Mapping[str, np.ndarray],
        decoded: dict[str, np.ndarray] | None,
        /,
        *,
        own_pending: bool = False,
    ) -> None:
        assert not own_pending  # all_gather gives this sink no sink_adds_own
        for key, view in chunk_views(mean, chunk).items():
            # the mean's division written straight into place (as divide_in_place rounds)
            np.divide(total[key], total[key].dtype.type(k), out=view)
        if own is not None and decoded is not None:
            for key, view in chunk_views(own, chunk).items():
                view[...] = decoded[key]

    return sink
