"""``tenfold inspect`` and ``tenfold bench``, run in-process through ``tenfold.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tenfold.cli import main
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
    assert row["mode"] == "ans" and float(row["step"]) > 0 and row["clamped"] == "0"
    assert "format v2" in lines[2]


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


def test_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "2000", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    (size,) = result["sizes"]
    assert size["n"] == 2000 and "laplace" in result["data"]
    for key in ("zstd3", "float16", "fixed8_indices_zstd3"):
        assert size[key]["bytes"] > 0
    for fig in size["tenfold"].values():
        assert fig["bytes"] * 8 / 2000 == fig["bits_per_param"]
        assert fig["compress_MBps"] > 0 and fig["decompress_MBps"] > 0
        assert set(fig["vs_zstd3"]["met"]) == {"compress_3x", "decompress_2x", "size_8x"}
    assert result["numba_first_call_seconds"] > 0
    assert {"target_rate_1", "target_rate_0.5"} <= set(size["tenfold"])
    ans = result["ans_vs_constriction"]
    assert "skipped" in ans or ans


def test_bench_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--sizes", "0"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_bench_quick_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["n"] for s in result["sizes"]] == [100_000, 1_000_000]
