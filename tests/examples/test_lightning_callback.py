"""tenfold.integrations.lightning.CompressedDDPHook registers the hook on Lightning's DDP
model, once, and refuses what would silently not compress.

Checked on a one-rank gloo group in this process, by what DDP holds registered; the
two-rank run in which the hook codes every gradient is the Lightning example's test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import tenfold
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook
from tenfold.errors import ConfigError
from tenfold.integrations.lightning import CompressedDDPHook


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo",
        init_method=(tmp_path / "rdzv").as_uri(),
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=30),
    )
    try:
        yield
    finally:
        tenfold.distributed.destroy_process_group()


def _trainer(model: nn.Module) -> Any:
    """What the callback reads from a Trainer: ``trainer.strategy.model``."""
    return SimpleNamespace(strategy=SimpleNamespace(model=model))


def _registered(ddp: DistributedDataParallel) -> list[tuple[Any, Any]]:
    """The (hook, state) pairs DDP has registered."""
    return list(ddp._comm_hooks)


def test_registers_the_hook_on_cpu(one_rank_group: None) -> None:
    ddp = DistributedDataParallel(nn.Linear(8, 2))
    callback = CompressedDDPHook(tenfold.TargetRate(bits_per_param=1.0))
    callback.on_fit_start(_trainer(ddp), None)
    assert isinstance(callback.state, CompressionState)
    assert _registered(ddp) == [(compressed_allreduce_hook, callback.state)]


def test_default_policy_and_given_state(one_rank_group: None) -> None:
    callback = CompressedDDPHook()
    callback.on_fit_start(_trainer(DistributedDataParallel(nn.Linear(8, 2))), None)
    assert isinstance(callback.policy, tenfold.TargetRate)
    state = CompressionState(tenfold.Lossless())
    assert CompressedDDPHook(state=state).state is state


def test_same_state_already_registered_is_left_alone(one_rank_group: None) -> None:
    # What DDPStrategy(ddp_comm_state=state, ddp_comm_hook=...) does on CUDA.
    ddp = DistributedDataParallel(nn.Linear(8, 2))
    state = CompressionState(tenfold.TargetRate(bits_per_param=1.0))
    ddp.register_comm_hook(state, compressed_allreduce_hook)
    CompressedDDPHook(state=state).on_fit_start(_trainer(ddp), None)  # no second register
    assert _registered(ddp) == [(compressed_allreduce_hook, state)]


def test_another_hook_already_registered_is_refused(one_rank_group: None) -> None:
    ddp = DistributedDataParallel(nn.Linear(8, 2))
    ddp.register_comm_hook(
        CompressionState(tenfold.TargetRate(bits_per_param=1.0)), compressed_allreduce_hook
    )
    with pytest.raises(ConfigError, match="already has another communication hook"):
        CompressedDDPHook().on_fit_start(_trainer(ddp), None)


def test_a_strategy_without_ddp_is_refused() -> None:
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        CompressedDDPHook().on_fit_start(_trainer(nn.Linear(8, 2)), None)


def test_policy_and_state_together_are_refused(one_rank_group: None) -> None:
    with pytest.raises(ConfigError, match="either a policy or a state"):
        CompressedDDPHook(tenfold.Lossless(), state=CompressionState(tenfold.Lossless()))


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)

    def training_step(self, batch: Any, idx: int) -> Any:
        return self.net(batch[0]).square().sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SeeHooks(Callback):
    """Records the hooks registered on the DDP model when training starts."""

    hooks: list[tuple[Any, Any]] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.hooks = _registered(trainer.strategy.model)


def _fit(tmp_path: Path, strategy: DDPStrategy, callbacks: list[Callback]) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 8)), batch_size=4)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        callbacks=callbacks,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), loader)


def test_the_trap_ddpstrategy_drops_the_hook_on_cpu(one_rank_group: None, tmp_path: Path) -> None:
    """Why the callback exists: on CPU, Lightning's DDPStrategy ignores its hook arguments.
    (If a Lightning release fixes this, this test fails: update the docs of examples/04.)"""
    state = CompressionState(tenfold.TargetRate(bits_per_param=1.0))
    seen = _SeeHooks()
    strategy = DDPStrategy(ddp_comm_state=state, ddp_comm_hook=compressed_allreduce_hook)
    _fit(tmp_path, strategy, [seen])
    assert seen.hooks == []
