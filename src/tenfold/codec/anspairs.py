"""rANS over *pairs* of symbols (format version 3, mode ``0x16``; docs/FORMAT.md 6C).

At a few bits per value a step tensor's alphabet is small (``2**bits <= 32`` levels).
Coding two values per coder step, as one symbol ``s[2k] + s[2k+1] * 2**bits`` of an
alphabet of at most 1024, halves the coder's steps -
its cost is per step, not per bit - at no cost in size (the pair's frequency is about the
product of its halves'). The lanes, states, words and checks are those of
:mod:`tenfold.codec.ans` applied to the ``ceil(n / 2)`` pair symbols; a tensor with an odd
count pads its last pair with symbol 0, which decoders do not write out.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tenfold.codec import packet
from tenfold.codec.ans import (
    _L,
    _LOW16,
    _U2,
    _U16,
    _branchless,
    _check_frequencies,
    _effective,
    _enc_finish,
    _enc_loop,
    _enc_put,
    _encoder_table,
    _initial_states,
    _lane_bad,
    _lane_buffer,
    _lane_bytes,
    _levels_block,
    _load_le16,
    _load_u64,
    _store_u64,
    _stream_fence,
    _stream_u64,
    _write_decoded,
    decoded_target,
    lane_ranges,
    stream_ok,
)
from tenfold.errors import ConfigError

__all__ = [
    "MAX_PAIR_BITS",
    "build_pair_table",
    "compact_table",
    "decode_pairs",
    "encode_level_pairs",
    "product_counts",
]

#: pairs are used for alphabets of at most 2**5 symbols (pair alphabets of at most 1024)
MAX_PAIR_BITS = packet.MAX_PAIR_BITS
#: values quantized at a time by the fused encoder (a multiple of 8)
_BLOCK = 2048


@njit(cache=True, nogil=True)
def _pairs_block(sym: np.ndarray, count: int, bits: int, joint: np.ndarray) -> None:
    # joint[k] = sym[2k] + sym[2k + 1] << bits for k < count
    for k in range(count):
        joint[k] = sym[2 * k] | (sym[2 * k + 1] << bits)


@njit(cache=True, nogil=True)
def _product_counts_kernel(p: np.ndarray, used: int, bits: int, out: np.ndarray) -> None:
    # out (zeroed, 4**bits) [a + b << bits] = floor(p[a] * p[b] * 2**40) + 1 for a, b < used:
    # the products rounded as numpy's np.outer(p, p) * 2**40 rounds them (no fastmath, so
    # no reassociation or contraction)
    scale = float(1 << 40)
    for b in range(used):
        row = b << bits
        for a in range(used):
            out[row + a] = np.int64(np.floor(p[a] * p[b] * scale)) + 1


def product_counts(p: np.ndarray, used: int, bits: int) -> np.ndarray:
    """Pair counts from the product of their halves' probabilities (int64, ``4**bits``).

    ``counts[a + b * 2**bits] = floor(p[a] * p[b] * 2**40) + 1`` for ``a, b < used``, else 0:
    the model of a pair alphabet whose values are independent, every pair of used levels
    codable. ``p``: float64 probabilities of the ``2**bits`` symbols.
    """
    out = np.zeros(1 << (2 * bits), dtype=np.int64)
    _product_counts_kernel(np.ascontiguousarray(p, dtype=np.float64), used, bits, out)
    return out


@njit(cache=True, nogil=True)
def _pair_levels_block(
    x: np.ndarray,
    lo: int,
    hi: int,
    inv: float,
    qlo: float,
    qhi: float,
    qmin: float,
    bits: int,
    joint: np.ndarray,
    step: float,
    dec: np.ndarray,
) -> None:
    # The pair symbols of x[lo:hi] (hi - lo even; hi may be x.size + 1, the padded last
    # pair of an odd count, whose second symbol is 0) into joint[:(hi - lo) // 2]: each
    # value's symbol as ans._levels_block computes it (the level a float until clamped),
    # the two combined in the same branch-free loop, so no per-value symbol buffer is
    # written and read back (measured against _levels_block + _pairs_block over a CharGPT
    # pseudo-gradient's 10.7M float32 values: 1.01x without the decoding, 1.06x with it)
    xs = x[lo:hi]
    dst = dec[lo:hi]
    write = dec.size > 0
    sh = np.int32(bits)
    half = xs.size // 2
    for k in range(half):
        a = np.floor(np.float64(xs[2 * k]) * inv + 0.5)
        a = a if a > qlo else qlo
        a = a if a < qhi else qhi
        b = np.floor(np.float64(xs[2 * k + 1]) * inv + 0.5)
        b = b if b > qlo else qlo
        b = b if b < qhi else qhi
        joint[k] = np.uint16(np.int32(a - qmin) | (np.int32(b - qmin) << sh))
        if write:
            dst[2 * k] = a * step
            dst[2 * k + 1] = b * step
    if xs.size % 2:
        a = np.floor(np.float64(xs[2 * half]) * inv + 0.5)
        a = a if a > qlo else qlo
        a = a if a < qhi else qhi
        joint[half] = np.uint16(np.int32(a - qmin))
        if write and 2 * half < dst.size:
            dst[2 * half] = a * step


@njit(cache=True, nogil=True)
def _decoded_pairs_block(
    joint: np.ndarray, count: int, bits: int, lut: np.ndarray, out: np.ndarray, lo: int
) -> None:
    # out[lo + 2k], out[lo + 2k + 1] = the values of pair k's two symbols, k < count, as
    # far as out goes (an odd count's padding is not written). The halves are taken back
    # from the pair symbol: faster than a (4**bits, 2) pair table or the table lookups
    # inside _pair_levels_block's loop, which stop its vectorisation.
    dst = out[lo : lo + 2 * count]
    low = (1 << bits) - 1
    half = dst.size // 2
    for k in range(half):
        j = joint[k]
        dst[2 * k] = lut[j & low]
        dst[2 * k + 1] = lut[j >> bits]
    if dst.size % 2:
        dst[2 * half] = lut[joint[half] & low]


@njit(cache=True, nogil=True)
def _encode_pairs_kernel(
    x: np.ndarray,
    inv: float,
    qlo: float,
    qhi: float,
    qmin: float,
    bits: int,
    tab: np.ndarray,
    buf: np.ndarray,
    ends: np.ndarray,
    lut: np.ndarray,
    decoded: np.ndarray,
    step: float,
) -> tuple[int, int, int, int]:
    # As ans._encode_values_kernel, over pair symbols: pair k (values 2k, 2k + 1) goes to
    # lane k % 4; pairs are coded last first; a non-empty ``decoded`` gets lut[symbol]
    # (an empty lut: the value computed in the quantizing loop, as ans._write_decoded).
    n = x.size
    m = (n + 1) // 2
    r = m % 4
    m4 = m - r
    base = np.int64(buf.ctypes.data)
    p0 = base + 2 * ends[0]
    p1 = base + 2 * ends[1]
    p2 = base + 2 * ends[2]
    p3 = base + 2 * ends[3]
    x0 = x1 = x2 = x3 = _L
    sym = np.zeros(_BLOCK + 8, dtype=np.uint16)
    joint = np.empty(_BLOCK // 2 + 4, dtype=np.uint16)
    computed = decoded if lut.size == 0 else decoded[:0]
    # the last r pairs (values 2 * m4 .. n - 1; an odd n pads with symbol 0)
    if r:
        _levels_block(x, 2 * m4, n, inv, qlo, qhi, qmin, sym)
        if decoded.size:
            _write_decoded(sym, lut, qmin, step, decoded, 2 * m4, n)
        sym[n - 2 * m4] = 0
        _pairs_block(sym, r, bits, joint)
        if r >= 3:
            row = np.uint64(joint[2]) << _U2
            x2, p2 = _enc_put(x2, tab, row, p2)
        if r >= 2:
            row = np.uint64(joint[1]) << _U2
            x1, p1 = _enc_put(x1, tab, row, p1)
        row = np.uint64(joint[0]) << _U2
        x0, p0 = _enc_put(x0, tab, row, p0)
    ja = np.int64(joint.ctypes.data)
    hi = 2 * m4
    while hi > 0:
        lo = max(0, hi - _BLOCK)  # multiples of 8: whole groups of 4 pairs
        count = (hi - lo) // 2
        _pair_levels_block(x, lo, hi, inv, qlo, qhi, qmin, bits, joint, step, computed)
        if decoded.size and not computed.size:
            _decoded_pairs_block(joint, count, bits, lut, decoded, lo)
        x0, x1, x2, x3, p0, p1, p2, p3 = _enc_loop(ja, count, tab, x0, x1, x2, x3, p0, p1, p2, p3)
        hi = lo
    p0 = _enc_finish(x0, p0)
    p1 = _enc_finish(x1, p1)
    p2 = _enc_finish(x2, p2)
    p3 = _enc_finish(x3, p3)
    return (p0 - base) // 2, (p1 - base) // 2, (p2 - base) // 2, (p3 - base) // 2


def encode_level_pairs(
    values: np.ndarray,
    step_inverse: float,
    qmin: int,
    qlo: int,
    qhi: int,
    bits: int,
    freq: np.ndarray,
    scale_bits: int,
    *,
    lut: np.ndarray | None = None,
    decoded: np.ndarray | None = None,
    step: float | None = None,
) -> list[np.ndarray]:
    """rANS-code the mid-tread levels of ``values`` two per symbol into 4 lanes (and, with
    ``decoded`` and ``lut`` or ``step``, write their decoding as
    :func:`~tenfold.codec.ans.encode_levels` does).

    Value ``j``'s symbol is ``clamp(floor(values[j] * step_inverse + 0.5), qlo, qhi) -
    qmin`` (as :func:`tenfold.codec.ans.encode_levels`); pair ``k`` is the symbol
    ``s[2k] + s[2k + 1] * 2**bits`` (``s[n] = 0`` when ``n`` is odd), coded exactly as
    :func:`tenfold.codec.ans.encode` codes the pair symbols.

    Args:
        values: 1-D float32/float64.
        step_inverse, qmin, qlo, qhi: as for ``encode_levels``; ``qhi - qmin < 2**bits``.
        bits: 1 ... :data:`MAX_PAIR_BITS`.
        freq: frequencies of the ``4**bits`` pair symbols, summing to ``2**scale_bits``;
            every pair of two symbols from ``qlo - qmin .. qhi - qmin`` must have ``f > 0``
            (and, for an odd count, every pair whose second symbol is 0).

    Example:
        >>> from tenfold.codec import ans
        >>> v = np.array([0.0, 1.0, -1.0])
        >>> f = np.full(16, 256)
        >>> encode_level_pairs(v, 1.0, -1, -1, 1, 2, f, 12)[1].tobytes() == ans.encode(
        ...     np.array([1 + 2 * 4, 0 + 0 * 4], np.uint16), f, 12)[1].tobytes()
        True
    """
    f = _check_frequencies(freq, scale_bits)
    if not 1 <= bits <= MAX_PAIR_BITS or f.size != 1 << (2 * bits):
        raise ConfigError(f"pairs need 1 <= bits <= {MAX_PAIR_BITS} and 4**bits frequencies")
    if not qmin <= qlo <= qhi < qmin + (1 << bits):
        raise ConfigError(f"levels {qlo}..{qhi} outside the alphabet from {qmin}")
    used = np.arange(qlo - qmin, qhi - qmin + 1)
    pairs = (used[:, None] + (used[None, :] << bits)).reshape(-1)
    x = np.ascontiguousarray(values).reshape(-1)
    if not np.all(f[pairs]) or (x.size % 2 and not np.all(f[used])):
        raise ConfigError("every pair of levels in the range needs a nonzero frequency")
    if x.dtype not in (np.float32, np.float64):
        raise ConfigError(f"values must be float32 or float64, got {x.dtype}")
    return _encode_level_pairs(
        x, step_inverse, qmin, qlo, qhi, bits, f, scale_bits, lut, decoded, step
    )


def _encode_level_pairs(
    x: np.ndarray,
    step_inverse: float,
    qmin: int,
    qlo: int,
    qhi: int,
    bits: int,
    f: np.ndarray,
    scale_bits: int,
    lut: np.ndarray | None,
    decoded: np.ndarray | None,
    step: float | None = None,
) -> list[np.ndarray]:
    # encode_level_pairs once its arguments are known valid (x 1-D contiguous
    # float32/float64, f valid frequencies, nonzero for every pair it needs): a caller that
    # built them skips the checks
    g, n_eff = _effective(f, scale_bits)
    tab = _encoder_table(g, n_eff)
    ends, buf = _lane_buffer((x.size + 1) // 2)
    lut_, out, step_ = decoded_target(x, lut, decoded, step)
    starts = _encode_pairs_kernel(
        x, float(step_inverse), float(qlo), float(qhi), float(qmin), bits, tab, buf, ends,
        lut_, out, step_,
    )  # fmt: skip
    return _lane_bytes(buf, starts, ends)


# ---- decoding ---------------------------------------------------------------------------

#: Decoder steps per lane run between read-bound checks (see ``_decode_pairs_kernel``).
_RUN = 256


def build_pair_table(
    freq: np.ndarray, scale_bits: int, lut: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(fbtab, first, second, both)``: as :func:`tenfold.codec.ans.build_decode_table`
    for the pair alphabet, with the decoded value of each slot's first and second symbol,
    and both side by side (``both[slot] = (first[slot], second[slot])``, shape
    ``(2**n, 2)``: one 8-byte store per pair for float32 outputs).

    Args:
        freq: the ``4**bits`` pair frequencies (valid: from ``unpack_frequencies``).
        lut: the decoded value of each of the ``2**bits`` symbols (float32/float64, or the
            uint16 bits of float16 values).
    """
    f = _check_frequencies(freq, scale_bits)
    lut = np.ascontiguousarray(lut).reshape(-1)
    if f.size != 1 << (2 * bits) or lut.size != 1 << bits:
        raise ConfigError(f"need 4**bits frequencies and 2**bits values (bits={bits})")
    g, n_eff = _effective(f, scale_bits)
    size = 1 << n_eff
    fbtab = np.empty(size, dtype=np.uint32)
    first = np.empty(size, dtype=lut.dtype)
    second = np.empty(size, dtype=lut.dtype)
    both = np.empty((size, 2), dtype=lut.dtype)
    _pair_table_kernel(g, lut, bits, fbtab, first, second, both)
    return fbtab, first, second, both


@njit(cache=True, nogil=True)
def _pair_table_kernel(
    f: np.ndarray,
    lut: np.ndarray,
    bits: int,
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: np.ndarray,
) -> None:
    # ans._build_table_kernel over pair symbols (one pass: numpy took 34 us per tensor)
    low = (1 << bits) - 1
    slot = 0
    for s in range(f.size):
        fs = np.uint32(f[s])
        if fs == 0:
            continue
        a = lut[s & low]
        b = lut[s >> bits]
        for r in range(fs):
            fbtab[slot] = (fs << np.uint32(16)) | np.uint32(r)
            first[slot] = a
            second[slot] = b
            both[slot, 0] = a
            both[slot, 1] = b
            slot += 1


#: the precision (bits) from which the packed decoder looks slots up in
#: compact_table's tables: below it the per-slot table (16 KiB at 12 bits) is cached
#: as well, and the extra lookup only lengthens each step (CharGPT at 0.25 bits/param, pairs
#: at 12-13 bits: decompress 694-734 -> 564-646 M values/s with it)
COMPACT_MIN_SCALE_BITS = 14


def compact_table(
    fbtab: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed pair decoder's form of a joint table (:func:`build_pair_table`'s
    ``fbtab`` and ``both``; any per-slot values of shape ``(slots, k)``): ``(rank, fb,
    joint)``, with ``rank[slot]`` the index of the slot's symbol among the used ones
    (uint8, or uint16 beyond 256 used symbols), ``fb[i] + slot == fbtab[slot]`` (``fb[i]``
    = ``(f << 16) - cum`` of used symbol ``i``) and ``joint[i]`` its decoded values.

    Why: a decoder step's state waits on its table lookup, and the per-slot table (4 bytes
    a slot, 64-128 KiB at 14-15 bits of precision) lives in L2; a byte a slot and a few
    KiB per symbol stay in L1 (pairs, 4M values at 14 bits: 2.1 -> 1.7 ns per step, 15
    bits 2.4 -> 1.9; docs/SPEED.md).

    Example:
        >>> freq = np.array([3, 1] + [0] * 14, dtype=np.int64)  # 2 used pairs, P = 2
        >>> fbtab, _, _, both = build_pair_table(freq, 2, np.arange(4, dtype=np.float32), 2)
        >>> rank, fb, pairs = compact_table(fbtab, both)
        >>> rank.tolist(), [int(fb[rank[t]]) + t == int(fbtab[t]) for t in range(4)]
        ([0, 0, 0, 1], [True, True, True, True])
    """
    starts = np.flatnonzero((fbtab & np.uint32(0xFFFF)) == 0)  # each symbol's first slot
    rank = np.empty(fbtab.size, dtype=np.uint8 if starts.size <= 256 else np.uint16)
    fb = np.empty(starts.size, dtype=np.uint32)
    joint = np.empty((starts.size, values.shape[1]), dtype=values.dtype)
    _compact_kernel(fbtab, values, starts, rank, fb, joint)
    return rank, fb, joint


@njit(cache=True, nogil=True)
def _compact_kernel(
    fbtab: np.ndarray,
    values: np.ndarray,
    starts: np.ndarray,
    rank: np.ndarray,
    fb: np.ndarray,
    joint: np.ndarray,
) -> None:
    for i in range(starts.size):
        lo = starts[i]
        hi = starts[i + 1] if i + 1 < starts.size else fbtab.size
        fb[i] = fbtab[lo] - np.uint32(lo)  # (f << 16) + 0 - cum
        for c in range(values.shape[1]):
            joint[i, c] = values[lo, c]
        for t in range(lo, hi):
            rank[t] = i


@njit(inline="always", cache=True, nogil=True)
def _step(x: int, e: int, sh: int, q: int, last: int, bounded: bool) -> tuple[int, int]:
    # One branch-free decoder step (ans._dec_next with branchless=True). Unbounded, the
    # caller has checked that this run's reads (at most one word per step) stay inside
    # the data.
    x = (e >> _U16) * (x >> sh) + (e & _LOW16)
    if bounded:
        w: int = _load_le16(min(q, last))  # type: ignore[call-arg]
    else:
        w = _load_le16(q)  # type: ignore[call-arg]
    c = x < _L
    x = ((x << _U16) | w) if c else x
    q += np.int64(c) << 1
    return x, q


@njit(inline="always", cache=True, nogil=True)
def _step_branchy(x: int, e: int, sh: int, q: int) -> tuple[int, int]:
    # One decoder step that renormalises behind a branch (ans._dec_next with branchless=
    # False), reading unbounded (the caller's run is inside the data): where few steps
    # renormalise (under ans._DECODE_BRANCHLESS_BITS bits per step), the branch predicts
    # well and costs less than the branch-free select
    x = (e >> _U16) * (x >> sh) + (e & _LOW16)
    if x < _L:
        x = (x << _U16) | _load_le16(q)  # type: ignore[call-arg]
        q += 2
    return x, q


@njit(inline="always", cache=True, nogil=True)
def _put(out: np.ndarray, j: int, v: float, add: bool) -> None:
    if add:
        out[j] += v
    else:
        out[j] = v


@njit(inline="always", cache=True, nogil=True)
def _put_pair(
    out: np.ndarray,
    j: int,
    t: int,
    first: np.ndarray,
    second: np.ndarray,
    both: int,
    oa: int,
    add: bool,
    packed: bool,
    streaming: bool,
) -> None:
    # values j, j + 1 from slot t; packed: float32 out at address oa, one 8-byte copy from
    # the pair table at address both, bypassing the caches if streaming
    if packed and streaming:
        _stream_u64(oa + 4 * j, _load_u64(both + 8 * np.int64(t)))  # type: ignore[call-arg]
    elif packed:
        _store_u64(oa + 4 * j, _load_u64(both + 8 * np.int64(t)))  # type: ignore[call-arg]
    else:
        _put(out, j, first[t], add)
        _put(out, j + 1, second[t], add)


@njit(inline="always", cache=True, nogil=True)
def _pairs_run(
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: int,
    rank: np.ndarray,
    out: np.ndarray,
    k: int,
    kend: int,
    sh: int,
    x0: int,
    x1: int,
    x2: int,
    x3: int,
    q0: int,
    q1: int,
    q2: int,
    q3: int,
    last: int,
    add: bool,
    packed: bool,
    bounded: bool,
    streaming: bool,
    branchy: bool,
    compact: bool,
) -> tuple[int, int, int, int, int, int, int, int]:
    # Pairs k .. kend - 1 (multiples of 4), one per lane. Called with constant flags, so
    # each call site is its own loop (branchy: unbounded runs only). ``compact`` (packed
    # only): slot t is pair rank[t] of the used ones, ``fbtab`` and ``both`` are indexed
    # by that rank, and fbtab[rank[t]] + t is the slot's entry (compact_table)
    mask = np.uint64((rank.size if compact else fbtab.size) - 1)
    oa = np.int64(out.ctypes.data)
    for kk in range(k, kend, 4):
        j = 2 * kk
        t0 = x0 & mask
        t1 = x1 & mask
        t2 = x2 & mask
        t3 = x3 & mask
        if compact:
            e0 = np.uint64(fbtab[rank[t0]]) + t0
            e1 = np.uint64(fbtab[rank[t1]]) + t1
            e2 = np.uint64(fbtab[rank[t2]]) + t2
            e3 = np.uint64(fbtab[rank[t3]]) + t3
            t0 = np.uint64(rank[t0])
            t1 = np.uint64(rank[t1])
            t2 = np.uint64(rank[t2])
            t3 = np.uint64(rank[t3])
        else:
            e0 = np.uint64(fbtab[t0])
            e1 = np.uint64(fbtab[t1])
            e2 = np.uint64(fbtab[t2])
            e3 = np.uint64(fbtab[t3])
        _put_pair(out, j, t0, first, second, both, oa, add, packed, streaming)
        _put_pair(out, j + 2, t1, first, second, both, oa, add, packed, streaming)
        _put_pair(out, j + 4, t2, first, second, both, oa, add, packed, streaming)
        _put_pair(out, j + 6, t3, first, second, both, oa, add, packed, streaming)
        if branchy:
            x0, q0 = _step_branchy(x0, e0, sh, q0)
            x1, q1 = _step_branchy(x1, e1, sh, q1)
            x2, q2 = _step_branchy(x2, e2, sh, q2)
            x3, q3 = _step_branchy(x3, e3, sh, q3)
        else:
            x0, q0 = _step(x0, e0, sh, q0, last, bounded)
            x1, q1 = _step(x1, e1, sh, q1, last, bounded)
            x2, q2 = _step(x2, e2, sh, q2, last, bounded)
            x3, q3 = _step(x3, e3, sh, q3, last, bounded)
    return x0, x1, x2, x3, q0, q1, q2, q3


@njit(inline="always", cache=True, nogil=True)
def _finish_joint(
    data: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    values: np.ndarray,
    sh: int,
    out: np.ndarray,
    add: bool,
    f4: int,
    x0: int,
    x1: int,
    x2: int,
    x3: int,
    q0: int,
    q1: int,
    q2: int,
    q3: int,
    bad: int,
) -> int:
    # The joint symbols f4 .. m - 1 left after the runs of whole lane rounds, in lane order
    # (at most 3 and a partial one), for pairs or quads alike: ``values`` holds each slot's
    # per = values.shape[1] decoded values, of which a padded last symbol writes only the
    # first n % per. Then the end checks: the bit mask of the corrupt lanes.
    n = out.size
    per = values.shape[1]
    base = np.int64(data.ctypes.data)
    last = base + data.size - 2
    mask = np.uint64(fbtab.size - 1)
    for k in range(f4, (n + per - 1) // per):
        lane = k % 4
        if lane == 0:
            x, q = x0, q0
        elif lane == 1:
            x, q = x1, q1
        elif lane == 2:
            x, q = x2, q2
        else:
            x, q = x3, q3
        t = x & mask
        for i in range(per):
            if per * k + i < n:
                _put(out, per * k + i, values[t, i], add)
        x, q = _step(x, np.uint64(fbtab[t]), sh, q, last, True)
        if lane == 0:
            x0, q0 = x, q
        elif lane == 1:
            x1, q1 = x, q
        elif lane == 2:
            x2, q2 = x, q
        else:
            x3, q3 = x, q
    bad |= _lane_bad(x0, q0, base + ends[0], 1)
    bad |= _lane_bad(x1, q1, base + ends[1], 2)
    bad |= _lane_bad(x2, q2, base + ends[2], 4)
    bad |= _lane_bad(x3, q3, base + ends[3], 8)
    return bad


@njit(cache=True, nogil=True)
def _decode_pairs_packed(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: np.ndarray,
    scale_bits: int,
    out: np.ndarray,
    streaming: bool,
    branchy: bool,
) -> int:
    # _packed_pairs with the per-slot tables (precisions below COMPACT_MIN_SCALE_BITS)
    none = np.empty(0, dtype=np.uint8)
    return _packed_pairs(
        data, starts, ends, fbtab, first, second, both, (none, fbtab, both), scale_bits,
        out, streaming, branchy, False,
    )  # fmt: skip


@njit(cache=True, nogil=True)
def _decode_pairs_packed_compact(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: np.ndarray,
    compact: tuple[np.ndarray, np.ndarray, np.ndarray],
    scale_bits: int,
    out: np.ndarray,
    streaming: bool,
    branchy: bool,
) -> int:
    # _packed_pairs whose runs look slots up in compact_table's tables
    return _packed_pairs(
        data, starts, ends, fbtab, first, second, both, compact, scale_bits, out, streaming,
        branchy, True,
    )  # fmt: skip


@njit(inline="always", cache=True, nogil=True)
def _packed_pairs(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: np.ndarray,
    compact: tuple[np.ndarray, np.ndarray, np.ndarray],
    scale_bits: int,
    out: np.ndarray,
    streaming: bool,
    branchy: bool,
    use_compact: bool,
) -> int:
    # float32 output, overwritten: each pair is one 8-byte copy from ``both`` (streaming:
    # a non-temporal one, ans.stream_ok; branchy: the unbounded runs renormalise behind a
    # branch, _step_branchy). Returns the
    # bit mask of the corrupt lanes (ans._decode_kernel's checks); every lane has >= 4
    # bytes (the caller substitutes shorter ones). Reads are bounded by the data's last
    # word, not the lane's: a lane that runs out reads the next lanes' bytes and ends past
    # its end, which marks it corrupt all the same. Runs of _RUN steps whose reads provably
    # stay inside the data skip even that bound (every step reads <= 1 word). Measured
    # (10M float32 values at ~1 bit, 12 rounds, median speed-up over one bound per lane and
    # two 4-byte stores per pair): runs and 8-byte stores 1.31x, 8-byte stores alone 1.15x.
    # (The other outputs keep one bounded loop: each loop copy costs seconds of compile.)
    # ``use_compact`` (a constant at each caller): the runs look their slots up in
    # ``compact`` (compact_table: a byte per slot, entries per used pair); the last
    # steps in the per-slot tables.
    x0, x1, x2, x3, q0, q1, q2, q3, bad = _initial_states(data, starts)
    rank, fbc, bothc = compact
    ba = np.int64(bothc.ctypes.data)
    sh = np.uint64(scale_bits)
    last = np.int64(data.ctypes.data) + data.size - 2
    full = out.size // 2  # complete pairs
    f4 = full - full % 4
    k = 0
    while k < f4:
        kend = min(f4, k + 4 * _RUN)
        inside = max(max(q0, q1), max(q2, q3)) + (kend - k) // 2 <= last
        if inside and streaming and branchy:
            x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
                fbc, first, second, ba, rank, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, True, True,
                use_compact,
            )  # fmt: skip
        elif inside and streaming:
            x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
                fbc, first, second, ba, rank, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, True, False,
                use_compact,
            )  # fmt: skip
        elif inside and branchy:
            x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
                fbc, first, second, ba, rank, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, False, True,
                use_compact,
            )  # fmt: skip
        elif inside:
            x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
                fbc, first, second, ba, rank, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, False, False,
                use_compact,
            )  # fmt: skip
        else:
            x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
                fbc, first, second, ba, rank, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, True, False, False,
                use_compact,
            )  # fmt: skip
        k = kend
    if streaming:
        _stream_fence()  # type: ignore[call-arg]
    return _finish_joint(
        data, ends, fbtab, both, sh, out, False, f4,
        x0, x1, x2, x3, q0, q1, q2, q3, bad,
    )  # fmt: skip


@njit(cache=True, nogil=True)
def _decode_pairs_kernel(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    both: np.ndarray,
    scale_bits: int,
    out: np.ndarray,
    add: bool,
) -> int:
    # Any output, overwritten or added to; as _decode_pairs_packed, every read bounded.
    x0, x1, x2, x3, q0, q1, q2, q3, bad = _initial_states(data, starts)
    rank = np.empty(0, dtype=np.uint8)  # the per-slot tables
    sh = np.uint64(scale_bits)
    last = np.int64(data.ctypes.data) + data.size - 2
    full = out.size // 2
    f4 = full - full % 4
    x0, x1, x2, x3, q0, q1, q2, q3 = _pairs_run(
        fbtab, first, second, 0, rank, out, 0, f4, sh,
        x0, x1, x2, x3, q0, q1, q2, q3, last, add, False, True, False, False, False,
    )  # fmt: skip
    return _finish_joint(
        data, ends, fbtab, both, sh, out, add, f4,
        x0, x1, x2, x3, q0, q1, q2, q3, bad,
    )  # fmt: skip


def decode_pairs(
    data: np.ndarray,
    lane_starts: np.ndarray,
    lane_ends: np.ndarray,
    table: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
    *,
    add: bool,
    streaming: bool = False,
) -> int:
    """Decode ``out.size`` values, two per pair symbol, from the 4 lanes (or add them).

    As :func:`tenfold.codec.ans.decode` (same arguments, same return value: 0, or 1 + the
    first corrupt lane), with :func:`build_pair_table`'s table; ``streaming`` as
    :func:`tenfold.codec.ansquads.decode_quads`'.
    """
    fbtab, first, second, both = table
    if out.ndim != 1 or not out.flags.c_contiguous or out.dtype != first.dtype:
        raise ConfigError(f"out must be 1-D, contiguous and of the table's dtype {first.dtype}")
    data, starts, ends, short_mask = lane_ranges(data, lane_starts, lane_ends)
    scale = int(fbtab.size).bit_length() - 1
    if not add and out.dtype == np.float32:
        streaming = streaming and stream_ok(out)
        # few renormalisations per step (a low rate): a branch predicts them (ans.decode)
        branchy = not _branchless(starts, ends, (out.size + 1) // 2)
        if scale >= COMPACT_MIN_SCALE_BITS:
            status = _decode_pairs_packed_compact(
                data, starts, ends, fbtab, first, second, both,
                compact_table(fbtab, both), scale, out, streaming, branchy,
            )  # fmt: skip
        else:
            status = _decode_pairs_packed(
                data, starts, ends, fbtab, first, second, both, scale, out, streaming, branchy
            )
    else:
        status = _decode_pairs_kernel(
            data, starts, ends, fbtab, first, second, both, scale, out, add
        )
    bad = short_mask | int(status)
    return (bad & -bad).bit_length()
