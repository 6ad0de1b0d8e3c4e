"""``tenfold inspect``, run in-process through ``tenfold.cli.main`` (the codec benchmark, once
``tenfold bench``, is ``benchmarks/codec.py``: tests/benchmarks/test_codec_bench.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tenfold.cli import EXIT_BROKEN_PIPE, main
from tenfold.codec import EntropyAdaptive, TargetRate, compress


@pytest.fixture
def packet_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    blob = compress(
        {
            "fc1.weight": rng.laplace(0, 0.05, (40, 30)).astype(np.float32),
            "fc1.bias": np.zeros(40, np.float32),
        },
        EntropyAdaptive(),
    )
    path = tmp_path / "packet.bin"
    path.write_bytes(blob)
    return path


def test_inspect_table(packet_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(packet_file)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "shape", "dtype", "mode"]
    assert lines[1].startswith("fc1.weight") and "40x30" in lines[1] and "huffman" in lines[1]
    assert lines[2].startswith("fc1.bias") and "constant" in lines[2]
    assert f"{packet_file.stat().st_size} bytes" in lines[3]


def test_inspect_shows_ans_steps_and_clamps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(0).laplace(0, 0.01, 100_000).astype(np.float32)
    path = tmp_path / "delta.bin"
    path.write_bytes(compress({"delta": x}, TargetRate(bits_per_param=0.5)))
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    row = dict(zip(header, lines[1].split(), strict=True))
    assert row["mode"] in ("ans", "ans-pairs", "ans-quads") and float(row["step"]) > 0
    assert row["clamped"] == "0"
    version = {"ans": 2, "ans-pairs": 3, "ans-quads": 4}[row["mode"]]
    assert f"format v{version}" in lines[2]


def test_inspect_names_ans_quads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.clip(np.random.default_rng(0).laplace(0, 0.01, 70_001), -0.02, 0.02)
    path = tmp_path / "quads.bin"
    path.write_bytes(compress({"delta": x.astype(np.float32)}, TargetRate(bits_per_param=1.0)))
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = dict(zip(lines[0].split(), lines[1].split(), strict=True))
    assert row["mode"] == "ans-quads" and row["N"] == "2"
    assert "format v4" in lines[2]


def test_inspect_json(packet_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(packet_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nbytes"] == packet_file.stat().st_size
    assert [t["name"] for t in info["tensors"]] == ["fc1.weight", "fc1.bias"]
    assert info["tensors"][1]["entropy"] is None


def test_inspect_corrupt_and_missing_files(
    packet_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(packet_file.read_bytes())
    data[30] ^= 4
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    assert main(["inspect", str(bad)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.bin")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_inspect_into_a_closed_pipe_exits_quietly(packet_file: Path) -> None:
    """``tenfold inspect p --json | head -1``: the reader goes away; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first write: EPIPE, every time
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tenfold", "inspect", str(packet_file), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE and proc.stderr == ""


class _GoneReader(io.StringIO):
    """A stdout whose reader has gone: every flush fails as a closed pipe does."""

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_main_exits_quietly_on_a_broken_pipe(
    packet_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at the entry point, not in inspect: any subcommand's output may be piped into head
    monkeypatch.setattr(sys, "stdout", _GoneReader())
    assert main(["inspect", str(packet_file)]) == EXIT_BROKEN_PIPE
    print("later output goes nowhere")  # stdout now points at devnull: no second error
    sys.stdout.flush()
    sys.stdout.close()  # the devnull stream main opened (monkeypatch restores stdout)
