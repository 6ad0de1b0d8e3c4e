"""The outer step of ``tenfold train`` (``--outer-lr``): a damped Local SGD update.

With an outer learning rate beta != 1 each sync moves the shared model by beta times the
ranks' averaged pseudo-gradient: :class:`~tenfold.distributed.LocalSGD`'s DiLoCo path with
an outer ``SGD(lr=beta)`` without momentum, which keeps no state (a checkpoint needs
nothing more) and keeps every rank bit-identical. At beta = 1 no outer optimizer is made:
the shared model is the average itself, bit for bit plain Local SGD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tenfold.distributed.local_sgd import averager_reference
from tenfold.train.config import TrainConfig

__all__ = ["outer_optimizer", "restart_overlapped"]


def outer_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer | None:
    """``SGD(lr=config.effective_outer_lr)`` over ``model``'s trainable parameters, or
    None when that rate is 1 (plain Local SGD)."""
    lr = config.effective_outer_lr
    if lr == 1:
        return None
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def restart_overlapped(sync: Any, models: Sequence[nn.Module]) -> None:
    """Resume an overlapped run with an outer optimizer from restored parameters and
    averager state (``tenfold train``'s checkpoint, taken at a round boundary after the
    sync in flight ended): the parameters are the round's start, the averager's shared
    model the finished sync's result (as ``restart_from_parameters`` rebuilds it for
    Local SGD, which refuses an outer optimizer whose state it cannot know; outer SGD
    without momentum has none). ``sync``: the run's ``LocalSGD`` (one model) or
    ``SimulatedLocalSGD`` (its K models, in order)."""
    state = sync.state_dict()  # the outer optimizers' (empty) state and the averager's
    reference = averager_reference(sync.averager)
    launched = sync.num_steps >= sync.sync_every and reference is not None
    parts = []
    for model in models:
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        start = {n: p.detach().cpu().clone() for n, p in params}
        row = (
            {n: torch.from_numpy(reference[n].copy()).reshape(p.shape) for n, p in params}
            if launched and reference is not None
            else None
        )
        parts.append({"start": start, "row": row})
    state["overlap"] = parts if isinstance(state["overlap"], list) else parts[0]
    sync.load_state_dict(state)
