"""One synchronisation, written once, for both collectives; no torch.distributed calls
and no sender state.

A rank hands :func:`all_gather` or :func:`reduce_scatter` what it sends
(:class:`Outgoing`) and a :class:`Transport`; it gets the mean and its own decoded values
back (:class:`SyncResult`). Their phases (code, exchange sizes, decode-and-add in rank
order, guard, divide, re-code) are functions of their own, which the simulation of K
workers in one process calls too. docs/PROTOCOL.md describes the protocol.
"""

from __future__ import annotations

from tenfold.distributed.protocol.all_gather import all_gather
from tenfold.distributed.protocol.reduce_scatter import reduce_scatter
from tenfold.distributed.protocol.steps import Outgoing, SyncResult
from tenfold.distributed.protocol.transport import Arrivals, LocalArrivals, Transport

__all__ = [
    "Arrivals",
    "LocalArrivals",
    "Outgoing",
    "SyncResult",
    "Transport",
    "all_gather",
    "reduce_scatter",
]
