"""The run directory a training run writes (on the lead process only).

config.json        the TrainConfig (``TrainConfig.from_dict(json.load(f))`` rebuilds it)
run.json           how it ran: mode, data source, versions, times, final figures
metrics.jsonl      one JSON record per synchronisation (see ``train_loop``), appended
                   and flushed as training goes
model.safetensors  the final averaged weights (float32, by parameter name)
checkpoint.safetensors
                   the latest checkpoint, rewritten atomically after every
                   synchronisation (see :mod:`tenfold.train.checkpoint`); ``tenfold train
                   --resume DIR`` continues the run from it
accuracy.png       test accuracy after each synchronisation (char-gpt: val_loss.png,
                   the validation loss)
bits.png           bits/param as sent per synchronisation, labelled by the coder the
                   packets used; and N before coding for the policies that choose N
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.train.config import TrainConfig
    from tenfold.train.state import Record, TrainState

__all__ = ["RunDir", "bits_series", "plot_metrics", "read_metrics", "x_axis"]

CONFIG, RUN, METRICS, MODEL = "config.json", "run.json", "metrics.jsonl", "model.safetensors"
ACCURACY_PLOT, BITS_PLOT = "accuracy.png", "bits.png"
VAL_LOSS_PLOT = "val_loss.png"  # char-gpt: no accuracy to plot


class RunDir:
    """Writes one run's files into ``path`` (created if needed).

    Example:
        >>> rd = RunDir("runs/demo")  # doctest: +SKIP
        >>> rd.start(cfg, mode="spawn", source="/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._run: dict[str, Any] = {}
        self._t0 = time.time()
        # Running SHA-256 and count of metrics.jsonl's lines: a checkpoint records both.
        self._metrics_hash = hashlib.sha256()
        self._metrics_count = 0

    def start(self, config: TrainConfig, *, mode: str, source: str) -> None:
        """Write config.json and run.json, start an empty metrics.jsonl, drop old checkpoints."""
        import torch

        from tenfold import __version__
        from tenfold.train.checkpoint import remove_checkpoint

        self.path.mkdir(parents=True, exist_ok=True)
        # A checkpoint of an earlier run here (--overwrite) must not be resumable into this one.
        remove_checkpoint(self.path)
        _write_json(self.path / CONFIG, config.to_dict())
        self._t0 = time.time()
        self._run = {
            "mode": mode,
            "data_source": source,
            "tenfold_version": __version__,
            "torch_version": torch.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._t0)),
            "finished": None,
        }
        _write_json(self.path / RUN, self._run)
        (self.path / METRICS).write_text("")
        self._metrics_hash = hashlib.sha256()
        self._metrics_count = 0

    def resume(
        self, config: TrainConfig, *, count: int, sha256: str, from_sync: int
    ) -> list[Record]:
        """Take over a run directory to continue it from a checkpoint; return its records.

        metrics.jsonl must begin with the ``count`` records the checkpoint covers (checked
        against their SHA-256); any later or partial line - written after that checkpoint,
        before the run died - is dropped. config.json is rewritten (a resumed run may change
        its timeout or data path), run.json notes the resumption.

        Raises:
            CheckpointError: metrics.jsonl is missing records or does not match.
        """
        from tenfold.train.checkpoint import CheckpointError, write_atomic

        path = self.path / METRICS
        raw = path.read_bytes() if path.is_file() else b""
        lines = raw.split(b"\n")[:-1]  # complete lines only: a crash may cut the last one
        if len(lines) < count:
            raise CheckpointError(
                f"{path}: {len(lines)} complete records, the checkpoint covers {count} "
                "(the file was truncated or replaced)"
            )
        kept = b"".join(line + b"\n" for line in lines[:count])
        digest = hashlib.sha256(kept)
        if digest.hexdigest() != sha256:
            raise CheckpointError(
                f"{path}: its first {count} records do not match the checkpoint's SHA-256 "
                "(the file was edited or belongs to another run)"
            )
        records = [json.loads(line) for line in lines[:count]]
        write_atomic(path, kept)
        self._metrics_hash, self._metrics_count = digest, count
        _write_json(self.path / CONFIG, config.to_dict())
        try:
            self._run = json.loads((self.path / RUN).read_text())
        except (OSError, ValueError):
            self._run = {}
        resumed = time.time()
        self._run.setdefault("resumed", []).append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(resumed)),
                "from_sync": from_sync,
            }
        )
        self._run["finished"] = None
        self._t0 = resumed  # run.json's wall_seconds: of this (the last) process
        _write_json(self.path / RUN, self._run)
        return records

    def append(self, record: Record) -> None:
        """Append one record to metrics.jsonl, flushed and fsynced.

        Readable while training; and durable before the checkpoint that counts it is written.
        """
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        with (self.path / METRICS).open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._metrics_hash.update(line)
        self._metrics_count += 1

    def metrics_digest(self) -> tuple[int, str]:
        """``(records written, SHA-256 of metrics.jsonl so far)``, for the checkpoint."""
        return self._metrics_count, self._metrics_hash.hexdigest()

    def finish(self, state: TrainState) -> None:
        """Write model.safetensors, the plots, and the final figures into run.json."""
        from safetensors.torch import save_file

        # parameters and buffers (BatchNorm statistics); named_* skip the tied duplicates
        # (char-gpt's LM head is its token embedding) that safetensors refuses
        model = state.workers[0].model
        named = [*model.named_parameters(), *model.named_buffers()]
        tensors = {n: t.detach().cpu().contiguous() for n, t in named}
        save_file(
            tensors, str(self.path / MODEL), metadata={"config": json.dumps(state.config.to_dict())}
        )
        plot_metrics(state.metrics, self.path)
        evaluated = [r for r in state.metrics if r["test_accuracy"] is not None]
        self._run.update(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wall_seconds=time.time() - self._t0,
            syncs=state.syncs,
            final_test_accuracy=evaluated[-1]["test_accuracy"] if evaluated else None,
            best_test_accuracy=max((r["test_accuracy"] for r in evaluated), default=None),
            **_val_summary(state.metrics),
            mean_bits_per_param=_mean(r["bits_per_param"] for r in state.metrics),
        )
        _write_json(self.path / RUN, self._run)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl (or of that file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def x_axis(metrics: Sequence[dict[str, Any]]) -> tuple[str, list[float]]:
    """The plots' x axis: ``(label, values)``.

    Epochs when every sync ends an epoch (the paper's schedule), else the synchronisation
    number: a short run syncing every k steps covers a sliver of an epoch, and "epoch
    0.0143" says less than "sync 3 (every 50 steps)".
    """
    if all(float(r["epoch"]).is_integer() for r in metrics):
        return "epoch", [r["epoch"] for r in metrics]
    every = metrics[0]["step"] if metrics else 0
    steps = "local step" if every == 1 else f"{every} local steps"
    return f"synchronisation (every {steps})", [r["sync"] for r in metrics]


#: metrics "mode" of a tensor -> how the legend names its coder
_CODER_NAMES = {
    "ans": "ANS",
    "ans-pairs": "ANS",  # two values per coder step
    "ans-quads": "ANS",  # four values per coder step
    "group": "ANS",  # small tensors coded together in one ANS stream
    "huffman": "Huffman",
    "bitpack": "bit-packed",
    "raw": "raw",
}


def bits_series(metrics: Sequence[dict[str, Any]]) -> list[tuple[str, list[float]]]:
    """bits.png's curves: ``[(legend label, bits/param per sync), ...]``.

    "as sent" is labelled by the coders the packets actually used (e.g. "ANS", or "ANS +
    raw" when some tensors went raw). The "quantized (N)" curve is drawn only for the
    policies that choose N bits per tensor (entropy, fixed, gradient-rms): a step policy
    (target-rate, relative-step) chooses a step, its N is only the span of the levels.
    """
    modes: list[str] = []
    for r in metrics:
        for t in r.get("layers", []):
            mode = t.get("mode")
            if mode in _CODER_NAMES and mode not in modes:
                modes.append(mode)
    ordered = [m for m in _CODER_NAMES if m in modes]
    coder = " + ".join(dict.fromkeys(_CODER_NAMES[m] for m in ordered))
    sent = "as sent (uncoded float32)" if ordered == ["raw"] else f"as sent ({coder}-coded)"
    if not ordered:  # nothing coded (every tensor constant, or no records)
        sent = "as sent"
    series = [(sent, [r["bits_per_param"] for r in metrics])]
    step_policy = any(t.get("step") is not None for r in metrics for t in r.get("layers", []))
    if not step_policy and ordered != ["raw"]:
        series.insert(0, ("quantized (N)", [r["quantized_bits_per_param"] for r in metrics]))
    return series


def plot_metrics(metrics: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Draw accuracy.png (val_loss.png for a language model) and bits.png from ``metrics``
    into ``out_dir``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    text = any("val_loss" in r for r in metrics)
    key = "val_loss" if text else "test_accuracy"
    evaluated = [r for r in metrics if r.get(key) is not None]
    paths = [out / (VAL_LOSS_PLOT if text else ACCURACY_PLOT), out / BITS_PLOT]
    xlabel, _ = x_axis(metrics)
    x_key = "epoch" if xlabel == "epoch" else "sync"
    # a short run has a few points: mark every one (a lone point is invisible as a line)
    marker: dict[str, Any] = {"marker": "o", "markersize": 3 if len(metrics) > 30 else 5}

    def finish(ax: Any, xs: Sequence[float]) -> None:
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if xs:  # at least one unit of width, so a single point sits mid-axis
            lo, hi = min(xs), max(xs)
            pad = max(0.5, 0.05 * (hi - lo))
            ax.set_xlim(lo - pad, hi + pad)
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r[x_key] for r in evaluated]
    ax.plot(xs, [r[key] if text else 100 * r[key] for r in evaluated], **marker)
    if text:
        ax.set(ylabel="validation loss (nats/char)", title="Validation loss after each sync")
    else:
        ax.set(ylabel="test accuracy (%)", title="Test accuracy after each sync")
    finish(ax, xs)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    _, xs = x_axis(metrics)
    series = bits_series(metrics)
    for label, values in series:
        ax.plot(xs, values, label=label, **marker)
    ax.set(ylabel="bits / parameter", title="Bits per parameter per sync")
    top = max((v for _, values in series for v in values), default=1.0)
    ax.set_ylim(0, 1.15 * top or 1.0)  # headroom: the N curve is often flat at its top
    finish(ax, xs)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def _val_summary(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """run.json's figures of a language model (nothing for classifiers)."""
    vals = [r["val_loss"] for r in metrics if r.get("val_loss") is not None]
    if not vals:
        return {}
    return {"final_val_loss": vals[-1], "best_val_loss": min(vals)}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _mean(values: Any) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None
