"""The fused step + ANS record's choice of pairs: the same as the model it implements."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import TargetRate, ans, anspairs, api, compress, decompress, inspect


def _reference_choice(
    counts: np.ndarray, used: int, values: int = 0
) -> tuple[np.ndarray, int] | None:
    # the rule as written before the search was streamlined (numpy throughout)
    scale_bits = ans.scale_bits_for(used)
    freq = ans.quantize_frequencies(counts, scale_bits)
    p = counts / counts.sum()
    joint = np.floor(np.outer(p, p) * float(1 << 40)).astype(np.int64) + 1
    joint[used:, :] = 0
    joint[:, used:] = 0
    pair_counts = joint.T.reshape(-1)
    single = 2.0 * api._model_bits(p, freq[: p.size], scale_bits)
    pq = pair_counts / pair_counts.sum()
    for pair_bits in range(ans.scale_bits_for(used * used), api.PAIR_MAX_SCALE_BITS + 1):
        pair_freq = ans.quantize_frequencies(pair_counts, pair_bits)
        if api._model_bits(pq, pair_freq, pair_bits) <= (1.0 + api.PAIR_TOLERANCE) * single:
            return pair_freq, pair_bits
    if values <= 0:
        return None
    # one more bit of precision, where the whole record (values and table) stays within
    # PAIR_WIDE_TOLERANCE of the single-symbol record's
    wide_bits = api.PAIR_WIDE_SCALE_BITS
    wide = ans.quantize_frequencies(pair_counts, wide_bits)
    wide_size = api._model_bits(pq, wide, wide_bits) * (values / 2.0)
    wide_size += 8.0 * len(ans.pack_frequencies(wide))
    single_size = single / 2.0 * values + 8.0 * len(ans.pack_frequencies(freq))
    if wide_size <= (1.0 + api.PAIR_WIDE_TOLERANCE) * single_size:
        return wide, wide_bits
    return None


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(1, anspairs.MAX_PAIR_BITS),
    skew=st.sampled_from([0.0, 2.0, 8.0, 20.0]),
    data=st.data(),
)
def test_pair_choice_is_the_reference_rule(bits: int, skew: float, data) -> None:
    k = 1 << bits
    used = data.draw(st.integers(2, k))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # level counts as ratecontrol.level_counts gives them: each in 1 .. 2**30 + 1
    counts = np.zeros(k, np.int64)
    spread = np.minimum(rng.exponential(1.0, used) ** skew * 2**20, 2.0**30)
    counts[:used] = np.floor(spread).astype(np.int64) + 1
    scale_bits = ans.scale_bits_for(used)
    freq = ans._quantized(counts, scale_bits)
    assert freq.tolist() == ans.quantize_frequencies(counts, scale_bits).tolist()
    values = data.draw(st.sampled_from([0, 1 << 16, 1 << 20, 1 << 23]))
    got = api._pair_frequencies(counts, used, freq, scale_bits, values=values)
    want = _reference_choice(counts, used, values)
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert got[1] == want[1]
        assert got[0].tolist() == want[0].tolist()
        assert ans._packed(got[0]) == ans.pack_frequencies(want[0])


@pytest.mark.parametrize("rate", [2.0, 4.0, 8.0])
def test_heavy_tailed_tensors_keep_their_rate(rate: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # Student-t(3): a wide range of levels of which few are used. The fused pass would give
    # each empty level a table slot (4.2-4.3 bits at 4 bits/param); the exact path is taken.
    rng = np.random.default_rng(0)
    x = {"t": (rng.standard_t(3, 300_000) * 1e-3).astype(np.float32)}
    blob = compress(x, TargetRate(bits_per_param=rate))
    assert 8 * len(blob) / 300_000 <= rate * 1.045
    # the same step, so the same values, whichever path codes them
    monkeypatch.setattr(api, "FUSED_MAX_TABLE_LOSS", float("inf"))
    fused = compress(x, TargetRate(bits_per_param=rate))
    assert inspect(fused).tensors[0].step == inspect(blob).tensors[0].step
    assert np.array_equal(decompress(fused)["t"], decompress(blob)["t"])
    assert len(blob) < len(fused)


def test_a_large_laplace_tensor_takes_wide_pairs_and_a_small_one_does_not() -> None:
    # Laplace values at 1 bit/param: pairs cost ~0.25% more than single symbols at 14
    # bits; at 15 bits ~0.05%, plus a larger table, which a large tensor amortises
    rng = np.random.default_rng(3)
    big = rng.laplace(0.0, 0.01, 1 << 21).astype(np.float32)
    small = rng.laplace(0.0, 0.01, 1 << 17).astype(np.float32)
    for name, x, mode in (("big", big, "ans-pairs"), ("small", small, "ans")):
        packet = compress({name: x}, TargetRate(1.0), threads=1)
        info = inspect(packet).tensors[0]
        assert info.mode == mode, (name, info)
        back = decompress(packet)[name]
        step = info.step
        assert step is not None
        assert np.abs(back.astype(np.float64) - x).max() <= step / 2 * (1 + 1e-6)
    # the wide precision off: the large tensor goes back to single symbols, so the test
    # exercises the wide step
    saved = api.PAIR_WIDE_TOLERANCE
    api.PAIR_WIDE_TOLERANCE = -1.0
    try:
        assert inspect(compress({"big": big}, TargetRate(1.0), threads=1)).tensors[0].mode == "ans"
    finally:
        api.PAIR_WIDE_TOLERANCE = saved
