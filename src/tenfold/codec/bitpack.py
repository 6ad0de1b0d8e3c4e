"""Plain N-bit packing of bin indices (the fallback when Huffman would not pay off).

Index ``j`` occupies bits ``[j*N, (j+1)*N)`` of a little-endian bit stream (bit 0 of byte 0
first), least significant bit first; the last byte is zero-padded. The payload is exactly
``ceil(n * N / 8)`` bytes. Decoding maps indices to values through the dequantization LUT
(N <= 16) or the same float64 formula computed per value (N > 16, where a 2**N LUT would be
larger than the tensor).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tenfold.codec.bitio import flush, flush_final, refill, stream_ok
from tenfold.codec.quantize import Quantizer
from tenfold.errors import ConfigError

__all__ = ["decode", "encode", "packed_nbytes"]


def packed_nbytes(n: int, bits: int) -> int:
    """Payload bytes of ``n`` values at ``bits`` bits each: ``ceil(n * bits / 8)``."""
    return (n * bits + 7) // 8


@njit(cache=True, nogil=True)
def _encode_kernel(idx: np.ndarray, bits: int, out: np.ndarray) -> None:
    # two values (<= 48 bits, + <= 7 pending) per 64-bit flush; out has 8 bytes of slack
    base = np.int64(out.ctypes.data)
    pos = np.int64(0)
    buf = np.uint64(0)
    nb = np.int64(0)
    n = idx.size
    for j in range(0, n - n % 2, 2):
        buf |= np.uint64(idx[j]) << np.uint64(nb)
        buf |= np.uint64(idx[j + 1]) << np.uint64(nb + bits)
        nb += 2 * bits
        pos, buf, nb = flush(base, pos, buf, nb)
    if n % 2:
        buf |= np.uint64(idx[n - 1]) << np.uint64(nb)
        nb += bits
    flush_final(base, pos, buf, nb)


def encode(idx: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``idx`` (uint16/uint32, each < 2**bits, bits <= 24) into ``ceil(n*bits/8)`` bytes."""
    size = packed_nbytes(idx.size, bits)
    out = np.zeros(size + 8, dtype=np.uint8)  # 8 bytes of slack for 64-bit flushes
    _encode_kernel(idx, np.int64(bits), out)
    return out[:size]


@njit(cache=True, nogil=True)
def _decode_lut_kernel(
    data: np.ndarray, start: int, end: int, bits: int, lut: np.ndarray, out: np.ndarray, add: bool
) -> bool:
    # bits <= 16 here: lut has 2**bits entries and every masked index is in bounds
    base = np.int64(data.ctypes.data)
    size = np.int64(data.size)
    mask = np.uint64((1 << bits) - 1)
    q = start
    buf = np.uint64(0)
    nb = np.int64(0)
    for j in range(out.size):
        if nb < bits:
            q, buf, nb = refill(base, size, q, buf, nb)
        i = buf & mask
        buf >>= np.uint64(bits)
        nb -= bits
        if add:
            out[j] += lut[i]
        else:
            out[j] = lut[i]
    return stream_ok(start, end, q, buf, nb)


@njit(cache=True, nogil=True)
def _decode_formula_kernel(
    data: np.ndarray,
    start: int,
    end: int,
    bits: int,
    ap: float,
    dp: float,
    p: float,
    a: float,
    b: float,
    out: np.ndarray,
    add: bool,
) -> bool:
    # one-element scratch in out's dtype: the value is rounded to the output dtype BEFORE
    # it is added, exactly as decompress-then-add would do
    cast = np.empty(1, dtype=out.dtype)
    base = np.int64(data.ctypes.data)
    size = np.int64(data.size)
    mask = np.uint64((1 << bits) - 1)
    q = start
    buf = np.uint64(0)
    nb = np.int64(0)
    for j in range(out.size):
        if nb < bits:
            q, buf, nb = refill(base, size, q, buf, nb)
        i = buf & mask
        buf >>= np.uint64(bits)
        nb -= bits
        # the normative decode formula (quantize.py), evaluated per value
        cast[0] = min(max((ap + (np.float64(i) + 0.5) * dp) / p, a), b)
        if add:
            out[j] += cast[0]
        else:
            out[j] = cast[0]
    return stream_ok(start, end, q, buf, nb)


def decode(
    data: np.ndarray,
    start: int,
    end: int,
    q: Quantizer | None,
    lut: np.ndarray | None,
    out: np.ndarray,
    *,
    add: bool,
    bits: int | None = None,
) -> bool:
    """Unpack ``out.size`` indices from ``data[start:end]`` and dequantize into ``out``.

    Args:
        data: the packet (uint8).
        start, end: the payload's byte range; ``end - start == ceil(n * bits / 8)``.
        q: the tensor's min/max quantizer; only needed without a ``lut``.
        lut: the decoded value of every index in ``out``'s dtype
            (:func:`~tenfold.codec.quantize.dequantization_lut`, or the mid-tread table), or
            None to evaluate the min/max formula per value (``out`` float32/float64 only).
        bits: index width; ``q.bits`` when not given.
        out: 1-D contiguous output.
        add: ``out[j] += value`` instead of ``out[j] = value``.

    Returns:
        True if the payload was consumed exactly (padding bits zero).
    """
    width = bits if bits is not None else q.bits if q is not None else 0
    if lut is not None:
        return bool(_decode_lut_kernel(data, start, end, np.int64(width), lut, out, add))
    if q is None:
        raise ConfigError("bitpack.decode needs a quantizer or a lookup table")
    return bool(
        _decode_formula_kernel(
            data, start, end, np.int64(q.bits), q.ap, q.dp, q.p, q.w_min, q.w_max, out, add
        )
    )
