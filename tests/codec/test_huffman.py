"""Canonical length-limited Huffman: lengths, codes, the table format, the stream kernels."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from tenfold.codec import huffman


def _huffman_cost(freq: np.ndarray) -> int:
    """Total bits of an (unlimited) optimal Huffman code, by the textbook heap merge."""
    heap = [int(f) for f in freq if f > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def _kraft(lengths: np.ndarray) -> float:
    used = lengths[lengths > 0].astype(float)
    return float(np.sum(2.0**-used))


def test_known_code_lengths() -> None:
    assert huffman.code_lengths(np.array([4, 2, 1, 1]), 11).tolist() == [1, 2, 3, 3]
    assert huffman.code_lengths(np.array([0, 3, 0, 3]), 11).tolist() == [0, 1, 0, 1]
    # ties are broken by symbol: deterministic
    assert huffman.code_lengths(np.array([1, 1, 1]), 11).tolist() == [2, 2, 1]


@pytest.mark.parametrize("seed", range(20))
def test_lengths_are_optimal_when_the_limit_does_not_bind(seed: int) -> None:
    rng = np.random.default_rng(seed)
    freq = rng.integers(0, 1000, size=int(rng.integers(2, 300)))
    freq[:2] += 1  # at least two used symbols
    lengths = huffman.code_lengths(freq, 14)
    if lengths.max() < 14:
        assert int(freq @ lengths.astype(np.int64)) == _huffman_cost(freq)
    assert _kraft(lengths) == 1.0
    assert np.all((lengths > 0) == (freq > 0))


def _brute_force_cost(freq: list[int], limit: int) -> int:
    """The cheapest complete-or-not prefix code with lengths <= limit, by enumeration."""
    import itertools

    best = None
    for lengths in itertools.product(range(1, limit + 1), repeat=len(freq)):
        if sum(2.0**-ln for ln in lengths) <= 1.0:
            cost = sum(f * ln for f, ln in zip(freq, lengths, strict=True))
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(12))
def test_length_limited_codes_are_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 8))
    limit = int(rng.integers(max(1, (m - 1).bit_length()), 5))
    freq = (rng.pareto(1.0, m) * 10).astype(np.int64) + 1  # skewed: limits bind
    lengths = huffman.code_lengths(freq, limit)
    assert lengths.max() <= limit and _kraft(lengths) == 1.0
    assert int(freq @ lengths.astype(np.int64)) == _brute_force_cost(freq.tolist(), limit)


@pytest.mark.parametrize("limit", [11, 12, 14])
def test_limit_is_respected_and_code_stays_complete(limit: int) -> None:
    # Fibonacci counts force very deep unlimited codes
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freq = np.array(fib + [0] * 10, dtype=np.int64)
    lengths = huffman.code_lengths(freq, limit)
    assert lengths.max() == limit
    assert _kraft(lengths) == 1.0
    # more frequent symbols never get longer codes
    used = np.flatnonzero(freq)
    order = used[np.argsort(freq[used], kind="stable")]
    assert np.all(np.diff(lengths[order].astype(int)) <= 0)


def test_length_limit_policy() -> None:
    assert huffman.length_limit(1) is None
    assert huffman.length_limit(2) == 12
    assert huffman.length_limit(4096) == 12
    assert huffman.length_limit(4097) == 13
    assert huffman.length_limit(1 << 14) == 14
    assert huffman.length_limit((1 << 14) + 1) is None


def test_canonical_codes_follow_deflate() -> None:
    # lengths (3,3,3,3,3,2,4,4) -> RFC 1951's example codes 010..110, 00, 1110, 1111
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], dtype=np.uint8)
    msb_first = [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]
    expect = [int(format(c, f"0{n}b")[::-1], 2) for c, n in zip(msb_first, lengths, strict=True)]
    assert huffman.canonical_codes(lengths).tolist() == expect


def test_length_table_round_trip_and_size(rng: np.random.Generator) -> None:
    lengths = np.zeros(1024, dtype=np.uint8)
    lengths[[0, 1023]] = 11  # outliers at both ends (w_min, w_max) ...
    lengths[500:524] = huffman.code_lengths(rng.integers(1, 100, 24), 11)[:24]  # ... a bulk
    lengths[[0, 1023]] = 0
    freq = np.zeros(1024, dtype=np.int64)
    freq[500:524] = rng.integers(1, 100, 24)
    freq[[0, 1023]] = 1
    lengths = huffman.code_lengths(freq, 11)
    table = huffman.pack_lengths(lengths)
    # 26 lengths + zero runs of 499 and 499 symbols, two nibbles per set bit of the run
    runs = 2 * 2 * bin(499).count("1")
    assert len(table) == (26 + runs + 1) // 2
    back, reason = huffman.unpack_lengths(np.frombuffer(table, np.uint8), 1024)
    assert reason == ""
    assert back is not None and np.array_equal(back, lengths)


def test_pack_lengths_example() -> None:
    assert huffman.pack_lengths(np.array([1, 0, 0, 0, 0, 2, 2], dtype=np.uint8)) == bytes(
        [0x01, 0x22, 0x02]  # nibbles 1 | 0,2 (4 unused) | 2 | 2 | pad
    )


@pytest.mark.parametrize(
    ("table", "k", "reason"),
    [
        (b"", 4, "truncated"),
        (b"\x11", 4, "truncated"),  # 2 of 4 symbols
        (b"\x20", 4, "at least 2"),  # a run of 4 unused symbols: nothing is used
        (b"\x00", 4, "truncated"),  # a run of 1, then nothing
        (b"\x30\x11", 4, "more symbols"),  # run of 2**3 > 4
        (b"\x11\x11\x01", 4, "trailing"),
        (b"\x11\x22", 4, "complete"),  # 1,1,2,2: oversubscribed
        (b"\x22\x22\x22", 4, "trailing"),
        (b"\x22\x10", 4, "complete"),  # 2,2,unused,unused: incomplete
        (b"\x01\x01\x00", 4, "at least 2"),  # 1, run of 2, run of 1: one symbol used
        (b"\xff", 2, "15"),
    ],
)
def test_unpack_rejects_bad_tables(table: bytes, k: int, reason: str) -> None:
    lengths, why = huffman.unpack_lengths(np.frombuffer(table, np.uint8), k)
    assert lengths is None
    assert reason in why


def _round_trip(idx: np.ndarray, k: int) -> None:
    freq = np.zeros((4, k), dtype=np.int64)
    for s in range(4):
        freq[s] = np.bincount(idx[s::4], minlength=k)
    lengths = huffman.code_lengths(
        freq.sum(0), huffman.length_limit(int(np.count_nonzero(freq.sum(0))))
    )
    sizes = (huffman.stream_bits(freq, lengths) + 7) // 8
    streams = huffman.encode(idx, lengths, sizes)
    assert [len(s) for s in streams] == sizes.tolist()
    data = np.concatenate([np.zeros(3, np.uint8), *streams, np.full(5, 0xAA, np.uint8)])
    starts = 3 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    ends = starts + sizes
    lut = np.arange(k, dtype=np.float64)
    table = huffman.build_decode_table(lengths, lut)
    out = np.full(idx.size, -1.0)
    assert huffman.decode(data, starts, ends, table, out, add=False) == 0
    assert np.array_equal(out, idx.astype(np.float64))
    assert huffman.decode(data, starts, ends, table, out, add=True) == 0
    assert np.array_equal(out, 2 * idx.astype(np.float64))


@pytest.mark.parametrize("n", [*range(2, 40), 1000, 4099])
def test_encode_decode_round_trip_all_small_sizes(n: int, rng: np.random.Generator) -> None:
    idx = rng.geometric(0.3, size=n).clip(0, 63).astype(np.uint16)
    idx[:2] = [0, 1]
    _round_trip(idx, 64)


@pytest.mark.parametrize("k", [2, 256, 1 << 12, 1 << 16])
def test_round_trip_alphabets(k: int, rng: np.random.Generator) -> None:
    idx = np.minimum(rng.geometric(0.002 if k > 256 else 0.1, size=20000), k - 1).astype(np.uint16)
    idx[:2] = [0, k - 1]
    _round_trip(idx, k)


def test_decoder_detects_streams_of_the_wrong_size(rng: np.random.Generator) -> None:
    idx = rng.integers(0, 8, 1000).astype(np.uint16)
    freq = np.stack([np.bincount(idx[s::4], minlength=8) for s in range(4)])
    lengths = huffman.code_lengths(freq.sum(0), 11)
    sizes = (huffman.stream_bits(freq, lengths) + 7) // 8
    data = np.concatenate(huffman.encode(idx, lengths, sizes))
    table = huffman.build_decode_table(lengths, np.arange(8, dtype=np.float32))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    out = np.empty(1000, np.float32)
    short = starts + sizes
    short[2] -= 1  # stream 2 one byte short: its decode runs past its end
    assert huffman.decode(data, starts, short, table, out, add=False) == 3
    bad = data.copy()
    bad[starts[1] + sizes[1] - 1] |= 0x80  # a nonzero padding bit (or an extra code)
    status = huffman.decode(bad, starts, starts + sizes, table, out, add=False)
    assert status in (0, 2)  # padding may be full; if not, the flipped bit is detected
