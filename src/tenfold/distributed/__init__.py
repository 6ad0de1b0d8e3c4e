"""torch.distributed at the edge: average models across ranks through compressed packets.

* :class:`CompressedAverager` - average parameters across the ranks of a process group;
  every rank ends with bit-identical weights, whatever the policy (``collective=``
  ``"auto"``, ``"all-gather"`` or ``"reduce-scatter"``).
* :class:`AllReduceAverager` - the uncompressed baseline (one fp32 ``all_reduce``).
* :class:`Averager` - the interface both follow; :class:`LocalSGD` drives any of them.
* :class:`SimulatedAverager` - K workers in one process, bit for bit what K ranks produce.
* :mod:`tenfold.distributed.hooks` - a DDP communication hook with error feedback.
* :mod:`tenfold.distributed.errors` - every error raised here.

The layers, lowest first: ``errors``, ``process_group``, ``transport`` (bytes between
ranks), ``params``, ``stats``, ``protocol/`` (one synchronisation, both collectives, no
torch.distributed calls), ``sender`` (reference, residuals, seeds), ``collective``,
``averager_base``; the drivers ``averaging``, ``simulated``, ``allreduce``, ``hooks``;
``local_sgd`` on top. docs/PROTOCOL.md describes the protocol.

Example (each rank, after ``torch.distributed.init_process_group("gloo", ...)``)::

    from tenfold.distributed import CompressedAverager
    avg = CompressedAverager(policy=tenfold.TargetRate(bits_per_param=1.0))
    avg.initialize(model.named_parameters())
    stats = avg.average(model.named_parameters())   # in place
    print(stats.bits_per_param, stats.bytes_sent)
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a process without torch
    raise ImportError("tenfold.distributed needs PyTorch: pip install 'tenfold[torch]'") from exc

from tenfold.distributed.allreduce import AllReduceAverager
from tenfold.distributed.averaging import Averager, CompressedAverager
from tenfold.distributed.errors import (
    BucketMismatchError,
    BufferMismatchError,
    CommunicationError,
    ContributionRatioError,
    NonFiniteGradientsError,
    NonFiniteWeightsError,
    PeerStatusError,
    ProcessGroupError,
    ReferenceMismatchError,
)
from tenfold.distributed.local_sgd import GroupAverager, LocalSGD, SimulatedLocalSGD
from tenfold.distributed.outer_delay import OuterStepWarning
from tenfold.distributed.params import ParamsLike, named_tensors
from tenfold.distributed.process_group import destroy_process_group, require_process_group
from tenfold.distributed.simulated import SimulatedAverager
from tenfold.distributed.stats import SyncStats, TensorStats
from tenfold.distributed.transport import Exchanged, all_gather_bytes
from tenfold.distributed.watchdog import WaitingForPeersWarning

__all__ = [
    "AllReduceAverager",
    "Averager",
    "BucketMismatchError",
    "BufferMismatchError",
    "CommunicationError",
    "CompressedAverager",
    "ContributionRatioError",
    "Exchanged",
    "GroupAverager",
    "LocalSGD",
    "NonFiniteGradientsError",
    "NonFiniteWeightsError",
    "OuterStepWarning",
    "WaitingForPeersWarning",
    "ParamsLike",
    "PeerStatusError",
    "ProcessGroupError",
    "ReferenceMismatchError",
    "SimulatedAverager",
    "SimulatedLocalSGD",
    "SyncStats",
    "TensorStats",
    "all_gather_bytes",
    "named_tensors",
    "destroy_process_group",
    "require_process_group",
]
