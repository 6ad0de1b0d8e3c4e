"""The resumable sweep: one JSON file per run, reruns skip finished runs, failures are kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paper.profiles import Profile, entropy_setting, fixed_setting, lossless_setting
from paper.sweep import (
    RUN_FORMAT,
    entropy_grid,
    is_finished,
    load_data,
    load_runs,
    predict_wall_seconds,
    run_path,
    run_sweep,
    train_run,
    write_json_atomic,
)


def tiny_profile(data: Path, **changes: object) -> Profile:
    fields: dict[str, object] = {
        "name": "tiny",
        "description": "test",
        "epochs": 2,
        "seeds": (0, 1),
        "settings": (lossless_setting(), entropy_setting(c=6, M=4, groups=("headline",))),
        "data_dir": str(data),
        "train": {"batch_size": 8},
        "entropy_F": (0.1, 1.0),
        "entropy_M": (2, 4),
    }
    fields.update(changes)
    return Profile(**fields)  # type: ignore[arg-type]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def test_entropy_grid_known_answers() -> None:
    w = {
        "uniform": np.linspace(-1.0, 1.0, 4096, dtype=np.float32),
        "constant": np.full((3, 4), 0.5, dtype=np.float32),
        "two": np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float64),
    }
    g = entropy_grid(w, [1.0], [2, 4], seed=0)
    assert g["uniform"] == [[pytest.approx(2.0)], [pytest.approx(4.0)]]
    assert g["constant"] == [[0.0], [0.0]]
    assert g["two"] == [[pytest.approx(1.0)], [pytest.approx(1.0)]]
    # a sample (F < 1) is seeded: same seed, same estimate
    x = {"x": np.random.default_rng(1).normal(size=10_000).astype(np.float32)}
    assert entropy_grid(x, [0.05], [6], seed=3) == entropy_grid(x, [0.05], [6], seed=3)


def test_run_document_contents(tiny_dir: Path) -> None:
    spec = tiny_profile(tiny_dir).runs()[1]  # entropy-c6-M4, seed 0
    doc = train_run(spec, load_data(spec))
    assert doc["format"] == RUN_FORMAT and doc["status"] == "ok" and doc["key"] == spec.key
    assert doc["config"] == spec.config.to_dict()
    assert doc["data"]["train_images"] == 200 and doc["data"]["test_images"] == 50
    assert [r["epoch"] for r in doc["epochs"]] == [1.0, 2.0]
    rec = doc["epochs"][-1]
    assert 0.0 <= rec["test_accuracy"] <= 1.0
    assert set(rec["entropy"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    h = rec["entropy"]["fc1.weight"]  # [M index][F index]
    assert len(h) == 2 and len(h[0]) == 2 and 0 < h[0][1] <= 2.0 + 1e-9 < h[1][1] <= 4.0 + 1e-9
    # the codec's own H(F=0.03, M=4) on rank 0's pre-average weights is bounded the same way
    assert all(0 < layer["H"] <= 4 for layer in rec["layers"] if layer["name"].endswith("weight"))
    json.dumps(doc, allow_nan=False)  # strictly JSON-safe
    # deterministic: the same run again gives the same metrics (timings aside)
    again = train_run(spec, load_data(spec))
    for key in ("test_accuracy", "bytes_all_ranks", "entropy", "quantized_bits_per_param"):
        assert [r[key] for r in again["epochs"]] == [r[key] for r in doc["epochs"]], key


def test_sweep_saves_each_run_and_a_rerun_skips_them(tiny_dir: Path, tmp_path: Path) -> None:
    profile = tiny_profile(tiny_dir)
    out = tmp_path / "sweep"
    first = run_sweep(profile, out, progress=False, command="first")
    assert (first.total, first.skipped, first.ran, first.failed) == (4, 0, 4, [])
    files = sorted(p.name for p in (out / "runs").glob("*"))
    assert files == [
        "baseline__seed0.json",
        "baseline__seed1.json",
        "entropy-c6-M4__seed0.json",
        "entropy-c6-M4__seed1.json",
    ]  # no temp files left behind
    assert all(is_finished(out, s) for s in profile.runs())
    before = _mtimes(out)

    second = run_sweep(profile, out, progress=False, command="second")
    assert (second.ran, second.skipped) == (0, 4)
    assert _mtimes(out) == before  # nothing rewritten

    run_path(out, "baseline__seed1").unlink()
    third = run_sweep(profile, out, progress=False)
    assert (third.ran, third.skipped) == (1, 3)

    # a changed configuration makes the old files stale: they are run again
    longer = tiny_profile(tiny_dir, epochs=3)
    assert not any(is_finished(out, s) for s in longer.runs())
    fourth = run_sweep(longer, out, progress=False)
    assert fourth.ran == 4 and all(len(d["epochs"]) == 3 for d in load_runs(out))

    meta = json.loads((out / "sweep.json").read_text())
    # the 3-epoch profile is another configuration: its sessions start afresh
    assert [s["ran"] for s in meta["earlier_sessions"]] == [4, 0, 1]
    assert [s["ran"] for s in meta["sessions"]] == [4]
    assert meta["earlier_sessions"][0]["command"] == "first" and meta["machine"]["cores"] >= 1
    assert meta["profile"]["epochs"] == 3


def test_a_failing_run_is_reported_not_saved(tiny_dir: Path, tmp_path: Path) -> None:
    # 400 workers cannot share 200 training images: make_workers raises in every run
    profile = tiny_profile(
        tiny_dir,
        settings=(lossless_setting(), fixed_setting(8)),
        seeds=(0,),
        train={"workers": 400},
    )
    result = run_sweep(profile, tmp_path, progress=False)
    assert [k for k, _ in result.failed] == ["baseline__seed0", "fixed-N08__seed0"]
    assert "400 workers" in result.failed[0][1]
    assert load_runs(tmp_path) == []


def test_load_runs_skips_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "half.json").write_text('{"format": ')
    write_json_atomic(tmp_path / "runs" / "other.json", {"format": "something-else"})
    write_json_atomic(tmp_path / "runs" / "ok.json", {"format": RUN_FORMAT, "key": "ok"})
    assert [d["key"] for d in load_runs(tmp_path)] == ["ok"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "half.json",
        "ok.json",
        "other.json",
    ]


def test_predict_wall_seconds_counts_waves_of_remaining_runs(
    tiny_dir: Path, tmp_path: Path
) -> None:
    profile = tiny_profile(tiny_dir, seeds=(0, 1, 2))  # 6 runs x 2 epochs
    assert predict_wall_seconds(profile, 1.5, jobs=1) == pytest.approx(6 * 2 * 1.5)
    assert predict_wall_seconds(profile, 1.5, jobs=4) == pytest.approx(2 * 2 * 1.5)  # 2 waves
    spec = profile.runs()[0]
    write_json_atomic(run_path(tmp_path, spec.key), train_run(spec, load_data(spec)))
    assert predict_wall_seconds(profile, 1.5, jobs=1, out_dir=tmp_path) == pytest.approx(5 * 3.0)


def test_two_jobs_give_the_same_results_as_one(tiny_dir: Path, tmp_path: Path) -> None:
    profile = tiny_profile(tiny_dir)
    run_sweep(profile, tmp_path / "one", jobs=1, progress=False)
    result = run_sweep(profile, tmp_path / "two", jobs=2, progress=False)
    assert result.ran == 4 and not result.failed
    one = {d["key"]: d for d in load_runs(tmp_path / "one")}
    two = {d["key"]: d for d in load_runs(tmp_path / "two")}
    assert one.keys() == two.keys()
    for key in one:
        for field in ("test_accuracy", "bytes_all_ranks", "entropy"):
            assert [r[field] for r in one[key]["epochs"]] == [r[field] for r in two[key]["epochs"]]


def test_the_committed_run_files_have_this_format() -> None:
    """results/ must stay readable by --report-only: every committed run file is RUN_FORMAT."""
    root = Path(__file__).resolve().parents[2] / "results"
    files = sorted(root.glob("runs/*.json")) + sorted(root.glob("long/runs/*.json"))
    if not files:
        pytest.skip("no committed results/ in this checkout")
    formats = {json.loads(f.read_text()).get("format") for f in files}
    assert formats == {RUN_FORMAT}, formats
