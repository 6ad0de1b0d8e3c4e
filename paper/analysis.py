"""From run files to the paper's quantities: accuracy, convergence, bits, correlations.

Definitions (paper §3-5, docs/DESIGN.md erratum 9):

* **accuracy** of a run: its peak test accuracy over epochs, i.e. the accuracy at its
  convergence epoch (the paper's Figs. 1 and 4); the last epoch's accuracy is kept too.
* **convergence epoch**: the (first) epoch at which test accuracy peaks. When a run peaks
  at its last epoch, training had not converged within the epoch budget: the value is
  right-censored, and :attr:`RunStats.peaked_at_end` says so.
* **epochs to target**: the first epoch at which a run reaches a target accuracy (99% of
  the baseline's mean peak), a convergence speed that does not need a peak.
* **bits/param, coded**: every byte of every rank's packet, ``8 * bytes_all_ranks /
  (K * values)``, averaged over all synchronisations. **quantized**: N averaged over
  values (rank 0's packet), averaged over synchronisations. **ratio** = 32 / coded.
* **effective reduction** = ratio x (baseline convergence epochs / ours) (paper §5.2).
* Uncertainty over seeds: mean, sample standard deviation, median, and the 95% Student-t
  confidence interval of the mean. A setting is "better"/"worse" than the baseline only
  when the 95% CI of the per-seed (paired) accuracy difference excludes 0; otherwise
  "within noise".

Example:
    >>> convergence_epoch([1, 2, 3, 4], [0.5, 0.8, 0.8, 0.7])
    2
    >>> round(pearson([1, 2, 3], [2, 4, 7]), 4)
    0.9934
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "PAPER",
    "Analysis",
    "Comparison",
    "RunStats",
    "SettingStats",
    "Summary",
    "analyze",
    "compare_paired",
    "convergence_epoch",
    "cosine",
    "epochs_to_target",
    "layer_correlations",
    "pearson",
    "run_stats",
    "summarize",
    "t_quantile",
]

#: The paper's headline numbers (§5.1-5.2), by our setting name.
PAPER: dict[str, dict[str, Any]] = {
    "baseline": {"coded": 32.0, "ratio": 1.0, "accuracy": "baseline"},
    "entropy-c5-M4": {
        "quantized": 6.8,
        "quantized_ratio": 4.70,
        "coded": 3.55,
        "ratio": 9.01,
        "accuracy": "marginally below baseline",
    },
    "entropy-c6-M4": {
        "coded": 3.78,
        "ratio": 8.47,
        "accuracy": "above baseline",
        "convergence": "20% fewer epochs than baseline",
        "convergence_fewer": 0.20,
        "effective": 10.32,
    },
}

#: (F, M) of the entropy estimate the correlation with log2(G + 1) uses by default: the
#: paper's recommended setting.
DEFAULT_F, DEFAULT_M = 0.03, 4


# ---- statistics ------------------------------------------------------------------------------


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``).

    Example:
        >>> round(t_quantile(0.975, 2), 3), round(t_quantile(0.975, 9), 3)
        (4.303, 2.262)
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class Summary:
    """Statistics of one quantity over seeds (NaN where undefined, e.g. std of one value).

    Attributes:
        n: number of values.
        mean, std (sample, ddof=1), median, min, max.
        ci_low, ci_high: 95% Student-t confidence interval of the mean.
    """

    n: int
    mean: float
    std: float
    median: float
    min: float
    max: float
    ci_low: float
    ci_high: float

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        """``"mean ± std"`` (``"mean"`` alone for one value, ``"-"`` for none)."""
        if self.n == 0:
            return "-"
        if self.n == 1 or math.isnan(self.std):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def summarize(values: Iterable[float | None]) -> Summary:
    """:class:`Summary` of the finite values (None and NaN are dropped).

    Example:
        >>> s = summarize([1.0, 2.0, 3.0])
        >>> s.mean, s.std, s.median, round(s.ci_high, 3)
        (2.0, 1.0, 2.0, 4.484)
    """
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan, nan)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    if n > 1:
        half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        lo = hi = float("nan")
    return Summary(n, mean, std, float(np.median(x)), float(x.min()), float(x.max()), lo, hi)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of two equal-length series (NaN if either is constant or n < 2).

    ``scipy.stats.pearsonr`` does the arithmetic; the guard keeps this module's convention
    of NaN for an undefined r, where scipy would warn (constant input) or raise (n < 2).
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pearson: lengths differ ({a.size} vs {b.size})")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        # a series that barely moves (H over a short run) is a legitimate input: its r is
        # what the report tabulates, next to how far H moved, so scipy's warning is noise
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return float(stats.pearsonr(a, b).statistic)


def cosine(x: ArrayLike, y: ArrayLike) -> float:
    """Uncentred normalised correlation ``sum(x y) / sqrt(sum x^2 sum y^2)`` (NaN if a norm is 0).

    One reading of the paper's "normalized correlation" (§3.4). For two positive series it
    is close to 1 whatever their shapes, which is why the report gives Pearson's r too.

    Example:
        >>> round(cosine([1, 2, 3], [1, 3, 2]), 4)
        0.9286
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine: lengths differ ({a.size} vs {b.size})")
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else float("nan")


def convergence_epoch(epochs: Sequence[float], accuracies: Sequence[float | None]) -> float:
    """The epoch of peak test accuracy (the first one on ties); paper §5.2's convergence.

    Epochs without an evaluation (None) are ignored.

    Raises:
        ValueError: no evaluated epoch.
    """
    pairs = [(e, a) for e, a in zip(epochs, accuracies, strict=True) if a is not None]
    if not pairs:
        raise ValueError("convergence_epoch: no evaluated epoch")
    best = max(a for _, a in pairs)
    return next(e for e, a in pairs if a == best)


def epochs_to_target(
    epochs: Sequence[float], accuracies: Sequence[float | None], target: float
) -> float | None:
    """The first epoch whose accuracy is >= ``target`` (None if never reached)."""
    for e, a in zip(epochs, accuracies, strict=True):
        if a is not None and a >= target:
            return e
    return None


@dataclass(frozen=True)
class Comparison:
    """A setting's accuracy minus the baseline's, paired by seed.

    Attributes:
        diff: :class:`Summary` of the per-seed differences (setting - baseline), fraction.
        verdict: "better" / "worse" when the 95% CI excludes 0, "within noise" otherwise,
            "n/a" with fewer than 2 paired seeds.
        p_value: two-sided p-value of the paired t-test (``scipy.stats.ttest_rel``); the
            verdict is equivalent to ``p_value < 0.05``. NaN with fewer than 2 seeds; 1 when
            every difference is 0 and 0 when they are all the same non-zero value (the
            limits scipy leaves undefined).
    """

    diff: Summary
    verdict: str
    p_value: float = float("nan")


def compare_paired(ours: Mapping[int, float], base: Mapping[int, float]) -> Comparison:
    """Compare per-seed values on the seeds both have (same seed: same init and shards).

    Example:
        >>> compare_paired({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.8, 2: 0.81}).verdict
        'better'
    """
    seeds = sorted(set(ours) & set(base))
    # only finite pairs enter, as in summarize(), so the CI and the test see the same values
    pairs = [(ours[s], base[s]) for s in seeds if math.isfinite(ours[s]) and math.isfinite(base[s])]
    d = summarize(x - y for x, y in pairs)
    p_value = float("nan")
    if d.n < 2:
        verdict = "n/a"
    else:
        verdict = "within noise"
        if d.ci_low > 0:
            verdict = "better"
        elif d.ci_high < 0:
            verdict = "worse"
        if d.std > 0:
            x, y = zip(*pairs, strict=True)
            p_value = float(stats.ttest_rel(x, y).pvalue)
        else:
            p_value = 1.0 if d.mean == 0 else 0.0
    return Comparison(diff=d, verdict=verdict, p_value=p_value)


# ---- per run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStats:
    """One run's figures.

    Attributes:
        key, setting, label, seed, groups, status: identity (status "ok" or "diverged").
        init, l1: the run's initialisation and L1 strength (the ablation's axes).
        epochs: epoch of each record; accuracy: test accuracy per record (None if not
            evaluated); coded_bits, quantized_bits: per record.
        peak_accuracy, final_accuracy: max and last test accuracy (fraction).
        convergence_epoch: epoch of the peak; peaked_at_end: it is the last epoch.
        coded_bits_mean, quantized_bits_mean: means over synchronisations.
        ratio: 32 / coded_bits_mean.
        layers: per weight matrix: ``N``, ``H``, ``grad_rms``, ``bits`` lists per record.
        wall_s: training wall time (s).
    """

    key: str
    setting: str
    label: str
    seed: int
    groups: tuple[str, ...]
    status: str
    init: str
    l1: float
    epochs: list[float]
    accuracy: list[float | None]
    coded_bits: list[float]
    quantized_bits: list[float]
    peak_accuracy: float
    final_accuracy: float
    convergence_epoch: float
    peaked_at_end: bool
    coded_bits_mean: float
    quantized_bits_mean: float
    ratio: float
    layers: dict[str, dict[str, list[Any]]]
    wall_s: float


def _coded_bits(record: Mapping[str, Any]) -> float:
    n = record["num_values"] * max(1, record["world_size"])
    return 8.0 * record["bytes_all_ranks"] / n if n else float("nan")


def run_stats(doc: Mapping[str, Any]) -> RunStats:
    """The :class:`RunStats` of a run document (see :func:`paper.sweep.train_run`).

    Raises:
        ValueError: the run has no evaluated epoch.
    """
    recs = doc["epochs"]
    epochs = [float(r["epoch"]) for r in recs]
    acc = [r["test_accuracy"] for r in recs]
    evaluated = [a for a in acc if a is not None]
    if not evaluated:
        raise ValueError(f"run {doc.get('key')}: no evaluated epoch")
    coded = [_coded_bits(r) for r in recs]
    quant = [float(r["quantized_bits_per_param"]) for r in recs]
    conv = convergence_epoch(epochs, acc)
    layers: dict[str, dict[str, list[Any]]] = {}
    for r in recs:
        for layer in r["layers"]:
            if not layer["name"].endswith("weight"):
                continue
            d = layers.setdefault(layer["name"], {"N": [], "H": [], "grad_rms": [], "bits": []})
            d["N"].append(layer["N"])
            d["H"].append(layer["H"])
            d["grad_rms"].append(layer["grad_rms"])
            d["bits"].append(layer["bits_per_param"])
    coded_mean = float(np.mean(coded))
    setting = doc["setting"]
    cfg = doc["config"]
    return RunStats(
        key=str(doc["key"]),
        setting=str(setting["name"]),
        label=str(setting["label"]),
        seed=int(doc["seed"]),
        groups=tuple(setting["groups"]),
        status=str(doc.get("status", "ok")),
        init=str(cfg["init"]),
        l1=float(cfg["l1"]),
        epochs=epochs,
        accuracy=acc,
        coded_bits=coded,
        quantized_bits=quant,
        peak_accuracy=float(max(evaluated)),
        final_accuracy=float(evaluated[-1]),
        convergence_epoch=conv,
        peaked_at_end=conv == epochs[-1],
        coded_bits_mean=coded_mean,
        quantized_bits_mean=float(np.mean(quant)),
        ratio=32.0 / coded_mean if coded_mean > 0 else float("nan"),
        layers=layers,
        wall_s=float(doc.get("wall_s", float("nan"))),
    )


def entropy_series(doc: Mapping[str, Any], layer: str, F: float, M: int) -> list[float]:
    """H(F, M) of ``layer``'s averaged weights after every synchronisation (Fig. 3)."""
    grid = doc["entropy_grid"]
    i = list(grid["M"]).index(M)
    j = [float(f) for f in grid["F"]].index(float(F))
    return [float(r["entropy"][layer][i][j]) for r in doc["epochs"]]


def layer_correlations(
    doc: Mapping[str, Any], F: float = DEFAULT_F, M: int = DEFAULT_M, *, kind: str = "pearson"
) -> dict[str, float]:
    """Per weight matrix: the correlation over epochs between log2(G + 1) and H(F, M).

    G is rank 0's RMS data-loss gradient over each round (paper §3.2, c0 = 1); H the
    entropy estimate of the averaged weights after that round (paper §3.4). ``kind`` is
    ``"pearson"`` (centred) or ``"cosine"`` (uncentred, see :func:`cosine`).
    """
    corr = {"pearson": pearson, "cosine": cosine}[kind]
    out = {}
    for r0 in doc["epochs"][:1]:
        for layer in r0["layers"]:
            name = layer["name"]
            if name not in r0.get("entropy", {}):
                continue
            g = [
                next(x["grad_rms"] for x in r["layers"] if x["name"] == name) for r in doc["epochs"]
            ]
            if any(v is None for v in g):
                continue
            out[name] = corr([math.log2(v + 1.0) for v in g], entropy_series(doc, name, F, M))
    return out


# ---- per setting -------------------------------------------------------------------------------


@dataclass
class SettingStats:
    """A setting's runs and their statistics over seeds.

    Attributes:
        name, label, groups, policy, overrides: the setting.
        runs: its :class:`RunStats`, by seed order.
        accuracy, final_accuracy, convergence, coded_bits, quantized_bits, ratio,
            epochs_to_target: :class:`Summary` over seeds.
        vs_baseline: paired comparison of peak accuracy with the baseline (None for it).
        diverged: number of runs that diverged.
        censored: runs whose peak was their last epoch.
    """

    name: str
    label: str
    groups: tuple[str, ...]
    policy: dict[str, Any]
    overrides: dict[str, Any]
    runs: list[RunStats]
    accuracy: Summary
    final_accuracy: Summary
    convergence: Summary
    coded_bits: Summary
    quantized_bits: Summary
    ratio: Summary
    epochs_to_target: Summary
    reached_target: int
    vs_baseline: Comparison | None = None
    diverged: int = 0
    censored: int = 0

    @property
    def seeds(self) -> list[int]:
        """The seeds of its runs."""
        return [r.seed for r in self.runs]

    def curve(self, attr: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(epochs, mean, std)`` over seeds of a per-record list attribute of RunStats.

        Runs of different lengths are cut to the shortest; std is 0 for a single run.
        """
        series = [getattr(r, attr) for r in self.runs]
        n = min(len(s) for s in series)
        arr = np.array([[np.nan if v is None else v for v in s[:n]] for s in series], dtype=float)
        epochs = np.asarray(self.runs[0].epochs[:n])
        std = arr.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(n)
        return epochs, arr.mean(axis=0), std


@dataclass
class Analysis:
    """Everything the figures and the report need, from one sweep's run files.

    Attributes:
        settings: name -> :class:`SettingStats` (in the order first seen).
        docs: name -> that setting's raw run documents (for the entropy grids).
        baseline: the baseline's name, or None if it has no run.
        target_accuracy: 99% of the baseline's mean peak accuracy (None without baseline).
        correlations: layer -> :class:`Summary` of r(log2(G+1), H(0.03, 4)) over the
            baseline's seeds; ``correlations_c6m4`` the same for EntropyAdaptive(c=6, M=4).
        cosine: layer -> Summary of the uncentred correlation (:func:`cosine`), baseline.
        correlation_grid: layer -> (M, F) -> Summary over baseline seeds.
        problems: runs that could not be analysed (key, reason).
    """

    settings: dict[str, SettingStats]
    docs: dict[str, list[dict[str, Any]]]
    baseline: str | None
    target_accuracy: float | None
    correlations: dict[str, Summary] = field(default_factory=dict)
    correlations_c6m4: dict[str, Summary] = field(default_factory=dict)
    cosine: dict[str, Summary] = field(default_factory=dict)
    correlation_grid: dict[str, dict[tuple[int, float], Summary]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def group(self, name: str) -> list[SettingStats]:
        """The settings tagged ``name`` (e.g. "fig1"), in profile order."""
        return [s for s in self.settings.values() if name in s.groups]

    def get(self, name: str) -> SettingStats | None:
        """The setting ``name`` or None."""
        return self.settings.get(name)

    def headline(self) -> list[dict[str, Any]]:
        """Rows of the headline table (baseline and the ``headline`` settings).

        Each row: ``name``, ``label``, ``stats`` (SettingStats), ``paper`` (dict),
        ``effective`` (ratio x baseline convergence / ours, None if undefined).
        """
        rows = []
        base = self.settings.get(self.baseline) if self.baseline else None
        for s in ([base] if base else []) + self.group("headline"):
            eff = None
            if base is not None and s.convergence.n and base.convergence.n:
                eff = s.ratio.mean * base.convergence.mean / s.convergence.mean
            rows.append(
                {
                    "name": s.name,
                    "label": s.label,
                    "stats": s,
                    "paper": PAPER.get(s.name, {}),
                    "effective": eff,
                }
            )
        return rows


def _setting_stats(
    runs: list[RunStats], doc: Mapping[str, Any], target: float | None
) -> SettingStats:
    runs = sorted(runs, key=lambda r: r.seed)
    setting = doc["setting"]
    ett = [epochs_to_target(r.epochs, r.accuracy, target) if target else None for r in runs]
    return SettingStats(
        name=str(setting["name"]),
        label=str(setting["label"]),
        groups=tuple(setting["groups"]),
        policy=dict(setting["policy"]),
        overrides=dict(setting["overrides"]),
        runs=runs,
        accuracy=summarize(r.peak_accuracy for r in runs),
        final_accuracy=summarize(r.final_accuracy for r in runs),
        convergence=summarize(r.convergence_epoch for r in runs),
        coded_bits=summarize(r.coded_bits_mean for r in runs),
        quantized_bits=summarize(r.quantized_bits_mean for r in runs),
        ratio=summarize(r.ratio for r in runs),
        epochs_to_target=summarize(ett),
        reached_target=sum(e is not None for e in ett),
        diverged=sum(r.status != "ok" for r in runs),
        censored=sum(r.peaked_at_end for r in runs),
    )


def analyze(docs: Iterable[Mapping[str, Any]], baseline: str | None = None) -> Analysis:
    """Analyse a sweep's run documents (:func:`paper.sweep.load_runs`).

    Args:
        baseline: the name of the baseline setting. None: the first lossless setting that
            is not a peer method. A name pins it, so that a partial sweep whose baseline
            has no finished run yet gets no baseline rather than another lossless setting
            (the long profile also has lossless runs of another initialisation).
    """
    by_setting: dict[str, list[dict[str, Any]]] = {}
    problems: list[tuple[str, str]] = []
    stats: dict[str, list[RunStats]] = {}
    for doc in docs:
        try:
            rs = run_stats(doc)
        except (KeyError, ValueError, TypeError) as exc:
            problems.append((str(doc.get("key", "?")), str(exc)))
            continue
        by_setting.setdefault(rs.setting, []).append(dict(doc))
        stats.setdefault(rs.setting, []).append(rs)

    if baseline is not None:
        baseline = baseline if baseline in by_setting else None
    else:
        baseline = next(
            (
                n
                for n, ds in by_setting.items()
                # a peer method's setting carries a placeholder Lossless policy: not the baseline
                if ds[0]["setting"]["policy"].get("id") == "lossless"
                and ds[0]["setting"].get("peer") is None
            ),
            None,
        )
    target = None
    if baseline is not None:
        target = 0.99 * summarize(r.peak_accuracy for r in stats[baseline]).mean
    settings = {n: _setting_stats(stats[n], by_setting[n][0], target) for n in by_setting}
    if baseline is not None:
        base_acc = {r.seed: r.peak_accuracy for r in settings[baseline].runs}
        for name, s in settings.items():
            if name != baseline:
                s.vs_baseline = compare_paired({r.seed: r.peak_accuracy for r in s.runs}, base_acc)

    analysis = Analysis(
        settings=settings,
        docs=by_setting,
        baseline=baseline,
        target_accuracy=target,
        problems=problems,
    )
    if baseline is not None:
        analysis.correlations = _correlations(by_setting[baseline])
        analysis.cosine = _correlations(by_setting[baseline], kind="cosine")
        analysis.correlation_grid = _correlation_grid(by_setting[baseline])
    if "entropy-c6-M4" in by_setting:
        analysis.correlations_c6m4 = _correlations(by_setting["entropy-c6-M4"])
    return analysis


def _correlations(
    docs: Sequence[Mapping[str, Any]],
    F: float = DEFAULT_F,
    M: int = DEFAULT_M,
    *,
    kind: str = "pearson",
) -> dict[str, Summary]:
    per_layer: dict[str, list[float]] = {}
    for doc in docs:
        if (
            F not in [float(f) for f in doc["entropy_grid"]["F"]]
            or M not in doc["entropy_grid"]["M"]
        ):
            continue
        for layer, r in layer_correlations(doc, F, M, kind=kind).items():
            per_layer.setdefault(layer, []).append(r)
    return {layer: summarize(rs) for layer, rs in per_layer.items()}


def _correlation_grid(
    docs: Sequence[Mapping[str, Any]],
) -> dict[str, dict[tuple[int, float], Summary]]:
    out: dict[str, dict[tuple[int, float], Summary]] = {}
    if not docs:
        return out
    grid = docs[0]["entropy_grid"]
    for m in grid["M"]:
        for f in grid["F"]:
            for layer, s in _correlations(docs, float(f), int(m)).items():
                out.setdefault(layer, {})[(int(m), float(f))] = s
    return out
