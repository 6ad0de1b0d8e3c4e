"""A tiny, learnable, synthetic MNIST-layout dataset for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tenfold.train.data import write_idx


def write_tiny_idx(
    directory: Path, *, n_train: int = 300, n_test: int = 60, seed: int = 0, gz: bool = True
) -> Path:
    """Write the four MNIST-layout files: class k lights up rows 2k..2k+4 over weak noise.

    Training files are gzipped (``gz``), test files raw, so both readers are exercised.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 2 : 2 * k + 6, 4:24] = rng.integers(180, 256, (4, 20))
        return images, labels

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    ext = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{ext}", train_x)
    write_idx(directory / f"train-labels-idx1-ubyte{ext}", train_y)
    write_idx(directory / "t10k-images-idx3-ubyte", test_x)
    write_idx(directory / "t10k-labels-idx1-ubyte", test_y)
    return directory
