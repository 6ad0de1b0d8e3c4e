"""torch.distributed at the edge: exchange compressed packets, average models.

* :class:`CompressedAverager` - average parameters across ranks through tenfold packets;
  every rank ends with bit-identical weights, whatever the policy; ``collective=``
  ``"auto"`` (default), ``"all-gather"`` or ``"reduce-scatter"``
  (:mod:`tenfold.distributed.collectives`), and an optional guard against an outsized rank
  (:class:`ContributionRatioError`); ranks holding different shared models raise
  :class:`ReferenceMismatchError`, NaN/Inf weights :class:`NonFiniteWeightsError`.
* :class:`AllReduceAverager` - the uncompressed baseline: the exact fp32 mean, one
  ``all_reduce``; a drop-in for :class:`CompressedAverager`.
* :class:`Averager` - the protocol both follow (``initialize``, ``average``,
  ``set_reference``, ``state_dict``, ``load_state_dict``).
* :class:`LocalSGD` - Local SGD and DiLoCo around any inner optimizer: ``sync.step()``
  after every inner step synchronises every ``sync_every`` steps (parameters through an
  :class:`Averager`, buffers exactly), bit-identical on every rank; integer buffers that
  differ across ranks raise :class:`BufferMismatchError`.
* :class:`SimulatedAverager` - the same arithmetic for K workers held in one process
  (bit for bit what K real ranks produce); for sweeps of many trainings.
* :mod:`tenfold.distributed.hooks` - :class:`~tenfold.distributed.hooks.CompressionState`
  and :func:`~tenfold.distributed.hooks.compressed_allreduce_hook`, a DDP communication hook
  (``ddp_model.register_comm_hook(state, compressed_allreduce_hook)``) with error feedback.
* :func:`all_gather_bytes` - variable-length byte payloads between ranks as uint8 tensors.

The modules, lowest first: ``exchange`` (bytes between ranks), ``errors``, ``params`` (the
tensors an averager takes), ``packets``, ``rank_order`` (the bit-identical sum),
``reference`` (delta mode's shared model and residuals), ``stats``, ``collectives`` and
``reduce_scatter`` (the sharded protocol), ``shared_model``, then the averagers:
``averaging`` (the protocol, :class:`CompressedAverager`), ``simulated``, ``allreduce``;
``local_sgd`` and ``hooks`` drive them.

Example (each rank, after ``torch.distributed.init_process_group("gloo", ...)``)::

    from tenfold.distributed import CompressedAverager
    avg = CompressedAverager(policy=tenfold.EntropyAdaptive())
    stats = avg.average(model.named_parameters())   # in place
    print(stats.bits_per_param, stats.bytes_sent)

    sync = LocalSGD(model, sync_every=50,             # DiLoCo; without outer_optimizer:
                    outer_optimizer=torch.optim.SGD(  # Local SGD (the average)
                        model.parameters(), lr=0.7, momentum=0.9, nesterov=True))
    ...; inner.step(); sync.step()                    # after every inner step
"""

from __future__ import annotations

from tenfold.distributed.allreduce import AllReduceAverager
from tenfold.distributed.averaging import Averager, CompressedAverager
from tenfold.distributed.collectives import ContributionRatioError
from tenfold.distributed.errors import NonFiniteWeightsError, ReferenceMismatchError
from tenfold.distributed.exchange import (
    CommunicationError,
    Exchanged,
    PeerStatusError,
    all_gather_bytes,
)
from tenfold.distributed.local_sgd import BufferMismatchError, LocalSGD
from tenfold.distributed.params import ParamsLike, named_tensors, round_policy
from tenfold.distributed.simulated import SimulatedAverager
from tenfold.distributed.stats import SyncStats, TensorStats

__all__ = [
    "AllReduceAverager",
    "Averager",
    "BufferMismatchError",
    "CommunicationError",
    "CompressedAverager",
    "ContributionRatioError",
    "Exchanged",
    "LocalSGD",
    "NonFiniteWeightsError",
    "ParamsLike",
    "PeerStatusError",
    "ReferenceMismatchError",
    "SimulatedAverager",
    "SyncStats",
    "TensorStats",
    "all_gather_bytes",
    "named_tensors",
    "round_policy",
]
