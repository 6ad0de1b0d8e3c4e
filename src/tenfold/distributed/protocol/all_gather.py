"""The all-gather: every rank codes its packets (one per chunk of the model), every packet
goes to every rank, and every rank decodes all K of each chunk in rank order, divides by
K: the same bits everywhere.

Pipelined (docs/PROTOCOL.md): a coding thread codes chunk c+1 (and decodes this rank's own
packet of it, for the residual) while chunk c is on the wire, and chunk c-1's packets are
decoded into the accumulator while chunk c travels; each finished chunk goes to the
caller's ``sink`` and its buffers are dropped, so no whole-model temporary exists.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tenfold.codec import PacketInfo
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
from tenfold.distributed.protocol.rank_order import BufferPool, divide_in_place
from tenfold.distributed.protocol.reduce_scatter import raise_layout_mismatch
from tenfold.distributed.protocol.shards import layout_of, layout_tag
from tenfold.distributed.protocol.steps import (
    Outgoing,
    RankOrderFeed,
    SyncResult,
    fail_nonfinite,
)
from tenfold.distributed.protocol.transport import Transport
from tenfold.distributed.stats import packet_stats

__all__ = ["ChunkSink", "Coded", "all_gather", "encode", "encode_chunk"]

#: ``sink(chunk, mean, values, own)``: one chunk's mean (part key -> array, divided by
#: K), the values this rank coded for it and their decoding (None without keep_own).
ChunkSink = Callable[
    [Chunk, dict[str, np.ndarray], Mapping[str, np.ndarray], dict[str, np.ndarray] | None], None
]


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


@dataclass
class _Pending:
    """A chunk whose packets are (being) decoded."""

    index: int
    feed: RankOrderFeed
    coded: Coded
    packets: list[Any] = field(default_factory=list)


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
) -> SyncResult:
    """One all-gather synchronisation of this rank (docs/PROTOCOL.md).

    Code ``send`` chunk by chunk on a coding thread; exchange each chunk's sizes (the
    first exchange also carries every rank's reference tag, layout hash and NaN/Inf
    status, so a NaN/Inf rank, a rank on another reference or with other tensors fail on
    every rank there, before anything is applied); exchange the packets, decoding the
    previous chunk's in rank order meanwhile; apply the guard (``ratio``); divide by K.

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

    A failure after the first chunk was applied (a corrupt packet, a dead peer) leaves
    the earlier chunks applied, alike on every rank that saw it.
    """
    rank, world = transport.rank, transport.world_size
    t_start = time.perf_counter()
    plan = chunk_plan([(n, t.numel()) for n, t in named], chunk_values)
    layouts = [chunk_named(named, chunk) for chunk in plan]
    assembled: dict[str, np.ndarray] | None = None
    own_full: dict[str, np.ndarray] | None = None
    if sink is None:
        assembled = pool.take(named) if pool is not None else zeros_like_wire(named)
        own_full = zeros_like_wire(named) if send.keep_own else None
        sink = _assemble(assembled, own_full)
    guard = ratio is not None
    held: list[tuple[Chunk, dict[str, np.ndarray], Mapping[str, np.ndarray], Any]] = []
    sumsq = [0.0] * world
    infos: list[PacketInfo] = []
    all_packets: list[Any] = []
    sizes_total = [0] * world
    sent = received = 0
    t_comm = t_decode = c_decode = t_encode = c_encode = 0.0

    def finish(p: _Pending) -> None:
        nonlocal t_decode, c_decode
        summed = p.feed.finish()
        c0, t0 = time.thread_time(), time.perf_counter()
        divide_in_place(summed.acc, world)
        own = p.coded.own[0] if p.coded.own is not None else None
        if guard:
            for r, s in enumerate(summed.sumsq):
                sumsq[r] += s
            held.append((plan[p.index], summed.acc, p.coded.values, own))
        else:
            sink(plan[p.index], summed.acc, p.coded.values, own)
        infos.append(summed.infos[rank])
        all_packets.extend(summed.packets)
        t_decode += p.feed.seconds + time.perf_counter() - t0
        c_decode += p.feed.cpu_seconds + time.thread_time() - c0

    # NaN/Inf anywhere is found before the first exchange: nothing is applied then
    bad = nonfinite_arrays(send.arrays) if len(plan) > 1 else []
    coder = _Coder(send, plan, threads) if not bad else None
    pending: _Pending | None = None
    try:
        for i, layout in enumerate(layouts):
            if bad:
                fail_nonfinite(lambda: _report(transport), bad)
            assert coder is not None
            try:
                coded = coder.get(i)
            except ValueError:  # the codec refuses NaN/Inf
                values = send.values(plan[i]) if send.values is not None else send.arrays
                failing = nonfinite_arrays(values)
                if not failing:
                    raise
                fail_nonfinite(lambda: _report(transport), failing)
            t_encode += coded.seconds
            c_encode += coded.cpu_seconds
            t1 = time.perf_counter()
            try:
                sizes, tags, layout_tags = transport.exchange_sizes(
                    len(coded.blob), send.tag or 0, layout=_layout_tag(named, i)
                )
            except PeerStatusError as exc:
                raise NonFiniteWeightsError(exc.statuses) from None
            t_comm += time.perf_counter() - t1
            if len(set(layout_tags)) > 1:
                desc = layout_of(named)
                raise_layout_mismatch(desc, transport.gather_payloads(json.dumps(desc).encode()))
            if send.tag is not None and len(set(tags)) > 1:
                raise ReferenceMismatchError(tags, round)
            check_announced_sizes(sizes, layout)
            for r, s in enumerate(sizes):
                sizes_total[r] += s
            decoded = {rank: coded.own} if coded.own is not None else None
            feed = RankOrderFeed(layout, world, decoded=decoded, guard=guard, threads=threads)
            feed.take(rank, coded.blob)
            with transport.all_gather(coded.blob, sizes) as arrivals:
                if pending is not None:  # the previous chunk, while this one travels
                    finish(pending)
                    pending = None
                feed.feed(arrivals)
                current = _Pending(i, feed, coded)
                if i == len(plan) - 1:
                    finish(current)
                else:
                    pending = current
            t_comm += arrivals.wait_seconds
            sent += arrivals.sent_bytes
            received += arrivals.received_bytes
    finally:
        if coder is not None:
            coder.close()
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
        encode_seconds=t_encode,
        comm_seconds=t_comm,
        decode_seconds=t_decode,
        bytes_sent=sent,
        bytes_received=received,
        collective="all-gather",
        values_encoded=n_all,
        values_decoded=world * n_all,
        encode_cpu_seconds=c_encode,
        decode_cpu_seconds=c_decode,
        wall_seconds=time.perf_counter() - t_start,
        chunks=len(plan),
    )
    return SyncResult(assembled, own_full, None, all_packets, [], stats)


def _report(transport: Transport) -> object:
    return transport.exchange_sizes(0, 0, status=STATUS_NONFINITE)


def _layout_tag(named: Sequence[tuple[str, torch.Tensor]], index: int) -> int:
    """The layout hash the first exchange carries (0 in later ones: checked once)."""
    return layout_tag(layout_of(named)) if index == 0 else 0


def _assemble(mean: dict[str, np.ndarray], own: dict[str, np.ndarray] | None) -> ChunkSink:
    """A sink that copies each chunk into model-sized arrays."""

    def sink(
        chunk: Chunk,
        acc: dict[str, np.ndarray],
        values: Mapping[str, np.ndarray],
        decoded: dict[str, np.ndarray] | None,
    ) -> None:
        for key, view in chunk_views(mean, chunk).items():
            view[...] = acc[key]
        if own is not None and decoded is not None:
            for key, view in chunk_views(own, chunk).items():
                view[...] = decoded[key]

    return sink
