"""A resumable sweep of training runs: one JSON file per finished run, skip what is done.

Layout of a sweep directory::

    <out>/runs/<setting>__seed<k>.json   one finished run (written atomically)
    <out>/sweep.json                     the profile, the machine, one entry per invocation

A run file holds the run's complete TrainConfig, the data it saw, one record per epoch
(test accuracy and loss, bits/param quantized and coded, bytes, per-layer N / H / gradient
RMS, timings, and the entropy grid of paper Fig. 3) and a summary. A rerun of the same
profile skips every run whose file exists with the same configuration; a file whose
configuration differs (e.g. the epoch count changed) is stale and is run again.

Runs use the trainer's *simulated* averager: the K workers of a run train one after the
other in one process, with bit for bit the weights K torch.distributed ranks produce (see
``tests/paper/test_simulated_equals_distributed.py``). The sweep driver composes the
trainer's public pieces (:func:`~tenfold.train.make_workers`, :class:`~tenfold.train.TrainState`,
:func:`~tenfold.train.train_loop`) instead of calling ``run_simulated``, because it needs
the averaged weights after every synchronisation to compute the entropy grid of Fig. 3
for several (F, M) without retraining.

Parallelism: ``jobs`` processes (``spawn``), each with one torch thread and its own copy
of the dataset; runs are independent, so results do not depend on ``jobs``.

Example:
    >>> from paper.profiles import get_profile
    >>> result = run_sweep(get_profile("quick"), "runs/reproduce-quick", jobs=2)  # doctest: +SKIP
    >>> result.ran, result.skipped  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paper.profiles import Profile, RunSpec
from tenfold.train.config import with_legacy_defaults
from tenfold.train.data import IdxDataset

__all__ = [
    "RUN_FORMAT",
    "SweepResult",
    "entropy_grid",
    "is_finished",
    "load_data",
    "load_runs",
    "machine_info",
    "matches",
    "profile_runs",
    "measure_epoch_seconds",
    "predict_wall_seconds",
    "run_path",
    "run_sweep",
    "simulate",
    "subset",
    "sweep_file",
    "train_run",
    "write_json_atomic",
]

#: ``format`` field of a run file (bumped if the layout changes). The name is where the format
#: was born (``paper`` was ``tenfold.experiments``); the committed run files carry it.
RUN_FORMAT = "tenfold.experiments.run/1"
RUNS_DIR = "runs"
SWEEP_FILE = "sweep.json"


#: profiles that sweep into another profile's directory (sharing its run files, not its
#: session history): their sessions go to ``sweep-<name>.json``
SHARING_PROFILES = ("beyond",)


def sweep_file(profile: Profile) -> str:
    """The sessions file of ``profile``'s sweep: ``sweep.json``, or ``sweep-<name>.json`` for
    the :data:`SHARING_PROFILES` (``beyond`` shares ``results/`` with the full profile)."""
    return f"sweep-{profile.name}.json" if profile.name in SHARING_PROFILES else SWEEP_FILE


# Stream id of the entropy grid's sampling seeds (independent of the trainer's streams).
_ENTROPY_STREAM = 0x7E57


# ---- files --------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file in the same dir + rename).

    A crash or Ctrl-C mid-write leaves either the old file or none, never half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            json.dump(data, f, allow_nan=False, separators=(",", ":"))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_path(out_dir: str | Path, key: str) -> Path:
    """``<out>/runs/<key>.json``."""
    return Path(out_dir) / RUNS_DIR / f"{key}.json"


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def matches(doc: Any, spec: RunSpec, *, fields: Iterable[str] | None = None) -> bool:
    """True if the run document ``doc`` is a finished run of ``spec``.

    Args:
        fields: compare only these TrainConfig fields (None: the whole configuration, as
            resuming requires; reports pass the fields their profile sets, so a later change
            of an unrelated TrainConfig default does not orphan saved results).
    """
    want = spec.config.to_dict()
    have = doc.get("config") if isinstance(doc, dict) else None
    if isinstance(have, dict):
        have = with_legacy_defaults(have)  # run files older than a config field
    if fields is None:
        same_config = have == want
    else:
        same_config = isinstance(have, dict) and all(have.get(f) == want.get(f) for f in fields)
    return (
        isinstance(doc, dict)
        and doc.get("format") == RUN_FORMAT
        and doc.get("key") == spec.key
        and same_config
        and doc.get("data", {}).get("train_limit") == spec.train_limit
        and doc.get("data", {}).get("test_limit") == spec.test_limit
        and doc.get("entropy_grid", {}).get("F") == list(spec.entropy_F)
        and doc.get("entropy_grid", {}).get("M") == list(spec.entropy_M)
        and doc.get("setting", {}).get("peer") == spec.setting.peer
    )


def is_finished(out_dir: str | Path, spec: RunSpec) -> bool:
    """True if ``spec``'s run file exists, parses, and holds the same configuration."""
    return matches(_read_json(run_path(out_dir, spec.key)), spec)


def profile_runs(out_dir: str | Path, profile: Profile) -> tuple[list[dict[str, Any]], int]:
    """The finished runs of ``profile`` under ``out_dir``, and how many other files were ignored.

    Run files of other settings or other configurations (e.g. another epoch count) in the
    same directory are not this profile's results and are left out of its report.
    """
    docs = {d.get("key"): d for d in load_runs(out_dir)}
    mine = []
    for spec in profile.runs():
        doc = docs.get(spec.key)
        pinned = {"policy", "seed", "epochs", "dataset", "data_dir", *profile.train}
        if doc is not None and matches(doc, spec, fields=pinned | set(spec.setting.overrides)):
            mine.append(doc)
    return mine, len(docs) - len(mine)


def load_runs(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable run file under ``<out>/runs`` (sorted by name); others are skipped."""
    runs_dir = Path(out_dir) / RUNS_DIR
    out = []
    for path in sorted(runs_dir.glob("*.json")):
        doc = _read_json(path)
        if isinstance(doc, dict) and doc.get("format") == RUN_FORMAT:
            out.append(doc)
    return out


# ---- data ----------------------------------------------------------------------------------


def subset(data: IdxDataset, train_limit: int | None, test_limit: int | None) -> IdxDataset:
    """The first ``train_limit`` training and ``test_limit`` test images (None: all).

    The IDX files are already in random order, so a prefix is a fair sample; a limit above
    the dataset's size takes everything.
    """
    tr = slice(None) if train_limit is None else slice(0, train_limit)
    te = slice(None) if test_limit is None else slice(0, test_limit)
    return IdxDataset(
        train_images=data.train_images[tr],
        train_labels=data.train_labels[tr],
        test_images=data.test_images[te],
        test_labels=data.test_labels[te],
        source=data.source,
    )


_DATA_CACHE: dict[tuple[Any, ...], IdxDataset] = {}


def load_data(spec: RunSpec) -> IdxDataset:
    """The (subset of the) dataset ``spec`` trains on, cached per process."""
    from tenfold.train.data import load_dataset

    cfg = spec.config
    key = (cfg.dataset, cfg.data_dir, spec.train_limit, spec.test_limit)
    if key not in _DATA_CACHE:
        full = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
        _DATA_CACHE[key] = subset(full, spec.train_limit, spec.test_limit)
    return _DATA_CACHE[key]


# ---- one run --------------------------------------------------------------------------------


def entropy_grid(
    weights: Mapping[str, np.ndarray],
    fractions: Sequence[float],
    bits: Sequence[int],
    *,
    seed: int,
) -> dict[str, list[list[float]]]:
    """Sampled entropy (bits) of every tensor for each (M, F): paper Fig. 3's estimates.

    Uses the codec's own estimator (:func:`tenfold.codec.quantize.sampled_entropy`, the
    one EntropyAdaptive calls) over each tensor's full ``[w_min, w_max]``.

    Args:
        weights: name -> float array (any shape).
        fractions: sample fractions F.
        bits: preliminary quantizer bits M.
        seed: sampling seed (F < 1 draws a seeded sample; F = 1 uses every value).

    Returns:
        name -> ``H[i][j]`` for ``M = bits[i]``, ``F = fractions[j]``; a constant tensor
        has entropy 0.

    Example:
        >>> w = {"w": np.linspace(-1, 1, 1000, dtype=np.float32)}
        >>> round(entropy_grid(w, [1.0], [2], seed=0)["w"][0][0], 6)  # uniform: H = M
        2.0
    """
    from tenfold.codec.quantize import finite_min_max, kernel_view, sampled_entropy

    out: dict[str, list[list[float]]] = {}
    for position, (name, w) in enumerate(weights.items()):
        x = kernel_view(np.asarray(w))
        lo, hi, finite = finite_min_max(x) if x.size else (0.0, 0.0, True)
        if not finite:
            raise ValueError(f"entropy_grid: {name} holds NaN or Inf")
        out[name] = [
            [
                0.0
                if lo == hi
                else sampled_entropy(x, lo, hi, bits=m, fraction=f, seed=seed, position=position)
                for f in fractions
            ]
            for m in bits
        ]
    return out


def _entropy_seed(seed: int, sync: int) -> int:
    return int(np.random.SeedSequence([seed, _ENTROPY_STREAM, sync]).generate_state(1)[0])


def _compact(record: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's metrics record, minus what every epoch repeats (layer shapes)."""
    out = dict(record)
    out["layers"] = [{k: v for k, v in layer.items() if k != "shape"} for layer in record["layers"]]
    return out


def train_run(
    spec: RunSpec,
    data: IdxDataset,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run with the simulated averager; return its run document (not saved).

    Every epoch's record is the trainer's metrics record (see
    :func:`tenfold.train.train_loop`) plus ``entropy``: the :func:`entropy_grid` of the
    averaged weight matrices after that synchronisation (rank 0's gradient RMS is in
    ``layers[i]["grad_rms"]``). A run whose weights become NaN/Inf ends with
    ``status = "diverged"`` and the records so far.
    """
    return simulate(spec, data, on_epoch=on_epoch)[0]


def _averager(spec: RunSpec) -> Any:
    """The simulated group's averager: tenfold's, or the setting's peer method."""
    from tenfold.distributed import SimulatedAverager

    cfg = spec.config
    if spec.setting.peer is not None:
        from paper.peer_averager import PeerAverager
        from paper.peers import peer_from_config

        return PeerAverager(peer_from_config(spec.setting.peer), error_feedback=cfg.error_feedback)
    return SimulatedAverager(cfg.make_policy(), **cfg.averager_options())


def simulate(
    spec: RunSpec,
    data: IdxDataset,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """:func:`train_run`, also returning the final :class:`~tenfold.train.TrainState`.

    The state's workers hold the final averaged weights (``tenfold.train.final_weights``),
    which the simulated-vs-distributed test compares with a torch.distributed run.
    """
    import torch

    from tenfold.distributed import NonFiniteWeightsError
    from tenfold.train import simulated_state, train_loop
    from tenfold.train.recipes import get_recipe

    cfg = spec.config
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    # the trainer's own simulated driver (SimulatedLocalSGD), with the setting's averager
    state = simulated_state(cfg, data, averager=_averager(spec))
    test = get_recipe(cfg.model).make_evaluator(cfg, data)
    epochs: list[dict[str, Any]] = []

    def hook(record: dict[str, Any]) -> None:
        # Called after the average: every worker now holds the same averaged weights.
        weights = {
            n: p.detach().numpy() for n, p in state.workers[0].named_parameters() if p.ndim == 2
        }
        rec = _compact(record)
        rec["entropy"] = entropy_grid(
            weights, spec.entropy_F, spec.entropy_M, seed=_entropy_seed(spec.seed, record["sync"])
        )
        epochs.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    status, error = "ok", None
    try:
        train_loop(state, test=test, on_record=hook)
    except NonFiniteWeightsError as exc:
        status, error = "diverged", str(exc)
    wall = time.perf_counter() - t0
    doc = {
        "format": RUN_FORMAT,
        "key": spec.key,
        "profile": spec.profile,
        "setting": spec.setting.to_dict(),
        "seed": spec.seed,
        "config": cfg.to_dict(),
        "data": {
            "source": data.source,
            "train_limit": spec.train_limit,
            "test_limit": spec.test_limit,
            "train_images": len(data.train_labels),
            "test_images": len(data.test_labels),
        },
        "entropy_grid": {"F": list(spec.entropy_F), "M": list(spec.entropy_M)},
        "status": status,
        "error": error,
        "epochs": epochs,
        "wall_s": wall,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    return doc, state


def _versions() -> dict[str, str]:
    import numba
    import torch

    from tenfold import __version__

    return {
        "tenfold": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS, Python and library versions (for the report)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        **_versions(),
    }


# ---- the sweep ------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What one invocation of :func:`run_sweep` did.

    Attributes:
        total: runs in the profile.
        skipped: runs already finished before this invocation.
        ran: runs trained now (including diverged ones, which are results too).
        failed: ``(key, error)`` of runs that raised (not saved; a rerun retries them).
        elapsed_s: wall time of this invocation (s).
    """

    total: int
    skipped: int
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0


def _execute(spec_dict: dict[str, Any], out_dir: str) -> tuple[str, str, float]:
    """Train one run and save its file; ``(key, status or 'error: ...', wall_s)``.

    Runs in a pool process (or inline for ``jobs=1``); never raises for a failed run.
    """
    spec = RunSpec.from_dict(spec_dict)
    t0 = time.perf_counter()
    try:
        doc = train_run(spec, load_data(spec))
        write_json_atomic(run_path(out_dir, spec.key), doc)
        return spec.key, str(doc["status"]), time.perf_counter() - t0
    except Exception as exc:  # a failed run is reported, the sweep goes on
        return spec.key, f"error: {type(exc).__name__}: {exc}", time.perf_counter() - t0


def _stop_workers(procs: Sequence[Any]) -> None:
    """Terminate a pool's worker processes (this sweep's own children, by handle).

    A pool worker survives a KeyboardInterrupt (the executor turns it into the run's
    result and takes the next run), so an interrupted sweep must stop them itself.
    """
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)


def _init_process() -> None:
    import torch

    # One torch thread per process: `jobs` processes share the cores (see TrainConfig.threads).
    torch.set_num_threads(1)


def _record_session(out_dir: Path, profile: Profile, session: dict[str, Any]) -> None:
    """Append this invocation to sweep.json; a changed profile starts a new session list.

    Sessions of an earlier configuration move to ``earlier_sessions``: the report's wall
    time sums only the sessions that produced the current profile's runs.
    """
    path = out_dir / sweep_file(profile)
    meta = _read_json(path)
    if not isinstance(meta, dict):
        meta = {"sessions": []}
    if meta.get("profile") != profile.to_dict():
        earlier = [*meta.get("earlier_sessions", []), *meta.get("sessions", [])]
        meta = {"earlier_sessions": earlier, "sessions": []} if earlier else {"sessions": []}
    meta["profile"] = profile.to_dict()
    meta["machine"] = machine_info()
    meta["sessions"] = [*meta.get("sessions", []), session]
    write_json_atomic(path, meta)


def run_sweep(
    profile: Profile,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    command: str | None = None,
) -> SweepResult:
    """Train every run of ``profile`` not yet finished under ``out_dir``; resumable.

    Args:
        profile: the sweep.
        out_dir: the sweep directory (created).
        jobs: processes training runs in parallel (1: in this process).
        progress: show a tqdm bar over runs (done / left, last finished run).
        command: the command line to record in sweep.json (default ``sys.argv``).

    Returns:
        A :class:`SweepResult`. Failed runs are listed there, not raised.

    Raises:
        ValueError: ``jobs < 1``.
        KeyboardInterrupt: after cancelling pending runs (finished ones are saved).
    """
    from tqdm import tqdm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    out = Path(out_dir)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    specs = profile.runs()
    todo = [s for s in specs if not is_finished(out, s)]
    result = SweepResult(total=len(specs), skipped=len(specs) - len(todo))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(specs),
        initial=result.skipped,
        unit="run",
        desc=f"reproduce {profile.name}",
        disable=not progress,
        dynamic_ncols=True,
    )

    def done(key: str, status: str, wall: float) -> None:
        if status.startswith("error"):
            result.failed.append((key, status[len("error: ") :]))
            bar.write(f"reproduce: run {key} failed: {status}")
        else:
            result.ran += 1
        bar.set_postfix_str(f"{key} {status} {wall:.0f}s", refresh=False)
        bar.update(1)

    try:
        if jobs == 1 or len(todo) <= 1:
            _init_process()
            for spec in todo:
                done(*_execute(spec.to_dict(), str(out)))
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(
                max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init_process
            )
            try:
                futures = [pool.submit(_execute, s.to_dict(), str(out)) for s in todo]
                for fut in cf.as_completed(futures):
                    done(*fut.result())
            except BaseException:
                # Ctrl-C (the workers get it too) or a dead worker: drop what is queued and
                # do not wait for running runs; every finished run is already on disk.
                procs = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                _stop_workers(procs)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
        result.elapsed_s = time.perf_counter() - t0
        _record_session(
            out,
            profile,
            {
                "started": started,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "elapsed_s": result.elapsed_s,
                "jobs": jobs,
                "ran": result.ran,
                "skipped": result.skipped,
                "failed": [k for k, _ in result.failed],
                "command": command if command is not None else " ".join(sys.argv),
            },
        )
    return result


# ---- sizing -----------------------------------------------------------------------------------


def measure_epoch_seconds(profile: Profile, *, jobs: int = 1) -> float:
    """Measure one epoch of one run of ``profile`` with ``jobs`` runs training at once.

    Trains ``jobs`` one-epoch runs of the profile's EntropyAdaptive(c=6, M=4) setting (or
    its first setting) concurrently, each in its own process as in :func:`run_sweep`, and
    returns the mean wall seconds per run-epoch (data loading and JIT warm-up excluded: a
    first warm-up epoch is not timed). Two runs sharing 2 cores are slower than one alone;
    measuring with the sweep's ``jobs`` captures that.
    """
    try:
        setting = profile.setting("entropy-c6-M4")
    except KeyError:
        setting = profile.settings[0]
    one = profile.replace(epochs=1, settings=(setting,), seeds=(profile.seeds[0],))
    spec = one.runs()[0].to_dict()
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_process
    ) as pool:
        # Warm up every process (imports, data, numba cache) before timing.
        list(pool.map(_timed_epoch, [spec] * jobs))
        times = list(pool.map(_timed_epoch, [spec] * jobs))
    return float(np.mean(times))


def _timed_epoch(spec_dict: dict[str, Any]) -> float:
    spec = RunSpec.from_dict(spec_dict)
    data = load_data(spec)
    t0 = time.perf_counter()
    train_run(spec, data)
    return time.perf_counter() - t0


def predict_wall_seconds(
    profile: Profile, epoch_seconds: float, *, jobs: int = 1, out_dir: str | Path | None = None
) -> float:
    """Predicted wall time (s) of the runs still to do: run-epochs x epoch time / jobs.

    ``epoch_seconds`` should be measured with the same ``jobs`` (see
    :func:`measure_epoch_seconds`). The last, partly idle wave of a parallel sweep is
    counted as a full wave (the estimate errs long).
    """
    specs = profile.runs()
    if out_dir is not None:
        specs = [s for s in specs if not is_finished(out_dir, s)]
    waves = math.ceil(len(specs) / jobs) if specs else 0
    return waves * profile.epochs * epoch_seconds
