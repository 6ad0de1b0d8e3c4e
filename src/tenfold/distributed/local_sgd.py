"""Local SGD and DiLoCo: train alone, synchronise every ``sync_every`` steps through tenfold.

:class:`LocalSGD` wraps a model whose inner optimizer the caller keeps stepping as usual;
``sync.step()`` after every inner step counts the steps and, every ``sync_every`` of them,
synchronises the ranks with an :class:`~tenfold.distributed.Averager` (by default a
:class:`~tenfold.distributed.CompressedAverager` sending pseudo-gradients with error
feedback, ``transmit="delta"``, at ``TargetRate(bits_per_param=1.0)``). Two schemes:

* **Local SGD** (no ``outer_optimizer``): the new shared model is the average.
* **DiLoCo** (``outer_optimizer``, e.g. ``SGD(lr=0.7, momentum=0.9, nesterov=True)``):
  the averaged pseudo-gradient ``g = w_shared - w_avg`` becomes every parameter's
  ``.grad``, the parameters are put back to ``w_shared`` and the outer optimizer steps;
  its result is the new shared model. (As torchft's ``DiLoCo``: an ordinary optimizer,
  fed a pseudo-gradient.)

Example (each rank, after ``torch.distributed.init_process_group``)::

    model = Net()                                   # same seed on every rank, or not:
    inner = torch.optim.AdamW(model.parameters(), lr=3e-4)
    outer = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.9, nesterov=True)
    sync = LocalSGD(model, sync_every=50, outer_optimizer=outer)  # rank 0's model wins
    for x, y in loader:
        inner.zero_grad()
        loss_fn(model(x), y).backward()
        inner.step()
        if (stats := sync.step()) is not None:      # every 50th step: synchronised
            print(stats.bits_per_param)

**What is synchronised.** Parameters with ``requires_grad`` are coded and averaged;
frozen ones are never read nor written (they are assumed equal, as a frozen pretrained
embedding is). Floating buffers (BatchNorm's running mean and variance) are averaged
losslessly, an fp32 ``all_reduce`` mean (float64 buffers in float64; they are tiny:
coding them would save nothing), with ``buffers="average"``, or copied from rank 0 with ``"broadcast"``. Integer and bool
buffers (``num_batches_tracked``) cannot be averaged: with ``"average"`` they are checked
equal on every rank (:class:`BufferMismatchError` names the buffer and the ranks),
with ``"broadcast"`` copied from rank 0. After every sync every rank holds bit-identical
parameters and buffers: the averager guarantees it for the parameters, one all_reduce
(the same sum on every rank) then the same division for the floating buffers, and the
outer optimizer runs the same deterministic step on the same inputs everywhere.

**DiLoCo and the averager's shared model.** A delta-mode :class:`CompressedAverager`
keeps its own copy of the shared model (its *reference*) and sends ``w - reference``.
After :meth:`~CompressedAverager.average` its reference is the average ``w_avg``; the
outer step then moves the model to ``w_new != w_avg``. Left alone, the next delta would
carry the outer step too (every rank's, the same), and be averaged back in: the outer
optimizer would be applied twice. So after the outer step :class:`LocalSGD` calls
:meth:`Averager.set_reference` with ``w_new``: deltas are then local progress since the
outer step, as in DiLoCo. Its reference hash becomes the hash of ``w_new`` on every rank;
a rank whose outer optimizer state differs (resumed from another checkpoint) holds
another ``w_new`` and is named by ``ReferenceMismatchError`` at the next sync, before
anything is averaged. The error-feedback residual is kept across the outer step.

**Precision.** float32, float16 and bfloat16 parameters work: the averager codes and
averages in float32 and rounds the mean to the parameter's dtype. The DiLoCo
pseudo-gradient is formed in float32 and rounded to the parameter's dtype for ``.grad``
(PyTorch requires a gradient of the parameter's dtype); the outer step is then in that
dtype, as an ordinary optimizer step on a half-precision model would be.

**CUDA (NCCL).** The :class:`CompressedAverager` copies the parameters to the CPU, codes
and decodes there, exchanges the packets as CUDA uint8 tensors and copies the mean back
to the device: coding is CPU work. Everything else stays on the device: DiLoCo's copy of
the shared model lives beside the parameters, so the pseudo-gradient, the reset and the
outer step are device ops with no transfer; the buffers' all_reduce runs on a flat CUDA
buffer. Memory: DiLoCo holds one extra copy of the trainable parameters on their device
(torchft keeps it on the CPU instead; here the device copy saves two transfers a sync).

**Checkpoints.** :meth:`LocalSGD.state_dict` holds the step counter, the averager's state
(round, reference and its hash, this rank's residual), the outer optimizer's state and
DiLoCo's shared model. Save it per rank with the model's and the inner optimizer's
state; a run restored from them continues bit for bit.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tenfold.codec import TargetRate
from tenfold.distributed.averaging import Averager, CompressedAverager
from tenfold.distributed.collectives import DEFAULT_COLLECTIVE
from tenfold.distributed.exchange import (
    all_gather_row,
    comm_device,
    is_distributed,
)
from tenfold.distributed.params import Policy, wire_dtype
from tenfold.distributed.stats import SyncStats

__all__ = ["BUFFER_MODES", "BufferMismatchError", "LocalSGD"]

#: How floating buffers are synchronised: their exact mean, or rank 0's.
BUFFER_MODES = ("average", "broadcast")

_HALF = (torch.float16, torch.bfloat16)


class BufferMismatchError(ValueError):
    """A non-floating buffer (e.g. ``num_batches_tracked``) differs across ranks.

    Raised on every rank at the same sync. ``buffers`` maps each such buffer's name to the
    ranks whose value differs from rank 0's.
    """

    def __init__(self, buffers: Mapping[str, Sequence[int]]) -> None:
        self.buffers = {name: tuple(ranks) for name, ranks in buffers.items()}
        parts = [
            f"{name!r} on rank(s) {', '.join(map(str, ranks))}"
            for name, ranks in self.buffers.items()
        ]
        super().__init__(
            "integer/bool buffers cannot be averaged and must agree across ranks, but these "
            f"differ from rank 0's: {'; '.join(parts)} (ranks ran different numbers of "
            "steps, or were restored from different checkpoints); pass "
            "buffers='broadcast' to take rank 0's"
        )


class LocalSGD:
    """Synchronise ``model`` across ranks every ``sync_every`` inner steps (module docstring).

    Collective on construction: every rank agrees on rank 0's trainable parameters and
    buffers (:meth:`Averager.initialize`: one hash exchange when they already agree, a
    broadcast otherwise).

    Args:
        model: the module; its parameters with ``requires_grad`` at construction are the
            ones synchronised (the same names on every rank), the others never touched.
        sync_every: synchronise after every ``sync_every``-th :meth:`step` (an int >= 1).
        policy: the tenfold policy of the default :class:`CompressedAverager` (None:
            ``tenfold.TargetRate(bits_per_param=1.0)``); not with ``averager``.
        outer_optimizer: None for Local SGD (the shared model is the average), or an
            optimizer over the model's trainable parameters for DiLoCo. Its state is part
            of :meth:`state_dict`.
        process_group: the group (None: the default group); for the buffers and the
            default averager. A given ``averager`` keeps its own (it must be the same).
        buffers: ``"average"`` (floating buffers' exact fp32 mean, non-floating ones
            checked equal) or ``"broadcast"`` (every buffer from rank 0).
        averager: any :class:`Averager` (e.g. ``AllReduceAverager()`` for the fp32
            baseline, or a ``CompressedAverager`` with other settings); None: a
            ``CompressedAverager(policy, process_group=process_group)``.
        collective: the default averager's collective (``"reduce-scatter"`` or
            ``"all-gather"``, see :class:`CompressedAverager`); None: its default. Not
            with ``averager``.

    Attributes:
        num_steps: inner steps counted so far (restored by :meth:`load_state_dict`).
        averager: the averager in use.

    Raises:
        ValueError: ``sync_every`` not an int >= 1, ``buffers`` not in
            :data:`BUFFER_MODES`, both ``policy`` (or ``collective``) and ``averager``
            given, an unknown ``collective``, a model with no
            trainable parameter, an outer optimizer missing some trainable parameters,
            or an averager on another process group.
        TypeError: ``averager`` is not an :class:`Averager`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sync_every: int,
        policy: Policy | None = None,
        outer_optimizer: torch.optim.Optimizer | None = None,
        process_group: dist.ProcessGroup | None = None,
        buffers: str = "average",
        averager: Averager | None = None,
        collective: str | None = None,
    ) -> None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {sync_every!r}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        if averager is None:
            policy = TargetRate(bits_per_param=1.0) if policy is None else policy
            averager = CompressedAverager(
                policy,
                process_group=process_group,
                collective=DEFAULT_COLLECTIVE if collective is None else collective,
            )
        elif policy is not None:
            raise ValueError("pass either policy (for the default averager) or averager, not both")
        elif collective is not None:
            raise ValueError(
                "collective is an option of the default averager: pass it to the averager "
                "you give instead"
            )
        elif not isinstance(averager, Averager):
            raise TypeError(
                f"averager must implement tenfold.distributed.Averager, got {type(averager)!r}"
            )
        elif not _same_group(getattr(averager, "process_group", process_group), process_group):
            raise ValueError(
                "averager.process_group is not process_group: the parameters and the "
                "buffers would be synchronised over different groups"
            )
        self.model = model
        self.sync_every = sync_every
        self.outer_optimizer = outer_optimizer
        self.process_group = process_group
        self.buffers = buffers
        self.averager = averager
        self.num_steps = 0
        # Fixed at construction: a parameter frozen later is still synchronised (the
        # averager needs the same tensors every sync).
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("the model has no parameter with requires_grad: nothing to sync")
        if outer_optimizer is not None:
            _check_outer(outer_optimizer, self._params)

        averager.initialize(self._params)
        if self._distributed():
            # Like DDP at construction: every buffer from rank 0, so that the first sync
            # starts from agreeing num_batches_tracked counters.
            self._broadcast_buffers(self._named_buffers())
        # DiLoCo's w_shared, beside the parameters (device ops, no transfer); in their dtype.
        self._shared: dict[str, torch.Tensor] | None = (
            {n: p.detach().clone() for n, p in self._params}
            if outer_optimizer is not None
            else None
        )

    # -- the schedule -----------------------------------------------------------------------

    def step(self) -> SyncStats | None:
        """Count one inner optimizer step; synchronise on every ``sync_every``-th.

        Call it after every ``inner_optimizer.step()``, on every rank (a sync is
        collective). Returns this rank's :class:`SyncStats` when it synchronised, else
        None. The stats are the averager's, for the parameters; the buffers' all_reduce
        (4 bytes a value, a few hundred values for BatchNorm) is not counted in them.
        """
        self.num_steps += 1
        if self.num_steps % self.sync_every:
            return None
        return self.sync()

    def sync(self) -> SyncStats:
        """Synchronise now, whatever the step count (collective): e.g. at the end of
        training. Parameters (and DiLoCo's outer step), then buffers.

        Raises:
            BufferMismatchError: with ``buffers="average"``, a non-floating buffer differs
                across ranks (raised on every rank, after the parameters were synced).
            the averager's errors (``NonFiniteWeightsError``, ``ReferenceMismatchError``,
            ``CommunicationError``...).
        """
        stats = self.averager.average(self._params)
        if self.outer_optimizer is not None:
            self._outer_step()
        if self._distributed():
            named = self._named_buffers()
            if self.buffers == "broadcast":
                self._broadcast_buffers(named)
            else:
                self._average_buffers(named)
        return stats

    def _outer_step(self) -> None:
        """DiLoCo: ``.grad = w_shared - w_avg``, parameters back to ``w_shared``, outer step.

        The parameters hold ``w_avg`` (the averager's mean) on entry and the new shared
        model on exit, which becomes both ``self._shared`` and the averager's reference.
        """
        assert self._shared is not None and self.outer_optimizer is not None
        # The inner optimizer's gradients are put back afterwards: a caller who zeroes
        # them after step() (or accumulates) must not find the pseudo-gradient there.
        inner_grads = [p.grad for _, p in self._params]
        with torch.no_grad():
            for name, p in self._params:
                shared = self._shared[name]
                # DiLoCo's sign: g = w_shared - w_avg, so a descent step moves towards
                # the average. Half dtypes: the difference in float32, rounded once.
                wide = torch.float32 if p.dtype in _HALF else p.dtype
                grad = (shared.to(wide) - p.to(wide)).to(p.dtype)
                p.copy_(shared)
                p.grad = grad
        self.outer_optimizer.step()
        with torch.no_grad():
            for (name, p), inner in zip(self._params, inner_grads, strict=True):
                self._shared[name].copy_(p)
                p.grad = inner
        self.averager.set_reference(self._params)

    # -- buffers ----------------------------------------------------------------------------

    def _distributed(self) -> bool:
        return is_distributed(self.process_group)

    def _named_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.model.named_buffers())

    def _broadcast_buffers(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Every buffer from rank 0, bit for bit: their bytes packed into ONE uint8 tensor
        (any dtype; one collective however many BatchNorm layers there are)."""
        if not named:
            return
        group = self.process_group
        src = dist.get_global_rank(group, 0) if group is not None else 0
        device = comm_device(group)
        flat = torch.cat(
            [b.detach().contiguous().reshape(-1).view(torch.uint8).to(device) for _, b in named]
        )
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        with torch.no_grad():
            for _, b in named:
                n = b.numel() * b.element_size()
                # clone: a slice at an odd byte offset cannot be viewed as a wider dtype
                b.copy_(flat[offset : offset + n].clone().view(b.dtype).view(b.shape))
                offset += n

    def _average_buffers(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Floating buffers: exact mean (one all_reduce per wire dtype); others: checked."""
        group = self.process_group
        world = dist.get_world_size(group)
        device = comm_device(group)
        floating = [(n, b) for n, b in named if b.dtype.is_floating_point]
        others = [(n, b) for n, b in named if not b.dtype.is_floating_point]
        if others:
            _check_equal(others, group)
        by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
        for name, b in floating:
            by_dtype.setdefault(wire_dtype(b.dtype), []).append((name, b))
        with torch.no_grad():
            for dtype, bufs in by_dtype.items():
                flat = torch.cat([b.detach().reshape(-1).to(device, dtype) for _, b in bufs])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
                flat.div_(world)  # the same sum and the same division on every rank
                offset = 0
                for _, b in bufs:
                    b.copy_(flat[offset : offset + b.numel()].view(b.shape))
                    offset += b.numel()

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's state: ``num_steps``, ``averager``, ``outer_optimizer``, ``shared``.

        ``shared`` is DiLoCo's shared model (name -> CPU tensor in the parameter's dtype;
        None for Local SGD). The model's and the inner optimizer's states are the
        caller's to save. The averager's residual is this rank's own: save per rank.
        """
        return {
            "num_steps": self.num_steps,
            "averager": self.averager.state_dict(),
            "outer_optimizer": (
                None if self.outer_optimizer is None else self.outer_optimizer.state_dict()
            ),
            "shared": (
                None
                if self._shared is None
                else {n: t.detach().cpu().clone() for n, t in self._shared.items()}
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (into an object built like the saved one).

        Raises:
            ValueError: a DiLoCo state into Local SGD or the reverse, or a shared model
                with other tensors than the trainable parameters.
        """
        diloco = self.outer_optimizer is not None
        if (state.get("shared") is not None) != diloco:
            raise ValueError(
                "state is for "
                + (
                    "DiLoCo (an outer optimizer)"
                    if state.get("shared") is not None
                    else "Local SGD"
                )
                + ", this LocalSGD "
                + ("has an outer optimizer" if diloco else "has none")
            )
        if self._shared is not None:
            shared = state["shared"]
            want = {n: tuple(p.shape) for n, p in self._params}
            got = {n: tuple(t.shape) for n, t in shared.items()}
            if want != got:
                raise ValueError(
                    f"state's shared model holds {sorted(got)} (shapes {got}), the trainable "
                    f"parameters are {sorted(want)} (shapes {want})"
                )
        self.num_steps = int(state["num_steps"])
        self.averager.load_state_dict(state["averager"])
        if self.outer_optimizer is not None:
            self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        if self._shared is not None:
            with torch.no_grad():
                for name, t in self._shared.items():
                    t.copy_(state["shared"][name])


def _same_group(a: dist.ProcessGroup | None, b: dist.ProcessGroup | None) -> bool:
    """Whether two group arguments name the same group (None is the default group)."""

    def norm(g: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
        return None if dist.is_available() and g is dist.group.WORLD else g

    return norm(a) is norm(b)


def _check_outer(
    optimizer: torch.optim.Optimizer, params: Sequence[tuple[str, torch.Tensor]]
) -> None:
    """Every trainable parameter must be in the outer optimizer: one left out would be
    reset to the shared model at every sync and never move again."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in params if id(p) not in held]
    if missing:
        raise ValueError(
            f"outer_optimizer does not hold the trainable parameters {missing}: build it "
            "over model.parameters() (frozen ones are skipped: they get no gradient)"
        )


def _check_equal(
    named: Sequence[tuple[str, torch.Tensor]], group: dist.ProcessGroup | None
) -> None:
    """All-gather one CRC-32 per buffer; raise on every rank if any rank's differs."""
    crcs = [
        zlib.crc32(b.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data)
        for _, b in named
    ]
    rows = all_gather_row(crcs, group=group, what="comparing integer buffers")
    world = len(rows)
    bad = {
        name: [r for r in range(1, world) if rows[r][i] != rows[0][i]]
        for i, (name, _) in enumerate(named)
    }
    bad = {name: ranks for name, ranks in bad.items() if ranks}
    if bad:
        raise BufferMismatchError(bad)
