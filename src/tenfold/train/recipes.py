"""Recipes: what ``tenfold train --model NAME`` trains, as factories the one engine calls.

A recipe says how to load the data, build each worker (model, loss, optimizer, batches),
evaluate, and fingerprint the data for checkpoints; :mod:`tenfold.train.loop` does the rest
(rounds of local steps, compressed averaging, checkpoints, progress, metrics, torchrun)
identically for every model.

=============  ===============================================================================
``paper-mlp``  the paper's experiment: 784-392-50-10 tanh MLP, MSE on one-hot targets, plain
               SGD with L1, Fashion-MNIST (:class:`~tenfold.train.paper_worker.PaperWorker`, unchanged:
               the reproduced numbers depend on it bit for bit)
``cnn``        :class:`~tenfold.train.models.FashionCNN` (two conv + BatchNorm blocks) on
               Fashion-MNIST, cross-entropy, SGD with momentum 0.9; BatchNorm statistics
               are averaged exactly at every sync
``char-gpt``   :class:`~tenfold.train.models.CharGPT` (4 layers, 4 heads, 128 wide, context
               128) on the Gutenberg Shakespeare, next-character cross-entropy, AdamW;
               validation loss (nats/char) and perplexity on the held-out last 10%
=============  ===============================================================================

Example:
    >>> recipe = get_recipe("cnn")
    >>> recipe.name
    'cnn'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tenfold.errors import ConfigError
from tenfold.train.config import TrainConfig
from tenfold.train.data import DatasetError, IdxDataset, load_dataset
from tenfold.train.module_worker import (
    ModuleWorker,
    ShuffledShard,
    cross_entropy_loss,
    stack_inputs,
)
from tenfold.train.paper_worker import EvalSet, PaperWorker, evaluate_paper_mlp
from tenfold.train.shards import init_generator, one_hot, shard_indices, to_inputs

__all__ = [
    "CHAR_GPT_CONTEXT",
    "RECIPES",
    "Evaluator",
    "Recipe",
    "get_recipe",
    "image_fingerprint",
    "locate_data",
]

#: ``evaluator(model) -> metrics``: ``test_accuracy``/``test_loss`` for classifiers,
#: ``val_loss`` (nats/char) and ``val_perplexity`` for the language model.
Evaluator = Callable[[nn.Module], dict[str, float]]

#: char-gpt's shape: 4 layers, 4 heads, 128 wide, context 128 (about 0.8M parameters).
CHAR_GPT_CONTEXT = 128
_CHAR_GPT_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128}
#: Validation windows of char-gpt: this many batches of ``eval_batch_size`` windows, spread
#: evenly over the held-out text (the same windows every evaluation).
CHAR_GPT_EVAL_BATCHES = 4


class Recipe(Protocol):
    """The factories of one model's training."""

    name: str

    def load_data(self, config: TrainConfig) -> Any:
        """The data set (raises :class:`~tenfold.train.data.DatasetError` when missing)."""
        ...

    def make_workers(self, config: TrainConfig, data: Any, ranks: Sequence[int]) -> list[Any]:
        """The workers of ``ranks`` (each on its own shard), identically initialised."""
        ...

    def make_evaluator(self, config: TrainConfig, data: Any) -> Evaluator:
        """The held-out evaluation (lead process only)."""
        ...

    def fingerprint(self, data: Any) -> dict[str, Any]:
        """``{"sha256", "train", "test"}``: what a resumed run checks it trains on."""
        ...

    def describe(self, data: Any) -> str:
        """One line for the start-up message (what data, how much)."""
        ...


def image_fingerprint(data: IdxDataset) -> dict[str, Any]:
    """SHA-256 over the four arrays (shapes and bytes) plus the split sizes.

    A resumed run checks it: the same seed on other data would silently not be the same run.
    """
    h = hashlib.sha256()
    for array in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        a = np.ascontiguousarray(array)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return {"sha256": h.hexdigest(), "train": len(data.train_labels), "test": len(data.test_labels)}


class _ImageRecipe:
    """Shared by the two Fashion-MNIST models: data, fingerprint, description."""

    name = ""

    def load_data(self, config: TrainConfig) -> IdxDataset:
        return load_dataset(config.dataset, config.data_dir, download=config.download)

    def fingerprint(self, data: IdxDataset) -> dict[str, Any]:
        return image_fingerprint(data)

    def describe(self, data: IdxDataset) -> str:
        return f"{len(data.train_labels)} training images from {data.source}"


class PaperMLPRecipe(_ImageRecipe):
    """The paper's experiment, exactly as before the engine existed."""

    name = "paper-mlp"

    def make_workers(
        self, config: TrainConfig, data: IdxDataset, ranks: Sequence[int]
    ) -> list[PaperWorker]:
        shards = shard_indices(len(data.train_labels), config.workers, config.seed)
        return [
            PaperWorker(
                config,
                r,
                to_inputs(data.train_images[shards[r]]),
                one_hot(data.train_labels[shards[r]]),
            )
            for r in ranks
        ]

    def make_evaluator(self, config: TrainConfig, data: IdxDataset) -> Evaluator:
        test = EvalSet.from_arrays(data.test_images, data.test_labels)

        def run(model: nn.Module) -> dict[str, float]:
            accuracy, loss = evaluate_paper_mlp(model, test, config.eval_batch_size)
            return {"test_accuracy": accuracy, "test_loss": loss}

        return run


def _sgd_momentum(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, momentum=0.9
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Accuracy (fraction) and mean cross-entropy (nats) in eval mode (BatchNorm uses its
    running statistics); restores the training flag."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    try:
        for start in range(0, len(labels), batch_size):
            logits = model(inputs[start : start + batch_size])
            y = labels[start : start + batch_size]
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return {"test_accuracy": correct / len(labels), "test_loss": loss / len(labels)}


class CNNRecipe(_ImageRecipe):
    """A small BatchNorm conv net on Fashion-MNIST (SGD with momentum 0.9)."""

    name = "cnn"

    def make_workers(
        self, config: TrainConfig, data: IdxDataset, ranks: Sequence[int]
    ) -> list[ModuleWorker]:
        from tenfold.train.models import FashionCNN

        shards = shard_indices(len(data.train_labels), config.workers, config.seed)
        out = []
        for r in ranks:
            model = FashionCNN(init_generator(config.seed))
            batches = ShuffledShard(
                stack_inputs(data.train_images[shards[r]]),
                torch.from_numpy(data.train_labels[shards[r]].astype(np.int64)),
                batch_size=config.batch_size,
                seed=config.seed,
                rank=r,
            )
            out.append(ModuleWorker(config, r, model, batches, cross_entropy_loss, _sgd_momentum))
        return out

    def make_evaluator(self, config: TrainConfig, data: IdxDataset) -> Evaluator:
        inputs = stack_inputs(data.test_images)
        labels = torch.from_numpy(data.test_labels.astype(np.int64))
        return lambda model: evaluate_classifier(model, inputs, labels, config.eval_batch_size)


@dataclass(frozen=True)
class TextData:
    """The character corpus split for training: ``train`` / ``val`` token ids and the
    corpus (its vocabulary, hash and source)."""

    corpus: Any  # tenfold.train.text.Corpus
    train: np.ndarray
    val: np.ndarray

    @property
    def source(self) -> str:
        """Where the corpus was read from."""
        return str(self.corpus.source)


class _TextBatches:
    """A worker's batches of char-gpt: random windows of its contiguous shard of the
    training text, batch ``k`` a function of ``(seed, rank, k)``; an "epoch" is as many
    steps as windows it takes to cover the shard once."""

    def __init__(self, shard: np.ndarray, config: TrainConfig, rank: int) -> None:
        from tenfold.train.text import BatchSampler

        self.sampler = BatchSampler(
            shard, batch=config.batch_size, context=CHAR_GPT_CONTEXT, seed=config.seed, rank=rank
        )
        self._steps = max(1, len(shard) // (config.batch_size * CHAR_GPT_CONTEXT))

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.batch(step)


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    from tenfold.train.models import configure_adamw

    return configure_adamw(model, lr=config.lr)


class CharGPTRecipe:
    """A nanoGPT-like character model on Shakespeare (AdamW, cross-entropy in nats/char)."""

    name = "char-gpt"

    def load_data(self, config: TrainConfig) -> TextData:
        from tenfold.train.text import load_corpus, split

        corpus = load_corpus(config.data_dir, download=config.download)
        train, val = split(corpus.data)
        return TextData(corpus=corpus, train=train, val=val)

    def make_workers(
        self, config: TrainConfig, data: TextData, ranks: Sequence[int]
    ) -> list[ModuleWorker]:
        from tenfold.train.models import CharGPT, CharGPTConfig

        per_rank = len(data.train) // config.workers
        if per_rank <= CHAR_GPT_CONTEXT + 1:
            raise DatasetError(
                f"{len(data.train)} training characters cannot feed {config.workers} workers "
                f"windows of {CHAR_GPT_CONTEXT} + 1"
            )
        shape = CharGPTConfig(
            vocab_size=data.corpus.vocab_size, context=CHAR_GPT_CONTEXT, **_CHAR_GPT_SHAPE
        )
        out = []
        for r in ranks:
            model = CharGPT(shape, init_generator(config.seed))
            shard = data.train[r * per_rank : (r + 1) * per_rank]
            batches = _TextBatches(shard, config, r)
            out.append(ModuleWorker(config, r, model, batches, cross_entropy_loss, _adamw))
        return out

    def make_evaluator(self, config: TrainConfig, data: TextData) -> Evaluator:
        from tenfold.train.text import perplexity, validation_loss

        def run(model: nn.Module) -> dict[str, float]:
            loss = validation_loss(
                model,
                data.val,
                CHAR_GPT_CONTEXT,
                CHAR_GPT_EVAL_BATCHES,
                batch_size=config.eval_batch_size,
            )
            return {"val_loss": loss, "val_perplexity": perplexity(loss)}

        return run

    def fingerprint(self, data: TextData) -> dict[str, Any]:
        return {"sha256": data.corpus.sha256, "train": len(data.train), "test": len(data.val)}

    def describe(self, data: TextData) -> str:
        return (
            f"{len(data.train):,} training / {len(data.val):,} validation characters "
            f"(vocabulary {data.corpus.vocab_size}) from {data.corpus.source}"
        )


#: Model name -> recipe.
RECIPES: dict[str, Recipe] = {r.name: r for r in (PaperMLPRecipe(), CNNRecipe(), CharGPTRecipe())}


def locate_data(config: TrainConfig) -> tuple[TrainConfig, Any]:
    """Find (or download) and load ``config``'s data once, before any rank starts.

    Returns the config with the data's location made absolute (ranks, and a resumed run
    started elsewhere, read exactly these files) and the loaded data.

    Raises:
        DatasetError: the data is missing or damaged (the message says what to do).
    """
    import os

    from tenfold.train.data import find_dataset

    recipe = get_recipe(config.model)
    if config.model == "char-gpt":
        if config.data_dir is not None:
            config = config.replace(data_dir=os.path.abspath(config.data_dir))
        return config, recipe.load_data(config)
    data_dir = find_dataset(config.dataset, config.data_dir, download=config.download)
    config = config.replace(data_dir=os.path.abspath(data_dir))
    return config, recipe.load_data(config)


def get_recipe(name: str) -> Recipe:
    """The recipe of ``--model name``.

    Raises:
        ValueError: unknown model.
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(RECIPES)}") from None
