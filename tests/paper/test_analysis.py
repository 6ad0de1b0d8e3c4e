"""Analysis: known answers for convergence, statistics, correlations and bit accounting."""

from __future__ import annotations

import math
from typing import Any

import pytest

from paper.analysis import (
    analyze,
    compare_paired,
    convergence_epoch,
    epochs_to_target,
    layer_correlations,
    pearson,
    run_stats,
    summarize,
    t_quantile,
)


def test_convergence_epoch_is_the_first_peak() -> None:
    assert convergence_epoch([1, 2, 3, 4, 5], [0.5, 0.7, 0.9, 0.9, 0.8]) == 3
    assert convergence_epoch([1, 2, 3], [0.5, None, 0.4]) == 1  # None = not evaluated
    assert convergence_epoch([1, 2, 3], [0.1, 0.2, 0.3]) == 3
    with pytest.raises(ValueError):
        convergence_epoch([1], [None])


def test_epochs_to_target() -> None:
    assert epochs_to_target([1, 2, 3], [0.5, 0.8, 0.9], 0.8) == 2
    assert epochs_to_target([1, 2, 3], [0.5, 0.6, 0.7], 0.8) is None


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 29, 2.045),
        (0.5, 3, 0.0),
        (0.025, 9, -2.262),
        (0.95, 10, 1.812),
    ],
)
def test_t_quantile_matches_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    # the standard Student-t table values, to six digits
    [(0.975, 2, 4.302653), (0.975, 1, 12.706205), (0.975, 9, 2.262157), (0.995, 4, 4.604095)],
)
def test_t_quantile_six_digits(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_rejects_bad_arguments() -> None:
    for p, df in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_paired_t_test_on_students_sleep_data() -> None:
    # Cushny & Peebles' sleep data as analysed by "Student" (1908); R's
    # t.test(extra ~ group, data = sleep, paired = TRUE): t = 4.0621, df = 9,
    # p-value = 0.002833, 95% CI of the mean difference [0.7001142, 2.4598858]
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    c = compare_paired(dict(enumerate(drug2)), dict(enumerate(drug1)))
    assert c.diff.mean == pytest.approx(1.58)
    assert (c.diff.ci_low, c.diff.ci_high) == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert c.p_value == pytest.approx(0.002833, abs=1e-6) and c.verdict == "better"
    flipped = compare_paired(dict(enumerate(drug1)), dict(enumerate(drug2)))
    assert flipped.verdict == "worse" and flipped.p_value == pytest.approx(c.p_value)


def test_paired_p_value_limits() -> None:
    same = compare_paired({0: 0.8, 1: 0.9}, {0: 0.8, 1: 0.9})
    assert same.p_value == 1.0 and same.verdict == "within noise"
    shifted = compare_paired({0: 0.85, 1: 0.95}, {0: 0.8, 1: 0.9})
    assert shifted.p_value == 0.0
    assert math.isnan(compare_paired({0: 0.9}, {0: 0.8}).p_value)


def test_pearson_matches_a_published_example() -> None:
    # hand-checkable: x = 1..5, y = [2, 4, 5, 4, 5] -> Sxy = 6, Sxx = 10, Syy = 6,
    # r = 6 / sqrt(60) = 0.7745967
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(0.7745967, abs=1e-7)
    assert math.isnan(pearson([1.0], [2.0]))


def test_summarize_known_answer() -> None:
    s = summarize([2.0, 4.0, 9.0, None, float("nan")])
    assert s.n == 3 and s.mean == 5.0 and s.median == 4.0 and s.min == 2.0 and s.max == 9.0
    assert s.std == pytest.approx(math.sqrt(13.0))
    half = 4.302653 * math.sqrt(13.0) / math.sqrt(3.0)
    assert (s.ci_low, s.ci_high) == pytest.approx((5.0 - half, 5.0 + half), rel=1e-5)
    one = summarize([1.5])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert summarize([]).n == 0
    assert s.fmt() == "5.00 ± 3.61" and one.fmt(100, 1) == "150.0" and summarize([]).fmt() == "-"


def test_pearson_known_answers() -> None:
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # hand-computed: x=[1,2,3], y=[1,3,2] -> cov 0.5, var 1, 1 -> 0.5
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


def test_compare_paired_verdicts() -> None:
    base = {0: 0.80, 1: 0.82, 2: 0.81}
    assert compare_paired({0: 0.85, 1: 0.86, 2: 0.855}, base).verdict == "better"
    assert compare_paired({0: 0.70, 1: 0.71, 2: 0.72}, base).verdict == "worse"
    noisy = compare_paired({0: 0.81, 1: 0.81, 2: 0.82}, base)
    assert noisy.verdict == "within noise" and noisy.diff.ci_low < 0 < noisy.diff.ci_high
    assert compare_paired({0: 0.9}, base).verdict == "n/a"
    # pairing uses only the common seeds
    assert compare_paired({0: 0.9, 7: 0.1}, base).diff.n == 1


def _doc(
    name: str,
    seed: int,
    acc: list[float],
    *,
    policy: dict[str, Any] | None = None,
    grad: list[float] | None = None,
    h: list[float] | None = None,
    nbytes: int = 1000,
) -> dict[str, Any]:
    """A minimal run document with one weight matrix of 100 values and K = 2 workers."""
    n = len(acc)
    grad = grad or [0.1] * n
    h = h or [3.0] * n
    return {
        "key": f"{name}__seed{seed}",
        "seed": seed,
        "status": "ok",
        "setting": {
            "name": name,
            "label": name,
            "policy": policy or {"id": "lossless"},
            "groups": ["baseline"]
            if (policy or {"id": "lossless"})["id"] == "lossless"
            else ["headline"],
            "overrides": {},
            "seeds": None,
        },
        "config": {"init": "glorot-uniform", "l1": 1e-6},
        "entropy_grid": {"F": [0.03, 1.0], "M": [4]},
        "wall_s": 1.0,
        "epochs": [
            {
                "epoch": float(e + 1),
                "test_accuracy": acc[e],
                "quantized_bits_per_param": 8.0,
                "bytes_all_ranks": nbytes,
                "num_values": 100,
                "world_size": 2,
                "layers": [
                    {
                        "name": "w.weight",
                        "N": 8,
                        "H": 2.0,
                        "grad_rms": grad[e],
                        "bits_per_param": 5.0,
                    },
                    {"name": "w.bias", "N": 0, "H": None, "grad_rms": 0.0, "bits_per_param": 1.0},
                ],
                "entropy": {"w.weight": [[h[e], h[e] + 0.01]]},
            }
            for e in range(n)
        ],
    }


def test_run_stats_bits_and_convergence() -> None:
    rs = run_stats(_doc("x", 0, [0.5, 0.9, 0.8], nbytes=1000))
    # 8 * 1000 bytes / (2 workers * 100 values) = 40 bits; ratio 32 / 40
    assert rs.coded_bits_mean == pytest.approx(40.0) and rs.ratio == pytest.approx(0.8)
    assert rs.quantized_bits_mean == 8.0
    assert rs.peak_accuracy == 0.9 and rs.final_accuracy == 0.8
    assert rs.convergence_epoch == 2.0 and not rs.peaked_at_end
    assert list(rs.layers) == ["w.weight"]  # biases are not a "layer" of the paper's figures


def test_layer_correlation_known_answers() -> None:
    g = [0.5, 0.3, 0.2, 0.1]
    h = [1.0 + 2.0 * math.log2(x + 1.0) for x in g]  # exactly linear in log2(G + 1)
    assert layer_correlations(_doc("x", 0, [0.1] * 4, grad=g, h=h))["w.weight"] == pytest.approx(
        1.0
    )
    anti = [5.0 - v for v in h]
    assert layer_correlations(_doc("x", 0, [0.1] * 4, grad=g, h=anti))["w.weight"] == pytest.approx(
        -1.0
    )


def test_analyze_pairs_settings_with_the_baseline() -> None:
    ent = {"id": "entropy", "F": 0.03, "M": 4, "c": 6}
    docs = [
        _doc("baseline", 0, [0.70, 0.80], nbytes=800),
        _doc("baseline", 1, [0.72, 0.81], nbytes=800),
        _doc("baseline", 2, [0.71, 0.79], nbytes=800),
        _doc("entropy-c6-M4", 0, [0.75, 0.85], policy=ent, nbytes=100),
        _doc("entropy-c6-M4", 1, [0.80, 0.86], policy=ent, nbytes=100),
        _doc("entropy-c6-M4", 2, [0.78, 0.845], policy=ent, nbytes=100),
        {"key": "broken__seed0", "epochs": []},
    ]
    a = analyze(docs)
    assert a.baseline == "baseline" and a.problems and a.problems[0][0] == "broken__seed0"
    assert a.target_accuracy == pytest.approx(0.99 * 0.80)
    s = a.settings["entropy-c6-M4"]
    assert s.vs_baseline is not None and s.vs_baseline.verdict == "better"
    assert s.coded_bits.mean == pytest.approx(4.0) and s.ratio.mean == pytest.approx(8.0)
    # target 0.792: seed 1 reaches it at epoch 1, seeds 0 and 2 at epoch 2
    assert s.censored == 3 and s.epochs_to_target.mean == pytest.approx(5 / 3)
    rows = a.headline()
    assert [r["name"] for r in rows] == ["baseline", "entropy-c6-M4"]
    assert rows[1]["paper"]["coded"] == 3.78
    # effective = ratio x baseline convergence / ours = 8 x 2 / 2
    assert rows[1]["effective"] == pytest.approx(8.0)
    assert set(a.correlations) == {"w.weight"}
