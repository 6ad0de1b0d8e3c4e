"""benchmarks/scaling.py: the cost model's fit recovers known constants from synthetic data.

Synthetic "measurements" are made by the model itself with chosen constants (a, c, lam)
over several P, n and both topologies; the fit must give the constants back, the
break-even rate must be where the two predicted times cross, and the command line must
turn a synthetic sync.py report into JSON, markdown and figures.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaling.py"
GBIT = 1e9 / 8  # bytes/s of 1 Gbit/s


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenfold_bench_scaling", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


sc = _load()

# Known constants: 20 ns/value on one core, 80% link efficiency, 150 us per step.
A, C, LAM = 20e-9, 1.25, 150e-6
CORES = 2


def _points(method: str, *, bits: float | None = 1.2, with_cpu: bool = False) -> list[Any]:
    """Exact model times over P in {2, 4, 8}, n in {1M, 25M}, switch and bus."""
    pts = []
    for network in ("switch", "bus"):
        for p in (2, 4, 8):
            for n in (1_000_000, 25_000_000):
                v = sc.model_values(method, p, n)
                b = sc.model_bytes(method, p, n, bits)
                pt = sc.Point(
                    method=method,
                    network=network,
                    world_size=p,
                    num_params=n,
                    num_tensors=8,
                    rate_bytes_per_s=GBIT,
                    cores=CORES,
                    values_per_rank=v,
                    bytes_per_rank=b,
                    seconds=1.0,
                    codec_cpu_seconds=A * v if with_cpu else None,
                )
                row = sc.design_row(pt)
                t = A * row[0] + C * row[1] + LAM * row[2]
                pts.append(sc.Point(**{**pt.__dict__, "seconds": t}))
    return pts


@pytest.mark.parametrize(
    "method", ["float32_all_reduce", "tenfold/all-gather/delta", "tenfold/reduce-scatter/delta"]
)
def test_least_squares_recovers_known_constants(method: str) -> None:
    bits = None if method in sc.BASELINES else 1.2
    fit = sc.fit_method(_points(method, bits=bits), bits, codec="fit")
    assert fit.codec_seconds_per_value == pytest.approx(A, rel=1e-6)
    assert fit.link_factor == pytest.approx(C, rel=1e-6)
    assert fit.latency_seconds_per_step == pytest.approx(LAM, rel=1e-6)
    assert fit.rel_rms_residual < 1e-9
    assert fit.link_efficiency == pytest.approx(1 / C)
    assert fit.values_per_second_per_core == pytest.approx(1 / A)
    assert fit.codec_source == "least squares"


def test_measured_codec_clock_gives_a_and_the_rest_is_fitted() -> None:
    pts = _points("tenfold/reduce-scatter/delta", with_cpu=True)
    fit = sc.fit_method(pts, 1.2)  # codec="cpu" is the default
    assert fit.codec_source == "measured CPU clock"
    assert fit.codec_seconds_per_value == pytest.approx(A, rel=1e-9)
    assert fit.link_factor == pytest.approx(C, rel=1e-6)
    assert fit.latency_seconds_per_step == pytest.approx(LAM, rel=1e-6)


def test_noise_moves_the_constants_only_a_little() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    pts = [
        sc.Point(**{**p.__dict__, "seconds": p.seconds * (1 + rng.normal(0, 0.02))})
        for p in _points("float32_all_reduce", bits=None)
    ]
    fit = sc.fit_method(pts, None, codec="fit")
    assert fit.codec_seconds_per_value == pytest.approx(A, rel=0.15)
    assert fit.link_factor == pytest.approx(C, rel=0.15)
    assert 0.01 < fit.rel_rms_residual < 0.05


def test_link_factor_is_never_below_one() -> None:
    # Times faster than the nominal link allows (c = 0.5) still give c >= 1.
    pts = []
    for p in _points("float32_all_reduce", bits=None):
        row = sc.design_row(p)
        pts.append(sc.Point(**{**p.__dict__, "seconds": A * row[0] + 0.5 * row[1]}))
    assert sc.fit_method(pts, None, codec="fit").link_factor >= 1.0


def test_protocol_counts() -> None:
    n = 1000
    assert sc.model_values("tenfold/all-gather/weights", 4, n) == n + 4 * n
    assert sc.model_values("tenfold/reduce-scatter/weights", 4, n) == n + n / 4 + 2 * n
    assert sc.model_values("tenfold/reduce-scatter/delta", 4, n) == pytest.approx(
        n + n / 4 + 2 * n + 0.75 * n
    )
    assert sc.model_bytes("float32_all_reduce", 4, n, None) == 1.5 * 4 * n
    assert sc.model_bytes("tenfold/all-gather/delta", 4, n, 8.0) == 3 * n
    assert sc.model_bytes("tenfold/reduce-scatter/delta", 4, n, 8.0) == 1.5 * n
    assert sc.steps("float32_all_reduce", 4, num_tensors=8) == 48
    assert sc.steps("tenfold/all-gather/delta", 4) == 3
    assert sc.steps("tenfold/reduce-scatter/delta", 4) == 6
    assert sc.link_bytes("bus", 4, 10.0) == 40.0 and sc.link_bytes("switch", 4, 10.0) == 10.0
    assert sc.parse_rate("1gbit") == GBIT and sc.parse_rate("100mbit") == 12.5e6
    assert sc.parse_rate(None) is None and sc.parse_rate("fast") is None


def test_break_even_is_where_the_predictions_cross() -> None:
    tf = sc.Fit("tenfold/reduce-scatter/delta", 20e-9, 1.2, 100e-6, 1.0, 1, 0.0)
    base = sc.Fit("float32_all_reduce", 1e-9, 1.1, 50e-6, None, 1, 0.0)
    p, n = 64, 25e6
    be = sc.break_even_rate(tf, base, p, n)
    assert be["verdict"] == "pays below"
    r = be["rate_bytes_per_s"]
    t_tf = sc.predict(tf, p, n, r)["total_s"]
    t_b = sc.predict(base, p, n, r)["total_s"]
    assert t_tf == pytest.approx(t_b, rel=1e-9)
    assert sc.predict(tf, p, n, r / 2)["total_s"] < sc.predict(base, p, n, r / 2)["total_s"]
    # A faster codec moves the break-even rate up.
    assert sc.break_even_rate(tf, base, p, n, codec_speedup=10)["rate_bytes_per_s"] > r


def _report() -> dict[str, Any]:
    """A minimal sync.py report whose rows follow the model with the known constants."""
    rows, runs = [], {}
    for network in ("switch", "bus"):
        for p in (2, 4, 8):
            run: dict[str, Any] = {"network": network, "world_size": p, "results": []}
            for n in (1_000_000, 25_000_000):
                run["results"].append({"num_params": n, "layout": "model", "tensors": [[]] * 8})
                base_t = {}
                for b in sc.BASELINES:
                    (pt,) = [
                        q
                        for q in _points(b, bits=None)
                        if q.network == network and q.world_size == p and q.num_params == n
                    ]
                    base_t[b] = pt.seconds
                for method in ("tenfold/all-gather/delta", "tenfold/reduce-scatter/delta"):
                    (pt,) = [
                        q
                        for q in _points(method, with_cpu=True)
                        if q.network == network and q.world_size == p and q.num_params == n
                    ]
                    enc, dec = sc.model_values(method, p, n) - p * n, p * n
                    if "reduce-scatter" in method:
                        enc = n + n / p
                        dec = pt.values_per_rank - enc
                    rows.append(
                        {
                            "network": network,
                            "world_size": p,
                            "usable_cores": CORES,
                            "rate": "1gbit",
                            "num_params": n,
                            "layout": "model",
                            "method": method,
                            "tenfold_s": pt.seconds,
                            "tenfold_model_s": None,
                            "float32_s": base_t["float32_all_reduce"],
                            "float16_s": base_t["float16_all_reduce"],
                            "bits_per_param": 1.2,
                            "bytes_sent_per_rank_max": pt.bytes_per_rank,
                            "values_encoded_per_rank_max": enc,
                            "values_decoded_per_rank_max": dec,
                            "phases_cpu_s_max_over_ranks": {
                                "encode": A * enc,
                                "decode": A * dec,
                                "other": 0.0,
                            },
                        }
                    )
            runs[f"{network}/P{p}"] = run
    return {"command": "synthetic", "started": "now", "machine": {"usable_cores": CORES},
            "runs": runs, "summary": rows}  # fmt: skip


def test_analyse_a_synthetic_report_recovers_the_constants() -> None:
    out = sc.analyse(
        _report(),
        params=25_000_000,
        world_sizes=[64, 1024],
        rates_gbit=[1, 10, 100],
        step_seconds=0.5,
        fit_to="measured",
    )
    for method, f in out["fits"].items():
        assert f["codec_seconds_per_value"] == pytest.approx(A, rel=1e-6), method
        assert f["link_factor"] == pytest.approx(C, rel=1e-6), method
        assert f["latency_seconds_per_step"] == pytest.approx(LAM, rel=1e-6), method
    assert len(out["extrapolation"]) == 6
    row = out["extrapolation"][0]
    tf = row["methods"]["tenfold/reduce-scatter/delta"]
    assert tf["speedup"]["float32_all_reduce"] == pytest.approx(
        row["methods"]["float32_all_reduce"]["total_s"] / tf["total_s"]
    )
    # Fewer syncs: every speed-up tends to 1 as k grows (the sync's share vanishes).
    by_k = {
        f["sync_every"]: f["end_to_end_speedup"]
        for f in out["fewer_syncs"]
        if f["P"] == 64 and f["rate_gbit"] == 1 and f["baseline"] == "float32_all_reduce"
        and f["method"] == "tenfold/reduce-scatter/delta"
    }  # fmt: skip
    assert abs(by_k[100] - 1) < abs(by_k[1] - 1)


def test_command_line_markdown_json_and_figures(tmp_path: Path) -> None:
    src = tmp_path / "sync.json"
    src.write_text(json.dumps(_report()))
    assert sc.main(["--from", str(src), "--figures", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "scaling_speedup.png").stat().st_size > 0
    assert (tmp_path / "fig" / "scaling_break_even.png").stat().st_size > 0
    assert (tmp_path / "fig" / "sync_vs_link.png").stat().st_size > 0


def test_gpu_node_prediction_overlaps_and_divides_the_codec() -> None:
    fit = sc.Fit("tenfold/reduce-scatter/delta", A, C, LAM, 1.0, 3, 0.0)
    base = sc.Fit("float32_all_reduce", A, C, LAM, None, 3, 0.0)
    r = 1e9 / 8
    cpu = sc.predict(fit, 2, 25e6, r)
    gpu = sc.predict_gpu_node(fit, 2, 25e6, r, free_cores=8)
    assert gpu["codec_s"] == pytest.approx(cpu["codec_s"] / 8)
    assert gpu["total_s"] == pytest.approx(max(gpu["codec_s"], gpu["link_s"]) + gpu["latency_s"])
    assert sc.predict_gpu_node(base, 2, 25e6, r, free_cores=8) == sc.predict(base, 2, 25e6, r)
    sweep = sc.link_sweep({fit.method: fit, base.method: base}, [], params=25e6, free_cores=8)
    assert set(sweep["model_s"]) == {"0.1", "1", "10", "100"}
    stops = sweep["stops_paying_gbit"][fit.method]
    if stops["cpu_model"] is not None and stops["gpu_node"] is not None:
        assert stops["gpu_node"] >= stops["cpu_model"]  # free cores move the point up


def test_markdown_names_its_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "sync.json"
    src.write_text(json.dumps(_report()))
    assert sc.main(["--from", str(src), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert f"python benchmarks/scaling.py --from {src} --markdown" in text
    assert "| tenfold/reduce-scatter/delta |" in text and "Where compression stops" in text


def test_an_old_report_is_refused_with_a_reason(tmp_path: Path) -> None:
    src = tmp_path / "old.json"
    src.write_text(json.dumps({"summary": [{"network": "switch", "size": "25M"}]}))
    assert sc.main(["--from", str(src)]) == 2
