"""rANS over *quads* of symbols (format version 4, mode ``0x17``; docs/FORMAT.md 6D).

At about one bit per value a step tensor uses three or four levels (``bits <= 2``). Coding
four values per coder step, as one symbol ``s[4k] | s[4k+1] << b | s[4k+2] << 2b |
s[4k+3] << 3b`` of an alphabet of at most 256, halves the coder's steps again after
:mod:`~tenfold.codec.anspairs` (the coder's cost is per step, not per bit) at about the same
size (the quad's frequency is about the product of its values'). The lanes, states, words
and checks are those of :mod:`tenfold.codec.ans` applied to the ``ceil(n / 4)`` quad
symbols; the last quad of a count that is not a multiple of 4 is padded with symbol 0,
which decoders do not write out. Measured in docs/FORMAT.md's history and the README.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tenfold.codec import packet
from tenfold.codec.ans import (
    _BIG_ENDIAN,
    _L,
    _U2,
    _check_frequencies,
    _effective,
    _enc_finish,
    _enc_loop,
    _enc_put,
    _encoder_table,
    _initial_states,
    _lane_buffer,
    _lane_bytes,
    _levels_block,
    _load_u64,
    _store_u64,
    _stream_fence,
    _stream_u64,
    _write_decoded,
    decoded_target,
    lane_ranges,
    stream_ok,
)
from tenfold.codec.anspairs import _finish_joint, _put, _step
from tenfold.errors import ConfigError

__all__ = [
    "MAX_QUAD_BITS",
    "build_quad_table",
    "decode_quads",
    "encode_level_quads",
    "product_counts",
]

#: quads are used for alphabets of at most 2**2 symbols (quad alphabets of at most 256)
MAX_QUAD_BITS = packet.MAX_QUAD_BITS
#: values quantized at a time by the fused encoder (a multiple of 16: whole lane rounds)
_BLOCK = 4096
#: decoder steps per lane run between read-bound checks (as anspairs._RUN)
_RUN = 256


@njit(cache=True, nogil=True)
def _product_counts_kernel(p: np.ndarray, used: int, bits: int, out: np.ndarray) -> None:
    # out (zeroed, 16**bits)[a | b << bits | c << 2 bits | d << 3 bits] =
    # floor(((p[a] * p[b]) * p[c]) * p[d] * 2**40) + 1 for a, b, c, d < used
    scale = float(1 << 40)
    for d in range(used):
        for c in range(used):
            for b in range(used):
                row = (d << (3 * bits)) | (c << (2 * bits)) | (b << bits)
                for a in range(used):
                    out[row | a] = np.int64(np.floor(p[a] * p[b] * p[c] * p[d] * scale)) + 1


def product_counts(p: np.ndarray, used: int, bits: int) -> np.ndarray:
    """Quad counts from the product of their values' probabilities (int64, ``16**bits``).

    ``counts[a | b << bits | c << 2 bits | d << 3 bits] = floor(p[a] p[b] p[c] p[d] 2**40)
    + 1`` (products taken left to right in binary64) for ``a, b, c, d < used``, else 0: the
    model of a quad alphabet whose values are independent, every quad of used levels
    codable. ``p``: float64 probabilities of the ``2**bits`` symbols.

    Example:
        >>> product_counts(np.array([0.5, 0.5]), 2, 1)[:3].tolist()
        [68719476737, 68719476737, 68719476737]
    """
    if not 1 <= bits <= MAX_QUAD_BITS or not 1 <= used <= 1 << bits:
        raise ConfigError(f"quads need 1 <= bits <= {MAX_QUAD_BITS} and 1 <= used <= 2**bits")
    out = np.zeros(1 << (4 * bits), dtype=np.int64)
    _product_counts_kernel(np.ascontiguousarray(p, dtype=np.float64), used, bits, out)
    return out


# ---- encoding ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _quad_levels_block(
    x: np.ndarray,
    lo: int,
    hi: int,
    inv: float,
    qlo: float,
    qhi: float,
    qmin: float,
    bits: int,
    quad: np.ndarray,
    step: float,
    dec: np.ndarray,
    sym: np.ndarray,
) -> None:
    # The quad symbols of x[lo:hi] (as far as x goes; a last partial quad's missing symbols
    # are 0) into quad[:ceil(m / 4)], m the values there: each value's symbol as
    # ans._levels_block computes it (the level a float until clamped) into ``sym`` (uint16,
    # room for m rounded up to 4), the quads then combined from sym's 64-bit words; a
    # non-empty ``dec`` gets the values' decoding computed (as ans._write_decoded). Two
    # contiguous loops, both vectorised: one loop reading x[4k .. 4k + 3] was not (2.7x
    # slower: 1.5M Laplace values, 1.44 ms against 0.54, and the whole quad encoder ran
    # at 0.73 G values/s, below the pair encoder's 0.85).
    xs = x[lo:hi]
    m = xs.size
    dst = dec[lo : lo + m]
    write = dec.size > 0
    for j in range(m):
        q = np.floor(np.float64(xs[j]) * inv + 0.5)
        q = q if q > qlo else qlo
        q = q if q < qhi else qhi
        sym[j] = np.uint16(np.int32(q - qmin))
        if write:
            dst[j] = q * step
    full = (m + 3) // 4
    for j in range(m, 4 * full):
        sym[j] = 0
    if _BIG_ENDIAN:  # symbol i of a word at its high end: combine them one by one
        for k in range(full):
            quad[k] = np.uint16(
                sym[4 * k]
                | (sym[4 * k + 1] << bits)
                | (sym[4 * k + 2] << (2 * bits))
                | (sym[4 * k + 3] << (3 * bits))
            )
        return
    # symbol i sits at bit 16 i of word k (little-endian); it moves down to bit bits * i
    words = sym[: 4 * full].view(np.uint64)
    b = np.uint64(bits)
    mask = (np.uint64(1) << b) - np.uint64(1)
    s1 = np.uint64(16) - b
    s2 = np.uint64(32) - np.uint64(2) * b
    s3 = np.uint64(48) - np.uint64(3) * b
    m1 = mask << b
    m2 = mask << (np.uint64(2) * b)
    m3 = mask << (np.uint64(3) * b)
    for k in range(full):
        w = words[k]
        quad[k] = np.uint16((w & mask) | ((w >> s1) & m1) | ((w >> s2) & m2) | ((w >> s3) & m3))


@njit(cache=True, nogil=True)
def _decoded_quads_block(
    quad: np.ndarray, count: int, bits: int, lut: np.ndarray, out: np.ndarray, lo: int
) -> None:
    # out[lo + 4k + i] = the value of quad k's symbol i (k < count), as far as out goes
    # (a padded last quad's missing values are not written)
    dst = out[lo : lo + 4 * count]
    low = (1 << bits) - 1
    full = dst.size // 4
    for k in range(full):
        s = np.int64(quad[k])
        dst[4 * k] = lut[s & low]
        dst[4 * k + 1] = lut[(s >> bits) & low]
        dst[4 * k + 2] = lut[(s >> (2 * bits)) & low]
        dst[4 * k + 3] = lut[s >> (3 * bits)]
    for j in range(4 * full, dst.size):
        dst[j] = lut[(np.int64(quad[full]) >> ((j - 4 * full) * bits)) & low]


@njit(cache=True, nogil=True)
def _encode_quads_kernel(
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
    # As anspairs._encode_pairs_kernel over quad symbols: quad k (values 4k .. 4k + 3)
    # goes to lane k % 4; quads are coded last first; a non-empty ``decoded`` gets each
    # value's lut[symbol] (an empty lut: computed, as ans._write_decoded).
    n = x.size
    m = (n + 3) // 4
    r = m % 4
    m4 = m - r
    base = np.int64(buf.ctypes.data)
    p0 = base + 2 * ends[0]
    p1 = base + 2 * ends[1]
    p2 = base + 2 * ends[2]
    p3 = base + 2 * ends[3]
    x0 = x1 = x2 = x3 = _L
    quad = np.empty(_BLOCK // 4 + 4, dtype=np.uint16)
    levels = np.empty(_BLOCK + 16, dtype=np.uint16)
    computed = decoded if lut.size == 0 else decoded[:0]
    if r:  # the last r quads (values 4 * m4 .. n - 1, padded with symbol 0)
        sym = np.zeros(16, dtype=np.uint16)
        _levels_block(x, 4 * m4, n, inv, qlo, qhi, qmin, sym)
        if decoded.size:
            _write_decoded(sym, lut, qmin, step, decoded, 4 * m4, n)
        for j in range(n - 4 * m4, 16):
            sym[j] = 0
        for k in range(r):
            quad[k] = (
                sym[4 * k]
                | (sym[4 * k + 1] << bits)
                | (sym[4 * k + 2] << (2 * bits))
                | (sym[4 * k + 3] << (3 * bits))
            )
        if r >= 3:
            x2, p2 = _enc_put(x2, tab, np.uint64(quad[2]) << _U2, p2)
        if r >= 2:
            x1, p1 = _enc_put(x1, tab, np.uint64(quad[1]) << _U2, p1)
        x0, p0 = _enc_put(x0, tab, np.uint64(quad[0]) << _U2, p0)
    qa = np.int64(quad.ctypes.data)
    hi = 4 * m4
    while hi > 0:
        lo = max(0, hi - _BLOCK)  # multiples of 16: whole groups of 4 quads
        count = (hi - lo) // 4
        _quad_levels_block(x, lo, hi, inv, qlo, qhi, qmin, bits, quad, step, computed, levels)
        if decoded.size and not computed.size:
            _decoded_quads_block(quad, count, bits, lut, decoded, lo)
        x0, x1, x2, x3, p0, p1, p2, p3 = _enc_loop(qa, count, tab, x0, x1, x2, x3, p0, p1, p2, p3)
        hi = lo
    p0 = _enc_finish(x0, p0)
    p1 = _enc_finish(x1, p1)
    p2 = _enc_finish(x2, p2)
    p3 = _enc_finish(x3, p3)
    return (p0 - base) // 2, (p1 - base) // 2, (p2 - base) // 2, (p3 - base) // 2


def encode_level_quads(
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
    """rANS-code the mid-tread levels of ``values`` four per symbol into 4 lanes (and,
    with ``decoded`` and ``lut`` or ``step``, write their decoding as
    :func:`~tenfold.codec.ans.encode_levels` does).

    Value ``j``'s symbol is ``clamp(floor(values[j] * step_inverse + 0.5), qlo, qhi) -
    qmin`` (as :func:`tenfold.codec.ans.encode_levels`); quad ``k`` is the symbol
    ``s[4k] | s[4k+1] << bits | s[4k+2] << 2 bits | s[4k+3] << 3 bits`` (``s[j] = 0`` for
    ``j >= n``), coded exactly as :func:`tenfold.codec.ans.encode` codes the quad symbols.

    Args:
        values: 1-D float32/float64.
        step_inverse, qmin, qlo, qhi: as for ``encode_levels``; ``qhi - qmin < 2**bits``.
        bits: 1 ... :data:`MAX_QUAD_BITS`.
        freq: frequencies of the ``16**bits`` quad symbols, summing to ``2**scale_bits``;
            every quad of symbols from ``qlo - qmin .. qhi - qmin`` must have ``f > 0``
            (and, when ``n % 4``, every quad whose padded symbols are 0).

    Example:
        >>> from tenfold.codec import ans
        >>> v = np.array([0.0, 1.0, -1.0, 0.0, 1.0])
        >>> f = np.full(256, 64)
        >>> encode_level_quads(v, 1.0, -1, -1, 1, 2, f, 14)[1].tobytes() == ans.encode(
        ...     np.array([1 | 2 << 2 | 0 << 4 | 1 << 6, 2], np.uint16), f, 14)[1].tobytes()
        True
    """
    f = _check_frequencies(freq, scale_bits)
    if not 1 <= bits <= MAX_QUAD_BITS or f.size != 1 << (4 * bits):
        raise ConfigError(f"quads need 1 <= bits <= {MAX_QUAD_BITS} and 16**bits frequencies")
    if not qmin <= qlo <= qhi < qmin + (1 << bits):
        raise ConfigError(f"levels {qlo}..{qhi} outside the alphabet from {qmin}")
    x = np.ascontiguousarray(values).reshape(-1)
    if x.dtype not in (np.float32, np.float64):
        raise ConfigError(f"values must be float32 or float64, got {x.dtype}")
    used = np.arange(qlo - qmin, qhi - qmin + 1)
    full = _combine(used, used, used, used, bits)
    if not np.all(f[full]):
        raise ConfigError("every quad of levels in the range needs a nonzero frequency")
    pad = x.size % 4
    if pad:  # the last quad's missing values are symbol 0
        zero = np.zeros(1, dtype=used.dtype)
        a, b, c, d = [used] * pad + [zero] * (4 - pad)
        if not np.all(f[_combine(a, b, c, d, bits)]):
            raise ConfigError("every padded last quad needs a nonzero frequency")
    return _encode_level_quads(
        x, step_inverse, qmin, qlo, qhi, bits, f, scale_bits, lut, decoded, step
    )


def _combine(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, bits: int) -> np.ndarray:
    # every quad symbol a | b << bits | c << 2 bits | d << 3 bits of the given symbol sets
    return (
        a[:, None, None, None]
        | (b[None, :, None, None] << bits)
        | (c[None, None, :, None] << (2 * bits))
        | (d[None, None, None, :] << (3 * bits))
    ).reshape(-1)


def _encode_level_quads(
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
    # encode_level_quads once its arguments are known valid (x 1-D contiguous
    # float32/float64, f valid frequencies, nonzero for every quad it needs)
    g, n_eff = _effective(f, scale_bits)
    tab = _encoder_table(g, n_eff)
    ends, buf = _lane_buffer((x.size + 3) // 4)
    lut_, out, step_ = decoded_target(x, lut, decoded, step)
    starts = _encode_quads_kernel(
        x, float(step_inverse), float(qlo), float(qhi), float(qmin), bits, tab, buf, ends,
        lut_, out, step_,
    )  # fmt: skip
    return _lane_bytes(buf, starts, ends)


# ---- decoding ---------------------------------------------------------------------------


def build_quad_table(
    freq: np.ndarray, scale_bits: int, lut: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(fbtab, values)``: as :func:`tenfold.codec.ans.build_decode_table` for the quad
    alphabet, with the decoded values of each slot's four symbols side by side
    (``values[slot] = (v0, v1, v2, v3)``, shape ``(2**n, 4)``: one 16-byte copy per quad
    for float32 outputs).

    Args:
        freq: the ``16**bits`` quad frequencies (valid: from ``unpack_frequencies``).
        lut: the decoded value of each of the ``2**bits`` symbols (float32/float64, or the
            uint16 bits of float16 values).
    """
    f = _check_frequencies(freq, scale_bits)
    lut = np.ascontiguousarray(lut).reshape(-1)
    if not 1 <= bits <= MAX_QUAD_BITS or f.size != 1 << (4 * bits) or lut.size != 1 << bits:
        raise ConfigError(f"need 16**bits frequencies and 2**bits values (bits={bits})")
    g, n_eff = _effective(f, scale_bits)
    size = 1 << n_eff
    fbtab = np.empty(size, dtype=np.uint32)
    values = np.empty((size, 4), dtype=lut.dtype)
    _quad_table_kernel(g, lut, bits, fbtab, values)
    return fbtab, values


@njit(cache=True, nogil=True)
def _quad_table_kernel(
    f: np.ndarray, lut: np.ndarray, bits: int, fbtab: np.ndarray, values: np.ndarray
) -> None:
    low = (1 << bits) - 1
    slot = 0
    for s in range(f.size):
        fs = np.uint32(f[s])
        if fs == 0:
            continue
        v0 = lut[s & low]
        v1 = lut[(s >> bits) & low]
        v2 = lut[(s >> (2 * bits)) & low]
        v3 = lut[s >> (3 * bits)]
        for r in range(fs):
            fbtab[slot] = (fs << np.uint32(16)) | np.uint32(r)
            values[slot, 0] = v0
            values[slot, 1] = v1
            values[slot, 2] = v2
            values[slot, 3] = v3
            slot += 1


@njit(inline="always", cache=True, nogil=True)
def _put_quad(
    out: np.ndarray,
    j: int,
    t: int,
    values: np.ndarray,
    va: int,
    oa: int,
    add: bool,
    packed: bool,
    streaming: bool,
) -> None:
    # values j .. j + 3 from slot t; packed: float32 out at address oa, one 16-byte copy
    # (two 8-byte ones) from the table at address va, bypassing the caches if streaming
    if packed:
        src = va + 16 * np.int64(t)
        dst = oa + 4 * j
        if streaming:
            _stream_u64(dst, _load_u64(src))  # type: ignore[call-arg]
            _stream_u64(dst + 8, _load_u64(src + 8))
        else:
            _store_u64(dst, _load_u64(src))  # type: ignore[call-arg]
            _store_u64(dst + 8, _load_u64(src + 8))
    else:
        _put(out, j, values[t, 0], add)
        _put(out, j + 1, values[t, 1], add)
        _put(out, j + 2, values[t, 2], add)
        _put(out, j + 3, values[t, 3], add)


@njit(inline="always", cache=True, nogil=True)
def _quads_run(
    fbtab: np.ndarray,
    values: np.ndarray,
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
) -> tuple[int, int, int, int, int, int, int, int]:
    # Quads k .. kend - 1 (multiples of 4), one per lane. Called with constant flags, so
    # each call site is its own loop.
    mask = np.uint64(fbtab.size - 1)
    va = np.int64(values.ctypes.data)
    oa = np.int64(out.ctypes.data)
    for kk in range(k, kend, 4):
        j = 4 * kk
        t0 = x0 & mask
        t1 = x1 & mask
        t2 = x2 & mask
        t3 = x3 & mask
        _put_quad(out, j, t0, values, va, oa, add, packed, streaming)
        _put_quad(out, j + 4, t1, values, va, oa, add, packed, streaming)
        _put_quad(out, j + 8, t2, values, va, oa, add, packed, streaming)
        _put_quad(out, j + 12, t3, values, va, oa, add, packed, streaming)
        x0, q0 = _step(x0, np.uint64(fbtab[t0]), sh, q0, last, bounded)
        x1, q1 = _step(x1, np.uint64(fbtab[t1]), sh, q1, last, bounded)
        x2, q2 = _step(x2, np.uint64(fbtab[t2]), sh, q2, last, bounded)
        x3, q3 = _step(x3, np.uint64(fbtab[t3]), sh, q3, last, bounded)
    return x0, x1, x2, x3, q0, q1, q2, q3


@njit(cache=True, nogil=True)
def _decode_quads_packed(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    values: np.ndarray,
    scale_bits: int,
    out: np.ndarray,
    streaming: bool,
) -> int:
    # float32 output, overwritten: each quad one 16-byte copy from ``values``; runs of
    # _RUN steps per lane whose reads provably stay inside the data skip the read bound
    # (as anspairs._decode_pairs_packed: every step reads at most one word); streaming:
    # non-temporal stores (decode's docstring)
    x0, x1, x2, x3, q0, q1, q2, q3, bad = _initial_states(data, starts)
    sh = np.uint64(scale_bits)
    last = np.int64(data.ctypes.data) + data.size - 2
    full = out.size // 4  # complete quads
    f4 = full - full % 4
    k = 0
    while k < f4:
        kend = min(f4, k + 4 * _RUN)
        inside = max(max(q0, q1), max(q2, q3)) + (kend - k) // 2 <= last
        if inside and streaming:
            x0, x1, x2, x3, q0, q1, q2, q3 = _quads_run(
                fbtab, values, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, True,
            )  # fmt: skip
        elif inside:
            x0, x1, x2, x3, q0, q1, q2, q3 = _quads_run(
                fbtab, values, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, False, False,
            )  # fmt: skip
        else:
            x0, x1, x2, x3, q0, q1, q2, q3 = _quads_run(
                fbtab, values, out, k, kend, sh,
                x0, x1, x2, x3, q0, q1, q2, q3, last, False, True, True, False,
            )  # fmt: skip
        k = kend
    if streaming:
        _stream_fence()  # type: ignore[call-arg]
    return _finish_joint(
        data, ends, fbtab, values, sh, out, False, f4,
        x0, x1, x2, x3, q0, q1, q2, q3, bad,
    )  # fmt: skip


@njit(cache=True, nogil=True)
def _decode_quads_kernel(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    values: np.ndarray,
    scale_bits: int,
    out: np.ndarray,
    add: bool,
) -> int:
    # Any output, overwritten or added to; every read bounded.
    x0, x1, x2, x3, q0, q1, q2, q3, bad = _initial_states(data, starts)
    sh = np.uint64(scale_bits)
    last = np.int64(data.ctypes.data) + data.size - 2
    full = out.size // 4
    f4 = full - full % 4
    x0, x1, x2, x3, q0, q1, q2, q3 = _quads_run(
        fbtab, values, out, 0, f4, sh,
        x0, x1, x2, x3, q0, q1, q2, q3, last, add, False, True, False,
    )  # fmt: skip
    return _finish_joint(
        data, ends, fbtab, values, sh, out, add, f4,
        x0, x1, x2, x3, q0, q1, q2, q3, bad,
    )  # fmt: skip


def decode_quads(
    data: np.ndarray,
    lane_starts: np.ndarray,
    lane_ends: np.ndarray,
    table: tuple[np.ndarray, np.ndarray],
    out: np.ndarray,
    *,
    add: bool,
    streaming: bool = False,
) -> int:
    """Decode ``out.size`` values, four per quad symbol, from the 4 lanes (or add them).

    As :func:`tenfold.codec.ans.decode` (same arguments, same return value: 0, or 1 + the
    first corrupt lane), with :func:`build_quad_table`'s table. ``streaming``: write a
    float32 ``out`` (overwritten, 16-byte aligned) with non-temporal stores, for outputs
    larger than the caches that are not read back at once (:func:`stream_ok`).
    """
    fbtab, values = table
    if out.ndim != 1 or not out.flags.c_contiguous or out.dtype != values.dtype:
        raise ConfigError(f"out must be 1-D, contiguous and of the table's dtype {values.dtype}")
    data, starts, ends, short_mask = lane_ranges(data, lane_starts, lane_ends)
    scale = int(fbtab.size).bit_length() - 1
    if not add and out.dtype == np.float32:
        streaming = streaming and stream_ok(out)
        status = _decode_quads_packed(data, starts, ends, fbtab, values, scale, out, streaming)
    else:
        status = _decode_quads_kernel(data, starts, ends, fbtab, values, scale, out, add)
    bad = short_mask | int(status)
    return (bad & -bad).bit_length()
