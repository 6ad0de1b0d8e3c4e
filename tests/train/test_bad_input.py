"""Bad input to the trainer: each a clear error, before any rank starts where possible.

A missing dataset, a truncated or wrong-magic IDX file (raw or gzipped), an empty model
given to the averager, and non-finite weights before a sync.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from tiny_idx import write_tiny_idx

import tenfold
from tenfold.cli import main
from tenfold.distributed import CompressedAverager, NonFiniteWeightsError, SimulatedAverager


def run(args: list[str], tmp_path: Path) -> int:
    return main(["train", *args, "--quiet", "--out", str(tmp_path / "out")])


def test_missing_dataset_exits_2_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TENFOLD_DATA_HOME", str(tmp_path / "cache"))
    assert run(["--dataset", "mnist", "--no-download"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "dataset mnist not found" in err and "--data DIR" in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_tiny_idx(tmp_path / "d")
    (d / "train-labels-idx1-ubyte.gz").unlink()
    assert run(["--data", str(d)], tmp_path) == 2
    assert "missing train-labels-idx1-ubyte" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "truncated: shape (60, 28, 28) needs 47040 data bytes, found 23520"),
        ("magic", "not an IDX file (magic bytes 0101"),
        ("header", "truncated IDX header"),
        ("trailing", "3 unexpected trailing bytes"),
    ],
)
def test_damaged_raw_idx_file_exits_2_naming_it(
    tmp_path: Path, damage: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = write_tiny_idx(tmp_path / "d")  # test files raw, training files gzipped
    path = d / "t10k-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(
        {
            "truncate": raw[: 16 + 60 * 784 // 2],
            "magic": b"\x01\x01" + raw[2:],
            "header": raw[:10],
            "trailing": raw + b"xyz",
        }[damage]
    )
    assert run(["--data", str(d)], tmp_path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


@pytest.mark.parametrize("damage", ["cut-gzip", "not-gzip", "truncated-content", "magic"])
def test_damaged_gzipped_idx_file_exits_2_naming_it(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = write_tiny_idx(tmp_path / "d")
    path = d / "train-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    content = gzip.decompress(blob)
    path.write_bytes(
        {
            "cut-gzip": blob[: len(blob) // 2],
            "not-gzip": b"plain bytes, not gzip",
            "truncated-content": gzip.compress(content[:-100]),
            "magic": gzip.compress(b"\xff\xff" + content[2:]),
        }[damage]
    )
    assert run(["--data", str(d)], tmp_path) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert any(word in err for word in ("cannot read", "truncated", "not an IDX file"))


@pytest.mark.parametrize("averager", ["compressed", "simulated"])
def test_an_empty_model_is_a_clear_error(averager: str) -> None:
    empty = torch.nn.Sequential()  # no parameters at all
    assert list(empty.parameters()) == []
    with pytest.raises(ValueError, match="no parameters"):
        if averager == "compressed":
            CompressedAverager(tenfold.Fixed(8), transmit="weights").average(
                empty.named_parameters()
            )
        else:
            SimulatedAverager(tenfold.Fixed(8), transmit="weights").average([[], []])


def test_nonfinite_weights_before_a_sync_name_the_worker_and_tensor() -> None:
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    with torch.no_grad():
        b.bias[1] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"worker 1: bias"):
        SimulatedAverager(tenfold.Fixed(8), transmit="weights").average(
            [a.named_parameters(), b.named_parameters()]
        )
