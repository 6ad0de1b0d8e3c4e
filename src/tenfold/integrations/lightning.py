"""PyTorch Lightning: tenfold's DDP communication hook on any device, as a callback.

Lightning's ``DDPStrategy(ddp_comm_state=..., ddp_comm_hook=...)`` registers the hook only
when the model is on CUDA; on CPU (gloo) it ignores both arguments without a word and DDP
sends float32 gradients. :class:`CompressedDDPHook` registers the hook itself once
Lightning has wrapped the model in ``DistributedDataParallel``, whatever the device::

    import lightning.pytorch as pl
    from tenfold.integrations.lightning import CompressedDDPHook

    hook = CompressedDDPHook(tenfold.TargetRate(bits_per_param=1.0))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", callbacks=[hook])
    trainer.fit(module, loader)
    hook.state.stats.total.bytes_sent

On GPUs the strategy's arguments work as well; giving both is allowed when they share the
same :class:`~tenfold.distributed.hooks.CompressionState` (the callback then sees the hook
registered and does nothing). This module imports ``lightning`` (an optional dependency:
``pip install 'tenfold[examples]'``); ``import tenfold`` never imports it.
"""

from __future__ import annotations

from typing import Any

from torch.nn.parallel import DistributedDataParallel

from tenfold.integrations import MissingDependencyError

try:
    import lightning.pytorch as pl
except ImportError as exc:  # an optional dependency: say how to get it
    raise MissingDependencyError(
        "tenfold.integrations.lightning needs PyTorch Lightning: pip install 'tenfold[examples]' "
        "(or pip install lightning)"
    ) from exc

from tenfold.codec import TargetRate
from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook
from tenfold.errors import ConfigError

__all__ = ["CompressedDDPHook"]


class CompressedDDPHook(pl.Callback):
    """Register :func:`~tenfold.distributed.hooks.compressed_allreduce_hook` on Lightning's
    DDP model at the start of every ``fit``, on CPU and GPU alike.

    Args:
        policy: the tenfold policy of a new :class:`CompressionState`, built when the fit
            starts (the process group exists by then); None with no ``state``:
            ``tenfold.TargetRate(bits_per_param=1.0)``.
        state: a :class:`CompressionState` to use instead (e.g. restored with
            ``load_state_dict``, or the one given to ``DDPStrategy(ddp_comm_state=...)``);
            building one needs the process group, so call
            ``torch.distributed.init_process_group`` before (Lightning then reuses it).

    Attributes:
        state: the hook's state (its ``stats`` say what was sent); None before the first fit
            when built from a policy.

    Raises:
        ConfigError: both ``policy`` and ``state`` given; at the start of a fit, a strategy
            that does not wrap the model in ``DistributedDataParallel`` (use
            ``strategy="ddp"``), or another communication hook already registered on it.
    """

    def __init__(self, policy: Any = None, *, state: CompressionState | None = None) -> None:
        if policy is not None and state is not None:
            raise ConfigError("CompressedDDPHook: pass either a policy or a state, not both")
        self.policy = policy
        self.state = state

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register the hook on ``trainer.strategy.model`` (Lightning calls this after the
        strategy has wrapped the model and before the first backward pass)."""
        ddp = trainer.strategy.model
        if not isinstance(ddp, DistributedDataParallel):
            raise ConfigError(
                "CompressedDDPHook needs a strategy that wraps the model in "
                "DistributedDataParallel (strategy='ddp' or DDPStrategy(...)); got "
                f"{type(trainer.strategy).__name__}, whose model is {type(ddp).__name__}"
            )
        if self.state is None:
            if self.policy is None:
                self.policy = TargetRate(bits_per_param=1.0)
            self.state = CompressionState(self.policy)
        # DDP keeps its registered hooks; a second register_comm_hook call raises.
        registered = getattr(ddp, "_comm_hooks", [])
        if any(state is self.state for _, state in registered):
            return  # DDPStrategy(ddp_comm_state=this state, ...) registered it (CUDA)
        if registered:
            raise ConfigError(
                "CompressedDDPHook: the DDP model already has another communication hook "
                "(DDPStrategy(ddp_comm_hook=...)); give DDPStrategy and the callback the same "
                "CompressionState, or use only one of them"
            )
        ddp.register_comm_hook(self.state, compressed_allreduce_hook)
