"""The wire format's parser: every malformed header is a CorruptPacketError that says why.

Most packets here are forged with a *valid* CRC, so the structural checks behind the
checksum are exercised (the checksum alone would catch them otherwise).
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest

from tenfold.codec import (
    CorruptPacketError,
    Fixed,
    Lossless,
    accumulate,
    ans,
    compress,
    decompress,
    inspect,
)
from tenfold.codec.packet import (
    MODE_ANS_QUADS,
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_HUFFMAN,
    MODE_RAW,
    QUANT_STEP,
    encode_record_header,
    finish_packet,
    packet_header,
    varint,
    varint_len,
)

F32 = np.dtype(np.float32)


def recrc(body: bytes) -> bytes:
    """``body`` (without CRC) + its CRC32: a checksum-valid packet."""
    return body + struct.pack("<I", zlib.crc32(body))


def packet(*records: bytes, count: int | None = None) -> bytes:
    return recrc(packet_header(len(records) if count is None else count) + b"".join(records))


def record(**kw) -> bytes:
    args = dict(
        name="w", dtype=F32, shape=(4,), mode=MODE_RAW, bits=32, entropy=None, w_min=0.0, w_max=3.0
    )
    args.update(kw)
    return encode_record_header(**args)


RAW4 = np.arange(4, dtype="<f4").tobytes()


def test_a_forged_valid_packet_decodes() -> None:
    blob = packet(record() + RAW4)
    assert decompress(blob)["w"].tolist() == [0, 1, 2, 3]
    assert blob == compress({"w": np.arange(4, dtype=np.float32)}, Lossless())


def test_finish_packet_appends_crc() -> None:
    body = packet_header(0)
    assert finish_packet([body]) == recrc(body)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "bad magic"),
        (b"TFL", "bad magic"),
        (b"XFLD\x01\x00\x00\x00\x00\x00", "bad magic"),
        (b"TFLD\x01\x00", "truncated"),
        (b"TFLD\x05\x00" + b"\x00" * 4, "unsupported format version 5"),
        (b"TFLD\x00\x00" + b"\x00" * 4, "unsupported format version 0"),
        (b"TFLD\x01\x00\x00\x00\x00\x00", "checksum mismatch"),
    ],
)
def test_envelope_errors(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError, match=message):
        decompress(blob)
    with pytest.raises(CorruptPacketError, match=message):
        inspect(blob)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (packet(count=1 << 40), "cannot fit"),
        (recrc(b"TFLD\x01\x80\x00"), "non-minimal varint"),
        (recrc(b"TFLD\x01" + b"\xff" * 9 + b"\x01"), "longer than 9"),
        (packet(record() + RAW4 + b"\x00"), "unexpected bytes after the last tensor"),
        (packet(record(), count=1), "truncated: payload"),
        (packet(record(name="w") + RAW4, record(name="w") + RAW4), "duplicate tensor name 'w'"),
        (packet(b"\x02\xff\xfe" + record()[3:] + RAW4), "UTF-8"),
        (packet(record(shape=(1 << 40,)) + RAW4), "max_output_bytes"),
        (packet(record(shape=(0, 1 << 62)) + RAW4), "max_output_bytes"),
        (packet(record(shape=(1 << 20,) * 3)), "max_output_bytes"),
        (packet(record(mode=MODE_CONSTANT, bits=0, w_max=0.0, shape=(1 << 31,))), "max_output"),
        (packet(record(mode=8) + RAW4), "unknown coding mode 8"),
        (packet(record(bits=16) + RAW4), "raw float32 tensor needs bits = 32"),
        (packet(record(w_min=4.0) + RAW4), "w_min <= w_max"),
        (packet(record(w_max=float("inf")) + RAW4), "non-finite range"),
        (packet(record(mode=MODE_CONSTANT, bits=0)), "w_min == w_max"),
        (packet(record(mode=MODE_CONSTANT, bits=3, w_max=0.0)), "bits = 0"),
        (packet(record(mode=MODE_BITPACK, bits=0) + b"\x00"), "bitpack needs"),
        (packet(record(mode=MODE_BITPACK, bits=32) + RAW4), "bitpack needs"),
        (packet(record(mode=MODE_BITPACK, bits=2, w_max=0.0) + b"\x00"), "bitpack needs"),
        (packet(record(mode=MODE_HUFFMAN, bits=17, table=b"", stream_nbytes=[0] * 4)), "16"),
        (packet(record(shape=(0,), w_max=0.0, mode=MODE_CONSTANT, bits=0)), "empty tensor"),
        (packet(record(entropy=25.0) + RAW4), "entropy 25"),
        (packet(record(entropy=-1.0) + RAW4), "entropy -1"),
        (
            packet(
                record(entropy=float("nan")).replace(b"\x00\x00\xc0\x7f", b"\x01\x00\xc0\x7f")
                + RAW4
            ),
            "entropy nan",
        ),
        (packet(b"\x01w\x02\x41" + b"\x01" * 65 + record()[5:] + RAW4), "65 dimensions"),
    ],
)
def test_header_errors(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError, match=message):
        inspect(blob)
    with pytest.raises(CorruptPacketError, match=message):
        decompress(blob)


def test_unknown_dtype_code() -> None:
    rec = bytearray(record() + RAW4)
    rec[2] = 9  # name len, "w", dtype
    with pytest.raises(CorruptPacketError, match="unknown dtype code 9"):
        inspect(packet(bytes(rec)))


def _huffman_record(n: int = 8, sizes=(1, 1, 1, 1), table=b"\x11") -> bytes:
    return record(
        shape=(n,),
        mode=MODE_HUFFMAN,
        bits=1,
        w_min=0.0,
        w_max=1.0,
        table=table,
        stream_nbytes=list(sizes),
    )


def test_huffman_header_errors() -> None:
    good = packet(_huffman_record() + bytes([0b01, 0b10, 0, 0b11]))
    # codes "0" -> 0.25, "1" -> 0.75; value j is bit j // 4 (LSB first) of stream j % 4
    assert decompress(good)["w"].tolist() == [0.75, 0.25, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75]
    with pytest.raises(CorruptPacketError, match="stream 0 size 2 impossible"):
        inspect(packet(_huffman_record(sizes=(2, 1, 1, 1)) + b"\x00" * 5))
    with pytest.raises(CorruptPacketError, match="complete prefix code"):
        inspect(packet(_huffman_record(table=b"\x21") + b"\x00" * 4))
    with pytest.raises(CorruptPacketError, match="truncated: code-length table"):
        inspect(packet(record(shape=(8,), mode=MODE_HUFFMAN, bits=1, w_max=1.0)[:-1] + b"\x05"))


def test_huffman_payload_errors_are_found_by_the_decoder() -> None:
    # 8 one-bit codes per 4 streams fit in one byte each; a nonzero bit beyond the two codes
    # of stream 2 is "trailing garbage" the decoder must refuse
    blob = packet(_huffman_record() + bytes([0b01, 0b10, 0b100, 0b11]))
    inspect(blob)  # the header is fine
    with pytest.raises(CorruptPacketError, match="stream 2"):
        decompress(blob)
    out = {"w": np.zeros(8, np.float32)}
    from tenfold.codec import accumulate

    with pytest.raises(CorruptPacketError, match="stream 2"):
        accumulate(blob, out)


def test_bitpack_padding_must_be_zero() -> None:
    good = packet(record(shape=(3,), mode=MODE_BITPACK, bits=2, w_max=1.0) + b"\x24")
    assert decompress(good)["w"].tolist() == [0.125, 0.375, 0.625]
    bad = packet(record(shape=(3,), mode=MODE_BITPACK, bits=2, w_max=1.0) + b"\x64")
    with pytest.raises(CorruptPacketError, match="padding"):
        decompress(bad)


@pytest.mark.parametrize(
    "values", [[0.0, 1.0, 2.0, float("nan")], [0.0, 1.0, 2.0, 2.5], [0.5, 1.0, 2.0, 3.0]]
)
def test_raw_values_must_match_the_header(values: list[float]) -> None:
    blob = packet(record() + np.array(values, dtype="<f4").tobytes())
    inspect(blob)
    with pytest.raises(CorruptPacketError, match="raw values span"):
        decompress(blob)


def test_huge_claims_fail_fast() -> None:
    # 2**40 values of a constant: rejected from the header, nothing allocated
    blob = packet(record(shape=(1 << 20, 1 << 20), mode=MODE_CONSTANT, bits=0, w_max=0.0))
    t0 = time.perf_counter()
    with pytest.raises(CorruptPacketError, match="max_output_bytes"):
        decompress(blob)
    assert time.perf_counter() - t0 < 1.0
    huge = varint((1 << 63) - 1)
    assert len(huge) == 9


def test_every_single_bit_flip_of_a_packet_is_detected() -> None:
    blob = compress({"w": np.linspace(-1, 1, 40, dtype=np.float32), "b": np.ones(2)}, Fixed(4))
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CorruptPacketError):
            decompress(bytes(bad))


# ---- ans-quads (mode 0x17, version 4) ---------------------------------------------------


def _quad_symbols(sym: np.ndarray, bits: int) -> np.ndarray:
    """docs/FORMAT.md 6D: quad k = s[4k] | s[4k+1] << N | s[4k+2] << 2N | s[4k+3] << 3N."""
    padded = np.zeros(-(-sym.size // 4) * 4, np.uint16)
    padded[: sym.size] = sym
    q = padded.reshape(-1, 4)
    return q[:, 0] | q[:, 1] << bits | q[:, 2] << 2 * bits | q[:, 3] << 3 * bits


def _quad_record(
    sym: np.ndarray,
    bits: int = 2,
    *,
    dtype: type = np.float32,
    qmin: int = -1,
    step: float = 0.5,
    scale_bits: int = 12,
    precision: int | None = None,
    quads: np.ndarray | None = None,
    table: bytes | None = None,
    sizes: list[int] | None = None,
    mode: int = MODE_ANS_QUADS | QUANT_STEP << 4,
    shape: tuple[int, ...] | None = None,
) -> bytes:
    """A step record (mode byte ``mode``) coding ``sym`` (levels ``qmin + sym``), its lanes
    made as docs/FORMAT.md 6D says: ans.encode over the quad symbols (not by ansquads).
    ``precision``, ``table``, ``sizes``: header fields that say otherwise than the lanes."""
    quads = _quad_symbols(sym, bits) if quads is None else quads
    counts = np.bincount(quads, minlength=1 << 4 * bits).astype(np.int64)
    freq = ans.quantize_frequencies(counts, scale_bits)
    lanes = ans.encode(quads, freq, scale_bits)
    header = encode_record_header(
        name="q", dtype=np.dtype(dtype), shape=(sym.size,) if shape is None else shape,
        mode=mode & 0x0F, quant=mode >> 4, bits=bits, entropy=None, w_min=-0.5, w_max=1.0,
        step=step, qmin=qmin, clamped=0,
        scale_bits=scale_bits if precision is None else precision,
        table=ans.pack_frequencies(freq) if table is None else table,
        stream_nbytes=[lane.size for lane in lanes] if sizes is None else sizes,
    )  # fmt: skip
    return header + b"".join(lane.tobytes() for lane in lanes)


def _quad_packet(rec: bytes, version: int = 4) -> bytes:
    return recrc(packet_header(1, version) + rec)


_SYM = np.array([0, 1, 1, 3, 2, 1, 0, 1, 1, 1, 3], np.uint16)  # 11 values: 3 quads, padded


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 11, 1000, 1001, 1002, 1003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_a_quad_record_decodes_as_the_spec_says(n: int, dtype: type) -> None:
    rng = np.random.default_rng(n)
    sym = rng.choice(4, size=n, p=[0.1, 0.6, 0.2, 0.1]).astype(np.uint16)
    blob = _quad_packet(_quad_record(sym, dtype=dtype))
    info = inspect(blob)
    assert (info.version, info.tensors[0].mode, info.tensors[0].bits) == (4, "ans-quads", 2)
    want: np.ndarray = ((sym.astype(np.float64) - 1) * 0.5).astype(dtype)
    got = decompress(blob)["q"]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    if dtype is not np.float16:  # accumulators are float32/float64
        acc: dict[str, np.ndarray] = {"q": np.full(n, 2.0, dtype)}
        accumulate(blob, acc)
        assert acc["q"].tobytes() == (want + np.full(n, 2.0, dtype)).tobytes()


@pytest.mark.parametrize("n", [1, 4, 1000])
@pytest.mark.parametrize("precision", [1, 12, 16])
def test_a_quad_record_of_one_used_symbol_decodes(n: int, precision: int) -> None:
    # a single used quad symbol (f = 2**P, 0 bits per quad) at either end of P's range
    sym = np.full(n, 3, np.uint16)
    blob = _quad_packet(_quad_record(sym, scale_bits=precision))
    assert decompress(blob)["q"].tolist() == [1.0] * n


def test_a_one_bit_quad_record_decodes() -> None:
    sym = np.array([1, 0, 0, 1, 1, 1, 0], np.uint16)
    blob = _quad_packet(_quad_record(sym, bits=1, qmin=0, step=0.25))
    assert decompress(blob)["q"].tolist() == (sym * 0.25).tolist()


def test_quad_padding_symbols_are_not_values() -> None:
    # 6 values: the last quad's two padded symbols are ignored, whatever they are
    sym = np.array([1, 2, 3, 0, 3, 3], np.uint16)
    quads = _quad_symbols(sym, 2)
    quads[-1] |= 3 << 4 | 2 << 6
    blob = _quad_packet(_quad_record(sym, quads=quads))
    assert decompress(blob)["q"].tolist() == [0.0, 0.5, 1.0, -0.5, 1.0, 1.0]


def _bad_frequency_table() -> bytes:
    # 16 frequencies (a 2-bit alphabet's pairs), where a 2-bit quad record needs 256
    return ans.pack_frequencies(np.full(16, 256))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        # the version: 4, however old a packet says it is
        (_quad_packet(_quad_record(_SYM), 3), r"ans-quads \(mode 0x17\) needs format version 4"),
        (_quad_packet(_quad_record(_SYM), 2), r"needs format version 4 \(packet says 2\)"),
        (_quad_packet(_quad_record(_SYM), 1), r"needs format version 4 \(packet says 1\)"),
        # the quantizer: step only (0x07 and 0x27 ... 0xF7 are not ans-quads)
        (_quad_packet(_quad_record(_SYM, mode=0x07)), "unknown coding mode 7 "),
        (_quad_packet(_quad_record(_SYM, mode=0x27)), "unknown coding mode 39"),
        # bits: 1 ... 2 (0 is a constant's)
        (_quad_packet(_quad_record(_SYM, bits=3)), r"ans-quads needs 1 <= bits <= 2 \(bits=3\)"),
        (_quad_packet(_quad_record(_SYM, bits=0, quads=_SYM[:3] * 0)), "with bits=0"),
        # the table: 16**N frequencies at a precision of 1 ... 16
        (_quad_packet(_quad_record(_SYM, table=_bad_frequency_table())), "frequency table"),
        (_quad_packet(_quad_record(_SYM, precision=17)), "ANS precision 17 outside 1..16"),
        # lanes: even, 4 ... 4 + 2 * (quads in the lane): 11 values, 3 quads, lane 3 empty
        (_quad_packet(_quad_record(_SYM, sizes=[5, 4, 4, 4])), r"lane 0 size 5 impossible"),
        (_quad_packet(_quad_record(_SYM, sizes=[8, 4, 4, 4])), r"lane 0 size 8 .*4\.\.6"),
        (_quad_packet(_quad_record(_SYM, sizes=[4, 4, 4, 6])), r"lane 3 size 6 .*4\.\.4"),
        (_quad_packet(_quad_record(_SYM, sizes=[2, 4, 4, 4])), r"lane 0 size 2 impossible"),
        # the extreme levels' values: finite in the dtype
        (_quad_packet(_quad_record(_SYM, step=1e308, qmin=2)), "overflow float32"),
        # the payload: all there, and decoding exactly
        (_quad_packet(_quad_record(_SYM)[:-1]), "truncated: payload"),
        (_quad_packet(_quad_record(_SYM, shape=(8,))), "ANS lane 2"),
        (_quad_packet(_quad_record(_SYM, shape=(13,))), "ANS lane 3"),
    ],
)
def test_quad_header_errors(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError, match=message):
        decompress(blob)
    if not message.startswith("ANS lane"):  # found by parse, not by the decoder
        with pytest.raises(CorruptPacketError, match=message):
            inspect(blob)


def test_varint_len_is_the_length_of_the_varint() -> None:
    def leb128(v: int) -> bytes:  # the definition, one group at a time
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)

    edges = [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**62, (1 << 63) - 1]
    for value in [*edges, *range(0, 40_000, 7)]:
        assert varint(value) == leb128(value), value
        assert varint_len(value) == len(leb128(value)), value
    assert varint(5) == b"\x05" and varint(np.int64(127)) == b"\x7f"  # the one-byte table
    for bad in (-1, 1 << 63):
        with pytest.raises(ValueError, match="varint out of range"):
            varint_len(bad)
