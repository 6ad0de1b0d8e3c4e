"""ANS over pairs: the pair decoder against the one-symbol coder, every output path, corruption."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import ans, anspairs

# counts around the decoder's runs (4 lanes x _RUN steps x 2 values) and its tail
RUN_VALUES = 8 * anspairs._RUN
COUNTS = [1, 2, 3, 7, 8, 9, 16, 17, RUN_VALUES - 1, RUN_VALUES, RUN_VALUES + 3, 3 * RUN_VALUES + 5]


def _case(count: int, bits: int, scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = 1 << bits
    qmin = -(k // 2)
    qmax = qmin + k - 1
    x = rng.laplace(0.0, scale, count)
    levels = np.clip(np.floor(x + 0.5), qmin, qmax).astype(np.int64)
    counts = np.bincount(levels - qmin, minlength=k) + 1  # every level usable
    pair_counts = np.outer(counts, counts).T.reshape(-1)  # pair a + b * k at [b, a]
    scale_bits = ans.scale_bits_for(k * k)
    freq = ans.quantize_frequencies(pair_counts, scale_bits)
    lanes = anspairs.encode_level_pairs(x, 1.0, qmin, qmin, qmax, bits, freq, scale_bits)
    data = np.concatenate(lanes)
    ends = np.cumsum([lane.size for lane in lanes])
    starts = ends - np.array([lane.size for lane in lanes])
    return levels, qmin, freq, scale_bits, data, starts, ends


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("bits", [1, 3, 5])
@pytest.mark.parametrize("branchy_below", [0.0, 64.0])  # bits/step: never, always branchy
@pytest.mark.parametrize("compact_from", [0, 99])  # precision: always, never compact tables
def test_round_trip_every_output_path(
    count: int,
    bits: int,
    branchy_below: float,
    compact_from: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the packed float32 path renormalises behind a branch below a rate (anspairs'
    # _step_branchy) and looks slots up in compact tables from a precision on
    # (compact_table); every variant decodes every path alike
    monkeypatch.setattr(ans, "_DECODE_BRANCHLESS_BITS", branchy_below)
    monkeypatch.setattr(anspairs, "COMPACT_MIN_SCALE_BITS", compact_from)
    levels, qmin, freq, scale_bits, data, starts, ends = _case(count, bits, 1.5)
    k = 1 << bits
    lut64 = np.arange(qmin, qmin + k, dtype=np.float64) * 0.25
    for dtype in (np.float32, np.float64, np.float16):
        lut = lut64.astype(dtype)
        table_lut = lut.view(np.uint16) if dtype == np.float16 else lut
        table = anspairs.build_pair_table(freq, scale_bits, table_lut, bits)
        want = lut[levels - qmin]
        out = np.full(count, 7, dtype=table_lut.dtype)
        assert anspairs.decode_pairs(data, starts, ends, table, out, add=False) == 0
        got = out.view(np.float16) if dtype == np.float16 else out
        np.testing.assert_array_equal(got, want)
        # non-temporal stores (float32, 16-byte aligned; otherwise ordinary ones)
        for streamed in (
            np.full(count, 7, table_lut.dtype),
            np.full(count + 1, 7, table_lut.dtype)[1:],
        ):
            status = anspairs.decode_pairs(
                data, starts, ends, table, streamed, add=False, streaming=True
            )
            assert status == 0 and streamed.tobytes() == out.tobytes()
        if dtype != np.float16:
            base = np.linspace(-1.0, 1.0, count).astype(dtype)
            acc = base.copy()
            assert anspairs.decode_pairs(data, starts, ends, table, acc, add=True) == 0
            np.testing.assert_array_equal(acc, base + want)


def _pair_symbols(sym: np.ndarray, bits: int) -> np.ndarray:
    padded = np.append(sym, 0)[: 2 * ((sym.size + 1) // 2)].reshape(-1, 2)
    return (padded[:, 0] | padded[:, 1] << bits).astype(np.uint16)


@settings(max_examples=60, deadline=None)
@given(
    # sizes around the encoder's 2048-value blocks and the 4-lane tail, odd and even
    count=st.one_of(st.integers(0, 40), st.integers(2040, 2060), st.integers(4090, 6200)),
    bits=st.integers(1, anspairs.MAX_PAIR_BITS),
    spread=st.sampled_from([0.3, 2.0, 40.0]),
    clamp=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_fused_pairs_equal_the_definition(count, bits, spread, clamp, dtype, seed) -> None:
    # the fused quantise-and-pair pass against its definition: levels, pairs, ans.encode
    rng = np.random.default_rng(seed)
    huge = 1e25 if clamp and seed % 7 == 0 else 1.0  # some values far beyond the clamp
    x = (rng.laplace(0.0, spread, count) * huge).astype(dtype)
    k = 1 << bits
    qmin = -(k // 2)
    qlo, qhi = (qmin + (1 if k > 2 else 0), qmin + k - 1) if clamp else (qmin, qmin + k - 1)
    inv = 0.75
    sym = np.clip(np.floor(x.astype(np.float64) * inv + 0.5), qlo, qhi).astype(np.int64) - qmin
    freq = ans.quantize_frequencies(np.ones(k * k, np.int64), ans.scale_bits_for(k * k))
    n = ans.scale_bits_for(k * k)
    lut = (np.arange(qmin, qmin + k) * 0.5).astype(dtype)
    out = np.full(count, np.nan, dtype)
    lanes = anspairs.encode_level_pairs(x, inv, qmin, qlo, qhi, bits, freq, n, lut=lut, decoded=out)
    ref = ans.encode(_pair_symbols(sym, bits), freq, n)
    assert [a.tobytes() for a in lanes] == [b.tobytes() for b in ref]
    assert out.tobytes() == lut[sym].tobytes()
    plain = anspairs.encode_level_pairs(x, inv, qmin, qlo, qhi, bits, freq, n)
    assert [a.tobytes() for a in plain] == [b.tobytes() for b in ref]


@settings(max_examples=200, deadline=None)
@given(
    bits=st.integers(1, anspairs.MAX_PAIR_BITS),
    data=st.data(),
)
def test_product_counts_round_as_numpy(bits: int, data) -> None:
    k = 1 << bits
    used = data.draw(st.integers(1, k))
    head = data.draw(st.lists(st.integers(1, 2**40), min_size=used, max_size=used))
    counts = np.zeros(k, np.int64)
    counts[:used] = head
    p = counts / counts.sum()
    joint = np.floor(np.outer(p, p) * float(1 << 40)).astype(np.int64) + 1
    joint[used:, :] = 0
    joint[:, used:] = 0
    want = joint.T.reshape(-1)  # pair a + b * 2**bits at [b, a]
    assert anspairs.product_counts(p, used, bits).tolist() == want.tolist()


@pytest.mark.parametrize("count", [11, 16, 4099])
def test_huge_values_clamp_to_the_top_level(count: int) -> None:
    # |x / step| >= 2**63 once wrapped to INT64_MIN and clamped to the bottom level
    x = np.resize(np.array([1e30, -1e30, 0.0, 1e-3, 1e30, 5.0, -5.0, 1e300, -1e30]), count)
    qmin, qlo, qhi, bits = -2, -2, 1, 2
    sym = np.clip(np.floor(x * 1e3 + 0.5), qlo, qhi).astype(np.int64) - qmin
    assert sym[0] == qhi - qmin
    pairs = np.append(sym, 0)[: 2 * ((count + 1) // 2)].reshape(-1, 2)
    f = np.full(16, 256)
    lut = np.array([-2.0, -1.0, 0.0, 1.0])
    out = np.empty_like(x)
    lanes = anspairs.encode_level_pairs(x, 1e3, qmin, qlo, qhi, bits, f, 12, lut=lut, decoded=out)
    ref = ans.encode((pairs[:, 0] | pairs[:, 1] << bits).astype(np.uint16), f, 12)
    assert [a.tobytes() for a in lanes] == [b.tobytes() for b in ref]
    np.testing.assert_array_equal(out, lut[sym])


def test_pair_table_matches_its_halves() -> None:
    freq = ans.quantize_frequencies(np.arange(1, 17), 12)
    lut = np.array([-1.5, 0.0, 2.0, 3.0], np.float32)
    fbtab, first, second, both = anspairs.build_pair_table(freq, 12, lut, 2)
    ref_fb, pair = ans.build_decode_table(freq, 12, np.arange(16, dtype=np.uint16))
    np.testing.assert_array_equal(fbtab, ref_fb)
    np.testing.assert_array_equal(first, lut[pair & 3])
    np.testing.assert_array_equal(second, lut[pair >> 2])
    np.testing.assert_array_equal(both, np.stack([first, second], axis=1))


@pytest.mark.parametrize(
    ("count", "bits", "scale"),
    [
        (9, 2, 0.6),
        (RUN_VALUES + 3, 2, 0.6),
        (3 * RUN_VALUES + 5, 2, 0.6),
        (3 * RUN_VALUES + 5, 5, 4.0),
    ],
)
def test_corruption_is_reported_as_by_the_one_symbol_decoder(
    count: int, bits: int, scale: float
) -> None:
    # The pair decoder bounds reads by the data's end (and skips the bound in runs that
    # provably stay inside); the one-symbol decoder bounds each lane by its own end. Both
    # must report the same lanes, and decode the same pairs where nothing is reported.
    levels, qmin, freq, scale_bits, data, starts, ends = _case(count, bits, scale, seed=count)
    if bits == 5:  # long lanes: the first runs skip the read bound
        assert ends[3] - starts[3] >= 4 + 2 * anspairs._RUN + 4
    k = 1 << bits
    lut = np.arange(qmin, qmin + k, dtype=np.float32)
    table = anspairs.build_pair_table(freq, scale_bits, lut, bits)
    ref_table = ans.build_decode_table(freq, scale_bits, np.arange(k * k, dtype=np.uint16))
    m = (count + 1) // 2
    rng = np.random.default_rng(count)
    reported = 0
    for trial in range(300):
        bad = data.copy()
        lane_starts, lane_ends = starts.copy(), ends.copy()
        if trial % 3 == 2:  # a lane one word shorter or longer than written
            lane = int(rng.integers(4))
            bad = np.concatenate([data, rng.integers(0, 256, 2, dtype=np.uint8)])
            lane_ends[lane] += 2 if rng.random() < 0.5 else -2
        else:
            for _ in range(1 + trial % 2):
                bad[int(rng.integers(bad.size))] ^= np.uint8(1 << int(rng.integers(8)))
        out = np.zeros(count, np.float32)
        status = anspairs.decode_pairs(bad, lane_starts, lane_ends, table, out, add=False)
        pairs = np.zeros(m, np.uint16)
        ref = ans.decode(bad, lane_starts, lane_ends, ref_table, pairs, add=False)
        assert status == ref
        reported += status != 0
        if status == 0:
            values = lut[np.stack([pairs & (k - 1), pairs >> bits], axis=1).reshape(-1)]
            np.testing.assert_array_equal(out, values[:count])
    assert reported > 100


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 5), data=st.data())
def test_compact_table_is_the_per_slot_table(bits: int, data: st.DataObject) -> None:
    # the packed decoder's table (a rank per slot, an entry per used pair) gives every
    # slot the per-slot table's entry and values; uint8 ranks up to 256 used pairs
    k = 1 << bits
    used = data.draw(st.integers(1, k * k))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    counts = np.zeros(k * k, np.int64)
    counts[rng.choice(k * k, used, replace=False)] = rng.integers(1, 1000, used)
    scale_bits = max(ans.scale_bits_for(k * k), int(used - 1).bit_length())
    freq = ans.quantize_frequencies(counts, scale_bits)
    lut = (np.arange(k, dtype=np.float32) - k // 2) * 0.5
    fbtab, _, _, both = anspairs.build_pair_table(freq, scale_bits, lut, bits)
    rank, fb, pairs = anspairs.compact_table(fbtab, both)
    n_used = int(np.count_nonzero(freq))
    assert rank.dtype == (np.uint8 if n_used <= 256 else np.uint16)
    assert fb.size == pairs.shape[0] == n_used
    slots = np.arange(fbtab.size, dtype=np.uint64)
    assert np.array_equal(fb[rank].astype(np.uint64) + slots, fbtab.astype(np.uint64))
    assert np.array_equal(pairs[rank], both)
