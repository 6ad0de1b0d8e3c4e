"""Checkpoint and resume with real ranks (spawned processes, gloo): crash, kill, resume.

Each case interrupts a `tenfold train` run - every rank exiting right after a checkpoint,
the lead dying halfway through writing one, or SIGKILL to the whole job at whatever moment
it is in - then resumes it with `--resume` and checks that the final model.safetensors is
byte for byte the uninterrupted run's and the metrics equal but for wall-clock timings.
Each spawns 2-3 multi-process runs (several seconds each on a shared 2-core machine): slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_injection import FAULT_EXIT_CODE, install_in_ranks
from safetensors.numpy import load_file
from test_checkpoint import assert_same_run, without_timings

from tenfold.cli import main
from tenfold.train import final_weights, read_metrics, run_simulated
from tenfold.train.checkpoint import CHECKPOINT, CheckpointError, read_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _faults_in_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    install_in_ranks(monkeypatch)


def argv(data: Path, out: Path) -> list[str]:
    """2 ranks, 3 epochs of 10 steps, a sync every 4 steps: 8 syncs, mid- and cross-epoch."""
    return [
        "train",
        "--data",
        str(data),
        "--workers",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.1",
        "--sync-every",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted distributed run."""
    out = tmp_path_factory.mktemp("dist-ref") / "run"
    assert main(argv(tiny_data, out)) == 0
    return out


def test_every_rank_crashes_after_a_checkpoint(
    tiny_data: Path,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("TENFOLD_FAULT", "crash-after-sync:3")
    assert main(argv(tiny_data, out)) == 1
    err = capsys.readouterr().err
    assert f"rank 0 died (exit code {FAULT_EXIT_CODE}" in err
    monkeypatch.delenv("TENFOLD_FAULT")
    assert read_checkpoint(out).syncs == 3
    assert not (out / "model.safetensors").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "after sync 3" in capsys.readouterr().out
    assert_same_run(reference, out)


def test_the_lead_dies_while_writing_a_checkpoint(
    tiny_data: Path,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("TENFOLD_FAULT", "crash-in-checkpoint:5")
    assert main(argv(tiny_data, out)) == 1
    err = capsys.readouterr().err
    # the lead died without a word; rank 1 then lost its peer in the next collective
    assert f"rank 0 died (exit code {FAULT_EXIT_CODE}" in err and "rank 1 failed" in err
    monkeypatch.delenv("TENFOLD_FAULT")
    assert (out / (CHECKPOINT + ".tmp")).exists()  # the half-written file
    assert read_checkpoint(out).syncs == 4  # the previous checkpoint, intact
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert_same_run(reference, out)


def test_a_spawned_run_resumes_under_torchrun(
    tiny_data: Path, tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process per rank either way: the checkpoint moves between the launchers."""
    out = tmp_path / "run"
    monkeypatch.setenv("TENFOLD_FAULT", "crash-after-sync:2")
    assert main(argv(tiny_data, out)) == 1
    monkeypatch.delenv("TENFOLD_FAULT")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "tenfold", "train", "--resume", str(out), "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resuming") == 1  # rank 0 speaks for the job
    assert_same_run(reference, out)


def test_sigkill_of_the_whole_job_at_any_moment(tmp_path: Path) -> None:
    """A real SIGKILL to the launcher and every rank, mid-run, then --resume."""
    from tiny_idx import write_tiny_idx

    data = write_tiny_idx(tmp_path / "data", n_train=2000)  # ~0.2 s per epoch per rank
    out = tmp_path / "run"
    args = argv(data, out)
    args[args.index("--epochs") + 1] = "12"
    args[args.index("--sync-every") + 1] = "0"  # once per epoch: 12 syncs
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TENFOLD_FAULT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tenfold", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the launcher and its ranks
    )
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if read_checkpoint(out).syncs >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    break
            except CheckpointError:
                pass  # not written yet
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.5)  # let the kernel reap the ranks (same process group, also killed)
    ckpt = read_checkpoint(out)
    assert 2 <= ckpt.syncs < 12 and not (out / "model.safetensors").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    # the uninterrupted result, computed by the simulated driver (bit for bit the ranks')
    sim = run_simulated(ckpt.config)
    weights = load_file(str(out / "model.safetensors"))
    for name, w in final_weights(sim.state).items():
        assert weights[name].tobytes() == w.tobytes(), name
    assert without_timings(read_metrics(out)) == without_timings(sim.metrics)
