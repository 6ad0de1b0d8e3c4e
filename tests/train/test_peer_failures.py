"""`tenfold train` with a peer that dies, hangs or diverges mid-training (real ranks).

Faults are injected with ``TENFOLD_FAULT`` (see ``fault_injection.py`` beside this file): the
spawned ranks inherit it and run with the fault's patches installed, and the chosen rank SIGKILLs itself, stalls, or poisons its weights right
after a given synchronisation. Every case must end every rank, exit 1, and say what
happened, within a bound set by ``--timeout``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fault_injection import Fault, install_in_ranks

from tenfold.cli import main
from tenfold.train.checkpoint import CHECKPOINT


@pytest.fixture(autouse=True)
def _faults_in_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    install_in_ranks(monkeypatch)


def argv(data: Path, out: Path, *, timeout: float) -> list[str]:
    """3 ranks, 6 epochs (one sync each) on the 300-image synthetic set."""
    return [
        "train",
        "--data",
        str(data),
        "--workers",
        "3",
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--timeout",
        str(timeout),
        "--quiet",
        "--out",
        str(out),
    ]


def test_a_killed_rank_ends_the_run_naming_it(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("TENFOLD_FAULT", "kill-rank:1:2")  # SIGKILL to itself after sync 2
    assert main(argv(tiny_data, out, timeout=10)) == 1
    ended = time.time()
    err = capsys.readouterr().err
    assert "the run failed: rank 1 died (killed by signal SIGKILL)" in err
    for rank in (0, 2):  # the survivors lost their peer in a collective and said so
        assert f"rank {rank} failed: CommunicationError" in err
    assert "another rank has died or is stuck" in err
    # Bounded: rank 1 died as sync 2's checkpoint was written; the job was over within the
    # 10 s timeout (gloo reports a closed connection at once, long before it)
    assert ended - (out / CHECKPOINT).stat().st_mtime < 10
    assert json.loads((out / "run.json").read_text())["finished"] is None


@pytest.mark.slow
def test_a_stuck_rank_times_out_and_is_stopped(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("TENFOLD_FAULT", "hang-rank:2:1")  # sleeps an hour after sync 1
    t0 = time.monotonic()
    assert main(argv(tiny_data, out, timeout=5)) == 1
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    # ranks 0 and 1 waited for rank 2 in a collective until the 5 s timeout, then failed;
    # the launcher gave rank 2 another --timeout to end, then stopped it
    assert "rank 0 failed: CommunicationError" in err and "rank 1 failed" in err
    assert "rank 2 was stopped by the launcher (still running)" in err
    # bounded by the timeout (twice: the collective's, then the launcher's grace), plus the
    # start-up of three processes on a busy machine - and far below the hour rank 2 sleeps
    assert elapsed < 5 + 5 + 120


@pytest.mark.slow  # also covered in-process: tests/distributed/test_averaging.py, test_loop_rundir.py
def test_a_rank_with_nonfinite_weights_stops_every_rank(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TENFOLD_FAULT", "nan-rank:1:1")
    assert main(argv(tiny_data, tmp_path / "run", timeout=30)) == 1
    err = capsys.readouterr().err
    # every rank reports the same cause, the rank with the bad weights naming its tensor
    for rank in (0, 1, 2):
        assert f"rank {rank} failed: NonFiniteWeightsError" in err
    assert "rank 1 has non-finite weights" in err and "here: fc1.weight" in err
    assert "died" not in err  # nobody was left hanging or killed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("crash-after-sync:3", Fault("crash-after-sync", 3)),
        ("crash-in-checkpoint:1", Fault("crash-in-checkpoint", 1)),
        ("kill-rank:2:5", Fault("kill-rank", 5, 2)),
        ("hang-rank:0:1", Fault("hang-rank", 1, 0)),
        ("nan-rank:1:2", Fault("nan-rank", 2, 1)),
    ],
)
def test_fault_specs_parse(text: str, expected: Fault) -> None:
    assert Fault.parse(text) == expected


@pytest.mark.parametrize("text", ["explode:1", "kill-rank:1", "crash-after-sync:x", "hang-rank"])
def test_bad_fault_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="TENFOLD_FAULT"):
        Fault.parse(text)
