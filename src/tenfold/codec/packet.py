"""The wire format: build, parse and validate packets (byte-level spec: docs/FORMAT.md).

A packet is::

    magic "TFLD" | version u8 | tensor count (varint) | record * count | CRC32 u32 LE

and each record is a small header (name, dtype, shape, mode, N, entropy, w_min, w_max, and
for Huffman the code-length table and four stream sizes) followed by its payload. All
integers are little-endian; varints are unsigned LEB128 (minimal form).

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

import numpy as np

from tenfold.codec.errors import CorruptPacketError
from tenfold.codec.huffman import NUM_STREAMS, unpack_lengths
from tenfold.codec.quantize import Quantizer

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "MODE_BITPACK",
    "MODE_CONSTANT",
    "MODE_HUFFMAN",
    "MODE_NAMES",
    "MODE_RAW",
    "PacketInfo",
    "ParsedPacket",
    "Record",
    "TensorInfo",
    "encode_record_header",
    "finish_packet",
    "packet_header",
    "parse",
    "varint",
]

MAGIC = b"TFLD"
FORMAT_VERSION = 1
#: decompress/inspect/accumulate refuse packets whose tensors would need more output memory.
DEFAULT_MAX_OUTPUT_BYTES = 1 << 32  # 4 GiB

MODE_CONSTANT = 0
MODE_HUFFMAN = 1
MODE_BITPACK = 2
MODE_RAW = 3
MODE_NAMES = {
    MODE_CONSTANT: "constant",
    MODE_HUFFMAN: "huffman",
    MODE_BITPACK: "bitpack",
    MODE_RAW: "raw",
}

#: dtype code on the wire -> numpy dtype (little-endian)
DTYPE_BY_CODE: dict[int, np.dtype] = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 3: np.dtype("<f8")}
CODE_BY_DTYPE: dict[np.dtype, int] = {
    dt.newbyteorder("="): code for code, dt in DTYPE_BY_CODE.items()
}

MAX_NAME_BYTES = 65535
MAX_NDIM = 64
_MAX_VARINT_BYTES = 9  # values < 2**63
_ENTROPY_NONE = b"\x00\x00\xc0\x7f"  # float32 quiet NaN 0x7FC00000, little-endian
_HEADER_MIN = len(MAGIC) + 1 + 1  # magic, version, count (>= 1 byte)
_RECORD_MIN = 13  # name len, dtype, ndim, mode, bits, entropy(4), w_min(2), w_max(2)


# ---- info objects (what inspect returns) ------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """How one tensor is coded in a packet.

    Attributes:
        name: the tensor's name.
        shape: its shape (``()`` for 0-d).
        dtype: ``"float16"``, ``"float32"`` or ``"float64"``.
        mode: ``"constant"``, ``"huffman"``, ``"bitpack"`` or ``"raw"``.
        bits: N, bits per quantized value (huffman/bitpack); the dtype's width for raw
            (Lossless, empty tensors, or when raw was smaller); 0 for constant.
        w_min, w_max: the tensor's range (equal for constant; 0.0 for an empty tensor).
        entropy: the estimate H (bits) that chose N (EntropyAdaptive), else None. Stored
            as float32.
        nbytes: bytes the tensor occupies in the packet: record header + code table +
            payload.
        num_values: number of values (product of the shape).
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
        dtype: little-endian numpy dtype of the values.
        mode: ``MODE_*`` code.
        lengths: Huffman code lengths (uint8, ``2**bits``) for huffman records, else None.
        payload_start, payload_end: the payload's byte range in the packet.
        stream_starts, stream_ends: int64 (4,) byte ranges of the Huffman streams.
    """

    info: TensorInfo
    dtype: np.dtype
    mode: int
    lengths: np.ndarray | None
    payload_start: int
    payload_end: int
    stream_starts: np.ndarray | None = None
    stream_ends: np.ndarray | None = None

    @property
    def quantizer(self) -> Quantizer:
        """The tensor's quantizer (huffman/bitpack records only)."""
        return Quantizer.for_range(self.info.w_min, self.info.w_max, self.info.bits)


@dataclass(frozen=True)
class ParsedPacket:
    """A validated packet: its public info and the records, in order."""

    info: PacketInfo
    records: list[Record] = field(default_factory=list)


# ---- building ---------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low group first, high bit = "more follows".

    Example:
        >>> varint(0).hex(), varint(127).hex(), varint(300).hex()
        ('00', '7f', 'ac02')
    """
    if value < 0 or value >= 1 << 63:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def packet_header(num_tensors: int) -> bytes:
    """``MAGIC | version | varint(num_tensors)``."""
    return MAGIC + bytes([FORMAT_VERSION]) + varint(num_tensors)


def _float_bytes(value: float, dtype: np.dtype) -> bytes:
    return np.asarray(value, dtype=dtype.newbyteorder("<")).tobytes()


def encode_record_header(
    *,
    name: str,
    dtype: np.dtype,
    shape: Sequence[int],
    mode: int,
    bits: int,
    entropy: float | None,
    w_min: float,
    w_max: float,
    table: bytes = b"",
    stream_nbytes: Sequence[int] = (),
) -> bytes:
    """A record's header bytes (everything before its payload); see docs/FORMAT.md."""
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensor {name!r} has more than {MAX_NDIM} dimensions")
    parts = [varint(len(name_bytes)), name_bytes, bytes([CODE_BY_DTYPE[dtype], len(shape)])]
    parts += [varint(int(d)) for d in shape]
    parts.append(bytes([mode, bits]))
    parts.append(_ENTROPY_NONE if entropy is None else struct.pack("<f", entropy))
    parts.append(_float_bytes(w_min, dtype) + _float_bytes(w_max, dtype))
    if mode == MODE_HUFFMAN:
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
    """Bounds-checked sequential reads; every failure is a CorruptPacketError with context."""

    def __init__(self, mv: memoryview, end: int) -> None:
        self.mv = mv
        self.pos = 0
        self.end = end  # exclusive: start of the CRC trailer
        self.where = "packet header"

    def fail(self, what: str) -> CorruptPacketError:
        return CorruptPacketError(f"{what} (in {self.where}, at byte {self.pos})")

    def take(self, count: int, what: str) -> memoryview:
        if count < 0 or self.end - self.pos < count:
            raise self.fail(f"truncated: {what} needs {count} bytes, {self.end - self.pos} left")
        chunk = self.mv[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self, what: str) -> int:
        return int(self.take(1, what)[0])

    def varint(self, what: str) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise self.fail(f"{what}: non-minimal varint")
                return value
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
    if version != FORMAT_VERSION:
        raise CorruptPacketError(
            f"unsupported format version {version} (this tenfold reads version {FORMAT_VERSION})"
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
        rec = _parse_record(r, index, max_output_bytes)
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
    if r.pos != body_end:
        r.where = "packet trailer"
        raise r.fail(f"{body_end - r.pos} unexpected bytes after the last tensor")
    info = PacketInfo(nbytes=size, tensors=[rec.info for rec in records], version=version)
    return ParsedPacket(info=info, records=records)


def _parse_record(r: _Reader, index: int, max_output_bytes: int) -> Record:
    start = r.pos
    r.where = f"tensor {index}"
    name_len = r.varint("name length")
    if name_len > MAX_NAME_BYTES:
        raise r.fail(f"name length {name_len} exceeds {MAX_NAME_BYTES}")
    try:
        name = str(r.take(name_len, "name"), "utf-8")
    except UnicodeDecodeError as exc:
        raise r.fail(f"name is not valid UTF-8 ({exc.reason})") from None
    r.where = f"tensor {index} {name!r}"
    dtype_code = r.u8("dtype")
    dtype = DTYPE_BY_CODE.get(dtype_code)
    if dtype is None:
        raise r.fail(f"unknown dtype code {dtype_code}")
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise r.fail(f"{ndim} dimensions (at most {MAX_NDIM})")
    shape = tuple(r.varint("shape") for _ in range(ndim))
    n = math.prod(shape)
    # numpy refuses shapes whose nonzero dimensions multiply past its limits even when a
    # zero dimension makes the array empty: bound that "extent" like a real size
    extent = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if extent > max_output_bytes:
        raise r.fail(f"shape {shape} exceeds max_output_bytes={max_output_bytes}")
    width = 8 * dtype.itemsize
    mode = r.u8("mode")
    if mode not in MODE_NAMES:
        raise r.fail(f"unknown coding mode {mode}")
    bits = r.u8("bits")
    entropy_raw = bytes(r.take(4, "entropy"))
    if entropy_raw == _ENTROPY_NONE:
        entropy: float | None = None
    else:
        entropy = float(struct.unpack("<f", entropy_raw)[0])
        if not 0.0 <= entropy <= 24.0:  # also rejects NaN payloads other than "none"
            raise r.fail(f"entropy {entropy} outside [0, 24]")
    w_min = float(np.frombuffer(r.take(dtype.itemsize, "w_min"), dtype=dtype)[0])
    w_max = float(np.frombuffer(r.take(dtype.itemsize, "w_max"), dtype=dtype)[0])
    if not (math.isfinite(w_min) and math.isfinite(w_max)):
        raise r.fail(f"non-finite range [{w_min}, {w_max}]")
    if n == 0 and (mode != MODE_RAW or bits != width or w_min != 0.0 or w_max != 0.0):
        raise r.fail("an empty tensor must be coded raw with w_min = w_max = 0")

    lengths = None
    stream_starts = stream_ends = None
    if mode == MODE_CONSTANT:
        if bits != 0 or w_min != w_max:
            raise r.fail(f"constant tensor needs bits = 0 and w_min == w_max (bits={bits})")
        payload = 0
    elif mode == MODE_RAW:
        if bits != width or w_min > w_max:
            raise r.fail(f"raw {dtype.name} tensor needs bits = {width} and w_min <= w_max")
        payload = n * dtype.itemsize
    elif mode == MODE_BITPACK:
        if not 1 <= bits <= min(24, width - 1) or not w_min < w_max:
            raise r.fail(f"bitpack needs 1 <= bits < {min(25, width)} and w_min < w_max")
        payload = (n * bits + 7) // 8
    else:  # MODE_HUFFMAN
        if not 1 <= bits <= 16 or not w_min < w_max:
            raise r.fail(f"huffman needs 1 <= bits <= 16 and w_min < w_max (bits={bits})")
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
            ns = (n - s + NUM_STREAMS - 1) // NUM_STREAMS if n > s else 0
            lo, hi = (ns * lmin + 7) // 8, (ns * lmax + 7) // 8
            if not lo <= nbytes <= hi:
                raise r.fail(
                    f"stream {s} size {nbytes} impossible for {ns} codes of "
                    f"{lmin}..{lmax} bits (expected {lo}..{hi})"
                )
        payload = sum(sizes)
        pos = r.pos
        stream_starts = np.array(
            [pos, pos + sizes[0], pos + sizes[0] + sizes[1], pos + sum(sizes[:3])], dtype=np.int64
        )
        stream_ends = stream_starts + np.array(sizes, dtype=np.int64)
    payload_start = r.pos
    r.take(payload, "payload")
    info = TensorInfo(
        name=name,
        shape=shape,
        dtype=dtype.name,
        mode=MODE_NAMES[mode],
        bits=bits,
        w_min=w_min,
        w_max=w_max,
        entropy=entropy,
        nbytes=r.pos - start,
        num_values=n,
    )
    return Record(
        info=info,
        dtype=dtype,
        mode=mode,
        lengths=lengths,
        payload_start=payload_start,
        payload_end=r.pos,
        stream_starts=stream_starts,
        stream_ends=stream_ends,
    )
