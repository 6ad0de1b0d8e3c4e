"""What the protocol needs of a transport, and the in-process one the simulation uses.

A :class:`Transport` is one rank's view of the group: small agreement messages (sizes,
hashes, statuses, verdicts), bulk exchanges whose packets arrive one by one
(:class:`Arrivals`: ``poll()`` never blocks, ``get()`` waits), so the protocol decodes
one packet while the next is on the wire, and the pipelined all-gather's
:class:`ChunkStream`, which sends each chunk as soon as it is coded. :class:`tenfold.distributed.transport.TorchTransport`
implements it over torch.distributed; :class:`LocalArrivals` hands over packets already
in this process (K simulated workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "Arrival",
    "Arrivals",
    "ChunkStream",
    "LocalArrivals",
    "ShardStream",
    "SizeRows",
    "Transport",
]

#: ``(sender rank, packet bytes)``
Arrival = tuple[int, Any]

#: every rank's ``(sizes, tags, layouts)``, in rank order
SizeRows = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class ChunkStream(Protocol):
    """Chunks 1..count of the pipelined all-gather (chunk 0's sizes are the blocking first
    exchange): per chunk, every rank's size row and packet, each sent to every peer as
    soon as the chunk is coded, without waiting for any agreement; the receives are
    posted ahead, so a chunk travels in one trip. Every rank sends all ``count`` chunks (on
    a failure, the rest with a status) and calls :meth:`close`, so no message is left for
    the next sync."""

    #: chunks this rank has sent so far
    sent: int
    #: packet bytes this rank has put on the wire so far
    sent_bytes: int

    def send(self, packet: bytes | None, tag: int, *, status: int = 0) -> None:
        """This rank's next chunk: its packet and reference tag, or a negative status (no
        packet: this rank cannot take part). Never blocks on the network."""
        ...

    def ready(self, index: int) -> bool:
        """Whether chunk ``index`` (0-based) of every rank is in (:meth:`wait` won't block)."""
        ...

    def wait(self, index: int) -> tuple[SizeRows, dict[int, Any]]:
        """Every rank's ``(sizes, tags, layouts)`` of chunk ``index`` (this rank must have
        sent it; a negative size is a status) and every peer's packet, by rank;
        CommunicationError when a peer is gone."""
        ...

    def close(self) -> None:
        """Wait for every chunk in and out (all ``count`` must have been sent)."""
        ...


class Arrivals(Protocol):
    """The packets of one bulk exchange as they arrive; a context manager whose exit
    completes the exchange (also when the consumer raised, so no peer is left waiting)."""

    #: seconds the consumer was blocked in :meth:`get` and in the exit
    wait_seconds: float
    #: packet bytes this rank puts on the wire / receives in this exchange
    sent_bytes: int
    received_bytes: int

    @property
    def done(self) -> bool:
        """Whether every expected packet has been returned."""
        ...

    def poll(self) -> Arrival | None:
        """The next packet if it has arrived, else None (never blocks)."""
        ...

    def get(self) -> Arrival:
        """The next packet, waiting for it."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ShardStream(Arrivals, Protocol):
    """:class:`Arrivals` whose transfers are posted one step at a time (the pipelined
    reduce-scatter: a shard packet goes out as soon as it is coded and its size agreed)."""

    def post(self, dest: int, packet: bytes, source: int, size: int) -> None:
        """Send ``packet`` to rank ``dest``, receive ``size`` bytes from rank ``source``
        (this rank on either side: nothing moves); never blocks on the network."""
        ...


class Transport(Protocol):
    """One rank's side of the group, as the protocol uses it (no torch types)."""

    rank: int
    world_size: int

    def exchange_sizes(
        self, size: int, tag: int, *, status: int = 0, layout: int = 0
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Every rank's packet size, tag and layout hash; raises PeerStatusError on a
        negative status."""
        ...

    def chunk_stream(self, capacities: Sequence[int], *, lead: int) -> ChunkStream:
        """A :class:`ChunkStream` of ``len(capacities)`` chunks (``capacities[i]``: the
        largest packet of chunk i, bytes); packet receives posted ``lead`` chunks ahead."""
        ...

    def exchange_size_matrix(
        self, sizes: Sequence[int], tag: int, layout: int, *, status: int = 0
    ) -> tuple[list[list[int]], tuple[int, ...], tuple[int, ...]]:
        """Every rank's P shard packet sizes, reference tag and layout tag."""
        ...

    def exchange_verdicts(
        self, verdict: int, culprit: int, sumsq: Sequence[float]
    ) -> list[list[float]]:
        """Every reducer's ``[verdict, culprit, sumsq_0..sumsq_{P-1}]``."""
        ...

    def gather_payloads(self, payload: bytes) -> list[bytes]:
        """Every rank's small payload, in rank order (failure paths only)."""
        ...

    def all_gather(self, packet: bytes, sizes: Sequence[int]) -> Arrivals:
        """Send ``packet`` to every rank; the peers' packets arrive."""
        ...

    def scatter(self, packets: Sequence[bytes], matrix: Sequence[Sequence[int]]) -> Arrivals:
        """Send ``packets[j]`` to rank j; the packets of this rank's shard arrive."""
        ...

    def shard_stream(self) -> ShardStream:
        """Shard packets sent and received step by step (:class:`ShardStream`)."""
        ...


class LocalArrivals:
    """:class:`Arrivals` over packets already in hand (the simulated workers').

    Args:
        items: ``(rank, packet)`` pairs, in the order they are handed out.
        sent_bytes: what the simulated rank would put on the wire (for its stats).
        received_bytes: what it would receive.
    """

    def __init__(
        self, items: Sequence[Arrival] = (), *, sent_bytes: int = 0, received_bytes: int = 0
    ) -> None:
        self._items = list(items)
        self._next = 0
        self.wait_seconds = 0.0
        self.sent_bytes = sent_bytes
        self.received_bytes = received_bytes

    @property
    def done(self) -> bool:
        return self._next >= len(self._items)

    def poll(self) -> Arrival | None:
        return None if self.done else self.get()

    def get(self) -> Arrival:
        if self.done:
            raise StopIteration
        item = self._items[self._next]
        self._next += 1
        return item

    def __enter__(self) -> LocalArrivals:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
