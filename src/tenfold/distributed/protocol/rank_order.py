"""The sum every rank forms alike: K decoded packets added in rank order 0..K-1.

The order is what makes the ranks bit-identical (floating-point addition is not
associative); :class:`RankOrderSum` keeps it while packets arrive in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tenfold.codec import PacketInfo
from tenfold.distributed.params import empty_like_wire, wire_layout, zeros_like_wire
from tenfold.distributed.protocol.packets import accumulate_from
from tenfold.errors import ConfigError

__all__ = [
    "BufferPool",
    "RankOrderSum",
    "decode_mean",
    "divide_in_place",
]


class BufferPool:
    """Accumulator-shaped arrays, kept from one synchronisation to the next.

    Fresh memory is paid for in page faults on first touch: for 25M float32 values that
    was ~0.07 s per 100 MB array with 4 ranks faulting at once on the 2-core build VM,
    as much as decoding a packet into it. A pool keeps the accumulator and the spares
    mapped; handing one out again costs one ``fill(0)`` pass, or none for a caller that
    writes every value first (:class:`RankOrderSum`).

    The pool holds the arrays given back to it (the reduce-scatter's: the result and a
    rank's own decoded shards), each the size of the model in float32 (float64 for
    float64 tensors); :meth:`clear` drops them. A different set of tensors empties it.
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
        self._free: list[dict[str, np.ndarray]] = []

    @staticmethod
    def _layout(arrays: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        return tuple((n, tuple(a.shape), a.dtype.str) for n, a in arrays.items())

    def take(
        self, named: Sequence[tuple[str, torch.Tensor]], *, zeroed: bool = True
    ) -> dict[str, np.ndarray]:
        """Arrays for ``named``: float32, float64 for float64 tensors; zeroed (+0.0), or
        with ``zeroed=False`` holding anything (for a caller that writes every value)."""
        want = wire_layout(named)
        if want != self._key:
            self._key, self._free = want, []
        if not self._free:
            return zeros_like_wire(named) if zeroed else empty_like_wire(named)
        arrays = self._free.pop()
        if zeroed:
            for a in arrays.values():
                a.fill(0)
        return arrays

    def give(self, arrays: dict[str, np.ndarray]) -> None:
        """Return arrays from :meth:`take` (ignored if the pool moved to other tensors)."""
        if self._layout(arrays) == self._key:
            self._free.append(arrays)

    def clear(self) -> None:
        """Drop every pooled array (memory back to the system)."""
        self._free = []

    @property
    def pooled_bytes(self) -> int:
        """Bytes held between rounds."""
        return sum(a.nbytes for arrays in self._free for a in arrays.values())


class RankOrderSum:
    """Sum K packets into accumulators in rank order 0..K-1, whatever order they arrive in.

    Feed packets with :meth:`offer` as they arrive and call :meth:`step` to do one unit of
    decoding work; when :attr:`done`, :attr:`acc` holds ``((0 + p_0) + p_1) + ... + p_{K-1}``
    (each ``p_r`` the decoded packet of rank r), bit for bit what :func:`decode_mean`'s
    in-order ``accumulate`` calls produce. A packet whose turn has come is decoded straight
    into the accumulators (fused decode-and-add); an early one is held as bytes until its
    turn. Arrays decoded beforehand (:meth:`offer_decoded`: a rank's own packet, decoded
    for its residual, or a guard's separate decode) are added when their turn comes: the
    same additions in the same order (``0 + v`` is exactly ``v``, and an accumulator that
    starts at +0.0 can never become -0.0).

    Args:
        named: the local tensors (names, shapes, dtypes every packet must match).
        world_size: K, the number of packets.
        pool: where the accumulator and the spares come from (and the spares go back to
            once added); a private one if None.
        threads: the codec's ``threads`` for decoding (None: every available core).
        deferred: a rank whose contribution the caller adds itself, after :attr:`acc` is
            done (fused into its next pass): its turn is skipped. Only the last rank, or
            either rank of two: ``acc + p`` is then the same sum bit for bit (for the last
            rank, the same last addition; for two, ``(0 + a) + b == (0 + b) + a``, since
            addition commutes and ``0 + x`` only turns -0.0 into +0.0, which no sum with
            another operand can tell apart).

    Attributes:
        acc: name -> accumulator (float32, or float64 for float64 tensors), shaped like
            the tensor.
        infos: rank -> the :class:`PacketInfo` of its packet, once decoded.

    Example::

        s = RankOrderSum(named, 3)
        for rank, packet in ((2, p2), (0, p0), (1, p1)):   # any arrival order
            s.offer(rank, packet)
        while s.step():
            pass
        assert s.done  # s.acc == p0 + p1 + p2, summed in that order
    """

    def __init__(
        self,
        named: Sequence[tuple[str, torch.Tensor]],
        world_size: int,
        *,
        pool: BufferPool | None = None,
        threads: int | None = None,
        deferred: int | None = None,
    ) -> None:
        if deferred is not None and not (
            0 <= deferred < world_size and (deferred == world_size - 1 or world_size == 2)
        ):
            raise ConfigError(
                f"deferred: only the last rank ({world_size - 1}) or either of two ranks "
                f"can be added after the sum, got {deferred}"
            )
        self._named = list(named)
        self._threads = threads
        self._deferred = deferred
        self.world_size = world_size
        self._pool = pool if pool is not None else BufferPool()
        # not zeroed: the first rank added writes +0.0 + its values (what adding into
        # zeros gives) instead of a zeroing pass and an add that reads it
        self.acc = self._pool.take(self._named, zeroed=False)
        self._written = False
        self.infos: dict[int, PacketInfo] = {}
        self._next = 0  # the rank whose packet is added next
        self._arrived: dict[int, Any] = {}  # rank -> packet, not decoded yet
        self._spares: dict[int, dict[str, np.ndarray]] = {}  # rank -> decoded early
        #: the rank whose packet :meth:`step` decoded last (the culprit when it raised)
        self.decoding: int | None = None

    @property
    def done(self) -> bool:
        """Whether every rank's packet has been added."""
        return self._next >= self.world_size

    def offer(self, rank: int, packet: Any) -> None:
        """Hand over rank ``rank``'s packet (bytes-like or uint8 array); no work is done."""
        if not 0 <= rank < self.world_size:
            raise ConfigError(f"rank: {rank} not in [0, {self.world_size})")
        if rank < self._next or rank in self._arrived or rank in self._spares:
            raise ConfigError(f"rank: the packet of rank {rank} was already offered")
        self._arrived[rank] = packet

    def offer_decoded(self, rank: int, arrays: dict[str, np.ndarray], info: PacketInfo) -> None:
        """Hand over rank ``rank``'s packet already decoded (e.g. this rank's own, decoded
        for error feedback): it is added when its turn comes, as a spare would be. The
        arrays stay the caller's (they never join the pool)."""
        if not 0 <= rank < self.world_size:
            raise ConfigError(f"rank: {rank} not in [0, {self.world_size})")
        if rank < self._next or rank in self._arrived or rank in self._spares:
            raise ConfigError(f"rank: the packet of rank {rank} was already offered")
        self._spares[rank] = arrays
        self.infos[rank] = info

    def step(self) -> bool:
        """Do one unit of work; False when nothing can be done before another packet comes.

        Add the next rank's packet (fused decode-and-add) or its decoded arrays. A packet
        that arrived before its turn is held as bytes until then (decoding it early would
        need a model-sized spare per early packet: memory, docs/PROTOCOL.md).

        Raises:
            tenfold.codec.PacketMismatchError / CorruptPacketError: naming the rank.
        """
        r = self._next
        if r >= self.world_size:
            return False
        if r == self._deferred:  # the caller adds it (see `deferred`)
            self._arrived.pop(r, None)
        elif r in self._arrived:
            self.decoding = r
            packet = self._arrived.pop(r)
            first = not self._written
            self.infos[r] = accumulate_from(r, packet, self.acc, self._threads, overwrite=first)
            self._written = True
        elif r in self._spares:
            spare = self._spares.pop(r)
            for name, a in self.acc.items():
                if self._written:
                    np.add(a, spare[name], out=a)
                else:  # the first: +0.0 + spare, what adding into zeros gives
                    np.add(spare[name], a.dtype.type(0), out=a)
            self._written = True
        else:
            return False
        self._next += 1
        if self.done and not self._written:  # every rank was deferred: the sum is 0
            for a in self.acc.values():
                a.fill(0)
        return True


def divide_in_place(acc: Mapping[str, np.ndarray], k: int) -> None:
    """Divide every accumulator by ``k`` (the number of packets summed), in place."""
    for a in acc.values():
        # In place and in the accumulator's dtype: the same rounding on every rank.
        np.divide(a, a.dtype.type(k), out=a)


def decode_mean(
    packets: Sequence[Any],
    named: Sequence[tuple[str, torch.Tensor]],
    pool: BufferPool | None = None,
    decoded: Sequence[tuple[dict[str, np.ndarray], PacketInfo]] | None = None,
    threads: int | None = None,
) -> tuple[dict[str, np.ndarray], list[PacketInfo]]:
    """Sum every packet into zeroed accumulators in rank order, then divide by K.

    Each packet is validated against the local tensors by ``accumulate`` (names, order,
    shapes, dtypes). Accumulators are float32 (float64 for float64 tensors), from
    ``pool`` when given. ``decoded``: every packet already decoded (``encode_and_decode``),
    added instead of decoded again (the same sums, bit for bit: see :class:`RankOrderSum`).
    """
    acc = pool.take(named) if pool is not None else zeros_like_wire(named)
    if decoded is None:
        infos = [accumulate_from(rank, packet, acc, threads) for rank, packet in enumerate(packets)]
    else:
        for arrays, _ in decoded:
            for name, a in acc.items():
                np.add(a, arrays[name], out=a)
        infos = [info for _, info in decoded]
    divide_in_place(acc, len(packets))
    return acc, infos
