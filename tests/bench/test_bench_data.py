"""tenfold.bench.data: the built-in tensor sets and the user's .npz, with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tenfold.bench.data import load_tensors, synthetic_delta
from tenfold.errors import ConfigError, TenfoldError


def test_synthetic_set_is_transformer_shaped_float32() -> None:
    data = synthetic_delta(n_layer=2, n_embd=48)
    assert len(data) == 2 + 2 * 12 + 3
    assert data["blocks.1.mlp.fc.weight"].shape == (192, 48)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in data.values())
    again = synthetic_delta(n_layer=2, n_embd=48)
    assert all(np.array_equal(v, again[k]) for k, v in data.items())  # seeded


def test_npz_file_is_read_by_name(tmp_path: Path) -> None:
    path = tmp_path / "delta.npz"
    np.savez(path, a=np.ones(5, np.float32), b=np.zeros((2, 3), np.float64))
    data, desc = load_tensors(str(path))
    assert set(data) == {"a", "b"} and data["b"].shape == (2, 3)
    assert "delta.npz" in desc


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a zip", "not a readable .npz"),
        ({"idx": np.arange(4)}, "is int64"),
        ({"w": np.array([1.0, np.nan], np.float32)}, "NaN or Inf"),
        ({}, "holds no arrays"),
    ],
)
def test_bad_npz_gets_a_config_error_naming_the_problem(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "d.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    with pytest.raises(ConfigError, match=message) as info:
        load_tensors(str(path))
    assert isinstance(info.value, TenfoldError)


def test_char_gpt_data_is_a_pseudo_gradient_and_is_cached(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data, desc = load_tensors("char-gpt", quick=True, cache=tmp_path)
    assert "char-gpt" in desc and len(data) >= 20
    assert all(v.dtype == np.float32 for v in data.values())
    assert any(float(np.abs(v).max()) > 0 for v in data.values())
    (cached,) = tmp_path.glob("chargpt_*.npz")
    again, _ = load_tensors("char-gpt", quick=True, cache=tmp_path)
    assert all(np.array_equal(v, again[k]) for k, v in data.items())
    assert cached.exists()
