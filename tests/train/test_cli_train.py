"""``tenfold train`` in-process (``tenfold.cli.main``): a tiny end-to-end run and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

import tenfold
from tenfold.cli import main
from tenfold.distributed import NonFiniteWeightsError
from tenfold.train import TrainConfig, final_weights, read_metrics, run_simulated
from tenfold.train.config import DEFAULT_RATE


def test_tiny_end_to_end_run_matches_the_simulated_one(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_data), "--workers", "2", "--epochs", "2"]
    argv += ["--batch-size", "16", "--lr", "0.1", "--policy", "fixed", "--bits", "6"]
    # 150 examples per worker: 10 steps per epoch; a sync every 4 steps crosses epochs
    argv += ["--sync-every", "4"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (
        "tenfold train: paper-mlp, 2 workers, policy fixed(bits=6), sending deltas + error "
        "feedback, 2 epochs" in printed
    )
    assert "done, 5 synchronisations" in printed and "final test accuracy" in printed
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0.4, 0.8, 1.2, 1.6, 2.0]
    assert all(t["N"] in (0, 6) for r in records for t in r["layers"])  # 0: constant biases
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.workers == 2 and config.make_policy() == tenfold.Fixed(6)
    assert config.data_dir == str(tiny_data)
    # simulated == distributed, bit for bit, over two epochs of training
    sim = run_simulated(config)
    weights = load_file(str(out / "model.safetensors"))
    for name, w in final_weights(sim.state).items():
        assert weights[name].tobytes() == w.tobytes(), name
    assert [r["test_accuracy"] for r in sim.metrics] == [r["test_accuracy"] for r in records]
    assert [r["bytes_all_ranks"] for r in sim.metrics] == [r["bytes_all_ranks"] for r in records]
    # a second run into the same directory is refused unless asked for
    assert main([*argv, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert config.sync_every == 4


def _config(argv: list[str]) -> TrainConfig:
    from tenfold.cli import build_parser
    from tenfold.cli.train import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_defaults_send_rate_controlled_deltas_and_scheme_paper_is_the_paper() -> None:
    cfg = _config([])
    assert cfg.transmit == "delta" and cfg.error_feedback
    assert cfg.make_policy() == tenfold.TargetRate(bits_per_param=DEFAULT_RATE)
    cfg = _config(["--rate", "0.25", "--seed", "3"])
    assert cfg.make_policy() == tenfold.TargetRate(bits_per_param=0.25, seed=3)
    cfg = _config(["--policy", "relative-step", "--alpha", "2", "--no-error-feedback"])
    assert cfg.make_policy() == tenfold.RelativeStep(alpha=2.0) and not cfg.error_feedback
    paper = _config(["--scheme", "paper"])
    assert paper.transmit == "weights"
    assert paper.make_policy() == tenfold.EntropyAdaptive(F=0.03, M=4, c=6, seed=0)
    assert _config(["--transmit", "weights", "--policy", "fixed"]).transmit == "weights"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scheme", "paper", "--policy", "fixed"], "--scheme paper fixes"),
        (["--scheme", "paper", "--transmit", "delta"], "--scheme paper fixes"),
        (["--policy", "entropy", "--rate", "1"], "--rate applies to --policy target-rate"),
        (["--alpha", "1"], "--alpha applies to --policy relative-step"),
        (["--rate", "0"], "bits_per_param"),
    ],
)
def test_bad_policy_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(argv)


def test_simulate_flag_prints_one_line_per_sync(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--simulate", "--data", str(tiny_data), "--workers", "3", "--epochs", "2"]
    assert main([*argv, "--batch-size", "16", "--out", str(tmp_path / "sim")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 2
    assert "acc" in lines[0] and "bits/param" in lines[0] and "N fc1.w=" in lines[0]
    assert "sent" in lines[0] and "all ranks" in lines[0]


def test_summary_names_its_times_and_counts_in_the_singular(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed time includes start-up; run.json's wall_seconds does not: both named."""
    out = tmp_path / "one"
    argv = ["train", "--simulate", "--data", str(tiny_data), "--workers", "3", "--epochs", "1"]
    assert main([*argv, "--batch-size", "16", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert ", 1 epoch, sync every epoch" in printed[0]
    assert printed[1].startswith("tenfold train: done, 1 synchronisation in ")
    recorded = json.loads((out / "run.json").read_text())["wall_seconds"]
    assert printed[2].startswith(f"  {recorded:.1f} s of it training (run.json's wall_seconds)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "error: --workers must be a positive integer"),
        (["--policy", "entropy", "--bits", "8"], "--bits applies to --policy fixed"),
        (["--policy", "fixed", "--bits", "40"], "error: --bits must be an integer in [1, 24]"),
        (["--policy", "lossless", "--c", "5"], "--c applies to --policy entropy"),
        (["--lr-decay", "2"], "error: --lr-decay must be in (0, 1]"),
        # the flags the user typed, not the fields they set
        (["--rate", "-1"], "error: --rate must be in (0, 32], got -1.0"),
        (["--timeout", "0"], "error: --timeout must be a positive finite number"),
        (["--batch-size", "0"], "error: --batch-size must be a positive integer"),
        (["--policy", "entropy", "--F", "2"], "error: --F must be in (0, 1]"),
        (["--seed", "-1"], "error: --seed must be"),
        (["--model", "char-gpt", "--data", "/nonexistent/x.tar.gz"], "error: --data /nonex"),
        (["--data", "/nonexistent/tenfold"], "not a directory"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err
    for internal in ("bits_per_param", "timeout_s", "batch_size", "TargetRate.", "text-path"):
        assert internal not in err


def test_malformed_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tiny_idx import write_tiny_idx

    d = write_tiny_idx(tmp_path / "d")
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    assert main(["train", "--data", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "t10k-images-idx3-ubyte" in capsys.readouterr().err


def test_too_many_workers_for_the_data_exits_2(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--data", str(tiny_data), "--workers", "400"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "300 training images from" in err and "too few to feed 400 workers" in err


def test_a_failing_run_exits_1(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def diverge(*args: object, **kwargs: object) -> None:
        raise NonFiniteWeightsError({1: -1}, ["fc1.weight"])

    monkeypatch.setattr("tenfold.train.loop.run_simulated", diverge)
    argv = ["train", "--simulate", "--data", str(tiny_data), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the run failed: NonFiniteWeightsError" in err and "rank 1 has non-finite" in err


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--policy",
        "--bits",
        "--sample-rate",
        "--M",
        "--c1",
        "--c0",
        "--workers",
        "--epochs",
        "--data",
        "--dataset",
        "--seed",
        "--out",
        "--timeout",
        "--sync-every",
        "torchrun",
        "exit codes",
    ):
        assert option in text, option
