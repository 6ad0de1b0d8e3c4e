"""Shared fixtures of the experiments tests: a tiny synthetic MNIST-layout dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tenfold.train.data import write_idx


def write_tiny_dataset(directory: Path, *, n_train: int = 200, n_test: int = 50) -> Path:
    """Four IDX files: class k lights up rows 2k+2..2k+5 over weak noise (learnable)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 2 : 2 * k + 6, 4:24] = rng.integers(180, 256, (4, 20))
        return images, labels

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = split(n)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a 200-image training set and a 50-image test set."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny-idx"))
