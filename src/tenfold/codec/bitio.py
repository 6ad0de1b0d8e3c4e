"""Bit-stream primitives shared by the Huffman and bit-packing kernels (numba).

Streams are little-endian: bit ``b`` of the stream is bit ``b % 8`` of byte ``b // 8``.
Writers and readers keep a 64-bit buffer ``buf`` (uint64) holding ``nb`` pending bits at its
low end.

Why raw addresses: a numba helper that takes an *array* argument costs an atomic
reference-count increment/decrement per call when inlined into a loop, and numba emits a
negative-index check per access that stops LLVM from fusing byte accesses into one 64-bit
access. So the kernels take ``arr.ctypes.data`` once and these helpers take plain integer
addresses and do one unaligned 64-bit load/store each (the arrays stay alive in the caller,
and every access is bounds-checked against the buffer size by the caller or here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "load_u8",
    "load_u64",
    "refill",
    "store_u64",
    "stream_ok",
]

_BIG_ENDIAN = sys.byteorder == "big"
_I64 = ir.IntType(64)


@intrinsic
def load_u64(typingctx: Any, addr: Any) -> tuple[Any, Callable[..., Any]]:
    """Unaligned little-endian 64-bit load from address ``addr`` (an integer)."""
    sig = types.uint64(addr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = builder.load(builder.inttoptr(args[0], _I64.as_pointer()), align=1)
        if _BIG_ENDIAN:  # the wire format is little-endian
            value = builder.bswap(value)
        return value

    return sig, codegen


@intrinsic
def load_u8(typingctx: Any, addr: Any) -> tuple[Any, Callable[..., Any]]:
    """One byte at address ``addr``, as uint64."""
    sig = types.uint64(addr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        byte = builder.load(builder.inttoptr(args[0], ir.IntType(8).as_pointer()))
        return builder.zext(byte, _I64)

    return sig, codegen


@intrinsic
def store_u64(typingctx: Any, addr: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    """Unaligned little-endian 64-bit store of ``value`` (uint64) at address ``addr``."""
    sig = types.void(addr, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = args[1]
        if _BIG_ENDIAN:
            value = builder.bswap(value)
        builder.store(value, builder.inttoptr(args[0], _I64.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", cache=True, nogil=True)
def refill(base: int, size: int, pos: int, buf: int, nb: int) -> tuple[int, int, int]:
    """Top up a read buffer to >= 56 valid bits.

    Args:
        base: address of the buffer's first byte; size: its length in bytes.
        pos: the next byte to take (may exceed ``size``); buf/nb: the bit buffer.

    Reads never leave ``[base, base + size)``: bytes at or past ``size`` read as zero.
    ``pos`` counts bytes taken (phantom zeros included), so a stream that started at
    ``start`` has consumed ``8 * (pos - start) - nb`` bits. A stream may read bytes of
    whatever follows it in the buffer: that only ever feeds a lookahead that is not
    consumed (valid stream) or an over-read that :func:`stream_ok` reports.
    """
    if pos + 8 <= size:
        # branchless refill (F. Giesen, "Reading bits in far too many ways", variant 4)
        buf |= load_u64(base + pos) << np.uint64(nb)  # type: ignore[call-arg]
        pos += (63 - nb) >> 3
        nb |= 56
    else:
        while nb <= 56:
            if pos < size:
                buf |= load_u8(base + pos) << np.uint64(nb)  # type: ignore[call-arg]
            pos += 1
            nb += 8
    return pos, buf, nb


@njit(inline="always", cache=True, nogil=True)
def stream_ok(start: int, end: int, pos: int, buf: int, nb: int) -> bool:
    """True if a finished read stream was consumed exactly: byte length and zero padding.

    ``start``/``end``: the stream's byte range; ``pos``/``buf``/``nb``: the reader's state.
    """
    consumed = 8 * (pos - start) - nb
    pad = 8 * (end - start) - consumed
    if pad < 0 or pad >= 8:
        return False
    return (buf & ((np.uint64(1) << np.uint64(pad)) - np.uint64(1))) == np.uint64(0)


@njit(inline="always", cache=True, nogil=True)
def flush(base: int, pos: int, buf: int, nb: int) -> tuple[int, int, int]:
    """Write the whole bytes of ``buf`` (``nb <= 63`` bits) at ``base + pos``; keep the rest.

    Stores 8 bytes whatever ``nb`` is: the output needs 8 bytes of slack past the stream's
    end (bytes beyond the flushed ones are rewritten by the next flush or ignored).
    """
    store_u64(base + pos, buf)  # type: ignore[call-arg]
    whole = nb >> 3
    return pos + whole, buf >> np.uint64(whole * 8), nb & 7


@njit(inline="always", cache=True, nogil=True)
def flush_final(base: int, pos: int, buf: int, nb: int) -> int:
    """Write everything pending, the last byte zero-padded; returns the end position."""
    store_u64(base + pos, buf)  # type: ignore[call-arg]
    return pos + ((nb + 7) >> 3)
