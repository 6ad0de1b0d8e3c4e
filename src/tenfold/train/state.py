"""The state of a training run, and what a run returns: shared by the loop, the
checkpoint, the run directory and the progress display (none of which imports another
to learn these types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenfold.errors import TenfoldError
from tenfold.train.config import TrainConfig

__all__ = ["ConfigMismatchError", "Record", "TrainResult", "TrainState"]

#: One metrics record (one line of metrics.jsonl), see :func:`train_loop`.
Record = dict[str, Any]


class ConfigMismatchError(TenfoldError, RuntimeError):
    """Ranks were started with different configurations (raised on every rank)."""


@dataclass
class TrainState:
    """Everything a run needs to continue: what :mod:`tenfold.train.checkpoint` saves.

    (Each worker's ``state_dict()`` holds its model, RNG, optimizer and step; the
    checkpoint adds the averager's state (its ``round`` seeds the codec), ``syncs``,
    ``elapsed_s``, the processes' global RNGs, and the count and hash of the ``metrics``
    records.)

    Attributes:
        config: the run's configuration.
        workers: the workers this process trains (1 per rank; K when simulated).
        sync: the public API that synchronises them: a
            :class:`~tenfold.distributed.LocalSGD` over this rank's model, or a
            :class:`~tenfold.distributed.SimulatedLocalSGD` over the K workers' models.
        distributed: the workers are ranks of the default process group.
        step: local SGD steps every worker has done.
        syncs: synchronisations done.
        metrics: the records so far (filled on the lead process only).
        elapsed_s: training wall time of the rounds done so far (s), over every process
            that worked on the run (a resumed run continues its predecessor's clock).
    """

    config: TrainConfig
    workers: list[Any]  # PaperWorker (paper-mlp) or ModuleWorker
    sync: Any  # LocalSGD (a rank) or SimulatedLocalSGD (K workers in one process)
    distributed: bool = False
    step: int = 0
    syncs: int = 0
    metrics: list[Record] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def averager(self) -> Any:
        """The averager :attr:`sync` uses (its state is part of the checkpoint)."""
        return self.sync.averager

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
