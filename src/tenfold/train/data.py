"""MNIST-format (IDX) datasets: find them, download them (SHA-256 checked), read them.

Layout: a directory with the four files of the MNIST distribution, each either gzipped
(``.gz``) or raw::

    train-images-idx3-ubyte   60000 x 28 x 28 uint8
    train-labels-idx1-ubyte   60000 uint8 in 0..9
    t10k-images-idx3-ubyte    10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte    10000 uint8 in 0..9

Where a dataset is looked for, in order (:func:`find_dataset`):

* an explicit directory (``--data DIR``), and nothing else;
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``),
  then the user cache, then a download into the user cache;
* ``mnist``: the user cache, then a download into it.

The user cache is ``$TENFOLD_DATA_HOME/<name>`` if that variable is set, else
``~/.cache/tenfold/<name>``. Downloads are checked against the SHA-256 sums below (the
upstream files; Debian recompresses its copy, so its sums differ and are not checked).

Every problem with a file raises :class:`DatasetError` (a ``ValueError``) saying which file
and what is wrong; a dataset that cannot be found says how to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tenfold.errors import ConfigError, TenfoldError

__all__ = [
    "DATASET_SPECS",
    "FILES",
    "DatasetError",
    "DatasetSpec",
    "IdxDataset",
    "cache_dir",
    "download_dataset",
    "find_dataset",
    "load_dataset",
    "load_idx_dir",
    "read_idx",
    "write_idx",
]


class DatasetError(TenfoldError, ValueError):
    """A dataset is missing, malformed or failed its checksum. The message says which file."""


#: Role -> file name (without ``.gz``) of the MNIST layout.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives.

    Attributes:
        name: the ``--dataset`` name.
        system_dirs: directories a system package installs it into (searched first).
        mirrors: base URLs of the gzipped files, tried in order.
        sha256: ``<file>.gz`` -> expected SHA-256 (hex) of the download.
        hint: another way to get the files, appended to the error message ("" if none).
    """

    name: str
    system_dirs: tuple[str, ...]
    mirrors: tuple[str, ...]
    sha256: Mapping[str, str]
    hint: str


DATASET_SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        hint="; or install Debian's package: sudo apt-get install dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        system_dirs=(),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        hint="",
    ),
}


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-like dataset in memory.

    Attributes:
        train_images: ``(n_train, 28, 28)`` uint8.
        train_labels: ``(n_train,)`` uint8 in 0..9.
        test_images: ``(n_test, 28, 28)`` uint8.
        test_labels: ``(n_test,)`` uint8 in 0..9.
        source: the directory it was read from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


# ---- IDX files --------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in ``.gz``) into a native-endian array.

    Raises:
        DatasetError: unreadable, bad gzip, wrong magic, truncated or trailing bytes.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    return parse_idx(raw, name=str(path))


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (see :func:`read_idx`)."""
    if len(raw) < 4:
        raise DatasetError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{name}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{name}: truncated IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DatasetError(
            f"{name}: truncated: shape {shape} needs {expected} data bytes, found {found}"
        )
    if found > expected:
        raise DatasetError(
            f"{name}: {found - expected} unexpected trailing bytes after shape {shape}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="), copy=True)
    )


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if the name ends in ``.gz``). For tests/tools."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ConfigError(f"cannot write {array.dtype} array of shape {array.shape} as IDX")
    big = array.astype(np.dtype(_IDX_DTYPES[code]), copy=False)
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + big.tobytes()
    )
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


# ---- a directory of IDX files -----------------------------------------------------------


def _file_in(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory: str | os.PathLike[str]) -> list[str]:
    """The MNIST-layout files absent from ``directory`` (neither raw nor ``.gz``)."""
    d = Path(directory)
    return [stem for stem in FILES.values() if _file_in(d, stem) is None]


def load_idx_dir(directory: str | os.PathLike[str]) -> IdxDataset:
    """Read and check the four IDX files of ``directory``.

    Raises:
        DatasetError: a file is missing or malformed, image and label counts differ,
            images are not 28x28, or a label is outside 0..9.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"{d}: not a directory")
    missing = missing_files(d)
    if missing:
        raise DatasetError(
            f"{d}: missing {', '.join(missing)} (raw or .gz); expected the four MNIST-format "
            f"files {', '.join(FILES.values())}"
        )
    arrays: dict[str, np.ndarray] = {}
    for role, stem in FILES.items():
        path = _file_in(d, stem)
        assert path is not None
        array = read_idx(path)
        want_ndim = 3 if role.endswith("images") else 1
        if array.ndim != want_ndim or array.dtype != np.uint8:
            raise DatasetError(
                f"{path}: expected a {want_ndim}-d uint8 array, got {array.ndim}-d {array.dtype}"
            )
        arrays[role] = array
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{d}: inconsistent {split} counts: {images.shape[0]} images, "
                f"{labels.shape[0]} labels"
            )
        if images.shape[1:] != (28, 28):
            raise DatasetError(
                f"{d}: {split} images are {images.shape[1]}x{images.shape[2]}, "
                "the 784-input network needs 28x28"
            )
        if images.shape[0] == 0:
            raise DatasetError(f"{d}: the {split} split is empty")
        if labels.max() > 9:
            raise DatasetError(f"{d}: {split} label {int(labels.max())} is outside 0..9")
    return IdxDataset(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        source=str(d),
    )


# ---- finding and downloading ------------------------------------------------------------


def cache_dir(name: str) -> Path:
    """The user cache directory of dataset ``name``."""
    home = os.environ.get("TENFOLD_DATA_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "tenfold"
    return root / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_dataset(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Download a dataset's gzipped IDX files into ``dest``, checking each SHA-256.

    Files already in ``dest`` with the right checksum are kept. Each file is fetched from
    the mirrors in order into ``<file>.<pid>.part`` and renamed only once its checksum matched,
    so a failed download leaves nothing that looks complete.

    Args:
        name: a key of :data:`DATASET_SPECS`.
        dest: target directory (default: :func:`cache_dir`).
        mirrors: base URLs to try instead of the spec's (``file://`` works: tests use it).
        sha256: ``<file>.gz`` -> expected hex digest, instead of the spec's.
        timeout_s: socket timeout per request (s).

    Returns:
        ``dest``.

    Raises:
        DatasetError: every mirror failed for some file (offline, HTTP error, checksum);
            the message lists each attempt and how to get the files by hand.
    """
    spec = DATASET_SPECS.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASET_SPECS)}")
    target = Path(dest) if dest is not None else cache_dir(name)
    bases = list(mirrors) if mirrors is not None else list(spec.mirrors)
    sums = dict(sha256) if sha256 is not None else dict(spec.sha256)
    target.mkdir(parents=True, exist_ok=True)
    for filename, expected in sums.items():
        final = target / filename
        if final.is_file() and _sha256(final) == expected:
            continue
        attempts: list[str] = []
        for base in bases:
            url = base.rstrip("/") + "/" + filename
            # per-process name: ranks started by torchrun may all download at once
            part = target / f"{filename}.{os.getpid()}.part"
            try:
                with (
                    urllib.request.urlopen(url, timeout=timeout_s) as response,
                    part.open("wb") as out,
                ):
                    shutil.copyfileobj(response, out, 1 << 20)
                got = _sha256(part)
                if got != expected:
                    attempts.append(f"{url}: SHA-256 mismatch: expected {expected}, got {got}")
                    continue
                os.replace(part, final)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                attempts.append(f"{url}: {reason}")
            finally:
                part.unlink(missing_ok=True)
        else:
            urls = "\n  ".join(spec.mirrors[0].rstrip("/") + "/" + f for f in spec.sha256)
            raise DatasetError(
                f"could not download {name} file {filename}:\n  "
                + "\n  ".join(attempts)
                + f"\nTo get {name} by hand, download\n  {urls}\non a machine with internet "
                f"access and copy the files into {target} (or into any directory, then pass "
                f"--data DIR){spec.hint}."
            )
    return target


def find_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Path:
    """The directory holding dataset ``name`` (see the module docstring for the order).

    Raises:
        DatasetError: not found anywhere (and not downloadable); the message says how to
            get it.
    """
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DatasetError(f"--data {d}: not a directory")
        missing = missing_files(d)
        if missing:
            raise DatasetError(f"--data {d}: missing {', '.join(missing)} (raw or .gz)")
        return d
    spec = DATASET_SPECS.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASET_SPECS)}")
    searched = [Path(p) for p in spec.system_dirs] + [cache_dir(name)]
    for d in searched:
        if d.is_dir() and not missing_files(d):
            return d
    if download:
        return download_dataset(name, cache_dir(name), mirrors=mirrors)
    raise DatasetError(
        f"dataset {name} not found (looked in {', '.join(map(str, searched))}; downloads "
        f"disabled). Put the four files into {cache_dir(name)}, or pass --data DIR"
        f"{spec.hint}."
    )


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> IdxDataset:
    """:func:`find_dataset` then :func:`load_idx_dir`."""
    return load_idx_dir(find_dataset(name, data_dir, download=download))
