"""Resource guards: declared sizes are checked before any allocation; checksum coverage.

A forged packet (valid CRC) claiming 2**40 values - in every coding mode, to decompress,
inspect and accumulate - must fail at once with CorruptPacketError, and without
allocating: tracemalloc (numpy reports its buffers to it) sees a peak of a few kB. Every
single-bit flip of small packets of every mode is caught, by every entry point.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest

from tenfold.codec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    Lossless,
    accumulate,
    compress,
    decompress,
    inspect,
)
from tenfold.codec.packet import (
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_HUFFMAN,
    MODE_RAW,
    encode_record_header,
    packet_header,
)

HUGE = (1 << 20, 1 << 20)  # 2**40 values
F32 = np.dtype(np.float32)


def sealed(*records: bytes) -> bytes:
    """A packet with a valid CRC around forged records."""
    body = packet_header(len(records)) + b"".join(records)
    return body + struct.pack("<I", zlib.crc32(body))


def huge_packet(mode: int) -> bytes:
    common = {"name": "w", "dtype": F32, "shape": HUGE, "entropy": None}
    if mode == MODE_CONSTANT:
        rec = encode_record_header(**common, mode=mode, bits=0, w_min=1.0, w_max=1.0)
    elif mode == MODE_RAW:
        rec = encode_record_header(**common, mode=mode, bits=32, w_min=0.0, w_max=1.0)
    elif mode == MODE_BITPACK:
        rec = encode_record_header(**common, mode=mode, bits=8, w_min=0.0, w_max=1.0)
    else:  # two equally long codes; streams as long as 2**38 one-bit codes need
        rec = encode_record_header(
            **common,
            mode=mode,
            bits=1,
            w_min=0.0,
            w_max=1.0,
            table=b"\x11",
            stream_nbytes=[1 << 35] * 4,
        )
    return sealed(rec + b"\x00" * 64)  # a few payload bytes, nowhere near what is claimed


ENTRY_POINTS: dict[str, Callable[[bytes, int], object]] = {
    "decompress": lambda b, limit: decompress(b, max_output_bytes=limit),
    "inspect": lambda b, limit: inspect(b, max_output_bytes=limit),
    "accumulate": lambda b, limit: accumulate(
        b, {"w": np.zeros(1, np.float32)}, max_output_bytes=limit
    ),
}


def peak_bytes_while(fn: Callable[[], object]) -> tuple[int, BaseException | None]:
    """tracemalloc's peak (bytes) while running ``fn``, and what it raised."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, error


def test_tracemalloc_sees_numpy_allocations() -> None:
    """The measuring stick works: a 4 MB numpy buffer shows up in the peak."""
    peak, _ = peak_bytes_while(lambda: np.ones(1 << 20, np.float32))
    assert peak >= 4 << 20


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    "mode", [MODE_CONSTANT, MODE_RAW, MODE_BITPACK, MODE_HUFFMAN], ids=lambda m: f"mode{m}"
)
def test_2_pow_40_values_fail_at_once_without_allocating(mode: int, entry: str) -> None:
    blob = huge_packet(mode)
    call = ENTRY_POINTS[entry]
    peak, error = peak_bytes_while(lambda: call(blob, DEFAULT_MAX_OUTPUT_BYTES))
    assert isinstance(error, CorruptPacketError), repr(error)
    assert "max_output_bytes" in str(error)
    assert peak < 256 << 10, f"{peak} bytes allocated"


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("mode", [MODE_RAW, MODE_BITPACK, MODE_HUFFMAN], ids=lambda m: f"mode{m}")
def test_claims_beyond_the_packet_fail_even_with_no_output_limit(mode: int, entry: str) -> None:
    """With the output limit lifted, the payload length check still stops it first."""
    peak, error = peak_bytes_while(lambda: ENTRY_POINTS[entry](huge_packet(mode), 1 << 62))
    assert isinstance(error, CorruptPacketError), repr(error)
    assert "truncated" in str(error) or "impossible" in str(error)
    assert peak < 256 << 10, f"{peak} bytes allocated"


def test_default_output_limit_is_4_gib() -> None:
    assert DEFAULT_MAX_OUTPUT_BYTES == 4 << 30
    # a legitimate packet under a tight explicit limit is refused the same way
    blob = compress({"w": np.zeros(1000, np.float32) + np.arange(1000)})
    with pytest.raises(CorruptPacketError, match="max_output_bytes=3999"):
        decompress(blob, max_output_bytes=3999)


def _small_packets() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    w = rng.laplace(0, 0.05, 64).astype(np.float32)
    return {
        "huffman": compress({"w": w}, EntropyAdaptive(F=1.0, seed=0)),
        "bitpack": compress({"w": np.linspace(-1, 1, 24, dtype=np.float32)}, Fixed(3)),
        "raw": compress({"w": w[:8].astype(np.float64)}, Lossless()),
        "constant+empty": compress(
            {"c": np.ones(5, np.float16), "e": np.zeros((0, 3), np.float32)}, Fixed(8)
        ),
        "no tensors": compress({}),
    }


@pytest.mark.parametrize("kind", list(_small_packets()))
def test_every_single_bit_flip_is_caught_by_every_entry_point(kind: str) -> None:
    blob = _small_packets()[kind]
    assert inspect(blob).tensors is not None
    targets = {
        k: np.zeros(v.shape, np.float64 if v.dtype == np.float64 else np.float32)
        for k, v in decompress(blob).items()
    }
    for i in range(8 * len(blob)):
        flipped = bytearray(blob)
        flipped[i // 8] ^= 1 << (i % 8)
        bad = bytes(flipped)
        with pytest.raises(CorruptPacketError):
            decompress(bad)
        with pytest.raises(CorruptPacketError):
            inspect(bad)
        with pytest.raises(CorruptPacketError):
            accumulate(bad, targets)
        assert not any(t.any() for t in targets.values())  # nothing was added
