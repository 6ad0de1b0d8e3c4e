"""Beyond the paper: the Pareto curve of accuracy against bits/param, tenfold against peers.

From the runs of the ``beyond`` profile (``tenfold reproduce --profile beyond``), this module
groups settings into *families* (tenfold's delta coding with ANS, with Huffman only, without
error feedback, with a relative step; the paper's weights coding; each peer method), draws
``figures/pareto.png`` and writes the report section. Every sentence that draws a conclusion
is computed here from the run files, against the thresholds named below.

Definitions (as in :mod:`tenfold.experiments.analysis`): a setting's accuracy is its peak
test accuracy, averaged over seeds; bits/param counts every byte of every rank's packets
(or the peer's messages), averaged over synchronisations; "within noise" means the 95% CI
of the per-seed paired accuracy difference from the uncompressed baseline contains 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tenfold.experiments.analysis import Analysis, SettingStats

__all__ = [
    "FAMILIES",
    "PARETO_FIGURE",
    "TARGET_NOISE_BITS",
    "TARGET_HALF_PP_BITS",
    "TARGET_PEER_MARGIN_PP",
    "ParetoPoint",
    "draw_pareto",
    "family_of",
    "pareto_points",
    "render_section",
]

PARETO_FIGURE = "pareto.png"

#: the issue's targets: within noise at <= 2.13 bits/param (15x); within 0.5 pp at <= 0.5
#: bits/param; at <= 0.5 bits/param at least 1 pp above the best peer.
TARGET_NOISE_BITS = 32 / 15
TARGET_HALF_PP_BITS = 0.5
TARGET_PEER_MARGIN_PP = 1.0
#: "within 0.5 pp" means the mean paired difference is at least -0.5 pp
HALF_PP = 0.005

#: family id -> (legend label, colour, marker); the order of the legend
FAMILIES: dict[str, tuple[str, str, str]] = {
    "tenfold-ans": ("tenfold: deltas + EF, TargetRate, ANS", "tab:red", "o"),
    "tenfold-step": ("tenfold: deltas + EF, RelativeStep", "tab:pink", "D"),
    "tenfold-huffman": ("tenfold: deltas + EF, TargetRate, Huffman only", "tab:orange", "s"),
    "tenfold-no-ef": ("tenfold: deltas, no error feedback", "tab:brown", "v"),
    "paper-entropy": ("paper: weights, EntropyAdaptive (M=4)", "tab:blue", "^"),
    "paper-fixed": ("paper: weights, Fixed N", "tab:cyan", "<"),
    "peer-cast": ("fp16 / bf16 cast", "tab:gray", "x"),
    "peer-int8": ("blockwise int8 (ZeRO++ / INTELLECT-1)", "tab:olive", "P"),
    "peer-topk": ("top-k + 2-bit values + EF (SparseLoCo / DGC)", "tab:green", "*"),
    "peer-powersgd": ("PowerSGD + EF", "tab:purple", "h"),
}
_TENFOLD = ("tenfold-ans", "tenfold-step", "tenfold-huffman", "tenfold-no-ef")
_PEERS = ("peer-cast", "peer-int8", "peer-topk", "peer-powersgd")


def family_of(doc_setting: dict[str, Any], config: dict[str, Any]) -> str | None:
    """The family of a run's setting (its saved ``setting`` and ``config``), None for the
    baseline or a setting outside the comparison."""
    peer = doc_setting.get("peer")
    if peer is not None:
        pid = peer.get("id")
        return {
            "fp16": "peer-cast",
            "bf16": "peer-cast",
            "int8-block": "peer-int8",
            "topk": "peer-topk",
            "powersgd": "peer-powersgd",
        }.get(str(pid))
    policy = doc_setting.get("policy", {})
    pid = policy.get("id")
    if pid == "lossless":
        return None
    if config.get("transmit", "weights") == "weights":
        return {"entropy": "paper-entropy", "fixed": "paper-fixed"}.get(str(pid))
    if not config.get("error_feedback", True):
        return "tenfold-no-ef"
    if pid == "relative_step":
        return "tenfold-step"
    if pid == "target_rate":
        return "tenfold-huffman" if policy.get("coder") == "huffman" else "tenfold-ans"
    return None


@dataclass(frozen=True)
class ParetoPoint:
    """One setting on the curve.

    Attributes:
        name, label, family: the setting and its family (:data:`FAMILIES`).
        bits: mean coded bits/param over seeds (every byte counted).
        accuracy: mean peak test accuracy over seeds (fraction).
        diff, ci_low, ci_high: paired difference from the baseline and its 95% CI (fraction).
        verdict: "better", "worse", "within noise" or "n/a".
        seeds: number of seeds.
    """

    name: str
    label: str
    family: str
    bits: float
    accuracy: float
    diff: float
    ci_low: float
    ci_high: float
    verdict: str
    seeds: int

    @property
    def within_noise(self) -> bool:
        """Not worse than the baseline (its CI contains 0, or it is better)."""
        return self.verdict in ("within noise", "better")


def pareto_points(a: Analysis) -> list[ParetoPoint]:
    """Every compared setting with its bits and accuracy, sorted by bits/param."""
    points = []
    for name, s in a.settings.items():
        doc = a.docs[name][0]
        family = family_of(doc.get("setting", {}), doc.get("config", {}))
        if family is None or s.vs_baseline is None:
            continue
        d = s.vs_baseline.diff
        points.append(
            ParetoPoint(
                name=name,
                label=s.label,
                family=family,
                bits=s.coded_bits.mean,
                accuracy=s.accuracy.mean,
                diff=d.mean,
                ci_low=d.ci_low,
                ci_high=d.ci_high,
                verdict=s.vs_baseline.verdict,
                seeds=len(s.runs),
            )
        )
    return sorted(points, key=lambda p: p.bits)


def _interpolate(curve: Sequence[ParetoPoint], bits: float) -> float | None:
    """A family's accuracy at ``bits`` (linear in log bits between its points; None outside)."""
    pts = sorted(curve, key=lambda p: p.bits)
    if not pts or bits < pts[0].bits or bits > pts[-1].bits:
        return None
    xs = np.log([p.bits for p in pts])
    ys = np.array([p.accuracy for p in pts])
    return float(np.interp(math.log(bits), xs, ys))


def draw_pareto(a: Analysis, path: Path) -> Path | None:
    """Accuracy vs bits/param (log x), one line per family, the baseline as a band."""
    points = pareto_points(a)
    if not points or a.baseline is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base: SettingStats = a.settings[a.baseline]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    mean, std = 100 * base.accuracy.mean, 100 * base.accuracy.std
    ax.axhspan(mean - std, mean + std, color="0.85", zorder=0)
    ax.axhline(mean, color="k", lw=1, label=f"uncompressed fp32 ({mean:.2f}%, ±1 sd)")
    for fam, (label, colour, marker) in FAMILIES.items():
        pts = sorted((p for p in points if p.family == fam), key=lambda p: p.bits)
        if not pts:
            continue
        ax.plot(
            [p.bits for p in pts],
            [100 * p.accuracy for p in pts],
            marker=marker,
            color=colour,
            label=label,
            lw=1.5 if fam in _TENFOLD else 1.0,
            ls="-" if fam in _TENFOLD else "--",
        )
    ax.set_xscale("log")
    ax.set_xlabel("bits per parameter on the wire (every byte counted, log scale)")
    ax.set_ylabel("peak test accuracy, mean over seeds (%)")
    bottom = max(ax.get_ylim()[0], mean - 12)
    ax.set_ylim(bottom, mean + 1.5)
    for p in points:  # points below the axis: say where they are instead of hiding them
        if 100 * p.accuracy < bottom:
            ax.annotate(
                f"{p.label}: {100 * p.accuracy:.1f}%",
                (p.bits, bottom),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7,
                color=FAMILIES[p.family][1],
                arrowprops={"arrowstyle": "->", "color": FAMILIES[p.family][1]},
            )
    ax.set_title("Accuracy vs communication: tenfold against the paper's coding and the peers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _best(points: Sequence[ParetoPoint], ok: Any) -> ParetoPoint | None:
    chosen = [p for p in points if ok(p)]
    return min(chosen, key=lambda p: p.bits) if chosen else None


def _target_line(what: str, met: bool, detail: str) -> str:
    return f"- {what}: **{'met' if met else 'missed'}**. {detail}"


def render_section(a: Analysis, figure: Path | None, out: Path, command: str) -> str:
    """The report's "Beyond the paper" section (Markdown); empty without baseline or points."""
    points = pareto_points(a)
    if not points or a.baseline is None:
        return ""
    base = a.settings[a.baseline]
    lines = [
        "## Beyond the paper: fewer bits at equal accuracy",
        "",
        f"`{command}`: the paper's task (5 workers, one sync per local epoch, "
        f"{base.runs[0].epochs[-1]:g} epochs, {len(base.runs)} seeds) with every worker "
        "sending its pseudo-gradient (its weights minus the shared model) plus its "
        "error-feedback residual, coded by tenfold's rate-controlled mid-tread quantizer, "
        "beside the paper's weights coding and the peer methods applied to the same "
        "pseudo-gradients (`tenfold.experiments.peers`: each counts every byte it would put "
        "on the wire). Accuracy is the peak test accuracy; differences are paired by seed "
        "against the uncompressed baseline "
        f"({100 * base.accuracy.mean:.2f} ± {100 * base.accuracy.std:.2f}%).",
        "",
    ]
    if figure is not None:
        lines += [f"![accuracy vs bits/param]({figure.relative_to(out).as_posix()})", ""]
    lines += [
        "| setting | family | bits/param | x vs fp32 | accuracy | vs baseline [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.label} | {FAMILIES[p.family][0]} | {p.bits:.3f} | {32 / p.bits:.1f}x | "
            f"{100 * p.accuracy:.2f}% | {_pp(p.diff)} [{100 * p.ci_low:+.2f}, "
            f"{100 * p.ci_high:+.2f}] | {p.verdict} |"
        )
    lines.append("")

    tenfold = [p for p in points if p.family in _TENFOLD]
    ours = [p for p in points if p.family in ("tenfold-ans", "tenfold-step")]
    peers = [p for p in points if p.family in _PEERS]
    noise = _best(tenfold, lambda p: p.within_noise)
    half = _best(tenfold, lambda p: p.diff >= -HALF_PP)
    lines.append("What the runs show:")
    lines.append("")
    if noise is not None:
        lines.append(
            f"- The fewest bits within noise of uncompressed: **{noise.bits:.3f} bits/param "
            f"({32 / noise.bits:.1f}x)**, {noise.label} ({_pp(noise.diff)}, 95% CI "
            f"[{100 * noise.ci_low:+.2f}, {100 * noise.ci_high:+.2f}])."
        )
        if noise.diff < -HALF_PP:
            firm = _best(tenfold, lambda p: p.within_noise and p.diff >= -HALF_PP)
            lines.append(
                f"  Its mean is more than 0.5 pp below the baseline: with {noise.seeds} seeds "
                "the interval is wide, so 'within noise' is weak evidence there. "
                + (
                    f"The fewest bits both within noise and within 0.5 pp: **{firm.bits:.3f} "
                    f"bits/param ({32 / firm.bits:.1f}x)**, {firm.label} ({_pp(firm.diff)})."
                    if firm is not None
                    else "No setting is both within noise and within 0.5 pp."
                )
            )
    else:
        lines.append("- No tenfold delta setting stayed within noise of uncompressed.")
    if half is not None:
        lines.append(
            f"- The fewest bits within 0.5 pp of uncompressed (mean paired difference): "
            f"**{half.bits:.3f} bits/param ({32 / half.bits:.0f}x)**, {half.label} "
            f"({_pp(half.diff)})."
        )
    paper = _best([p for p in points if p.family.startswith("paper")], lambda p: p.within_noise)
    if paper is not None:
        firm = _best(tenfold, lambda p: p.within_noise and p.diff >= -HALF_PP)
        lines.append(
            f"- The paper's weights coding needs {paper.bits:.2f} bits/param "
            f"({paper.label}) to stay within noise"
            + (f": {paper.bits / firm.bits:.1f}x more than deltas ({firm.label})." if firm else ".")
        )
    for fam in ("tenfold-huffman", "tenfold-no-ef"):
        mine = [p for p in points if p.family == fam]
        if not mine:
            continue
        worst = min(mine, key=lambda p: p.diff)
        lines.append(
            f"- {FAMILIES[fam][0]}: lowest accuracy {_pp(worst.diff)} at {worst.bits:.3f} "
            f"bits/param ({worst.label})."
        )
    lines.append("")
    if peers and ours:
        lines += [
            "tenfold against each peer at equal bits (tenfold's ANS and RelativeStep points, "
            "interpolated in log bits at the peer's rate; '-' where the peer's rate lies "
            "outside tenfold's measured range):",
            "",
            "| peer | bits/param | peer accuracy | tenfold at the same bits | difference |",
            "|---|---|---|---|---|",
        ]
        for p in peers:
            at = _interpolate(ours, p.bits)
            delta = "-" if at is None else _pp(at - p.accuracy)
            ours_at = "-" if at is None else f"{100 * at:.2f}%"
            lines.append(
                f"| {p.label} | {p.bits:.3f} | {100 * p.accuracy:.2f}% | {ours_at} | {delta} |"
            )
        lines.append("")
    lines.append("Targets (from the issue), measured:")
    lines.append("")
    firm = _best(tenfold, lambda p: p.within_noise and p.diff >= -HALF_PP)
    detail = "best: " + (f"{noise.bits:.3f} bits/param" if noise else "none within noise")
    if noise is not None and firm is not None and firm is not noise:
        detail += f" (within noise and within 0.5 pp: {firm.bits:.3f} bits/param)"
    lines.append(
        _target_line(
            f"within noise at <= {TARGET_NOISE_BITS:.2f} bits/param (15x)",
            noise is not None and noise.bits <= TARGET_NOISE_BITS,
            detail,
        )
    )
    lines.append(
        _target_line(
            f"within 0.5 pp at <= {TARGET_HALF_PP_BITS} bits/param",
            half is not None and half.bits <= TARGET_HALF_PP_BITS,
            "best: " + (f"{half.bits:.3f} bits/param" if half else "none within 0.5 pp"),
        )
    )
    low_ours = [p for p in ours if p.bits <= TARGET_HALF_PP_BITS]
    low_peers = [p for p in peers if p.bits <= TARGET_HALF_PP_BITS]
    if low_ours and low_peers:
        mine_best = max(low_ours, key=lambda p: p.accuracy)
        peer_best = max(low_peers, key=lambda p: p.accuracy)
        margin = 100 * (mine_best.accuracy - peer_best.accuracy)
        lines.append(
            _target_line(
                f"at <= {TARGET_HALF_PP_BITS} bits/param, >= {TARGET_PEER_MARGIN_PP:g} pp above "
                "the best peer",
                margin >= TARGET_PEER_MARGIN_PP,
                f"tenfold's best there {100 * mine_best.accuracy:.2f}% ({mine_best.label}, "
                f"{mine_best.bits:.3f} bits), the best peer {100 * peer_best.accuracy:.2f}% "
                f"({peer_best.label}, {peer_best.bits:.3f} bits): {margin:+.2f} pp.",
            )
        )
    else:
        lines.append(
            f"- at <= {TARGET_HALF_PP_BITS} bits/param against the best peer: not measurable "
            "(no tenfold or no peer point at that rate)."
        )
    return "\n".join(lines) + "\n"
