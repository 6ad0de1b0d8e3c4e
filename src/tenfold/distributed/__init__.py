"""torch.distributed at the edge: exchange compressed packets, average models.

* :class:`CompressedAverager` - average parameters across ranks through tenfold packets;
  every rank ends with bit-identical weights, whatever the policy.
* :class:`SimulatedAverager` - the same arithmetic for K workers held in one process
  (bit for bit what K real ranks produce); for sweeps of many trainings.
* :func:`all_gather_bytes` - variable-length byte payloads between ranks as uint8 tensors.

Example (each rank, after ``torch.distributed.init_process_group("gloo", ...)``)::

    from tenfold.distributed import CompressedAverager
    avg = CompressedAverager(policy=tenfold.EntropyAdaptive())
    stats = avg.average(model.named_parameters())   # in place
    print(stats.bits_per_param, stats.bytes_sent)
"""

from __future__ import annotations

from tenfold.distributed.averaging import (
    CompressedAverager,
    NonFiniteWeightsError,
    ParamsLike,
    SimulatedAverager,
    SyncStats,
    TensorStats,
    named_tensors,
    round_policy,
)
from tenfold.distributed.exchange import (
    CommunicationError,
    Exchanged,
    PeerStatusError,
    all_gather_bytes,
)

__all__ = [
    "CommunicationError",
    "CompressedAverager",
    "Exchanged",
    "NonFiniteWeightsError",
    "ParamsLike",
    "PeerStatusError",
    "SimulatedAverager",
    "SyncStats",
    "TensorStats",
    "all_gather_bytes",
    "named_tensors",
    "round_policy",
]
