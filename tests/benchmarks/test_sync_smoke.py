"""benchmarks/sync.py: its smoke run (P = 2 and 3 ranks, loopback, tiny models) and helpers.

The smoke run (``--quick``) is one subprocess shared by the module: two launches (P = 2,
then 3 gloo ranks, pinned to cores), each measuring the baselines (float32, float16, torch's
PowerSGD), both collectives, both transmit modes and the transformer and single layouts at
20k and 100k parameters, one rep, no warm-up; then the memory measurement at 100k. ~1-3 min
on 2 busy cores, most of it importing torch in each rank and numba's JIT compile. The
tenfold checks skip, with the reason, while ``tenfold.distributed`` is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sync.py"
SMOKE_SIZES = ("20k", "100k")
WORLDS = (2, 3)
REPS = 1
LAYOUTS = ("transformer", "single")
TENFOLD = tuple(
    f"tenfold/{c}/{t}" for t in ("delta", "weights") for c in ("all-gather", "reduce-scatter")
)


def _load_sync() -> ModuleType:
    """Import benchmarks/sync.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tenfold_bench_sync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _tenfold_dist_error() -> str | None:
    try:
        import tenfold  # noqa: F401
        import tenfold.distributed  # noqa: F401
    except Exception as exc:  # not built yet, or broken: say why when skipping
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def smoke() -> dict[str, Any]:
    """The JSON report of ``sync.py --smoke`` (asserts it exited 0)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--reps", str(REPS)],
        capture_output=True,
        text=True,
        timeout=560,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _entries(smoke: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(P, result entry) of every (size, layout) of every launch."""
    return [(run["world_size"], e) for run in smoke["runs"].values() for e in run["results"]]


@pytest.mark.timeout(600)
def test_smoke_report_structure_and_baselines(smoke: dict[str, Any]) -> None:
    assert "--quick" in smoke["command"]
    assert smoke["machine"]["cpu_count"] >= 1
    assert smoke["machine"]["torch"]
    assert list(smoke["runs"]) == [f"loopback/P{p}" for p in WORLDS]
    for p in WORLDS:
        run = smoke["runs"][f"loopback/P{p}"]
        assert run["complete"], run.get("error") or run.get("stopped")
        assert run["world_size"] == p and run["returncodes"] == [0] * p
        assert run["link_check"]["goodput_gbit_per_s_best"] > 0
        cores = run["cores"]
        assert cores["pinned"] and len(cores["core_per_rank"]) == p
        assert cores["cpu_shared"] == (p > cores["usable_cores"])
        # Headline-first order: sizes as given (no 25M here), model layout first.
        assert [(e["size"], e["layout"]) for e in run["results"]] == [
            (s, lay) for s in SMOKE_SIZES for lay in LAYOUTS
        ]
    for p, entry in _entries(smoke):
        n = {"20k": 20_000, "100k": 100_000}[entry["size"]]
        assert entry["num_params"] == n
        assert (len(entry["tensors"]) > 8) == (entry["layout"] == "transformer")
        psgd = entry["methods"]["torch_powersgd"]
        assert psgd["seconds"]["median"] > 0 and psgd["identical_across_ranks"]
        assert psgd["powersgd"]["matrix_approximation_rank"] == 4
        if entry["layout"] == "transformer":  # matrices: PowerSGD sends far fewer values
            assert psgd["bits_per_param"] < 16
        for method, bits in (("float32_all_reduce", 32.0), ("float16_all_reduce", 16.0)):
            m = entry["methods"][method]
            s = m["seconds"]
            assert s["n"] == REPS and len(s["values"]) == REPS
            assert 0 < s["min"] <= s["median"] <= s["max"]
            assert m["bits_per_param"] == bits
            # A ring all_reduce: 2(P-1)/P of the tensor per rank.
            assert m["bytes_sent_per_rank"]["max"] == pytest.approx(2 * (p - 1) / p * bits / 8 * n)
            # An all_reduce leaves the same values on every rank.
            assert m["identical_across_ranks"], m["sha256_per_rank"]
            assert len(m["cpu_seconds"]["per_rank"]) == p
        # float16 rounds each rank's values to 11 significant bits: small but nonzero error.
        err16 = entry["methods"]["float16_all_reduce"]["error_vs_exact_mean"]
        assert 0 < err16["max_abs_relative_to_range"] < 1e-2
        assert entry["ratios"]["float32_over_float16"] > 0
    assert smoke["target"]["evaluated"] is False  # no 25M, no P=4: nothing to judge


@pytest.mark.timeout(600)
def test_smoke_memory_section(smoke: dict[str, Any]) -> None:
    mem = smoke["memory"]
    assert mem["world_size"] == 2 and mem["size"] == 100_000
    assert set(mem["variants"]) >= {"averager", "localsgd", "diloco"}
    why = _tenfold_dist_error()
    if why is not None:
        pytest.skip(f"tenfold.distributed is not importable yet ({why})")
    for name in ("averager", "localsgd", "diloco"):
        v = mem["variants"][name]
        assert "error" not in v, v.get("error")
        assert v["model_bytes"] == 4 * v["num_params"]
        for key in ("steady_x", "steady_trimmed_x", "peak_x"):
            assert v[key] is not None
    assert mem["variants"]["diloco"]["outer_optimizer_state_x"] == pytest.approx(1.0)
    assert {"localsgd", "diloco"} <= set(mem["targets"])


@pytest.mark.timeout(600)
def test_smoke_tenfold_every_variant_agrees_across_ranks(smoke: dict[str, Any]) -> None:
    why = _tenfold_dist_error()
    if why is not None:
        pytest.skip(f"tenfold.distributed is not importable yet ({why})")
    for run in smoke["runs"].values():
        assert run["tenfold"]["available"], run["tenfold"].get("error")
        assert run["tenfold"]["jit_compile"]["first_call_seconds_max_over_ranks"] > 0
        policies = run["tenfold"]["policies"]
        assert policies["delta"]["bits_per_param"] == 1.0  # the trainer's DEFAULT_RATE
    for p, entry in _entries(smoke):
        n = entry["num_params"]
        for method in TENFOLD:
            m = entry["methods"][method]
            assert m["identical_across_ranks"], m["sha256_per_rank"]
            assert len(m["sha256_per_rank"]) == p
            assert 0 < m["bits_per_param"] < 32
            if m["transmit"] == "delta":  # TargetRate(1.0), headers included on tiny models
                assert m["bits_per_param"] < 2.5
            sent = m["bytes_sent_per_rank"]
            assert len(sent["per_rank"]) == p and sent["max"] > 0
            values = m["values_per_rank"]
            assert len(values["decoded"]) == p
            if m["collective"] == "all-gather":
                assert values["decoded_max"] == p * n
            else:
                assert 2 * n <= values["decoded_max"] <= 3 * n
            # Lossy, but an average of the right weights: far below the weights' own spread.
            err = m["error_vs_exact_mean"]
            assert 0 < err["max_abs_relative_to_range"] < 0.05
            assert err["rms_relative_to_weights_rms"] < 0.15
            cpu = m["cpu_seconds"]
            assert cpu["sum_over_ranks_median"] >= cpu["per_rank_max_median"] > 0
            if "phases_cpu_seconds_per_rank" in m:  # once SyncStats reports CPU per phase
                phase_cpu = m["phases_cpu_seconds_per_rank"]
                assert all(len(phase_cpu[ph]) == p for ph in ("encode", "decode", "other"))
            phases = m["phases_seconds"]
            for phase in ("encode", "comm", "decode"):  # and whatever else SyncStats adds
                assert phases[phase]["median"] >= 0
                assert len(phases["per_rank"][phase]) == p
            assert entry["ratios"][method]["float32_over_tenfold"] > 0
            assert entry["ratios"][method]["powersgd_over_tenfold"] > 0
            assert entry["per_phase_model"][method] is None  # off unless --model
    rows = smoke["summary"]
    assert len(rows) == len(WORLDS) * len(SMOKE_SIZES) * len(LAYOUTS) * len(TENFOLD)
    scaling = smoke["scaling_vs_P"]
    assert {tuple(g["P"]) for g in scaling} == {WORLDS}
    for g in scaling:
        if "all-gather" in g["method"]:  # all-gather decodes P n per rank: grows with P
            assert g["values_decoded_per_rank_over_n"] == [float(p) for p in WORLDS]


# ---- pure helpers (in-process, fast) -------------------------------------------------------


def test_model_layout_sums_to_the_size_and_weights_are_per_rank() -> None:
    sync = _load_sync()
    for p in (20_000, 100_000, 1_000_000, 25_000_000):
        layout = sync.model_layout(p)
        assert sum(math.prod(shape) for _, shape in layout) == p
        assert len(layout) == 8
    a0 = dict(sync.make_weights(20_000, rank=0, seed=0))
    a0_again = dict(sync.make_weights(20_000, rank=0, seed=0))
    a1 = dict(sync.make_weights(20_000, rank=1, seed=0))
    w0, w1 = a0["layer0.weight"], a1["layer0.weight"]
    assert w0.dtype.name == "float32"
    assert (a0_again["layer0.weight"] == w0).all()
    # Ranks share the bulk and differ by a small drift (correlated, not identical).
    assert not (w0 == w1).all()
    assert abs(w0 - w1).mean() < 0.5 * abs(w0).mean()
    # Rare outliers stretch the range well beyond the bulk.
    assert abs(w0).max() > 8 * abs(w0).std()


def test_config_validation_names_the_field() -> None:
    sync = _load_sync()
    with pytest.raises(ValueError, match="world_sizes"):
        sync.BenchConfig(world_sizes=(1,))
    with pytest.raises(ValueError, match="collectives"):
        sync.BenchConfig(collectives=("ring",))
    with pytest.raises(ValueError, match="transmits"):
        sync.BenchConfig(transmits=())
    with pytest.raises(ValueError, match="layouts"):
        sync.BenchConfig(layouts=("model", "model"))
    with pytest.raises(ValueError, match="networks"):
        sync.BenchConfig(networks=("wifi",))
    with pytest.raises(ValueError, match="reps"):
        sync.BenchConfig(reps=0)
    with pytest.raises(ValueError, match="rate"):
        sync.netns.LinkShape(rate="fast")
    args = sync.build_parser().parse_args(["--smoke"])
    cfg = sync.config_from_args(args)
    assert cfg.networks == ("loopback",) and max(cfg.sizes) <= 100_000
    assert cfg.world_sizes == (2, 3) and cfg.reps == 1
    args = sync.build_parser().parse_args(
        ["--world-sizes", "2,4,8", "--collectives", "reduce-scatter", "--transmit", "delta"]
    )
    cfg = sync.config_from_args(args)
    assert cfg.world_sizes == (2, 4, 8) and cfg.collectives == ("reduce-scatter",)
    assert cfg.transmits == ("delta",) and cfg.layouts == ("transformer", "model", "single")
    assert cfg.rates == ("1gbit",) and cfg.pin and cfg.powersgd_rank == 4 and not cfg.model
    # The headline (P=2) runs first; per network the headline rate first, loopback once.
    assert [p for _, _, p in cfg.launches()][:3] == [2, 2, 2]
    args = sync.build_parser().parse_args(
        ["--networks", "loopback,switch", "--rates", "100mbit,1gbit,10gbit", "--world-sizes", "2"]
    )
    cfg = sync.config_from_args(args)
    assert cfg.launches() == [
        ("loopback", None, 2), ("switch", "1gbit", 2), ("switch", "100mbit", 2),
        ("switch", "10gbit", 2),
    ]  # fmt: skip
    assert sync.run_key("switch", 2, "10gbit") == "switch@10gbit/P2"
    assert sync.run_key("loopback", 2) == "loopback/P2"
    # tbf's bucket holds at least 2 ms of the rate above 1 Gbit/s
    assert cfg.shape_for("1gbit").burst == "256kb"
    assert cfg.shape_for("10gbit").burst == "2441kb"
    assert sync.plan_order("bus", [1_000_000, 25_000_000], ["model", "single"])[0] == (
        25_000_000,
        "single",
    )
    assert sync.plan_order("switch", [25_000_000], ["single", "model"])[0] == (25_000_000, "model")


def test_transformer_layout_is_gpt_shaped_and_sums_to_about_the_size() -> None:
    sync = _load_sync()
    for n in (20_000, 100_000, 1_000_000, 25_000_000):
        layout = sync.transformer_layout(n)
        d = layout[0][1][1]
        assert abs(sum(math.prod(shape) for _, shape in layout) - n) < d
        names = [name for name, _ in layout]
        assert "h0.attn.c_attn.weight" in names and names[-1] == "ln_f.bias"
    w = dict(sync.make_weights(20_000, rank=1, seed=0, layout="transformer"))
    assert abs(float(w["h0.ln_1.weight"].mean()) - 1.0) < 0.01  # layer-norm gains near 1


def test_shared_model_is_the_drift_free_part_and_single_is_the_same_values() -> None:
    sync = _load_sync()
    shared0 = dict(sync.make_weights(20_000, rank=0, seed=0, drift=False))
    shared1 = dict(sync.make_weights(20_000, rank=1, seed=0, drift=False))
    local = dict(sync.make_weights(20_000, rank=1, seed=0))
    for name, w in shared0.items():
        assert (w == shared1[name]).all()  # identical on every rank
        assert abs(local[name] - w).mean() < 0.5 * abs(w).mean()  # a small drift
    flat = sync.make_weights(20_000, rank=1, seed=0, layout="single")
    assert [n for n, _ in flat] == ["flat"] and flat[0][1].size == 20_000
    assert (flat[0][1][:100] == local["layer0.weight"].reshape(-1)[:100]).all()
    assert sync.computed_values("all-gather", "delta", 4, 1000) == (1000, 4000)
    assert sync.computed_values("reduce-scatter", "weights", 4, 1000) == (1250, 2000)


def test_bad_usage_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--networks", "wifi"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "networks" in done.stderr


def test_aggregation_takes_max_over_ranks_then_median_over_reps() -> None:
    sync = _load_sync()
    cfg = sync.BenchConfig(
        world_sizes=(2,), sizes=(1000,), networks=("loopback",), reps=3, layouts=("model",)
    )
    topo = sync.netns.loopback(2)

    def rank(r: int, secs: list[float]) -> list[dict[str, Any]]:
        recs: list[dict[str, Any]] = [
            {"kind": "tenfold", "available": False, "error": "test"},
            {"kind": "model", "size": 1000, "layout": "model", "num_params": 1000, "tensors": []},
        ]
        for i, s in enumerate(secs):
            for method in ("float32_all_reduce", "float16_all_reduce"):
                recs.append(
                    {
                        "kind": "rep",
                        "size": 1000,
                        "layout": "model",
                        "method": method,
                        "rep": i,
                        "warmup": False,
                        "seconds": s if method == "float32_all_reduce" else s / 2,
                        "tx_bytes": None,
                    }
                )
        return [*recs, {"kind": "done"}]

    ranks = [rank(0, [1.0, 5.0, 2.0]), rank(1, [3.0, 1.0, 2.5])]
    out = sync.aggregate_network(ranks, topology=topo, cfg=cfg, network="loopback", world_size=2)
    s = out["results"][0]["methods"]["float32_all_reduce"]["seconds"]
    assert s["values"] == [3.0, 5.0, 2.5]  # max over the two ranks, per rep
    assert (s["median"], s["min"], s["max"]) == (3.0, 2.5, 5.0)
    assert out["results"][0]["ratios"]["float32_over_float16"] == pytest.approx(2.0)
    assert not any(m.startswith("tenfold") for m in out["results"][0]["methods"])
    assert out["complete"]


def test_target_verdicts_come_from_the_numbers() -> None:
    sync = _load_sync()
    cfg = sync.BenchConfig(world_sizes=(2,), sizes=(25_000_000,), networks=("switch", "bus"))

    def row(network: str, layout: str, collective: str, f32: float, f16: float) -> dict:
        return {
            "network": network,
            "rate": "1gbit",
            "world_size": 2,
            "size": "25M",
            "transmit": "delta",
            "layout": layout,
            "collective": collective,
            "tenfold_s": 1.0,
            "float32_s": f32,
            "float16_s": f16,
            "float32_over_tenfold": f32,
            "float16_over_tenfold": f16,
            "float32_over_tenfold_model": None,
            "float16_over_tenfold_model": None,
        }

    report = {
        "summary": [
            row("switch", "model", "all-gather", 5.0, 2.5),  # misses both
            row("switch", "model", "reduce-scatter", 6.5, 3.2),  # meets both
            row("switch", "single", "reduce-scatter", 7.0, 2.9),  # misses fp16
            row("bus", "single", "reduce-scatter", 9.0, 9.0),  # issue 19 judges the switch
            {**row("switch", "model", "reduce-scatter", 9.0, 9.0), "rate": "10gbit"},  # not 1G
        ]
    }
    out = sync._target(report, cfg)
    assert out["evaluated"]
    assert [c["met"] for c in out["switch"]["cases"]] == [False, True, False]
    assert out["switch"]["met"] is True
    assert "bus" not in out
    assert sync._target(report, sync.BenchConfig(world_sizes=(4,)))["evaluated"] is False
