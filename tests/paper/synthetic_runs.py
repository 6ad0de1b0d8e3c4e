"""Synthetic run files in the sweep's format, for report tests that need chosen numbers.

A real sweep cannot be told to make a setting better than the baseline or a layer's entropy
disagree across sample rates; these builders write run documents that
:func:`paper.sweep.profile_runs` accepts as finished runs of a profile (same
key, configuration, data limits and entropy grid as :meth:`Profile.runs`), with accuracy
curves, bit rates and entropy estimates given by the test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from paper.profiles import RunSpec
from paper.sweep import RUN_FORMAT, write_json_atomic

#: The paper's 784-392-50-10 network: (name, number of values) of every tensor.
LAYERS: tuple[tuple[str, int], ...] = (
    ("fc1.weight", 784 * 392),
    ("fc1.bias", 392),
    ("fc2.weight", 392 * 50),
    ("fc2.bias", 50),
    ("fc3.weight", 50 * 10),
    ("fc3.bias", 10),
)
NUM_VALUES = sum(n for _, n in LAYERS)

#: H(layer, M, F, epoch index) -> entropy estimate (bits).
EntropyFn = Callable[[str, int, float, int], float]


def flat_entropy(layer: str, m: int, f: float, e: int) -> float:
    """The same estimate at every sample rate F: 90% of M, falling slowly over epochs."""
    return 0.9 * m - 0.01 * e


def _series(x: float | Sequence[float], n: int) -> list[float]:
    return [float(x)] * n if isinstance(x, int | float) else [float(v) for v in x]


def run_doc(
    spec: RunSpec,
    accuracy: Sequence[float],
    *,
    coded_bits: float | Sequence[float] = 32.0,
    quantized_bits: float | Sequence[float] | None = None,
    entropy: EntropyFn = flat_entropy,
    grad_rms: Callable[[int, int], float] | None = None,
) -> dict[str, Any]:
    """A finished run of ``spec`` with one record per entry of ``accuracy``.

    Args:
        accuracy: test accuracy (fraction) after each epoch.
        coded_bits: bits/param over every byte of every worker's packet, per epoch (or one
            value for all); ``bytes_all_ranks`` is derived from it.
        quantized_bits: mean N per epoch (default: ``coded_bits``).
        entropy: the entropy grid's value for (layer, M, F, epoch index).
        grad_rms: G of (layer index 0..2, epoch index); default: shrinking, larger higher up.
    """
    n = len(accuracy)
    coded = _series(coded_bits, n)
    quant = _series(coded_bits if quantized_bits is None else quantized_bits, n)
    cfg = spec.config.to_dict()
    world = int(cfg["workers"])
    grad = grad_rms or (lambda k, e: 0.003 * 3.0**k / (1.0 + 0.1 * e))
    weights = [(name, size) for name, size in LAYERS if name.endswith("weight")]
    epochs = []
    for e in range(n):
        layers = []
        for name, size in LAYERS:
            k = next((i for i, (w, _) in enumerate(weights) if w == name), None)
            layers.append(
                {
                    "name": name,
                    "num_values": size,
                    "N": 0 if k is None else int(round(quant[e])),
                    "H": None if k is None else 3.0,
                    "grad_rms": 0.0 if k is None else grad(k, e),
                    "bits_per_param": coded[e],
                    "mode": "quantized",
                    "nbytes": int(size * coded[e] / 8),
                }
            )
        epochs.append(
            {
                "epoch": float(e + 1),
                "sync": e + 1,
                "step": 100 * (e + 1),
                "lr": 0.05,
                "test_accuracy": float(accuracy[e]),
                "test_loss": 0.1,
                "train_loss": 0.1,
                "num_values": NUM_VALUES,
                "world_size": world,
                "bytes_all_ranks": int(round(coded[e] * NUM_VALUES * world / 8)),
                "quantized_bits_per_param": quant[e],
                "bits_per_param": coded[e],
                "layers": layers,
                "entropy": {
                    name: [[entropy(name, m, f, e) for f in spec.entropy_F] for m in spec.entropy_M]
                    for name, _ in weights
                },
                "train_s": 1.0,
                "elapsed_s": 1.0,
            }
        )
    return {
        "format": RUN_FORMAT,
        "key": spec.key,
        "profile": spec.profile,
        "setting": spec.setting.to_dict(),
        "seed": spec.seed,
        "config": cfg,
        "data": {
            "source": "synthetic",
            "train_limit": spec.train_limit,
            "test_limit": spec.test_limit,
            "train_images": 60_000,
            "test_images": 10_000,
        },
        "entropy_grid": {"F": list(spec.entropy_F), "M": list(spec.entropy_M)},
        "status": "ok",
        "error": None,
        "epochs": epochs,
        "wall_s": float(n),
        "finished": "2026-01-01T00:00:00+0000",
        "versions": {},
    }


def rising(n: int, top: float, *, peak_at: int | None = None, seed: int = 0) -> list[float]:
    """An accuracy curve rising to ``top`` at epoch ``peak_at`` (1-based; default the last),
    then falling 0.1 pp per epoch; ``seed`` adds a small fixed per-seed offset."""
    peak = n if peak_at is None else peak_at
    off = 0.001 * seed
    out = []
    for e in range(1, n + 1):
        if e <= peak:
            out.append(top - 0.2 * (peak - e) / peak + off)
        else:
            out.append(top - 0.001 * (e - peak) + off)
    return out


def write_runs(out: Path, docs: Sequence[dict[str, Any]]) -> None:
    """Write ``docs`` as ``<out>/runs/<key>.json``, as the sweep does."""
    for d in docs:
        write_json_atomic(out / "runs" / f"{d['key']}.json", d)
