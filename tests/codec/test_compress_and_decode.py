"""``compress_and_decode``: the packet of ``compress`` and, bit for bit, what ``decompress``
returns for it (the fused coder writes the decoding of the tensors it codes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from tenfold.codec import (
    BFloat16Bits,
    EntropyAdaptive,
    Fixed,
    PacketInfo,
    TargetRate,
    ans,
    anspairs,
    compress,
    compress_and_decode,
    decompress,
    inspect,
)
from tenfold.codec.api import FUSED_MIN_VALUES
from tenfold.errors import ConfigError

from .test_properties import POLICIES, tensor_dicts


def _same(blob: bytes, out: dict[str, np.ndarray], info: PacketInfo) -> None:
    assert info == inspect(blob)
    ref = decompress(blob)
    assert list(out) == list(ref)
    for name, want in ref.items():
        got = out[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


def _model(rng: np.random.Generator, dtype: type) -> dict[str, np.ndarray]:
    n = FUSED_MIN_VALUES
    return {
        # large tensors take the fused pass: odd counts and counts not a multiple of 4
        # exercise the pair and lane tails
        "embed": (0.02 * rng.standard_t(3, size=(n + 7,))).astype(dtype),
        "fc.weight": (0.01 * rng.laplace(size=(n // 256 + 1, 256))).astype(dtype),
        "fc.bias": (0.001 * rng.laplace(size=300)).astype(dtype),  # the group
        "norm": np.ones(64, dtype=dtype),  # constant
        "odd": (0.05 * rng.laplace(size=2 * n + 3)).astype(dtype),
        # a few levels (clipped at 2 scales): ans-quads around 1 bit/value
        "few": np.clip(0.01 * rng.laplace(size=n + 2), -0.02, 0.02).astype(dtype),
        "empty": np.zeros((0, 3), dtype=dtype),
    }


@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0, 2.5, 4.0, 8.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_the_decoding_is_decompress_bit_for_bit(rate: float, dtype: type) -> None:
    tensors = _model(np.random.default_rng(int(rate * 10)), dtype)
    policy = TargetRate(bits_per_param=rate)
    blob, out, info = compress_and_decode(tensors, policy, threads=1)
    assert blob == compress(tensors, policy, threads=1)
    _same(blob, out, info)
    if rate in (0.5, 1.0):
        assert {t.name: t.mode for t in info.tensors}["few"] == "ans-quads"


def test_bfloat16_and_threads_give_the_same_packet_and_values() -> None:
    rng = np.random.default_rng(3)
    values = (0.01 * rng.laplace(size=FUSED_MIN_VALUES + 1)).astype(np.float32)
    tensors = {"b": BFloat16Bits.from_float(values), "f": values}
    one = compress_and_decode(tensors, threads=1)
    two = compress_and_decode(tensors, threads=2)
    assert one[0] == two[0]
    _same(*one)
    _same(*two)


@pytest.mark.parametrize("policy", [Fixed(6), EntropyAdaptive(seed=1), TargetRate(coder="huffman")])
def test_other_policies_decode_the_packet(policy: object) -> None:
    tensors = _model(np.random.default_rng(5), np.float32)
    _same(*compress_and_decode(tensors, policy))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(tensors=tensor_dicts(), policy=POLICIES)
def test_any_tensors_and_policy(tensors: dict[str, np.ndarray], policy: object) -> None:
    blob, out, info = compress_and_decode(tensors, policy)  # type: ignore[arg-type]
    assert blob == compress(tensors, policy)  # type: ignore[arg-type]
    _same(blob, out, info)


def test_the_fused_kernels_write_the_symbols_values() -> None:
    x = np.random.default_rng(0).laplace(size=10_001)
    lut = np.array([-2.5, -1.0, 0.25, 3.0])
    want = lut[np.clip(np.floor(x * 1.0 + 0.5), -1, 2).astype(np.int64) + 1]
    out = np.empty_like(x)
    ans.encode_levels(x, 1.0, -1, -1, 2, np.array([1, 5, 9, 1]), 4, lut=lut, decoded=out)
    assert out.tobytes() == want.tobytes()
    out2 = np.empty_like(x)
    f = np.full(16, 256)
    anspairs.encode_level_pairs(x, 1.0, -1, -1, 2, 2, f, 12, lut=lut, decoded=out2)
    assert out2.tobytes() == want.tobytes()


def test_the_fused_kernels_check_their_output() -> None:
    x = np.zeros(10, dtype=np.float32)
    f = np.array([1, 1])
    with pytest.raises(ConfigError, match="dtype float32"):
        ans.encode_levels(x, 1.0, 0, 0, 1, f, 1, lut=np.zeros(2), decoded=np.empty(10))
    with pytest.raises(ConfigError, match="10 values"):
        lut = np.zeros(2, np.float32)
        ans.encode_levels(x, 1.0, 0, 0, 1, f, 1, lut=lut, decoded=np.empty(9, np.float32))
