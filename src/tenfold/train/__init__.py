"""One training engine: data-parallel local SGD with compressed synchronisation.

K workers (default 5) each train a recipe's model (:mod:`tenfold.train.recipes`: the
paper's 784-392-50-10 tanh network, a BatchNorm CNN, or a small character transformer) on
an exclusive shard of its data; after every local epoch (or every k steps) they exchange
tenfold packets and all continue from the same shared model.

* ``tenfold train`` / :func:`spawn_training` - K processes on this machine (gloo);
* ``torchrun --nproc_per_node=K -m tenfold train ...`` - the same under torchrun;
* :func:`run_simulated` - K workers in one process, bit for bit the same weights (sweeps).

Example:
    >>> from tenfold.train import TrainConfig, run_simulated
    >>> res = run_simulated(TrainConfig(epochs=2))  # doctest: +SKIP
    >>> res.metrics[-1]["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

# Found, not imported: the check costs nothing, and `tenfold train --help` stays fast.
if importlib.util.find_spec("torch") is None:
    raise ImportError(
        "tenfold.train needs PyTorch and the trainer's packages: pip install 'tenfold[train]'"
    )

# Names are imported on first use (PEP 562) so that ``tenfold.train.config`` - which the
# CLI needs to build ``--help`` - can be imported without paying for torch's import time;
# ``tenfold inspect`` never imports this package at all.
_EXPORTS: dict[str, str] = {
    "TrainConfig": "config",
    "make_policy": "config",
    "DatasetError": "data",
    "IdxDataset": "data",
    "find_dataset": "data",
    "load_dataset": "data",
    "NotUnderTorchrunError": "launch",
    "RankFailure": "launch",
    "launch": "launch",
    "spawn_training": "launch",
    "torchrun_main": "launch",
    "ConfigMismatchError": "state",
    "TrainResult": "state",
    "TrainState": "state",
    "final_weights": "loop",
    "make_workers": "loop",
    "run_rank": "loop",
    "run_simulated": "loop",
    "train_loop": "loop",
    "PaperMLP": "paper_mlp",
    "init_weights": "paper_mlp",
    "CharGPT": "models",
    "FashionCNN": "models",
    "ModuleWorker": "module_worker",
    "RECIPES": "recipes",
    "get_recipe": "recipes",
    "load_corpus": "text",
    "RunDir": "rundir",
    "read_metrics": "rundir",
    "EvalSet": "paper_worker",
    "PaperWorker": "paper_worker",
    "evaluate_paper_mlp": "paper_worker",
    "simulated_state": "loop",
}


class _TrainPackage(types.ModuleType):
    """This package's module type: a submodule never hides an export of the same name.

    The import system binds every imported submodule as an attribute of its package, so
    importing ``tenfold.train.launch`` (the module) would otherwise hide ``launch`` (the
    function) from ``from tenfold.train import launch``. The submodule stays reachable
    through ``sys.modules`` and ``from tenfold.train.launch import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _TrainPackage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tenfold.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tenfold.train.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "RECIPES",
    "CharGPT",
    "ConfigMismatchError",
    "FashionCNN",
    "ModuleWorker",
    "DatasetError",
    "IdxDataset",
    "NotUnderTorchrunError",
    "PaperMLP",
    "RankFailure",
    "RunDir",
    "EvalSet",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "PaperWorker",
    "evaluate_paper_mlp",
    "final_weights",
    "find_dataset",
    "get_recipe",
    "init_weights",
    "launch",
    "load_corpus",
    "load_dataset",
    "make_policy",
    "make_workers",
    "read_metrics",
    "run_rank",
    "run_simulated",
    "simulated_state",
    "spawn_training",
    "torchrun_main",
    "train_loop",
]
