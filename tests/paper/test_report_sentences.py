"""Every conclusion of REPORT.md follows the runs: synthetic sweeps where the opposite holds
flip each generated sentence (and the long profile's sections render from partial data)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from synthetic_runs import flat_entropy, rising, run_doc, write_runs

from paper import report as report_mod
from paper.profiles import (
    Profile,
    RunSpec,
    entropy_setting,
    fixed_setting,
    long_profile,
    lossless_setting,
)
from paper.report import LONG_DIR, write_report

EPOCHS = 8
SEEDS = (0, 1, 2)


def _profile() -> Profile:
    """A small sweep with every figure's kind of setting (names as the full profile's)."""
    settings = (
        lossless_setting(),
        fixed_setting(4),
        fixed_setting(8),
        fixed_setting(10),
        entropy_setting(c=5, M=4, groups=("fig4b", "fig5", "headline")),
        entropy_setting(c=6, M=4, groups=("fig4a", "fig4b", "fig5", "headline")),
        entropy_setting(c=5, M=5, groups=("fig4a",)),
    )
    return Profile(
        name="synthetic", description="test", epochs=EPOCHS, seeds=SEEDS, settings=settings
    )


def _biased_entropy(layer: str, m: int, f: float, e: int) -> float:
    """fc3 (500 weights) at F = 0.01: 5 samples, so a low estimate; elsewhere flat."""
    h = flat_entropy(layer, m, f, e)
    return 0.5 * h if layer == "fc3.weight" and f < 0.02 else h


# per-seed accuracy offsets: small, unequal (so paired CIs have width), in fractions
NOISE = (0.0004, -0.0003, 0.0001)


def _scenario(paper_like: bool) -> dict[str, dict[str, Any]]:
    """setting -> how its runs look. ``paper_like``: the paper's claims hold; else the
    opposite (within noise, no faster, censored, entropy biased at small F...)."""
    if paper_like:
        peak_base, peak_fast = 5, 4  # peaks inside the budget: 20% fewer epochs
        return {
            "baseline": {"top": 0.850, "peak": peak_base, "bits": 32.0},
            "fixed-N04": {"top": 0.800, "peak": peak_base, "bits": 3.9},
            "fixed-N08": {"top": 0.850, "peak": peak_base, "bits": 7.8, "noise": True},
            "fixed-N10": {"top": 0.850, "peak": peak_base, "bits": 9.8, "noise": True},
            "entropy-c5-M4": {"top": 0.848, "peak": peak_fast, "bits": 3.55, "q": 6.8},
            "entropy-c6-M4": {"top": 0.855, "peak": peak_fast, "bits": 3.78, "q": 7.0},
            "entropy-c5-M5": {"top": 0.840, "peak": peak_base, "bits": 4.5},
        }
    return {
        "baseline": {"top": 0.850, "bits": 32.0},
        "fixed-N04": {"top": 0.800, "bits": 3.9},
        "fixed-N08": {"top": 0.840, "bits": 7.8},
        "fixed-N10": {"top": 0.850, "bits": 9.8, "noise": True},
        "entropy-c5-M4": {"top": 0.856, "bits": 8.8, "q": 9.0},
        "entropy-c6-M4": {"top": 0.850, "bits": 9.8, "q": 10.0, "noise": True},
        "entropy-c5-M5": {"top": 0.862, "bits": 9.8, "noise": True},
    }


def _docs(profile: Profile, scenario: dict[str, dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    docs = []
    for spec in profile.runs():
        sc = scenario[spec.setting.name]
        top = sc["top"] + (NOISE[spec.seed % 3] if sc.get("noise") else 0.0)
        # the same per-seed level in every setting, so pairing by seed removes it
        top += 0.002 * spec.seed
        acc = rising(profile.epochs, top, peak_at=sc.get("peak"))
        docs.append(run_doc(spec, acc, coded_bits=sc["bits"], quantized_bits=sc.get("q"), **kw))
    return docs


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    # the sentences are under test here, not the drawings (test_report draws them)
    monkeypatch.setattr(report_mod, "draw_all", lambda a, out: {})


def _report(tmp: Path, paper_like: bool) -> str:
    profile = _profile()
    entropy = flat_entropy if paper_like else _biased_entropy
    write_runs(tmp, _docs(profile, _scenario(paper_like), entropy=entropy))
    return write_report(tmp, profile).read_text()


def _line(text: str, start: str) -> str:
    """The first line of ``text`` containing ``start``."""
    return next(line for line in text.splitlines() if start in line)


def test_sentences_flip_with_the_data(tmp_path: Path) -> None:
    yes = _report(tmp_path / "paper-like", paper_like=True)
    no = _report(tmp_path / "opposite", paper_like=False)

    # sample rate F: agreement across F, or where and why not
    f_yes, f_no = (
        _line(yes, "sample rate has very little"),
        _line(no, "sample rate has very little"),
    )
    assert "they agree across F in every layer and at every M, as in the paper" in f_yes
    assert "for fc3.weight (500 weights) they differ" in f_no and "only 5 values" in f_no
    assert "biased low" in f_no and "holds only in part" in f_no
    assert "biased low" not in f_yes

    # headline accuracy: significant vs within noise
    c6_yes = _line(yes, "accuracy: paper above baseline")
    c6_no = _line(no, "accuracy: paper above baseline")
    assert "**reproduced** (the paired 95% CI lies above 0)" in c6_yes
    assert "**not reproduced**: within noise" in c6_no
    assert "| `entropy-c6-M4` (10:6) |" in yes and "**better**" in _line(yes, "| `entropy-c6-M4`")
    assert "**within noise**" in _line(no, "| `entropy-c6-M4`")
    c5_yes = _line(yes, "accuracy: paper marginally below baseline")
    c5_no = _line(no, "accuracy: paper marginally below baseline")
    assert "**reproduced**: below the baseline by at most" in c5_yes
    assert "**not reproduced**: above the baseline" in c5_no

    # bits and the effective reduction: reproduced or not
    assert "coded bits/param: paper 3.78, ours 3.78: **reproduced**" in yes
    assert "coded bits/param: paper 3.78, ours 9.80: **not reproduced**" in no
    assert "effective reduction: paper 10.32, ours 10.58: **reproduced**" in yes
    assert re.search(r"effective reduction: paper 10\.32, ours 3\.\d\d: \*\*not reproduced", no)

    # convergence: measured vs censored (peak at the last epoch), faster or not
    assert "**Convergence is measured.** None of the 21 8-epoch runs peaked at its last" in yes
    assert "**Convergence is censored.** 21 of 21 8-epoch runs" in no
    assert "mostly measures the budget" in no and "mostly measures the budget" not in yes
    conv_yes, conv_no = _line(yes, "convergence: paper 20%"), _line(no, "convergence: paper 20%")
    assert "ours 20% fewer" in conv_yes and ": **reproduced**" in conv_yes
    assert "**not reproduced** (no significant difference" in conv_no and "censored" in conv_no
    assert "every convergence epoch is measured" in _line(yes, "**Convergence.** Our runs")
    assert "bounded by the budget" in _line(no, "**Convergence.** Our runs")

    # Fig. 1: from which N the baseline is recovered, against the paper's 8
    assert "from N = 8 up" in yes and "**as in the paper**" in yes
    assert "from N = 10 up" in no and "**more bits than the paper's 8**" in no

    # Fig. 4: 10:6 above the baseline, 9:5 better than 10:5
    fig4_yes = _line(yes, "The paper finds the best results at 10:6")
    fig4_no = _line(no, "The paper finds the best results at 10:6")
    assert fig4_yes.count("**reproduced**") == 2
    assert fig4_no.count("**not reproduced**") == 2


def _grad_up(k: int, e: int) -> float:
    """G that grows over training and is largest in layer 1 (the paper's opposite)."""
    return 0.01 * (3 - k) * (1.0 + 0.2 * e)


def test_gradient_sentence_flips(tmp_path: Path) -> None:
    profile = _profile()
    write_runs(tmp_path, _docs(profile, _scenario(True), grad_rms=_grad_up))
    g = _line(write_report(tmp_path, profile).read_text(), "G is worker 0's RMS")
    assert "does not shrink over training in any layer" in g
    assert "is not larger in every higher layer" in g
    assert "As in the paper" in _line(_report(tmp_path / "b", True), "G is worker 0's RMS")


def test_correlation_sentence_flips(tmp_path: Path) -> None:
    # G falls over training; H falling too gives r = +1, H rising (by 0.1 bit/epoch) r = -1
    profile = _profile()
    write_runs(tmp_path / "up", _docs(profile, _scenario(True)))
    text = write_report(tmp_path / "up", profile).read_text()
    assert "'always above 0.75' is **reproduced**" in text
    assert "H moves less than 0.1 bits over a run" in text  # 0.07 bits over 8 epochs

    def rising_h(layer: str, m: int, f: float, e: int) -> float:
        return 0.5 * m + 0.1 * e

    write_runs(tmp_path / "down", _docs(profile, _scenario(True), entropy=rising_h))
    text = write_report(tmp_path / "down", profile).read_text()
    assert "'always above 0.75' is **not reproduced** (9 of 9 pairs at or below it)" in text
    assert "H moves by at least 0.1 bits over a run in every layer" in text


def test_bits_trend_and_huffman_sentences(tmp_path: Path) -> None:
    profile = _profile()
    docs = _docs(profile, _scenario(True))
    falling = [3.78 + 0.1 * (EPOCHS - e) for e in range(EPOCHS)]
    for d in docs:
        if d["setting"]["name"] == "entropy-c6-M4":
            for rec, b in zip(d["epochs"], falling, strict=True):
                rec["bytes_all_ranks"] = int(b * rec["num_values"] * rec["world_size"] / 8)
    write_runs(tmp_path, docs)
    text = write_report(tmp_path, profile).read_text()
    trend = _line(text, "Coded bits/param from the first to the last epoch")
    assert "9:5 stays flat" in trend and "10:6 falls by 0.70 bits" in trend
    assert "Huffman coding makes a fixed N cost less than N bits" in text


# ---- the long profile --------------------------------------------------------------------


def _long_docs(
    lp: Profile,
    *,
    skip: Sequence[str] = (),
    seeds: Sequence[int] = SEEDS,
    late_bits: bool = True,
) -> list[dict[str, Any]]:
    """Synthetic 100-epoch runs: every run peaks inside the budget except fixed-N08's
    (still rising); normal-0.01 c=6 bits fall to the paper's range late if ``late_bits``."""
    n = lp.epochs
    peaks = {"baseline": 60, "entropy-c5-M4": 55, "entropy-c6-M4": 48, "delta-default": 60}
    docs = []
    for spec in lp.runs():
        name = spec.setting.name
        if name in skip or spec.seed not in seeds:
            continue
        normal = "normal" in name
        top = 0.86 + 0.002 * spec.seed + (0.003 if name.startswith("entropy-c6") else 0.0)
        top += NOISE[spec.seed] * (name != "baseline")
        peak = None if name == "fixed-N08" else peaks.get(name, 70)
        if name.startswith("baseline"):
            bits: float | list[float] = 32.0
        elif name == "delta-default":
            bits = 0.26
        elif name == "fixed-N08":
            bits = 7.8
        elif normal:
            # from 8 bits down to 3.7 at the end (late) or to 6 (never in range)
            end = 3.7 if late_bits else 6.0
            bits = [8.0 - (8.0 - end) * e / (n - 1) for e in range(n)]
        else:
            bits = 8.8 if "c5" in name else 9.8

        def entropy(layer: str, m: int, f: float, e: int, normal: bool = normal) -> float:
            # a normal init starts peaked and L1 makes it more so; glorot stays flat
            return (0.6 * m - 0.01 * e) if normal else 0.9 * m

        acc = rising(n, top, peak_at=peak)
        docs.append(run_doc(spec, acc, coded_bits=bits, entropy=entropy))
    return docs


def _full_with_long(tmp: Path, long_docs: list[dict[str, Any]]) -> str:
    profile = _profile()
    write_runs(tmp, _docs(profile, _scenario(False), entropy=flat_entropy))
    write_runs(tmp / LONG_DIR, long_docs)
    return write_report(tmp, profile).read_text()


def test_full_report_gains_the_long_columns_and_sections(tmp_path: Path) -> None:
    lp = long_profile()
    text = _full_with_long(tmp_path, _long_docs(lp))
    header = _line(text, "| setting | bits/param quantized")
    for col in (
        "runs, 100 ep",
        "accuracy %, 100 ep",
        "peak epoch, 100 ep",
        "effective reduction, 100 ep",
    ):
        assert col in header, col
    c6 = _line(text, "| `entropy-c6-M4` (10:6) |")
    assert "| 3/3 | 9.80 ± 0.00 |" in c6 and "48.0 ± 0.0" in c6
    # effective at 100 epochs = 32 / 9.8 x 60 / 48
    assert f"| {32 / 9.8 * 60 / 48:.2f} |" in c6
    assert "| `fixed-N08` (N=8) |" in text and "| `delta-default`" in text  # long-only rows
    assert "3/3 at last epoch" in _line(text, "| `fixed-N08` (N=8) |")
    # uncensored convergence at 100 epochs, counted
    assert (
        "3 of the 27 finished 100-epoch runs still peak at their last epoch (`fixed-N08` 3/3)"
        in text
    )
    # the per-epoch bits table and the paper's claims at 100 epochs
    assert "## At the paper's length: 100 epochs" in text
    assert "| `entropy-c6-M4` | 3 |" in text and "| epoch 100 |" in _line(
        text, "| setting | runs | epoch 1 |"
    )
    assert "convergence: paper 20% fewer epochs than the baseline; ours 20% fewer" in text
    # the normal-0.01 section: bits, entropy per layer over epochs, both comparisons
    assert "## The normal-0.01 initialisation over 100 epochs" in text
    row = _line(text, "| `entropy-c6-M4-normal-0.01-l1-1e-6` | 1e-06 | 3 |")
    assert "(vs `entropy-c6-M4`)" in row and "3.70" in row  # last-sync bits
    assert "| `baseline-normal-0.01-l1-1e-5` | fc1.weight |" in text
    assert "**emerges late in training**" in text
    assert "figures/long_fig5_bits.png" in text and "figures/long_init_entropy.png" in text


def test_bits_do_not_emerge_sentence(tmp_path: Path) -> None:
    text = _full_with_long(tmp_path, _long_docs(long_profile(), late_bits=False))
    assert "**does not emerge**, not even at the last sync" in text
    assert "**emerges late in training**" not in text


def test_partial_long_runs_render_with_counts(tmp_path: Path) -> None:
    lp = long_profile()
    # seeds 0-1 only, no entropy-c5-M4, and no normal-0.01 baseline at L1 1e-5
    docs = _long_docs(lp, skip=("entropy-c5-M4", "baseline-normal-0.01-l1-1e-5"), seeds=(0, 1))
    text = _full_with_long(tmp_path, docs)
    assert "(14 of 27 runs finished" in text
    assert "| 0/3 | - |" in _line(text, "| `entropy-c5-M4` (9:5) |")
    assert "| 2/3 |" in _line(text, "| `entropy-c6-M4` (10:6) |")
    row = _line(text, "| `entropy-c6-M4-normal-0.01-l1-1e-5` | 1e-05 |")
    assert "| - | " in row  # no own baseline yet
    # no baseline at all: the 100-epoch columns still render, without comparisons
    text = _full_with_long(tmp_path / "nobase", _long_docs(lp, skip=("baseline",), seeds=(0,)))
    assert "which has no finished run yet" in text
    assert "| 1/3 |" in _line(text, "| `entropy-c6-M4` (10:6) |")


def test_long_profile_own_report(tmp_path: Path) -> None:
    lp = long_profile()
    out = tmp_path / "long"
    write_runs(out, _long_docs(lp, seeds=(0, 1)))
    text = write_report(out, lp).read_text()
    assert "Partial results: 18 of 27 runs" in text
    assert "| `baseline` (baseline) |" in text and "runs, 100 ep" not in text
    assert "## At the paper's length: 100 epochs" in text and "fig5_bits.png" in text
    assert "## The normal-0.01 initialisation over 100 epochs" in text
    # the init study is not the full profile's init x L1 ablation
    assert "## Ablation" not in text and "## Fig. 4" not in text
    # the baseline is the glorot-uniform one, not a normal-0.01 lossless cell
    assert "`baseline-normal-0.01-l1-1e-6`" in text
    assert "Δ vs baseline" in text


def test_long_report_draws_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paper.figures import draw_all

    monkeypatch.setattr(report_mod, "draw_all", draw_all)
    lp = long_profile()
    out = tmp_path / "long"
    write_runs(out, _long_docs(lp, seeds=(0,)))
    text = write_report(out, lp).read_text()
    for png in ("fig5_bits", "fig7_init_entropy"):
        assert (out / "figures" / f"{png}.png").stat().st_size > 10_000, png
        assert f"figures/{png}.png" in text
    assert not (out / "figures" / "fig6_ablation.png").exists()


def test_synthetic_runs_match_the_profile(tmp_path: Path) -> None:
    # the builders' files are what the sweep would accept as finished runs
    from paper.sweep import profile_runs

    lp = long_profile()
    spec: RunSpec = lp.runs()[0]
    write_runs(tmp_path, [run_doc(spec, rising(lp.epochs, 0.8))])
    docs, ignored = profile_runs(tmp_path, lp)
    assert [d["key"] for d in docs] == [spec.key] and ignored == 0
    json.dumps(docs[0], allow_nan=False)
