"""benchmarks/sync.py: its smoke run (4 ranks, loopback, tiny models) and its pure helpers.

The smoke run is one subprocess shared by the module (it starts 4 gloo ranks, ~5-20 s on
2 cores, most of it importing torch and, on a cold cache, numba's JIT compile). The tenfold
checks skip, with the reason, while ``tenfold.distributed`` is not importable.
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
WORLD = 4
REPS = 2


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
        [sys.executable, str(SCRIPT), "--smoke", "--world-size", str(WORLD), "--reps", str(REPS)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(300)
def test_smoke_report_structure_and_baselines(smoke: dict[str, Any]) -> None:
    assert "--smoke" in smoke["command"]
    assert smoke["machine"]["cpu_count"] >= 1
    assert smoke["machine"]["torch"]
    assert list(smoke["networks"]) == ["loopback"]
    net = smoke["networks"]["loopback"]
    assert net["complete"], net.get("error") or net.get("stopped")
    assert net["returncodes"] == [0] * WORLD
    assert net["link_check"]["goodput_gbit_per_s_best"] > 0
    assert [e["size"] for e in net["results"]] == list(SMOKE_SIZES)
    for entry in net["results"]:
        assert entry["num_params"] == {"20k": 20_000, "100k": 100_000}[entry["size"]]
        for method, bits in (("float32_all_reduce", 32.0), ("float16_all_reduce", 16.0)):
            m = entry["methods"][method]
            s = m["seconds"]
            assert s["n"] == REPS and len(s["values"]) == REPS
            assert 0 < s["min"] <= s["median"] <= s["max"]
            assert m["bits_per_param"] == bits
            assert m["bytes_sent_per_rank"]["max"] == bits / 8 * entry["num_params"]
            # An all_reduce leaves the same values on every rank.
            assert m["identical_across_ranks"], m["sha256_per_rank"]
        # float16 rounds each rank's values to 11 significant bits: small but nonzero error.
        err16 = entry["methods"]["float16_all_reduce"]["error_vs_exact_mean"]
        assert 0 < err16["max_abs_relative_to_range"] < 1e-2
        assert entry["ratios"]["float32_over_float16"] > 0
    rows = smoke["summary"]
    assert [(r["network"], r["size"]) for r in rows] == [("loopback", s) for s in SMOKE_SIZES]


@pytest.mark.timeout(300)
def test_smoke_tenfold_weights_agree_across_ranks(smoke: dict[str, Any]) -> None:
    why = _tenfold_dist_error()
    if why is not None:
        pytest.skip(f"tenfold.distributed is not importable yet ({why})")
    net = smoke["networks"]["loopback"]
    assert net["tenfold"]["available"], net["tenfold"].get("error")
    assert net["tenfold"]["jit_compile"]["first_call_seconds_max_over_ranks"] > 0
    for entry in net["results"]:
        m = entry["methods"]["tenfold"]
        shas = m["sha256_per_rank"]
        assert len(shas) == WORLD and len(set(shas)) == 1, shas
        assert m["identical_across_ranks"]
        assert 0 < m["bits_per_param"] < 32
        assert m["bytes_sent_per_rank"]["max"] * 8 == pytest.approx(
            m["bits_per_param"] * entry["num_params"], rel=0.5
        )
        # Lossy, but an average of the right weights: far below the weights' own spread.
        err = m["error_vs_exact_mean"]
        assert 0 < err["max_abs_relative_to_range"] < 0.05
        assert err["rms_relative_to_weights_rms"] < 0.1
        cpu = m["cpu_seconds"]
        assert cpu["sum_over_ranks_median"] >= cpu["per_rank_max_median"] > 0
        assert cpu["floor_seconds_here"] > 0
        phases = m["phases_seconds"]
        for phase in ("encode", "comm", "decode"):
            assert phases[phase]["median"] >= 0
        assert entry["ratios"]["float32_over_tenfold"] > 0
        model = entry["per_phase_model"]
        assert model is not None and model["label"].startswith("MODEL")
        assert model["tenfold_seconds_model"] == pytest.approx(
            model["encode_seconds_one_rank_alone"]
            + model["comm_seconds_exchange_alone"]
            + model["decode_seconds_one_rank_alone"]
        )


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
    with pytest.raises(ValueError, match="world_size"):
        sync.BenchConfig(world_size=1)
    with pytest.raises(ValueError, match="networks"):
        sync.BenchConfig(networks=("wifi",))
    with pytest.raises(ValueError, match="reps"):
        sync.BenchConfig(reps=0)
    with pytest.raises(ValueError, match="rate"):
        sync.netns.LinkShape(rate="fast")
    args = sync.build_parser().parse_args(["--smoke"])
    cfg = sync.config_from_args(args)
    assert cfg.networks == ("loopback",) and max(cfg.sizes) <= 100_000


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
    cfg = sync.BenchConfig(world_size=2, sizes=(1000,), networks=("loopback",), reps=3)
    topo = sync.netns.loopback(2)

    def rank(r: int, secs: list[float]) -> list[dict[str, Any]]:
        recs: list[dict[str, Any]] = [
            {"kind": "tenfold", "available": False, "error": "test"},
            {"kind": "model", "size": 1000, "num_params": 1000, "tensors": []},
        ]
        for i, s in enumerate(secs):
            for method in ("float32_all_reduce", "float16_all_reduce"):
                recs.append(
                    {
                        "kind": "rep",
                        "size": 1000,
                        "method": method,
                        "rep": i,
                        "warmup": False,
                        "seconds": s if method == "float32_all_reduce" else s / 2,
                        "tx_bytes": None,
                    }
                )
        return [*recs, {"kind": "done"}]

    ranks = [rank(0, [1.0, 5.0, 2.0]), rank(1, [3.0, 1.0, 2.5])]
    out = sync.aggregate_network(ranks, topology=topo, cfg=cfg)
    s = out["results"][0]["methods"]["float32_all_reduce"]["seconds"]
    assert s["values"] == [3.0, 5.0, 2.5]  # max over the two ranks, per rep
    assert (s["median"], s["min"], s["max"]) == (3.0, 2.5, 5.0)
    assert out["results"][0]["ratios"]["float32_over_float16"] == pytest.approx(2.0)
    assert "tenfold" not in out["results"][0]["methods"]
    assert out["complete"]
