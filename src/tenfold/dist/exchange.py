"""Exchange variable-length byte payloads between ranks, as uint8 tensors (never pickle).

Every rank contributes one ``bytes`` payload (a tenfold packet) and receives every rank's
payload, in rank order, its own included. Two collectives carry it:

1. ``all_gather`` of one int64 per rank: the payload sizes (a negative size is a *status*:
   the rank has nothing valid to send, see :data:`STATUS_NONFINITE`; every rank learns it
   at the same point of the protocol, so everyone can fail together instead of leaving
   the healthy ranks blocked in the next collective until the timeout);
2. ``all_gather`` of each rank's payload zero-padded to the largest size, as uint8.

With NCCL the collectives need device tensors: the buffers are created on
``torch.cuda.current_device()`` and copied back to the CPU for decoding (documented, not
tested here; there is no GPU on the build machines).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "STATUS_NONFINITE",
    "CommunicationError",
    "Exchanged",
    "PeerStatusError",
    "all_gather_bytes",
    "comm_device",
    "translate_comm_errors",
]

#: Size sent instead of a payload length by a rank whose weights are not finite.
STATUS_NONFINITE = -1

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


@dataclass(frozen=True)
class Exchanged:
    """What :func:`all_gather_bytes` returns.

    Attributes:
        payloads: one read-only ``uint8`` array per rank, in group rank order (views into
            one gathered buffer, no copy per rank); pass them to the codec as buffers.
        sizes: payload sizes in bytes, per rank.
        padded_size: bytes each rank actually put on the wire in the second collective
            (the largest payload: ``all_gather`` needs equal sizes).
        seconds: wall time of both collectives (and the NCCL device copies), in seconds.
    """

    payloads: tuple[np.ndarray, ...]
    sizes: tuple[int, ...]
    padded_size: int
    seconds: float


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device collectives of ``group`` need: CUDA for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_bytes(
    payload: bytes | bytearray | memoryview | None,
    *,
    group: dist.ProcessGroup | None = None,
    status: int = 0,
) -> Exchanged:
    """Gather one byte payload from every rank of ``group``, in rank order.

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
    if status > 0:
        raise ValueError(f"status must be 0 or negative, got {status}")
    world = dist.get_world_size(group)
    device = comm_device(group)
    t0 = time.perf_counter()

    data = np.frombuffer(payload, dtype=np.uint8) if payload is not None and status == 0 else None
    size = status if status < 0 else (0 if data is None else data.size)
    size_t = torch.tensor([size], dtype=torch.int64, device=device)
    sizes_t = [torch.empty_like(size_t) for _ in range(world)]
    with translate_comm_errors("exchanging packet sizes"):
        dist.all_gather(sizes_t, size_t, group=group)
    sizes = tuple(int(s.item()) for s in sizes_t)

    failed = {r: s for r, s in enumerate(sizes) if s < 0}
    if failed:
        raise PeerStatusError(failed)

    padded = max(sizes)
    gathered = torch.empty((world, padded), dtype=torch.uint8, device=device)
    if padded:
        # One copy into a zero-padded host buffer (needed anyway: all_gather wants equal
        # sizes); for NCCL one more copy to the device.
        host_send = np.zeros(padded, dtype=np.uint8)
        if data is not None:
            host_send[: data.size] = data
        send = torch.from_numpy(host_send).to(device)
        with translate_comm_errors("exchanging packets"):
            dist.all_gather(list(gathered.unbind(0)), send, group=group)
    host = gathered.cpu().numpy()
    host.setflags(write=False)
    seconds = time.perf_counter() - t0
    return Exchanged(
        payloads=tuple(host[r, : sizes[r]] for r in range(world)),
        sizes=sizes,
        padded_size=padded,
        seconds=seconds,
    )
