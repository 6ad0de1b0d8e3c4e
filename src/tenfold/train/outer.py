"""The outer step of ``tenfold train`` (``--outer-lr``): a damped Local SGD update.

With an outer learning rate beta != 1 each sync moves the shared model by beta times the
ranks' averaged pseudo-gradient: :class:`~tenfold.distributed.LocalSGD`'s DiLoCo path with
an outer ``SGD(lr=beta)`` without momentum, which keeps no state (a checkpoint needs
nothing more) and keeps every rank bit-identical. At beta = 1 no outer optimizer is made:
the shared model is the average itself, bit for bit plain Local SGD.
"""

from __future__ import annotations

import torch
from torch import nn

from tenfold.train.config import TrainConfig

__all__ = ["outer_optimizer"]


def outer_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer | None:
    """``SGD(lr=config.effective_outer_lr)`` over ``model``'s trainable parameters, or
    None when that rate is 1 (plain Local SGD)."""
    lr = config.effective_outer_lr
    if lr == 1:
        return None
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
