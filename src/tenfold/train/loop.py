"""The training driver: one loop, over the public API, for real ranks and simulated workers.

    for each round:   every local worker runs its local SGD steps (an epoch, or k steps)
                      sync.step() after each of them: the sync falls on the round's last
                      evaluation on the test set (lead process only), one metrics record

``sync`` is what a user of the library would use: a rank holds one worker and a
:class:`~tenfold.distributed.LocalSGD` over its model (averaging with a
:class:`~tenfold.distributed.CompressedAverager`); the simulated group holds K workers and
one :class:`~tenfold.distributed.SimulatedLocalSGD` over their models (a
:class:`~tenfold.distributed.SimulatedAverager`, or a sweep's peer method). The two are
one implementation, so the simulated run produces bit for bit the weights, BatchNorm
statistics and records (timings aside) of the distributed one.

Entry points: :func:`run_simulated` (K workers in this process), :func:`run_rank` (the
body of one rank of an initialised process group; :mod:`tenfold.train.launch` starts
them), and for sweeps :func:`simulated_state` + :func:`train_loop`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tenfold.distributed import CompressedAverager, LocalSGD, SimulatedAverager, SyncStats
from tenfold.distributed.local_sgd import GroupAverager, SimulatedLocalSGD
from tenfold.distributed.stats import noop_stats
from tenfold.distributed.transport import all_gather_row
from tenfold.errors import ConfigError
from tenfold.train.config import TrainConfig
from tenfold.train.outer import outer_optimizer
from tenfold.train.recipes import Evaluator, get_recipe
from tenfold.train.state import ConfigMismatchError, Record, TrainResult, TrainState

__all__ = [
    "ConfigMismatchError",
    "Record",
    "TrainResult",
    "TrainState",
    "check_same_config",
    "make_workers",
    "run_rank",
    "run_simulated",
    "simulated_state",
    "train_loop",
]


def make_workers(config: TrainConfig, data: Any, ranks: list[int]) -> list[Any]:
    """Build the workers of ``ranks`` out of ``config.workers``, each on its own shard, with
    ``config.model``'s recipe (:mod:`tenfold.train.recipes`)."""
    return get_recipe(config.model).make_workers(config, data, ranks)


def _sync_every(config: TrainConfig, workers: list[Any]) -> int:
    """Local steps between two synchronisations: ``sync_every``, or one epoch."""
    return config.sync_every or workers[0].steps_per_epoch


def simulated_state(
    config: TrainConfig, data: Any, *, averager: GroupAverager | None = None
) -> TrainState:
    """The state of a fresh simulated run: ``config.workers`` workers on ``data`` and the
    :class:`~tenfold.distributed.SimulatedLocalSGD` that synchronises them.

    Args:
        config: the run's configuration.
        data: the recipe's data set, loaded.
        averager: the group's averager (None: ``SimulatedAverager`` with the config's
            policy and options; a sweep passes its peer method here).
    """
    workers = make_workers(config, data, list(range(config.workers)))
    if averager is None:
        averager = SimulatedAverager(config.make_policy(), **config.averager_options())
    outers = [outer_optimizer(config, w.model) for w in workers]
    sync = SimulatedLocalSGD(
        [w.model for w in workers],
        sync_every=_sync_every(config, workers),
        averager=averager,
        outer_optimizers=None if outers[0] is None else [o for o in outers if o is not None],
        grad_rms=[w.take_grad_rms for w in workers],
        overlap=config.overlap,
    )
    return TrainState(config=config, workers=workers, sync=sync)


def _synchronise(sync: Any, steps: int) -> SyncStats | None:
    """``sync.step()`` once per inner step just taken (the round's last one syncs), or
    ``sync.sync()`` after a last round shorter than ``sync_every``. Worker 0's stats
    (overlapped: of the sync applied now; None at the first round, nothing applied yet)."""
    stats = None
    for _ in range(steps):
        stats = sync.step() or stats
    return sync.sync() if sync.num_steps % sync.sync_every else stats


def _applied_nothing(state: TrainState) -> SyncStats:
    """The record's sync fields for an overlapped run's first round: nothing applied."""
    named = [(n, p) for n, p in state.workers[0].named_parameters() if p.requires_grad]
    empty = noop_stats(named, rank=0, round=0)
    return dataclasses.replace(empty, world_size=state.config.workers)


def train_loop(
    state: TrainState,
    *,
    test: Evaluator | None = None,
    on_record: Callable[[Record], None] | None = None,
    on_sync: Callable[[TrainState], None] | None = None,
) -> list[Record]:
    """Run rounds until ``config.epochs`` local epochs are done; return the records.

    Args:
        state: the state to advance (resumes from ``state.step``).
        test: the recipe's evaluator, called after every ``eval_every``-th sync and after
            the last one (None: never, e.g. on ranks other than 0).
        on_record: called with each record, e.g. to write metrics.jsonl and print a line.
        on_sync: called on every process after each round's record (after ``on_record``),
            with the state as of that sync, e.g. to write a checkpoint. Overlapped runs
            with it wait for each round's sync before its record (which then reports it).

    Each record holds: ``sync`` (1-based), ``step``, ``epoch`` (local epochs done, float),
    ``lr`` (at the round's first step), ``train_loss`` (worker/rank 0's mean over the round), ``test_accuracy`` and
    ``test_loss`` (None when not evaluated), ``bits_per_param`` (as sent, entropy-coded),
    ``quantized_bits_per_param`` (N averaged over values), ``bytes_sent``,
    ``bytes_received``, ``bytes_all_ranks`` (sum of every rank's packet), ``num_values``,
    ``world_size``, timings in seconds (``train_s``, ``encode_s``, ``comm_s``,
    ``decode_s``, ``eval_s``, ``elapsed_s``) and ``layers``: per tensor ``name``, ``N``,
    ``H``, ``bits_per_param``, ``nbytes``, ``grad_rms``... (rank 0's packet). char-gpt's
    records add ``val_loss`` (nats/char) and ``val_perplexity`` (``test_accuracy`` and
    ``test_loss`` are None); models with BatchNorm add ``buffer_bytes_sent`` (the lossless
    packet of their statistics).
    """
    cfg = state.config
    start = time.perf_counter()
    elapsed_before = state.elapsed_s
    # models with buffers (BatchNorm) record the bytes of their statistics
    has_buffers = any(b.is_floating_point() for b in state.workers[0].model.buffers())
    while state.step < state.total_steps:
        n = min(state.steps_per_round, state.total_steps - state.step)
        lr = cfg.lr * cfg.lr_decay ** (state.step // state.steps_per_epoch)
        t0 = time.perf_counter()
        losses = [w.train_steps(n) for w in state.workers]
        t_train = time.perf_counter() - t0
        stats = _synchronise(state.sync, n)
        state.step += n
        state.syncs += 1
        scores: dict[str, float] = {}
        t_eval = 0.0
        last = state.step >= state.total_steps
        if last:  # overlapped: apply the sync still in flight (blocking: nothing to do)
            stats = state.sync.wait() or stats
        elif on_sync is not None and state.sync.in_flight:
            # overlapped and checkpointed: the checkpoint waits for this round's sync
            # anyway, so the record reports it (its result is applied at the next round)
            state.sync.join()
            stats = state.sync.pending_stats
        if stats is None:
            stats = _applied_nothing(state)
        if test is not None and (state.syncs % cfg.eval_every == 0 or last):
            t0 = time.perf_counter()
            scores = test(state.workers[0].model)
            t_eval = time.perf_counter() - t0
        state.elapsed_s = elapsed_before + time.perf_counter() - start
        record: Record = {
            "sync": state.syncs,
            "step": state.step,
            "epoch": state.step / state.steps_per_epoch,
            "lr": lr,
            "train_loss": losses[0],
            "test_accuracy": scores.get("test_accuracy"),
            "test_loss": scores.get("test_loss"),
            **_text_scores(cfg, scores),
            "bits_per_param": stats.bits_per_param,
            "quantized_bits_per_param": stats.quantized_bits_per_param,
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
            "bytes_all_ranks": sum(stats.packet_bytes),
            "num_values": stats.num_values,
            "world_size": stats.world_size,
            "train_s": t_train,
            "encode_s": stats.encode_seconds,
            "comm_s": stats.comm_seconds,
            "decode_s": stats.decode_seconds,
            "eval_s": t_eval,
            "elapsed_s": state.elapsed_s,
            "layers": [t.as_dict() for t in stats.tensors],
            **({"buffer_bytes_sent": state.sync.buffer_bytes_sent} if has_buffers else {}),
        }
        if test is not None:
            state.metrics.append(record)
        if on_record is not None:
            on_record(record)
        if on_sync is not None:
            on_sync(state)
    return state.metrics


def _text_scores(cfg: TrainConfig, scores: dict[str, float]) -> dict[str, float | None]:
    # the language model's fields (absent from the classifiers' records, whose keys stay
    # exactly what they were before there were other models)
    if cfg.model != "char-gpt":
        return {}
    return {"val_loss": scores.get("val_loss"), "val_perplexity": scores.get("val_perplexity")}


def run_simulated(
    config: TrainConfig,
    *,
    data: Any = None,
    run_dir: str | Path | None = None,
    progress: bool = False,
    on_record: Callable[[Record], None] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``config.workers`` workers in this process with the simulated averager.

    Bit for bit the weights (and the records, timings aside) a real ``tenfold train`` run
    with the same config produces, at the cost of running the workers one after the other.
    Sets ``torch.set_num_threads(config.threads)`` (the thread count can change matmul
    results; real ranks use the same setting).

    Args:
        config: the run's configuration.
        data: a dataset already in memory (sweeps load it once); default: load
            ``config.dataset`` / ``config.data_dir``.
        run_dir: write config.json, metrics.jsonl, model.safetensors and plots there, and
            a checkpoint after every sync.
        progress: show a progress bar (stderr) and one line per sync (stdout).
        on_record: called with each metrics record.
        resume: continue the run in ``run_dir`` from its checkpoint (``config`` must be
            the saved one, up to :data:`~tenfold.train.checkpoint.RESUME_OVERRIDABLE`).

    Raises:
        CheckpointError: ``resume`` and the checkpoint is missing, damaged or another run's.

    Example:
        >>> res = run_simulated(TrainConfig(epochs=2, workers=5))  # doctest: +SKIP
        >>> res.metrics[-1]["test_accuracy"], final_weights(res.state)  # doctest: +SKIP
    """
    torch.set_num_threads(config.threads)
    recipe = get_recipe(config.model)
    if data is None:
        data = recipe.load_data(config)
    return _drive(
        simulated_state(config, data),
        recipe.make_evaluator(config, data),
        run_dir=run_dir,
        progress=progress,
        mode="simulated",
        source=data.source,
        on_record=on_record,
        resume=resume,
        fingerprint=recipe.fingerprint(data) if run_dir is not None else None,
    )


def _drive(
    state: TrainState,
    test: Evaluator | None,
    *,
    run_dir: str | Path | None,
    progress: bool,
    mode: str,
    source: str,
    on_record: Callable[[Record], None] | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Run :func:`train_loop`; the lead process (``test`` given) writes and reports.

    With a run directory, every process checkpoints after each sync (the lead writes the
    file); with ``resume`` the state is first restored from the directory's checkpoint.
    Among real ranks the lead decides and tells the others (:func:`_agree_on_checkpoint`).
    """
    from tenfold.train.checkpoint import Checkpointer
    from tenfold.train.progress import Reporter
    from tenfold.train.rundir import RunDir

    lead = test is not None
    distributed = state.distributed
    rd = RunDir(run_dir) if lead and run_dir is not None else None
    checkpointing = _agree_on_checkpoint(
        state,
        rd,
        lead=lead,
        distributed=distributed,
        resume=resume,
        mode=mode,
        source=source,
        fingerprint=fingerprint,
    )
    if state.step:  # resumed: the restored weights start the round (overlapped runs)
        state.sync.restart_from_parameters()
    checkpointer = (
        Checkpointer(rd, mode=mode, distributed=distributed, data=fingerprint)
        if checkpointing
        else None
    )

    def sync_hook(s: TrainState) -> None:
        if checkpointer is not None:
            s.sync.join()  # overlapped: the averager's state is complete, its group free
            checkpointer.save(s, elapsed_s=s.elapsed_s)

    reporter = Reporter(state, enabled=lead and progress)

    def record_hook(record: Record) -> None:
        if rd is not None:
            rd.append(record)
        reporter.update(record)
        if on_record is not None:
            on_record(record)

    try:
        hook = sync_hook if checkpointer is not None else None
        train_loop(state, test=test, on_record=record_hook, on_sync=hook)
    finally:
        reporter.close()
    if rd is not None:
        rd.finish(state)
    return TrainResult(metrics=state.metrics, state=state)


# Status rank 0 broadcasts before training: what every rank does about checkpoints.
_NO_CHECKPOINT, _CHECKPOINT, _RESUME, _FAILED = 0, 1, 2, -1


def _agree_on_checkpoint(
    state: TrainState,
    rd: Any,
    *,
    lead: bool,
    distributed: bool,
    resume: bool,
    mode: str,
    source: str,
    fingerprint: dict[str, Any] | None,
) -> bool:
    """Prepare the run directory (lead), restore a checkpoint (everyone); True: checkpoint.

    The lead starts or takes over the run directory and reads the checkpoint; with real
    ranks it then broadcasts a status and the checkpoint's bytes, so every rank restores the
    same state (no shared file system needed) and joins the per-sync checkpoint collective
    exactly when the lead writes checkpoints. A lead that cannot resume tells the others
    before raising: every rank fails at once instead of waiting for a timeout.
    """
    from tenfold.train.checkpoint import (
        Checkpoint,
        CheckpointError,
        broadcast_bytes,
        check_resumable,
        read_checkpoint_bytes,
        restore_state,
    )

    ckpt: Checkpoint | None = None
    blob: bytes | None = None
    if lead:
        status = _NO_CHECKPOINT
        try:
            if resume and rd is None:
                raise ConfigError("resume needs the run directory to resume from")
            if rd is not None and resume:
                ckpt, blob = read_checkpoint_bytes(rd.path)
                check_resumable(ckpt, state.config, mode=mode)
                if fingerprint is not None and ckpt.data.get("sha256") != fingerprint["sha256"]:
                    raise CheckpointError(
                        f"{ckpt.path}: the data set differs from the one the run was trained "
                        f"on (source {source}: {fingerprint['train']} training / "
                        f"{fingerprint['test']} test images)"
                    )
                restore_state(state, ckpt)
                state.metrics = rd.resume(
                    state.config,
                    count=ckpt.metrics_count,
                    sha256=ckpt.metrics_sha256,
                    from_sync=ckpt.syncs,
                )
                status = _RESUME
            elif rd is not None:
                rd.start(state.config, mode=mode, source=source)
                status = _CHECKPOINT
        except BaseException:
            if distributed:
                broadcast_bytes(None, status=_FAILED)
            raise
        if distributed:
            broadcast_bytes(blob if status == _RESUME else None, status=status)
        return status != _NO_CHECKPOINT
    if not distributed:
        return False
    status, data = broadcast_bytes(None)
    if status == _FAILED:
        raise CheckpointError("rank 0 could not start or resume the run directory (see its error)")
    if status == _RESUME:
        ckpt = Checkpoint.from_bytes(data, what="the checkpoint received from rank 0")
        check_resumable(ckpt, state.config, mode=mode)
        restore_state(state, ckpt)
    return status != _NO_CHECKPOINT


def check_same_config(config: TrainConfig, group: dist.ProcessGroup | None = None) -> None:
    """All ranks all-gather their config digest; any difference fails on every rank.

    Raises:
        ConfigMismatchError: naming the ranks whose configuration differs from rank 0's.
    """
    mine = int.from_bytes(config.digest(), "big", signed=True)
    rows = all_gather_row([mine], group=group, what="comparing configurations")
    digests = [int(r[0]) for r in rows]
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ConfigMismatchError(
            f"ranks started with different configurations: rank(s) {differ} differ from "
            f"rank 0 (config digests {[f'{d & (2**64 - 1):016x}' for d in digests]}); "
            "start every rank with the same options"
        )


def run_rank(
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    mode: str = "spawn",
    resume: bool = False,
) -> TrainResult:
    """The body of one rank; the default process group must be initialised.

    Checks every rank has the same config, loads the data, trains this rank's worker and
    synchronises it through :class:`~tenfold.distributed.LocalSGD` (a
    :class:`~tenfold.distributed.CompressedAverager`) each round. Rank 0 evaluates,
    writes the run directory (if ``run_dir``: then every rank takes part in a checkpoint
    after each sync) and shows progress (if ``progress``). ``resume`` (read on rank 0):
    continue the run in ``run_dir`` from its checkpoint.

    Raises:
        ConfigMismatchError, NonFiniteWeightsError, DatasetError, CommunicationError (a
        peer died or the timeout expired), CheckpointError (cannot resume): on this rank;
        the launcher reports them.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != config.workers:
        raise ConfigMismatchError(
            f"rank {rank}: config says {config.workers} workers, the process group has {world}"
        )
    torch.set_num_threads(config.threads)
    check_same_config(config)
    recipe = get_recipe(config.model)
    data = recipe.load_data(config)
    workers = recipe.make_workers(config, data, [rank])
    sync = LocalSGD(
        workers[0].model,
        sync_every=_sync_every(config, workers),
        averager=CompressedAverager(config.make_policy(), **config.averager_options()),
        outer_optimizer=outer_optimizer(config, workers[0].model),
        grad_rms=workers[0].take_grad_rms,
        overlap=config.overlap,
    )
    state = TrainState(config=config, workers=workers, sync=sync, distributed=world > 1)
    test = recipe.make_evaluator(config, data) if rank == 0 else None
    source = data.source
    fingerprint = recipe.fingerprint(data) if rank == 0 and run_dir is not None else None
    del data  # keep only the shard (and, on rank 0, the test set) in memory
    return _drive(
        state,
        test,
        run_dir=run_dir,
        progress=progress,
        mode=mode,
        source=source,
        resume=resume,
        fingerprint=fingerprint,
    )


def final_weights(state: TrainState) -> dict[str, np.ndarray]:
    """The averaged weights (identical on every worker) as float32 arrays by name."""
    return {n: p.detach().cpu().numpy().copy() for n, p in state.workers[0].named_parameters()}
