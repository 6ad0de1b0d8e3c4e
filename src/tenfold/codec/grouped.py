"""The group section (format version 3): small tensors coded as one ANS stream.

A record header, code table and four lane states cost tens of bytes per tensor, more than
a small tensor's payload at a few bits per value (a 64-value bias at 1 bit/value: 8
bytes). Group members send only their name, shape and step; their symbols, level
``qmin + i`` for symbol ``i`` (one alphabet for the group), are concatenated in packet
order and coded once, with one frequency table (docs/FORMAT.md, section 6B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tenfold.codec import ans
from tenfold.codec.midtread import LEVEL_LIMIT, _symbols_kernel
from tenfold.codec.packet import Record, WireDtype, encode_group_header

__all__ = ["Member", "decode_group", "encode_group", "fits", "member_values"]


@dataclass(frozen=True)
class Member:
    """A tensor to be coded in the group: its 1-D values (float32/float64), wire dtype,
    range and step."""

    x: np.ndarray
    wire: WireDtype
    w_min: float
    w_max: float
    step: float

    def levels(self) -> tuple[int, int]:
        """Its lowest and highest level, clamped to ``+-LEVEL_LIMIT``."""
        inv = 1.0 / self.step
        clamp = float(LEVEL_LIMIT)
        # clamped before the floor, which raises OverflowError for an inf (w * inv beyond
        # binary64); floor commutes with a clamp to integer bounds
        lo = min(max(self.w_min * inv + 0.5, -clamp), clamp)
        hi = min(max(self.w_max * inv + 0.5, -clamp), clamp)
        return math.floor(lo), math.floor(hi)


def _span(members: list[Member]) -> tuple[int, int]:
    lows, highs = zip(*(m.levels() for m in members), strict=True)
    qmin, qmax = min(lows), max(highs)
    return qmin, (0 if qmax == qmin else math.ceil(math.log2(qmax - qmin + 1)))


def fits(members: list[Member]) -> tuple[list[Member], list[Member]]:
    """``(kept, refused)``: the members whose every decodable level (the group's alphabet
    at their step) is finite in their dtype; refused ones must be coded on their own."""
    kept = list(members)
    refused: list[Member] = []
    while kept:
        qmin, bits = _span(kept)
        ends = np.array([qmin, qmin + (1 << bits) - 1], np.float64)
        with np.errstate(over="ignore"):
            bad = [m for m in kept if not np.isfinite(m.wire.cast(ends * m.step)).all()]
        if not bad:
            break
        refused += bad
        kept = [m for m in kept if all(m is not b for b in bad)]
    return kept, refused


def encode_group(members: list[Member]) -> list[bytes | np.ndarray]:
    """The group section's bytes (header, then the 4 lanes) for these members, in order."""
    qmin, bits = _span(members)
    qmax = qmin + (1 << bits) - 1
    total = sum(m.x.size for m in members)
    sym = np.empty(total, dtype=np.uint16)
    hist = np.zeros((4, 1 << bits), dtype=np.int64)
    offset = 0
    for m in members:
        end = offset + m.x.size
        _symbols_kernel(m.x, 1.0 / m.step, qmin, qmax, sym[offset:end], hist)
        offset = end
    counts = hist.sum(axis=0)
    scale_bits = ans.scale_bits_for(int(np.count_nonzero(counts)))
    freq = ans.quantize_frequencies(counts, scale_bits)
    lanes = ans.encode(sym, freq, scale_bits)
    header = encode_group_header(
        bits=bits,
        qmin=qmin,
        scale_bits=scale_bits,
        table=ans.pack_frequencies(freq),
        lane_nbytes=[lane.size for lane in lanes],
    )
    return [header, *lanes]


def member_values(levels: np.ndarray, rec: Record) -> np.ndarray:
    """The member's decoded values: ``float64(level) * step`` cast once to its dtype."""
    assert rec.info.step is not None
    n = rec.info.num_values
    part = levels[rec.group_offset : rec.group_offset + n]
    return rec.wire.cast(part * rec.info.step)


def decode_group(data: np.ndarray, records: list[Record]) -> np.ndarray | None:
    """The levels of the packet's group (None: corrupt lanes); ``records`` are its members."""
    first = records[0]
    total = sum(rec.info.num_values for rec in records)
    assert first.freq is not None and first.stream_starts is not None
    assert first.stream_ends is not None
    lut = np.arange(first.qmin, first.qmin + (1 << first.info.bits), dtype=np.float64)
    table = ans.build_decode_table(first.freq, first.scale_bits, lut)
    levels = np.empty(total, dtype=np.float64)
    status = ans.decode(data, first.stream_starts, first.stream_ends, table, levels, add=False)
    return None if status else levels
