"""The run directory a training run writes (on the lead process only).

config.json        the TrainConfig (``TrainConfig.from_dict(json.load(f))`` rebuilds it)
run.json           how it ran: mode, data source, versions, times, final figures
metrics.jsonl      one JSON record per synchronisation (see ``train_loop``), appended
                   and flushed as training goes
model.safetensors  the final averaged weights (float32, by parameter name)
accuracy.png       test accuracy vs epoch
bits.png           bits/param vs epoch: as sent (Huffman-coded) and N before coding
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenfold.train.config import TrainConfig
    from tenfold.train.loop import Record, TrainState

__all__ = ["RunDir", "plot_metrics", "read_metrics"]

CONFIG, RUN, METRICS, MODEL = "config.json", "run.json", "metrics.jsonl", "model.safetensors"
ACCURACY_PLOT, BITS_PLOT = "accuracy.png", "bits.png"


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

    def start(self, config: TrainConfig, *, mode: str, source: str) -> None:
        """Write config.json and run.json, and start an empty metrics.jsonl."""
        import torch

        from tenfold import __version__

        self.path.mkdir(parents=True, exist_ok=True)
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

    def append(self, record: Record) -> None:
        """Append one record to metrics.jsonl (flushed at once: readable while training)."""
        with (self.path / METRICS).open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def finish(self, state: TrainState) -> None:
        """Write model.safetensors, the plots, and the final figures into run.json."""
        from safetensors.torch import save_file

        tensors = {n: p.detach().cpu().contiguous() for n, p in state.workers[0].named_parameters()}
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
            mean_bits_per_param=_mean(r["bits_per_param"] for r in state.metrics),
        )
        _write_json(self.path / RUN, self._run)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl (or of that file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_metrics(metrics: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Draw accuracy.png and bits.png from ``metrics`` into ``out_dir``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    evaluated = [r for r in metrics if r.get("test_accuracy") is not None]
    paths = [out / ACCURACY_PLOT, out / BITS_PLOT]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [r["epoch"] for r in evaluated],
        [100 * r["test_accuracy"] for r in evaluated],
        marker="o",
        markersize=3,
    )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy after each sync")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in metrics]
    ax.plot(epochs, [r["quantized_bits_per_param"] for r in metrics], label="quantized (N)")
    ax.plot(epochs, [r["bits_per_param"] for r in metrics], label="as sent (Huffman-coded)")
    ax.set(xlabel="epoch", ylabel="bits / parameter", title="Bits per parameter per sync")
    top = max((r["quantized_bits_per_param"] for r in metrics), default=1.0)
    ax.set_ylim(0, 1.15 * top)  # headroom: the N curve is often flat at its maximum
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _mean(values: Any) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None
