"""The wire format: build, parse and validate packets (byte-level spec: docs/FORMAT.md).

A packet is::

    magic "TFLD" | version u8 | tensor count (varint) | record * count | CRC32 u32 LE

and each record is a small header (name, dtype, shape, mode, N, entropy, w_min, w_max; for
the mid-tread quantizer its step, lowest level and clamp count; for Huffman the code-length
table and four stream sizes; for ANS the precision, frequency table and four lane sizes)
followed by its payload. All integers are little-endian; varints are unsigned LEB128
(minimal form).

Version 2 adds the ANS coder, the mid-tread (step) quantizer and the bfloat16 dtype
(:class:`WireDtype`); version 3 the group section and ANS over pairs of values; version 4
ANS over quads of values. The encoder writes the lowest version its records need (1
whenever no record needs a version-2 feature, so the paper's policies produce exactly the
packets they always did), and this parser reads all four.

:func:`parse` is *total*: for any byte string it returns a fully validated
:class:`ParsedPacket` or raises :class:`CorruptPacketError` saying what is wrong. Every size
is checked against the blob length and ``max_output_bytes`` before anything is allocated or
any kernel runs. Payload *contents* (Huffman streams, raw values) are checked by the
decoder (``tenfold.codec.api``), which verifies each stream is consumed exactly.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from tenfold.codec import ans
from tenfold.codec.bfloat16 import (
    bfloat16_bits,
    float32_from_bits,
    is_bfloat16_exact,
    round_to_bfloat16,
)
from tenfold.codec.errors import CorruptPacketError
from tenfold.codec.huffman import NUM_STREAMS, unpack_lengths
from tenfold.codec.midtread import LEVEL_LIMIT, midtread_lut
from tenfold.codec.quantize import Quantizer, dequantization_lut
from tenfold.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "FORMAT_VERSION",
    "BFLOAT16",
    "MAGIC",
    "MODE_ANS",
    "MODE_BITPACK",
    "MODE_CONSTANT",
    "MODE_ANS_PAIRS",
    "MODE_ANS_QUADS",
    "MODE_GROUP",
    "MODE_HUFFMAN",
    "MODE_NAMES",
    "MODE_RAW",
    "QUANT_RANGE",
    "QUANT_STEP",
    "READ_VERSIONS",
    "PacketInfo",
    "ParsedPacket",
    "Record",
    "TensorInfo",
    "WIRE_DTYPES",
    "WireDtype",
    "encode_group_header",
    "encode_member_header",
    "encode_record_header",
    "finish_packet",
    "packet_header",
    "parse",
    "varint",
    "varint_len",
    "wire_dtype",
]

MAGIC = b"TFLD"
#: the newest version this tenfold writes (it writes the oldest version whose features the
#: packet's records use: 1 for the paper's policies, 2 for step and ANS records, 3 for groups
#: and ans-pairs, 4 for ans-quads)
FORMAT_VERSION = 4
#: the versions this tenfold reads
READ_VERSIONS = (1, 2, 3, 4)
#: decompress/inspect/accumulate refuse packets whose tensors would need more output memory.
DEFAULT_MAX_OUTPUT_BYTES = 1 << 32  # 4 GiB

MODE_CONSTANT = 0
MODE_HUFFMAN = 1
MODE_BITPACK = 2
MODE_RAW = 3
MODE_ANS = 4  # version 2
MODE_GROUP = 5  # version 3: the values are coded in the packet's shared group section
MODE_ANS_PAIRS = 6  # version 3: ANS over pairs of values (step quantizer, bits <= 5)
#: the widest alphabet (bits) of an ans-pairs record: pair alphabets of up to 1024 symbols
MAX_PAIR_BITS = 5
MODE_ANS_QUADS = 7  # version 4: ANS over quads of values (step quantizer, bits <= 2)
#: the widest alphabet (bits) of an ans-quads record: quad alphabets of up to 256 symbols
MAX_QUAD_BITS = 2
MODE_NAMES = {
    MODE_CONSTANT: "constant",
    MODE_HUFFMAN: "huffman",
    MODE_BITPACK: "bitpack",
    MODE_RAW: "raw",
    MODE_ANS: "ans",
    MODE_GROUP: "group",
    MODE_ANS_PAIRS: "ans-pairs",
    MODE_ANS_QUADS: "ans-quads",
}
#: the mode byte's high nibble: which quantizer made the symbols (version 2)
QUANT_RANGE = 0  # the paper's min/max bins (tenfold.codec.quantize)
QUANT_STEP = 1  # the mid-tread quantizer (tenfold.codec.midtread)


@dataclass(frozen=True)
class WireDtype:
    """A tensor dtype as the wire knows it (docs/FORMAT.md, section 3).

    numpy has no bfloat16, so each wire dtype names the numpy dtype its values are held in
    on both sides of the codec: the dtype itself for float16/32/64, float32 for bfloat16
    (exact: a bfloat16 is a float32 whose 16 low bits are zero; ``tenfold.codec.bfloat16``).

    Attributes:
        code: the record's dtype byte (1 ... 4).
        name: ``"float16"``, ``"float32"``, ``"float64"`` or ``"bfloat16"``.
        width: bits per value on the wire (raw values, ``w_min``, ``w_max``): 16, 32, 64, 16.
        dtype: the little-endian numpy dtype the values are held in (decoded into).
        min_version: the first packet version with this dtype.
    """

    code: int
    name: str
    width: int
    dtype: np.dtype
    min_version: int = 1

    @property
    def nbytes(self) -> int:
        """Bytes per value on the wire."""
        return self.width // 8

    @property
    def is_bfloat16(self) -> bool:
        """Whether values travel as bfloat16 bit patterns (held as float32)."""
        return self.width != 8 * self.dtype.itemsize

    def to_wire(self, values: np.ndarray) -> np.ndarray:
        """The values (in :attr:`dtype`) as little-endian wire bytes, uint8 ``(n * nbytes,)``.

        Raises:
            ValueError: a bfloat16 value that is not a bfloat16 (a float32 with low bits
                set): carrying the bits must never round silently.
        """
        if self.is_bfloat16:
            exact = np.ascontiguousarray(values, dtype=np.float32)  # native: bit arithmetic
            if not is_bfloat16_exact(exact):
                raise ConfigError("bfloat16 values must be exact bfloat16 (low 16 bits zero)")
            return bfloat16_bits(exact).reshape(-1).astype("<u2", copy=False).view(np.uint8)
        flat = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        return flat.view(np.uint8)  # self.dtype is little-endian already

    def from_wire(
        self, buffer: bytes | memoryview | np.ndarray, count: int, offset: int = 0
    ) -> np.ndarray:
        """``count`` values stored at byte ``offset`` of ``buffer``, in :attr:`dtype`
        (a read-only view, or for bfloat16 a new float32 array: exact)."""
        if self.is_bfloat16:
            bits = np.frombuffer(buffer, dtype="<u2", count=count, offset=offset)
            return float32_from_bits(bits)
        return np.frombuffer(buffer, dtype=self.dtype, count=count, offset=offset)

    def cast(self, values: np.ndarray) -> np.ndarray:
        """binary64 values rounded to this dtype, held in :attr:`dtype` (the normative
        "cast once" of docs/FORMAT.md section 4; overflow gives inf, silently).

        bfloat16 rounds to float32 first, then to bfloat16 (both to nearest even), exactly
        as ``torch.tensor(values, dtype=torch.float64).to(torch.bfloat16)`` does.
        """
        with np.errstate(over="ignore"):
            out = values.astype(self.dtype)
        return round_to_bfloat16(out).astype(self.dtype, copy=False) if self.is_bfloat16 else out


#: the bfloat16 wire dtype (code 4, version 2): values held as float32, 2 bytes on the wire
BFLOAT16 = WireDtype(4, "bfloat16", 16, np.dtype("<f4"), min_version=2)
#: dtype code on the wire -> its WireDtype
WIRE_DTYPES: dict[int, WireDtype] = {
    w.code: w
    for w in (
        WireDtype(1, "float16", 16, np.dtype("<f2")),
        WireDtype(2, "float32", 32, np.dtype("<f4")),
        WireDtype(3, "float64", 64, np.dtype("<f8")),
        BFLOAT16,
    )
}
_WIRE_BY_NUMPY: dict[np.dtype, WireDtype] = {
    w.dtype.newbyteorder("="): w for w in WIRE_DTYPES.values() if not w.is_bfloat16
}


def wire_dtype(dtype: np.dtype | WireDtype) -> WireDtype:
    """The wire dtype of a numpy float16/32/64 dtype (a WireDtype is returned as is).

    Example:
        >>> wire_dtype(np.dtype(np.float32)).code, BFLOAT16.code
        (2, 4)
    """
    if isinstance(dtype, WireDtype):
        return dtype
    return _WIRE_BY_NUMPY[np.dtype(dtype).newbyteorder("=")]


MAX_NAME_BYTES = 65535
MAX_NDIM = 64
_MAX_VARINT_BYTES = 9  # values < 2**63
_ENTROPY_NONE = b"\x00\x00\xc0\x7f"  # float32 quiet NaN 0x7FC00000, little-endian
_HEADER_MIN = len(MAGIC) + 1 + 1  # magic, version, count (>= 1 byte)
_RECORD_MIN = 12  # a group member: name len, dtype, ndim, mode, step(8) (others: 13+)


# ---- info objects (what inspect returns) ------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """How one tensor is coded in a packet.

    Attributes:
        name: the tensor's name.
        shape: its shape (``()`` for 0-d).
        dtype: ``"float16"``, ``"float32"``, ``"float64"`` or ``"bfloat16"`` (decoded as
            float32 holding the exact bfloat16 values: numpy has no bfloat16).
        mode: ``"constant"``, ``"huffman"``, ``"ans"``, ``"ans-pairs"``, ``"ans-quads"``,
            ``"group"``, ``"bitpack"`` or ``"raw"`` (:data:`MODE_NAMES`).
        bits: N, bits per quantized value (huffman/ans/bitpack); the dtype's width for raw
            (Lossless, empty tensors, or when raw was smaller); 0 for constant. For the
            mid-tread quantizer, the symbol width ``ceil(log2(levels))``.
        w_min, w_max: the tensor's range (equal for constant; 0.0 for an empty tensor).
        entropy: the estimate H (bits) that chose N (EntropyAdaptive), else None. Stored
            as float32.
        nbytes: bytes the tensor occupies in the packet: record header + code table +
            payload.
        num_values: number of values (product of the shape).
        step: the mid-tread quantizer's step (values decode to ``level * step``), or None
            for the min/max modes.
        clamped: how many values lay beyond the mid-tread quantizer's level limit and were
            clamped to its extreme level (0 otherwise; see ``tenfold.codec.midtread``).
        bits_per_param: ``8 * nbytes / num_values`` (``inf`` for an empty tensor).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    mode: str
    bits: int
    w_min: float
    w_max: float
    entropy: float | None
    nbytes: int
    num_values: int
    step: float | None = None
    clamped: int = 0

    @property
    def bits_per_param(self) -> float:
        """``8 * nbytes / num_values``; ``inf`` when the tensor is empty (bytes for nothing)."""
        return 8.0 * self.nbytes / self.num_values if self.num_values else math.inf


@dataclass(frozen=True)
class PacketInfo:
    """A packet's header, as :func:`tenfold.inspect` reports it.

    Attributes:
        nbytes: the packet's total size in bytes (every header, table, padding and the CRC).
        tensors: one :class:`TensorInfo` per tensor, in packet order.
        version: the wire format version.

    ``sum(t.nbytes for t in tensors) + overhead_nbytes == nbytes``, where the overhead is
    the packet header (magic, version, count) and the 4-byte CRC trailer.
    """

    nbytes: int
    tensors: list[TensorInfo]
    version: int = FORMAT_VERSION

    @property
    def num_values(self) -> int:
        """Total number of values over all tensors."""
        return sum(t.num_values for t in self.tensors)

    @property
    def overhead_nbytes(self) -> int:
        """Bytes outside any tensor record: packet header + CRC trailer."""
        return self.nbytes - sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_param(self) -> float:
        """``8 * nbytes / num_values``; ``inf`` for a packet without values."""
        n = self.num_values
        return 8.0 * self.nbytes / n if n else math.inf

    def as_dict(self) -> dict[str, object]:
        """A strict-JSON-safe summary: None for a missing entropy and for the infinite
        bits/param of empty tensors/packets."""
        return {
            "version": self.version,
            "nbytes": self.nbytes,
            "num_values": self.num_values,
            "bits_per_param": _finite_or_none(self.bits_per_param),
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                    "mode": t.mode,
                    "bits": t.bits,
                    "w_min": t.w_min,
                    "w_max": t.w_max,
                    "entropy": t.entropy,
                    "step": t.step,
                    "clamped": t.clamped,
                    "nbytes": t.nbytes,
                    "num_values": t.num_values,
                    "bits_per_param": _finite_or_none(t.bits_per_param),
                }
                for t in self.tensors
            ],
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Record:
    """One parsed, validated tensor record (internal: what the decoder needs).

    Attributes:
        info: the public description.
        dtype: little-endian numpy dtype the values decode into (float32 for bfloat16).
        mode: ``MODE_*`` code.
        lengths: Huffman code lengths (uint8, ``2**bits``) for huffman records, else None.
        payload_start, payload_end: the payload's byte range in the packet.
        wire: the dtype on the wire (its width, the rounding of decoded values).
        stream_starts, stream_ends: int64 (4,) byte ranges of the Huffman streams or the
            ANS lanes.
        quant: ``QUANT_RANGE`` or ``QUANT_STEP``.
        qmin: the lowest level (mid-tread records), else 0.
        freq: ANS frequencies (uint32; ``2**bits`` for ans, ``4**bits`` for ans-pairs,
            ``16**bits`` for ans-quads records), else None.
        scale_bits: ANS precision P (frequencies sum to ``2**P``), else 0.
        group_offset: for a group member (mode :data:`MODE_GROUP`), the index of its first
            value in the group's sequence; -1 otherwise. A member's ``stream_*``, ``freq``,
            ``scale_bits``, ``qmin`` and ``info.bits`` are the group's.
    """

    info: TensorInfo
    dtype: np.dtype
    mode: int
    lengths: np.ndarray | None
    payload_start: int
    payload_end: int
    wire: WireDtype
    stream_starts: np.ndarray | None = None
    stream_ends: np.ndarray | None = None
    quant: int = QUANT_RANGE
    qmin: int = 0
    freq: np.ndarray | None = None
    scale_bits: int = 0
    group_offset: int = -1

    @property
    def quantizer(self) -> Quantizer:
        """The tensor's min/max quantizer (range huffman/ans/bitpack records only)."""
        return Quantizer.for_range(self.info.w_min, self.info.w_max, self.info.bits)

    def lut(self) -> np.ndarray:
        """The decoded value of every symbol (``2**bits``), in :attr:`dtype`: computed in
        binary64 by the normative rules, then rounded once to the wire dtype."""
        f64 = np.dtype(np.float64)
        if self.quant == QUANT_STEP:
            assert self.info.step is not None
            return self.wire.cast(midtread_lut(self.qmin, self.info.step, self.info.bits, f64))
        return self.wire.cast(dequantization_lut(self.quantizer, f64))


@dataclass(frozen=True)
class ParsedPacket:
    """A validated packet: its public info and the records, in order."""

    info: PacketInfo
    records: list[Record] = field(default_factory=list)


_T = TypeVar("_T")


def _new(cls: type[_T], **fields: Any) -> _T:
    """``cls(**fields)`` for the frozen dataclasses above, built without their ``__init__``
    (one ``object.__setattr__`` per field: 3-4 us per object, most of the time :func:`parse`
    spends on a record). Every field must be given (tests/codec/test_packet_parse.py)."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


# ---- building ---------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low group first, high bit = "more follows".

    Example:
        >>> varint(0).hex(), varint(127).hex(), varint(300).hex()
        ('00', '7f', 'ac02')
    """
    if 0 <= value < 0x80:  # most of a header's varints: one byte, made once
        return _ONE_BYTE[value]
    if 0 <= value < 0x4000:  # shapes and lane sizes: two bytes
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0 or value >= 1 << 63:
        raise ConfigError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


#: the one-byte varints, 0 .. 127
_ONE_BYTE = tuple(bytes([v]) for v in range(0x80))


def varint_len(value: int) -> int:
    """``len(varint(value))`` without building it (the rate model's size sums).

    Example:
        >>> varint_len(127), varint_len(128), varint_len(300)
        (1, 2, 2)
    """
    if 0 <= value < 0x80:
        return 1
    if 0 <= value < 0x4000:
        return 2
    if value < 0 or value >= 1 << 63:
        raise ConfigError(f"varint out of range: {value}")
    return -(-int(value).bit_length() // 7)


def packet_header(num_tensors: int, version: int = 1) -> bytes:
    """``MAGIC | version | varint(num_tensors)``."""
    if version not in READ_VERSIONS:
        raise ConfigError(f"unknown format version {version}")
    return MAGIC + bytes([version]) + varint(num_tensors)


def zigzag(value: int) -> int:
    """Signed -> unsigned for varints: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ...

    Example:
        >>> [zigzag(v) for v in (0, -1, 1, -2)]
        [0, 1, 2, 3]
    """
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(value: int) -> int:
    """Inverse of :func:`zigzag`."""
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def encode_member_header(
    *, name: str, dtype: np.dtype | WireDtype, shape: Sequence[int], step: float
) -> bytes:
    """A group member's record (version 3): name, dtype, shape, mode 0x15 and its step."""
    wire = wire_dtype(dtype)
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > MAX_NAME_BYTES or len(shape) > MAX_NDIM:
        raise ConfigError(f"tensor {name[:40]!r}: name or rank beyond the format's limits")
    parts = [varint(len(name_bytes)), name_bytes, bytes([wire.code, len(shape)])]
    parts += [varint(int(d)) for d in shape]
    parts += [bytes([MODE_GROUP | (QUANT_STEP << 4)]), struct.pack("<d", step)]
    return b"".join(parts)


def encode_group_header(
    *, bits: int, qmin: int, scale_bits: int, table: bytes, lane_nbytes: Sequence[int]
) -> bytes:
    """The group section's header (version 3): everything before its 4 ANS lanes."""
    parts = [bytes([bits]), varint(zigzag(qmin)), bytes([scale_bits]), varint(len(table)), table]
    parts += [varint(int(s)) for s in lane_nbytes]
    return b"".join(parts)


def record_needs_v2(mode: int, quant: int) -> bool:
    """Whether a record with this coder and quantizer exists only from version 2 on (a
    dtype's own first version is :attr:`WireDtype.min_version`)."""
    return mode in (MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS, MODE_GROUP) or quant != QUANT_RANGE


def _float_bytes(value: float, dtype: WireDtype) -> bytes:
    return dtype.to_wire(np.asarray([value], dtype=np.float64)).tobytes()


def encode_record_header(
    *,
    name: str,
    dtype: np.dtype | WireDtype,
    shape: Sequence[int],
    mode: int,
    bits: int,
    entropy: float | None,
    w_min: float,
    w_max: float,
    table: bytes = b"",
    stream_nbytes: Sequence[int] = (),
    quant: int = QUANT_RANGE,
    step: float | None = None,
    qmin: int = 0,
    clamped: int = 0,
    scale_bits: int = 0,
) -> bytes:
    """A record's header bytes (everything before its payload); see docs/FORMAT.md.

    ``table``/``stream_nbytes`` are the code-length table and stream sizes (huffman) or the
    frequency table and lane sizes (ans, with ``scale_bits``); ``step``/``qmin``/``clamped``
    describe a mid-tread record (``quant=QUANT_STEP``). ``dtype`` is a numpy float16/32/64
    dtype or a :class:`WireDtype` (:data:`BFLOAT16`: ``w_min``/``w_max`` must be bfloat16).
    """
    wire = wire_dtype(dtype)
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > MAX_NAME_BYTES:
        raise ConfigError(f"tensor name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if len(shape) > MAX_NDIM:
        raise ConfigError(f"tensor {name!r} has more than {MAX_NDIM} dimensions")
    parts = [varint(len(name_bytes)), name_bytes, bytes([wire.code, len(shape)])]
    parts += [varint(int(d)) for d in shape]
    parts.append(bytes([mode | (quant << 4), bits]))
    parts.append(_ENTROPY_NONE if entropy is None else struct.pack("<f", entropy))
    parts.append(_float_bytes(w_min, wire) + _float_bytes(w_max, wire))
    if quant == QUANT_STEP:
        assert step is not None
        parts += [struct.pack("<d", step), varint(zigzag(qmin)), varint(clamped)]
    if mode in (MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS):
        parts.append(bytes([scale_bits]))
    if mode in (MODE_HUFFMAN, MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS):
        parts += [varint(len(table)), table]
        parts += [varint(int(s)) for s in stream_nbytes]
    return b"".join(parts)


def finish_packet(parts: Iterable[bytes | np.ndarray]) -> bytes:
    """Concatenate header + records and append the CRC32 of all of it (one copy)."""
    chunks = [c if isinstance(c, bytes) else c.data for c in parts]
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    chunks.append(struct.pack("<I", crc))
    return b"".join(chunks)


# ---- parsing ----------------------------------------------------------------------------


class _Reader:
    """Bounds-checked sequential reads; every failure is a CorruptPacketError with context.

    Called a dozen times per record: the common cases (a byte, a one-byte varint) take
    no nested call.
    """

    def __init__(self, mv: memoryview, end: int) -> None:
        self.mv = mv
        self.pos = 0
        self.end = end  # exclusive: start of the CRC trailer
        self.where: str | tuple[int, str | None] = "packet header"

    def fail(self, what: str) -> CorruptPacketError:
        where = self.where
        if isinstance(where, tuple):  # (index, name or None): formatted only on failure
            index, name = where
            where = f"tensor {index}" if name is None else f"tensor {index} {name!r}"
        return CorruptPacketError(f"{what} (in {where}, at byte {self.pos})")

    def take(self, count: int, what: str) -> memoryview:
        pos = self.pos
        if count < 0 or self.end - pos < count:
            raise self.fail(f"truncated: {what} needs {count} bytes, {self.end - pos} left")
        self.pos = pos + count
        return self.mv[pos : pos + count]

    def skip(self, count: int, what: str) -> None:
        """As :meth:`take`, without the view."""
        if count < 0 or self.end - self.pos < count:
            raise self.fail(f"truncated: {what} needs {count} bytes, {self.end - self.pos} left")
        self.pos += count

    def u8(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.fail(f"truncated: {what} needs 1 bytes, {self.end - pos} left")
        self.pos = pos + 1
        return self.mv[pos]

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[Any, ...]:
        """The fields of ``fmt`` (a fixed layout of ``fmt.size`` bytes), as :meth:`take`."""
        pos = self.pos
        if self.end - pos < fmt.size:
            raise self.fail(f"truncated: {what} needs {fmt.size} bytes, {self.end - pos} left")
        self.pos = pos + fmt.size
        return fmt.unpack_from(self.mv, pos)

    def varint(self, what: str) -> int:
        mv, end, pos = self.mv, self.end, self.pos
        if pos < end and mv[pos] < 0x80:  # one byte: always minimal
            self.pos = pos + 1
            return mv[pos]
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if pos >= end:
                self.pos = pos
                raise self.fail(f"truncated: {what} needs 1 bytes, {end - pos} left")
            byte = mv[pos]
            pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                self.pos = pos
                if byte == 0 and i > 0:
                    raise self.fail(f"{what}: non-minimal varint")
                return value
        self.pos = pos
        raise self.fail(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes")


def parse(data: np.ndarray, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> ParsedPacket:
    """Validate a packet and describe it (no payload is decoded).

    Args:
        data: the packet as a 1-D uint8 array.
        max_output_bytes: refuse packets whose decoded tensors would exceed this many bytes.

    Raises:
        CorruptPacketError: anything wrong, with what and where.
    """
    size = int(data.size)
    mv = data.data.cast("B") if data.size else memoryview(b"")
    if size < len(MAGIC) or bytes(mv[: len(MAGIC)]) != MAGIC:
        raise CorruptPacketError("not a tenfold packet (bad magic bytes)")
    if size < _HEADER_MIN + 4:
        raise CorruptPacketError(f"truncated: {size} bytes is shorter than any packet")
    version = int(mv[len(MAGIC)])
    if version not in READ_VERSIONS:
        raise CorruptPacketError(
            f"unsupported format version {version} (this tenfold reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    body_end = size - 4
    (stored_crc,) = struct.unpack_from("<I", mv, body_end)
    actual_crc = zlib.crc32(mv[:body_end])
    if stored_crc != actual_crc:
        raise CorruptPacketError(
            f"checksum mismatch (stored CRC32 {stored_crc:08x}, computed {actual_crc:08x}): "
            "the packet was damaged or truncated"
        )
    r = _Reader(mv, body_end)
    r.pos = len(MAGIC) + 1
    count = r.varint("tensor count")
    if count > (body_end - r.pos) // _RECORD_MIN:
        raise r.fail(f"tensor count {count} cannot fit in {body_end - r.pos} bytes")
    records: list[Record] = []
    names: set[str] = set()
    out_bytes = 0
    for index in range(count):
        rec = _parse_record(r, index, max_output_bytes, version)
        if rec.info.name in names:
            raise CorruptPacketError(f"duplicate tensor name {rec.info.name!r} (tensor {index})")
        names.add(rec.info.name)
        out_bytes += rec.info.num_values * rec.dtype.itemsize
        if out_bytes > max_output_bytes:
            raise CorruptPacketError(
                f"tensor {rec.info.name!r} brings the decoded size to {out_bytes} bytes, "
                f"over max_output_bytes={max_output_bytes}"
            )
        records.append(rec)
    members = [i for i, rec in enumerate(records) if rec.mode == MODE_GROUP]
    if members:
        r.where = "group section"
        _parse_group(r, records, members)
    if r.pos != body_end:
        r.where = "packet trailer"
        raise r.fail(f"{body_end - r.pos} unexpected bytes after the last tensor")
    info = PacketInfo(nbytes=size, tensors=[rec.info for rec in records], version=version)
    return ParsedPacket(info=info, records=records)


def _parse_record(r: _Reader, index: int, max_output_bytes: int, version: int) -> Record:
    start = r.pos
    r.where = (index, None)
    name_len = r.varint("name length")
    if name_len > MAX_NAME_BYTES:
        raise r.fail(f"name length {name_len} exceeds {MAX_NAME_BYTES}")
    try:
        name = str(r.take(name_len, "name"), "utf-8")
    except UnicodeDecodeError as exc:
        raise r.fail(f"name is not valid UTF-8 ({exc.reason})") from None
    r.where = (index, name)
    dtype_code = r.u8("dtype")
    wire = WIRE_DTYPES.get(dtype_code)
    if wire is None:
        raise r.fail(f"unknown dtype code {dtype_code}")
    if version < wire.min_version:
        raise r.fail(
            f"dtype {wire.name} needs format version {wire.min_version} (packet says {version})"
        )
    dtype = wire.dtype  # what the values decode into (float32 for bfloat16)
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise r.fail(f"{ndim} dimensions (at most {MAX_NDIM})")
    shape = tuple([r.varint("shape") for _ in range(ndim)])
    n = math.prod(shape)
    # numpy refuses shapes whose nonzero dimensions multiply past its limits even when a
    # zero dimension makes the array empty: bound that "extent" like a real size (of the
    # decoded array: float32, 4 bytes per value, for bfloat16)
    extent = (n if n else math.prod([d or 1 for d in shape])) * dtype.itemsize
    if extent > max_output_bytes:
        raise r.fail(f"shape {shape} exceeds max_output_bytes={max_output_bytes}")
    width = wire.width
    mode_byte = r.u8("mode")
    mode, quant = mode_byte & 0x0F, mode_byte >> 4
    if mode not in MODE_NAMES or quant not in (QUANT_RANGE, QUANT_STEP):
        raise r.fail(f"unknown coding mode {mode_byte}")
    if mode == MODE_ANS_QUADS:  # first: the version it needs is 4, whatever the packet's
        if quant != QUANT_STEP:
            raise r.fail(f"unknown coding mode {mode_byte} (ans-quads exists only as 0x17)")
        if version < 4:
            raise r.fail(f"ans-quads (mode 0x17) needs format version 4 (packet says {version})")
    if version < 2 and record_needs_v2(mode, quant):
        raise r.fail(f"coding mode {mode_byte} needs format version 2 (packet says {version})")
    if mode == MODE_GROUP:
        return _parse_member(r, start, name, shape, wire, mode_byte, version)
    if mode == MODE_ANS_PAIRS and (version < 3 or quant != QUANT_STEP):
        raise r.fail(f"coding mode {mode_byte} needs format version 3 (packet says {version})")
    bits = r.u8("bits")
    entropy_raw = r.take(4, "entropy")
    if entropy_raw == _ENTROPY_NONE:
        entropy: float | None = None
    else:
        entropy = float(struct.unpack("<f", entropy_raw)[0])
        if not 0.0 <= entropy <= 24.0:  # also rejects NaN payloads other than "none"
            raise r.fail(f"entropy {entropy} outside [0, 24]")
    w_min = _wire_float(r, wire, "w_min")
    w_max = _wire_float(r, wire, "w_max")
    if not (math.isfinite(w_min) and math.isfinite(w_max)):
        raise r.fail(f"non-finite range [{w_min}, {w_max}]")
    if n == 0 and (
        mode != MODE_RAW or quant != QUANT_RANGE or bits != width or w_min != 0.0 or w_max != 0.0
    ):
        raise r.fail("an empty tensor must be coded raw with w_min = w_max = 0")

    step: float | None = None
    qmin = clamped = 0
    if quant == QUANT_STEP:
        step, qmin, clamped = _parse_step_fields(r, mode, bits, wire, n, w_min, w_max)
    elif mode in (MODE_HUFFMAN, MODE_ANS, MODE_BITPACK) and not w_min < w_max:
        raise r.fail(f"{MODE_NAMES[mode]} needs w_min < w_max")

    lengths = freq = None
    scale_bits = 0
    stream_starts = stream_ends = None
    if mode == MODE_CONSTANT:
        if bits != 0 or (quant == QUANT_RANGE and w_min != w_max):
            raise r.fail(f"constant tensor needs bits = 0 and w_min == w_max (bits={bits})")
        payload = 0
    elif mode == MODE_RAW:
        if quant != QUANT_RANGE or bits != width or w_min > w_max:
            raise r.fail(f"raw {wire.name} tensor needs bits = {width} and w_min <= w_max")
        payload = n * wire.nbytes
    elif mode == MODE_BITPACK:
        if not 1 <= bits <= min(24 if quant == QUANT_RANGE else 16, width - 1):
            raise r.fail(f"bitpack needs 1 <= bits < {min(25, width)} (bits={bits})")
        payload = (n * bits + 7) // 8
    elif mode == MODE_HUFFMAN:
        if not 1 <= bits <= 16:
            raise r.fail(f"huffman needs 1 <= bits <= 16 (bits={bits})")
        table_len = r.varint("code-length table size")
        table = np.frombuffer(r.take(table_len, "code-length table"), dtype=np.uint8)
        lengths, reason = unpack_lengths(table, 1 << bits)
        if lengths is None:
            raise r.fail(reason)
        sizes = [r.varint("stream size") for _ in range(NUM_STREAMS)]
        # each stream holds ceil((n - s) / 4) codes of length in [lmin, lmax]
        used = lengths[lengths > 0]
        lmin, lmax = int(used.min()), int(used.max())
        for s, nbytes in enumerate(sizes):
            ns = _lane_count(n, s)
            lo, hi = (ns * lmin + 7) // 8, (ns * lmax + 7) // 8
            if not lo <= nbytes <= hi:
                raise r.fail(
                    f"stream {s} size {nbytes} impossible for {ns} codes of "
                    f"{lmin}..{lmax} bits (expected {lo}..{hi})"
                )
        payload = sum(sizes)
        stream_starts, stream_ends = _ranges(r.pos, sizes)
    else:  # MODE_ANS, MODE_ANS_PAIRS, MODE_ANS_QUADS: values per coder symbol 1, 2, 4
        per = _VALUES_PER_SYMBOL[mode]
        top = _MAX_ANS_BITS[mode]
        if not 1 <= bits <= top:
            raise r.fail(f"{MODE_NAMES[mode]} needs 1 <= bits <= {top} (bits={bits})")
        scale_bits = r.u8("ANS precision")
        if not 1 <= scale_bits <= 16:
            raise r.fail(f"ANS precision {scale_bits} outside 1..16")
        table_len = r.varint("frequency table size")
        table = np.frombuffer(r.take(table_len, "frequency table"), dtype=np.uint8)
        freq, reason = ans.unpack_frequencies(table, 1 << (per * bits), scale_bits)
        if freq is None:
            raise r.fail(reason)
        sizes = [r.varint("lane size") for _ in range(ans.LANES)]
        symbols = (n + per - 1) // per
        for s, nbytes in enumerate(sizes):
            # a lane is its 4-byte state plus at most one 16-bit word per symbol
            hi = 4 + 2 * _lane_count(symbols, s)
            if nbytes % 2 or not 4 <= nbytes <= hi:
                raise r.fail(f"lane {s} size {nbytes} impossible (even, 4..{hi} expected)")
        payload = sum(sizes)
        stream_starts, stream_ends = _ranges(r.pos, sizes)
    payload_start = r.pos
    r.skip(payload, "payload")
    info = _new(
        TensorInfo,
        name=name,
        shape=shape,
        dtype=wire.name,
        mode=MODE_NAMES[mode],
        bits=bits,
        w_min=w_min,
        w_max=w_max,
        entropy=entropy,
        nbytes=r.pos - start,
        num_values=n,
        step=step,
        clamped=clamped,
    )
    return _new(
        Record,
        info=info,
        dtype=dtype,
        mode=mode,
        lengths=lengths,
        payload_start=payload_start,
        payload_end=r.pos,
        wire=wire,
        stream_starts=stream_starts,
        stream_ends=stream_ends,
        quant=quant,
        qmin=qmin,
        freq=freq,
        scale_bits=scale_bits,
        group_offset=-1,
    )


#: the ANS modes' values per coder symbol and widest alphabet (bits per value)
_VALUES_PER_SYMBOL = {MODE_ANS: 1, MODE_ANS_PAIRS: 2, MODE_ANS_QUADS: 4}
_MAX_ANS_BITS = {MODE_ANS: 16, MODE_ANS_PAIRS: MAX_PAIR_BITS, MODE_ANS_QUADS: MAX_QUAD_BITS}


def _lane_count(n: int, lane: int) -> int:
    """Values of an ``n``-value tensor in stream/lane ``lane`` (value j goes to j % 4)."""
    return (n - lane + NUM_STREAMS - 1) // NUM_STREAMS if n > lane else 0


def _ranges(pos: int, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """int64 (start, end) byte ranges of consecutive chunks of ``sizes`` bytes from ``pos``."""
    bounds = [pos]
    for size in sizes:  # Python ints: the sizes are varints (< 2**63), the sums exact
        pos += size
        bounds.append(pos)
    if pos >= 1 << 63:  # beyond int64 (only with a huge max_output_bytes): numpy's wrap
        ends = bounds[0] + np.cumsum(np.asarray(sizes, dtype=np.int64))
        return ends - np.asarray(sizes, dtype=np.int64), ends
    edges = np.array(bounds, dtype=np.int64)
    return edges[:-1], edges[1:]


def _parse_step_fields(
    r: _Reader, mode: int, bits: int, dtype: WireDtype, n: int, w_min: float, w_max: float
) -> tuple[float, int, int]:
    """``step``, ``qmin`` and the clamp count of a mid-tread record, validated."""
    (step,) = r.unpack(_F64, "step")
    if not (math.isfinite(step) and step > 0.0):
        raise r.fail(f"step {step} is not finite and > 0")
    qmin = unzigzag(r.varint("lowest level"))
    clamped = r.varint("clamp count")
    if w_min > w_max:
        raise r.fail(f"range [{w_min}, {w_max}] is empty")
    if mode == MODE_RAW:
        raise r.fail("raw values have no quantizer step")
    if (mode == MODE_CONSTANT) != (bits == 0) or bits > 16:
        raise r.fail(f"mid-tread {MODE_NAMES[mode]} record with bits={bits}")
    if abs(qmin) > LEVEL_LIMIT:
        raise r.fail(f"lowest level {qmin} exceeds +-{LEVEL_LIMIT}")
    if clamped > n:
        raise r.fail(f"clamp count {clamped} exceeds the {n} values")
    # decoded values are monotone in the level: the two extremes bound them all
    if _levels_overflow(dtype, qmin, qmin + (1 << bits) - 1, step):
        raise r.fail(f"levels {qmin}.. at step {step} overflow {dtype.name}")
    return step, qmin, clamped


#: binary64 magnitudes from which rounding to float32 gives inf: FLT_MAX plus half an ulp
#: (2**128 - 2**104 + 2**103), a tie that rounds to even, away from FLT_MAX
_F32_OVERFLOW = 2.0**128 - 2.0**103


def _levels_overflow(wire: WireDtype, qmin: int, qmax: int, step: float) -> bool:
    """Whether level ``qmin`` or ``qmax`` at ``step`` (binary64 products) decodes to an
    infinity in ``wire`` (docs/FORMAT.md: the "cast once" of the decoded values)."""
    lo, hi = qmin * step, qmax * step  # |levels| < 2**17: exact as binary64, as in numpy
    if wire.code == 3:  # float64: the products themselves
        return not (math.isfinite(lo) and math.isfinite(hi))
    if wire.code == 2:  # float32 (no NaN: step is finite, the levels are integers)
        return max(abs(lo), abs(hi)) >= _F32_OVERFLOW
    levels = np.array([qmin, qmax], dtype=np.float64)  # float16, bfloat16: numpy's rounding
    with np.errstate(over="ignore"):
        ends = wire.cast(levels * step)  # bfloat16 overflows where float32 may not
    return not bool(np.isfinite(ends).all())


_F64 = struct.Struct("<d")
#: the wire's w_min / w_max layouts by dtype code (bfloat16: the float32's high 16 bits)
_WIRE_STRUCTS = {1: struct.Struct("<e"), 2: struct.Struct("<f"), 3: _F64, 4: struct.Struct("<H")}
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def _wire_float(r: _Reader, wire: WireDtype, what: str) -> float:
    """One value of ``wire``'s dtype (``w_min``, ``w_max``) read as a binary64 (exact)."""
    (value,) = r.unpack(_WIRE_STRUCTS[wire.code], what)
    if wire.code == 4:
        (value,) = _F32.unpack(_U32.pack(value << 16))
    return float(value)


def _parse_member(
    r: _Reader,
    start: int,
    name: str,
    shape: tuple[int, ...],
    wire: WireDtype,
    mode: int,
    version: int,
) -> Record:
    """A group member's record (after its mode byte): its step; the rest is the group's."""
    if version < 3 or mode >> 4 != QUANT_STEP:
        raise r.fail(f"coding mode {mode} needs format version 3 (packet says {version})")
    n = math.prod(shape)
    if n == 0:
        raise r.fail("a group member must have at least one value")
    (step,) = r.unpack(_F64, "step")
    if not (math.isfinite(step) and step > 0.0):
        raise r.fail(f"step {step} is not finite and > 0")
    info = _new(
        TensorInfo, name=name, shape=shape, dtype=wire.name, mode=MODE_NAMES[MODE_GROUP],
        bits=0, w_min=0.0, w_max=0.0, entropy=None, nbytes=r.pos - start, num_values=n,
        step=step, clamped=0,
    )  # fmt: skip
    return _new(
        Record, info=info, dtype=wire.dtype, mode=MODE_GROUP, lengths=None, payload_start=r.pos,
        payload_end=r.pos, wire=wire, stream_starts=None, stream_ends=None, quant=QUANT_STEP,
        qmin=0, freq=None, scale_bits=0, group_offset=-1,
    )  # fmt: skip


def _parse_group(r: _Reader, records: list[Record], members: list[int]) -> None:
    """Read the group section and complete its members' records in place."""
    start = r.pos
    bits = r.u8("group bits")
    if bits > 16:
        raise r.fail(f"group bits {bits} outside 0..16")
    qmin = unzigzag(r.varint("group lowest level"))
    if abs(qmin) > LEVEL_LIMIT:
        raise r.fail(f"lowest level {qmin} exceeds +-{LEVEL_LIMIT}")
    scale_bits = r.u8("ANS precision")
    if not 1 <= scale_bits <= 16:
        raise r.fail(f"ANS precision {scale_bits} outside 1..16")
    table_len = r.varint("frequency table size")
    table = np.frombuffer(r.take(table_len, "frequency table"), dtype=np.uint8)
    freq, reason = ans.unpack_frequencies(table, 1 << bits, scale_bits)
    if freq is None:
        raise r.fail(reason)
    total = sum(records[i].info.num_values for i in members)
    sizes = [r.varint("lane size") for _ in range(ans.LANES)]
    for s, nbytes in enumerate(sizes):
        hi = 4 + 2 * _lane_count(total, s)
        if nbytes % 2 or not 4 <= nbytes <= hi:
            raise r.fail(f"lane {s} size {nbytes} impossible (even, 4..{hi} expected)")
    stream_starts, stream_ends = _ranges(r.pos, sizes)
    r.skip(sum(sizes), "group payload")
    section = r.pos - start
    offset = shared = 0
    top = np.array([qmin, qmin + (1 << bits) - 1], np.float64)
    steps = np.array([records[i].info.step for i in members], dtype=np.float64)
    with np.errstate(over="ignore"):
        extremes = np.outer(steps, top)  # binary64 products, cast per dtype below
    casts: dict[str, np.ndarray] = {}
    for code in {records[i].wire.name for i in members}:
        wire = next(records[i].wire for i in members if records[i].wire.name == code)
        casts[code] = wire.cast(extremes).astype(np.float64)
    for k, i in enumerate(members):
        rec = records[i]
        info = rec.info
        lo, hi = casts[rec.wire.name][k].tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CorruptPacketError(
                f"levels {qmin}.. at step {info.step} overflow {rec.wire.name} "
                f"(in tensor {i} {info.name!r})"
            )
        share = section - shared if k == len(members) - 1 else section * info.num_values // total
        shared += share
        info = _new(
            TensorInfo, name=info.name, shape=info.shape, dtype=info.dtype, mode=info.mode,
            bits=bits, w_min=lo, w_max=hi, entropy=None, nbytes=info.nbytes + share,
            num_values=info.num_values, step=info.step, clamped=0,
        )  # fmt: skip
        records[i] = _new(
            Record, info=info, dtype=rec.dtype, mode=MODE_GROUP, lengths=None,
            payload_start=rec.payload_start, payload_end=rec.payload_end, wire=rec.wire,
            stream_starts=stream_starts, stream_ends=stream_ends, quant=QUANT_STEP,
            qmin=qmin, freq=freq, scale_bits=scale_bits, group_offset=offset,
        )  # fmt: skip
        offset += info.num_values
