"""Exchange variable-length byte payloads between ranks, as uint8 tensors (never pickle).

Every rank contributes one payload (a tenfold packet) and receives every other rank's,
exactly as many bytes as were sent (no padding). Two steps:

1. :func:`exchange_sizes` - ``all_gather`` of one int64 per rank: the payload sizes. A
   negative size is a *status*: the rank has nothing valid to send (see
   :data:`STATUS_NONFINITE`). Every rank learns it at the same point of the protocol, so
   everyone fails together instead of leaving the healthy ranks blocked in the next
   collective until the timeout.
2. :class:`PacketTransfer` - a ring all-gather of the exact payloads, point-to-point: in
   step ``s`` (1..K-1) rank ``i`` receives the payload of rank ``i+s`` from its
   neighbour ``i+1`` and forwards it to its other neighbour ``i-1`` (except the last
   one, which is that neighbour's own). Every link carries one payload per step, each
   rank's uplink and downlink are busy at full rate, and every connection stays the same
   warm TCP stream for the whole exchange. Measured on the shaped 1 Gbit/s switch of
   ``benchmarks/netns.py`` (4 ranks, 9.8 MB each, line rate 0.25 s): this ring 0.26 s; a
   schedule that receives from a new peer at each step 0.38 s; every peer at once 0.46 s.
   Payloads arrive one after the other, in :func:`receive_order` (rank ``i`` gets
   ``i+1, i+2, ...``: the direction that best suits the averager's rank-order sum), so the
   consumer decodes one while the next is on the wire.

A background thread does the receiving and forwarding: it posts each step's receive as
soon as the previous payload is in and forwards that payload at once, so the links never
idle while the consumer is busy decoding; gloo's own I/O thread moves the bytes, and
``Work.wait`` releases the GIL.

:func:`all_gather_bytes` runs both steps and returns every payload at once.

Backends: gloo (CPU) is what runs and is tested here. Other backends (NCCL) need device
buffers and may deadlock on P2P operations issued from two threads, so for them each rank
sends its payload to every peer directly, every send and receive posted at once with
``batch_isend_irecv`` from the calling thread, and the payloads are copied to the CPU on
arrival (documented, not tested: there is no GPU on the build machines).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "PACKET_TAG",
    "STATUS_NONFINITE",
    "CommunicationError",
    "Exchanged",
    "PacketTransfer",
    "PeerStatusError",
    "all_gather_bytes",
    "all_gather_row",
    "broadcast_bytes",
    "exchange_sizes_and_tags",
    "comm_device",
    "exchange_sizes",
    "is_distributed",
    "local_rank_or_zero",
    "receive_order",
    "translate_comm_errors",
]

#: Size sent instead of a payload length by a rank whose weights are not finite.
STATUS_NONFINITE = -1

#: Tag of the point-to-point packet messages (gloo matches sends to receives by tag and
#: peer, in posting order; collectives use their own slots, so any fixed value works).
PACKET_TAG = 0x7E4F

_STATUS_TEXT = {STATUS_NONFINITE: "has non-finite weights (NaN or Inf)"}


class PeerStatusError(RuntimeError):
    """One or more ranks reported a failure status instead of a payload.

    Raised on *every* rank, so all of them stop at the same collective. ``statuses`` maps
    the group rank to its (negative) status code.
    """

    def __init__(self, statuses: dict[int, int]) -> None:
        self.statuses = dict(statuses)
        parts = [
            f"rank {r} {_STATUS_TEXT.get(code, f'reported status {code}')}"
            for r, code in sorted(statuses.items())
        ]
        super().__init__("synchronisation aborted: " + "; ".join(parts))


class CommunicationError(RuntimeError):
    """A collective failed: a peer died (connection closed/reset) or the timeout expired.

    The message keeps the backend's own reason, without its source path and boilerplate.
    """


@contextlib.contextmanager
def translate_comm_errors(what: str) -> Iterator[None]:
    """Re-raise backend errors inside the block as :class:`CommunicationError`.

    Gloo reports a dead peer as ``RuntimeError: [.../pair.cc:553] Connection closed by
    peer [...]. This is typically caused by ...``; this keeps the middle part and says
    what it means for us.
    """
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, (CommunicationError, PeerStatusError)):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's [file:line] prefix
        text = text.split(". This is typically")[0].rstrip(". ")
        raise CommunicationError(
            f"{what} failed ({text}): another rank has died or is stuck; see its error"
        ) from exc


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether there is anyone to talk to: torch.distributed is available, initialised,
    and ``group`` (None: the default group) has more than one rank. The averagers do
    nothing (and send nothing) otherwise."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def local_rank_or_zero() -> int:
    """This process's rank in the default group, or 0 without one (for the stats of a
    sync that did nothing)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device collectives of ``group`` need: CUDA for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_row(
    row: Sequence[int | float],
    *,
    dtype: torch.dtype = torch.int64,
    group: dist.ProcessGroup | None = None,
    what: str = "exchanging a few numbers",
) -> list[list[Any]]:
    """Every rank's ``row`` (the same length on every rank), in group rank order.

    The small agreement messages (sizes, hashes, digests, verdicts) all take this path:
    one ``all_gather`` of an int64 (or float64) tensor on the group's device
    (:func:`comm_device`: NCCL needs CUDA tensors), failures translated into
    :class:`CommunicationError` saying ``what`` was being done. Collective.

    Example::

        rows = all_gather_row([len(blob), tag])   # [[size_0, tag_0], [size_1, tag_1], ...]
    """
    mine = torch.tensor(list(row), dtype=dtype, device=comm_device(group))
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    with translate_comm_errors(what):
        dist.all_gather(gathered, mine, group=group)
    return [g.cpu().tolist() for g in gathered]


def exchange_sizes(
    size: int, *, group: dist.ProcessGroup | None = None, status: int = 0
) -> tuple[int, ...]:
    """All-gather one payload size (bytes) per rank, or raise if any rank sent a status.

    Args:
        size: this rank's payload size in bytes (>= 0). Ignored when ``status`` is negative.
        group: the process group (``None``: the default group).
        status: 0, or a negative code (e.g. :data:`STATUS_NONFINITE`) sent instead of
            ``size`` to tell every rank this one cannot take part.

    Returns:
        Every rank's payload size, in group rank order.

    Raises:
        PeerStatusError: on every rank, when any rank sent a negative status.
        CommunicationError: a peer is gone or the group's timeout expired.
        ValueError: a positive ``status`` or a negative ``size``.
    """
    sizes, _ = exchange_sizes_and_tags(size, 0, group=group, status=status)
    return sizes


def exchange_sizes_and_tags(
    size: int, tag: int, *, group: dist.ProcessGroup | None = None, status: int = 0
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:func:`exchange_sizes`, with one more int64 per rank riding along (a "tag").

    The averager's delta mode sends a hash of the shared model it holds, so that a rank
    whose copy differs is caught in the same collective, before anything else is sent.

    Returns:
        ``(sizes, tags)``, each in group rank order.
    """
    if status > 0:
        raise ValueError(f"status must be 0 or negative, got {status}")
    if status == 0 and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    pairs = all_gather_row(
        [status if status < 0 else size, tag], group=group, what="exchanging packet sizes"
    )
    sizes = tuple(int(p[0]) for p in pairs)
    failed = {r: s for r, s in enumerate(sizes) if s < 0}
    if failed:
        raise PeerStatusError(failed)
    return sizes, tuple(int(p[1]) for p in pairs)


def receive_order(rank: int, world_size: int) -> tuple[int, ...]:
    """Whose payloads ``rank`` gets, in arrival order: ``rank+1, rank+2, ..., rank-1`` (mod K).

    The ring's step ``s`` brings rank ``i`` the payload of rank ``i+s``, via ``i+1``.
    Rank 0 thus gets 1, 2, ..., K-1: exactly the order of the sum.

    >>> receive_order(1, 4)
    (2, 3, 0)
    """
    return tuple((rank + s) % world_size for s in range(1, world_size))


_Item = tuple[int, np.ndarray]


class PacketTransfer:
    """Every rank's payload to every rank, over a ring of point-to-point transfers.

    Use as a context manager after :func:`exchange_sizes` (every rank must construct it
    with the same ``sizes``). On entry this rank's payload is posted to rank ``i-1`` and
    the receiving-and-forwarding thread starts; iterate (or call
    :meth:`get` / :meth:`poll`) to get ``(owner, payload)`` pairs in
    :func:`receive_order`. The exit completes the exchange: it receives and forwards
    whatever was not read yet and waits until rank ``i-1`` has every byte sent to it, so a rank never leaves while the ring still needs it (also when the consumer
    raised, e.g. on a packet that does not match: every rank then raises the same error
    after a complete exchange, and the group stays usable).

    Args:
        payload: this rank's bytes; its length must be ``sizes[rank]``.
        sizes: every rank's payload size (from :func:`exchange_sizes`).
        group: the process group (``None``: the default group).

    Attributes:
        order: the ranks whose payloads this rank gets, in arrival order.
        wait_seconds: time the caller spent blocked in :meth:`get` and in the exit (s):
            the communication time the consumer's own work did not hide.

    Payloads are read-only ``uint8`` numpy arrays (zero-copy views of the received CPU
    tensors). Zero-length payloads are not transferred; they arrive as empty arrays.

    Example (each rank)::

        sizes = exchange_sizes(len(blob))
        with PacketTransfer(blob, sizes) as transfer:
            for owner, packet in transfer:
                ...  # decode packet; the next one is already on the wire
    """

    def __init__(
        self,
        payload: bytes | bytearray | memoryview | np.ndarray,
        sizes: Sequence[int],
        *,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.sizes = tuple(int(s) for s in sizes)
        if len(self.sizes) != self.world:
            raise ValueError(f"sizes: {len(self.sizes)} entries for {self.world} ranks")
        data = np.ascontiguousarray(
            payload if isinstance(payload, np.ndarray) else np.frombuffer(payload, np.uint8)
        )
        if data.dtype != np.uint8 or data.ndim != 1 or data.size != self.sizes[self.rank]:
            raise ValueError(
                f"payload: {data.size} bytes, but sizes[{self.rank}] = {self.sizes[self.rank]}"
            )
        self.order = receive_order(self.rank, self.world)
        self.device = comm_device(group)
        self.wait_seconds = 0.0
        self._data = data
        self._send_works: list[dist.Work] = []
        self._send_buf: torch.Tensor | None = None
        self._queue: queue.SimpleQueue[_Item | BaseException] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._source = self._sink = self.rank
        self._received = 0
        self._failed: BaseException | None = None

    # -- lifecycle

    def __enter__(self) -> PacketTransfer:
        """Post every send; start receiving (see the class docstring)."""
        t0 = time.perf_counter()
        try:
            if self.device.type == "cpu" and dist.get_backend(self.group) == "gloo":
                self._start_gloo()
            else:
                self._start_batched()
        finally:
            self.wait_seconds += time.perf_counter() - t0
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish the exchange: drain unread payloads, wait for this rank's sends."""
        if exc is not None and not isinstance(exc, Exception):
            return  # KeyboardInterrupt/SystemExit: leave now, do not wait for peers
        t0 = time.perf_counter()
        try:
            # After a communication error the group is broken: waiting could only run
            # into the timeout. Otherwise, complete the exchange: the peers need our
            # receives and forwards (the ring stops at a rank that stops forwarding).
            if self._failed is None and not isinstance(exc, CommunicationError):
                while not self.done:
                    self.get()
                self._join()  # its forwards are all posted once it has ended
                with translate_comm_errors("exchanging packets"):
                    for work in self._send_works:
                        work.wait()
        except CommunicationError:
            if exc is None:
                raise
            # Already raising the consumer's error; the broken group will surface next time.
        finally:
            if self.done or self._failed is not None:
                self._join()
            self.wait_seconds += time.perf_counter() - t0
            self._send_works.clear()
            self._send_buf = None

    def _join(self) -> None:
        # Only called once the receiving thread has queued its last item, so this returns
        # at once; joining it means it never outlives the exchange (a daemon thread still
        # inside torch code at interpreter exit aborted processes in a stress test).
        if self._thread is not None:
            self._thread.join()

    def _send_tensor(self) -> torch.Tensor:
        # Gloo only reads a send buffer, so wrapping the (read-only) bytes is safe; torch
        # warns about any non-writable buffer, hence the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            send = (
                torch.from_numpy(self._data)
                if self._data.size
                else torch.empty(0, dtype=torch.uint8)
            )
        return send.to(self.device)

    def _start_gloo(self) -> None:
        self._source = (self.rank + 1) % self.world  # receive from
        self._sink = (self.rank - 1) % self.world  # send and forward to
        if self._data.size:
            self._send_buf = self._send_tensor()
            self._send_works.append(self._isend(self._send_buf, self._sink))
        self._thread = threading.Thread(
            target=self._ring, name=f"tenfold-ring-r{self.rank}", daemon=True
        )
        self._thread.start()

    def _isend(self, tensor: torch.Tensor, dst: int) -> dist.Work:
        # Gloo moves the bytes once ``dst`` has posted the matching receive (a rendezvous)
        # and keeps the sends to one peer in posting order, as the receives are matched.
        with translate_comm_errors("exchanging packets"):
            work = dist.isend(tensor, group=self.group, group_dst=dst, tag=PACKET_TAG)
        assert work is not None
        return work

    def _ring(self) -> None:
        """Receiving thread: step by step, receive from ``rank+1``, forward to ``rank-1``."""
        try:
            for step, owner in enumerate(self.order, start=1):
                n = self.sizes[owner]  # every rank knows it: zero-length ones are skipped
                buf = torch.empty(n, dtype=torch.uint8)
                if n:
                    with translate_comm_errors("exchanging packets"):
                        work = dist.irecv(
                            buf, group=self.group, group_src=self._source, tag=PACKET_TAG
                        )
                        assert work is not None
                        work.wait()  # releases the GIL; bounded by the group's timeout
                    if step < self.world - 1:  # the last one is the sink's own payload
                        self._send_works.append(self._isend(buf, self._sink))
                arr = buf.numpy()
                arr.setflags(write=False)
                self._queue.put((owner, arr))
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def _start_batched(self) -> None:
        """Non-gloo backends: every send and receive posted at once, from this thread."""
        ops: list[dist.P2POp] = []
        send = self._send_tensor() if self._data.size else None
        self._send_buf = send
        if send is not None:
            for peer in self.order:
                ops.append(
                    dist.P2POp(dist.isend, send, group=self.group, group_peer=peer, tag=PACKET_TAG)
                )
        bufs: list[tuple[int, torch.Tensor, int]] = []
        for peer in self.order:
            buf = torch.empty(self.sizes[peer], dtype=torch.uint8, device=self.device)
            if self.sizes[peer]:
                bufs.append((peer, buf, len(ops)))
                ops.append(
                    dist.P2POp(dist.irecv, buf, group=self.group, group_peer=peer, tag=PACKET_TAG)
                )
        with translate_comm_errors("exchanging packets"):
            works = dist.batch_isend_irecv(ops) if ops else []
        n_send = 0 if send is None else len(self.order)
        self._send_works = list(works[:n_send])
        recv_work = {peer: works[i] for peer, _, i in bufs}
        recv_buf = {peer: buf for peer, buf, _ in bufs}

        def deliver() -> None:
            try:
                for peer in self.order:
                    if peer in recv_work:
                        with translate_comm_errors("exchanging packets"):
                            recv_work[peer].wait()
                    arr = recv_buf.get(peer, torch.empty(0, dtype=torch.uint8)).cpu().numpy()
                    arr.setflags(write=False)
                    self._queue.put((peer, arr))
            except BaseException as exc:
                self._queue.put(exc)

        deliver()  # in order, on this thread: the payloads are then all queued

    # -- consuming

    def _take(self, item: _Item | BaseException) -> _Item:
        if isinstance(item, BaseException):
            self._failed = item
            raise item
        self._received += 1
        return item

    def poll(self) -> _Item | None:
        """The next payload if it has arrived, else None (never blocks)."""
        if self._failed is not None:
            raise self._failed
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        return self._take(item)

    def get(self) -> _Item:
        """The next payload ``(peer, bytes)``, waiting for it (time counted in wait_seconds).

        Raises:
            CommunicationError: a peer died or the group's timeout expired.
            StopIteration: every payload was already returned.
        """
        if self._failed is not None:
            raise self._failed
        if self._received >= len(self.order):
            raise StopIteration
        t0 = time.perf_counter()
        try:
            # The receiving thread is bounded by the group timeout and always ends by
            # queueing a payload or its error, so this wait is bounded too.
            item = self._queue.get()
        finally:
            self.wait_seconds += time.perf_counter() - t0
        return self._take(item)

    @property
    def done(self) -> bool:
        """Whether every peer's payload has been returned."""
        return self._received >= len(self.order)

    def __iter__(self) -> Iterator[_Item]:
        while not self.done:
            yield self.get()


@dataclass(frozen=True)
class Exchanged:
    """What :func:`all_gather_bytes` returns.

    Attributes:
        payloads: one read-only ``uint8`` array per rank, in group rank order (this rank's
            own is a view of its input).
        sizes: payload sizes in bytes, per rank.
        seconds: wall time of the size exchange and the transfers, in seconds.
    """

    payloads: tuple[np.ndarray, ...]
    sizes: tuple[int, ...]
    seconds: float


def all_gather_bytes(
    payload: bytes | bytearray | memoryview | None,
    *,
    group: dist.ProcessGroup | None = None,
    status: int = 0,
) -> Exchanged:
    """Gather one byte payload from every rank of ``group``, in rank order.

    :func:`exchange_sizes`, then a :class:`PacketTransfer` read to the end: exactly each
    payload's bytes cross the wire (no padding), ``K - 1`` copies of this rank's.

    Args:
        payload: this rank's bytes (may be empty). Ignored when ``status`` is negative.
        group: the process group (``None``: the default group). Must be initialised.
        status: 0 to send ``payload``; a negative code (e.g. :data:`STATUS_NONFINITE`) to
            tell every rank this one cannot take part.

    Returns:
        An :class:`Exchanged` with every rank's payload.

    Raises:
        PeerStatusError: on every rank, when any rank sent a negative status.
        CommunicationError: a peer is gone or the group's timeout expired.

    Example (on each of 2 ranks)::

        got = all_gather_bytes(b"rank%d" % dist.get_rank())
        bytes(got.payloads[1])  # b"rank1" on both ranks
    """
    t0 = time.perf_counter()
    data = (
        np.frombuffer(payload, dtype=np.uint8)
        if payload is not None and status == 0
        else np.empty(0, dtype=np.uint8)
    )
    sizes = exchange_sizes(data.size, group=group, status=status)
    rank = dist.get_rank(group)
    own = data.view()
    own.setflags(write=False)
    payloads: list[np.ndarray | None] = [None] * len(sizes)
    payloads[rank] = own
    with PacketTransfer(data, sizes, group=group) as transfer:
        for peer, got in transfer:
            payloads[peer] = got
    assert all(p is not None for p in payloads)
    return Exchanged(
        payloads=tuple(p for p in payloads if p is not None),
        sizes=sizes,
        seconds=time.perf_counter() - t0,
    )


def broadcast_bytes(
    blob: bytes | None,
    *,
    status: int = 0,
    group: dist.ProcessGroup | None = None,
    max_bytes: int = 1 << 31,
    what: str = "a payload",
) -> tuple[int, bytes]:
    """Rank 0 sends ``(status, blob)`` to every rank of ``group`` as int64/uint8 tensors.

    Two broadcasts: an int64 header ``[status, size]``, then (if ``size > 0``) the bytes.
    ``status`` lets rank 0 say what the bytes mean, or that it failed (every rank then
    learns it at once instead of waiting for a timeout).

    Args:
        blob: rank 0's bytes (None: none); other ranks' arguments are ignored.
        status: rank 0's status word.
        group: the group (None: the default group).
        max_bytes: a larger announced size is refused before any buffer is allocated.
        what: what the bytes are, for error messages (e.g. "the checkpoint").

    Returns:
        ``(status, bytes)`` on every rank: rank 0's arguments.

    Raises:
        ValueError: the announced size exceeds ``max_bytes``.
        CommunicationError: a peer died or the group's timeout expired.
    """
    src = dist.get_global_rank(group, 0) if group is not None else 0
    mine = dist.get_rank() == src
    size = len(blob) if (mine and blob is not None) else 0
    header = torch.tensor([status, size] if mine else [0, 0], dtype=torch.int64)
    with translate_comm_errors(f"receiving {what} from rank 0"):
        dist.broadcast(header, src=src, group=group)
    status, size = int(header[0]), int(header[1])
    if size == 0:
        return status, b""
    if not 0 < size <= max_bytes:  # checked before allocating the buffer
        raise ValueError(f"rank 0 announced {what} of {size} bytes: refused")
    buf = (
        torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        if mine and blob is not None
        else torch.empty(size, dtype=torch.uint8)
    )
    with translate_comm_errors(f"receiving {what} from rank 0"):
        dist.broadcast(buf, src=src, group=group)
    return status, buf.numpy().tobytes()
