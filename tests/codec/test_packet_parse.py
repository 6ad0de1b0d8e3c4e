"""packet.parse's fast paths: the reader's one-call reads, the records built without their
dataclass __init__, the float32/float64 overflow test in binary64 arithmetic."""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tenfold.codec import TargetRate, compress
from tenfold.codec.errors import CorruptPacketError
from tenfold.codec.packet import (
    BFLOAT16,
    WIRE_DTYPES,
    Record,
    TensorInfo,
    _levels_overflow,
    _Reader,
    parse,
)

GOLDEN = Path(__file__).parent / "golden"


def _packets() -> list[bytes]:
    rng = np.random.default_rng(5)
    tensors = {f"t{i}": rng.laplace(size=int(rng.integers(1, 3000))).astype(np.float32)
               for i in range(12)}  # fmt: skip
    tensors["h"] = rng.normal(size=(3, 40)).astype(np.float16)
    tensors["d"] = rng.normal(size=200)
    tensors["c"] = np.zeros(7, np.float32)
    tensors["e"] = np.zeros((0, 3), np.float32)
    out = [compress(tensors, TargetRate(r)) for r in (0.25, 1.0, 6.0)]
    # version 4: ans-quads records (a few levels: Laplace values clipped at 2 scales)
    quads = {f"q{i}": np.clip(rng.laplace(size=65_536 + i), -2, 2).astype(dtype)
             for i, dtype in enumerate([np.float32, np.float64, np.float16, np.float32])}  # fmt: skip
    out.append(compress(quads, TargetRate(1.0)))
    assert {t.mode for t in parse(np.frombuffer(out[-1], np.uint8)).info.tensors} == {"ans-quads"}
    return out + [p.read_bytes() for p in sorted(GOLDEN.glob("*.bin"))]


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b)
        )
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("blob", _packets(), ids=lambda b: f"{len(b)}B")
def test_parsed_records_are_what_their_constructors_build(blob: bytes) -> None:
    packet = parse(np.frombuffer(blob, np.uint8))
    assert packet.records
    for rec in packet.records:
        for obj, cls in ((rec, Record), (rec.info, TensorInfo)):
            names = [f.name for f in dataclasses.fields(cls)]
            assert sorted(vars(obj)) == sorted(names)  # every field set, nothing else
            rebuilt = cls(**{k: getattr(obj, k) for k in names})
            for k in names:
                if k != "info":
                    assert _same(getattr(obj, k), getattr(rebuilt, k)), (cls.__name__, k)
        with pytest.raises(dataclasses.FrozenInstanceError):
            rec.info.name = "x"  # type: ignore[misc]
        assert hash(rec.info) == hash(dataclasses.replace(rec.info))
    assert [t.name for t in packet.info.tensors] == [r.info.name for r in packet.records]


def _boundary_products() -> list[tuple[int, int, float]]:
    cases = []
    for top in (65504.0, 65520.0, float(np.finfo(np.float32).max), 2.0**128 - 2.0**103,
                2.0**128 - 2.0**119, 2.0**128, 1.7e308):  # fmt: skip
        for q in (1, 3, 32767, -32767, 65535):
            for k in range(-3, 4):
                step = abs(top / q)
                for _ in range(abs(k)):
                    step = math.nextafter(step, math.inf if k > 0 else 0.0)
                cases.append((min(q, 0), max(q, 0), step))
    return cases


@pytest.mark.parametrize("code", sorted(WIRE_DTYPES))
def test_levels_overflow_matches_numpys_cast(code: int) -> None:
    wire = WIRE_DTYPES[code]
    rng = np.random.default_rng(code)
    cases = _boundary_products()
    cases += [(int(rng.integers(-32767, 1)), int(rng.integers(0, 65536)), float(s))
              for s in 10.0 ** rng.uniform(-300, 308, size=300)]  # fmt: skip
    for qmin, qmax, step in cases:
        levels = np.array([qmin, qmax], dtype=np.float64)
        with np.errstate(over="ignore"):
            want = not bool(np.isfinite(wire.cast(levels * step)).all())
        assert _levels_overflow(wire, qmin, qmax, step) == want, (wire.name, qmin, qmax, step)
    assert wire is not BFLOAT16 or _levels_overflow(wire, 0, 1, 2.0**128 - 2.0**119)


def _reader(data: bytes) -> _Reader:
    r = _Reader(memoryview(data), len(data))
    r.where = (3, "w")
    return r


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated: x needs 1 bytes, 0 left (in tensor 3 'w', at byte 0)"),
        (b"\x80", "truncated: x needs 1 bytes, 0 left (in tensor 3 'w', at byte 1)"),
        (b"\x80\x00", "x: non-minimal varint (in tensor 3 'w', at byte 2)"),
        (b"\xff" * 10, "x: varint longer than 9 bytes (in tensor 3 'w', at byte 9)"),
    ],
)
def test_reader_varint_failures(data: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError) as err:
        _reader(data).varint("x")
    assert str(err.value) == message


def test_reader_reads() -> None:
    r = _reader(b"\x05\xac\x02\x00\x00\x80\x3f")
    assert (r.varint("a"), r.varint("b"), r.u8("c"), r.pos) == (5, 300, 0, 4)
    with pytest.raises(CorruptPacketError, match=r"^truncated: f needs 4 bytes, 3 left \("):
        r.unpack(struct.Struct("<f"), "f")
    assert r.pos == 4
    assert bytes(r.take(3, "t")) == b"\x00\x80\x3f" and r.pos == 7
    with pytest.raises(CorruptPacketError, match=r"^truncated: u needs 1 bytes, 0 left \("):
        r.u8("u")
    r.where = (0, None)
    with pytest.raises(CorruptPacketError, match=r"\(in tensor 0, at byte 7\)$"):
        r.skip(1, "s")


def test_truncated_record_header_messages() -> None:
    # a float32 record cut inside w_max: the message names that field, at its offset
    body = b"TFLD\x01\x01" + b"\x01w\x02\x01\x04" + b"\x03\x08" + b"\x00\x00\xc0\x7f"
    body += struct.pack("<f", -1.0) + b"\x00\x00"
    blob = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(CorruptPacketError) as err:
        parse(np.frombuffer(blob, np.uint8))
    assert str(err.value) == "truncated: w_max needs 4 bytes, 2 left (in tensor 0 'w', at byte 21)"
