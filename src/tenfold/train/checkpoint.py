"""Checkpoints: everything a run needs to continue bit for bit, in one atomically replaced file.

After every synchronisation the lead process rewrites ``checkpoint.safetensors`` in the run
directory (written to a temporary file in the same directory, fsynced, then ``os.replace``d,
so a crash at any moment leaves either the previous checkpoint or the new one, never a mix).
It is a safetensors file - no pickle - holding::

    model/<name>              the averaged weights (identical on every rank after a sync)
    worker/<rank>/<key>       each worker's tensors from its state_dict() except the model:
                              the data-order generator at its epoch start (plus optimiser
                              state, would a worker have any: plain SGD has none)
    process/<p>/torch_rng     each process's global torch CPU generator (uint8)
    process/<p>/numpy_key     numpy's global MT19937 key (624 words, as int64)
    process/<p>/python_mt     Python's ``random`` MT state (625 words, as int64)
    averager/<p>/...          process p's averager: in delta mode the shared model the
                              deltas are taken against and the error-feedback residual(s)

and, as JSON in the safetensors metadata (key ``tenfold.checkpoint``): the format version,
the config, the mode, step, syncs, the averager's round (it seeds the codec's sampling),
elapsed training time, the per-worker and per-process scalars (steps, RNG positions), the
data set's fingerprint, how many metrics records the checkpoint covers with the SHA-256 of
those lines of ``metrics.jsonl``, and the SHA-256 of every tensor's bytes.

The metrics themselves stay in ``metrics.jsonl`` (appended and fsynced before the checkpoint
that covers them is written): storing them in each checkpoint would make a run with many
synchronisations write O(syncs^2) bytes. On resume the file is cut back to the covered
records after their hash is checked.

With real ranks, every rank serialises its own part (a few kB) and the parts travel to the
lead as byte payloads (:func:`tenfold.distributed.all_gather_bytes`: uint8 tensors, no pickle); on
resume the lead broadcasts the checkpoint's bytes to every rank the same way, so ranks on
other machines need no shared file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from tenfold.errors import InputTypeError, TenfoldError
from tenfold.train.config import TrainConfig, resume_overridable

if TYPE_CHECKING:
    from tenfold.train.paper_worker import PaperWorker
    from tenfold.train.state import TrainState

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "RESUME_OVERRIDABLE",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "Snapshot",
    "broadcast_bytes",
    "capture_process_rng",
    "read_checkpoint",
    "read_checkpoint_bytes",
    "restore_process_rng",
    "restore_state",
    "write_atomic",
]

#: The checkpoint's file name inside the run directory.
CHECKPOINT = "checkpoint.safetensors"

#: Version of the checkpoint layout above (a reader refuses others).
CHECKPOINT_FORMAT = 1

#: Config fields a resumed run may change: they cannot change the numbers it computes.
#: (The config's Option.resume rule is their one source.)
RESUME_OVERRIDABLE = resume_overridable()

_META_KEY = "tenfold.checkpoint"
_MAX_HEADER_BYTES = 64 << 20  # a checkpoint's JSON header is a few kB; refuse absurd claims
_TMP_SUFFIX = ".tmp"
_MAX_BROADCAST_BYTES = 1 << 31  # a checkpoint of the paper's model is ~1.4 MB

# Modes whose checkpoints are interchangeable: one process per rank either way.
_MODE_FAMILY = {"spawn": "ranks", "torchrun": "ranks", "simulated": "simulated"}


class CheckpointError(TenfoldError, ValueError):
    """A checkpoint is missing, damaged, or does not fit the run that tries to resume it."""


# ---- a named set of tensors + JSON scalars, as bytes ---------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Tensors by name plus JSON-safe metadata; serialises to safetensors bytes (no pickle).

    Attributes:
        tensors: name -> CPU tensor.
        meta: JSON-safe dict (stored as one JSON string in the safetensors metadata).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def to_bytes(self) -> bytes:
        """The safetensors serialisation."""
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        return save(tensors, metadata={_META_KEY: json.dumps(self.meta, allow_nan=False)})

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, what: str) -> Snapshot:
        """Parse :meth:`to_bytes`'s output.

        Raises:
            CheckpointError: naming ``what`` (e.g. the file) and what is wrong.
        """
        from safetensors.torch import load

        data = bytes(data)
        if len(data) < 8:
            raise CheckpointError(f"{what}: {len(data)} bytes is too short for a checkpoint")
        (header_len,) = struct.unpack_from("<Q", data, 0)
        if header_len > min(_MAX_HEADER_BYTES, len(data) - 8):
            raise CheckpointError(
                f"{what}: damaged or truncated (header claims {header_len} bytes, "
                f"the file has {len(data) - 8})"
            )
        try:
            header = json.loads(data[8 : 8 + header_len])
            meta = json.loads(header["__metadata__"][_META_KEY])
            tensors = load(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{what}: not a tenfold checkpoint or damaged ({exc})") from None
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{what}: damaged or truncated ({exc})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{what}: metadata is not a JSON object")
        return cls(tensors=dict(tensors), meta=meta)


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- global RNG states of a process -----------------------------------------------------------


def capture_process_rng(process: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's global torch, numpy and Python RNG states, as tensors + scalars.

    Tensor names are ``process/<process>/...``; the scalars go under ``meta["processes"]``.
    """
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global state is the point
    if np_state["bit_generator"] != "MT19937":  # pragma: no cover - numpy's global is MT19937
        raise CheckpointError(f"numpy's global generator is {np_state['bit_generator']}")
    py_version, py_words, py_gauss = random.getstate()
    p = f"process/{process}"
    tensors = {
        f"{p}/torch_rng": torch.get_rng_state(),
        f"{p}/numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        f"{p}/python_mt": torch.tensor(py_words, dtype=torch.int64),
    }
    scalars = {
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python_version": int(py_version),
        "python_gauss_next": py_gauss,
    }
    return tensors, scalars


def restore_process_rng(
    tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any], process: int
) -> None:
    """Set this process's global torch, numpy and Python RNGs from :func:`capture_process_rng`."""
    p = f"process/{process}"
    torch.set_rng_state(tensors[f"{p}/torch_rng"].to(torch.uint8))
    np.random.set_state(  # noqa: NPY002 - restoring the global state
        {
            "bit_generator": "MT19937",
            "state": {
                "key": tensors[f"{p}/numpy_key"].numpy().astype(np.uint32),
                "pos": int(scalars["numpy_pos"]),
            },
            "has_gauss": int(scalars["numpy_has_gauss"]),
            "gauss": float(scalars["numpy_gauss"]),
        }
    )
    words = tuple(int(x) for x in tensors[f"{p}/python_mt"].tolist())
    random.setstate((int(scalars["python_version"]), words, scalars["python_gauss_next"]))


# ---- one process's part: its workers' states and its RNGs -----------------------------------


def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    """Tensors of a nested state dict go to ``tensors`` by path, the rest to ``scalars``."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().clone()
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, tensors, scalars)
    elif value is None or isinstance(value, (bool, int, float, str)):
        scalars[prefix] = value
    else:
        raise InputTypeError(f"cannot checkpoint {prefix}: {type(value).__name__}")


def _unflatten(prefix: str, tensors: Mapping[str, torch.Tensor], scalars: Mapping) -> dict:
    """Inverse of :func:`_flatten` for everything under ``prefix``."""
    out: dict[str, Any] = {}
    start = prefix + "/"
    items = [*tensors.items(), *scalars.items()]
    for path, value in items:
        if not path.startswith(start):
            continue
        keys = path[len(start) :].split("/")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def process_snapshot(
    workers: Sequence[PaperWorker], process: int, averager: Any | None = None
) -> Snapshot:
    """This process's part of a checkpoint: its workers' states (not the model), its RNGs
    and its averager's ``state_dict()`` (reference and residuals in delta mode)."""
    tensors, proc_scalars = capture_process_rng(process)
    worker_scalars: dict[str, Any] = {}
    for w in workers:
        state = {k: v for k, v in w.state_dict().items() if k != "model"}
        _flatten(f"worker/{w.rank}", state, tensors, worker_scalars)
    averager_scalars: dict[str, Any] = {}
    if averager is not None:
        _flatten(f"averager/{process}", averager.state_dict(), tensors, averager_scalars)
    meta = {
        "processes": {str(process): {**proc_scalars, "ranks": [w.rank for w in workers]}},
        "worker_scalars": worker_scalars,
        "averager_scalars": averager_scalars,
    }
    return Snapshot(tensors=tensors, meta=meta)


# ---- the checkpoint file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A parsed, validated checkpoint (see the module docstring for what it holds).

    Attributes:
        config: the run's configuration as saved.
        mode: "spawn", "torchrun" or "simulated".
        step: local steps every worker had done.
        syncs: synchronisations done.
        round: the averager's next round.
        total_steps: steps of the whole run (``step == total_steps``: the run had finished).
        elapsed_s: training wall time so far (s), as in the last metrics record.
        metrics_count: metrics records covered (lines of metrics.jsonl).
        metrics_sha256: SHA-256 (hex) of those lines, newlines included.
        data: the data set's fingerprint and sizes (the recipe's ``fingerprint``).
        snapshot: the tensors and the raw metadata.
        path: where it was read from ("" when it came from bytes).
    """

    config: TrainConfig
    mode: str
    step: int
    syncs: int
    round: int
    total_steps: int
    elapsed_s: float
    metrics_count: int
    metrics_sha256: str
    data: dict[str, Any]
    snapshot: Snapshot
    path: str = ""

    @property
    def complete(self) -> bool:
        """True if the checkpointed run had already done all its steps."""
        return self.step >= self.total_steps

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, what: str) -> Checkpoint:
        """Parse and validate checkpoint bytes.

        Raises:
            CheckpointError: damaged, another format, or inconsistent contents.
        """
        snap = Snapshot.from_bytes(data, what=what)
        m = snap.meta
        if m.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{what}: checkpoint format {m.get('format')!r}, this tenfold reads "
                f"{CHECKPOINT_FORMAT}"
            )
        if m.get("tensor_sha256") != _tensor_digest(snap.tensors):
            raise CheckpointError(f"{what}: tensor checksum mismatch (the file is damaged)")
        try:
            config = TrainConfig.from_dict(m["config"])
            ckpt = cls(
                config=config,
                mode=str(m["mode"]),
                step=int(m["step"]),
                syncs=int(m["syncs"]),
                round=int(m["round"]),
                total_steps=int(m["total_steps"]),
                elapsed_s=float(m["elapsed_s"]),
                metrics_count=int(m["metrics"]["count"]),
                metrics_sha256=str(m["metrics"]["sha256"]),
                data=dict(m["data"]),
                snapshot=snap,
                path=what,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{what}: incomplete or invalid metadata ({exc})") from None
        if ckpt.mode not in _MODE_FAMILY:
            raise CheckpointError(f"{what}: unknown mode {ckpt.mode!r}")
        ranks = sorted(int(r) for p in m["processes"].values() for r in p["ranks"])
        if ranks != list(range(config.workers)):
            raise CheckpointError(
                f"{what}: holds workers {ranks}, the config has {config.workers} workers"
            )
        return ckpt

    def worker_state(self, rank: int) -> dict[str, Any]:
        """What the worker's ``load_state_dict`` takes for worker ``rank``."""
        snap = self.snapshot
        state = _unflatten(f"worker/{rank}", snap.tensors, snap.meta["worker_scalars"])
        if not state:
            raise CheckpointError(f"{self.path}: no state for worker {rank}")
        prefix = "model/"
        state["model"] = {
            k[len(prefix) :]: v for k, v in snap.tensors.items() if k.startswith(prefix)
        }
        return state

    def process_of(self, rank: int) -> int:
        """The process that held worker ``rank`` when the checkpoint was written."""
        for p, info in self.snapshot.meta["processes"].items():
            if rank in info["ranks"]:
                return int(p)
        raise CheckpointError(f"{self.path}: no process held worker {rank}")  # pragma: no cover


def read_checkpoint(run_dir: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate ``run_dir/checkpoint.safetensors``.

    Raises:
        CheckpointError: no such file (the message says why that may be), or damaged.
    """
    return read_checkpoint_bytes(run_dir)[0]


def read_checkpoint_bytes(run_dir: str | os.PathLike[str]) -> tuple[Checkpoint, bytes]:
    """:func:`read_checkpoint`, also returning the file's bytes (to hand to other ranks)."""
    d = Path(run_dir)
    path = d / CHECKPOINT
    if not d.is_dir():
        raise CheckpointError(f"--resume {d}: not a directory")
    if not path.is_file():
        hint = (
            "the run stopped before its first synchronisation, or was written by an older "
            "tenfold; start it again with --out DIR --overwrite"
            if (d / "config.json").exists()
            else "it does not look like a tenfold run directory"
        )
        raise CheckpointError(f"{path}: no checkpoint ({hint})")
    blob = path.read_bytes()
    return Checkpoint.from_bytes(blob, what=str(path)), blob


def build_checkpoint(
    state: TrainState,
    parts: Sequence[Snapshot],
    *,
    mode: str,
    elapsed_s: float,
    metrics_count: int,
    metrics_sha256: str,
    data: Mapping[str, Any],
) -> Snapshot:
    """Assemble a checkpoint from the shared weights and every process's part."""
    tensors: dict[str, torch.Tensor] = {
        f"model/{name}": p.detach().cpu().clone() for name, p in state.workers[0].named_parameters()
    }
    processes: dict[str, Any] = {}
    worker_scalars: dict[str, Any] = {}
    averager_scalars: dict[str, Any] = {}
    for part in parts:
        tensors.update(part.tensors)
        processes.update(part.meta["processes"])
        worker_scalars.update(part.meta["worker_scalars"])
        averager_scalars.update(part.meta.get("averager_scalars", {}))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": state.config.to_dict(),
        "mode": mode,
        "step": state.step,
        "syncs": state.syncs,
        "round": state.averager.round,
        "total_steps": state.total_steps,
        "elapsed_s": elapsed_s,
        "metrics": {"count": metrics_count, "sha256": metrics_sha256},
        "data": dict(data),
        "processes": processes,
        "worker_scalars": worker_scalars,
        "averager_scalars": averager_scalars,
        "tensor_sha256": _tensor_digest(tensors),
    }
    return Snapshot(tensors=tensors, meta=meta)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    Writes ``<path>.tmp`` in the same directory (same file system: ``os.replace`` is then
    atomic), fsyncs it, renames it over ``path``, and fsyncs the directory so the rename
    itself survives a power cut.
    """
    path = Path(path)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def remove_checkpoint(run_dir: str | os.PathLike[str]) -> None:
    """Delete a run directory's checkpoint and any temporary left by a crash (``--overwrite``)."""
    d = Path(run_dir)
    for name in (CHECKPOINT, CHECKPOINT + _TMP_SUFFIX):
        (d / name).unlink(missing_ok=True)


# ---- moving bytes between ranks ----------------------------------------------------------------


def broadcast_bytes(
    blob: bytes | None, *, status: int = 0, group: dist.ProcessGroup | None = None
) -> tuple[int, bytes]:
    """:func:`tenfold.distributed.transport.broadcast_bytes` of a checkpoint (rank 0's
    ``(status, blob)`` on every rank), an absurd announced size a :class:`CheckpointError`.

    Used on resume to hand every rank the checkpoint, and to agree on whether checkpoints
    are written at all.
    """
    from tenfold.distributed.transport import broadcast_bytes as broadcast

    try:
        return broadcast(
            blob, status=status, group=group, max_bytes=_MAX_BROADCAST_BYTES, what="the checkpoint"
        )
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


# ---- restoring a TrainState ----------------------------------------------------------------------


def check_resumable(ckpt: Checkpoint, config: TrainConfig, *, mode: str) -> None:
    """Refuse to resume ``ckpt`` into a run with another config or an incompatible mode.

    Raises:
        CheckpointError: naming the differing fields, or the modes.
    """
    saved = ckpt.config.to_dict()
    given = config.to_dict()
    differ = [k for k in saved if k not in RESUME_OVERRIDABLE and saved[k] != given.get(k)]
    if differ:
        pairs = ", ".join(f"{k}: saved {saved[k]!r}, given {given.get(k)!r}" for k in differ)
        raise CheckpointError(f"{ckpt.path}: the run to resume has another configuration ({pairs})")
    if _MODE_FAMILY.get(mode) != _MODE_FAMILY[ckpt.mode]:
        raise CheckpointError(
            f"{ckpt.path}: a {ckpt.mode} run cannot be resumed as a {mode} run"
            + (" (pass --simulate)" if ckpt.mode == "simulated" else " (drop --simulate)")
        )


def restore_state(state: TrainState, ckpt: Checkpoint) -> None:
    """Load a checkpoint into a freshly built :class:`TrainState` (this process's workers).

    Restores the shared weights and each worker's state (steps, data-order generator), the
    averager's round, step/syncs/elapsed time, and - for the process that held these
    workers - the global torch/numpy/Python RNGs. Metrics are restored by the caller (the
    run directory holds them).

    Raises:
        CheckpointError: the checkpoint does not hold these workers, or does not fit them.
    """
    total = state.total_steps
    if total != ckpt.total_steps:
        raise CheckpointError(
            f"{ckpt.path}: the run has {total} steps, the checkpoint's had {ckpt.total_steps} "
            "(another data set?)"
        )
    for w in state.workers:
        try:
            w.load_state_dict(ckpt.worker_state(w.rank))
        except (RuntimeError, KeyError, CheckpointError) as exc:  # e.g. another shape
            raise CheckpointError(f"{ckpt.path}: worker {w.rank} does not fit ({exc})") from None
        if w.step != ckpt.step:
            raise CheckpointError(
                f"{ckpt.path}: worker {w.rank} is at step {w.step}, the run at {ckpt.step}"
            )
    source = ckpt.process_of(state.workers[0].rank)
    scalars = ckpt.snapshot.meta["processes"][str(source)]
    restore_process_rng(ckpt.snapshot.tensors, scalars, source)
    state.step = ckpt.step
    state.syncs = ckpt.syncs
    averager_scalars = ckpt.snapshot.meta.get("averager_scalars", {})
    saved = _unflatten(f"averager/{source}", ckpt.snapshot.tensors, averager_scalars)
    if saved:
        try:
            state.averager.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{ckpt.path}: the averager's state does not fit ({exc})"
            ) from None
    state.averager.round = ckpt.round
    state.sync.num_steps = ckpt.step  # the step counter of LocalSGD's schedule
    state.elapsed_s = ckpt.elapsed_s


# ---- writing one after every sync --------------------------------------------------------------


class MetricsLog(Protocol):
    """What the checkpointer needs of the run directory (:class:`tenfold.train.rundir.RunDir`
    provides it): where to write, and how many metrics records are durable, with their hash."""

    @property
    def path(self) -> Path: ...

    def metrics_digest(self) -> tuple[int, str]: ...


class Checkpointer:
    """Writes the run's checkpoint after every synchronisation (call :meth:`save` everywhere).

    Every process calls :meth:`save` after each sync: with real ranks each contributes its
    part through a collective, then only the lead (which has ``run_dir``) writes the file.

    Args:
        run_dir: the lead's :class:`~tenfold.train.rundir.RunDir` (None on other ranks).
        mode: "spawn", "torchrun" or "simulated" (recorded; decides what may resume it).
        distributed: the workers are ranks of the default process group.
        data: the data set's fingerprint (lead only).
    """

    def __init__(
        self,
        run_dir: MetricsLog | None,
        *,
        mode: str,
        distributed: bool,
        data: Mapping[str, Any] | None,
    ) -> None:
        self.run_dir = run_dir
        self.mode = mode
        self.distributed = distributed
        self.data = dict(data or {})
        self.process = dist.get_rank() if distributed else 0

    def save(self, state: TrainState, *, elapsed_s: float) -> None:
        """Gather every process's part; the lead writes the checkpoint atomically."""
        part = process_snapshot(state.workers, self.process, state.averager)
        if self.distributed:
            from tenfold.distributed import all_gather_bytes

            got = all_gather_bytes(part.to_bytes())
            if self.run_dir is None:
                return
            parts = [
                Snapshot.from_bytes(bytes(p), what=f"rank {r}'s checkpoint part")
                for r, p in enumerate(got.payloads)
            ]
        else:
            parts = [part]
        if self.run_dir is None:
            return
        count, digest = self.run_dir.metrics_digest()
        snap = build_checkpoint(
            state,
            parts,
            mode=self.mode,
            elapsed_s=elapsed_s,
            metrics_count=count,
            metrics_sha256=digest,
            data=self.data,
        )
        write_atomic(self.run_dir.path / CHECKPOINT, snap.to_bytes())
