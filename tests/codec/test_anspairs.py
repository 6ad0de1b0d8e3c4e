"""ANS over pairs: the pair decoder against the one-symbol coder, every output path, corruption."""

from __future__ import annotations

import numpy as np
import pytest

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
def test_round_trip_every_output_path(count: int, bits: int) -> None:
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
        if dtype != np.float16:
            base = np.linspace(-1.0, 1.0, count).astype(dtype)
            acc = base.copy()
            assert anspairs.decode_pairs(data, starts, ends, table, acc, add=True) == 0
            np.testing.assert_array_equal(acc, base + want)


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
