"""IDX reading, dataset search order, and the SHA-256-checked download (file:// mirrors)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from tiny_idx import write_tiny_idx

from tenfold.train.data import (
    DATASET_SPECS,
    FILES,
    DatasetError,
    cache_dir,
    download_dataset,
    find_dataset,
    load_idx_dir,
    parse_idx,
    read_idx,
    write_idx,
)


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    array: np.ndarray = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    write_idx(tmp_path / name, array)
    got = read_idx(tmp_path / name)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_known_header_bytes() -> None:
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    np.testing.assert_array_equal(parse_idx(raw), [7, 8, 9])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # unknown type code
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x00", "truncated IDX header"),  # 0 dimensions
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "truncated: shape (4,) needs 4"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "1 unexpected trailing bytes"),
    ],
)
def test_malformed_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(raw)


def test_bad_gzip_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "x.gz")
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "absent")


def test_load_directory(tiny_data: Path) -> None:
    data = load_idx_dir(tiny_data)
    assert data.train_images.shape == (300, 28, 28) and data.train_labels.shape == (300,)
    assert data.test_images.shape == (60, 28, 28) and data.test_labels.max() <= 9
    assert data.source == str(tiny_data)


def _corrupt_dir(tmp_path: Path, role: str, array: np.ndarray) -> Path:
    d = write_tiny_idx(tmp_path / "d", gz=False)
    write_idx(d / FILES[role], array)
    return d


@pytest.mark.parametrize(
    ("role", "array", "message"),
    [
        ("train_labels", np.zeros(299, np.uint8), "inconsistent train counts: 300 images, 299"),
        ("test_labels", np.full(60, 10, np.uint8), "test label 10 is outside 0..9"),
        ("train_images", np.zeros((300, 28, 27), np.uint8), "28x27"),
        ("test_images", np.zeros((60, 784), np.uint8), "expected a 3-d uint8 array"),
        ("train_labels", np.zeros(300, np.int32), "expected a 1-d uint8 array"),
        ("test_images", np.zeros((0, 28, 28), np.uint8), "inconsistent test counts"),
    ],
)
def test_inconsistent_directory(tmp_path: Path, role: str, array: np.ndarray, message: str) -> None:
    d = _corrupt_dir(tmp_path, role, array)
    with pytest.raises(DatasetError, match=message):
        load_idx_dir(d)


def test_missing_file_is_named(tmp_path: Path) -> None:
    d = write_tiny_idx(tmp_path / "d")
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte"):
        load_idx_dir(d)
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte"):
        find_dataset(data_dir=d)
    with pytest.raises(DatasetError, match="not a directory"):
        find_dataset(data_dir=tmp_path / "nowhere")


# ---- search order and downloads -----------------------------------------------------------


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("TENFOLD_DATA_HOME", str(home))
    return home


def test_explicit_directory_wins(tiny_data: Path, cache_home: Path) -> None:
    assert find_dataset("mnist", tiny_data, download=False) == tiny_data


def test_user_cache_is_searched(tmp_path: Path, cache_home: Path) -> None:
    assert cache_dir("mnist") == cache_home / "mnist"
    write_tiny_idx(cache_home / "mnist")
    assert find_dataset("mnist", download=False) == cache_home / "mnist"


def test_missing_dataset_says_how_to_get_it(cache_home: Path) -> None:
    with pytest.raises(DatasetError) as info:
        find_dataset("mnist", download=False)
    message = str(info.value)
    assert "mnist not found" in message and str(cache_home / "mnist") in message
    assert "--data DIR" in message


def test_debian_directory_is_searched_first_for_fashion_mnist(cache_home: Path) -> None:
    debian = Path(DATASET_SPECS["fashion-mnist"].system_dirs[0])
    if not debian.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed here")
    write_tiny_idx(cache_home / "fashion-mnist")
    assert find_dataset("fashion-mnist", download=False) == debian


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A file:// mirror of gzipped IDX files and their SHA-256 sums."""
    d = write_tiny_idx(tmp_path / "mirror-src", gz=False)
    served = tmp_path / "mirror"
    served.mkdir()
    sums = {}
    for stem in FILES.values():
        blob = gzip.compress((d / stem).read_bytes())
        (served / f"{stem}.gz").write_bytes(blob)
        sums[f"{stem}.gz"] = hashlib.sha256(blob).hexdigest()
    return served.as_uri() + "/", sums


def test_download_with_good_checksums(tmp_path: Path, mirror: tuple[str, dict[str, str]]) -> None:
    url, sums = mirror
    dest = download_dataset("mnist", tmp_path / "dl", mirrors=[url], sha256=sums)
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)
    assert load_idx_dir(dest).train_images.shape == (300, 28, 28)
    # a second call finds the files already there with the right sums, and keeps them
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    download_dataset("mnist", dest, mirrors=["file:///nonexistent/"], sha256=sums)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_download_with_bad_checksum_fails_clearly(
    tmp_path: Path, mirror: tuple[str, dict[str, str]]
) -> None:
    url, sums = mirror
    bad = dict(sums, **{"t10k-images-idx3-ubyte.gz": "0" * 64})
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError) as info:
        download_dataset("mnist", dest, mirrors=[url], sha256=bad)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "SHA-256 mismatch" in message
    assert "0" * 64 in message and sums["t10k-images-idx3-ubyte.gz"] in message
    # nothing that looks complete is left behind
    assert not (dest / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(dest.glob("*.part"))


def test_a_later_mirror_is_tried(tmp_path: Path, mirror: tuple[str, dict[str, str]]) -> None:
    url, sums = mirror
    dest = download_dataset(
        "mnist", tmp_path / "dl", mirrors=["file:///nonexistent/", url], sha256=sums
    )
    assert len(list(dest.iterdir())) == 4


def test_offline_download_says_how_to_get_the_files(tmp_path: Path, cache_home: Path) -> None:
    with pytest.raises(DatasetError) as info:
        find_dataset("mnist", mirrors=["file:///nonexistent/mnist/"])
    message = str(info.value)
    assert "could not download mnist" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert str(cache_home / "mnist") in message and "--data DIR" in message


def test_spec_checksums_are_sha256_hex() -> None:
    for spec in DATASET_SPECS.values():
        assert sorted(spec.sha256) == sorted(f"{s}.gz" for s in FILES.values())
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in spec.sha256.values())
