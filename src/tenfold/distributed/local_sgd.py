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

**K workers in one process.** :class:`SimulatedLocalSGD` is the same schedule, the same
outer step and the same buffer arithmetic over K models held in one process, averaged by
a :class:`~tenfold.distributed.SimulatedAverager` (or anything with its interface, lifted
over K workers): bit for bit what K ranks of :class:`LocalSGD` compute. Both classes are
one implementation (:class:`_Synchroniser`) that differs only in how rows travel: a
rank's own row goes through a collective, the simulation already holds every row.
``tenfold train`` drives training through these two, for real ranks and for ``--simulate``.

**What is synchronised.** Parameters with ``requires_grad`` are coded and averaged;
frozen ones are never read nor written (they are assumed equal, as a frozen pretrained
embedding is). Floating buffers (BatchNorm's running mean and variance) are averaged
exactly with ``buffers="average"``: every rank's buffers are all-gathered (float32;
float64 buffers in float64; they are tiny: coding them would save nothing), summed in rank
order 0..K-1 and divided by K, the same additions on every rank and in the simulation
(an all_reduce's order of additions depends on the backend: it could not be reproduced in
one process). With ``"broadcast"`` every buffer is copied from rank 0. Integer and bool
buffers (``num_batches_tracked``) cannot be averaged: with ``"average"`` they are checked
equal on every rank (:class:`BufferMismatchError` names the buffer and the ranks), with
``"broadcast"`` copied from rank 0. After every sync every rank holds bit-identical
parameters and buffers.

**DiLoCo and the averager's shared model.** A delta-mode :class:`CompressedAverager`
keeps its own copy of the shared model (its *reference*) and sends ``w - reference``.
After :meth:`~CompressedAverager.average` its reference is the average ``w_avg``; the
outer step then moves the model to ``w_new != w_avg``. Left alone, the next delta would
carry the outer step too (every rank's, the same), and be averaged back in: the outer
optimizer would be applied twice. So after the outer step :class:`LocalSGD` calls
:meth:`Averager.set_reference` with ``w_new``: deltas are then local progress since the
outer step, as in DiLoCo. A rank whose outer optimizer state differs (resumed from another
checkpoint) holds another ``w_new`` and is named by ``ReferenceMismatchError`` at the next
sync, before anything is averaged. The error-feedback residual is kept across the outer
step.

**Precision.** float32, float16 and bfloat16 parameters work: the averager codes and
averages in float32 and rounds the mean to the parameter's dtype. The DiLoCo
pseudo-gradient is formed in float32 and rounded to the parameter's dtype for ``.grad``;
the outer step is then in that dtype, as an ordinary optimizer step on a half-precision
model would be.

**CUDA (NCCL).** The :class:`CompressedAverager` codes on the CPU and exchanges packets
as CUDA uint8 tensors. Everything else stays on the device: DiLoCo's copy of the shared
model lives beside the parameters (one extra copy of the trainable parameters), the
buffers' all-gather runs on flat CUDA buffers.

**Memory** (blocking, over a delta-mode tenfold averager): between syncs the averager's
reference (the shared model, which DiLoCo reads instead of keeping its own) and its
error-feedback residual, one model each in float32, plus the outer optimizer's own state;
during a sync the all-gather's chunk-sized buffers. DiLoCo's pseudo-gradient lives in the
reference's memory during the outer step (the sync leaves the reference at ``w_shared``;
the outer step's result replaces it), formed in place, and the outer optimizer's own
temporaries (torch's Nesterov ``SGD``: one per tensor) are what the step adds; with CUDA
or half-precision parameters, and in :class:`SimulatedLocalSGD`, a copy of ``w_shared``
(one model) is made instead. ``benchmarks/sync_memory.py`` measures it.

**Checkpoints.** :meth:`LocalSGD.state_dict` holds the step counter, the averager's state
(round, reference and its hash, this rank's residual), the outer optimizer's state and
DiLoCo's shared model. Save it per rank with the model's and the inner optimizer's
state; a run restored from them continues bit for bit.

**Overlap** (``overlap=True``; docs/OVERLAP.md). The sync of round t runs in a background
thread while round t+1's inner steps compute, and is applied one round late (the
one-step-delayed outer update): at each boundary the finished sync's update moves the
shared model, every rank's parameters are set to it (bit-identical), and this round's
pseudo-gradient ``w - w_round_start`` is sent in the background. :meth:`wait` applies
the last one at the end of training. While a sync is in flight nothing else may run a
collective on the averager's group (:meth:`join` first, or give the averager its own
group, ``dist.new_group()``).
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tenfold.codec import Policy, TargetRate
from tenfold.distributed.averager_base import AveragerBase
from tenfold.distributed.averaging import Averager, CompressedAverager
from tenfold.distributed.collective import DEFAULT_COLLECTIVE
from tenfold.distributed.delta_kernels import swap_difference
from tenfold.distributed.errors import BufferMismatchError
from tenfold.distributed.outer_delay import warn_if_unstable
from tenfold.distributed.params import ParamsLike, wire_dtype
from tenfold.distributed.process_group import (
    comm_device,
    is_distributed,
    require_process_group,
)
from tenfold.distributed.simulated import SimulatedAverager
from tenfold.distributed.stats import SyncStats
from tenfold.distributed.transport import all_gather_row, translate_comm_errors
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "BUFFER_MODES",
    "BufferMismatchError",
    "GradRMS",
    "GroupAverager",
    "LocalSGD",
    "SimulatedLocalSGD",
]

#: How floating buffers are synchronised: their exact mean, or rank 0's.
BUFFER_MODES = ("average", "broadcast")

#: ``grad_rms() -> {name: rms}``: per-tensor RMS of the loss gradient since the previous
#: sync (what ``GradientRMS`` policies code with; recorded in the stats), or None.
GradRMS = Callable[[], Mapping[str, float] | None]

_HALF = (torch.float16, torch.bfloat16)


class GroupAverager(Protocol):
    """What :class:`SimulatedLocalSGD` needs of its averager: :class:`Averager`'s methods
    lifted over K workers held in one process, as :class:`SimulatedAverager` has them
    (one ``ParamsLike`` per worker in, one :class:`SyncStats` per worker out)."""

    round: int

    def initialize(self, workers: Sequence[ParamsLike]) -> int: ...

    def average(
        self,
        workers: Sequence[ParamsLike],
        *,
        grad_rms: Sequence[Mapping[str, float] | None] | None = None,
    ) -> list[SyncStats]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class _Replica:
    """One model the synchroniser keeps in step: its trainable parameters, its outer
    optimizer and where its gradient RMS comes from; DiLoCo's copy of the shared model
    when the averager keeps none; and, overlapped, the round's start and the sync's row."""

    def __init__(
        self,
        model: nn.Module,
        outer_optimizer: torch.optim.Optimizer | None,
        grad_rms: GradRMS | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            hint = " (the model itself, not its state_dict())" if isinstance(model, Mapping) else ""
            raise InputTypeError(
                f"model must be a torch.nn.Module{hint}, got {type(model).__name__}"
            )
        self.model = model
        self.outer_optimizer = outer_optimizer
        self.grad_rms = grad_rms
        # Fixed at construction: a parameter frozen later is still synchronised (the
        # averager needs the same tensors every sync).
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no parameter with requires_grad: nothing to sync")
        if outer_optimizer is not None:
            _check_outer(outer_optimizer, self.params)
        #: blocking DiLoCo's w_shared, kept only when the averager has no shared model of
        #: its own to read it from (weights mode, AllReduceAverager, peer methods)
        self.shared: dict[str, torch.Tensor] | None = None
        #: overlapped: the shared model this round started from (the parameters' dtype and
        #: device), and the sync's row (CPU, wire dtype): its input ``start + delta`` while
        #: in flight, then its result ``start_then + update`` until applied
        self.start: dict[str, torch.Tensor] | None = None
        self.row: dict[str, torch.Tensor] | None = None

    @property
    def diloco(self) -> bool:
        return self.outer_optimizer is not None

    def keep_shared(self) -> None:
        """Blocking DiLoCo's own w_shared, beside the parameters, in their dtype."""
        self.shared = {n: p.detach().clone() for n, p in self.params}

    def keep_start(self) -> None:
        """Overlapped: the parameters (a round boundary) are the round's start."""
        self.start = {n: p.detach().clone() for n, p in self.params}

    def buffers(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.model.named_buffers())

    def outer_step(
        self,
        shared: Mapping[str, torch.Tensor],
        averaged: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """DiLoCo: ``.grad = w_shared - w_avg``, parameters back to ``w_shared``, outer step.

        The parameters hold ``w_avg`` (the averager's mean) on entry and the new shared
        model on exit (the caller re-bases the averager); ``shared`` is ``w_shared``.
        ``averaged``: the averager's reference after the sync (name -> wire-dtype array),
        which the parameters were copied from, given only when ``shared`` is the caller's
        temporary: a float32/float64 parameter's pseudo-gradient is then formed in
        ``shared`` (``shared - averaged``, the same values as ``shared - p``) instead of
        in a new model-sized tensor.
        """
        assert self.outer_optimizer is not None
        # The inner optimizer's gradients are put back afterwards: a caller who zeroes
        # them after step() (or accumulates) must not find the pseudo-gradient there.
        inner_grads = [p.grad for _, p in self.params]
        with torch.no_grad():
            for name, p in self.params:
                w_shared = shared[name].to(p.device)
                # DiLoCo's sign: g = w_shared - w_avg, so a descent step moves towards
                # the average. Half dtypes: the difference in float32, rounded once.
                if averaged is not None and p.dtype == wire_dtype(p.dtype):
                    p.copy_(w_shared)
                    w_avg = torch.from_numpy(averaged[name]).reshape(p.shape).to(p.device)
                    p.grad = w_shared.sub_(w_avg)
                    continue
                wide = torch.float32 if p.dtype in _HALF else p.dtype
                grad = (w_shared.to(wide) - p.to(wide)).to(p.dtype)
                p.copy_(w_shared)
                p.grad = grad
        self.outer_optimizer.step()
        with torch.no_grad():
            for (name, p), inner in zip(self.params, inner_grads, strict=True):
                if self.shared is not None:
                    self.shared[name].copy_(p)
                p.grad = inner

    def outer_step_in(self, reference: Mapping[str, np.ndarray]) -> None:
        """DiLoCo's outer step with the pseudo-gradient in ``reference``'s memory.

        On entry the parameters hold ``w_avg`` and ``reference`` (the averager's, CPU
        arrays in the parameters' dtype, left at ``w_shared`` by the sync) ``w_shared``.
        Tensor by tensor ``g = w_shared - w_avg`` (in place, the same values
        as :meth:`outer_step`) goes into ``reference`` and the parameter back to
        ``w_shared``; the outer optimizer steps on ``.grad`` = those arrays. On exit the
        parameters hold the new shared model and ``reference`` garbage: the caller
        re-bases the averager at once (an error in the outer step leaves it so too:
        restore from a checkpoint).
        """
        assert self.outer_optimizer is not None
        inner_grads = [p.grad for _, p in self.params]  # put back afterwards
        with torch.no_grad():
            for name, p in self.params:
                # in place, no temporary (freed ones of every size stayed resident,
                # 0.4-0.6x the model); the parameters are CPU tensors in the reference's
                # dtype (_reference_for_gradient), so their numpy views share memory
                swap_difference(reference[name].reshape(p.shape), p.detach().numpy())
                p.grad = torch.from_numpy(reference[name]).view(p.shape)
        self.outer_optimizer.step()
        for (_, p), inner in zip(self.params, inner_grads, strict=True):
            p.grad = inner

    def advance(self, pending: bool, *, launch: bool, unmoved: bool) -> None:
        """Overlapped: move to the next shared model, and (``launch``) form the next row.

        On entry ``start`` is this round's start s, the parameters w, and with ``pending``
        ``row`` holds the finished sync's result s + u (u: the averaged update). The new
        shared model s' is s + u (Local SGD) or the outer step on ``g = s - (s + u)``
        (DiLoCo), or s when nothing is pending. On exit ``start`` is s'; the parameters
        are s' (``launch``, or ``unmoved``: w is still s) or s' + (w - s) (local progress
        kept, mid-round); with ``launch`` ``row`` is ``(w - s) + s'`` in the wire dtype,
        the next sync's input, otherwise None. Same operations on every rank.
        """
        assert self.start is not None
        keep_delta = launch or not unmoved
        diloco_step = pending and self.diloco
        inner_grads = [p.grad for _, p in self.params] if diloco_step else []
        deltas: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in self.params:
                start = self.start[name]
                wire = wire_dtype(p.dtype)
                if pending and self.diloco:
                    assert self.row is not None
                    wide = torch.float32 if p.dtype in _HALF else p.dtype
                    result = self.row[name].to(p.device, wide)
                    grad = (start.to(wide) - result).to(p.dtype)
                else:
                    grad = None
                if keep_delta:  # w - s, in the wire dtype, on the CPU (the row's home)
                    deltas[name] = (p.to(wire) - start.to(wire)).cpu()
                if pending and not self.diloco:
                    assert self.row is not None
                    start.copy_(self.row[name])  # s' = s + u, rounded to the dtype
                if grad is not None:
                    p.copy_(start)
                    p.grad = grad
            if diloco_step:
                assert self.outer_optimizer is not None
                self.outer_optimizer.step()
            for (name, p), inner in zip(
                self.params, inner_grads or [None] * len(self.params), strict=True
            ):
                start = self.start[name]
                if diloco_step:
                    start.copy_(p)  # s' is the outer step's result
                    p.grad = inner
                if launch or unmoved:
                    p.copy_(start)
                else:
                    p.copy_(start.to(deltas[name].device, deltas[name].dtype) + deltas[name])
                if launch:
                    deltas[name].add_(start.to("cpu", deltas[name].dtype))
        self.row = deltas if launch else None

    def state(
        self, reference: Mapping[str, np.ndarray] | None
    ) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
        """The outer optimizer's state and (blocking DiLoCo) w_shared as CPU tensors in the
        parameters' dtype: its own copy, or ``reference`` (the averager's) cast."""
        if not self.diloco:
            return None, None
        assert self.outer_optimizer is not None
        if self.start is not None:  # overlapped: its state is in overlap_state()
            return self.outer_optimizer.state_dict(), None
        if self.shared is not None:
            shared = {n: t.detach().cpu().clone() for n, t in self.shared.items()}
        else:
            assert reference is not None
            shared = {n: torch.from_numpy(reference[n]).to(p.dtype) for n, p in self.params}
        return self.outer_optimizer.state_dict(), shared

    def overlap_state(self) -> dict[str, Any]:
        """Overlapped: the round's start and the finished sync's result (CPU copies)."""
        assert self.start is not None
        return {
            "start": {n: t.detach().cpu().clone() for n, t in self.start.items()},
            "row": None if self.row is None else {n: t.clone() for n, t in self.row.items()},
        }

    def load(
        self,
        outer: Mapping[str, Any] | None,
        shared: Mapping[str, Any] | None,
        overlap: Mapping[str, Any] | None,
    ) -> None:
        if (overlap is not None) != (self.start is not None):
            raise ConfigError(
                "state is for "
                + ("an overlapped" if overlap is not None else "a blocking")
                + " LocalSGD, this one is "
                + ("overlapped" if self.start is not None else "blocking")
                + " (overlap= must match the saved run's)"
            )
        if overlap is None and (shared is not None) != self.diloco:
            raise ConfigError(
                "state is for "
                + ("DiLoCo (an outer optimizer)" if shared is not None else "Local SGD")
                + ", this LocalSGD "
                + ("has an outer optimizer" if self.diloco else "has none")
            )
        if overlap is not None and (outer is not None) != self.diloco:
            raise ConfigError(
                "state is for "
                + ("DiLoCo (an outer optimizer)" if outer is not None else "Local SGD")
                + ", this LocalSGD "
                + ("has an outer optimizer" if self.diloco else "has none")
            )
        want = {n: tuple(p.shape) for n, p in self.params}
        for what, tensors in (("shared model", shared), ("round start", _get(overlap, "start"))):
            got = None if tensors is None else {n: tuple(t.shape) for n, t in tensors.items()}
            if got is not None and want != got:
                raise ConfigError(
                    f"state's {what} holds {sorted(got)} (shapes {got}), the trainable "
                    f"parameters are {sorted(want)} (shapes {want})"
                )
        if self.outer_optimizer is not None:
            self.outer_optimizer.load_state_dict(dict(outer or {}))
        with torch.no_grad():
            if self.shared is not None and shared is not None:
                for name, t in self.shared.items():
                    t.copy_(shared[name])
            if overlap is not None:
                assert self.start is not None
                for name, t in self.start.items():
                    t.copy_(overlap["start"][name])
                row = overlap.get("row")
                self.row = (
                    None
                    if row is None
                    else {
                        n: row[n].detach().to("cpu", wire_dtype(p.dtype)).clone()
                        for n, p in self.params
                    }
                )


def _named(tensors: Mapping[str, torch.Tensor] | None) -> list[tuple[str, torch.Tensor]]:
    assert tensors is not None
    return list(tensors.items())


def _get(state: Mapping[str, Any] | None, key: str) -> Any:
    return None if state is None else state.get(key)


def averager_reference(averager: Any) -> Mapping[str, np.ndarray] | None:
    """The shared model a delta-mode tenfold averager keeps (name -> wire-dtype array),
    or None (weights mode, ``AllReduceAverager``, a peer method, none established yet).

    Read, never written: blocking DiLoCo takes ``w_shared`` from it instead of keeping a
    copy of its own. (It reads ``averager.reference.arrays``; a public accessor on the
    averagers would replace this.)
    """
    if getattr(averager, "transmit", None) != "delta":
        return None
    arrays = getattr(getattr(averager, "reference", None), "arrays", None)
    return arrays if isinstance(arrays, Mapping) else None


class _Flight:
    """One background sync: its thread, and what it ended with."""

    def __init__(self, target: Callable[[], SyncStats]) -> None:
        self.stats: SyncStats | None = None
        self.error: BaseException | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, name="tenfold-local-sgd", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.stats = self._target()
        except BaseException as exc:  # re-raised on the training thread
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()


class _Synchroniser:
    """The schedule and the sync, written once over the replicas this process holds (one
    per rank; K when simulated). Subclasses say how the rows of a collective travel."""

    averager: Any

    def __init__(
        self, sync_every: int, buffers: str, replicas: list[_Replica], overlap: bool = False
    ) -> None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ConfigError(f"sync_every must be an int >= 1, got {sync_every!r}")
        if buffers not in BUFFER_MODES:
            raise ConfigError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        if not isinstance(overlap, bool):
            raise InputTypeError(f"overlap must be a bool, got {overlap!r}")
        self.sync_every = sync_every
        self.buffers = buffers
        #: the sync runs behind the next round's inner steps (module docstring)
        self.overlap = overlap
        self.num_steps = 0
        #: bytes this rank (worker 0 when simulated) sent for the buffers at the last sync
        self.buffer_bytes_sent = 0
        self._replicas = replicas
        self._flight: _Flight | None = None
        self._pending = False  # overlapped: the replicas' rows hold a finished sync's result
        self._pending_stats: SyncStats | None = None
        self._failure: BaseException | None = None
        self._unmoved = True  # overlapped: no inner step since the last boundary
        if overlap:  # the subclass's __init__, then the user's line
            warn_if_unstable(replicas[0].outer_optimizer, stacklevel=3)

    # -- what differs between a rank and the simulation ---------------------------------------

    def _world(self) -> int:
        """Ranks taking part (1: nothing to synchronise)."""
        raise NotImplementedError

    def _average(
        self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]], rms: list[Any]
    ) -> SyncStats:
        """The averager's sync of every replica's row, in place; the first replica's stats."""
        raise NotImplementedError

    def _rebase(self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]]) -> None:
        """After DiLoCo's outer step: the averager's shared model is the new one."""
        raise NotImplementedError

    def _gather(self, flats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every rank's flat row in rank order, from this process's replicas' rows."""
        raise NotImplementedError

    def _gather_ints(self, rows: list[list[int]]) -> list[list[int]]:
        """Every rank's row of integers in rank order, from this process's replicas' rows."""
        raise NotImplementedError

    def _from_rank0(self, flats: list[torch.Tensor]) -> torch.Tensor:
        """Rank 0's flat row, from this process's replicas' rows."""
        raise NotImplementedError

    def _rank(self, index: int) -> int:
        """The rank of replica ``index``."""
        raise NotImplementedError

    # -- the schedule ---------------------------------------------------------------------------

    def step(self) -> SyncStats | None:
        """Count one inner optimizer step; synchronise on every ``sync_every``-th.

        Call it after every ``inner_optimizer.step()`` (simulated: after every worker made
        its step), on every rank (a sync is collective). Returns this rank's (worker 0's)
        :class:`SyncStats` when it synchronised, else None. The stats are the averager's,
        for the parameters; the buffers' bytes are :attr:`buffer_bytes_sent`.

        Overlapped: at a boundary it applies the sync launched at the previous one (its
        stats are returned; None at the first boundary, when none was in flight) and
        launches this round's in the background. A background sync that failed (a dead
        peer, NaN, a corrupt packet) raises its error here, at the first step() after it
        ended, and at every later call.
        """
        self._raise_failure()
        self.num_steps += 1
        self._unmoved = False
        if self.num_steps % self.sync_every:
            return None
        if not self.overlap:
            return self.sync()
        self._finish_flight()
        stats = self._pending_stats if self._pending else None  # (join() may have waited)
        self._advance(launch=True)
        self._sync_buffers()
        self._launch()
        return stats

    def sync(self) -> SyncStats:
        """Synchronise now, whatever the step count (collective): e.g. at the end of
        training. Parameters (and DiLoCo's outer step), then buffers.

        Overlapped: a boundary now (the sync in flight is applied, this one launched),
        then :meth:`wait`: nothing is left in flight and every rank holds the same model.

        Raises:
            BufferMismatchError: with ``buffers="average"``, a non-floating buffer differs
                across ranks (raised on every rank, after the parameters were synced).
            the averager's errors (``NonFiniteWeightsError``, ``ReferenceMismatchError``,
            ``CommunicationError``...).
        """
        self._raise_failure()
        if self.overlap:
            self._finish_flight()
            self._advance(launch=True)
            self._sync_buffers()
            self._launch()
            stats = self.wait()
            assert stats is not None
            return stats
        diloco = self._replicas[0].diloco
        in_reference = self._reference_for_gradient() if diloco else None
        if in_reference is not None:
            # the averager's reference stays w_shared through the sync and then holds the
            # pseudo-gradient: no model-sized copy is made
            replica = self._replicas[0]
            stats = in_reference.average(
                replica.params, grad_rms=self._grad_rms()[0], advance_reference=False
            )
            replica.outer_step_in(in_reference.reference.align(replica.params))
            self._rebase([replica.params])
            self._sync_buffers()
            return stats
        # blocking DiLoCo's w_shared: its own copy, or the averager's reference read now
        # (the sync advances it in place)
        shared = [self._shared_model(r) for r in self._replicas] if diloco else []
        tenfold_avg = self.averager if isinstance(self.averager, AveragerBase) else None
        tag = tenfold_avg.reference.tag if tenfold_avg is not None else None
        stats = self._average([r.params for r in self._replicas], self._grad_rms())
        if diloco:
            # A tenfold averager whose reference moved (its hash changes with every sync
            # that averaged; a group of one rank leaves both alone) holds w_avg there, and
            # the parameters are a copy of it: the pseudo-gradient then takes the place of
            # the w_shared copy instead of a model of its own.
            moved = tenfold_avg is not None and tenfold_avg.reference.tag != tag
            averaged = averager_reference(tenfold_avg) if moved else None
            for replica, w_shared in zip(self._replicas, shared, strict=True):
                replica.outer_step(w_shared, averaged if replica.shared is None else None)
            del shared
            self._rebase([r.params for r in self._replicas])
        self._sync_buffers()
        return stats

    def join(self) -> None:
        """Overlapped: block until the sync in flight (if any) has finished. Its result is
        still applied at the next boundary (the schedule does not change). Call it before
        running another collective on the averager's group, or reading the averager.

        Raises:
            the background sync's error, if it failed.
        """
        self._raise_failure()
        self._finish_flight()

    def wait(self) -> SyncStats | None:
        """Overlapped: wait for the sync in flight and apply its result now (at the end of
        training: the last round's sync). At a boundary every rank then holds the same
        new shared model; mid-round the local steps since the boundary are kept on top of
        it. Returns its stats, or None when nothing was in flight (and always when not
        overlapped: a blocking sync is applied when it runs).

        Raises:
            the background sync's error, if it failed.
        """
        self.join()
        if not self._pending:
            return None
        stats = self._pending_stats
        self._advance(launch=False)
        return stats

    def close(self) -> None:
        """Wait for the sync in flight to end (so no thread outlives training); its result
        is not applied (:meth:`wait` applies it). Does not raise the sync's error: the
        next :meth:`step`, :meth:`sync`, :meth:`wait` or :meth:`state_dict` does."""
        with contextlib.suppress(BaseException):  # kept in self._failure
            self._finish_flight()

    @property
    def pending_stats(self) -> SyncStats | None:
        """Overlapped: the stats of the finished sync not applied yet (after :meth:`join`),
        or None."""
        return self._pending_stats if self._pending else None

    @property
    def in_flight(self) -> bool:
        """Whether a background sync has been launched and not yet joined."""
        return self._flight is not None

    def _raise_failure(self) -> None:
        """Raise a failed background sync's error (once it has ended) on this thread."""
        flight = self._flight
        if self._failure is None and flight is not None and flight.done() and flight.error:
            self._failure = flight.error
        if self._failure is not None:
            raise self._failure

    def _finish_flight(self) -> SyncStats | None:
        """Wait for the sync in flight; keep its result pending. Its stats, or None."""
        flight, self._flight = self._flight, None
        if flight is None:
            self._raise_failure()
            return None
        flight.thread.join()
        if flight.error is not None:
            self._failure = flight.error
            raise flight.error
        self._pending = True
        self._pending_stats = flight.stats
        return flight.stats

    def _advance(self, *, launch: bool) -> None:
        """Every replica to the next shared model (:meth:`_Replica.advance`); DiLoCo
        re-bases the averager on it (nothing in flight here)."""
        pending = self._pending
        for replica in self._replicas:
            replica.advance(pending, launch=launch, unmoved=self._unmoved)
        self._unmoved = True
        self._pending = False
        self._pending_stats = None
        if pending and self._replicas[0].diloco:
            self._rebase([_named(r.start) for r in self._replicas])

    def _launch(self) -> None:
        """This round's rows to the averager, in a background thread (one at a time)."""
        assert self._flight is None
        rows = [_named(r.row) for r in self._replicas]
        rms = self._grad_rms()  # on this thread: it reads the workers' state
        self._flight = _Flight(lambda: self._average(rows, rms))

    def _reference_for_gradient(self) -> CompressedAverager | None:
        """Blocking DiLoCo: the averager whose reference can hold the pseudo-gradient
        during the outer step (:meth:`_Replica.outer_step_in`), or None. LocalSGD's."""
        return None

    def _shared_model(self, replica: _Replica) -> Mapping[str, torch.Tensor]:
        """Blocking DiLoCo's w_shared: the replica's copy, or the averager's reference
        copied out (in the parameters' dtype and device) before the sync moves it."""
        if replica.shared is not None:
            return replica.shared
        ref = averager_reference(self.averager)
        if ref is None:
            raise ConfigError(
                "DiLoCo: the averager lost its shared model (load a state that has one)"
            )
        return {
            n: torch.from_numpy(ref[n]).to(p.device, p.dtype, copy=True) for n, p in replica.params
        }

    def _grad_rms(self) -> list[Mapping[str, float] | None]:
        return [None if r.grad_rms is None else r.grad_rms() for r in self._replicas]

    # -- state ----------------------------------------------------------------------------------

    def _settled_replica_states(self) -> list[tuple[Any, Any, Any]]:
        """Every replica's (outer, shared, overlap) state, after the sync in flight ended
        (its result stays pending: a resumed run applies it at the same boundary)."""
        self.join()
        ref = averager_reference(self.averager)
        return [
            (*r.state(ref), r.overlap_state() if self.overlap else None) for r in self._replicas
        ]

    def _load(
        self,
        state: Mapping[str, Any],
        outers: Sequence[Any],
        shared: Sequence[Any],
        overlap: Sequence[Any],
    ) -> None:
        """Restore the replicas' parts, the step counter and the averager (a sync still in
        flight is waited for and dropped: the state replaces everything)."""
        self.close()
        self._failure = None
        for replica, o, w, ov in zip(self._replicas, outers, shared, overlap, strict=True):
            replica.load(o, w, ov)
        self.num_steps = int(state["num_steps"])
        self.averager.load_state_dict(state["averager"])
        self._pending = self._replicas[0].row is not None
        self._pending_stats = None
        self._unmoved = False

    def restart_from_parameters(self) -> None:
        """After a checkpoint restored the parameters and the averager's state by other
        means than :meth:`load_state_dict` (``tenfold train`` keeps the shared weights
        and the averager's state, taken at a round boundary): take the parameters as the
        round's start; overlapped, with a sync launched before the checkpoint (the
        checkpoint waited for it), its result is the averager's shared model.

        Raises:
            tenfold.ConfigError: overlapped DiLoCo with an outer optimizer that keeps state
                (anything but SGD without momentum: its state is not in the parameters),
                or an averager without a shared model (weights mode,
                ``AllReduceAverager``): the result cannot be rebuilt.
        """
        if not self.overlap:
            return
        self._finish_flight()
        for replica in self._replicas:
            replica.keep_start()
            replica.row = None
        self._pending = False
        self._unmoved = True
        if self.num_steps < self.sync_every:
            return
        ref = averager_reference(self.averager)
        if ref is None or not all(_stateless(r.outer_optimizer) for r in self._replicas):
            raise ConfigError(
                "an overlapped LocalSGD resumes from the model and the averager's state only "
                "for Local SGD, or an outer SGD without momentum, over a delta-mode tenfold "
                "averager; save state_dict() instead"
            )
        for replica in self._replicas:
            replica.row = {
                n: torch.from_numpy(ref[n].copy()).reshape(p.shape) for n, p in replica.params
            }
        self._pending = True

    # -- buffers --------------------------------------------------------------------------------

    def _start(self) -> None:
        """At construction: the averager agrees on the starting weights (collective), every
        buffer comes from rank 0 (so that the first sync starts from agreeing
        ``num_batches_tracked``, like DDP's constructor); DiLoCo keeps its shared model
        unless the averager keeps it; overlapped, the round's start."""
        if self._world() > 1:
            self._broadcast_buffers()
            self.buffer_bytes_sent = 0
        for replica in self._replicas:
            if self.overlap:
                replica.keep_start()
            elif replica.diloco and averager_reference(self.averager) is None:
                replica.keep_shared()

    def _sync_buffers(self) -> None:
        self.buffer_bytes_sent = 0
        if self._world() > 1:
            if self.buffers == "broadcast":
                self._broadcast_buffers()
            else:
                self._average_buffers()

    def _broadcast_buffers(self) -> None:
        """Every buffer from rank 0, bit for bit: their bytes packed into ONE uint8 row
        (any dtype; one collective however many BatchNorm layers there are)."""
        named = [r.buffers() for r in self._replicas]
        if not named[0]:
            return
        flats = [
            torch.cat([b.detach().contiguous().reshape(-1).view(torch.uint8) for _, b in bufs])
            for bufs in named
        ]
        flat = self._from_rank0(flats)
        if self._rank(0) == 0:
            self.buffer_bytes_sent = int(flat.numel())
        with torch.no_grad():
            for bufs in named:
                offset = 0
                for _, b in bufs:
                    n = b.numel() * b.element_size()
                    # clone: a slice at an odd byte offset cannot be viewed as a wider dtype
                    piece = flat[offset : offset + n].clone().to(b.device)
                    b.copy_(piece.view(b.dtype).view(b.shape))
                    offset += n

    def _average_buffers(self) -> None:
        """Floating buffers: the exact mean, summed in rank order (one all-gather per wire
        dtype); the others checked equal on every rank."""
        named = [r.buffers() for r in self._replicas]
        others = [[(n, b) for n, b in bufs if not b.dtype.is_floating_point] for bufs in named]
        if others[0]:
            self._check_equal(others)
        groups: dict[torch.dtype, list[list[torch.Tensor]]] = {}
        for i, bufs in enumerate(named):
            for _, b in bufs:
                if b.dtype.is_floating_point:
                    rows = groups.setdefault(wire_dtype(b.dtype), [[] for _ in named])
                    rows[i].append(b)
        world = self._world()
        with torch.no_grad():
            for dtype, per_replica in groups.items():
                flats = [
                    torch.cat([b.detach().reshape(-1).to(dtype) for b in bs]) for bs in per_replica
                ]
                self.buffer_bytes_sent += flats[0].numel() * flats[0].element_size() * (world - 1)
                mean = rank_order_mean(self._gather(flats))
                for bs in per_replica:
                    offset = 0
                    for b in bs:
                        piece = mean[offset : offset + b.numel()].view(b.shape)
                        b.copy_(piece.to(b.device))
                        offset += b.numel()

    def _check_equal(self, named: list[list[tuple[str, torch.Tensor]]]) -> None:
        """One CRC-32 per buffer, gathered; raise on every rank if any rank's differs."""
        rows = self._gather_ints(
            [
                [
                    zlib.crc32(
                        b.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data
                    )
                    for _, b in bufs
                ]
                for bufs in named
            ]
        )
        bad = {
            name: [r for r in range(1, len(rows)) if rows[r][i] != rows[0][i]]
            for i, (name, _) in enumerate(named[0])
        }
        bad = {name: ranks for name, ranks in bad.items() if ranks}
        if bad:
            raise BufferMismatchError(bad)


def rank_order_mean(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(rows[0] + rows[1] + ... + rows[K-1]) / K``, added in that order, in their dtype.

    The one arithmetic of the buffers' mean, on every rank and in the simulation alike.
    """
    acc = rows[0].clone()
    for row in rows[1:]:
        acc.add_(row.to(acc.device))
    return acc.div_(len(rows))


class LocalSGD(_Synchroniser):
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
        buffers: ``"average"`` (floating buffers' exact mean, non-floating ones checked
            equal) or ``"broadcast"`` (every buffer from rank 0).
        averager: any :class:`Averager` (e.g. ``AllReduceAverager()`` for the fp32
            baseline, or a ``CompressedAverager`` with other settings); None: a
            ``CompressedAverager(policy, process_group=process_group)``.
        collective: the default averager's collective (``"reduce-scatter"`` or
            ``"all-gather"``, see :class:`CompressedAverager`); None: its default. Not
            with ``averager``.
        grad_rms: called at every sync: the per-tensor RMS of the loss gradient since
            the previous one, by parameter name (``GradientRMS`` policies need it; every
            policy records it in the stats); None: not given.
        allow_single_process: for the default averager: without an initialised process
            group, run anyway (every sync then only counts); False: refuse, as a forgotten
            ``init_process_group`` would otherwise train K unsynchronised models. An
            ``averager`` you give decides for itself.
        overlap: run each sync in a background thread behind the next round's inner
            steps and apply it one round late (module docstring, docs/OVERLAP.md); call
            :meth:`wait` after the last step. No other collective may run on the
            averager's group while a sync is in flight (:meth:`join` first). Without an
            outer optimizer the delayed update (an outer step of 1) oscillates and
            converges clearly worse per step; a damped outer step,
            ``outer_optimizer=torch.optim.SGD(model.parameters(), lr=0.5)``, keeps ranks
            bit-identical and came within 0.04-0.06 nats of blocking Local SGD on
            char-gpt (``tenfold train --overlap`` uses it by default; docs/OVERLAP.md).
            An outer step the delay makes unstable (that step of 1; DiLoCo's usual
            Nesterov ``SGD(lr=0.7, momentum=0.9)``, which diverged overlapped on
            char-gpt) gets an :class:`~tenfold.distributed.OuterStepWarning` naming the
            largest stable lr (:mod:`tenfold.distributed.outer_delay`).

    Attributes:
        num_steps: inner steps counted so far (restored by :meth:`load_state_dict`).
        averager: the averager in use.
        buffer_bytes_sent: bytes this rank sent for the buffers at the last sync.

    Raises:
        tenfold.ConfigError: (a ``ValueError``) ``sync_every`` not an int >= 1,
            ``buffers`` not in :data:`BUFFER_MODES`, both ``policy`` (or ``collective``)
            and ``averager`` given, a model with no trainable parameter, an outer
            optimizer missing some trainable parameters, or an averager on another
            process group.
        tenfold.InputTypeError: (a ``TypeError``) ``averager`` is not an :class:`Averager`,
            or ``overlap`` is not a bool.
        ProcessGroupError: the default averager, no initialised process group and not
            ``allow_single_process``.
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
        grad_rms: GradRMS | None = None,
        allow_single_process: bool = False,
        overlap: bool = False,
    ) -> None:
        replica = _Replica(model, outer_optimizer, grad_rms)
        super().__init__(sync_every, buffers, [replica], overlap)
        if averager is None:
            require_process_group(process_group, allow_single_process, "LocalSGD")
            policy = TargetRate(bits_per_param=1.0) if policy is None else policy
            averager = CompressedAverager(
                policy,
                process_group=process_group,
                collective=DEFAULT_COLLECTIVE if collective is None else collective,
                allow_single_process=allow_single_process,
            )
        elif policy is not None:
            raise ConfigError("pass either policy (for the default averager) or averager, not both")
        elif collective is not None:
            raise ConfigError(
                "collective is an option of the default averager: pass it to the averager "
                "you give instead"
            )
        elif isinstance(averager, SimulatedAverager):  # the right methods, over K workers
            raise InputTypeError(
                "SimulatedAverager averages K workers held in one process: use "
                "SimulatedLocalSGD with it, or a CompressedAverager on each rank"
            )
        elif not isinstance(averager, Averager):
            raise InputTypeError(
                f"averager must implement tenfold.distributed.Averager, got {type(averager)!r}"
            )
        elif not _same_group(getattr(averager, "process_group", process_group), process_group):
            raise ConfigError(
                "averager.process_group is not process_group: the parameters and the "
                "buffers would be synchronised over different groups"
            )
        self.model = model
        self.outer_optimizer = outer_optimizer
        self.process_group = process_group
        self.averager = averager
        self._params = replica.params
        averager.initialize(self._params)
        self._start()

    def _world(self) -> int:
        group = self.process_group
        return dist.get_world_size(group) if is_distributed(group) else 1

    def _rank(self, index: int) -> int:
        return dist.get_rank(self.process_group) if self._world() > 1 else 0

    def _average(
        self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]], rms: list[Any]
    ) -> SyncStats:
        return self.averager.average(rows[0], grad_rms=rms[0])

    def _rebase(self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]]) -> None:
        self.averager.set_reference(rows[0])

    def _reference_for_gradient(self) -> CompressedAverager | None:
        avg, replica = self.averager, self._replicas[0]
        if (
            not isinstance(avg, CompressedAverager)
            or averager_reference(avg) is None
            or replica.shared is not None
        ):
            return None
        # the pseudo-gradient must fit the reference's arrays: CPU, in the wire dtype
        for _, p in replica.params:
            if p.device.type != "cpu" or p.dtype != wire_dtype(p.dtype):
                return None
        return avg

    def _gather(self, flats: list[torch.Tensor]) -> list[torch.Tensor]:
        group = self.process_group
        mine = flats[0].to(comm_device(group))
        rows = [torch.empty_like(mine) for _ in range(self._world())]
        with translate_comm_errors("averaging buffers"):
            dist.all_gather(rows, mine, group=group)
        return rows

    def _from_rank0(self, flats: list[torch.Tensor]) -> torch.Tensor:
        group = self.process_group
        src = dist.get_global_rank(group, 0) if group is not None else 0
        flat = flats[0].to(comm_device(group))
        with translate_comm_errors("broadcasting buffers"):
            dist.broadcast(flat, src=src, group=group)
        return flat

    def _gather_ints(self, rows: list[list[int]]) -> list[list[int]]:
        got = all_gather_row(rows[0], group=self.process_group, what="comparing integer buffers")
        return [[int(v) for v in row] for row in got]

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's state: ``num_steps``, ``averager``, ``outer_optimizer``, ``shared``,
        ``overlap``.

        ``shared`` is blocking DiLoCo's shared model (name -> CPU tensor in the
        parameter's dtype; None for Local SGD and when overlapped). ``overlap`` (None when
        blocking): ``start``, the shared model the round started from, and ``row``, the
        result of the sync launched at the last boundary (None if none), to be applied at
        the next one. A sync in flight is waited for first (not applied). The model's and
        the inner optimizer's states are the caller's to save. The averager's residual is
        this rank's own: save per rank.
        """
        outer, shared, overlap = self._settled_replica_states()[0]
        return {
            "num_steps": self.num_steps,
            "averager": self.averager.state_dict(),
            "outer_optimizer": outer,
            "shared": shared,
            "overlap": overlap,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (into an object built like the saved one).

        Raises:
            tenfold.ConfigError: a DiLoCo state into Local SGD or the reverse, or a shared
                model with other tensors than the trainable parameters.
        """
        self._load(state, [state.get("outer_optimizer")], [state.get("shared")],
                   [state.get("overlap")])  # fmt: skip


class SimulatedLocalSGD(_Synchroniser):
    """K models in one process, synchronised as K ranks of :class:`LocalSGD` would be.

    The same schedule (:meth:`step` once per step of every worker), the same outer step
    and the same buffer arithmetic as :class:`LocalSGD`, with the parameters averaged by a
    :class:`~tenfold.distributed.SimulatedAverager` (or any :class:`GroupAverager`, e.g. a
    peer method's): the weights, buffers and stats are bit for bit those of K ranks.

    Args:
        models: the K models, in rank order.
        sync_every, buffers: as for :class:`LocalSGD`.
        averager: the group's averager (``SimulatedAverager(policy, ...)``).
        outer_optimizers: None (Local SGD) or one outer optimizer per model (DiLoCo; the
            averager must then have ``set_reference(workers)``).
        grad_rms: None, or one ``grad_rms`` function (see :class:`LocalSGD`) per model.
        overlap: as for :class:`LocalSGD` (bit for bit K overlapped ranks; the averager
            runs in a background thread while the workers take their steps).

    Example::

        sim = SimulatedLocalSGD(models, sync_every=50,
                                averager=SimulatedAverager(tenfold.TargetRate(1.0)))
        for step in range(steps):
            for model, inner in zip(models, inners):
                ...; inner.step()
            sim.step()
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        sync_every: int,
        averager: GroupAverager,
        buffers: str = "average",
        outer_optimizers: Sequence[torch.optim.Optimizer] | None = None,
        grad_rms: Sequence[GradRMS | None] | None = None,
        overlap: bool = False,
    ) -> None:
        k = len(models)
        outers = list(outer_optimizers) if outer_optimizers is not None else [None] * k
        rms = list(grad_rms) if grad_rms is not None else [None] * k
        if k == 0 or len(outers) != k or len(rms) != k:
            raise ConfigError(
                f"{k} models, {len(outers)} outer optimizers, {len(rms)} grad_rms: one each"
            )
        if outer_optimizers is not None and not callable(getattr(averager, "set_reference", None)):
            raise InputTypeError(
                "DiLoCo re-bases the averager after the outer step: "
                f"{type(averager).__name__} has no set_reference(workers)"
            )
        replicas = [_Replica(m, o, g) for m, o, g in zip(models, outers, rms, strict=True)]
        super().__init__(sync_every, buffers, replicas, overlap)
        self.models = list(models)
        self.averager = averager
        averager.initialize([r.params for r in replicas])
        self._start()

    def _world(self) -> int:
        return len(self._replicas)

    def _rank(self, index: int) -> int:
        return index

    def _average(
        self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]], rms: list[Any]
    ) -> SyncStats:
        stats: SyncStats = self.averager.average(rows, grad_rms=rms)[0]
        return stats

    def _rebase(self, rows: Sequence[Sequence[tuple[str, torch.Tensor]]]) -> None:
        self.averager.set_reference(rows)

    def _gather(self, flats: list[torch.Tensor]) -> list[torch.Tensor]:
        return flats

    def _gather_ints(self, rows: list[list[int]]) -> list[list[int]]:
        return rows

    def _from_rank0(self, flats: list[torch.Tensor]) -> torch.Tensor:
        return flats[0]

    def state_dict(self) -> dict[str, Any]:
        """``num_steps``, ``averager`` (every worker's residuals), and per worker
        ``outer_optimizer``, ``shared`` and ``overlap`` (lists; None where every worker's
        is None), as :meth:`LocalSGD.state_dict`."""
        states = self._settled_replica_states()

        def column(i: int) -> list[Any] | None:
            values = [s[i] for s in states]
            return None if all(v is None for v in values) else values

        return {
            "num_steps": self.num_steps,
            "averager": self.averager.state_dict(),
            "outer_optimizer": column(0),
            "shared": column(1),
            "overlap": column(2),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (into an object built like the saved one)."""
        k = len(self._replicas)

        def column(key: str) -> list[Any]:
            return list(state.get(key) or [None] * k)

        self._load(state, column("outer_optimizer"), column("shared"), column("overlap"))


def _same_group(a: dist.ProcessGroup | None, b: dist.ProcessGroup | None) -> bool:
    """Whether two group arguments name the same group (None is the default group)."""

    def norm(g: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
        return None if dist.is_available() and g is dist.group.WORLD else g

    return norm(a) is norm(b)


def _stateless(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether an outer optimizer keeps no state between steps (None: Local SGD; SGD
    without momentum), so that nothing but the parameters is needed to resume it."""
    if optimizer is None:
        return True
    return type(optimizer) is torch.optim.SGD and all(
        not group.get("momentum", 0.0) for group in optimizer.param_groups
    )


def _check_outer(
    optimizer: torch.optim.Optimizer, params: Sequence[tuple[str, torch.Tensor]]
) -> None:
    """Every trainable parameter must be in the outer optimizer: one left out would be
    reset to the shared model at every sync and never move again."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in params if id(p) not in held]
    if missing:
        raise ConfigError(
            f"outer_optimizer does not hold the trainable parameters {missing}: build it "
            "over model.parameters() (frozen ones are skipped: they get no gradient)"
        )
