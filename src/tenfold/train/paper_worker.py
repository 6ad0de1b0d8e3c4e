"""The paper-mlp worker: the paper's network, its shard and RNG, and its hand-written SGD.

The same :class:`PaperWorker` runs inside a real rank (one per process) and inside the
simulated group (K per process): both paths share every line of training code and differ
only in how the synchronisation moves packets (see :mod:`tenfold.train.loop`). The other
recipes' models train through :class:`~tenfold.train.module_worker.ModuleWorker`.

Training objective (paper §2-3): tanh outputs against one-hot targets (1 for the class,
0 elsewhere), loss = half the squared error summed over the 10 outputs, averaged over the
mini-batch. Plain mini-batch SGD, learning rate ``lr * lr_decay**epoch``, and light L1 on
the weight matrices, applied as the subgradient ``l1 * sign(w)`` added to the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tenfold.errors import ConfigError
from tenfold.train.config import TrainConfig
from tenfold.train.paper_mlp import PaperMLP, init_weights
from tenfold.train.shards import (
    STREAM_SHUFFLE,
    derive_seed,
    grad_rms,
    init_generator,
    one_hot,
    to_inputs,
)

__all__ = [
    "EvalSet",
    "PaperWorker",
    "evaluate_paper_mlp",
]


@dataclass(frozen=True)
class EvalSet:
    """The evaluation data: ``inputs (n, 784)`` float32, ``targets (n, 10)``, ``labels (n,)``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray) -> EvalSet:
        """Build from uint8 images ``(n, 28, 28)`` and labels ``(n,)``."""
        return cls(
            inputs=to_inputs(images),
            targets=one_hot(labels),
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )


@torch.no_grad()
def evaluate_paper_mlp(
    model: torch.nn.Module, test: EvalSet, batch_size: int
) -> tuple[float, float]:
    """The paper MLP's test accuracy (fraction in [0, 1]) and mean loss (half the squared
    error of the tanh outputs against one-hot targets, as in training)."""
    correct = 0
    loss = 0.0
    n = len(test.labels)
    for start in range(0, n, batch_size):
        out = model(test.inputs[start : start + batch_size])
        diff = out - test.targets[start : start + batch_size]
        loss += 0.5 * float(diff.square().sum())
        correct += int((out.argmax(1) == test.labels[start : start + batch_size]).sum())
    return correct / n, loss / n


class PaperWorker:
    """A worker: model, exclusive shard, shuffling RNG and step counter.

    The optimiser is plain SGD written out (no momentum, hence no optimiser state): the
    update is two in-place ops per tensor, and torch.optim's first use would cost every
    rank seconds of start-up importing torch._dynamo.

    All workers of a run start from the same weights (seeded by ``config.seed``); each
    shuffles its own shard with its own stream (``config.seed``, ``rank``).

    Args:
        config: the run's configuration.
        rank: this worker's index (its shard and shuffling stream).
        inputs: ``(n, 784)`` float32 shard inputs.
        targets: ``(n, 10)`` float32 one-hot targets.

    Example:
        >>> cfg = TrainConfig(workers=1, policy={"id": "lossless"})  # doctest: +SKIP
        >>> w = PaperWorker(cfg, 0, torch.rand(64, 784), one_hot(np.arange(64) % 10))  # doctest: +SKIP
        >>> loss = w.train_steps(2)  # doctest: +SKIP
    """

    def __init__(
        self, config: TrainConfig, rank: int, inputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        if inputs.ndim != 2 or targets.shape != (len(inputs), 10) or len(inputs) == 0:
            raise ConfigError(
                f"worker {rank}: inputs {tuple(inputs.shape)} / targets "
                f"{tuple(targets.shape)} do not form a (n, 784) / (n, 10) shard"
            )
        self.config = config
        self.rank = rank
        self.inputs = inputs
        self.targets = targets
        self.model = PaperMLP()
        init_weights(self.model, config.init, init_generator(config.seed))
        self.params = list(self.model.parameters())
        self.names = [name for name, _ in self.model.named_parameters()]
        self.weights = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        self.generator = torch.Generator().manual_seed(
            derive_seed(config.seed, STREAM_SHUFFLE, rank)
        )
        self.steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
        self.step = 0
        # Set at each epoch start: the shuffled shard (views are sliced into mini-batches).
        self._epoch_inputs: torch.Tensor | None = None
        self._epoch_targets: torch.Tensor | None = None
        self._epoch_rng_state = self.generator.get_state()
        # Since the last take_grad_rms(): per-tensor sum of squared gradients, step count.
        self._grad_sq = torch.zeros(len(self.params), dtype=torch.float64)
        self._grad_steps = 0

    @property
    def epoch(self) -> int:
        """Local epochs started so far minus one (0 during the first epoch)."""
        return self.step // self.steps_per_epoch

    @property
    def lr(self) -> float:
        """The learning rate of the current epoch."""
        return self.config.lr * self.config.lr_decay**self.epoch

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The model's ``(name, parameter)`` pairs (what the averager takes)."""
        return self.model.named_parameters()

    def _start_epoch(self) -> None:
        # Kept so that a checkpoint can redraw this epoch's permutation on resume.
        self._epoch_rng_state = self.generator.get_state()
        perm = torch.randperm(len(self.inputs), generator=self.generator)
        self._epoch_inputs = self.inputs[perm]
        self._epoch_targets = self.targets[perm]

    def train_steps(self, n: int) -> float:
        """Run ``n`` SGD mini-batch steps (crossing epoch boundaries as needed).

        Returns:
            The mean training loss over those steps (data term, without L1).
        """
        model, params, l1, bs = self.model, self.params, self.config.l1, self.config.batch_size
        loss_sum = torch.zeros((), dtype=torch.float64)
        for _ in range(n):
            pos = self.step % self.steps_per_epoch
            if pos == 0 or self._epoch_inputs is None:
                self._start_epoch()
            assert self._epoch_inputs is not None and self._epoch_targets is not None
            x = self._epoch_inputs[pos * bs : (pos + 1) * bs]
            t = self._epoch_targets[pos * bs : (pos + 1) * bs]
            diff = model(x) - t
            loss = diff.square().sum() * (0.5 / len(x))
            for p in params:
                p.grad = None
            loss.backward()
            grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
            # RMS of the data-loss gradient (paper Fig. 2), before L1 is added.
            self._grad_sq += torch.stack([g.square().sum() for g in grads])
            with torch.no_grad():
                if l1:  # the L1 subgradient joins the gradient (not in the RMS above)
                    for w in self.weights:
                        w.grad.add_(w.sign(), alpha=l1)  # type: ignore[union-attr]
                lr = self.lr
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-lr)
            loss_sum += loss.detach()
            self.step += 1
        self._grad_steps += n
        return float(loss_sum) / n if n else float("nan")

    def take_grad_rms(self) -> dict[str, float]:
        """Per-tensor RMS of the data-loss gradient over the steps since the last call.

        RMS over every element and every step: ``sqrt(sum_steps sum_i g_i^2 / (steps * n))``.
        Resets the accumulators. Empty dict if no step was taken.
        """
        out = grad_rms(self.names, self.params, self._grad_sq, self._grad_steps)
        self._grad_sq.zero_()
        self._grad_steps = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this worker (model, RNG, step; plain SGD has no state).

        The RNG is saved as of the current epoch's start, so :meth:`load_state_dict` can
        redraw the same permutation and continue mid-epoch. (The gradient-RMS accumulators
        are not saved: checkpoint right after a synchronisation, where they are empty.)
        """
        return {
            "model": self.model.state_dict(),
            "epoch_rng_state": self._epoch_rng_state.clone(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; training continues exactly."""
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
        self.generator.set_state(state["epoch_rng_state"])
        self._epoch_inputs = self._epoch_targets = None
        if self.step > 0:
            self._start_epoch()  # the current epoch's permutation, drawn again
