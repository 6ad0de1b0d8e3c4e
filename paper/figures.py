"""The paper's Figures 1-5 and the init x L1 ablation, drawn from an :class:`Analysis`.

Every function draws one PNG (matplotlib, Agg backend: no display needed), names its paper
counterpart in the title, shows the spread over seeds (box plots, or mean +- std bands
with the individual seeds as dots) and returns the path, or None when the sweep holds no
run for it (e.g. a profile without Fig. 1 settings). :func:`draw_all` draws them all.

Example:
    >>> from paper.analysis import analyze
    >>> from paper.sweep import load_runs
    >>> paths = draw_all(analyze(load_runs("results")), "results/figures")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paper.analysis import (
    DEFAULT_F,
    DEFAULT_M,
    PAPER,
    Analysis,
    SettingStats,
    entropy_series,
    layer_correlations,
)

__all__ = [
    "FIGURES",
    "ceiling_floor",
    "draw_all",
    "fig1_fixed_bits",
    "fig2_grad_rms",
    "fig3_entropy",
    "fig3b_correlation",
    "fig4_floor_ceiling",
    "fig5_bits",
    "fig6_ablation",
    "fig7_init_entropy",
    "init_cells",
]

_LAYER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
_F_STYLES = ("-", "--", "-.", ":")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def ceiling_floor(policy: dict[str, Any]) -> tuple[int, int] | None:
    """``(ceiling, floor)`` in bits of a policy: EntropyAdaptive ``(M + c, c)``, Fixed
    ``(N, N)``; None for others. Fig. 4 labels settings ``"ceiling:floor"``.

    Example:
        >>> ceiling_floor({"id": "entropy", "F": 0.03, "M": 4, "c": 6})
        (10, 6)
    """
    if policy.get("id") == "entropy":
        return int(policy["M"] + policy["c"]), int(policy["c"])
    if policy.get("id") == "fixed":
        return int(policy["bits"]), int(policy["bits"])
    return None


def _pct(values: Sequence[float]) -> list[float]:
    return [100.0 * v for v in values]


def _box_with_points(
    ax: Any, data: list[list[float]], labels: list[str], *, color: str = "tab:blue"
) -> None:
    """Box plot (median line, IQR box) + mean marker + every seed as a dot."""
    pos = np.arange(1, len(data) + 1)
    ax.boxplot(
        data,
        positions=pos,
        widths=0.6,
        showmeans=True,
        meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"},
        medianprops={"color": "red"},
        flierprops={"marker": ""},
    )
    rng = np.random.default_rng(0)  # jitter only: fixed so figures are reproducible
    for p, vals in zip(pos, data, strict=True):
        ax.scatter(
            p + rng.uniform(-0.12, 0.12, len(vals)), vals, s=10, color=color, alpha=0.6, zorder=3
        )
    ax.set_xticks(pos)
    ax.set_xticklabels(labels)


def fig1_fixed_bits(a: Analysis, path: Path) -> Path | None:
    """Peak test accuracy vs fixed N (box over seeds), baseline leftmost (paper Fig. 1).

    Two panels: every N, and the same zoomed on the accuracy range of N >= 6, where the
    differences the paper discusses (8 bits recovers the baseline) are visible.
    """
    fixed = sorted(
        (s for s in a.group("fig1") if s.policy.get("id") == "fixed"),
        key=lambda s: s.policy["bits"],
    )
    if not fixed:
        return None
    base = a.get(a.baseline) if a.baseline else None
    rows: list[SettingStats] = ([base] if base else []) + fixed
    data = [_pct([r.peak_accuracy for r in s.runs]) for s in rows]
    labels = ["base" if s is base else str(s.policy["bits"]) for s in rows]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, zoom in zip(axes, (False, True), strict=True):
        _box_with_points(ax, data, labels)
        if base is not None:
            m, sd = (
                100 * base.accuracy.mean,
                100 * (base.accuracy.std if base.accuracy.n > 1 else 0),
            )
            ax.axhline(m, color="gray", ls="--", lw=1, label=f"baseline mean {m:.2f}%")
            ax.axhspan(m - sd, m + sd, color="gray", alpha=0.15, label="baseline ± std")
        ax.set_xlabel("fixed quantization bits N (base = unquantized float32)")
        ax.set_ylabel("peak test accuracy (%)")
        ax.grid(alpha=0.3)
        if zoom:
            hi_vals = [
                v
                for s, d in zip(rows, data, strict=True)
                for v in d
                if s is base or s.policy["bits"] >= 6
            ]
            if hi_vals:
                span = max(hi_vals) - min(hi_vals)
                ax.set_ylim(min(hi_vals) - 0.2 * span - 0.05, max(hi_vals) + 0.2 * span + 0.05)
            ax.set_title("zoom on N >= 6")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.set_title("all N")
    n = max((s.accuracy.n for s in rows), default=0)
    fig.suptitle(
        "Fig. 1 (paper Fig. 1): accuracy vs fixed quantization level; "
        f"boxes: median (red), mean (diamond), IQR; dots: {n} seeds"
    )
    fig.tight_layout()
    return _save(fig, path)


def fig2_grad_rms(a: Analysis, path: Path) -> Path | None:
    """RMS of the loss gradient per weight matrix vs epoch, baseline runs (paper Fig. 2)."""
    base = a.get(a.baseline) if a.baseline else None
    if base is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layers = list(base.runs[0].layers)
    for i, layer in enumerate(layers):
        series = [r.layers[layer]["grad_rms"] for r in base.runs]
        n = min(len(s) for s in series)
        arr = np.array([s[:n] for s in series], dtype=float)
        ep = np.asarray(base.runs[0].epochs[:n])
        mean = arr.mean(axis=0)
        sd = arr.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(n)
        c = _LAYER_COLORS[i % len(_LAYER_COLORS)]
        ax.plot(ep, mean, color=c, marker="o", ms=3, label=f"layer {i + 1} ({layer})")
        ax.fill_between(ep, mean - sd, mean + sd, color=c, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMS of dLoss/dW over the epoch (log scale)")
    ax.set_title(
        f"Fig. 2 (paper Fig. 2): RMS loss gradient per layer, baseline, mean ± std of {base.accuracy.n} seeds",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _entropy_mean(
    docs: Sequence[dict[str, Any]], layer: str, F: float, M: int
) -> tuple[np.ndarray, np.ndarray]:
    series = [entropy_series(d, layer, F, M) for d in docs]
    n = min(len(s) for s in series)
    epochs = np.array([r["epoch"] for r in docs[0]["epochs"][:n]], dtype=float)
    return epochs, np.array([s[:n] for s in series]).mean(axis=0)


def fig3_entropy(a: Analysis, path: Path, setting: str | None = None) -> Path | None:
    """Entropy estimate per layer vs epoch, one panel per M, a line per F (paper Fig. 3).

    Computed from the averaged weights after every synchronisation of ``setting``'s runs
    (default: the baseline), mean over seeds.
    """
    name = setting or a.baseline
    docs = a.docs.get(name or "", [])
    if not docs:
        return None
    grid = docs[0]["entropy_grid"]
    ms, fs = list(grid["M"]), [float(f) for f in grid["F"]]
    layers = list(docs[0]["epochs"][0]["entropy"])
    plt = _plt()
    cols = 2 if len(ms) > 1 else 1
    rows = math.ceil(len(ms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.8 * rows), squeeze=False)
    for k, m in enumerate(ms):
        ax = axes[k // cols][k % cols]
        for i, layer in enumerate(layers):
            for j, f in enumerate(fs):
                ep, h = _entropy_mean(docs, layer, f, m)
                ax.plot(
                    ep,
                    h,
                    color=_LAYER_COLORS[i % len(_LAYER_COLORS)],
                    ls=_F_STYLES[j % len(_F_STYLES)],
                    label=f"layer {i + 1}, F={f:g}",
                )
        ax.set_title(f"M = {m} bits ({2**m} bins)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("entropy H (bits)")
        ax.set_ylim(0, m + 0.2)
        ax.grid(alpha=0.3)
    for k in range(len(ms), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Fig. 3 (paper Fig. 3): sampled entropy of the averaged weights, {name} runs "
        f"(mean of {len(docs)} seeds); colour = layer, line style = sample rate F"
    )
    fig.tight_layout()
    return _save(fig, path)


def fig3b_correlation(a: Analysis, path: Path) -> Path | None:
    """Correlation of log2(G + 1) with H(F=0.03, M=4) per layer (paper §3.4's claim).

    Left: Pearson r over the epochs of each run; right: the uncentred normalised
    correlation (another reading of the paper's "normalized correlation"). Bars are means
    over seeds, dots the individual runs.
    """
    sets = [
        (name, a.docs.get(key or "", []))
        for name, key in (("baseline", a.baseline), ("c=6, M=4", "entropy-c6-M4"))
    ]
    sets = [(n, d) for n, d in sets if d]
    if not sets:
        return None
    layers = list(layer_correlations(sets[0][1][0]))
    if not layers:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(sets)
    for ax, kind, title in (
        (axes[0], "pearson", "Pearson r (centred)"),
        (axes[1], "cosine", "uncentred: sum(xy) / sqrt(sum x² sum y²)"),
    ):
        for k, (name, docs) in enumerate(sets):
            per_run = [layer_correlations(d, kind=kind) for d in docs]
            x = np.arange(len(layers)) + (k - (len(sets) - 1) / 2) * width
            vals = [[r[layer] for r in per_run if layer in r] for layer in layers]
            # a run whose H or G is constant has r = NaN: average the defined ones only
            means = [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in vals]
            ax.bar(x, means, width, alpha=0.7, label=f"{name} runs (mean)")
            for xi, v in zip(x, vals, strict=True):
                ax.scatter([xi] * len(v), v, s=12, color="black", zorder=3)
        ax.axhline(0.75, color="red", ls="--", lw=1, label="paper: > 0.75 always")
        ax.axhline(0.95, color="red", ls=":", lw=1, label="paper: often > 0.95")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels([f"layer {i + 1}\n({n})" for i, n in enumerate(layers)])
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("correlation over the epochs of a run")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"Fig. 3b (paper §3.4): correlation of log2(G + 1) with H (F={DEFAULT_F}, "
        f"M={DEFAULT_M}) per layer; dots = runs"
    )
    fig.tight_layout()
    return _save(fig, path)


def _fig4_rows(a: Analysis, group: str) -> list[SettingStats]:
    rows = [s for s in a.group(group) if ceiling_floor(s.policy) is not None]
    rows.sort(key=lambda s: (ceiling_floor(s.policy) or (0, 0))[1])
    base = a.get(a.baseline) if a.baseline else None
    return ([base] if base else []) + rows


def _cf_label(s: SettingStats) -> str:
    cf = ceiling_floor(s.policy)
    return s.label if cf is None else f"{cf[0]}:{cf[1]}"


def _median_mean_panel(
    ax: Any,
    rows: list[SettingStats],
    get: Callable[[Any], float],
    ylabel: str,
    base: SettingStats | None,
) -> None:
    x = np.arange(len(rows))
    vals = [[get(r) for r in s.runs] for s in rows]
    means = [float(np.mean(v)) for v in vals]
    medians = [float(np.median(v)) for v in vals]
    sds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
    ax.errorbar(x, means, yerr=sds, color="tab:blue", marker="", capsize=3, label="mean ± std")
    ax.plot(x, medians, "o", color="tab:red", label="median")
    rng = np.random.default_rng(0)
    for xi, v in zip(x, vals, strict=True):
        ax.scatter(xi + rng.uniform(-0.1, 0.1, len(v)), v, s=8, color="gray", alpha=0.5, zorder=3)
    if base is not None:
        ax.axhline(means[0], color="gray", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(["base" if s is base else _cf_label(s) for s in rows], rotation=0)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def fig4_floor_ceiling(a: Analysis, path: Path) -> Path | None:
    """Accuracy (top) and convergence epoch (bottom) by ceiling:floor (paper Fig. 4a-d).

    Left: ceiling c + M = 10, floor c = 2..10 ("10:10" = Fixed(10)). Right: M = 4 (ceiling
    c + 4), floor c = 2..8. Baseline leftmost; dots are medians, the line the mean +- std,
    grey dots the seeds.
    """
    left, right = _fig4_rows(a, "fig4a"), _fig4_rows(a, "fig4b")
    base = a.get(a.baseline) if a.baseline else None
    if len(left) <= (base is not None) and len(right) <= (base is not None):
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    panels = [
        (left, "(a) accuracy, ceiling c + M = 10", "(c) convergence, ceiling c + M = 10"),
        (right, "(b) accuracy, M = 4", "(d) convergence, M = 4"),
    ]
    for col, (rows, t_acc, t_conv) in enumerate(panels):
        if len(rows) <= (base is not None):
            axes[0][col].axis("off")
            axes[1][col].axis("off")
            continue
        _median_mean_panel(
            axes[0][col], rows, lambda r: 100 * r.peak_accuracy, "peak test accuracy (%)", base
        )
        axes[0][col].set_title(t_acc)
        _median_mean_panel(
            axes[1][col], rows, lambda r: r.convergence_epoch, "epoch of peak accuracy", base
        )
        axes[1][col].set_title(t_conv)
        axes[1][col].set_xlabel("ceiling:floor (bits)")
    axes[0][0].legend(fontsize=8)
    epochs = max((r.epochs[-1] for s in a.settings.values() for r in s.runs), default=0)
    fig.suptitle(
        "Fig. 4 (paper Fig. 4): EntropyAdaptive by ceiling:floor = (M + c):c; "
        f"convergence = epoch of peak accuracy (runs last {epochs:g} epochs)"
    )
    fig.tight_layout()
    return _save(fig, path)


def fig5_bits(a: Analysis, path: Path) -> Path | None:
    """Bits/param per epoch, quantized (N) and Huffman-coded, for c=5/6, M=4 (paper Fig. 5)."""
    rows = [s for s in (a.get("entropy-c5-M4"), a.get("entropy-c6-M4")) if s is not None]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 4.5), squeeze=False)
    for ax, s in zip(axes[0], rows, strict=True):
        for attr, color, name in (
            ("quantized_bits", "tab:blue", "quantized (N, mean over values)"),
            ("coded_bits", "tab:green", "Huffman-coded (all bytes sent)"),
        ):
            ep, mean, sd = s.curve(attr)
            ax.plot(
                ep, mean, color=color, marker="o", ms=3, label=f"{name}: mean {np.mean(mean):.2f}"
            )
            ax.fill_between(ep, mean - sd, mean + sd, color=color, alpha=0.2)
        paper = PAPER.get(s.name, {})
        if "quantized" in paper:
            ax.axhline(
                paper["quantized"],
                color="tab:blue",
                ls=":",
                label=f"paper mean quantized {paper['quantized']}",
            )
        if "coded" in paper:
            ax.axhline(
                paper["coded"],
                color="tab:green",
                ls=":",
                label=f"paper mean coded {paper['coded']}",
            )
        c, m = s.policy["c"], s.policy["M"]
        ax.set_title(f"c = {c}, M = {m} ({s.accuracy.n} seeds, mean ± std)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("bits / parameter")
        ax.set_ylim(0, max(11.0, float(np.nanmax(s.curve("quantized_bits")[1])) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Fig. 5 (paper Fig. 5): bit rate per epoch, quantized and Huffman-coded")
    fig.tight_layout()
    return _save(fig, path)


def fig6_ablation(a: Analysis, path: Path) -> Path | None:
    """The init x L1 grid at c=6, M=4: coded bits, accuracy, and layer-1 entropy vs epoch.

    Not in the paper: it measures the issue's question, how the bits a layer needs follow
    the entropy of its weight distribution, which initialisation and L1 set.
    """
    cells = [s for s in a.group("ablation")]
    # a lossless cell marks the long profile's initialisation study, not this grid of
    # EntropyAdaptive cells (fig7_init_entropy draws that one)
    if len(cells) < 2 or any(s.policy.get("id") == "lossless" for s in cells):
        return None
    inits = sorted({s.runs[0].init for s in cells})
    l1s = sorted({s.runs[0].l1 for s in cells})
    bits = np.full((len(inits), len(l1s)), np.nan)
    acc = np.full((len(inits), len(l1s)), np.nan)
    for s in cells:
        i, j = inits.index(s.runs[0].init), l1s.index(s.runs[0].l1)
        bits[i, j] = s.coded_bits.mean
        acc[i, j] = 100 * s.accuracy.mean
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, mat, title, fmt, cmap in (
        (axes[0], bits, "mean coded bits / param", "{:.2f}", "viridis"),
        (axes[1], acc, "peak test accuracy (%)", "{:.2f}", "magma"),
    ):
        im = ax.imshow(mat, cmap=cmap, aspect="auto")
        for i in range(len(inits)):
            for j in range(len(l1s)):
                if not np.isnan(mat[i, j]):
                    ax.text(
                        j,
                        i,
                        fmt.format(mat[i, j]),
                        ha="center",
                        va="center",
                        color="white",
                        fontsize=10,
                        bbox={"facecolor": "black", "alpha": 0.4, "lw": 0},
                    )
        ax.set_xticks(range(len(l1s)))
        ax.set_xticklabels([f"{v:g}" for v in l1s])
        ax.set_yticks(range(len(inits)))
        ax.set_yticklabels(inits)
        ax.set_xlabel("L1 strength")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = axes[2]
    layer = None
    for s in sorted(cells, key=lambda s: (s.runs[0].init, s.runs[0].l1)):
        docs = a.docs[s.name]
        layer = layer or next(iter(docs[0]["epochs"][0]["entropy"]))
        ep, h = _entropy_mean(docs, layer, DEFAULT_F, DEFAULT_M)
        init, l1 = s.runs[0].init, s.runs[0].l1
        ax.plot(
            ep,
            h,
            color=_LAYER_COLORS[inits.index(init) % 4],
            ls=_F_STYLES[l1s.index(l1) % 4],
            label=f"{init}, L1={l1:g}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"H of {layer} (bits, F={DEFAULT_F}, M={DEFAULT_M})")
    ax.set_ylim(0, DEFAULT_M + 0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("layer-1 weight entropy: colour = init, style = L1")
    fig.suptitle(
        "Ablation (not in the paper): initialisation x L1 at c = 6, M = 4 "
        "- the weights' entropy sets the bits"
    )
    fig.tight_layout()
    return _save(fig, path)


#: The initialisation of the long profile's second block (profiles.LONG_OLD_INIT).
_OLD_INIT = "normal-0.01"
#: The paper's range of coded bits/param (c=5 and c=6 at M=4, §5.1-5.2).
_PAPER_BITS = (PAPER["entropy-c5-M4"]["coded"], PAPER["entropy-c6-M4"]["coded"])


def init_cells(a: Analysis, init: str = _OLD_INIT) -> list[SettingStats]:
    """The settings whose runs use ``init``: lossless first, then by policy and L1."""
    cells = [s for s in a.settings.values() if s.runs and s.runs[0].init == init]
    return sorted(
        cells,
        key=lambda s: (s.policy.get("id") != "lossless", str(s.policy.get("id")), s.runs[0].l1),
    )


def fig7_init_entropy(a: Analysis, path: Path) -> Path | None:
    """The normal-0.01 initialisation over a long run: H per layer vs epoch and coded
    bits/param vs epoch, beside the glorot-uniform EntropyAdaptive(c=6, M=4) runs.

    Not a figure of the paper: it asks whether the paper's 3.55-3.78 bits/param appear
    when the weights start from the small normal initialisation of its time.
    """
    cells = init_cells(a)
    if not cells:
        return None
    ref = a.get("entropy-c6-M4")
    shown = cells + ([ref] if ref is not None else [])
    layers = list(a.docs[shown[0].name][0]["epochs"][0]["entropy"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.6 * (len(layers) + 1), 4.2))
    styles = ("-", "--", "-.", ":", (0, (1, 1)), (0, (5, 1)))
    for i, layer in enumerate(layers):
        ax = axes[i]
        for k, s in enumerate(shown):
            ep, h = _entropy_mean(a.docs[s.name], layer, DEFAULT_F, DEFAULT_M)
            ax.plot(ep, h, ls=styles[k % len(styles)], label=f"{s.label} ({len(s.runs)} seeds)")
        ax.set_title(f"{layer}: H(F={DEFAULT_F}, M={DEFAULT_M})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("entropy H (bits)")
        ax.set_ylim(0, DEFAULT_M + 0.2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for k, s in enumerate(s for s in shown if s.policy.get("id") != "lossless"):
        ep, mean, sd = s.curve("coded_bits")
        ax.plot(ep, mean, ls=styles[k % len(styles)], label=s.label)
        ax.fill_between(ep, mean - sd, mean + sd, alpha=0.2)
    ax.axhspan(*_PAPER_BITS, color="tab:green", alpha=0.25, label="paper 3.55-3.78 (mean)")
    ax.set_title("coded bits / param per epoch", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits / parameter")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"Initialisation {_OLD_INIT} (not in the paper's figures): weight entropy and bit rate "
        "over training, mean of the seeds"
    )
    fig.tight_layout()
    return _save(fig, path)


#: file name -> drawing function, in report order.
FIGURES: dict[str, Callable[[Analysis, Path], Path | None]] = {
    "fig1_fixed_bits.png": fig1_fixed_bits,
    "fig2_grad_rms.png": fig2_grad_rms,
    "fig3_entropy.png": fig3_entropy,
    "fig3b_correlation.png": fig3b_correlation,
    "fig4_floor_ceiling.png": fig4_floor_ceiling,
    "fig5_bits.png": fig5_bits,
    "fig6_ablation.png": fig6_ablation,
}
# fig7_init_entropy is drawn by the report for the long profile's runs only (the other
# profiles have no normal-0.01 runs), so it is not in FIGURES, which every profile draws.


def draw_all(a: Analysis, out_dir: str | Path) -> dict[str, Path]:
    """Draw every figure the analysis has data for into ``out_dir``; name -> path."""
    out = Path(out_dir)
    drawn = {}
    for name, draw in FIGURES.items():
        p = draw(a, out / name)
        if p is not None:
            drawn[name] = p
    return drawn
