"""The state of a training run, and what a run returns: shared by the loop, the
checkpoint, the run directory and the progress display (none of which imports another
to learn these types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenfold.train.config import TrainConfig

__all__ = ["ConfigMismatchError", "Record", "TrainResult", "TrainState"]

#: One metrics record (one line of metrics.jsonl), see :func:`train_loop`.
Record = dict[str, Any]


class ConfigMismatchError(RuntimeError):
    """Ranks were started with different configurations (raised on every rank)."""


@dataclass
class TrainState:
    """Everything a run needs to continue: what :mod:`tenfold.train.checkpoint` saves.

    (Each worker's :meth:`~tenfold.train.worker.Worker.state_dict` holds its model, RNG
    and step; the checkpoint adds ``averager.round``, ``syncs``, ``elapsed_s``, the
    processes' global RNGs, and the count and hash of the ``metrics`` records.)

    Attributes:
        config: the run's configuration.
        workers: the workers this process trains (1 per rank; K when simulated).
        averager: the averaging transport; its ``round`` counter seeds the codec.
        buffer_averager: averages the models' floating buffers exactly at every sync
            (None for models without any, like the paper's MLP).
        step: local SGD steps every worker has done.
        syncs: synchronisations done.
        metrics: the records so far (filled on the lead process only).
        elapsed_s: training wall time of the rounds done so far (s), over every process
            that worked on the run (a resumed run continues its predecessor's clock).
    """

    config: TrainConfig
    workers: list[Any]  # Worker (paper-mlp) or ModuleWorker
    averager: Any  # CompressedAverager, SimulatedAverager, or a sweep's PeerAverager
    buffer_averager: Any = None  # lossless averaging of BatchNorm statistics (cnn)
    step: int = 0
    syncs: int = 0
    metrics: list[Record] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        """Local steps per epoch (equal on every worker: shards have equal sizes)."""
        return self.workers[0].steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Local steps of the whole run: ``epochs`` of them, or ``config.steps`` if fewer."""
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.steps) if self.config.steps else total

    @property
    def steps_per_round(self) -> int:
        """Local steps between two synchronisations."""
        return self.config.sync_every or self.steps_per_epoch

    @property
    def total_syncs(self) -> int:
        """Synchronisations of the whole run (the last round may be shorter)."""
        return -(-self.total_steps // self.steps_per_round)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run returns: the metrics records and the final state."""

    metrics: list[Record]
    state: TrainState
