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

from tenfold.codec import CorruptPacketError, Fixed, Lossless, compress, decompress, inspect
from tenfold.codec.packet import (
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_HUFFMAN,
    MODE_RAW,
    encode_record_header,
    finish_packet,
    packet_header,
    varint,
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
        (b"TFLD\x04\x00" + b"\x00" * 4, "unsupported format version 4"),
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
        (packet(record(mode=7) + RAW4), "unknown coding mode 7"),
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
