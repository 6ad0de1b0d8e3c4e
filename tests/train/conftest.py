"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_idx import write_tiny_idx


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Like every rank: 1 torch thread (the machine is shared; oversubscription is slow)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a 300-image training set and a 60-image test set."""
    return write_tiny_idx(tmp_path_factory.mktemp("tiny-idx"))
