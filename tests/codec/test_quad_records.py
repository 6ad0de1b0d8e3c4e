"""ans-quads records (mode 0x17, format version 4) through the public functions: TargetRate
chooses them by the model's rule, and compress, decompress, accumulate and
compress_and_decode agree on them bit for bit, for every dtype and count modulo 4.

The kernels themselves are tested in test_ansquads.py; the hand-built records of
test_packet.py check the decoder against docs/FORMAT.md 6D.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import (
    BFloat16Bits,
    CorruptPacketError,
    TargetRate,
    accumulate,
    ans,
    api,
    compress,
    compress_and_decode,
    decompress,
    inspect,
)
from tenfold.codec.api import FUSED_MIN_VALUES
from tenfold.codec.packet import MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS


def _few_levels(seed: int, n: int, dtype: type, *, one_bit: bool = False) -> np.ndarray:
    """Laplace values clipped at 2 scales (3 levels at 1 bit/value; non-negative: 2)."""
    x = np.clip(np.random.default_rng(seed).laplace(0.0, 0.01, n), -0.02, 0.02)
    return (np.abs(x) if one_bit else x).astype(dtype)


def _check(tensors: dict[str, np.ndarray | BFloat16Bits], bits: int) -> bytes:
    policy = TargetRate(bits_per_param=1.0)
    blob = compress(tensors, policy, threads=1)
    info = inspect(blob)
    assert info.version == 4
    assert [(t.mode, t.bits) for t in info.tensors] == [("ans-quads", bits)] * len(tensors)
    assert compress(tensors, policy, threads=2) == blob  # bytes never depend on threads
    out = decompress(blob)
    fused, decoded, fused_info = compress_and_decode(tensors, policy, threads=1)
    assert fused == blob and fused_info == info
    for t in info.tensors:
        x = tensors[t.name]
        ref = x.to_float32() if isinstance(x, BFloat16Bits) else x
        got = out[t.name]
        assert got.dtype == (np.float32 if isinstance(x, BFloat16Bits) else ref.dtype)
        assert got.shape == ref.shape
        assert decoded[t.name].tobytes() == got.tobytes()  # the fused pass's decoding
        assert t.step is not None
        # each value decodes to its level: within half a step (plus the dtype's rounding)
        levels = np.floor(ref.astype(np.float64) / t.step + 0.5)
        want = t.step * levels
        slack = 0.5 * t.step + np.abs(want) * (2.0**-8 if got.dtype == np.float16 else 2.0**-7)
        assert np.all(np.abs(got.astype(np.float64) - ref.astype(np.float64)) <= slack)
    if all(out[t.name].dtype != np.float16 for t in info.tensors):  # accumulators: f32/f64
        start = {t.name: np.full(t.shape, 0.25, out[t.name].dtype) for t in info.tensors}
        acc = {name: v.copy() for name, v in start.items()}
        accumulate(blob, acc)
        for name, v in acc.items():  # exactly those values added
            assert v.tobytes() == (start[name] + out[name]).tobytes()
    return blob


@pytest.mark.parametrize("extra", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_round_trip_at_every_count_modulo_4(dtype: type, extra: int) -> None:
    n = FUSED_MIN_VALUES + extra
    _check({"d": _few_levels(extra, n, dtype)}, bits=2)
    _check({"m": _few_levels(extra + 10, (n // 4, 4) if not extra else n, dtype, one_bit=True)}, 1)


@pytest.mark.parametrize("extra", [0, 3])
def test_bfloat16_round_trip(extra: int) -> None:
    values = _few_levels(7, FUSED_MIN_VALUES + extra, np.float32)
    _check({"b": BFloat16Bits.from_float(values), "f": values}, bits=2)


def test_a_corrupt_lane_is_refused() -> None:
    blob = bytearray(_check({"d": _few_levels(1, FUSED_MIN_VALUES + 1, np.float32)}, bits=2))
    blob[-200] ^= 0x10  # a word inside lane 3
    body = bytes(blob[:-4])
    sealed = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(CorruptPacketError, match="ANS lane"):
        decompress(sealed)


# ---- the choice: TargetRate's rule, against a reference written from its description ----


def _bits(p: np.ndarray, freq: np.ndarray, scale_bits: int) -> float:
    used = p > 0
    return float(-(p[used] * np.log2(freq[used] / float(1 << scale_bits))).sum())


def _reference_alphabet(counts: np.ndarray, used: int, bits: int) -> tuple[int, list[int], int]:
    # numpy throughout: products of the values' probabilities (left to right), the lowest
    # precision within PAIR_TOLERANCE of single values, compared per four values
    scale_bits = ans.scale_bits_for(used)
    freq = ans.quantize_frequencies(counts, scale_bits)
    p = counts / counts.sum()
    mode, singles = MODE_ANS, 4.0 * _bits(p, freq, scale_bits)
    k = 1 << bits
    pairs = np.floor(np.outer(p, p) * float(1 << 40)).astype(np.int64) + 1
    pairs[used:, :] = 0
    pairs[:, used:] = 0
    pair_counts = pairs.T.reshape(-1)
    pq = pair_counts / pair_counts.sum()
    for pair_bits in range(ans.scale_bits_for(used * used), api.PAIR_MAX_SCALE_BITS + 1):
        pair_freq = ans.quantize_frequencies(pair_counts, pair_bits)
        cost = _bits(pq, pair_freq, pair_bits)
        if cost <= (1.0 + api.PAIR_TOLERANCE) * (singles / 2.0):
            mode, freq, scale_bits = MODE_ANS_PAIRS, pair_freq, pair_bits
            break
    if bits <= 2:
        a, b, c, d = np.meshgrid(p, p, p, p, indexing="ij")  # quad a | b << N | ... at [d,c,b,a]
        quads = np.floor(a * b * c * d * float(1 << 40)).astype(np.int64) + 1
        live = np.arange(k) < used
        mask = live[:, None, None, None] & live[None, :, None, None]
        mask = mask & live[None, None, :, None] & live[None, None, None, :]
        quads[~mask] = 0
        quad_counts = quads.transpose(3, 2, 1, 0).reshape(-1)
        qq = quad_counts / quad_counts.sum()
        for quad_bits in range(ans.scale_bits_for(used**4), api.QUAD_MAX_SCALE_BITS + 1):
            quad_freq = ans.quantize_frequencies(quad_counts, quad_bits)
            if _bits(qq, quad_freq, quad_bits) <= (1.0 + api.PAIR_TOLERANCE) * singles:
                return MODE_ANS_QUADS, quad_freq.tolist(), quad_bits
    return mode, freq.tolist(), scale_bits


@settings(max_examples=200, deadline=None)
@given(
    bits=st.integers(1, 3),
    skew=st.sampled_from([0.0, 2.0, 8.0, 20.0, 40.0]),
    data=st.data(),
)
def test_the_quad_choice_is_the_reference_rule(bits: int, skew: float, data) -> None:
    k = 1 << bits
    used = data.draw(st.integers(2, k))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    # level counts as ratecontrol.level_counts gives them: each in 1 .. 2**30 + 1
    counts = np.zeros(k, np.int64)
    spread = np.minimum(rng.exponential(1.0, used) ** skew * 2**20, 2.0**30)
    counts[:used] = np.floor(spread).astype(np.int64) + 1
    scale_bits = ans.scale_bits_for(used)
    freq = ans._quantized(counts, scale_bits)
    mode, got, got_bits = api._ans_alphabet(counts, used, bits, freq, scale_bits)
    want = _reference_alphabet(counts, used, bits)
    assert (mode, got.tolist(), got_bits) == want
    assert mode != MODE_ANS_QUADS or bits <= 2


def test_quads_are_chosen_for_a_few_levels_only() -> None:
    # three evenly used levels: quads; 5 levels (N = 3): pairs at most
    counts = np.array([1 << 20, 1 << 21, 1 << 20, 0], np.int64)
    freq = ans._quantized(counts, 12)
    assert api._ans_alphabet(counts, 3, 2, freq, 12)[0] == MODE_ANS_QUADS
    counts8 = np.array([1, 1 << 10, 1 << 20, 1 << 10, 1, 0, 0, 0], np.int64)
    freq8 = ans._quantized(counts8, 12)
    assert api._ans_alphabet(counts8, 5, 3, freq8, 12)[0] != MODE_ANS_QUADS
