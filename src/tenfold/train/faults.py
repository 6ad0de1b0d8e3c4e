"""Test-only fault injection: crash a job, kill or stall one rank, at a chosen synchronisation.

The reliability tests need failures that happen at a known point of a real run (a crash
right after the checkpoint of sync k, a kill in the middle of writing one, a rank that dies
or hangs mid-training). They set the environment variable ``TENFOLD_FAULT`` before starting
``tenfold train``; every rank process inherits it and checks it once per synchronisation.
Unset (always, outside tests) it costs nothing.

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

Example::

    TENFOLD_FAULT=crash-after-sync:2 tenfold train --epochs 4 --out runs/x   # exits 1
    tenfold train --resume runs/x                                           # finishes it
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["ENV_VAR", "FAULT_EXIT_CODE", "Fault", "active_fault"]

#: The environment variable the tests set.
ENV_VAR = "TENFOLD_FAULT"

#: Exit code of a process that crashes on purpose (distinct from 1 = reported failure).
FAULT_EXIT_CODE = 97

_KINDS = ("crash-after-sync", "crash-in-checkpoint", "kill-rank", "hang-rank", "nan-rank")
_RANKED = ("kill-rank", "hang-rank", "nan-rank")


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
        self, sync: int, rank: int, params: Iterable[torch.Tensor] | None = None
    ) -> None:
        """Called by every process after sync ``sync`` (checkpoint written): fire if due.

        ``params``: the rank's parameters (``nan-rank`` writes a NaN into the first one).
        """
        if sync != self.sync:
            return
        if self.kind == "crash-after-sync":
            _crash()
        elif self.kind == "kill-rank" and rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "hang-rank" and rank == self.rank:
            time.sleep(3600)
        elif self.kind == "nan-rank" and rank == self.rank and params is not None:
            with torch.no_grad():
                next(iter(params)).view(-1)[0] = math.nan

    def in_checkpoint(self, sync: int) -> bool:
        """True if the checkpoint writer should crash halfway through sync ``sync``'s file."""
        return self.kind == "crash-in-checkpoint" and sync == self.sync


def _crash() -> None:
    # os._exit: no exception handlers, no atexit, no flushing of Python buffers - a crash.
    os._exit(FAULT_EXIT_CODE)


def crash() -> None:
    """Exit this process at once with :data:`FAULT_EXIT_CODE` (the checkpoint writer's hook)."""
    _crash()


def active_fault() -> Fault | None:
    """The fault ``TENFOLD_FAULT`` asks for, or None when it is unset or empty."""
    text = os.environ.get(ENV_VAR, "").strip()
    return Fault.parse(text) if text else None
