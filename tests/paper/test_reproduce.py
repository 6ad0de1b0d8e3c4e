"""``python -m paper`` (``make reproduce``) in-process: the quick profile end to end on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paper.figures import FIGURES
from paper.profiles import get_profile
from paper.reproduce import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_profile_end_to_end_then_resume(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quick"
    argv = ["--profile", "quick", "--data", str(tiny_dir), "--out", str(out)]
    argv += ["--epochs", "2", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    n_runs = len(get_profile("quick").runs())
    assert f"{n_runs} runs trained, 0 skipped, 0 failed" in printed
    assert len(list((out / "runs").glob("*.json"))) == n_runs

    # every figure, as a real PNG
    for name in FIGURES:
        png = out / "figures" / name
        assert png.read_bytes()[:8] == PNG_MAGIC, name

    report = (out / "REPORT.md").read_text()
    assert "| setting | bits/param quantized | bits/param coded |" in report  # headline table
    for paper_value in ("6.80 /", "3.55 /", "3.78 /", "9.01 /", "8.47 /", "10.32 /"):
        assert paper_value in report, paper_value
    for name in FIGURES:
        assert f"](figures/{name})" in report, name
    for figure in ("paper Fig. 1", "paper Fig. 2", "paper Fig. 3", "paper Fig. 4", "paper Fig. 5"):
        assert figure in report
    run_section = report.split("## What was run")[1]
    assert "--epochs 2" in run_section and f"given with --data (`{tiny_dir}`)" in run_section
    assert "within noise" in report or "better" in report or "worse" in report

    # a rerun trains nothing and leaves every run file untouched
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert main(argv) == 0
    assert f"0 runs trained, {n_runs} skipped, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes
    sessions = json.loads((out / "sweep.json").read_text())["sessions"]
    assert [s["ran"] for s in sessions] == [n_runs, 0]

    # --report-only redraws from the saved runs
    (out / "REPORT.md").unlink()
    assert main([*argv, "--report-only"]) == 0
    assert (out / "REPORT.md").exists()
    # ... of this configuration only: the same directory holds no 3-epoch quick runs
    assert main(["--profile", "quick", "--out", str(out), "--report-only"]) == 2
    assert f"{n_runs} run files there have another configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--report-only", "--estimate"], "exclude each other"),
    ],
)
def test_bad_options_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_or_runs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "empty"), "--report-only"]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_help_names_profiles_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in (
        "--profile",
        "quick",
        "full",
        "--out",
        "--jobs",
        "--report-only",
        "--estimate",
        "resumable",
    ):
        assert word in text, word


def test_real_quick_profile_on_fashion_mnist(tmp_path: Path) -> None:
    """The CI smoke run: the quick profile as shipped, on the real data (~20-60 s).

    ``make test`` installs the data first, so under CI (``CI`` set) a missing dataset is a
    failure, not a skip.
    """
    from tenfold.train.data import DatasetError, find_dataset

    try:
        find_dataset("fashion-mnist", download=False)
    except DatasetError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Fashion-MNIST is not installed (scripts/ensure-data.sh)")
    out = tmp_path / "quick"
    assert main(["--profile", "quick", "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    report = (out / "REPORT.md").read_text()
    assert "Fashion-MNIST, **not the paper's MNIST**" in report
    assert "10,000 training images" in report


def test_cli_profile_names_match_the_profiles() -> None:
    from paper.profiles import PROFILES
    from paper.reproduce import PROFILE_NAMES

    assert sorted(PROFILE_NAMES) == sorted(PROFILES)


def test_python_m_paper_runs_from_the_repository_root() -> None:
    """What ``make reproduce`` runs; its --help needs neither the trainer nor torch."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "paper", "--help"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert 'make reproduce ARGS="--profile full --out results --jobs 2"' in out.stdout
    code = "import sys, paper.reproduce as r; r.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_the_recorded_command_is_the_documented_one() -> None:
    from paper.reproduce import _command, build_parser

    args = build_parser().parse_args(["--profile", "full", "--epochs", "12"])
    command = _command(args, Path("results"))
    assert command == 'make reproduce ARGS="--profile full --out results --jobs 1 --epochs 12"'
