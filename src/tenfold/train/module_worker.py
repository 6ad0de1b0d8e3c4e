"""A worker for any ``nn.Module``: a model, a loss, a torch optimizer and a batch source.

The paper's MLP keeps its own :class:`~tenfold.train.paper_worker.PaperWorker` (its hand-written SGD
is part of the reproduced numbers); every other recipe (:mod:`tenfold.train.recipes`)
trains through this class, which the training loop drives the same way: ``train_steps(n)``
between synchronisations, ``named_parameters()`` for the averager, ``state_dict()`` for
the checkpoint.

Batches are a pure function of ``(seed, rank, step)`` (:class:`BatchSource`), so a resumed
run redraws exactly the batches it would have drawn: the only training state is the model,
the optimizer's state and the step counter.

Example:
    >>> src = ShuffledShard(torch.rand(64, 1, 28, 28), torch.arange(64) % 10,
    ...                     batch_size=16, seed=0, rank=0)  # doctest: +SKIP
    >>> w = ModuleWorker(cfg, 0, FashionCNN(), src, cross_entropy_loss, sgd_momentum)  # doctest: +SKIP
    >>> loss = w.train_steps(4)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tenfold.errors import ConfigError
from tenfold.train.checkpoint import CheckpointError
from tenfold.train.config import TrainConfig
from tenfold.train.shards import derive_seed, grad_rms, to_inputs

__all__ = [
    "BatchSource",
    "LossFn",
    "ModuleWorker",
    "OptimizerFactory",
    "ShuffledShard",
    "cross_entropy_loss",
]

# Stream id of the per-epoch shuffles (the paper worker's streams are 1-3).
_EPOCH_SHUFFLE = 4

#: ``loss_fn(model, inputs, targets) -> scalar loss`` (nats, mean over the batch).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``factory(model, config) -> optimizer`` (built once per worker).
OptimizerFactory = Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]


class BatchSource(Protocol):
    """Where a worker's mini-batches come from: a pure function of the step."""

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one pass over this worker's data."""
        ...

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of local step ``step`` (0-based)."""
        ...


class ShuffledShard:
    """A worker's shard of a labelled set, reshuffled every epoch, cut into mini-batches.

    The permutation of epoch ``e`` comes from its own stream ``(seed, 4, rank, e)``: any
    step's batch can be drawn without replaying the steps before it.

    Args:
        inputs: ``(n, ...)`` the shard's inputs.
        targets: ``(n, ...)`` the shard's targets (class indices, int64).
        batch_size: examples per step (the last batch of an epoch may be smaller).
        seed, rank: the run's seed and the worker's index.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        rank: int,
    ) -> None:
        if len(inputs) == 0 or len(inputs) != len(targets):
            raise ConfigError(
                f"worker {rank}: a shard needs as many targets as inputs (> 0), got "
                f"{len(inputs)} inputs and {len(targets)} targets"
            )
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self._epoch = -1
        self._perm = torch.arange(0)

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(n / batch_size)``."""
        return math.ceil(len(self.inputs) / self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mini-batch of ``step``: slice ``step % steps_per_epoch`` of its epoch's order."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(
                derive_seed(self.seed, _EPOCH_SHUFFLE, self.rank, epoch)
            )
            self._perm = torch.randperm(len(self.inputs), generator=g)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return self.inputs[idx], self.targets[idx]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``model(x)``'s logits against class indices ``y``.

    Works for classifiers (``(B, C)`` logits, ``(B,)`` targets) and for language models
    (``(B, T, V)`` logits, ``(B, T)`` targets).
    """
    logits = model(x)
    if isinstance(logits, tuple):  # models returning (logits, loss)
        logits = logits[0]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class ModuleWorker:
    """One data-parallel worker of any model: its model, optimizer, batches and step.

    The learning rate of every parameter group is ``config.lr * config.lr_decay**epoch``
    (set before each step, so a resumed worker needs no scheduler state). L1
    (``config.l1``) joins the gradient of every matrix (``ndim >= 2``) as ``l1 * sign(w)``,
    as in the paper's worker.

    Args:
        config: the run's configuration.
        rank: this worker's index.
        model: the model, initialised identically on every worker.
        batches: this worker's :class:`BatchSource`.
        loss_fn: ``(model, x, y) -> loss``.
        make_optimizer: ``(model, config) -> torch.optim.Optimizer``.
    """

    def __init__(
        self,
        config: TrainConfig,
        rank: int,
        model: nn.Module,
        batches: BatchSource,
        loss_fn: LossFn,
        make_optimizer: OptimizerFactory,
    ) -> None:
        self.config = config
        self.rank = rank
        self.model = model
        self.batches = batches
        self.loss_fn = loss_fn
        self.optimizer = make_optimizer(model, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.matrices = [p for p in self.params if p.ndim >= 2]
        self.steps_per_epoch = batches.steps_per_epoch
        self.step = 0
        self._grad_sq = torch.zeros(len(self.params), dtype=torch.float64)
        self._grad_steps = 0

    @property
    def epoch(self) -> int:
        """Local epochs started so far minus one."""
        return self.step // self.steps_per_epoch

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The trainable ``(name, parameter)`` pairs (what the averager codes)."""
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def named_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """The model's floating-point buffers (e.g. BatchNorm statistics), by name."""
        return [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]

    def train_steps(self, n: int) -> float:
        """Run ``n`` optimizer steps; returns their mean loss (data term, nats)."""
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        l1 = self.config.l1
        for _ in range(n):
            lr = self.config.lr * self.config.lr_decay**self.epoch
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self.batches.batch(self.step)
            loss = self.loss_fn(self.model, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in self.params]
            self._grad_sq += torch.stack(
                [torch.zeros(()) if g is None else g.detach().square().sum() for g in grads]
            ).double()
            if l1:
                with torch.no_grad():
                    for w in self.matrices:
                        if w.grad is not None:
                            w.grad.add_(w.sign(), alpha=l1)
            self.optimizer.step()
            loss_sum += loss.detach()
            self.step += 1
        self._grad_steps += n
        return float(loss_sum) / n if n else float("nan")

    def take_grad_rms(self) -> dict[str, float]:
        """Per-tensor RMS of the data-loss gradient since the last call (then reset)."""
        out = grad_rms(self.names, self.params, self._grad_sq, self._grad_steps)
        self._grad_sq.zero_()
        self._grad_steps = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """Model, floating buffers, optimizer state (tensors and scalars by parameter
        index) and step: what resuming needs (batches are a function of the step)."""
        opt = self.optimizer.state_dict()["state"]
        return {
            "model": self.model.state_dict(),
            # flat: a 0-d tensor (BatchNorm's num_batches_tracked) has no bytes view
            "buffers": {n: b.detach().clone().reshape(-1) for n, b in self.model.named_buffers()},
            "optimizer": {str(i): {k: _flat(v) for k, v in s.items()} for i, s in opt.items()},
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; training continues exactly."""
        # by name through named_parameters/named_buffers, not model.load_state_dict: the
        # checkpoint holds each tensor once, and a tied weight (char-gpt's LM head is its
        # token embedding) appears in state_dict() under two names
        params, buffers = state["model"], state.get("buffers", {})
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n not in params or params[n].shape != p.shape:
                    raise CheckpointError(f"parameter {n!r} is missing or has another shape")
                p.copy_(params[n])
            for n, b in self.model.named_buffers():
                if n not in buffers or buffers[n].numel() != b.numel():
                    raise CheckpointError(f"buffer {n!r} is missing or has another size")
                b.copy_(buffers[n].reshape(b.shape))
        saved = state.get("optimizer", {})
        fresh = self.optimizer.state_dict()
        self.optimizer.load_state_dict(
            {
                "state": {int(i): _as_tensors(s) for i, s in saved.items()},
                "param_groups": fresh["param_groups"],
            }
        )
        self.step = int(state["step"])


def _flat(value: Any) -> Any:
    # safetensors cannot take a 0-d tensor's bytes (Adam's "step"); store it as shape (1,)
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return value.detach().clone().reshape(1)
    return value


def _as_tensors(state: dict[str, Any]) -> dict[str, Any]:
    # Undo _flat: torch optimizers keep "step" as a 0-d tensor.
    out = dict(state)
    if "step" in out:
        step = out["step"]
        out["step"] = (
            step.reshape(()) if isinstance(step, torch.Tensor) else torch.tensor(float(step))
        )
    return out


def stack_inputs(images: np.ndarray) -> torch.Tensor:
    """``(n, 28, 28)`` uint8 -> ``(n, 1, 28, 28)`` float32 in [0, 1] (conv nets' layout)."""
    return to_inputs(images).view(len(images), 1, 28, 28)
