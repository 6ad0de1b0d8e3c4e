"""The steps both collectives share: what a rank sends, coding it (a rank with NaN/Inf
sends a status instead, so every rank fails together), and decoding-and-adding the
packets in rank order 0..K-1 as they arrive."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch

from tenfold.codec import PacketInfo, Policy
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.distributed.errors import NonFiniteWeightsError, PeerStatusError
from tenfold.distributed.params import zeros_like_wire
from tenfold.distributed.protocol.guard import sum_of_squares
from tenfold.distributed.protocol.packets import accumulate_from
from tenfold.distributed.protocol.rank_order import BufferPool, RankOrderSum
from tenfold.distributed.protocol.transport import Arrivals
from tenfold.distributed.stats import SyncStats
from tenfold.errors import ConfigError

__all__ = [
    "Cursor",
    "Outgoing",
    "RankOrderFeed",
    "Summed",
    "SyncResult",
    "encode_or_report",
    "sum_in_rank_order",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Outgoing:
    """What one rank contributes to one synchronisation (computed by its sender).

    Attributes:
        arrays: the values to code, name -> array in the wire dtype (weights, or ``d + e``).
        policy: the policy, the same on every rank.
        seed: this rank's sampling seed for this round (None: the policy's own).
        recode_seed: reduce-scatter: the seed of this rank's re-coded shard.
        grad_rms: per-tensor loss-gradient RMS (GradientRMS), keyed by tensor name.
        scale: per-tensor step hints (RMS of the fresh delta), keyed by tensor name.
        tag: the hash of the rank's reference, checked against every rank's (None: no check).
        keep_own: return this rank's packet(s) decoded (its error feedback).
        residual2: reduce-scatter: the second-stage residual of the shard it reduces.
        recode_feedback: reduce-scatter: add ``residual2`` before re-coding and return
            what was coded and its decoding (the next second-stage residual).
        values: all-gather: computes one chunk's values to code (part key -> array) on
            the coding thread, so a whole-model ``d + e`` never exists; ``arrays`` then
            holds the weights (for the NaN/Inf check). None: views of ``arrays``.
    """

    arrays: Mapping[str, np.ndarray]
    policy: Policy
    seed: int | None = None
    recode_seed: int | None = None
    grad_rms: Mapping[str, float] | None = None
    scale: Mapping[str, float] | None = None
    tag: int | None = None
    keep_own: bool = False
    residual2: Mapping[str, np.ndarray] | None = None
    recode_feedback: bool = False
    values: Callable[[Any], dict[str, np.ndarray]] | None = None


@dataclass
class SyncResult:
    """What one synchronisation gives a rank.

    Attributes:
        mean: name -> the mean over ranks (arrays of the caller's pool: give them back);
            None when the all-gather handed each chunk to the caller's sink instead.
        own: this rank's packet(s) decoded into full-size arrays (``keep_own``), else None.
        recoded: reduce-scatter with ``recode_feedback``: ``(y, decoded(y))`` of this
            rank's shard, piece key -> 1-D arrays; else None.
        packets: the packets every rank decoded into the mean, in rank order (all-gather:
            every rank's; reduce-scatter: the reduced shards), for the hash chain.
        sent: the packets this rank coded (all-gather: one; reduce-scatter: one per shard,
            then its re-coded shard).
        stats: this rank's :class:`SyncStats`.
    """

    mean: dict[str, np.ndarray] | None
    own: dict[str, np.ndarray] | None
    recoded: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None
    packets: list[Any]
    sent: list[bytes]
    stats: SyncStats


def encode_or_report(
    encode: Callable[[], T], arrays: Mapping[str, np.ndarray], report: Callable[[], object]
) -> T:
    """``encode()``; if it fails on NaN/Inf, ``report()`` (send the non-finite status in
    place of the sizes), then raise :class:`NonFiniteWeightsError` naming the tensors.

    The codec refuses NaN/Inf itself (ValueError), so finiteness is only checked when
    coding failed: no extra pass over the values when they are healthy.
    """
    try:
        return encode()
    except ValueError:
        bad = [n for n, a in arrays.items() if not np.isfinite(a).all()]
        if not bad:
            raise
        fail_nonfinite(report, bad)


def fail_nonfinite(report: Callable[[], object], bad: Sequence[str]) -> NoReturn:
    """Send the status with ``report()`` and raise with every rank's statuses."""
    try:
        report()
    except PeerStatusError as exc:
        raise NonFiniteWeightsError(exc.statuses, bad) from None
    raise AssertionError("unreachable: own status was not reported")  # pragma: no cover


@dataclass
class Cursor:
    """Whose packet was being decoded (the culprit when decoding raised); None: ask the
    rank-order sum."""

    rank: int | None


@dataclass
class Summed:
    """The rank-order sum of K packets: the accumulators (not divided yet), every
    packet's info, each contribution's sum of squares (guard on, else zeros) and the
    packets by rank."""

    acc: dict[str, np.ndarray]
    infos: dict[int, PacketInfo]
    sumsq: list[float]
    packets: list[Any]


class RankOrderFeed:
    """The rank-order sum of one set of K packets, fed as they arrive (see
    :func:`sum_in_rank_order`, which is :meth:`feed` then :meth:`finish`)."""

    def __init__(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        world: int,
        *,
        decoded: Mapping[int, tuple[dict[str, np.ndarray], PacketInfo]] | None = None,
        guard: bool = False,
        pool: BufferPool | None = None,
        threads: int | None = None,
        cursor: Cursor | None = None,
        deferred: tuple[int, PacketInfo] | None = None,
    ) -> None:
        self._named = named
        self._decoded = decoded or {}
        self._guard = guard
        self._threads = threads
        self.cursor = cursor
        # (rank, its packet's info): a contribution the caller adds after the sum
        # (RankOrderSum's `deferred`); its packet is kept but never decoded here
        self._deferred = None if deferred is None else deferred[0]
        self.summer = RankOrderSum(
            named, world, pool=pool, threads=threads, deferred=self._deferred
        )
        if deferred is not None:
            self.summer.infos[deferred[0]] = deferred[1]
        self.sumsq = [0.0] * world
        self.packets: list[Any] = [None] * world
        #: thread CPU and wall seconds spent decoding and adding, in this thread
        self.cpu_seconds = 0.0
        self.seconds = 0.0
        with self._decoding():
            for peer, (arrays, info) in self._decoded.items():
                if guard:
                    self.sumsq[peer] = sum_of_squares(arrays)
                self.summer.offer_decoded(peer, arrays, info)

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            yield
        except (CorruptPacketError, PacketMismatchError):
            if self.cursor is not None and self.cursor.rank is None:
                self.cursor.rank = self.summer.decoding
            raise
        finally:
            self.cpu_seconds += time.thread_time() - c0
            self.seconds += time.perf_counter() - t0

    def take(self, peer: int, packet: Any) -> None:
        """Hand over rank ``peer``'s packet (decoded alone at once when the guard is on)."""
        self.packets[peer] = packet
        if peer in self._decoded or peer == self._deferred:
            return
        if not self._guard:
            self.summer.offer(peer, packet)
            return
        with self._decoding():  # each contribution decoded alone, for its sum of squares
            if self.cursor is not None:
                self.cursor.rank = peer
            spare = zeros_like_wire(self._named)
            info = accumulate_from(peer, packet, spare, self._threads)
            self.sumsq[peer] = sum_of_squares(spare)
            self.summer.offer_decoded(peer, spare, info)

    def step(self) -> bool:
        """One unit of decoding work; False when none can be done before another packet."""
        if self.cursor is not None:
            self.cursor.rank = None
        with self._decoding():
            return self.summer.step()

    def feed(self, arrivals: Arrivals) -> None:
        """Take every packet of ``arrivals``, decoding in rank order while the next ones
        are on the wire (the network is waited for only when nothing can be decoded)."""
        while not arrivals.done:
            item = arrivals.poll()
            if item is None:
                if self.step():
                    continue
                item = arrivals.get()
            self.take(*item)

    def finish(self) -> Summed:
        """Decode what is left (every packet must have been taken)."""
        while not self.summer.done:
            if not self.step():  # pragma: no cover - a packet was never taken
                raise ConfigError("rank-order sum: a packet is missing")
        return Summed(self.summer.acc, self.summer.infos, self.sumsq, self.packets)


def sum_in_rank_order(
    named: Sequence[tuple[str, torch.Tensor]],
    world: int,
    arrivals: Arrivals,
    *,
    local: Mapping[int, Any],
    decoded: Mapping[int, tuple[dict[str, np.ndarray], PacketInfo]] | None = None,
    guard: bool = False,
    pool: BufferPool | None = None,
    threads: int | None = None,
    cursor: Cursor | None = None,
) -> Summed:
    """Decode and add K packets in rank order 0..K-1 while the peers' packets arrive.

    Args:
        named: the layout every packet must match (names, shapes, wire dtypes).
        world: K.
        arrivals: the packets still to come (decoded while the next are on the wire;
            the network is waited for only when nothing can be decoded).
        local: packets already in hand (this rank's own; every packet, simulated).
        decoded: packets among those already decoded (error feedback decoded them):
            added as they are, not decoded again.
        guard: decode each contribution alone, for its sum of squares.
        pool: where the accumulators come from (a private one if None).
        threads: the codec's threads.
        cursor: set to the rank whose packet failed to decode, when one does.

    Raises:
        tenfold.codec.PacketMismatchError / CorruptPacketError: naming the sender.
    """
    feed = RankOrderFeed(
        named, world, decoded=decoded, guard=guard, pool=pool, threads=threads, cursor=cursor
    )
    for peer, packet in local.items():
        feed.take(peer, packet)
    feed.feed(arrivals)
    return feed.finish()
