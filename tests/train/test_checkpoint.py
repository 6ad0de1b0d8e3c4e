"""Checkpoint and resume, in-process (simulated workers): bit-identical continuation.

A run is "crashed" at a chosen point - an exception out of a metrics hook, or the
fault-injection hook that would ``os._exit`` a real process, made to raise instead - and
then resumed with ``--resume``; its final model.safetensors must be byte for byte the
uninterrupted run's, and its metrics equal except wall-clock timings. The same with real
ranks (spawned processes, a crash, a SIGKILL) is in test_resume_distributed.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_injection import install

import tenfold
from tenfold.cli import main
from tenfold.train import TrainConfig, read_metrics, run_simulated
from tenfold.train.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    Snapshot,
    capture_process_rng,
    read_checkpoint,
    restore_process_rng,
    write_atomic,
)

#: Record fields that are wall-clock measurements: they differ between any two runs.
TIMINGS = {"train_s", "encode_s", "comm_s", "decode_s", "eval_s", "elapsed_s"}


def without_timings(records: list[dict]) -> list[dict]:
    """The records minus their wall-clock fields (everything else must match exactly)."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


class SimulatedCrash(BaseException):
    """Raised where a real process would have died (BaseException: nothing catches it)."""


def tiny_config(data: Path, **changes: object) -> TrainConfig:
    kwargs: dict = {
        "workers": 3,
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.1,
        "sync_every": 4,  # 7 steps per epoch: syncs fall mid-epoch and across epochs
        "data_dir": str(data),
        "policy": tenfold.EntropyAdaptive().get_config(),  # seeded sampling: round matters
        "transmit": "weights",
        **changes,
    }
    return TrainConfig(**kwargs)


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted simulated run (6 syncs over 3 epochs)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_simulated(tiny_config(tiny_data), run_dir=out)
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights (the whole file) and equal metrics but for timings."""
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert without_timings(read_metrics(a)) == without_timings(read_metrics(b))


@pytest.mark.parametrize("crash_at", [2, 4, 6])
def test_resume_after_a_crash_is_bit_identical(
    tiny_data: Path, tmp_path: Path, reference: Path, crash_at: int
) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data)

    def die(record: dict) -> None:
        # after the record is in metrics.jsonl, before its checkpoint: the resumed run
        # must drop that record and redo the round
        if record["sync"] == crash_at:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_simulated(cfg, run_dir=out, on_record=die)
    ckpt = read_checkpoint(out)
    assert ckpt.syncs == crash_at - 1 and not ckpt.complete
    assert len(read_metrics(out)) == crash_at  # one record more than the checkpoint covers
    res = run_simulated(cfg, run_dir=out, resume=True)
    assert res.state.syncs == 6 and len(res.metrics) == 6
    assert_same_run(reference, out)
    run = json.loads((out / "run.json").read_text())
    assert run["resumed"][0]["from_sync"] == crash_at - 1 and run["finished"]


DELTA = {"transmit": "delta", "policy": tenfold.TargetRate(bits_per_param=0.5).get_config()}


@pytest.fixture(scope="module")
def delta_reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted simulated run sending rate-controlled deltas with error feedback."""
    out = tmp_path_factory.mktemp("delta-reference") / "run"
    run_simulated(tiny_config(tiny_data, **DELTA), run_dir=out)
    return out


@pytest.mark.parametrize("crash_at", [2, 5])
def test_delta_mode_resumes_bit_identically(
    tiny_data: Path, tmp_path: Path, delta_reference: Path, crash_at: int
) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data, **DELTA)

    def die(record: dict) -> None:
        if record["sync"] == crash_at:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_simulated(cfg, run_dir=out, on_record=die)
    ckpt = read_checkpoint(out)
    assert any(k.startswith("averager/0/reference/") for k in ckpt.snapshot.tensors)
    run_simulated(cfg, run_dir=out, resume=True)
    assert_same_run(delta_reference, out)


def test_delta_mode_residuals_and_reference_matter(
    tiny_data: Path, tmp_path: Path, delta_reference: Path
) -> None:
    """The comparison can fail: a checkpoint without the residuals resumes differently."""
    cfg = tiny_config(tiny_data, **DELTA)

    def die(record: dict) -> None:
        if record["sync"] == 3:
            raise SimulatedCrash

    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        run_simulated(cfg, run_dir=out, on_record=die)
    ckpt = read_checkpoint(out)
    tensors, meta = dict(ckpt.snapshot.tensors), dict(ckpt.snapshot.meta)
    for key in [k for k in tensors if k.startswith("averager/0/residual/")]:
        tensors[key] = torch.zeros_like(tensors[key])
    from tenfold.train.checkpoint import _tensor_digest

    meta["tensor_sha256"] = _tensor_digest(tensors)
    write_atomic(out / CHECKPOINT, Snapshot(tensors, meta).to_bytes())
    run_simulated(cfg, run_dir=out, resume=True)
    a = (delta_reference / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() != a


def test_every_piece_of_state_matters(tiny_data: Path, tmp_path: Path, reference: Path) -> None:
    """The comparison can fail: resuming without the data order or the codec's round differs."""
    cfg = tiny_config(tiny_data)

    def die(record: dict) -> None:
        if record["sync"] == 3:
            raise SimulatedCrash

    for what in ("generator", "round"):
        out = tmp_path / what
        with pytest.raises(SimulatedCrash):
            run_simulated(cfg, run_dir=out, on_record=die)
        # tamper with the checkpoint: a fresh data-order generator, or round 0
        ckpt = read_checkpoint(out)
        tensors, meta = dict(ckpt.snapshot.tensors), dict(ckpt.snapshot.meta)
        if what == "generator":
            for r in range(3):
                fresh = torch.Generator().manual_seed(12345 + r).get_state()
                tensors[f"worker/{r}/epoch_rng_state"] = fresh
        else:
            meta["round"] = 0
        from tenfold.train.checkpoint import _tensor_digest

        meta["tensor_sha256"] = _tensor_digest(tensors)
        write_atomic(out / CHECKPOINT, Snapshot(tensors, meta).to_bytes())
        run_simulated(cfg, run_dir=out, resume=True)
        a = (reference / "model.safetensors").read_bytes()
        assert (out / "model.safetensors").read_bytes() != a, what


def test_cli_crash_then_resume(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tenfold train --simulate` killed right after sync 2's checkpoint, then --resume."""
    argv = ["train", "--simulate", "--data", str(tiny_data), "--workers", "3", "--epochs", "3"]
    argv += ["--batch-size", "16", "--lr", "0.1", "--sync-every", "4", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0

    def crash() -> None:
        raise SimulatedCrash

    install(monkeypatch.setattr, crash=crash)
    monkeypatch.setenv("TENFOLD_FAULT", "crash-after-sync:2")
    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        main([*argv, "--out", str(out)])
    monkeypatch.delenv("TENFOLD_FAULT")
    assert read_checkpoint(out).syncs == 2
    # starting it again without --resume is refused, and says how to continue
    assert main([*argv, "--out", str(out)]) == 2
    assert f"--resume {out}" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (
        "resuming" in printed
        and "after sync 2" in printed
        and "done, 4 synchronisations this session (6 in all)" in printed
    )
    assert_same_run(tmp_path / "ref", out)
    # resuming a finished run trains nothing, says so and where the results are
    model = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "complete run (6 synchronisations): nothing to train" in printed
    assert f"results are in {out}" in printed and "done," not in printed
    # and starting it again is refused without advising --resume (it cannot extend the run)
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has finished (6 synchronisations" in err and f"--resume {out}" not in err
    assert (out / "model.safetensors").stat().st_mtime_ns == model
    assert_same_run(tmp_path / "ref", out)
    # a complete run whose final files were lost: rewritten, and said so
    (out / "model.safetensors").unlink()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "nothing to train, rewriting its final files" in printed
    assert "done, nothing left to train (6 synchronisations)" in printed
    assert_same_run(tmp_path / "ref", out)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(
    tiny_data: Path, tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash() -> None:
        raise SimulatedCrash

    install(monkeypatch.setattr, crash=crash)
    monkeypatch.setenv("TENFOLD_FAULT", "crash-in-checkpoint:4")
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data)
    with pytest.raises(SimulatedCrash):
        run_simulated(cfg, run_dir=out)
    monkeypatch.delenv("TENFOLD_FAULT")
    tmp = out / (CHECKPOINT + ".tmp")
    assert tmp.exists() and tmp.stat().st_size > 0  # half a checkpoint was written...
    with pytest.raises(CheckpointError):
        Snapshot.from_bytes(tmp.read_bytes(), what="half")  # ...and is unreadable
    assert read_checkpoint(out).syncs == 3  # the previous one is intact
    run_simulated(cfg, run_dir=out, resume=True)
    assert_same_run(reference, out)


def test_overwrite_discards_the_old_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_simulated(tiny_config(tiny_data, epochs=1), run_dir=out)
    assert (out / CHECKPOINT).exists()
    (out / (CHECKPOINT + ".tmp")).write_bytes(b"stale")

    def die(record: dict) -> None:
        raise SimulatedCrash  # before the new run's first checkpoint

    with pytest.raises(SimulatedCrash):
        run_simulated(tiny_config(tiny_data, epochs=2), run_dir=out, on_record=die)
    assert not (out / CHECKPOINT).exists() and not (out / (CHECKPOINT + ".tmp")).exists()
    with pytest.raises(CheckpointError, match="before its first synchronisation"):
        read_checkpoint(out)


@pytest.fixture
def crashed(tiny_data: Path, tmp_path: Path) -> Path:
    """A run directory whose run died after its second checkpoint."""
    out = tmp_path / "crashed"

    def die(record: dict) -> None:
        if record["sync"] == 3:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_simulated(tiny_config(tiny_data), run_dir=out, on_record=die)
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "5"], "--epochs 5 (the run has epochs=3)"),
        (["--seed", "1"], "--seed 1 (the run has seed=0)"),
        (["--policy", "fixed"], "--policy (the run's policy is entropy"),
        (["--workers", "2"], "--workers 2 (the run has workers=3)"),
        (["--overwrite"], "pick one"),
        (["--out", "elsewhere"], "differs from --resume"),
    ],
)
def test_conflicting_options_are_refused(
    crashed: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(crashed), *args]) == 2
    assert message in capsys.readouterr().err


def test_options_that_agree_or_cannot_change_the_result_are_accepted(
    crashed: Path, tiny_data: Path, reference: Path
) -> None:
    argv = ["train", "--resume", str(crashed), "--epochs", "3", "--seed", "0", "--quiet"]
    argv += ["--timeout", "30", "--data", str(tiny_data)]
    assert main(argv) == 0
    assert TrainConfig.from_dict(json.loads((crashed / "config.json").read_text())).timeout_s == 30
    assert without_timings(read_metrics(crashed)) == without_timings(read_metrics(reference))


def test_resume_refuses_a_bad_or_foreign_run_directory(
    crashed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # a damaged checkpoint: every byte counts (tensor checksum or safetensors' own checks)
    blob = bytearray((crashed / CHECKPOINT).read_bytes())
    blob[-100] ^= 0x01
    (crashed / CHECKPOINT).write_bytes(bytes(blob))
    assert main(["train", "--resume", str(crashed)]) == 2
    assert "damaged" in capsys.readouterr().err
    blob[-100] ^= 0x01
    (crashed / CHECKPOINT).write_bytes(bytes(blob[: len(blob) // 3]))
    assert main(["train", "--resume", str(crashed)]) == 2
    assert "damaged or truncated" in capsys.readouterr().err


def test_edited_metrics_or_other_data_are_refused(
    crashed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_idx import write_tiny_idx

    metrics = crashed / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good.replace(b'"sync": 1', b'"sync": 9', 1))
    with pytest.raises(CheckpointError, match="do not match the checkpoint"):
        run_simulated(read_checkpoint(crashed).config, run_dir=crashed, resume=True)
    metrics.write_bytes(good.split(b"\n")[0] + b"\n")
    with pytest.raises(CheckpointError, match="1 complete records, the checkpoint covers 2"):
        run_simulated(read_checkpoint(crashed).config, run_dir=crashed, resume=True)
    metrics.write_bytes(good)
    other = write_tiny_idx(tmp_path / "other", seed=1)
    assert main(["train", "--resume", str(crashed), "--data", str(other)]) == 2
    assert "is not the data the run" in capsys.readouterr().err


def test_a_simulated_run_resumes_only_simulated(crashed: Path) -> None:
    cfg = read_checkpoint(crashed).config
    from tenfold.train.checkpoint import check_resumable

    with pytest.raises(CheckpointError, match="cannot be resumed as a spawn run"):
        check_resumable(read_checkpoint(crashed), cfg, mode="spawn")
    with pytest.raises(CheckpointError, match="another configuration.*epochs"):
        check_resumable(read_checkpoint(crashed), cfg.replace(epochs=4), mode="simulated")


def test_process_rng_states_round_trip() -> None:
    """torch, numpy and Python global generators continue exactly after a restore."""
    torch.manual_seed(3)
    np.random.seed(4)  # noqa: NPY002 - the global generator is what is checkpointed
    random.seed(5)
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's state
    tensors, scalars = capture_process_rng(0)
    snap = Snapshot.from_bytes(Snapshot(tensors, {"s": scalars}).to_bytes(), what="rng")
    first = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    restore_process_rng(snap.tensors, snap.meta["s"], 0)
    again = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
