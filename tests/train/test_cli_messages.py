"""What ``tenfold train`` tells a newcomer: help, usage errors, Ctrl-C, start-up, plots."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from tenfold.cli import build_parser, main
from tenfold.cli.train import user_message
from tenfold.errors import ConfigError, TenfoldError
from tenfold.train.progress import format_position, format_record, plural
from tenfold.train.rundir import bits_series, plot_metrics, x_axis

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_help_and_package_describe_the_default() -> None:
    """Deltas + error feedback + ANS at 1 bit/param (~32x); the paper's scheme by name."""
    text = build_parser().format_help()
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'^description = "(.*)"$', pyproject, re.MULTILINE)
    assert found is not None
    description = found.group(1)
    for words in (text, description):
        flat = " ".join(words.split())
        assert "error feedback" in flat and "1 bit/param" in flat and "~32x" in flat
        assert "ANS" in flat and "Øland & Raj" in flat
    assert "--scheme paper" in " ".join(text.split())


def test_train_help_names_the_files_it_writes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "accuracy.png (char-gpt: val_loss.png) and bits.png" in text
    assert "ANS-coded at --rate 1 bit per parameter: ~32x" in text


def test_an_unknown_option_prints_the_subcommands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tenfold train ")
    assert "tenfold train: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):  # the top level still reports its own
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: tenfold [-h]")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("TargetRate.bits_per_param must be in (0, 32], got 0.0", "--rate must be in"),
        ("policy: GradientRMS.c0 must be a finite number > 0", "--c0 must be"),
        ("timeout_s must be a positive finite number, got 0.0", "--timeout must be"),
        ("eval_batch_size must be a positive integer", "--eval-batch-size must be"),
        ("--workers 3 differs from torchrun's world size 2", "--workers 3 differs"),
        ("the data are gone", "the data are gone"),
    ],
)
def test_internal_field_names_become_flags(message: str, expected: str) -> None:
    assert user_message(ConfigError(message)).startswith(expected)


def _interrupt(monkeypatch: pytest.MonkeyPatch, *, checkpoint: bool) -> None:
    """Make the --simulate run raise KeyboardInterrupt (after a checkpoint if asked)."""

    def interrupted(config: Any, *, run_dir: Path, **kwargs: Any) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if checkpoint:
            (Path(run_dir) / "checkpoint.safetensors").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr("tenfold.train.loop.run_simulated", interrupted)


@pytest.mark.parametrize("checkpoint", [True, False])
def test_ctrl_c_says_how_to_resume(
    checkpoint: bool,
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _interrupt(monkeypatch, checkpoint=checkpoint)
    out = tmp_path / "run"
    argv = ["train", "--simulate", "--data", str(tiny_data), "--workers", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    if checkpoint:
        assert f"Continue the run with: tenfold train --resume {out}" in err
    else:
        assert "nothing to resume" in err and f"--out {out} --overwrite" in err


def test_torchrun_main_outside_torchrun_is_a_tenfold_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tenfold.train import NotUnderTorchrunError, TrainConfig, torchrun_main

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(NotUnderTorchrunError, match="torchrun --nproc_per_node") as info:
        torchrun_main(TrainConfig(), None)
    assert isinstance(info.value, TenfoldError) and isinstance(info.value, RuntimeError)


def test_startup_prints_at_once_and_when_every_rank_is_up() -> None:
    from tenfold.train.launch import _StartupReport

    stream = io.StringIO()
    report = _StartupReport(5, stream=stream)
    assert stream.getvalue() == (
        "tenfold train: starting 5 worker processes (each imports torch and joins the "
        "process group)...\n"
    )
    report(3, 5)  # not a terminal: no counter
    report(5, 5)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("  5/5 workers up after ") and "training" in last
    one = io.StringIO()
    _StartupReport(1, stream=one)(1, 1)
    assert "starting 1 worker process (" in one.getvalue() and "1/1 worker up" in one.getvalue()


def test_launch_reports_ranks_joining() -> None:
    from tenfold.train.launch import launch

    seen: list[tuple[int, int]] = []
    launch(_noop, 2, on_join=lambda joined, n: seen.append((joined, n)), timeout_s=30)
    assert seen and seen[-1] == (2, 2)
    assert [j for j, _ in seen] == sorted({j for j, _ in seen})


def _noop() -> None:
    import time

    time.sleep(0.5)  # long enough for the launcher's poll to see the ranks up


def _record(sync: int, epoch: float, *, mode: str, step: float | None) -> dict[str, Any]:
    return {
        "sync": sync,
        "step": 50 * sync,
        "epoch": epoch,
        "test_accuracy": 0.5,
        "bits_per_param": 1.0,
        "quantized_bits_per_param": 3.0,
        "layers": [{"name": "w", "N": 3, "mode": mode, "step": step}],
    }


def test_bits_plot_names_the_coder_and_draws_n_only_for_n_policies(tmp_path: Path) -> None:
    ans = [_record(1, 0.0143, mode="ans", step=0.01)]
    assert bits_series(ans) == [("as sent (ANS-coded)", [1.0])]  # a step policy: no N curve
    huffman = [_record(1, 1.0, mode="huffman", step=None)]
    assert [label for label, _ in bits_series(huffman)] == [
        "quantized (N)",
        "as sent (Huffman-coded)",
    ]
    grouped = [*ans, _record(2, 0.0286, mode="group", step=0.01)]
    assert bits_series(grouped)[0][0] == "as sent (ANS-coded)"
    raw = [_record(1, 1.0, mode="raw", step=None)]
    assert bits_series(raw) == [("as sent (uncoded float32)", [1.0])]
    paths = plot_metrics(ans, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)


def test_short_runs_are_plotted_and_reported_per_sync() -> None:
    short = [_record(s, s * 0.0143, mode="ans", step=0.01) for s in (1, 2, 3)]
    assert x_axis(short) == ("synchronisation (every 50 local steps)", [1, 2, 3])
    assert format_position(short[2], short) == "sync 3 (step 150, epoch 0.04)"
    epochs = [_record(s, float(s), mode="ans", step=0.01) for s in (1, 2)]
    assert x_axis(epochs) == ("epoch", [1.0, 2.0])
    assert format_position(epochs[1], epochs) == "epoch 2"


def test_train_help_quotes_the_measured_rate_of_the_papers_scheme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's measured run of --scheme paper: 9.73 bits/param, 3.3x (not ~10x)."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "9.73 bits/param" in text and "~3.3x" in text and "~10x" not in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "9.73 bits/param (3.3x" in readme


def test_counts_are_pluralised() -> None:
    assert plural(1, "synchronisation") == "1 synchronisation"
    assert plural(2, "epoch") == "2 epochs" and plural(0, "step") == "0 steps"


def test_the_sync_line_names_its_two_byte_counts() -> None:
    """Per rank (with the ring's relays) and all ranks' packets (each once) differ in kind:
    the line must not read as if all ranks were ranks x per rank."""
    record = {
        **_record(1, 1.0, mode="ans", step=0.01),
        "test_loss": 0.5,
        "bytes_sent": 174_900,
        "bytes_all_ranks": 217_800,
    }
    line = format_record(record)
    assert line.endswith("sent 174.9 kB/rank incl. relays, all ranks' packets 217.8 kB")
