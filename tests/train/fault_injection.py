"""Test-only fault injection: crash a job, kill or stall one rank, at a chosen synchronisation.

The reliability tests need failures that happen at a known point of a real run (a crash
right after the checkpoint of sync k, a kill in the middle of writing one, a rank that dies
or hangs mid-training). They set the environment variable ``TENFOLD_FAULT`` and patch the
trainer of the processes concerned (:func:`install`): the test's own process for simulated
runs, and every rank ``tenfold train`` spawns (:func:`install_in_ranks` makes the spawned
ranks run :func:`rank_with_fault`, which installs the patches there). The library itself
knows nothing of faults. The variable is read at every synchronisation, so deleting it
(``monkeypatch.delenv``) lets the same test resume the run without the fault.

Values (``N`` is a 1-based synchronisation, ``R`` a rank)::

    crash-after-sync:N       every process exits at once with FAULT_EXIT_CODE right after
                             sync N has been checkpointed (a whole job dying, e.g. a node
                             reboot); nothing is cleaned up, like a real crash
    crash-in-checkpoint:N    the lead exits halfway through writing sync N's checkpoint
                             (its temporary file); the previous checkpoint must survive
    kill-rank:R:N            rank R sends itself SIGKILL after sync N (a dead peer)
    hang-rank:R:N            rank R sleeps for an hour after sync N (a stuck peer)
    nan-rank:R:N             rank R sets one of its weights to NaN after sync N (a diverged
                             worker: the next synchronisation must stop every rank)
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

__all__ = [
    "ENV_VAR",
    "FAULT_EXIT_CODE",
    "Fault",
    "active_fault",
    "install",
    "install_in_ranks",
    "rank_with_fault",
]

#: The environment variable the tests set.
ENV_VAR = "TENFOLD_FAULT"

#: Exit code of a process that crashes on purpose (distinct from 1 = reported failure).
FAULT_EXIT_CODE = 97

_KINDS = ("crash-after-sync", "crash-in-checkpoint", "kill-rank", "hang-rank", "nan-rank")
_RANKED = ("kill-rank", "hang-rank", "nan-rank")


def _crash() -> None:
    # os._exit: no exception handlers, no atexit, no flushing of Python buffers - a crash.
    os._exit(FAULT_EXIT_CODE)


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` at synchronisation ``sync`` (on ``rank``, if given)."""

    kind: str
    sync: int
    rank: int | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse a ``TENFOLD_FAULT`` value (see the module docstring).

        Raises:
            ValueError: an unknown kind or malformed numbers.
        """
        parts = text.strip().split(":")
        kind = parts[0]
        if kind not in _KINDS:
            raise ValueError(f"{ENV_VAR}: unknown fault {kind!r}; known: {', '.join(_KINDS)}")
        want = 3 if kind in _RANKED else 2
        if len(parts) != want or not all(p.isdigit() for p in parts[1:]):
            form = f"{kind}:R:N" if want == 3 else f"{kind}:N"
            raise ValueError(f"{ENV_VAR}={text!r}: expected {form} with integers")
        if want == 3:
            return cls(kind=kind, rank=int(parts[1]), sync=int(parts[2]))
        return cls(kind=kind, sync=int(parts[1]))

    def after_sync(
        self,
        sync: int,
        rank: int,
        params: Iterable[torch.Tensor],
        crash: Callable[[], None] = _crash,
    ) -> None:
        """Called by every process after sync ``sync`` (checkpoint written): fire if due.

        ``params``: the rank's parameters (``nan-rank`` writes a NaN into the first one).
        """
        if sync != self.sync:
            return
        if self.kind == "crash-after-sync":
            crash()
        elif self.kind == "kill-rank" and rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "hang-rank" and rank == self.rank:
            time.sleep(3600)
        elif self.kind == "nan-rank" and rank == self.rank:
            with torch.no_grad():
                next(iter(params)).view(-1)[0] = math.nan

    def in_checkpoint(self, sync: int) -> bool:
        """True if the checkpoint writer should crash halfway through sync ``sync``'s file."""
        return self.kind == "crash-in-checkpoint" and sync == self.sync


def active_fault() -> Fault | None:
    """The fault ``TENFOLD_FAULT`` asks for, or None when it is unset or empty."""
    text = os.environ.get(ENV_VAR, "").strip()
    return Fault.parse(text) if text else None


def install(
    patch: Callable[[Any, str, Any], None] = setattr, crash: Callable[[], None] = _crash
) -> None:
    """Patch this process's checkpointer so that ``TENFOLD_FAULT`` fires when due.

    After each sync's checkpoint (:meth:`Checkpointer.save`, called on every process of
    a run with a run directory) the fault's ``after_sync`` runs; ``crash-in-checkpoint``
    writes half of the temporary file instead, then crashes. ``patch``: ``setattr`` (a
    spawned rank) or ``monkeypatch.setattr`` (undone after the test); ``crash``: what a
    crash does (in the test's own process: raise, instead of exiting).
    """
    from tenfold.train import checkpoint

    save, write = checkpoint.Checkpointer.save, checkpoint.write_atomic
    syncs = [0]  # the sync whose checkpoint is being written

    def save_then_fire(self: Any, state: Any, *, elapsed_s: float) -> None:
        syncs[0] = state.syncs
        save(self, state, elapsed_s=elapsed_s)
        fault = active_fault()
        if fault is not None:
            params = state.workers[0].model.parameters()
            fault.after_sync(state.syncs, self.process, params, crash)

    def write_or_crash(path: str | os.PathLike[str], data: bytes) -> None:
        fault = active_fault()
        if fault is None or not fault.in_checkpoint(syncs[0]):
            write(path, data)
            return
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        crash()

    patch(checkpoint.Checkpointer, "save", save_then_fire)
    patch(checkpoint, "write_atomic", write_or_crash)


def rank_with_fault(config_json: str, run_dir: str | None, progress: bool, resume: bool) -> None:
    """The body of a spawned rank with the fault patches installed (see
    :func:`install_in_ranks`); then the library's own rank body."""
    from tenfold.train.launch import _train_rank

    install()
    _train_rank(config_json, run_dir, progress, resume)


def install_in_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ranks ``tenfold train`` spawns from this test run :func:`rank_with_fault`
    (spawned processes import this module by name: the test directory is on their path)."""
    # the module, not the package attribute: tenfold.train.launch is also a function
    launch = importlib.import_module("tenfold.train.launch")
    monkeypatch.setattr(launch, "_train_rank", rank_with_fault)
