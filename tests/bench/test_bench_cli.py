"""``tenfold bench``: the table, --json/--out, and a clear exit 2 on bad data or options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tenfold.cli import main


def test_quick_run_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    argv = ["bench", "--quick", "--data", "synthetic", "--reps", "1", "--no-rd", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tenfold TargetRate(1)" in captured.out and "zstd-3" in captured.out
    assert "load average before" in captured.out
    assert "into existing arrays (decompress(out=...)" in captured.out
    assert "... loading synthetic data" in captured.err
    assert json.loads(out.read_text())["single_thread"]["tenfold"]["1.0"]["bits_per_param"] > 0


def test_json_on_stdout_and_own_npz_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(path, w=rng.standard_normal((300, 300)).astype(np.float32))
    argv = ["bench", "--data", str(path), "--reps", "1", "--rates", "1", "--threads", "1",
            "--no-rd", "--json", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["tensors"] == 1 and result["values"] == 90_000
    assert captured.err == ""


def test_missing_data_file_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--data", str(tmp_path / "none.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tenfold bench: ") and "no such file" in err


@pytest.mark.parametrize("argv", [["--rates", "one"], ["--reps", "x"], ["--rates", "-1"]])
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["bench", "--quiet", "--data", "synthetic", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    assert code == 2
    assert "rates" in capsys.readouterr().err or argv[0] == "--reps"
