"""The paper's experiment: data-parallel SGD with compressed synchronous weight averaging.

K workers (default 5) each train the 784-392-50-10 tanh network on an exclusive shard of
an MNIST-format dataset; after every local epoch (or every k steps) they exchange tenfold
packets and all continue from the same averaged weights.

* ``tenfold train`` / :func:`spawn_training` - K processes on this machine (gloo);
* ``torchrun --nproc_per_node=K -m tenfold.train ...`` - the same under torchrun;
* :func:`run_simulated` - K workers in one process, bit for bit the same weights (sweeps).

Example:
    >>> from tenfold.train import TrainConfig, run_simulated
    >>> res = run_simulated(TrainConfig(epochs=2))  # doctest: +SKIP
    >>> res.metrics[-1]["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

from tenfold.train.config import TrainConfig, make_policy
from tenfold.train.data import DatasetError, IdxDataset, find_dataset, load_dataset
from tenfold.train.launch import RankFailure, launch, spawn_training, torchrun_main
from tenfold.train.loop import (
    ConfigMismatchError,
    TrainResult,
    TrainState,
    final_weights,
    make_workers,
    run_rank,
    run_simulated,
    train_loop,
)
from tenfold.train.model import PaperMLP, init_weights
from tenfold.train.rundir import RunDir, read_metrics
from tenfold.train.worker import EvalSet, Worker, evaluate

__all__ = [
    "ConfigMismatchError",
    "DatasetError",
    "IdxDataset",
    "PaperMLP",
    "RankFailure",
    "RunDir",
    "EvalSet",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Worker",
    "evaluate",
    "final_weights",
    "find_dataset",
    "init_weights",
    "launch",
    "load_dataset",
    "make_policy",
    "make_workers",
    "read_metrics",
    "run_rank",
    "run_simulated",
    "spawn_training",
    "torchrun_main",
    "train_loop",
]
