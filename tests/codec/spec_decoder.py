"""A second decoder of tenfold packets, written from docs/FORMAT.md alone.

It never imports tenfold nor follows its source: numpy and the standard library only, every
rule taken from the spec (section numbers below are FORMAT.md's). ``test_spec_decoder.py``
checks that it and ``tenfold.decompress`` agree bit for bit, so that the spec and the
implementation cannot drift apart silently. Written for clarity, not speed.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"TFLD"
VERSIONS = (1, 2, 3, 4)
#: tenfold's default decoded-size limit (section 3, size limits)
MAX_OUTPUT_BYTES = 1 << 32
#: ANS states live in [L, 2^32) (section 6A.3)
ANS_L = 1 << 16
ANS_LANES = 4
HUFFMAN_STREAMS = 4
#: the entropy field's "none" (a quiet NaN, section 3)
NO_ENTROPY = b"\x00\x00\xc0\x7f"
#: the smallest record (an unnamed 0-d group member) has 12 bytes (section 2)
MIN_RECORD_BYTES = 12

# mode byte: low nibble the coder, high nibble the quantizer (section 3)
CONSTANT, HUFFMAN, BITPACK, RAW, ANS, GROUP, ANS_PAIRS, ANS_QUADS = range(8)
RANGE_QUANT, STEP_QUANT = 0, 1
MODE_GROUP_MEMBER = 0x15


class SpecError(ValueError):
    """The packet breaks a rule of docs/FORMAT.md."""


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@dataclass(frozen=True)
class WireDtype:
    """A dtype code (section 3): its width on the wire and the numpy dtype it decodes to."""

    code: int
    width: int  # bits of one value on the wire
    out: np.dtype  # the decoded array's dtype (float32 for bfloat16, section 4.3)
    is_bfloat16: bool = False

    @property
    def itemsize(self) -> int:
        """Bytes of one decoded value (4 for bfloat16)."""
        return self.out.itemsize


DTYPES = {
    1: WireDtype(1, 16, np.dtype(np.float16)),
    2: WireDtype(2, 32, np.dtype(np.float32)),
    3: WireDtype(3, 64, np.dtype(np.float64)),
    4: WireDtype(4, 16, np.dtype(np.float32), is_bfloat16=True),
}


class Reader:
    """Reads the fields of ``buf[pos:end]`` (``end``: where the CRC starts)."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, size: int) -> bytes:
        _need(0 <= size <= self.left(), "truncated")
        out = self.buf[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        """Minimal unsigned LEB128 of at most 9 bytes (section 1)."""
        value = 0
        for i in range(9):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                _need(byte != 0 or i == 0, "non-minimal varint")
                return value
        raise SpecError("varint longer than 9 bytes")

    def zigzag(self) -> int:
        u = self.varint()
        return u >> 1 if u & 1 == 0 else -((u + 1) >> 1)

    def f64(self) -> float:
        value: float = struct.unpack("<d", self.take(8))[0]
        return value

    def value(self, dtype: WireDtype) -> np.floating:
        """One value in the tensor's dtype (bfloat16 as the float32 it is, section 1)."""
        if dtype.is_bfloat16:
            bits = np.uint32(struct.unpack("<H", self.take(2))[0]) << np.uint32(16)
            return np.array([bits], np.uint32).view(np.float32)[0]
        raw = self.take(dtype.out.itemsize)
        return np.frombuffer(raw, dtype.out.newbyteorder("<"))[0].astype(dtype.out)


def count_in_lane(total: int, lane: int) -> int:
    """Values of lane (or stream) ``lane`` when value ``j`` goes to ``j mod 4``."""
    return max(0, -(-(total - lane) // 4))


# ---- values (section 4) -----------------------------------------------------------------


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Section 4.3: binary64 -> binary32 -> bfloat16, returned as float32 holding bfloat16s."""
    with np.errstate(over="ignore"):  # beyond binary32: infinity, refused by the caller
        f = np.asarray(values, dtype=np.float64).astype(np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    h = np.where(np.isnan(f), (u >> 16) | 0x0040, h)
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def cast_once(values: np.ndarray, dtype: WireDtype) -> np.ndarray:
    """Binary64 values cast once (round to nearest even) to the tensor's dtype."""
    if dtype.is_bfloat16:
        return to_bfloat16(values)
    with np.errstate(over="ignore"):  # beyond the dtype: infinity, refused by the caller
        return np.asarray(values, dtype=np.float64).astype(dtype.out)


def range_values(a: float, b: float, bits: int, symbols: np.ndarray) -> np.ndarray:
    """Section 4.1 in binary64: the centre of bin ``i`` of ``[a, b]`` split into 2^bits."""
    with np.errstate(over="ignore"):
        r = np.float64(b) - np.float64(a)
    p = 0.5 if r == math.inf else 2.0**600 if r < 2.0**-960 else 1.0
    ap = np.float64(a) * p
    dp = (np.float64(b) * p - np.float64(a) * p) / (1 << bits)
    v = (ap + (symbols.astype(np.float64) + 0.5) * dp) / p
    # only values strictly outside [a, b] are replaced: +0.0 against a = -0.0 keeps its sign
    v = np.where(v < a, np.float64(a), v)
    return np.where(v > b, np.float64(b), v)


def step_values(qmin: int, step: float, symbols: np.ndarray) -> np.ndarray:
    """Section 4.2 in binary64: symbol ``i`` is level ``qmin + i``, times the step."""
    return (qmin + symbols.astype(np.int64)).astype(np.float64) * np.float64(step)


def check_step_extremes(qmin: int, step: float, bits: int, dtype: WireDtype) -> None:
    """Sections 3 and 6B: the lowest and the highest symbol decode to finite values."""
    ends = cast_once(step_values(qmin, step, np.array([0, (1 << bits) - 1])), dtype)
    _need(bool(np.isfinite(ends).all()), "extreme level not finite in the dtype")


# ---- Huffman (section 6) ----------------------------------------------------------------


@dataclass(frozen=True)
class CanonicalCode:
    """A complete canonical prefix code (section 6.2), decoded length by length."""

    lengths: list[int]
    first_code: list[int]  # per length: the code of its first symbol
    first_index: list[int]  # per length: where its symbols start in ``symbols``
    counts: list[int]  # per length: how many symbols have it
    symbols: list[int]  # used symbols sorted by (length, symbol)
    shortest: int
    longest: int


def parse_code_lengths(table: bytes, alphabet: int) -> CanonicalCode:
    """Section 6.1: nibble tokens to code lengths, then section 6.2's canonical codes."""
    nibbles = [v for byte in table for v in (byte & 15, byte >> 4)]
    lengths: list[int] = []
    i = 0
    while len(lengths) < alphabet:
        _need(i < len(nibbles), "code-length table too short")
        v = nibbles[i]
        i += 1
        _need(v != 15, "nibble 15")
        if v:
            lengths.append(v)
            continue
        _need(i < len(nibbles), "code-length table too short for its run")
        run = 1 << nibbles[i]
        i += 1
        _need(len(lengths) + run <= alphabet, "run passes the alphabet")
        lengths.extend([0] * run)
    rest = nibbles[i:]
    _need(rest == [] or rest == [0], "code-length table has trailing data")
    used = [length for length in lengths if length]
    _need(len(used) >= 2, "fewer than 2 used symbols")
    _need(sum(1 << (14 - length) for length in used) == 1 << 14, "incomplete prefix code")
    counts = [0] * 16
    for length in used:
        counts[length] += 1
    first_code = [0] * 16
    code = 0
    for length in range(1, 15):
        code = (code + counts[length - 1]) << 1
        first_code[length] = code
    symbols = sorted((s for s in range(alphabet) if lengths[s]), key=lambda s: (lengths[s], s))
    first_index = [0] * 16
    for length in range(1, 16):
        first_index[length] = first_index[length - 1] + counts[length - 1]
    return CanonicalCode(lengths, first_code, first_index, counts, symbols, min(used), max(used))


def decode_huffman_stream(data: bytes, count: int, code: CanonicalCode) -> list[int]:
    """Section 6.3: ``count`` codes, MSB first, then zero padding to the byte boundary."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").tolist()
    out: list[int] = []
    pos = 0
    for _ in range(count):
        value = 0
        for length in range(1, code.longest + 1):
            _need(pos < len(bits), "stream overrun")
            value = (value << 1) | bits[pos]
            pos += 1
            offset = value - code.first_code[length]
            if 0 <= offset < code.counts[length]:
                out.append(code.symbols[code.first_index[length] + offset])
                break
        else:
            raise SpecError("no code matches")
    _need(-(-pos // 8) == len(data), "stream not consumed exactly")
    _need(not any(bits[pos:]), "nonzero padding")
    return out


def decode_huffman(table: bytes, alphabet: int, streams: list[bytes], n: int) -> np.ndarray:
    code = parse_code_lengths(table, alphabet)
    for s, data in enumerate(streams):  # sizes are checked before decoding (section 6.3)
        c = count_in_lane(n, s)
        low, high = -(-c * code.shortest // 8), -(-c * code.longest // 8)
        _need(low <= len(data) <= high, "stream size out of bounds")
    symbols = np.empty(n, np.int64)
    for s, data in enumerate(streams):
        symbols[s::HUFFMAN_STREAMS] = decode_huffman_stream(data, count_in_lane(n, s), code)
    return symbols


# ---- ANS (section 6A) -------------------------------------------------------------------


def parse_frequencies(table: bytes, alphabet: int, precision: int) -> list[int]:
    """Section 6A.1: varint frequencies with single, maximal zero-runs; sum 2^P."""
    r = Reader(table, 0, len(table))
    freqs: list[int] = []
    after_run = False
    while len(freqs) < alphabet:
        v = r.varint()
        if v:
            _need(v <= 1 << precision, "frequency above 2^P")
            freqs.append(v)
            after_run = False
        else:
            _need(not after_run, "zero-run after a zero-run")
            run = r.varint() + 1
            _need(len(freqs) + run <= alphabet, "run passes the alphabet")
            freqs.extend([0] * run)
            after_run = True
    _need(r.left() == 0, "frequency table has trailing data")
    _need(sum(freqs) == 1 << precision, "frequencies do not sum to 2^P")
    return freqs


def check_lane_sizes(sizes: list[int], total: int) -> None:
    """Section 6A.2: lane ``l`` has ``4 + 2w`` bytes, ``0 <= w <= c``."""
    for lane, size in enumerate(sizes):
        c = count_in_lane(total, lane)
        _need(size % 2 == 0 and 4 <= size <= 4 + 2 * c, "lane size out of bounds")


def decode_ans(lanes: list[bytes], total: int, freqs: list[int], precision: int) -> np.ndarray:
    """Section 6A.3: ``total`` symbols, symbol ``j`` from lane ``j mod 4``."""
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + f)
    slot_symbol = np.repeat(np.arange(len(freqs)), freqs).tolist()
    mask = (1 << precision) - 1
    out = np.empty(total, np.int64)
    for lane, data in enumerate(lanes):
        x: int = struct.unpack("<I", data[:4])[0]
        _need(x >= ANS_L, "initial state below L")
        words = struct.unpack(f"<{(len(data) - 4) // 2}H", data[4:])
        used = 0
        decoded: list[int] = []
        for _ in range(count_in_lane(total, lane)):
            slot = x & mask
            s = slot_symbol[slot]
            x = freqs[s] * (x >> precision) + slot - cum[s]
            if x < ANS_L:
                _need(used < len(words), "lane has no word left")
                x = (x << 16) | words[used]
                used += 1
            decoded.append(s)
        _need(used == len(words), "lane not consumed exactly")
        _need(x == ANS_L, "final state is not L")
        out[lane::ANS_LANES] = decoded
    return out


def read_ans_payload(
    r: Reader, sizes: list[int], total: int, freqs: list[int], precision: int
) -> np.ndarray:
    check_lane_sizes(sizes, total)
    lanes = [r.take(size) for size in sizes]
    return decode_ans(lanes, total, freqs, precision)


def unpack_tuples(tuples: np.ndarray, bits: int, arity: int, n: int) -> np.ndarray:
    """Sections 6C/6D: tuple ``k`` holds symbols ``arity*k ...``, the first in the low bits."""
    mask = (1 << bits) - 1
    parts = [(tuples >> (bits * i)) & mask for i in range(arity)]
    return np.stack(parts, axis=1).reshape(-1)[:n]


# ---- records (section 3) and the group section (6B) -------------------------------------


@dataclass(frozen=True)
class Member:
    """A group member (mode 0x15): everything but its values."""

    name: str
    shape: tuple[int, ...]
    dtype: WireDtype
    n: int
    step: float


def check_mode(mode: int, version: int) -> None:
    """Section 3: which mode bytes each version allows."""
    coder, quant = mode & 15, mode >> 4
    _need(quant in (RANGE_QUANT, STEP_QUANT) and coder <= ANS_QUADS, "unknown mode byte")
    _need(mode not in (0x05, 0x06, 0x07), "step-only coder with the range quantizer")
    _need(mode != 0x13, "raw has no step quantizer")
    if version == 1:
        _need(mode <= RAW, "mode needs version 2")
    elif version == 2:
        _need(mode not in (0x15, 0x16, 0x17), "mode needs version 3")
    elif version == 3:
        _need(mode != 0x17, "mode needs version 4")


def max_bits(mode: int, width: int) -> int:
    """The largest N of a quantized mode (section 3's tables)."""
    coder, quant = mode & 15, mode >> 4
    if coder == BITPACK:
        return min(24 if quant == RANGE_QUANT else 16, width - 1)
    return {HUFFMAN: 16, ANS: 16, ANS_PAIRS: 5, ANS_QUADS: 2}[coder]


def decode_record(
    r: Reader, version: int, dtype: WireDtype, shape: tuple[int, ...], n: int, mode: int
) -> np.ndarray:
    """The fields after the mode byte of a non-member record, and its values."""
    coder, quant = mode & 15, mode >> 4
    bits = r.u8()
    entropy = r.take(4)
    if entropy != NO_ENTROPY:
        h = struct.unpack("<f", entropy)[0]
        _need(0.0 <= h <= 24.0, "entropy out of [0, 24]")
    w_min, w_max = r.value(dtype), r.value(dtype)
    a, b = float(w_min), float(w_max)
    _need(math.isfinite(a) and math.isfinite(b), "w_min or w_max not finite")
    _need(a <= b, "w_min > w_max")
    if n == 0:
        _need(mode == RAW and bits == dtype.width and a == 0.0 and b == 0.0, "empty tensor")
        return np.zeros(shape, dtype.out)
    step, qmin = 0.0, 0
    if quant == STEP_QUANT:
        step = r.f64()
        _need(math.isfinite(step) and step > 0, "step not finite and > 0")
        qmin = r.zigzag()
        _need(abs(qmin) <= 32767, "qmin out of range")
        _need(r.varint() <= n, "clamped > n")
    precision = 0
    if coder in (ANS, ANS_PAIRS, ANS_QUADS):
        precision = r.u8()
        _need(1 <= precision <= 16, "precision out of 1 ... 16")
    table = b""
    sizes: list[int] = []
    if coder in (HUFFMAN, ANS, ANS_PAIRS, ANS_QUADS):
        table = r.take(r.varint())
        sizes = [r.varint() for _ in range(4)]

    if coder == RAW:
        _need(bits == dtype.width, "raw bits != dtype width")
        data = r.take(n * dtype.width // 8)
        if dtype.is_bfloat16:
            high = np.frombuffer(data, "<u2").astype(np.uint32) << np.uint32(16)
            values = high.view(np.float32)
        else:
            values = np.frombuffer(data, dtype.out.newbyteorder("<")).astype(dtype.out)
        _need(bool(np.isfinite(values).all()), "raw value not finite")
        _need(values.min() == a and values.max() == b, "raw min/max differ from w_min/w_max")
        return values.reshape(shape)
    if coder == CONSTANT:
        _need(bits == 0, "constant with bits != 0")
        if quant == RANGE_QUANT:
            _need(a == b, "range constant with w_min != w_max")
            return np.full(shape, w_min, dtype.out)
        check_step_extremes(qmin, step, 0, dtype)
        level = cast_once(step_values(qmin, step, np.zeros(1, np.int64)), dtype)
        return np.full(shape, level[0], dtype.out)

    _need(1 <= bits <= max_bits(mode, dtype.width), "bits out of range for the mode")
    if quant == RANGE_QUANT:
        _need(a < b, "range record with w_min == w_max")
    else:
        check_step_extremes(qmin, step, bits, dtype)
    alphabet = 1 << bits
    if coder == BITPACK:
        data = r.take(-(-n * bits // 8))
        stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        _need(not stream[n * bits :].any(), "nonzero bitpack padding")
        fields = stream[: n * bits].reshape(n, bits).astype(np.int64)
        symbols = (fields << np.arange(bits, dtype=np.int64)).sum(axis=1)
    elif coder == HUFFMAN:
        streams = [r.take(size) for size in sizes]
        symbols = decode_huffman(table, alphabet, streams, n)
    else:
        arity = {ANS: 1, ANS_PAIRS: 2, ANS_QUADS: 4}[coder]
        total = -(-n // arity)
        freqs = parse_frequencies(table, alphabet**arity, precision)
        tuples = read_ans_payload(r, sizes, total, freqs, precision)
        symbols = unpack_tuples(tuples, bits, arity, n)
    if quant == RANGE_QUANT:
        values = range_values(a, b, bits, symbols)
    else:
        values = step_values(qmin, step, symbols)
    return cast_once(values, dtype).reshape(shape)


def decode_group(r: Reader, members: list[Member]) -> dict[str, np.ndarray]:
    """Section 6B: all members' values as one ANS sequence, in record order."""
    bits = r.u8()
    _need(bits <= 16, "group bits above 16")
    qmin = r.zigzag()
    _need(abs(qmin) <= 32767, "group qmin out of range")
    precision = r.u8()
    _need(1 <= precision <= 16, "group precision out of 1 ... 16")
    freqs = parse_frequencies(r.take(r.varint()), 1 << bits, precision)
    sizes = [r.varint() for _ in range(4)]
    total = sum(m.n for m in members)
    symbols = read_ans_payload(r, sizes, total, freqs, precision)
    out: dict[str, np.ndarray] = {}
    start = 0
    for m in members:
        check_step_extremes(qmin, m.step, bits, m.dtype)
        values = step_values(qmin, m.step, symbols[start : start + m.n])
        out[m.name] = cast_once(values, m.dtype).reshape(m.shape)
        start += m.n
    return out


def decode(packet: bytes, max_output_bytes: int = MAX_OUTPUT_BYTES) -> dict[str, np.ndarray]:
    """Decode a packet to ``{name: array}`` in record order; raise SpecError if invalid.

    bfloat16 tensors decode to float32 arrays holding the exact bfloat16 values (4.3).
    """
    buf = bytes(packet)
    _need(buf[:4] == MAGIC, "bad magic")
    _need(len(buf) >= 10, "shorter than 10 bytes")
    version = buf[4]
    _need(version in VERSIONS, "unknown version")
    _need(zlib.crc32(buf[:-4]) == struct.unpack("<I", buf[-4:])[0], "CRC mismatch")
    r = Reader(buf, 5, len(buf) - 4)
    count = r.varint()
    _need(count * MIN_RECORD_BYTES <= r.left(), "count too large for the packet")
    decoded: dict[str, np.ndarray | None] = {}
    members: list[Member] = []
    out_bytes = 0
    for _ in range(count):
        name_len = r.varint()
        _need(name_len <= 65535, "name too long")
        try:
            name = r.take(name_len).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError("name is not valid UTF-8") from exc
        _need(name not in decoded, "duplicate name")
        code = r.u8()
        _need(code in DTYPES and (version >= 2 or code <= 3), "unknown dtype")
        dtype = DTYPES[code]
        ndim = r.u8()
        _need(ndim <= 64, "more than 64 dimensions")
        shape = tuple(r.varint() for _ in range(ndim))
        n = math.prod(shape)
        _need(
            math.prod(max(d, 1) for d in shape) * dtype.itemsize <= max_output_bytes,
            "tensor too big",
        )
        out_bytes += n * dtype.itemsize
        _need(out_bytes <= max_output_bytes, "decoded size above max_output_bytes")
        mode = r.u8()
        check_mode(mode, version)
        if mode == MODE_GROUP_MEMBER:
            _need(n >= 1, "empty group member")
            step = r.f64()
            _need(math.isfinite(step) and step > 0, "step not finite and > 0")
            members.append(Member(name, shape, dtype, n, step))
            decoded[name] = None  # filled from the group section
            continue
        decoded[name] = decode_record(r, version, dtype, shape, n, mode)
    if members:
        group = decode_group(r, members)
        decoded = {name: group[name] if arr is None else arr for name, arr in decoded.items()}
    _need(r.pos == r.end, "trailing data before the CRC")
    return {name: arr for name, arr in decoded.items() if arr is not None}
