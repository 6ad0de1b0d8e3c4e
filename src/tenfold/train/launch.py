"""Start the ranks of a training run: torch.multiprocessing on one machine, or torchrun.

**One machine** (``tenfold train``): :func:`launch` spawns N processes, each joins a gloo
process group through a ``file://`` rendezvous in a fresh temporary directory (no ports to
pick, nothing left behind) with the configured timeout. A rank that raises writes a short
JSON report; the launcher watches the processes, and when one fails or dies it gives the
survivors ``timeout_s`` seconds to fail on their own (gloo raises at once on a closed
connection, at worst after the process-group timeout), then stops what is left, and raises
:class:`RankFailure` saying which rank died and what every other one reported.

**torchrun** (``torchrun --nproc_per_node=K -m tenfold train ...``): torchrun starts the
processes and sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``;
:func:`torchrun_main` joins with ``init_method="env://"`` and runs the same rank body.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tenfold.distributed.process_group import destroy_process_group
from tenfold.errors import TenfoldError
from tenfold.train.config import TrainConfig
from tenfold.train.progress import plural

__all__ = [
    "NotUnderTorchrunError",
    "RankFailure",
    "RankReport",
    "launch",
    "spawn_training",
    "torchrun_env",
    "torchrun_main",
]


@dataclass(frozen=True)
class RankReport:
    """How one rank ended, when it did not end well.

    Attributes:
        rank: the rank.
        exitcode: the process exit code (negative: killed by that signal; None: still
            running when the launcher stopped it).
        error: ``"Type: message"`` the rank reported, or None if it died without a word.
        reported_at: time.time() of the report (None without one).
    """

    rank: int
    exitcode: int | None
    error: str | None
    reported_at: float | None = None

    @property
    def died(self) -> bool:
        """Ended without reporting an error: crashed, killed, or exited abruptly."""
        return self.error is None and self.exitcode != 0 and self.exitcode is not None

    def describe(self) -> str:
        """One human line."""
        if self.error is not None:
            return f"rank {self.rank} failed: {self.error}"
        if self.exitcode is None:
            return f"rank {self.rank} was stopped by the launcher (still running)"
        if self.exitcode < 0:
            try:
                sig = signal.Signals(-self.exitcode).name
            except ValueError:
                sig = str(-self.exitcode)
            return f"rank {self.rank} died (killed by signal {sig})"
        return f"rank {self.rank} died (exit code {self.exitcode}, no error reported)"


class RankFailure(TenfoldError, RuntimeError):
    """A multi-process run failed; ``reports`` says how each unsuccessful rank ended.

    The message starts with the ranks that died without a report (the likely cause), then
    the errors the others raised, earliest first.
    """

    def __init__(self, reports: Sequence[RankReport]) -> None:
        died = [r for r in reports if r.died]
        errors = sorted(
            (r for r in reports if r.error is not None), key=lambda r: r.reported_at or 0.0
        )
        stopped = [r for r in reports if r.exitcode is None and r.error is None]
        self.reports = [*died, *errors, *stopped]
        super().__init__("; ".join(r.describe() for r in self.reports) or "run failed")

    @property
    def died(self) -> list[int]:
        """Ranks that died without reporting an error."""
        return [r.rank for r in self.reports if r.died]


class NotUnderTorchrunError(TenfoldError, RuntimeError):
    """:func:`torchrun_main` was called in a process torchrun did not start."""


# ---- child side -------------------------------------------------------------------------


def _entry(
    rank: int,
    world: int,
    init_method: str,
    report_dir: str,
    timeout_s: float,
    threads: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """A spawned rank: join the group, run ``fn(*args)``, report any exception."""
    torch.set_num_threads(threads)
    code = 0
    try:
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        # tell the launcher this rank is up (it reports start-up progress)
        Path(report_dir, f"joined-{rank}").touch()
        fn(*args)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # report everything, including SystemExit from fn
        code = 1
        _write_report(report_dir, rank, exc)
        if not _expected(exc):
            traceback.print_exc()
    finally:
        _destroy_group()
    if code:
        sys.stderr.flush()
        sys.exit(code)


def _expected(exc: BaseException) -> bool:
    """Errors that explain themselves: print no traceback for them."""
    from tenfold.codec.errors import PacketMismatchError
    from tenfold.distributed import CommunicationError, PeerStatusError
    from tenfold.train.checkpoint import CheckpointError
    from tenfold.train.data import DatasetError
    from tenfold.train.loop import ConfigMismatchError

    return isinstance(
        exc,
        (
            PeerStatusError,
            CommunicationError,
            PacketMismatchError,
            CheckpointError,
            DatasetError,
            ConfigMismatchError,
            dist.DistError,
        ),
    )


def _write_report(report_dir: str, rank: int, exc: BaseException) -> None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    report = {"rank": rank, "error": f"{type(exc).__name__}: {first}", "time": time.time()}
    path = Path(report_dir) / f"rank-{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, path)


# ---- parent side ------------------------------------------------------------------------


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    args: tuple[Any, ...] = (),
    *,
    timeout_s: float = 60.0,
    grace_s: float | None = None,
    threads: int = 1,
    poll_s: float = 0.2,
    on_join: Callable[[int, int], None] | None = None,
) -> None:
    """Run ``fn(*args)`` in ``nprocs`` spawned processes joined in a gloo process group.

    Args:
        fn: a module-level (picklable) function; it runs after ``init_process_group``
            and may use ``torch.distributed`` freely.
        nprocs: number of ranks.
        args: positional arguments for ``fn`` (picklable; local to this machine).
        timeout_s: the process-group timeout (rendezvous and every collective).
        grace_s: how long the other ranks get to end on their own once one failed, before
            they are stopped (default ``timeout_s``: by then a blocked collective has
            raised).
        threads: ``torch.set_num_threads`` in every rank.
        poll_s: how often to look at the processes (s).
        on_join: called with ``(ranks joined, nprocs)`` each time more ranks have joined
            the process group (start-up takes seconds: each rank imports torch), e.g. to
            show progress.

    Raises:
        RankFailure: some rank exited non-zero or died; names it and what the others said.
        KeyboardInterrupt: after stopping every rank.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tenfold-rdzv-") as tmp:
        init_method = Path(tmp, "rendezvous").as_uri()
        procs = [
            ctx.Process(
                target=_entry,
                args=(r, nprocs, init_method, tmp, timeout_s, threads, fn, args),
                name=f"tenfold-rank-{r}",
                daemon=False,
            )
            for r in range(nprocs)
        ]
        try:
            for p in procs:
                p.start()
            _wait(
                procs,
                grace_s=timeout_s if grace_s is None else grace_s,
                poll_s=poll_s,
                joined=_joined_counter(tmp, nprocs, on_join),
            )
        except BaseException:
            _stop(procs)
            raise
        reports = _collect(procs, tmp)
    if reports:
        raise RankFailure(reports)


def _joined_counter(
    report_dir: str, nprocs: int, on_join: Callable[[int, int], None] | None
) -> Callable[[], None] | None:
    """A poll function calling ``on_join`` when more ranks have joined (None: nothing to do)."""
    if on_join is None:
        return None
    seen = 0

    def poll() -> None:
        nonlocal seen
        if seen == nprocs:
            return
        count = sum(Path(report_dir, f"joined-{r}").exists() for r in range(nprocs))
        if count > seen:
            seen = count
            on_join(count, nprocs)

    return poll


def _wait(
    procs: Sequence[Any],
    *,
    grace_s: float,
    poll_s: float,
    joined: Callable[[], None] | None = None,
) -> None:
    """Wait for all processes; once one fails, wait at most ``grace_s`` more, then stop."""
    deadline: float | None = None
    while True:
        if joined is not None:
            joined()
        alive = [p for p in procs if p.exitcode is None]
        if not alive:
            return
        if deadline is None and any(p.exitcode not in (None, 0) for p in procs):
            deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            _stop(alive)
            return
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=poll_s)


def _stop(procs: Sequence[Any]) -> None:
    """Terminate, then kill, whatever is still running; forget nothing."""
    for p in procs:
        if p.is_alive():
            p._tenfold_stopped = True  # read by _collect: "stopped", not "died"
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _collect(procs: Sequence[Any], report_dir: str) -> list[RankReport]:
    reports = []
    for rank, p in enumerate(procs):
        path = Path(report_dir) / f"rank-{rank}.json"
        data = json.loads(path.read_text()) if path.exists() else None
        # A process we had to stop has exit code -SIGTERM/-SIGKILL; say "stopped" instead.
        stopped = getattr(p, "_tenfold_stopped", False)
        if p.exitcode == 0 and data is None:
            continue
        reports.append(
            RankReport(
                rank=rank,
                exitcode=None if stopped else p.exitcode,
                error=None if data is None else data["error"],
                reported_at=None if data is None else data["time"],
            )
        )
    return reports


# ---- training entry points ----------------------------------------------------------------


def _train_rank(
    config_json: str, run_dir: str | None, progress: bool, resume: bool = False
) -> None:
    from tenfold.train.loop import run_rank

    run_rank(
        TrainConfig.from_dict(json.loads(config_json)),
        run_dir=run_dir,
        progress=progress,
        resume=resume,
    )


def spawn_training(
    config: TrainConfig,
    run_dir: str | Path | None,
    *,
    progress: bool = True,
    resume: bool = False,
) -> None:
    """Train with ``config.workers`` spawned ranks on this machine (``tenfold train``).

    Rank 0 writes ``run_dir`` (checkpointed after every sync) and prints progress;
    ``resume`` continues the run in ``run_dir`` from its checkpoint. With ``progress``,
    prints a line at once and another when every rank has joined (start-up takes seconds).
    Raises :class:`RankFailure` when the run fails (see :func:`launch`).
    """
    run = None if run_dir is None else str(run_dir)
    launch(
        _train_rank,
        config.workers,
        (json.dumps(config.to_dict()), run, progress, resume),
        timeout_s=config.timeout_s,
        threads=config.threads,
        on_join=_StartupReport(config.workers) if progress else None,
    )


class _StartupReport:
    """Start-up progress of the ranks on stdout: a line now, one when all have joined
    (and, on a terminal, a count updated in place between the two)."""

    def __init__(self, workers: int, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        processes = "1 worker process" if workers == 1 else f"{workers} worker processes"
        print(
            f"tenfold train: starting {processes} (each imports torch and joins the process "
            "group)...",
            file=self.stream,
            flush=True,
        )

    def __call__(self, joined: int, workers: int) -> None:
        if joined < workers:
            if self.tty:
                print(
                    f"\r  {joined}/{plural(workers, 'worker')} up",
                    end="",
                    file=self.stream,
                    flush=True,
                )
            return
        print(
            f"{chr(13) if self.tty else ''}  {workers}/{plural(workers, 'worker')} up after "
            f"{time.perf_counter() - self.t0:.1f} s; training (one line per synchronisation)",
            file=self.stream,
            flush=True,
        )


def torchrun_env() -> tuple[int, int] | None:
    """``(rank, world_size)`` when started by torchrun (its environment is set), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def torchrun_main(
    config: TrainConfig,
    run_dir: str | Path | None,
    *,
    progress: bool = True,
    resume: bool = False,
) -> None:
    """The rank body under torchrun: join with ``env://`` and train (``resume``: continue).

    Raises whatever the rank raises (the CLI turns it into a message and an exit code;
    torchrun then reports the failed rank and stops the others).
    """
    env = torchrun_env()
    if env is None:
        raise NotUnderTorchrunError(
            "torchrun_main must run in a process started by torchrun (RANK, WORLD_SIZE and "
            "MASTER_ADDR are unset): launch `torchrun --nproc_per_node=K -m tenfold train ...`, "
            "or start the ranks on this machine with spawn_training (`tenfold train`)"
        )
    from tenfold.train.loop import run_rank

    torch.set_num_threads(config.threads)
    dist.init_process_group(
        "gloo", init_method="env://", timeout=timedelta(seconds=config.timeout_s)
    )
    try:
        run_rank(config, run_dir=run_dir, progress=progress, mode="torchrun", resume=resume)
    finally:
        _destroy_group()


def _destroy_group() -> None:
    """Leave the process group; a broken group may not tear down cleanly: exit anyway."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            destroy_process_group()
