"""ans-quads (mode 0x17): the lanes are ans.encode's over the quad symbols; decoding
inverts them (overwrite, add, every output dtype), and corrupt lanes are found."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import ans, ansquads
from tenfold.errors import ConfigError

RUN_VALUES = 16 * ansquads._RUN  # values per unbounded run of the packed decoder


def _quads(sym: np.ndarray, bits: int) -> np.ndarray:
    pad = np.zeros(-sym.size % 4, dtype=sym.dtype)
    s = np.concatenate([sym, pad]).astype(np.int64).reshape(-1, 4)
    return (s[:, 0] | s[:, 1] << bits | s[:, 2] << 2 * bits | s[:, 3] << 3 * bits).astype(np.uint16)


def _layout(lanes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.array([lane.size for lane in lanes], dtype=np.int64)
    ends = np.cumsum(sizes)
    return np.concatenate(lanes), ends - sizes, ends


def _model(sym: np.ndarray, bits: int, scale_bits: int) -> np.ndarray:
    # every quad codable (the encoder's contract), the seen ones weighted up
    counts = 64 * np.bincount(_quads(sym, bits), minlength=1 << 4 * bits) + 1
    return ans.quantize_frequencies(counts, scale_bits)


@settings(max_examples=60, deadline=None)
@given(
    n=st.one_of(st.integers(1, 40), st.integers(RUN_VALUES - 20, RUN_VALUES + 40)),
    bits=st.integers(1, ansquads.MAX_QUAD_BITS),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale_bits=st.integers(9, 14),
)
def test_lanes_are_ans_over_quad_symbols_and_decode_back(
    n: int, bits: int, seed: int, dtype: Any, scale_bits: int
) -> None:
    rng = np.random.default_rng(seed)
    qmin = -(1 << (bits - 1))
    qmax = qmin + (1 << bits) - 1
    levels = rng.integers(qmin, qmax + 1, size=n)
    x = (levels + rng.uniform(-0.49, 0.49, size=n)).astype(dtype)
    sym = (levels - qmin).astype(np.uint16)
    freq = _model(sym, bits, scale_bits)
    lut = (np.arange(qmin, qmin + (1 << bits)) * 0.5).astype(dtype)
    decoded = np.full(n, np.nan, dtype)
    lanes = ansquads.encode_level_quads(
        x, 1.0, qmin, qmin, qmax, bits, freq, scale_bits, lut=lut, decoded=decoded
    )
    want = ans.encode(_quads(sym, bits), freq, scale_bits)
    assert [lane.tobytes() for lane in lanes] == [lane.tobytes() for lane in want]
    assert decoded.tobytes() == lut[sym].tobytes()
    plain = ansquads.encode_level_quads(x, 1.0, qmin, qmin, qmax, bits, freq, scale_bits)
    assert [lane.tobytes() for lane in plain] == [lane.tobytes() for lane in lanes]
    data, starts, ends = _layout(lanes)
    table = ansquads.build_quad_table(freq, scale_bits, lut, bits)
    out = np.empty(n, dtype)
    assert ansquads.decode_quads(data, starts, ends, table, out, add=False) == 0
    assert out.tobytes() == lut[sym].tobytes()
    # non-temporal stores (float32, 16-byte aligned; otherwise ordinary ones): same values
    streamed = np.full(n, np.nan, dtype)
    shifted = np.full(n + 1, np.nan, dtype)[1:]  # not 16-byte aligned
    for target in (streamed, shifted):
        assert (
            ansquads.decode_quads(data, starts, ends, table, target, add=False, streaming=True) == 0
        )
        assert target.tobytes() == lut[sym].tobytes()
    acc = np.ones(n, dtype)
    assert ansquads.decode_quads(data, starts, ends, table, acc, add=True) == 0
    assert acc.tobytes() == (np.ones(n, dtype) + lut[sym]).tobytes()


def test_float16_bits_and_odd_counts() -> None:
    rng = np.random.default_rng(3)
    lut = np.array([-1.0, 0.0, 1.0, 2.0], np.float16)
    for n in (5, 6, 7, 8, 4099):
        sym = rng.integers(0, 4, size=n).astype(np.uint16)
        freq = _model(sym, 2, 12)
        lanes = ans.encode(_quads(sym, 2), freq, 12)
        data, starts, ends = _layout(lanes)
        table = ansquads.build_quad_table(freq, 12, lut.view(np.uint16), 2)
        out = np.empty(n, np.uint16)
        assert ansquads.decode_quads(data, starts, ends, table, out, add=False) == 0
        assert out.view(np.float16).tolist() == lut[sym].tolist()


def test_huge_values_clamp_to_the_extreme_levels() -> None:
    x = np.array([1e30, -1e30, 0.0, 1.0, 2.0, -1.0, 7.0], np.float64)
    sym = np.array([3, 0, 1, 2, 3, 0, 3], np.uint16)  # levels -1..2 from qmin -1
    freq = np.full(256, 64)
    lanes = ansquads.encode_level_quads(x, 1.0, -1, -1, 2, 2, freq, 14)
    want = ans.encode(_quads(sym, 2), freq, 14)
    assert [lane.tobytes() for lane in lanes] == [lane.tobytes() for lane in want]


def test_corrupt_lanes_are_reported() -> None:
    rng = np.random.default_rng(5)
    n = 3 * RUN_VALUES + 13
    sym = rng.choice(3, size=n, p=[0.1, 0.8, 0.1]).astype(np.uint16)
    freq = _model(sym, 2, 12)
    lanes = ans.encode(_quads(sym, 2), freq, 12)
    data, starts, ends = _layout(lanes)
    lut = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)
    table = ansquads.build_quad_table(freq, 12, lut, 2)
    for lane in range(4):
        bad = data.copy()
        bad[starts[lane] + 5] ^= 0x40
        out = np.empty(n, np.float32)
        status = ansquads.decode_quads(bad, starts, ends, table, out, add=False)
        assert status == lane + 1
        acc = np.zeros(n, np.float32)
        assert ansquads.decode_quads(bad, starts, ends, table, acc, add=True) == lane + 1
    truncated = data[: ends[2]]
    status = ansquads.decode_quads(
        truncated, starts, np.minimum(ends, ends[2]), table, np.empty(n, np.float32), add=False
    )
    assert status != 0


def test_product_counts_equal_numpy() -> None:
    rng = np.random.default_rng(7)
    for bits in (1, 2):
        for used in range(1, (1 << bits) + 1):
            p = np.zeros(1 << bits)
            p[:used] = rng.dirichlet(np.ones(used))
            got = ansquads.product_counts(p, used, bits)
            want = np.zeros(1 << 4 * bits, np.int64)
            for idx in np.ndindex(used, used, used, used):
                a, b, c, d = idx
                s = a | b << bits | c << 2 * bits | d << 3 * bits
                want[s] = int(np.floor(p[a] * p[b] * p[c] * p[d] * float(1 << 40))) + 1
            assert got.tolist() == want.tolist()


def test_argument_errors() -> None:
    x = np.zeros(8, np.float32)
    with pytest.raises(ConfigError, match="16\\*\\*bits"):
        ansquads.encode_level_quads(x, 1.0, -1, -1, 1, 2, np.full(16, 256), 12)
    with pytest.raises(ConfigError, match="nonzero"):
        f = np.full(256, 16)
        f[0], f[1] = 0, 32
        ansquads.encode_level_quads(x, 1.0, -1, -1, 1, 2, f, 12)
    with pytest.raises(ConfigError, match="outside"):
        ansquads.encode_level_quads(x, 1.0, -1, -1, 3, 2, np.full(256, 16), 12)
    with pytest.raises(ConfigError, match="float32 or float64"):
        ansquads.encode_level_quads(x.astype(np.float16), 1.0, -1, -1, 1, 2, np.full(256, 16), 12)
    with pytest.raises(ConfigError, match="16\\*\\*bits"):
        ansquads.build_quad_table(np.full(256, 16), 12, np.zeros(2, np.float32), 1)
