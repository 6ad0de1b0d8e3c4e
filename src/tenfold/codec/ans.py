"""Interleaved rANS (range asymmetric numeral systems) entropy coding, four lanes.

Hand-written (numba) because the coder must match a byte-exact wire format, decode straight
into (or add into) the output through a value table, and run at several times the speed of
the general-purpose coders we could depend on (``constriction``: see
``benchmarks/ans_measure.py``). rANS codes each symbol in ``log2(2**n / f)`` bits, so unlike
Huffman it does not lose up to a bit per value on very skewed data (a symbol with
probability 0.95 costs 0.074 bits, not 1).

Format (normative; docs/FORMAT.md section 6A)
---------------------------------------------

* **Alphabet**: symbols ``0 .. K-1`` (``K = 2**bits``, ``1 <= K <= 2**16``).
* **Frequencies**: an integer *precision* ``n`` ("scale_bits", ``1 <= n <= 16``) and
  quantized frequencies ``f[s] >= 0`` with ``sum(f) == 2**n`` (so at least one *used*
  symbol, ``f > 0``; a single used symbol with ``f = 2**n`` is legal and costs 0 bits per
  value). ``cum[s] = f[0] + ... + f[s-1]``. Symbol ``s`` owns the *slots*
  ``cum[s] <= slot < cum[s] + f[s]`` of ``[0, 2**n)``.
* **State**: an unsigned 32-bit integer ``x``; ``L = 2**16``; valid states lie in
  ``[L, 2**32)``. The coder moves 16-bit *words*; all multi-byte quantities are
  little-endian.
* **Lanes**: value ``j`` (0-based, C order) belongs to lane ``j % 4``; within a lane, values
  are decoded in increasing ``j``. There are always 4 lanes, even when a lane has no values.
* **Lane bytes**: the lane's initial decoder state as a ``u32`` (4 bytes), then its 16-bit
  words (``u16`` each) in the order the decoder reads them. A lane of ``c`` values
  (``c = ceil((count - lane) / 4)``) therefore has ``4 + 2w`` bytes with ``0 <= w <= c``:
  the encoder emits at most one word per value (below).
* **Decoding one value** in a lane, with state ``x``::

      slot = x & (2**n - 1)
      s    = the symbol with cum[s] <= slot < cum[s] + f[s]   (unique; the decoded value)
      x    = f[s] * (x >> n) + slot - cum[s]
      if x < L:  x = (x << 16) | next_word    (no word left in the lane: corrupt)

  The initial state must be ``>= L``. After the lane's last value, the lane must be consumed
  exactly (no words left) and ``x`` must equal ``L`` (the encoder's initial state);
  anything else is corrupt.
* **Encoding** (the inverse; per lane, values in *decreasing* ``j``): start with ``x = L``;
  for each symbol ``s``::

      if x >= f[s] << (32 - n):  emit the word x & 0xFFFF;  x >>= 16
      x = ((x // f[s]) << n) + (x % f[s]) + cum[s]

  and finally emit the state. Words come out in the reverse of the decoder's order, so the
  lane's bytes are the emitted sequence reversed: state first, then the last emitted word,
  and so on.

  *One renormalisation step always suffices, and states stay in* ``[L, 2**32)``: let
  ``f = f[s] >= 1``, ``n <= 16``, and ``I = [f << (16 - n), f << (32 - n))``, the states
  that ``C(x) = ((x // f) << n) + x % f + cum`` maps into ``[L, 2**32)`` (since ``x // f``
  then lies in ``[2**(16-n), 2**(32-n))``). If ``x >= f << (32 - n)`` then ``x >> 16`` is
  ``>= f << (16 - n)`` (the bound is a multiple of ``2**16``) and ``< 2**16 <= f << (32 -
  n)``, so it is in ``I``; otherwise ``L <= x`` and ``f << (16 - n) <= 2**16 = L`` (as
  ``f <= 2**n``), so ``x`` is in ``I`` already. In the decoder, ``x >= L`` gives
  ``f * (x >> n) >= 1``, so after one ``(x << 16) | word``, ``x >= L`` again.

* **Frequency table** (``pack_frequencies``): unsigned LEB128 varints (7 bits per byte, low
  group first, high bit = more follows, minimal form) over symbols ``0 .. K-1``: a value
  ``v > 0`` means the next symbol has ``f = v``; a value 0 is followed by a varint ``r``
  meaning the next ``r + 1`` symbols (starting with this one) are unused. The table must
  describe exactly ``K`` symbols (a run past ``K`` is corrupt), every ``f <= 2**n``, the
  sum must be exactly ``2**n``, and no bytes may follow. Each maximal run of unused symbols
  is one ``(0, r)`` pair: decoders reject a run that directly follows a run, so every
  frequency vector has exactly one table.

Encoder choices (not part of the format; any valid table decodes)
------------------------------------------------------------------

* **Precision** (:func:`scale_bits_for`): the smallest ``n >= 12`` with
  ``2**n >= 2 * used``, capped at 16 (which still has a slot for each of 2**16 symbols).
  Twelve bits keep the decoder's slot tables at 4096 entries (16 KiB of packed frequencies
  + 16 KiB of float32 values: a Zen 3 core's L1 data cache), and
  ``2**n >= 2 * used`` bounds the slots that rare symbols claim (each needs at least one)
  to half the range.
* **Quantization** (:func:`quantize_frequencies`): three integer-exact steps: (1) Hamilton
  apportionment of ``2**n`` to the counts ``c`` (``f = floor(c * 2**n / total)``, the
  ``2**n - sum(f)`` leftover units one each to the largest remainders
  ``c * 2**n mod total``, ties to the lower symbol); (2) every used symbol still at 0 gets
  1; (3) the excess those add is removed one unit at a time from the largest ``f``, ties to
  the lower symbol. Steps 1 and 2 leave every ``f`` less than one unit from its share
  ``c * 2**n / total``; step 3 takes from the largest frequencies, where a unit changes the
  probability least in relative terms (the cost of a unit is about ``c / f`` bits, the same
  for every proportional symbol, and smallest relative to the symbol's cost when ``f`` is
  large).

Kernels
-------

Both kernels run the 4 lanes in one loop, so 4 independent dependency chains overlap; they
take raw addresses for the byte streams (see ``bitio``: no reference counting, no negative
index handling in the loop). The encoder divides by a precomputed 64-bit reciprocal (exact:
see ``_encoder_table``, whose rows hold each field in its own word) and the decoder looks
the slot up in one table of packed ``(f, slot - cum)`` and one of decoded values.
``benchmarks/ans_measure.py`` on this machine (one Zen 3 core shared with other work, so
+-30% from run to run; two runs, 10M values at 0.4 / 1 / 2 bits each, float32 out): encode
285-419 M values/s, decode 319-622, against constriction 0.5.0's 153-188 and 40-58 (1.5-2.6x
and 7.9-12.1x), in 0.16-0.21% more bytes (its 24-bit probabilities against our 12-bit ones).
"""

from __future__ import annotations

import math
import platform
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from tenfold.errors import ConfigError

__all__ = [
    "LANES",
    "MAX_SCALE_BITS",
    "MAX_SYMBOLS",
    "MIN_SCALE_BITS",
    "STATE_LOW",
    "STREAM_MIN_BYTES",
    "build_decode_table",
    "decode",
    "encode",
    "encode_levels",
    "estimate_nbytes",
    "pack_frequencies",
    "quantize_frequencies",
    "scale_bits_for",
    "stream_ok",
    "unpack_frequencies",
]

#: Interleaved lanes per tensor.
LANES = 4
#: ``L``: the lower end of the state interval ``[L, 2**32)`` and the encoder's initial state.
STATE_LOW = 1 << 16
#: Precision limits: frequencies sum to ``2**n`` with ``n`` in 1..16.
MAX_SCALE_BITS = 16
#: :func:`scale_bits_for` never picks less (4096-entry decode tables).
MIN_SCALE_BITS = 12
#: Alphabets of up to 2**16 symbols.
MAX_SYMBOLS = 1 << 16

_BIG_ENDIAN = sys.byteorder == "big"
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_I128 = ir.IntType(128)

# numba: mixing uint64 with int64 promotes to float64, so every constant is typed
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U3 = np.uint64(3)
_U16 = np.uint64(16)
_U32 = np.uint64(32)
_LOW16 = np.uint64(0xFFFF)
_L = np.uint64(STATE_LOW)
_MAX_U64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)

# counts * 2**n must fit in int64
_MAX_TOTAL = 1 << 47


# ---- intrinsics -------------------------------------------------------------------------


@intrinsic
def _load_le16(typingctx: Any, addr: Any) -> tuple[Any, Callable[..., Any]]:
    # unaligned little-endian 16-bit load (a wire word) from address `addr`, as uint64
    sig = types.uint64(addr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = builder.load(builder.inttoptr(args[0], _I16.as_pointer()), align=1)
        if _BIG_ENDIAN:
            value = builder.bswap(value)
        return builder.zext(value, _I64)

    return sig, codegen


@intrinsic
def _load_u16(typingctx: Any, addr: Any) -> tuple[Any, Callable[..., Any]]:
    # native-endian 16-bit load (an element of a uint16 array), as uint64
    sig = types.uint64(addr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = builder.load(builder.inttoptr(args[0], _I16.as_pointer()), align=1)
        return builder.zext(value, _I64)

    return sig, codegen


@intrinsic
def _store_u16(typingctx: Any, addr: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    # native-endian store of the low 16 bits of `value` (uint64) at address `addr`
    sig = types.void(addr, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        low = builder.trunc(args[1], _I16)
        builder.store(low, builder.inttoptr(args[0], _I16.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _load_u64(typingctx: Any, addr: Any) -> tuple[Any, Callable[..., Any]]:
    # native-endian unaligned 64-bit load from address `addr`
    sig = types.uint64(addr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.load(builder.inttoptr(args[0], _I64.as_pointer()), align=1)

    return sig, codegen


@intrinsic
def _store_u64(typingctx: Any, addr: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    # native-endian unaligned store of `value` (uint64) at address `addr` (two float32 at once)
    sig = types.void(addr, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.store(args[1], builder.inttoptr(args[0], _I64.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stream_u64(typingctx: Any, addr: Any, value: Any) -> tuple[Any, Callable[..., Any]]:
    # a non-temporal store of `value` (uint64) at the 8-byte aligned address `addr` (x86:
    # MOVNTI): to memory without taking a cache line, so an output larger than the caches
    # does not evict the decoder's tables; follow the stores with _stream_fence
    sig = types.void(addr, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        store = builder.store(args[1], builder.inttoptr(args[0], _I64.as_pointer()), align=8)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stream_fence(typingctx: Any) -> tuple[Any, Callable[..., Any]]:
    # orders the non-temporal stores before it with every later store (x86: SFENCE, which
    # a release or sequentially consistent fence does not emit; elsewhere a full fence)
    sig = types.void()

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if _X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=fnty), [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _mulhi(typingctx: Any, a: Any, b: Any) -> tuple[Any, Callable[..., Any]]:
    # high 64 bits of the 128-bit product a * b (one MULX on x86-64)
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        wide = builder.mul(builder.zext(args[0], _I128), builder.zext(args[1], _I128))
        return builder.trunc(builder.lshr(wide, ir.Constant(_I128, 64)), _I64)

    return sig, codegen


# ---- precision and frequencies ----------------------------------------------------------


def scale_bits_for(num_used: int) -> int:
    """The precision ``n`` the encoder uses for ``num_used`` distinct symbols.

    The smallest ``n >= 12`` with ``2**n >= 2 * num_used``, capped at 16 (which still has a
    slot for each of up to 2**16 symbols).

    Example:
        >>> scale_bits_for(1), scale_bits_for(2048), scale_bits_for(2049), scale_bits_for(40000)
        (12, 12, 13, 16)
    """
    if not 1 <= num_used <= MAX_SYMBOLS:
        raise ConfigError(f"need 1..{MAX_SYMBOLS} used symbols, got {num_used}")
    n = MIN_SCALE_BITS
    while n < MAX_SCALE_BITS and (1 << n) < 2 * num_used:
        n += 1
    return n


def quantize_frequencies(counts: np.ndarray, scale_bits: int) -> np.ndarray:
    """Frequencies summing to ``2**scale_bits``, close to proportional to ``counts``.

    The rule (module docstring, deterministic and integer-exact): Hamilton apportionment
    (floor of ``c * 2**n / total``, leftover units to the largest remainders, ties to the
    lower symbol), then every used symbol at 0 is raised to 1, then that excess is taken one
    unit at a time from the largest frequency (ties: the lower symbol first).

    Args:
        counts: non-negative symbol counts, shape ``(K,)``, at least one nonzero, at most
            ``2**scale_bits`` nonzero, total below ``2**47``.
        scale_bits: the precision ``n``, 1..16.

    Returns:
        uint32 frequencies, shape ``(K,)``: ``f > 0`` exactly where ``counts > 0``.

    Example:
        >>> quantize_frequencies(np.array([6, 1, 0, 1]), 3).tolist()
        [6, 1, 0, 1]
        >>> quantize_frequencies(np.array([100, 1, 1]), 2).tolist()
        [2, 1, 1]
    """
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    if not 1 <= scale_bits <= MAX_SCALE_BITS:
        raise ConfigError(f"scale_bits must be in 1..{MAX_SCALE_BITS}, got {scale_bits}")
    if c.size > MAX_SYMBOLS or (c.size and int(c.min()) < 0):
        raise ConfigError("counts must be non-negative, at most 2**16 symbols")
    total = int(c.sum())
    used = int(np.count_nonzero(c))
    m = 1 << scale_bits
    if used == 0 or used > m or total >= _MAX_TOTAL:
        raise ConfigError(
            f"need 1..2**scale_bits = {m} used symbols and a total below 2**47 "
            f"(used={used}, total={total})"
        )
    f = np.empty(c.size, dtype=np.int64)
    _quantize_kernel(c, m, total, f)
    return f.astype(np.uint32)


def _quantized(counts: np.ndarray, scale_bits: int) -> np.ndarray:
    """:func:`quantize_frequencies` (int64 frequencies) without its checks, for callers
    whose ``counts`` are known valid: int64, C-contiguous, at most ``2**scale_bits`` nonzero,
    total in ``1 .. 2**47 - 1``."""
    f = np.empty(counts.size, dtype=np.int64)
    _quantize_kernel(counts, 1 << scale_bits, int(counts.sum()), f)
    return f


@njit(cache=True, nogil=True)
def _quantize_kernel(c: np.ndarray, m: int, total: int, f: np.ndarray) -> None:
    # quantize_frequencies' three steps into f (a kernel: numpy took 10-70 us, paid several
    # times per tensor). Without temporaries but the remainders, and with a selection
    # instead of a sort: 40 -> 9 us for 1,024 symbols (a pair alphabet at 4 bits/param),
    # 203 -> 31 us for 4,096 (every output the same: 20,000 random count vectors).
    n = c.size
    rem = np.empty(n, dtype=np.int64)
    short = m
    for s in range(n):
        scaled = c[s] * m
        q = scaled // total
        f[s] = q
        rem[s] = scaled - q * total
        short -= q
    if short:  # 0 < short < #(rem > 0): every recipient has rem > 0
        # the `short` largest remainders, ties to the lower symbol (what a stable sort by
        # descending remainder puts first): all those above the short-th largest, then
        # the lowest-indexed ones equal to it
        v = np.partition(rem, n - short)[n - short]
        for s in range(n):
            if rem[s] > v:
                f[s] += 1
                short -= 1
        for s in range(n):
            if short == 0:
                break
            if rem[s] == v:
                f[s] += 1
                short -= 1
    excess = 0
    for s in range(n):
        if c[s] > 0 and f[s] == 0:
            f[s] = 1
            excess += 1
    if excess:
        _take_from_largest(f, excess)


@njit(cache=True, nogil=True)
def _units_above(f: np.ndarray, v: int) -> int:
    # S(v) = sum(max(0, f - v))
    total = 0
    for s in range(f.size):
        if f[s] > v:
            total += f[s] - v
    return total


@njit(cache=True, nogil=True)
def _take_from_largest(f: np.ndarray, excess: int) -> None:
    # In place, the closed form of "excess times: subtract 1 from the largest f, ties to the
    # lower symbol". With S(v) = sum(max(0, f - v)), let lam be the largest level with
    # S(lam) >= excess (lam >= 1 as sum(f) - used = 2**n + excess - used >= excess). The
    # greedy first brings every f > lam + 1 down to lam + 1 (S(lam + 1) < excess units),
    # then takes the remaining units from the symbols at lam + 1 in increasing symbol order:
    # so of the symbols above lam, the lowest-indexed ones end at lam, the
    # S(lam) - excess highest-indexed ones at lam + 1.
    lo, hi = 1, f.max()  # S(lo) >= excess > S(hi) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _units_above(f, mid) >= excess:
            lo = mid
        else:
            hi = mid
    lam = lo
    keep = _units_above(f, lam) - excess
    # the `keep` highest-indexed symbols above lam end at lam + 1, the others at lam
    for s in range(f.size - 1, -1, -1):
        if f[s] > lam:
            if keep:
                f[s] = lam + 1
                keep -= 1
            else:
                f[s] = lam


def _check_frequencies(freq: np.ndarray, scale_bits: int) -> np.ndarray:
    f = np.ascontiguousarray(freq).reshape(-1)
    if f.dtype.kind not in "ui":
        raise ConfigError(f"frequencies must be integers, got {f.dtype}")
    f = f.astype(np.int64)
    if not 1 <= scale_bits <= MAX_SCALE_BITS:
        raise ConfigError(f"scale_bits must be in 1..{MAX_SCALE_BITS}, got {scale_bits}")
    if not 1 <= f.size <= MAX_SYMBOLS:
        raise ConfigError(f"need 1..{MAX_SYMBOLS} symbols, got {f.size}")
    if int(f.min()) < 0 or int(f.sum()) != 1 << scale_bits:
        raise ConfigError(f"frequencies must be >= 0 and sum to 2**{scale_bits}")
    return f


def estimate_nbytes(counts: np.ndarray, freq: np.ndarray, scale_bits: int) -> int:
    """Estimated payload bytes (the 4 lanes together) of coding ``counts`` with ``freq``.

    ``ceil(sum(c[s] * (n - log2 f[s])) / 8) + 16``: the ideal cost plus the 4 states. The
    real size is at most this (to within the coder's tiny excess over the ideal cost) and
    more than this minus 9 bytes: a lane's final state carries 0 to 16 bits of payload.

    Args:
        counts: symbol counts, shape ``(K,)``; every counted symbol must have ``f > 0``.
        freq, scale_bits: the frequency table (sum ``2**scale_bits``).

    Example:
        >>> estimate_nbytes(np.array([6, 1, 0, 1]), np.array([6, 1, 0, 1]), 3)  # 8.49 bits
        18
    """
    f = _check_frequencies(freq, scale_bits)
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    if c.shape != f.shape:
        raise ConfigError(f"counts has {c.size} symbols, freq {f.size}")
    used = c > 0
    if np.any(f[used] == 0):
        raise ConfigError("a counted symbol has frequency 0")
    bits = float(np.sum(c[used] * (scale_bits - np.log2(f[used]))))
    return math.ceil(bits / 8) + 4 * LANES


# ---- the frequency table on the wire ----------------------------------------------------


@njit(inline="always", cache=True, nogil=True)
def _put_varint(out: np.ndarray, i: int, v: int) -> int:
    while v >= 0x80:
        out[i] = (v & 0x7F) | 0x80
        v >>= 7
        i += 1
    out[i] = v
    return i + 1


@njit(cache=True, nogil=True)
def _pack_kernel(freq: np.ndarray, out: np.ndarray) -> int:
    # out: 3 * K + 4 bytes (a varint of <= 2**16 has <= 3 bytes; a run needs 1 + <= 3 bytes
    # for >= 1 symbols). Returns the table's length.
    k = freq.size
    i = 0
    s = 0
    while s < k:
        v = np.int64(freq[s])
        if v:
            i = _put_varint(out, i, v)
            s += 1
            continue
        r = 1
        while s + r < k and freq[s + r] == 0:
            r += 1
        out[i] = 0
        i = _put_varint(out, i + 1, r - 1)
        s += r
    return i


def _packed(freq: np.ndarray) -> bytes:
    # pack_frequencies for int64 frequencies known to be in 0..2**16 (unchecked)
    out = np.zeros(3 * freq.size + 4, dtype=np.uint8)
    return bytes(out[: _pack_kernel(freq, out)])


def pack_frequencies(freq: np.ndarray) -> bytes:
    """Serialize frequencies (each 0..2**16) as the varint table of the module docstring.

    Example:
        >>> pack_frequencies(np.array([6, 0, 0, 0, 1, 1, 0], dtype=np.uint32)).hex()  # 6 (0 2) 1 1 (0 0)
        '06000201010000'
    """
    f = np.ascontiguousarray(freq).reshape(-1)
    if f.size and (f.dtype.kind not in "ui" or int(f.min()) < 0 or int(f.max()) > MAX_SYMBOLS):
        raise ConfigError("frequencies must be integers in 0..2**16")
    f = f.astype(np.int64)
    out = np.zeros(3 * f.size + 4, dtype=np.uint8)
    return bytes(out[: _pack_kernel(f, out)])


@njit(inline="always", cache=True, nogil=True)
def _get_varint(table: np.ndarray, i: int) -> tuple[int, int, int]:
    # (value, next index, status): at most 3 bytes (values < 2**21: enough for every
    # legal field), minimal form. Status 1: truncated, 2: not minimal, 3: too long.
    m = table.size
    v = 0
    for k in range(3):
        if i >= m:
            return 0, i, 1
        byte = np.int64(table[i])
        i += 1
        v |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            if byte == 0 and k > 0:
                return 0, i, 2
            return v, i, 0
    return 0, i, 3


@njit(cache=True, nogil=True)
def _unpack_kernel(table: np.ndarray, freq: np.ndarray, total: int) -> int:
    # Returns 0 on success, else an error code (_UNPACK_ERRORS). freq starts zeroed.
    k = freq.size
    i = 0
    s = 0
    acc = 0
    after_run = False
    while s < k:
        v, i, status = _get_varint(table, i)
        if status:
            return status
        if v:
            if v > total:
                return 4
            freq[s] = v
            acc += v
            s += 1
            after_run = False
            continue
        if after_run:
            return 5
        r, i, status = _get_varint(table, i)
        if status:
            return status
        if r >= k - s:
            return 6
        s += r + 1
        after_run = True
    if i != table.size:
        return 7
    if acc != total:
        return 8
    return 0


_UNPACK_ERRORS = {
    1: "frequency table is truncated",
    2: "frequency table has a non-minimal varint",
    3: "frequency table has a varint longer than 3 bytes",
    4: "frequency table has a frequency above 2**scale_bits",
    5: "frequency table has two consecutive unused-symbol runs (not maximal)",
    6: "frequency table describes more symbols than the alphabet has",
    7: "frequency table has trailing data",
    8: "frequencies do not sum to 2**scale_bits",
}


def unpack_frequencies(
    table: np.ndarray, num_symbols: int, scale_bits: int
) -> tuple[np.ndarray | None, str]:
    """Parse a frequency table for ``num_symbols`` symbols at precision ``scale_bits``.

    Args:
        table: the table's bytes (uint8 array or bytes-like).
        num_symbols: ``K``, 1..2**16 (from the record header, already validated).
        scale_bits: ``n`` as read from the packet (checked here: 1..16).

    Returns:
        ``(freq, "")`` with uint32 frequencies of shape ``(K,)`` that satisfy every rule of
        the format (so they can be passed to :func:`build_decode_table`), else
        ``(None, reason)``. Never raises for any bytes.
    """
    if not 1 <= num_symbols <= MAX_SYMBOLS:
        raise ConfigError(f"num_symbols must be in 1..{MAX_SYMBOLS}, got {num_symbols}")
    if not 1 <= scale_bits <= MAX_SCALE_BITS:
        return None, f"ans precision {scale_bits} is outside 1..{MAX_SCALE_BITS}"
    if isinstance(table, np.ndarray):
        raw = np.ascontiguousarray(table.reshape(-1), dtype=np.uint8)
    else:
        raw = np.frombuffer(bytes(table), dtype=np.uint8)
    freq = np.zeros(num_symbols, dtype=np.uint32)
    status = int(_unpack_kernel(raw, freq, 1 << scale_bits))
    if status:
        return None, _UNPACK_ERRORS[status]
    return freq, ""


# ---- encoding ---------------------------------------------------------------------------


def _effective(f: np.ndarray, scale_bits: int) -> tuple[np.ndarray, int]:
    # A single used symbol (f = 2**n) never changes the state, in the encoder or the decoder;
    # with n = 0 and f = 1 the kernels compute exactly that, and f fits their 16-bit fields.
    used = np.flatnonzero(f)
    if used.size == 1:
        g = np.zeros_like(f)
        g[used[0]] = 1
        return g, 0
    return f, scale_bits


def _encoder_table(f: np.ndarray, scale_bits: int) -> np.ndarray:
    # Four uint64 per symbol, row s at tab[4s:4s + 4] (unused symbols: zero rows, never
    # looked up), so that a step loads its fields instead of unpacking them from one word
    # (measured, 10M values at ~1 and ~4 bits, one and two values per step: 1.06-1.08x):
    #   rcp  = ceil(2**64 / f) for f >= 2, 2**64 - 1 for f = 1
    #   xmax = f << (16 - n), the renormalisation bound f << (32 - n) over 2**16 (exact:
    #          it is a multiple of 2**16)
    #   cmpl = 2**n - f
    #   bias = cum + (2**n - 1 if f == 1 else 0)
    # The kernel computes q = mulhi(x, rcp) = floor(x * rcp / 2**64) for x in [1, 2**32):
    # * f >= 2: rcp = 2**64 / f + e with 0 <= e < 1, so x * rcp / 2**64 = x / f + d with
    #   0 <= d < 2**32 / 2**64 = 2**-32; x / f = q + r / f with r / f <= 1 - 1 / f <=
    #   1 - 2**-16, so the floor is exactly q = x // f.
    # * f = 1: x * (2**64 - 1) / 2**64 = x - x / 2**64, so q = x - 1 (x >= 1 always), and
    #   q * (2**n - f) is 2**n - 1 short: the bias adds it back.
    # Then x' = x + q * (2**n - f) + bias = (q << n) + (x - q * f) + cum. Measured with
    # prototype kernels (10M values, 0.4 / 1 / 2 bits each, M values/s): 64-bit DIV
    # 310 / 270 / 280, float64 reciprocal int((x + 0.5) * (1 / f)) 175 / 170 / 160, this
    # 355-425 / 325-345 / 260-340.
    # A single used symbol comes here as n = 0, f = 1: its xmax (2**16) is clamped to
    # 0xFFFF, never reached as its state stays L.
    tab = np.zeros(4 * f.size, dtype=np.uint64)
    _encoder_table_kernel(np.ascontiguousarray(f, dtype=np.int64), scale_bits, tab)
    return tab


@njit(cache=True, nogil=True)
def _encoder_table_kernel(f: np.ndarray, scale_bits: int, tab: np.ndarray) -> None:
    # fills the zeroed tab (4 * K) as _encoder_table says (a kernel: numpy took 20 us per
    # table, paid per tensor)
    m = np.uint64(1) << np.uint64(scale_bits)
    cum = np.uint64(0)
    for s in range(f.size):
        fs = np.uint64(f[s])
        if fs == 0:
            continue
        r = 4 * s
        tab[r] = _MAX_U64 if fs == 1 else _MAX_U64 // fs + _U1
        tab[r + 1] = min(fs << (_U16 - np.uint64(scale_bits)), _LOW16)
        tab[r + 2] = m - fs
        tab[r + 3] = cum + (m - _U1 if fs == 1 else np.uint64(0))
        cum += fs


@njit(inline="always", cache=True, nogil=True)
def _enc_put(x: int, tab: np.ndarray, r: int, p: int) -> tuple[int, int]:
    # One encoder step for a lane: state x, output address p (words are written downwards),
    # the symbol's table row at tab[r] (r = 4 * symbol, uint64). Renormalises without a
    # branch: the word is stored whether or not it is due (the next store overwrites it if
    # not; the lane has room for one word per value) and p moves by 0 or 2 bytes. Measured
    # (10M values, best of 5, M values/s, branch vs no branch): 0.4 bits 379-500 vs
    # 402-469, 1 bit 429-435 vs 412-477, 1.5 bits 315-383 vs 385-465, 2 bits 277 vs
    # 424-466, 4 bits 276 vs 327: a word is due in about bits/16 of the steps and the
    # branch mispredicts.
    hi = x >> _U16
    _store_u16(p - 2, x)  # type: ignore[call-arg]
    c = hi >= tab[r | _U1]  # x >= f << (32 - n), as that bound is a multiple of 2**16
    p -= np.int64(c) << 1
    x = hi if c else x
    return x + _mulhi(x, tab[r]) * tab[r | _U2] + tab[r | _U3], p


@njit(cache=True, nogil=True)
def _enc_finish(x: int, p: int) -> int:
    # the final state, low word first (u32 little-endian once the words are LE)
    _store_u16(p - 4, x)  # type: ignore[call-arg]
    _store_u16(p - 2, x >> _U16)
    return p - 4


@njit(cache=True, nogil=True)
def _enc_loop(
    sa: int,
    n4: int,
    tab: np.ndarray,
    x0: int,
    x1: int,
    x2: int,
    x3: int,
    p0: int,
    p1: int,
    p2: int,
    p3: int,
) -> tuple[int, int, int, int, int, int, int, int]:
    # Values n4-4 .. 0, four at a time, one per lane. No checks: clamping the symbol and
    # OR-ing the rows to detect unused symbols cost 10-20% (register pressure: 4 states +
    # 4 output addresses already); the caller validates instead.
    for i in range(n4 // 4):
        a = sa + 2 * (n4 - 4 - 4 * i)
        r0 = _load_u16(a) << _U2  # type: ignore[call-arg]
        r1 = _load_u16(a + 2) << _U2
        r2 = _load_u16(a + 4) << _U2
        r3 = _load_u16(a + 6) << _U2
        x0, p0 = _enc_put(x0, tab, r0, p0)
        x1, p1 = _enc_put(x1, tab, r1, p1)
        x2, p2 = _enc_put(x2, tab, r2, p2)
        x3, p3 = _enc_put(x3, tab, r3, p3)
    return x0, x1, x2, x3, p0, p1, p2, p3


@njit(cache=True, nogil=True)
def _encode_kernel(
    sym: np.ndarray, tab: np.ndarray, buf: np.ndarray, ends: np.ndarray
) -> tuple[int, int, int, int]:
    # Lane l is written downwards from buf[ends[l]] (uint16 elements); it has room for one
    # word per value plus the state. Every symbol has a nonzero row (callers validate).
    # Returns the 4 lane start indices.
    n = sym.size
    sa = np.int64(sym.ctypes.data)
    base = np.int64(buf.ctypes.data)
    p0 = base + 2 * ends[0]
    p1 = base + 2 * ends[1]
    p2 = base + 2 * ends[2]
    p3 = base + 2 * ends[3]
    x0 = x1 = x2 = x3 = _L
    r = n % 4
    n4 = n - r
    # the last value of lanes 0 .. r-1 comes first (lanes are encoded backwards)
    if r >= 3:
        row = _load_u16(sa + 2 * (n4 + 2)) << _U2  # type: ignore[call-arg]
        x2, p2 = _enc_put(x2, tab, row, p2)
    if r >= 2:
        row = _load_u16(sa + 2 * (n4 + 1)) << _U2  # type: ignore[call-arg]
        x1, p1 = _enc_put(x1, tab, row, p1)
    if r >= 1:
        row = _load_u16(sa + 2 * n4) << _U2  # type: ignore[call-arg]
        x0, p0 = _enc_put(x0, tab, row, p0)
    x0, x1, x2, x3, p0, p1, p2, p3 = _enc_loop(sa, n4, tab, x0, x1, x2, x3, p0, p1, p2, p3)
    p0 = _enc_finish(x0, p0)
    p1 = _enc_finish(x1, p1)
    p2 = _enc_finish(x2, p2)
    p3 = _enc_finish(x3, p3)
    return (p0 - base) // 2, (p1 - base) // 2, (p2 - base) // 2, (p3 - base) // 2


@njit(inline="always", cache=True, nogil=True)
def _row_of(v: float, inv: float, qlo: float, qhi: float, qmin: float) -> int:
    # the encoder-table row of a value's symbol: its mid-tread level, clamped, minus qmin
    # (np.floor stays a float, clamped before the one conversion: numba's math.floor
    # returns an int64, which wraps for |v * inv| >= 2**63 and sent a huge value to qlo)
    q = np.floor(np.float64(v) * inv + 0.5)
    q = q if q > qlo else qlo
    q = q if q < qhi else qhi
    return np.uint64(np.int64(q - qmin)) << _U2


#: values quantized at a time by the fused encoder (their symbols stay in L1)
_LEVEL_BLOCK = 2048


@njit(cache=True, nogil=True)
def _decoded_block(sym: np.ndarray, lut: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    # out[lo:hi] = lut[sym[:hi - lo]]: what a decoder writes for these symbols
    dst = out[lo:hi]
    for j in range(dst.size):
        dst[j] = lut[sym[j]]


@njit(cache=True, nogil=True)
def _write_decoded(
    sym: np.ndarray, lut: np.ndarray, qmin: float, step: float, out: np.ndarray, lo: int, hi: int
) -> None:
    # out[lo:hi] = the decoding of sym[:hi - lo]: lut[symbol], or with an empty lut
    # (float32/float64 wire and output alike) midtread_lut's rule computed,
    # float64(qmin + symbol) * step rounded once to out's dtype
    if lut.size:
        _decoded_block(sym, lut, out, lo, hi)
        return
    dst = out[lo:hi]
    for j in range(dst.size):
        dst[j] = (np.float64(sym[j]) + qmin) * step


@njit(cache=True, nogil=True)
def _levels_block(
    x: np.ndarray,
    lo: int,
    hi: int,
    inv: float,
    qlo: float,
    qhi: float,
    qmin: float,
    sym: np.ndarray,
) -> None:
    # symbols of x[lo:hi] into sym[:hi - lo]; a branch-free loop LLVM vectorises (with
    # conditional expressions: the builtin min/max on floats are not, 0.77 vs 2.5 G/s)
    # (and over a slice: x[lo + j] may be a negative index to numba, which defeats it);
    # the level stays a float until clamped, as in _row_of
    xs = x[lo:hi]
    for j in range(xs.size):
        q = np.floor(np.float64(xs[j]) * inv + 0.5)
        q = q if q > qlo else qlo
        q = q if q < qhi else qhi
        sym[j] = np.uint16(np.int32(q - qmin))


@njit(cache=True, nogil=True)
def _encode_values_kernel(
    x: np.ndarray,
    inv: float,
    qlo: float,
    qhi: float,
    qmin: float,
    tab: np.ndarray,
    buf: np.ndarray,
    ends: np.ndarray,
    lut: np.ndarray,
    decoded: np.ndarray,
    step: float,
) -> tuple[int, int, int, int]:
    # _encode_kernel with the mid-tread quantizer fused in: blocks of values, last first,
    # are quantized into a small symbol buffer (vectorised, in L1) and coded from it, so the
    # values are read once and no symbol array is written. A non-empty ``decoded`` gets
    # each value's decoding, lut[symbol], from the same symbol buffer (an empty lut:
    # computed from the level, as _write_decoded).
    n = x.size
    base = np.int64(buf.ctypes.data)
    p0 = base + 2 * ends[0]
    p1 = base + 2 * ends[1]
    p2 = base + 2 * ends[2]
    p3 = base + 2 * ends[3]
    x0 = x1 = x2 = x3 = _L
    r = n % 4
    n4 = n - r
    if r >= 3:
        row = _row_of(x[n4 + 2], inv, qlo, qhi, qmin)
        x2, p2 = _enc_put(x2, tab, row, p2)
    if r >= 2:
        row = _row_of(x[n4 + 1], inv, qlo, qhi, qmin)
        x1, p1 = _enc_put(x1, tab, row, p1)
    if r >= 1:
        row = _row_of(x[n4], inv, qlo, qhi, qmin)
        x0, p0 = _enc_put(x0, tab, row, p0)
    sym = np.empty(_LEVEL_BLOCK, dtype=np.uint16)
    if decoded.size and r:
        _levels_block(x, n4, n, inv, qlo, qhi, qmin, sym)
        _write_decoded(sym, lut, qmin, step, decoded, n4, n)
    sa = np.int64(sym.ctypes.data)
    hi = n4
    while hi > 0:
        lo = max(0, hi - _LEVEL_BLOCK)  # a multiple of 4, as n4 and the block are
        _levels_block(x, lo, hi, inv, qlo, qhi, qmin, sym)
        if decoded.size:
            _write_decoded(sym, lut, qmin, step, decoded, lo, hi)
        x0, x1, x2, x3, p0, p1, p2, p3 = _enc_loop(sa, hi - lo, tab, x0, x1, x2, x3, p0, p1, p2, p3)
        hi = lo
    p0 = _enc_finish(x0, p0)
    p1 = _enc_finish(x1, p1)
    p2 = _enc_finish(x2, p2)
    p3 = _enc_finish(x3, p3)
    return (p0 - base) // 2, (p1 - base) // 2, (p2 - base) // 2, (p3 - base) // 2


def decoded_target(
    x: np.ndarray, lut: np.ndarray | None, decoded: np.ndarray | None, step: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``(lut, decoded, step)`` a fused encoder kernel takes: empty arrays (of ``x``'s
    dtype) when no decoding is wanted; otherwise checked: ``decoded`` 1-D, contiguous,
    ``x.size`` values of ``x``'s dtype, with either ``lut`` of that dtype or ``step``
    (then the lut is empty: the kernel computes each value, as :func:`_write_decoded`)."""
    if decoded is None:
        empty = np.empty(0, dtype=x.dtype)
        return empty, empty, 0.0
    if (
        decoded.dtype != x.dtype
        or (lut is None) == (step is None)
        or (lut is not None and lut.dtype != x.dtype)
    ):
        raise ConfigError(
            f"decoded needs either lut or step, and decoded and lut of dtype {x.dtype}"
        )
    if decoded.ndim != 1 or decoded.size != x.size or not decoded.flags.c_contiguous:
        raise ConfigError(f"decoded must be a 1-D contiguous array of {x.size} values")
    if lut is None:
        return np.empty(0, dtype=x.dtype), decoded, float(step)  # type: ignore[arg-type]
    return np.ascontiguousarray(lut), decoded, 0.0


def _lane_buffer(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ends, buf)`` for an encoder kernel of ``steps`` coder steps: the 4 lanes' end
    indices (uint16 words) in one buffer with room for a word per step and the state."""
    room = np.array([(steps - lane + 3) // 4 + 2 for lane in range(LANES)], dtype=np.int64)
    ends = np.cumsum(room)
    return ends, np.empty(int(ends[-1]), dtype=np.uint16)


def _lane_bytes(
    buf: np.ndarray, starts: Any, ends: np.ndarray, *, copy: bool = True
) -> list[np.ndarray]:
    """The 4 lanes the kernel wrote into ``buf`` (words ``starts[l]:ends[l]``) as
    little-endian bytes; copies by default (the buffer has room for a word per step,
    half the input's bytes at float32)."""
    if _BIG_ENDIAN:
        buf = buf.astype("<u2")
    lanes = [buf[int(a) : int(b)].view(np.uint8) for a, b in zip(starts, ends, strict=True)]
    return [lane.copy() for lane in lanes] if copy else lanes


def encode_levels(
    values: np.ndarray,
    step_inverse: float,
    qmin: int,
    qlo: int,
    qhi: int,
    freq: np.ndarray,
    scale_bits: int,
    *,
    lut: np.ndarray | None = None,
    decoded: np.ndarray | None = None,
    step: float | None = None,
) -> list[np.ndarray]:
    """rANS-code the mid-tread levels of ``values`` (quantized on the fly) into 4 lanes.

    Value ``j``'s symbol is ``clamp(floor(values[j] * step_inverse + 0.5), qlo, qhi) -
    qmin``; the lanes are exactly :func:`encode`'s for those symbols. With ``decoded``
    (and ``lut``, the decoded value of each symbol), ``decoded[j] = lut[symbol j]`` is
    written in the same pass: what decoding the lanes gives, without decoding them. With
    ``step`` instead of ``lut``, each is computed there as ``float64(qmin + symbol) *
    step`` rounded once to ``decoded``'s dtype (midtread_lut's rule, for a wire of that
    dtype): the same values, without a table lookup per value.

    Args:
        values: 1-D float32/float64, C-contiguous.
        step_inverse: ``1 / step`` (binary64).
        qmin: the level of symbol 0.
        qlo, qhi: the clamp, ``qmin <= qlo <= qhi < qmin + K``; every symbol from
            ``qlo - qmin`` to ``qhi - qmin`` must have ``f > 0`` (checked).
        freq, scale_bits: as for :func:`encode`.

    Example:
        >>> v = np.array([0.0, 0.1, 1.0, 0.0, -0.2])
        >>> f = np.array([0, 3, 1, 0])
        >>> encode_levels(v, 1.0, -1, 0, 1, f, 2)[0].tobytes() == encode(
        ...     np.array([1, 1, 2, 1, 1], np.uint16), f, 2)[0].tobytes()
        True
    """
    f = _check_frequencies(freq, scale_bits)
    if not (qmin <= qlo <= qhi < qmin + f.size) or not np.all(f[qlo - qmin : qhi - qmin + 1]):
        raise ConfigError(f"levels {qlo}..{qhi} need nonzero frequencies from symbol {qmin}")
    x = np.ascontiguousarray(values).reshape(-1)
    if x.dtype not in (np.float32, np.float64):
        raise ConfigError(f"values must be float32 or float64, got {x.dtype}")
    return _encode_levels(x, step_inverse, qmin, qlo, qhi, f, scale_bits, lut, decoded, step)


def _encode_levels(
    x: np.ndarray,
    step_inverse: float,
    qmin: int,
    qlo: int,
    qhi: int,
    f: np.ndarray,
    scale_bits: int,
    lut: np.ndarray | None,
    decoded: np.ndarray | None,
    step: float | None = None,
) -> list[np.ndarray]:
    # encode_levels once its arguments are known valid (x 1-D contiguous float32/float64,
    # f valid frequencies, nonzero over qlo..qhi): a caller that built them skips the checks
    g, n_eff = _effective(f, scale_bits)
    tab = _encoder_table(g, n_eff)
    ends, buf = _lane_buffer(x.size)
    lut_, out, step_ = decoded_target(x, lut, decoded, step)
    starts = _encode_values_kernel(
        x,
        float(step_inverse),
        float(qlo),
        float(qhi),
        float(qmin),
        tab,
        buf,
        ends,
        lut_,
        out,
        step_,
    )
    return _lane_bytes(buf, starts, ends)


@njit(cache=True, nogil=True)
def _unused_symbol(sym: np.ndarray, freq: np.ndarray) -> int:
    # the first value whose symbol is >= K or has f == 0, or -1 (encode(check=True))
    k = freq.size
    for j in range(sym.size):
        s = sym[j]
        if s >= k or freq[s] == 0:
            return j
    return -1


#: The decoder renormalises without a branch (reads the next word whether or not it is due,
#: keeps it with a conditional move) at or above this many bits per value. Measured (10M
#: values, best of 5, M values/s, branch vs no branch): 0.4 bits 584-653 vs 353-512,
#: 1 bit 504-543 vs 429-499, 1.5 bits 391-394 vs 441-494, 2 bits 402-408 vs 409-468,
#: 3 bits 292 vs 374, 6 bits 287 vs 375.
_DECODE_BRANCHLESS_BITS = 1.5


def _branchless(starts: np.ndarray, ends: np.ndarray, steps: int) -> bool:
    """Whether a decoder of ``steps`` steps over the lanes ``starts:ends`` (checked
    ranges) renormalises without a branch: at :data:`_DECODE_BRANCHLESS_BITS` bits of
    words per step or more, where a branch would mispredict."""
    words_bits = 8 * int((ends - starts).sum() - 4 * LANES)
    return words_bits >= _DECODE_BRANCHLESS_BITS * max(steps, 1)


def encode(
    symbols: np.ndarray,
    freq: np.ndarray,
    scale_bits: int,
    *,
    check: bool = False,
) -> list[np.ndarray]:
    """rANS-code ``symbols`` into 4 interleaved lanes (module docstring).

    Args:
        symbols: uint16 symbols, shape ``(n,)``, each ``< K`` (checked) with ``f > 0``
            (the caller's contract, as when ``freq`` comes from these symbols' histogram:
            checked only with ``check=True``; lanes with an unused symbol do not decode).
        freq: frequencies, shape ``(K,)``, summing to ``2**scale_bits``.
        scale_bits: the precision ``n``, 1..16.
        check: also verify that every symbol has ``f > 0`` (one more pass over the data,
            +20% time).

    Returns:
        The 4 lane streams (uint8 arrays, the exact bytes: state first, then the words).

    Raises:
        ValueError: bad frequencies, a symbol ``>= K``, or (``check=True``) a symbol with
            ``f == 0``.

    Example:
        >>> lanes = encode(np.array([0, 0, 1, 0, 0], dtype=np.uint16), np.array([3, 1]), 2)
        >>> [lane.tobytes().hex() for lane in lanes]
        ['1cc70100', '55550100', '03000400', '55550100']
    """
    f = _check_frequencies(freq, scale_bits)
    sym = np.ascontiguousarray(symbols)
    if sym.dtype != np.uint16 or sym.ndim != 1:
        raise ConfigError(f"symbols must be a 1-D uint16 array, got {sym.dtype} {sym.shape}")
    # the kernel indexes its table with the symbols: this keeps every access inside it
    # (1.4 ms per 10M values)
    if sym.size and int(sym.max()) >= f.size:
        raise ConfigError(f"symbol {int(sym.max())} is outside the alphabet of {f.size}")
    if check:
        j = int(_unused_symbol(sym, f))
        if j >= 0:
            raise ConfigError(f"value {j} has symbol {int(sym[j])}, whose frequency is 0")
    g, n_eff = _effective(f, scale_bits)
    tab = _encoder_table(g, n_eff)
    ends, buf = _lane_buffer(sym.size)
    starts = _encode_kernel(sym, tab, buf, ends)
    return _lane_bytes(buf, starts, ends, copy=False)


# ---- decoding ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _build_table_kernel(
    f: np.ndarray, lut: np.ndarray, fbtab: np.ndarray, valtab: np.ndarray
) -> None:
    slot = 0
    for s in range(f.size):
        fs = np.uint32(f[s])
        if fs == 0:
            continue
        v = lut[s]
        for b in range(fs):
            fbtab[slot] = (fs << np.uint32(16)) | np.uint32(b)
            valtab[slot] = v
            slot += 1


_LUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint16))


def build_decode_table(
    freq: np.ndarray, scale_bits: int, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's slot tables for valid frequencies (as from :func:`unpack_frequencies`).

    Args:
        freq: frequencies, shape ``(K,)``, summing to ``2**scale_bits``.
        scale_bits: the precision ``n``.
        lut: the decoded value of each symbol, shape ``(K,)``: float32/float64, or the
            uint16 bit patterns of float16 values.

    Returns:
        ``(fbtab, valtab)``, ``2**n`` entries each (1 for a single used symbol, which decodes
        like ``n = 0``): ``fbtab[slot] = f[s] << 16 | (slot - cum[s])`` (uint32) and
        ``valtab[slot] = lut[s]`` (``lut``'s dtype), for ``s`` the slot's symbol.
    """
    f = _check_frequencies(freq, scale_bits)
    lut = np.ascontiguousarray(lut).reshape(-1)
    if lut.dtype not in _LUT_DTYPES:
        raise ConfigError(f"lut must be float32, float64 or uint16 (float16 bits), got {lut.dtype}")
    if lut.size != f.size:
        raise ConfigError(f"lut has {lut.size} values, the alphabet {f.size} symbols")
    g, n_eff = _effective(f, scale_bits)
    fbtab = np.empty(1 << n_eff, dtype=np.uint32)
    valtab = np.empty(1 << n_eff, dtype=lut.dtype)
    _build_table_kernel(g, lut, fbtab, valtab)
    return fbtab, valtab


@njit(cache=True, nogil=True)
def _dec_next(x: int, e: int, sh: int, q: int, last: int, branchless: bool) -> tuple[int, int]:
    # One decoder step for a lane given its slot's entry e = f << 16 | (slot - cum): the
    # new state and read address. Words are read at min(q, last) (last: the lane's final
    # word, so reads never leave the lane); q itself keeps counting, so a lane that ran out
    # of words ends with q past its end and is reported. x stays below 2**32 for any
    # input: f * (x >> n) + (slot - cum) < ((x >> n) + 1) * f <= 2**32.
    x = (e >> _U16) * (x >> sh) + (e & _LOW16)
    if branchless:
        w: int = _load_le16(min(q, last))  # type: ignore[call-arg]
        c = x < _L
        x = ((x << _U16) | w) if c else x
        q += np.int64(c) << 1
    elif x < _L:
        x = (x << _U16) | _load_le16(min(q, last))  # type: ignore[call-arg]
        q += 2
    return x, q


@njit(cache=True, nogil=True)
def _lane_bad(x: int, q: int, end: int, bit: int) -> int:
    return bit if x != _L or q != end else 0


@njit(inline="always", cache=True, nogil=True)
def _dec_loop(
    fbtab: np.ndarray,
    valtab: np.ndarray,
    out: np.ndarray,
    n4: int,
    sh: int,
    x0: int,
    x1: int,
    x2: int,
    x3: int,
    q0: int,
    q1: int,
    q2: int,
    q3: int,
    l0: int,
    l1: int,
    l2: int,
    l3: int,
    add: bool,
    branchless: bool,
) -> tuple[int, int, int, int, int, int, int, int]:
    # Values 0 .. n4-1, four at a time, one per lane. Called with constant flags, so each
    # call site is its own loop (as in the encoder).
    mask = np.uint64(fbtab.size - 1)
    for j in range(0, n4, 4):
        t0 = x0 & mask
        t1 = x1 & mask
        t2 = x2 & mask
        t3 = x3 & mask
        if add:
            out[j] += valtab[t0]
            out[j + 1] += valtab[t1]
            out[j + 2] += valtab[t2]
            out[j + 3] += valtab[t3]
        else:
            out[j] = valtab[t0]
            out[j + 1] = valtab[t1]
            out[j + 2] = valtab[t2]
            out[j + 3] = valtab[t3]
        x0, q0 = _dec_next(x0, np.uint64(fbtab[t0]), sh, q0, l0, branchless)
        x1, q1 = _dec_next(x1, np.uint64(fbtab[t1]), sh, q1, l1, branchless)
        x2, q2 = _dec_next(x2, np.uint64(fbtab[t2]), sh, q2, l2, branchless)
        x3, q3 = _dec_next(x3, np.uint64(fbtab[t3]), sh, q3, l3, branchless)
    return x0, x1, x2, x3, q0, q1, q2, q3


@njit(inline="always", cache=True, nogil=True)
def _initial_states(
    data: np.ndarray, starts: np.ndarray
) -> tuple[int, int, int, int, int, int, int, int, int]:
    # the 4 lanes' initial states and read addresses, and the mask of states below L
    base = np.int64(data.ctypes.data)
    a0 = base + starts[0]
    a1 = base + starts[1]
    a2 = base + starts[2]
    a3 = base + starts[3]
    x0 = _load_le16(a0) | (_load_le16(a0 + 2) << _U16)  # type: ignore[call-arg]
    x1 = _load_le16(a1) | (_load_le16(a1 + 2) << _U16)
    x2 = _load_le16(a2) | (_load_le16(a2 + 2) << _U16)
    x3 = _load_le16(a3) | (_load_le16(a3 + 2) << _U16)
    bad = 0
    bad |= 1 if x0 < _L else 0
    bad |= 2 if x1 < _L else 0
    bad |= 4 if x2 < _L else 0
    bad |= 8 if x3 < _L else 0
    return x0, x1, x2, x3, a0 + 4, a1 + 4, a2 + 4, a3 + 4, bad


@njit(cache=True, nogil=True)
def _decode_kernel(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    fbtab: np.ndarray,
    valtab: np.ndarray,
    scale_bits: int,
    out: np.ndarray,
    add: bool,
    branchless: bool,
) -> int:
    # Returns a bit mask of the corrupt lanes. Every lane has >= 4 bytes (the caller
    # substitutes shorter ones). The 4 lanes advance together: 4 independent chains.
    n = out.size
    base = np.int64(data.ctypes.data)
    mask = np.uint64(fbtab.size - 1)
    sh = np.uint64(scale_bits)
    x0, x1, x2, x3, q0, q1, q2, q3, bad = _initial_states(data, starts)
    e0 = base + ends[0]
    e1 = base + ends[1]
    e2 = base + ends[2]
    e3 = base + ends[3]
    l0, l1, l2, l3 = e0 - 2, e1 - 2, e2 - 2, e3 - 2
    n4 = n - n % 4
    if add and branchless:
        x0, x1, x2, x3, q0, q1, q2, q3 = _dec_loop(
            fbtab, valtab, out, n4, sh, x0, x1, x2, x3, q0, q1, q2, q3, l0, l1, l2, l3, True, True
        )
    elif add:
        x0, x1, x2, x3, q0, q1, q2, q3 = _dec_loop(
            fbtab, valtab, out, n4, sh, x0, x1, x2, x3, q0, q1, q2, q3, l0, l1, l2, l3, True, False
        )
    elif branchless:
        x0, x1, x2, x3, q0, q1, q2, q3 = _dec_loop(
            fbtab, valtab, out, n4, sh, x0, x1, x2, x3, q0, q1, q2, q3, l0, l1, l2, l3, False, True
        )
    else:
        x0, x1, x2, x3, q0, q1, q2, q3 = _dec_loop(
            fbtab, valtab, out, n4, sh, x0, x1, x2, x3, q0, q1, q2, q3, l0, l1, l2, l3, False, False
        )
    # the last value of lanes 0 .. n%4 - 1
    if n4 < n:
        t0 = x0 & mask
        if add:
            out[n4] += valtab[t0]
        else:
            out[n4] = valtab[t0]
        x0, q0 = _dec_next(x0, np.uint64(fbtab[t0]), sh, q0, l0, False)
    if n4 + 1 < n:
        t1 = x1 & mask
        if add:
            out[n4 + 1] += valtab[t1]
        else:
            out[n4 + 1] = valtab[t1]
        x1, q1 = _dec_next(x1, np.uint64(fbtab[t1]), sh, q1, l1, False)
    if n4 + 2 < n:
        t2 = x2 & mask
        if add:
            out[n4 + 2] += valtab[t2]
        else:
            out[n4 + 2] = valtab[t2]
        x2, q2 = _dec_next(x2, np.uint64(fbtab[t2]), sh, q2, l2, False)
    bad |= _lane_bad(x0, q0, e0, 1)
    bad |= _lane_bad(x1, q1, e1, 2)
    bad |= _lane_bad(x2, q2, e2, 4)
    bad |= _lane_bad(x3, q3, e3, 8)
    return bad


#: stands in for a lane shorter than its 4-byte state (which is corrupt anyway)
_EMPTY_LANE = np.array([0, 0, 1, 0], dtype=np.uint8)  # the state L, no words


#: outputs of at least this many bytes are decoded with non-temporal stores where a
#: packed decoder writes them (:func:`stream_ok`): larger than half of this machine's 32 MB
#: L3, they cannot stay cached anyway, and streaming them keeps the decoder's tables in
#: L2. Measured, decompress(out=) of the CharGPT set (43 MB) at 1 bit/param: 8.9-9.9 ms
#: with ordinary stores, 7.7-8.4 with streaming ones (two sets of three alternating
#: launches; docs/SPEED.md).
STREAM_MIN_BYTES = 16 << 20


def stream_ok(out: np.ndarray) -> bool:
    """Whether the packed decoders may write ``out`` with non-temporal stores (8 bytes at a
    time, each 8-byte aligned): a 16-byte aligned float32 array."""
    return out.dtype == np.float32 and out.ctypes.data % 16 == 0


def lane_ranges(
    data: np.ndarray, lane_starts: Any, lane_ends: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The 4 lanes' ranges checked for a decoding kernel: ``(data, starts, ends, short)``,
    where a lane shorter than its 4-byte state is replaced by an empty lane appended to
    (a copy of) ``data`` and flagged in the bit mask ``short`` (it is corrupt: the kernels
    then read a valid state and report the lane through the mask).

    Raises:
        tenfold.ConfigError: not 4 ranges, or a range outside ``data``.
    """
    starts = np.array(lane_starts, dtype=np.int64).reshape(-1)
    ends = np.array(lane_ends, dtype=np.int64).reshape(-1)
    if starts.size != LANES or ends.size != LANES:
        raise ConfigError("need 4 lane starts and ends")
    if np.any(starts < 0) or np.any(ends < starts) or np.any(ends > data.size):
        raise ConfigError(f"lane ranges {starts.tolist()}..{ends.tolist()} outside the data")
    short = ends - starts < 4
    short_mask = int(sum(1 << lane for lane in range(LANES) if short[lane]))
    if short_mask:
        size = data.size
        data = np.concatenate([data, _EMPTY_LANE])
        starts[short] = size
        ends[short] = size + 4
    return data, starts, ends, short_mask


def decode(
    data: np.ndarray,
    lane_starts: np.ndarray,
    lane_ends: np.ndarray,
    table: tuple[np.ndarray, ...],
    out: np.ndarray,
    *,
    add: bool,
    branchless: bool | None = None,
) -> int:
    """Decode ``out.size`` values from the 4 lanes into ``out`` (1-D), or add them to it.

    Args:
        data: the packet (uint8); lane ``l`` is ``data[lane_starts[l]:lane_ends[l]]``.
        lane_starts, lane_ends: int64 arrays of shape (4,), ranges within ``data``.
        table: :func:`build_decode_table` output; its values have ``out``'s dtype.
        out: 1-D contiguous float32/float64 output, or the uint16 view of a float16 one
            (``add=False`` only); ``out[j] = value`` or ``out[j] += value``.
        add: accumulate instead of overwrite.
        branchless: force the renormalisation variant (testing; same result); by default
            chosen from the payload's bits per value.

    Returns:
        0 on success, else ``1 + l`` for the first lane ``l`` that is corrupt: shorter than
        4 bytes, initial state below ``L``, ran out of words, not consumed exactly, or final
        state not ``L``. Reads never leave a lane's byte range, whatever the bytes; on
        failure ``out`` holds garbage for this tensor.

    Example:
        >>> lanes = encode(np.array([0, 0, 1, 0, 0], dtype=np.uint16), np.array([3, 1]), 2)
        >>> data = np.concatenate(lanes)
        >>> ends = np.cumsum([lane.size for lane in lanes])
        >>> table = build_decode_table(np.array([3, 1]), 2, np.array([0.5, 2.0], np.float32))
        >>> out = np.zeros(5, np.float32)
        >>> decode(data, ends - [lane.size for lane in lanes], ends, table, out, add=False)
        0
        >>> out.tolist()
        [0.5, 0.5, 2.0, 0.5, 0.5]
    """
    fbtab, valtab = table
    data = np.ascontiguousarray(data).reshape(-1)
    if data.dtype != np.uint8:
        raise ConfigError(f"data must be uint8, got {data.dtype}")
    if out.ndim != 1 or not out.flags.c_contiguous or out.dtype != valtab.dtype:
        raise ConfigError(
            f"out must be 1-D, contiguous and of the table's dtype {valtab.dtype} "
            f"(got {out.dtype}, shape {out.shape})"
        )
    if add and out.dtype == np.uint16:
        raise ConfigError("add=True needs a float32/float64 output")
    data, starts, ends, short_mask = lane_ranges(data, lane_starts, lane_ends)
    if branchless is None:
        branchless = _branchless(starts, ends, out.size)
    scale = int(fbtab.size).bit_length() - 1
    bad = short_mask | int(
        _decode_kernel(data, starts, ends, fbtab, valtab, scale, out, add, bool(branchless))
    )
    return (bad & -bad).bit_length()  # 0, or 1 + the lowest corrupt lane
