"""Canonical, length-limited Huffman coding with four interleaved bit streams.

Hand-written (numba) because no library we may depend on offers a length-limited canonical
Huffman coder over a 2**N-symbol alphabet with interleaved streams and a guarded,
table-driven decoder; the design follows zstd's huff0.

* **Code lengths** come from the histogram by the Moffat-Katajainen in-place algorithm
  (optimal, O(m) after sorting); if its longest code exceeds the limit, package-merge
  (Larmore-Hirschberg) computes the optimal *length-limited* code instead (O(limit * m)).
  Weight-like data has many rare outlier bins that all need a code: the simple
  clamp-and-repair of miniz/zlib cost ~0.3 bits/value more than package-merge on our
  benchmark data. Symbols are ranked by (count, symbol), so lengths are deterministic.
* **Length limit**: ``max(12, ceil(log2(used symbols)))``, at most 14. A 2**12-entry decode
  table (16 KiB of float32 values + 4 KiB of lengths) still sits in L1, and measured decode
  speed at 12 equals 11's while the benchmark data codes 1.8% smaller (3.65 vs 3.72
  bits/value; 13 and 14 save another ~1% but decode 5-12% slower). Larger alphabets
  (Fixed(13..16)) need longer codes and get a bigger table rather than falling back to
  bit-packing. 14 is the hard cap because the kernels move 4 codes per
  64-bit refill/flush (4 * 14 + 7 <= 63) without per-code checks; more than 2**14 used
  symbols (N = 15/16 on wide data) and Huffman is not offered: the tensor is bit-packed,
  where Huffman would save little anyway.
* **Canonical codes** (DEFLATE's rule): codes of equal length are consecutive integers in
  symbol order, and shorter codes come first. Only the lengths travel.
* **Streams**: value ``j`` of a tensor is coded in stream ``j % 4``; each stream is a
  little-endian bit stream (bit 0 of byte 0 first), a code's bits written most-significant
  first, zero-padded to a byte. The decoder keeps four 64-bit bit buffers, so four
  independent dependency chains run in parallel.
* **Decoding** is table driven: the next ``L`` (= longest code) bits index a table giving the
  decoded *value* (already dequantized, in the output dtype) and the code length. Every read
  stays inside the packet buffer (a stream's lookahead may see the bytes that follow it;
  past the buffer's end it sees zeros), every table index is masked to the table's size,
  and the decoder checks that each stream was consumed exactly (length and zero padding),
  so a corrupt payload is reported, never trusted. Kernels move 4 codes per stream between
  refills, with no per-code checks.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tenfold.codec.bitio import flush, flush_final, refill, stream_ok
from tenfold.errors import ConfigError

__all__ = [
    "MAX_CODE_LENGTH",
    "MAX_SYMBOLS",
    "build_decode_table",
    "canonical_codes",
    "code_lengths",
    "decode",
    "encode",
    "length_limit",
    "pack_lengths",
    "stream_bits",
    "unpack_lengths",
]

#: Longest code the format allows (lengths travel as nibbles).
MAX_CODE_LENGTH = 14
#: Default limit: 2**12-entry decode tables stay in L1.
FAST_CODE_LENGTH = 12
#: Alphabets up to 2**16 symbols (N <= 16).
MAX_SYMBOLS = 1 << 16
#: Number of interleaved streams per tensor.
NUM_STREAMS = 4


def length_limit(num_used: int) -> int | None:
    """The code length limit for ``num_used`` distinct symbols, or None if Huffman is not offered.

    Example:
        >>> length_limit(2), length_limit(4096), length_limit(4097), length_limit(20000)
        (12, 12, 13, None)
    """
    if num_used < 2:
        return None
    need = math.ceil(math.log2(num_used))
    limit = max(FAST_CODE_LENGTH, need)
    return limit if limit <= MAX_CODE_LENGTH else None


# ---- code lengths -----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _moffat_katajainen(a: np.ndarray) -> None:
    # In-place minimum-redundancy code lengths (Moffat & Katajainen 1995). Input: weights in
    # non-decreasing order (n >= 2). Output: a[i] = code length of the i-th weight.
    n = a.size
    a[0] += a[1]
    root = 0
    leaf = 2
    for nxt in range(1, n - 1):
        # first child of the new internal node: the smaller of next leaf / next internal node
        if leaf >= n or a[root] < a[leaf]:
            a[nxt] = a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] = a[leaf]
            leaf += 1
        # second child
        if leaf >= n or (root < nxt and a[root] < a[leaf]):
            a[nxt] += a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] += a[leaf]
            leaf += 1
    # internal node depths, right to left
    a[n - 2] = 0
    for nxt in range(n - 3, -1, -1):
        a[nxt] = a[a[nxt]] + 1
    # leaf depths
    avbl = 1
    used = 0
    dpth = 0
    root = n - 2
    nxt = n - 1
    while avbl > 0:
        while root >= 0 and a[root] == dpth:
            used += 1
            root -= 1
        while avbl > used:
            a[nxt] = dpth
            nxt -= 1
            avbl -= 1
        avbl = 2 * used
        dpth += 1
        used = 0


@njit(cache=True, nogil=True)
def _package_merge(w: np.ndarray, limit: int, out: np.ndarray) -> None:
    # Optimal length-limited code lengths (Larmore & Hirschberg's package-merge).
    # w: m >= 2 weights in non-decreasing order, m <= 2**limit. out[i] = length of w[i].
    # Level `limit` holds the leaves; each level above merges the leaves with "packages"
    # (sums of consecutive pairs of the level below), leaves first on ties. Choosing the
    # 2m - 2 cheapest items of level 1 and expanding packages downwards, the length of leaf
    # i is the number of levels whose selection includes it; as selections are prefixes
    # and leaves are sorted, only the count of leaves per selected prefix is needed.
    m = w.size
    size = 2 * m  # a level holds m leaves + at most m - 1 packages
    weight = np.empty((limit + 1, size), dtype=np.int64)
    is_leaf = np.zeros((limit + 1, size), dtype=np.bool_)
    length = np.zeros(limit + 1, dtype=np.int64)
    for i in range(m):
        weight[limit, i] = w[i]
        is_leaf[limit, i] = True
    length[limit] = m
    for lev in range(limit - 1, 0, -1):
        below = length[lev + 1]
        npk = below // 2
        i = 0  # next leaf
        k = 0  # next package
        t = 0
        while i < m or k < npk:
            if k >= npk or (i < m and w[i] <= weight[lev + 1, 2 * k] + weight[lev + 1, 2 * k + 1]):
                weight[lev, t] = w[i]
                is_leaf[lev, t] = True
                i += 1
            else:
                weight[lev, t] = weight[lev + 1, 2 * k] + weight[lev + 1, 2 * k + 1]
                k += 1
            t += 1
        length[lev] = t
    for i in range(m):
        out[i] = 0
    take = 2 * m - 2
    for lev in range(1, limit + 1):
        leaves = 0
        for t in range(take):
            if is_leaf[lev, t]:
                leaves += 1
        for i in range(leaves):  # the `leaves` lightest symbols are one level deeper
            out[i] += 1
        take = 2 * (take - leaves)


@njit(cache=True, nogil=True)
def _code_lengths_kernel(freq: np.ndarray, limit: int, lengths: np.ndarray) -> None:
    used = np.nonzero(freq)[0]
    m = used.size
    if m == 0:
        return
    if m == 1:
        lengths[used[0]] = 1
        return
    # rank symbols by (count, symbol): a stable sort of the ascending symbol list
    order = np.argsort(freq[used], kind="mergesort")
    ranked = used[order]
    a = freq[ranked].astype(np.int64)
    _moffat_katajainen(a)  # a[i]: length of ranked[i]; non-increasing in i
    if a[0] > limit:
        _package_merge(freq[ranked].astype(np.int64), limit, a)
    for i in range(m):
        lengths[ranked[i]] = a[i]


def code_lengths(freq: np.ndarray, limit: int) -> np.ndarray:
    """Length-limited Huffman code lengths for a histogram.

    Args:
        freq: symbol counts, shape ``(K,)`` (K = alphabet size), at least 2 nonzero,
            at most ``2**limit`` nonzero.
        limit: the longest allowed code, 1..14.

    Returns:
        uint8 lengths, shape ``(K,)``; 0 for unused symbols. The code is complete (Kraft sum
        exactly 1).

    Example:
        >>> code_lengths(np.array([5, 2, 1, 1, 0]), 11).tolist()
        [1, 2, 3, 3, 0]
    """
    freq = np.ascontiguousarray(freq, dtype=np.int64).reshape(-1)
    used = int(np.count_nonzero(freq))
    if used < 2 or used > 1 << limit or not 1 <= limit <= MAX_CODE_LENGTH:
        raise ConfigError(f"need 2..2**limit used symbols and limit in [1, 14] (used={used})")
    lengths = np.zeros(freq.size, dtype=np.uint8)
    _code_lengths_kernel(freq, limit, lengths)
    return lengths


@njit(cache=True, nogil=True)
def _canonical_codes_kernel(lengths: np.ndarray, codes: np.ndarray) -> None:
    count = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    for s in range(lengths.size):
        count[lengths[s]] += 1
    count[0] = 0
    next_code = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    code = 0
    for ln in range(1, MAX_CODE_LENGTH + 1):
        code = (code + count[ln - 1]) << 1
        next_code[ln] = code
    for s in range(lengths.size):
        ln = lengths[s]
        if ln == 0:
            continue
        c = next_code[ln]
        next_code[ln] += 1
        # bit-reverse: streams are read LSB-first, codes are defined MSB-first
        r = 0
        for _ in range(ln):
            r = (r << 1) | (c & 1)
            c >>= 1
        codes[s] = r


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for ``lengths``, bit-reversed for LSB-first streams (uint32, shape (K,)).

    Example:
        >>> canonical_codes(np.array([1, 2, 3, 3], dtype=np.uint8)).tolist()  # 0 10 110 111
        [0, 1, 3, 7]
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.uint8)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    _canonical_codes_kernel(lengths, codes)
    return codes


# ---- the code-length table on the wire --------------------------------------------------


@njit(cache=True, nogil=True)
def _pack_lengths_kernel(lengths: np.ndarray) -> np.ndarray:
    k = lengths.size
    nib = np.empty(2 * k + 2, dtype=np.uint8)  # worst case: 2 nibbles per symbol
    m = 0
    s = 0
    while s < k:
        ln = lengths[s]
        if ln != 0:
            nib[m] = ln
            m += 1
            s += 1
            continue
        r = 0
        while s + r < k and lengths[s + r] == 0:
            r += 1
        for bit in range(15, -1, -1):  # a run of r zeros = one (0, b) pair per set bit b
            if (r >> bit) & 1:
                nib[m] = 0
                nib[m + 1] = bit
                m += 2
        s += r
    out = np.zeros((m + 1) // 2, dtype=np.uint8)
    for i in range(m):
        out[i >> 1] |= nib[i] << (4 * (i & 1))
    return out


def pack_lengths(lengths: np.ndarray) -> bytes:
    """Serialize code lengths (each 0..14) as nibbles with zero-run tokens (FORMAT.md).

    Tokens, low nibble of each byte first: ``v`` in 1..14 is one symbol of length v;
    ``0, b`` is a run of ``2**b`` unused symbols. A final odd nibble is padded with 0.

    Example:
        >>> pack_lengths(np.array([1, 0, 0, 0, 0, 2, 2], dtype=np.uint8)).hex()  # 1 (0 2) 2 2
        '012202'
    """
    lengths = np.ascontiguousarray(lengths, dtype=np.uint8)
    if lengths.size and int(lengths.max()) > MAX_CODE_LENGTH:
        raise ConfigError("code lengths must be <= 14")
    return bytes(_pack_lengths_kernel(lengths))


@njit(cache=True, nogil=True)
def _unpack_lengths_kernel(table: np.ndarray, lengths: np.ndarray) -> int:
    # Returns 0 on success, else an error code (see unpack_lengths).
    k = lengths.size
    m = 2 * table.size
    s = 0
    i = 0
    while s < k:
        if i >= m:
            return 1
        v = (table[i >> 1] >> (4 * (i & 1))) & 15
        i += 1
        if v == 15:
            return 4
        if v != 0:
            lengths[s] = v
            s += 1
            continue
        if i >= m:
            return 1
        b = (table[i >> 1] >> (4 * (i & 1))) & 15
        i += 1
        r = 1 << b
        if s + r > k:
            return 2
        for t in range(s, s + r):
            lengths[t] = 0
        s += r
    # only one zero padding nibble may follow
    if i < m and (m - i != 1 or (table[table.size - 1] >> 4) != 0):
        return 3
    return 0


_UNPACK_ERRORS = {
    1: "code-length table is truncated",
    2: "code-length table describes more symbols than the alphabet has",
    3: "code-length table has trailing data",
    4: "code length 15 in the code-length table (at most 14 allowed)",
}


def unpack_lengths(table: np.ndarray, num_symbols: int) -> tuple[np.ndarray | None, str]:
    """Parse a code-length table for ``num_symbols`` symbols and check the code is valid.

    Returns:
        ``(lengths, "")`` for a complete prefix code with at least two symbols, else
        ``(None, reason)``. Never raises for any bytes.
    """
    table = np.ascontiguousarray(table, dtype=np.uint8)
    lengths = np.zeros(num_symbols, dtype=np.uint8)
    status = _unpack_lengths_kernel(table, lengths)
    if status:
        return None, _UNPACK_ERRORS[int(status)]
    count = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 1)
    used = int(count[1:].sum())
    if used < 2:
        return None, f"code-length table has {used} used symbol(s), need at least 2"
    kraft = sum(int(count[ln]) << (MAX_CODE_LENGTH - ln) for ln in range(1, MAX_CODE_LENGTH + 1))
    if kraft != 1 << MAX_CODE_LENGTH:
        kind = "oversubscribed" if kraft > 1 << MAX_CODE_LENGTH else "incomplete"
        return None, f"code lengths do not form a complete prefix code ({kind})"
    return lengths, ""


# ---- encoding ---------------------------------------------------------------------------


def stream_bits(hist: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Exact payload bits of each stream: ``hist[s] @ lengths`` (int64, shape (4,))."""
    return hist.astype(np.int64) @ lengths.astype(np.int64)


@njit(inline="always", cache=True, nogil=True)
def _put(buf: int, nb: int, e: int) -> tuple[int, int]:
    # e = (reversed code << 8) | length
    return buf | (np.uint64(e >> 8) << np.uint64(nb)), nb + (e & 0xFF)


@njit(cache=True, nogil=True)
def _encode_kernel(
    idx: np.ndarray, enc: np.ndarray, o0: np.ndarray, o1: np.ndarray, o2: np.ndarray, o3: np.ndarray
) -> tuple[int, int, int, int]:
    # Four streams; each gets 4 codes (<= 4 * 14 bits, + <= 7 pending = 63) per flush.
    # o0..o3 have 8 bytes of slack for the 64-bit stores (see bitio.flush).
    a0 = np.int64(o0.ctypes.data)
    a1 = np.int64(o1.ctypes.data)
    a2 = np.int64(o2.ctypes.data)
    a3 = np.int64(o3.ctypes.data)
    n = idx.size
    p0 = p1 = p2 = p3 = np.int64(0)
    b0 = b1 = b2 = b3 = np.uint64(0)
    k0 = k1 = k2 = k3 = np.int64(0)
    n16 = n - n % 16
    for j in range(0, n16, 16):
        for r in range(4):
            jr = j + 4 * r
            b0, k0 = _put(b0, k0, enc[idx[jr]])
            b1, k1 = _put(b1, k1, enc[idx[jr + 1]])
            b2, k2 = _put(b2, k2, enc[idx[jr + 2]])
            b3, k3 = _put(b3, k3, enc[idx[jr + 3]])
        p0, b0, k0 = flush(a0, p0, b0, k0)
        p1, b1, k1 = flush(a1, p1, b1, k1)
        p2, b2, k2 = flush(a2, p2, b2, k2)
        p3, b3, k3 = flush(a3, p3, b3, k3)
    for j in range(n16, n, 4):  # < 16 left: at most 4 codes per stream, then done
        b0, k0 = _put(b0, k0, enc[idx[j]])
        if j + 1 < n:
            b1, k1 = _put(b1, k1, enc[idx[j + 1]])
        if j + 2 < n:
            b2, k2 = _put(b2, k2, enc[idx[j + 2]])
        if j + 3 < n:
            b3, k3 = _put(b3, k3, enc[idx[j + 3]])
    return (
        flush_final(a0, p0, b0, k0),
        flush_final(a1, p1, b1, k1),
        flush_final(a2, p2, b2, k2),
        flush_final(a3, p3, b3, k3),
    )


def encode(idx: np.ndarray, lengths: np.ndarray, stream_nbytes: np.ndarray) -> list[np.ndarray]:
    """Huffman-code ``idx`` into 4 interleaved streams.

    Args:
        idx: symbols (uint16), shape ``(n,)``; every symbol has a nonzero length.
        lengths: code lengths (uint8), shape ``(K,)``, a complete code, all <= 14.
        stream_nbytes: exact byte size of each stream, ``ceil(stream_bits / 8)``, shape (4,).

    Returns:
        The 4 streams (uint8 arrays of ``stream_nbytes[s]`` bytes), in order.
    """
    codes = canonical_codes(lengths)
    enc = (codes << np.uint32(8)) | lengths.astype(np.uint32)
    # 8 bytes of slack: flushes store whole 64-bit words
    bufs = [np.zeros(int(size) + 8, dtype=np.uint8) for size in stream_nbytes]
    ends = _encode_kernel(idx, enc, bufs[0], bufs[1], bufs[2], bufs[3])
    if list(ends) != [int(size) for size in stream_nbytes]:  # sizes come from idx's histogram
        raise RuntimeError(f"internal error: streams of {ends} bytes, planned {stream_nbytes}")
    return [b[: int(size)] for b, size in zip(bufs, stream_nbytes, strict=True)]


# ---- decoding ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _build_table_kernel(
    lengths: np.ndarray,
    codes: np.ndarray,
    lut: np.ndarray,
    tbits: int,
    valtab: np.ndarray,
    lentab: np.ndarray,
) -> None:
    size = 1 << tbits
    for s in range(lengths.size):
        ln = lengths[s]
        if ln == 0:
            continue
        v = lut[s]
        for t in range(codes[s], size, 1 << ln):
            valtab[t] = v
            lentab[t] = ln


def build_decode_table(lengths: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The decode tables for a valid (complete) code.

    Args:
        lengths: code lengths, shape ``(K,)`` (validated by :func:`unpack_lengths`).
        lut: decoded value of each symbol, shape ``(K,)`` (any dtype; e.g. float32 or the
            uint16 bit patterns of float16 values).

    Returns:
        ``(values, code_lengths, table_bits)``: arrays of ``2**table_bits`` entries indexed
        by the next ``table_bits`` stream bits; ``table_bits`` is the longest code length.
    """
    tbits = int(lengths.max())
    codes = canonical_codes(lengths)
    valtab = np.zeros(1 << tbits, dtype=lut.dtype)
    lentab = np.zeros(1 << tbits, dtype=np.uint8)
    _build_table_kernel(lengths, codes, lut, tbits, valtab, lentab)
    return valtab, lentab, tbits


@njit(cache=True, nogil=True)
def _decode_kernel(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    valtab: np.ndarray,
    lentab: np.ndarray,
    tbits: int,
    out: np.ndarray,
    add: bool,
) -> int:
    # Returns 0, or 1 + the index of the first stream not consumed exactly.
    # Per code: t = next tbits bits (masked: always a valid table index), then the table
    # gives the value and the code length to consume. Written out per stream (no helper
    # taking arrays: see bitio) so the four dependency chains interleave.
    n = out.size
    base = np.int64(data.ctypes.data)
    size = np.int64(data.size)
    mask = np.uint64((1 << tbits) - 1)
    s0 = starts[0]
    s1 = starts[1]
    s2 = starts[2]
    s3 = starts[3]
    q0, q1, q2, q3 = s0, s1, s2, s3
    b0 = b1 = b2 = b3 = np.uint64(0)
    k0 = k1 = k2 = k3 = np.int64(0)
    n16 = n - n % 16
    for j in range(0, n16, 16):
        # >= 56 bits per stream after a refill: 4 codes of <= 14 bits each
        q0, b0, k0 = refill(base, size, q0, b0, k0)
        q1, b1, k1 = refill(base, size, q1, b1, k1)
        q2, b2, k2 = refill(base, size, q2, b2, k2)
        q3, b3, k3 = refill(base, size, q3, b3, k3)
        for r in range(4):
            jr = j + 4 * r
            t0 = b0 & mask
            t1 = b1 & mask
            t2 = b2 & mask
            t3 = b3 & mask
            l0 = lentab[t0]
            l1 = lentab[t1]
            l2 = lentab[t2]
            l3 = lentab[t3]
            b0 >>= np.uint64(l0)
            b1 >>= np.uint64(l1)
            b2 >>= np.uint64(l2)
            b3 >>= np.uint64(l3)
            k0 -= np.int64(l0)
            k1 -= np.int64(l1)
            k2 -= np.int64(l2)
            k3 -= np.int64(l3)
            if add:
                out[jr] += valtab[t0]
                out[jr + 1] += valtab[t1]
                out[jr + 2] += valtab[t2]
                out[jr + 3] += valtab[t3]
            else:
                out[jr] = valtab[t0]
                out[jr + 1] = valtab[t1]
                out[jr + 2] = valtab[t2]
                out[jr + 3] = valtab[t3]
    if n16 < n:  # < 16 left: at most 4 codes per stream
        q0, b0, k0 = refill(base, size, q0, b0, k0)
        q1, b1, k1 = refill(base, size, q1, b1, k1)
        q2, b2, k2 = refill(base, size, q2, b2, k2)
        q3, b3, k3 = refill(base, size, q3, b3, k3)
        for j in range(n16, n, 4):
            t0 = b0 & mask
            b0 >>= np.uint64(lentab[t0])
            k0 -= np.int64(lentab[t0])
            if add:
                out[j] += valtab[t0]
            else:
                out[j] = valtab[t0]
            if j + 1 < n:
                t1 = b1 & mask
                b1 >>= np.uint64(lentab[t1])
                k1 -= np.int64(lentab[t1])
                if add:
                    out[j + 1] += valtab[t1]
                else:
                    out[j + 1] = valtab[t1]
            if j + 2 < n:
                t2 = b2 & mask
                b2 >>= np.uint64(lentab[t2])
                k2 -= np.int64(lentab[t2])
                if add:
                    out[j + 2] += valtab[t2]
                else:
                    out[j + 2] = valtab[t2]
            if j + 3 < n:
                t3 = b3 & mask
                b3 >>= np.uint64(lentab[t3])
                k3 -= np.int64(lentab[t3])
                if add:
                    out[j + 3] += valtab[t3]
                else:
                    out[j + 3] = valtab[t3]
    if not stream_ok(s0, ends[0], q0, b0, k0):
        return 1
    if not stream_ok(s1, ends[1], q1, b1, k1):
        return 2
    if not stream_ok(s2, ends[2], q2, b2, k2):
        return 3
    if not stream_ok(s3, ends[3], q3, b3, k3):
        return 4
    return 0


def decode(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    table: tuple[np.ndarray, np.ndarray, int],
    out: np.ndarray,
    *,
    add: bool,
) -> int:
    """Decode ``out.size`` values from 4 streams into ``out`` (1-D), or add them to it.

    Args:
        data: the packet (uint8); stream ``s`` is ``data[starts[s]:ends[s]]``.
        starts, ends: int64 arrays of shape (4,), within ``data``.
        table: :func:`build_decode_table` output (longest code <= 14); its values have
            ``out``'s dtype.
        out: 1-D contiguous output; ``out[j] = value`` or ``out[j] += value``.
        add: accumulate instead of overwrite.

    Returns:
        0 on success, else ``1 + s`` for the first stream ``s`` that was not consumed
        exactly (corrupt payload; ``out`` then holds garbage for that tensor).
    """
    valtab, lentab, tbits = table
    return int(_decode_kernel(data, starts, ends, valtab, lentab, tbits, out, add))
