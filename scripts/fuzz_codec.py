"""Fuzz the codec's decoders with mutated packets (run by hand; prints a JSON summary).

    .venv/bin/python scripts/fuzz_codec.py --iterations 1000000 --jobs 2 --seed 0
    .venv/bin/python scripts/fuzz_codec.py --seed 0 --reproduce 123456   # one mutant, verbose

A pool of valid packets (many tensor kinds: float16/32/64, shapes incl. 0-d and empty,
constant, weight-like, extreme ranges, 1-6 tensors; every policy, hence every coding mode)
is mutated - bit flips, byte overwrites, truncation, extension, splices of two packets,
header bytes set to extreme values, varints replaced by huge ones, runs of 00/FF, chunks
duplicated - and, half of the time, the CRC is re-sealed so the checks behind the checksum
are exercised. A "forge" mutation builds a whole packet from random header fields (shapes
up to 2**62 values, bad dtypes/modes/bits, NaN ranges, random or valid Huffman code
tables with plausible stream sizes, random payloads) under a valid CRC, to reach the
payload decoders with hostile input. Each mutant goes to ``decompress``, ``inspect``,
``accumulate`` and ``decompress(out=...)`` (into arrays of the original's layout).

The only acceptable outcomes are success or ``CorruptPacketError`` (``PacketMismatchError``
for ``accumulate`` and ``decompress`` into given arrays). A failure is any other exception, a call slower than
``--call-timeout`` seconds, a worker that stops making progress for ``--hang-seconds``
(killed by the watchdog: a hang), or a worker that dies (an interpreter crash, e.g. a
segfault in a kernel). Mutant ``i`` depends only on ``(--seed, --pool, i)``, so every
failure is printed with the index that ``--reproduce`` replays. Exit code 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from typing import Any

import numpy as np

MAX_OUTPUT = 1 << 24  # keep every successful decode small (16 MiB)


# ---- the pool of valid packets -------------------------------------------------------------


def _tensor(rng: np.random.Generator, kind: str, dtype: type) -> np.ndarray:
    shape = tuple(int(s) for s in rng.integers(0, 6, size=int(rng.integers(0, 4))))
    if kind == "big":
        shape = (int(rng.integers(100, 3000)),)
    n = int(np.prod(shape))
    if kind == "constant":
        return np.full(shape, rng.normal(), dtype=dtype)
    if kind == "extreme":
        fi = np.finfo(dtype)
        vals = rng.choice([fi.min, fi.max, fi.tiny, -fi.tiny, 0.0, fi.smallest_subnormal], n)
        return vals.astype(dtype).reshape(shape)
    x = rng.laplace(0.0, 0.05, n)
    if n:
        x[rng.integers(0, n)] *= 30
    return x.astype(dtype).reshape(shape)


def build_pool(seed: int, size: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Valid packets, with the shapes/dtypes of what they hold (for accumulate targets)."""
    from tenfold.codec import (
        EntropyAdaptive,
        Fixed,
        GradientRMS,
        Lossless,
        RelativeStep,
        TargetRate,
        compress,
        inspect,
    )

    rng = np.random.default_rng(seed)
    policies = [
        EntropyAdaptive(),
        EntropyAdaptive(F=1.0, M=6, c=2),
        EntropyAdaptive(F=0.5, M=10, c=0),
        Fixed(1),
        Fixed(2),
        Fixed(4),
        Fixed(8),
        Fixed(12),
        Fixed(16),
        Fixed(20),
        Fixed(24),
        Lossless(),
        GradientRMS(3.0),
        GradientRMS(0.5, c0=0.1),
        # version 2: mid-tread steps, per-tensor rate control, ANS
        TargetRate(bits_per_param=3.0, coder="huffman"),
        # version 3: packet-level rate control, small tensors in the group section
        TargetRate(bits_per_param=1.0),
        TargetRate(bits_per_param=0.2),
        TargetRate(bits_per_param=4.0),
        RelativeStep(alpha=0.5),
        RelativeStep(alpha=4.0),
    ]
    names = ["w", "fc1.weight", "bias", "", "ünïcödé", "x" * 300]
    pool = []
    for i in range(size):
        tensors = {}
        for j in range(int(rng.integers(0, 7))):
            kind = str(rng.choice(["normal", "normal", "big", "big", "constant", "extreme"]))
            dtype = [np.float16, np.float32, np.float64][int(rng.integers(0, 3))]
            tensors[f"{names[int(rng.integers(0, len(names)))]}{i}.{j}"] = _tensor(rng, kind, dtype)
        policy = policies[i % len(policies)]
        grad = {k: float(rng.uniform(0, 10)) for k in tensors}
        blob = compress(tensors, policy, grad_rms=grad)
        pool.append((blob, {k: (v.shape, v.dtype) for k, v in tensors.items()}))
    # version 3's ANS over pairs: tensors of 2**16 values or more at a few bits per value
    for k, rate in enumerate([0.25, 1.0, 2.0]):
        dtype = [np.float32, np.float16, np.float64][k]  # every decoder kernel is warmed up
        big = {f"big{k}": rng.laplace(0.0, 0.05, 65_536 + 2 * k + 1).astype(dtype)}
        blob = compress(big, TargetRate(bits_per_param=rate))
        pool.append((blob, {n: (v.shape, v.dtype) for n, v in big.items()}))
    # pairs at 15 bits of precision (a tensor large enough for api.PAIR_WIDE_SCALE_BITS),
    # which the packed decoder looks up through anspairs.compact_table's tables
    wide = {"wide": rng.laplace(0.0, 0.05, 1 << 20).astype(np.float32)}
    blob = compress(wide, TargetRate(bits_per_param=1.0))
    assert inspect(blob).tensors[0].mode == "ans-pairs", "the wide packet must hold pairs"
    pool.append((blob, {n: (v.shape, v.dtype) for n, v in wide.items()}))
    # version 4's ANS over quads: as large, at most 4 levels (values clipped at 2 scales:
    # N = 2; non-negative ones: N = 1), every count modulo 4, every decoder output dtype
    for k, dtype in enumerate([np.float32, np.float16, np.float64, np.float32]):
        x = np.clip(rng.laplace(0.0, 0.05, 65_536 + k), -0.1, 0.1)
        quads = {f"quads{k}": (np.abs(x) if k == 3 else x).astype(dtype)}
        blob = compress(quads, TargetRate(bits_per_param=1.0))
        assert blob[4] == 4, "the pool's quad packets must hold ans-quads records"
        pool.append((blob, {n: (v.shape, v.dtype) for n, v in quads.items()}))
    return pool + golden_packets()


def golden_packets() -> list[tuple[bytes, dict[str, Any]]]:
    """The committed golden packets (every format version, bfloat16 and earlier encoders'
    packets included), when the tests' folder is there."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "tests" / "codec" / "golden"
    out = []
    for path in sorted(folder.glob("*.bin")):
        meta = json.loads(path.with_suffix(".json").read_text())
        targets = {  # bfloat16 decodes to float32
            t["name"]: (tuple(t["shape"]), np.dtype(t["dtype"].replace("bfloat16", "float32")))
            for t in meta["info"]["tensors"]
        }
        out.append((path.read_bytes(), targets))
    return out


# ---- mutations -----------------------------------------------------------------------------


def _seal(data: bytes | bytearray) -> bytes:
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


_EXTREME_INTS = [0, 1, 2, 3, 7, 8, 15, 16, 17, 24, 25, 64, 65, 127, 128, 255, 256, 4096, 65535]
_EXTREME_INTS += [65536, 1 << 20, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, (1 << 63) - 1]


def _varint(value: int) -> bytes:
    from tenfold.codec.packet import varint

    return varint(min(value, (1 << 63) - 1))  # the format's largest varint


def _rand_varint(rnd: random.Random) -> bytes:
    if rnd.random() < 0.1:  # malformed: non-minimal or too long
        return rnd.choice([b"\x80\x00", b"\xff" * 10, b"\x81\x80\x00", b"\x80"])
    return _varint(rnd.choice(_EXTREME_INTS) if rnd.random() < 0.3 else rnd.randint(0, 40))


def _float_bytes(rnd: random.Random, itemsize: int, value: float) -> bytes:
    fmt = {2: "<e", 4: "<f", 8: "<d"}[itemsize]
    try:
        return struct.pack(fmt, value)
    except OverflowError:
        return struct.pack(fmt, float("inf"))


_FIELDS = ["name", "dtype", "ndim", "dims", "mode", "bits", "entropy", "range"]
_FIELDS += ["table", "streams", "payload"]


def _forge_record(rnd: random.Random) -> tuple[bytes, int]:
    """One record from random header fields: all plausible but (usually) one hostile field.

    Returns the record and a tag: the version it needs (0 or 1: version 1; 2; 3 for
    ans-pairs; 4 for ans-quads), or ``-1 - n`` for a group member of ``n`` values (version
    3; :func:`forge` appends the group section).

    Plausible fields get the forged packet past the header checks to the payload decoders
    (random Huffman streams and bit-packed data under a valid header); the hostile one
    exercises one check at a time.
    """
    from tenfold.codec import ans, huffman

    bad = rnd.choice([None, None, None, None, *_FIELDS])
    if rnd.random() < 0.2:
        return _forge_member(rnd, bad)
    quant = 1 if rnd.random() < 0.35 else 0  # version 2: the mid-tread (step) quantizer
    name = rnd.choice([b"w", b"", "é".encode(), b"a" * rnd.randint(0, 40)])
    if bad == "name":
        name = rnd.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"])
    out = [_varint(len(name)) if bad != "name" or rnd.random() < 0.5 else _rand_varint(rnd)]
    out.append(name)
    dtype = rnd.choice([1, 2, 3]) if bad != "dtype" else rnd.choice([0, 4, 255])
    itemsize = {1: 2, 2: 4, 3: 8}.get(dtype, 4)
    width = 8 * itemsize
    ndim = rnd.choice([0, 1, 1, 1, 2, 3]) if bad != "ndim" else rnd.choice([64, 65, 255])
    out.append(bytes([dtype, ndim]))
    dims = []
    for _ in range(min(ndim, 6)):
        d = rnd.choice([0, 1, 2, 3, 5, 17, 100, 1000, 5000])
        if bad == "dims" and rnd.random() < 0.5:
            d = rnd.choice(_EXTREME_INTS)
        dims.append(d)
        out.append(_varint(d))
    if ndim > 6:  # the remaining dims: ones
        out.append(b"\x01" * (ndim - 6))
    n = 1
    for d in dims:
        n *= d
    mode = rnd.choice([1, 1, 4, 4, 2, 2, 0, 3, 6, 7])
    if bad == "mode":  # a whole mode byte: unknown, or a step-only coder without its quantizer
        mode = rnd.choice([5, 6, 7, 8, 0x25, 0x27, 0x13, 255])
    if quant and mode == 3:
        mode = 4
    if mode in (6, 7):  # ANS over pairs (version 3) or quads (version 4): step records
        quant = 1
    if n == 0 and bad is None:
        mode, quant = 3, 0
    top = 24 if not quant else 16
    bits = {
        0: 0,
        1: rnd.randint(1, 16),
        2: rnd.randint(1, min(top, width - 1)),
        3: width,
        4: rnd.randint(1, 16),
        6: rnd.randint(1, 5),
        7: rnd.randint(1, 2),
    }.get(mode, 8)
    if bad == "bits":
        bits = rnd.choice([0, 17, 24, 25, 32, 64, 255])
    out.append(bytes([mode | (quant << 4) if bad != "mode" else mode, bits]))
    entropy = rnd.choice([b"\x00\x00\xc0\x7f", struct.pack("<f", rnd.uniform(0, 24))])
    if bad == "entropy":
        entropy = rnd.choice([b"\x01\x00\xc0\x7f", struct.pack("<f", -1.0), b"\x00\x00\x80\x7f"])
    out.append(entropy)
    lo = rnd.choice([0.0, -1.0, -1e-3, -65504.0, -0.5])
    hi = lo if mode == 0 else rnd.choice([lo + 1e-3, 1.0, 2.0, 65504.0, lo + 1e-30])
    if n == 0 and bad is None:
        lo = hi = 0.0
    if bad == "range":
        lo, hi = rnd.choice([(float("nan"), 1.0), (0.0, float("inf")), (2.0, 1.0), (1.0, 1.0)])
    out += [_float_bytes(rnd, itemsize, lo), _float_bytes(rnd, itemsize, hi)]
    if quant:  # step (binary64), lowest level (zigzag varint), clamp count
        step = rnd.choice([1e-3, 0.5, 1.0, 1e300, 5e-324, -1.0, float("nan")])
        if bad is None:
            step = rnd.choice([1e-3, 0.01, 0.5, 1.0])
        out.append(struct.pack("<d", step))
        out.append(_varint(rnd.choice([0, 1, 2, 7, 65534, 65535, 65536]) if bad else 0))
        out.append(_varint(rnd.choice([0, 0, 1, n, n + 1])))
    payload_len = 0
    per = {4: 1, 6: 2, 7: 4}.get(mode, 1)  # values per ANS symbol (ans, pairs, quads)
    if mode in (4, 6, 7):  # ANS: a valid (or random) table, plausible (or not) lane sizes
        k = 1 << min(max(bits, 1) * per, 16)
        scale = rnd.choice([12, 12, 14, 16]) if bad != "table" else rnd.choice([0, 1, 17, 255])
        out.append(bytes([scale]))
        if bad != "table" and 1 <= scale <= 16:
            used = rnd.randint(1, min(k, 1 << (scale - 1), 512))
            counts = np.zeros(k, np.int64)
            counts[rnd.sample(range(min(k, 4096)), min(used, min(k, 4096)))] = 1
            counts[counts > 0] *= np.array(
                [rnd.choice([1, 3, 1000]) for _ in range(int(counts.sum()))]
            )
            table = ans.pack_frequencies(ans.quantize_frequencies(counts, scale))
        else:
            table = rnd.randbytes(rnd.randint(0, 64))
        out += [_varint(len(table)), table]
        symbols = (n + per - 1) // per
        for lane in range(4):
            ns = (symbols - lane + 3) // 4 if symbols > lane else 0
            size = 4 + 2 * rnd.randint(0, ns)
            if bad == "streams" and rnd.random() < 0.5:
                size = rnd.choice([*_EXTREME_INTS, 3, 5])
            out.append(_varint(size))
            payload_len += size
    elif mode == 1:  # Huffman: a valid (or random) code table, plausible (or not) stream sizes
        k = 1 << min(max(bits, 1), 16)
        used = rnd.randint(2, min(k, 4096))
        if bad != "table" and huffman.length_limit(used) is not None:
            freq = np.zeros(k, np.int64)
            chosen = rnd.sample(range(k), used) if k <= 4096 else list(range(used))
            freq[chosen] = [rnd.choice([1, 1, 2, 10, 1000]) for _ in range(used)]
            lengths = huffman.code_lengths(freq, int(huffman.length_limit(used) or 14))
            table = huffman.pack_lengths(lengths)
            lmin, lmax = int(lengths[lengths > 0].min()), int(lengths.max())
        else:
            table = rnd.randbytes(rnd.randint(0, 64))
            lmin, lmax = 1, 14
        out += [_varint(len(table)), table]
        for stream in range(4):
            ns = (n - stream + 3) // 4 if n > stream else 0
            size = rnd.randint((ns * lmin + 7) // 8, (ns * lmax + 7) // 8)
            if bad == "streams" and rnd.random() < 0.5:
                size = rnd.choice(_EXTREME_INTS)
            out.append(_varint(size))
            payload_len += size
    elif mode == 2:
        payload_len = (n * max(bits, 1) + 7) // 8
    elif mode == 3:
        payload_len = n * itemsize
    if bad == "payload":
        payload_len += rnd.choice([-1, 1, -8, 100])
    payload_len = max(0, min(payload_len, 1 << 16))
    fill = rnd.random()
    if fill < 0.8:
        payload = rnd.randbytes(payload_len)
    elif mode == 3 and 0 < n <= 1 << 14:  # raw values that satisfy the header's range
        with np.errstate(all="ignore"):
            values = np.linspace(lo, hi, n).astype(np.dtype(f"<f{itemsize}"))
        payload = values.tobytes()[:payload_len]
    else:
        payload = rnd.choice([b"\x00", b"\xff"]) * payload_len
    out.append(payload)
    return b"".join(out), {6: 3, 7: 4}.get(mode, int(bool(quant or mode == 4)) * 2)


def _forge_member(rnd: random.Random, bad: str | None) -> tuple[bytes, int]:
    """A group member's record (version 3): name, dtype, shape, mode 0x15, step."""
    name = rnd.choice([b"b", b"", b"a" * rnd.randint(0, 20)])
    dtype = rnd.choice([1, 2, 3, 4]) if bad != "dtype" else rnd.choice([0, 5, 255])
    dims = [rnd.choice([1, 2, 3, 7, 64, 300]) for _ in range(rnd.choice([0, 1, 1, 2]))]
    if bad == "dims":
        dims.append(rnd.choice([0, *_EXTREME_INTS]))
    mode = 0x15 if bad != "mode" else rnd.choice([0x05, 0x25, 0x15])
    step = rnd.choice([1e-3, 0.01, 0.5]) if bad != "range" else rnd.choice([0.0, -1.0, 1e300])
    out = [_varint(len(name)), name, bytes([dtype, len(dims)]), *(_varint(d) for d in dims)]
    out += [bytes([mode]), struct.pack("<d", step)]
    n = 1
    for d in dims:
        n *= d
    return b"".join(out), -max(n, 0) - 1  # a negative tag: a member of n values


def _forge_group(rnd: random.Random, total: int) -> bytes:
    """The group section for members of ``total`` values: a valid (or random) frequency
    table, plausible (or not) lane sizes, random lanes."""
    from tenfold.codec import ans

    bits = rnd.choice([0, 1, 2, 3, 4, 8]) if rnd.random() < 0.95 else rnd.choice([17, 255])
    k = 1 << min(bits, 16)
    qmin = rnd.choice([0, -1, -2, -7, -32767]) if rnd.random() < 0.95 else 40000
    scale = rnd.choice([12, 12, 13]) if rnd.random() < 0.95 else rnd.choice([0, 17])
    out = [bytes([bits]), _varint(2 * -qmin - 1 if qmin < 0 else 2 * qmin), bytes([scale])]
    if rnd.random() < 0.9 and 1 <= scale <= 16:
        counts = np.zeros(k, np.int64)
        used = rnd.sample(range(k), rnd.randint(1, min(k, 64)))
        counts[used] = [rnd.choice([1, 5, 1000]) for _ in used]
        table = ans.pack_frequencies(ans.quantize_frequencies(counts, scale))
    else:
        table = rnd.randbytes(rnd.randint(0, 16))
    out += [_varint(len(table)), table]
    lanes = []
    for lane in range(4):
        ns = (total - lane + 3) // 4 if total > lane else 0
        size = 4 + 2 * rnd.randint(0, min(ns, 1 << 12))
        if rnd.random() < 0.05:
            size = rnd.choice([*_EXTREME_INTS, 3, 5])
        out.append(_varint(size))
        lanes.append(min(size, 1 << 14))
    body = b"".join(rnd.randbytes(size) for size in lanes)
    if rnd.random() < 0.5:  # plausible lane states (>= 2**16) at each lane's start
        body = b"".join(b"\x00\x00\x01\x00" + rnd.randbytes(max(0, size - 4)) for size in lanes)
    return b"".join(out) + body


def forge(rnd: random.Random) -> bytes:
    """A whole packet (valid CRC) from random header fields; see :func:`_forge_record`."""
    count = rnd.choice([0, 1, 1, 1, 2, 3])
    forged = [_forge_record(rnd) for _ in range(count)]
    records = [r for r, _ in forged]
    if rnd.random() < 0.1:
        count = rnd.choice([count + 1, max(0, count - 1), 1 << 40])
    # the version the records need, except now and then another one (or an unknown one)
    members = [-tag - 1 for _, tag in forged if tag < 0]
    version = max([1, 3 if members else 1, *(tag for _, tag in forged)])
    if rnd.random() < 0.05:
        version = rnd.choice([1, 2, 3, 4, 5])
    if members and rnd.random() < 0.97:
        records.append(_forge_group(rnd, sum(members)))
    body = b"TFLD" + bytes([version]) + _varint(count) + b"".join(records)
    return body + struct.pack("<I", zlib.crc32(body))


KINDS = [
    "flip",
    "flips",
    "overwrite",
    "truncate",
    "extend",
    "splice",
    "field",
    "varint",
    "run",
    "duplicate",
    "forge",
]


def mutate(rnd: random.Random, blob: bytes, other: bytes) -> tuple[str, bytes]:
    """One mutant of ``blob`` (``other``: a second pool packet, for splices)."""
    kind = rnd.choice(KINDS)
    if kind == "forge":
        return kind, forge(rnd)
    data = bytearray(blob)
    if kind == "flip":
        bit = rnd.randrange(8 * len(data))
        data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "flips":
        for _ in range(rnd.randint(2, 16)):
            bit = rnd.randrange(8 * len(data))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "overwrite":
        at = rnd.randrange(len(data))
        data[at : at + rnd.randint(1, 8)] = rnd.randbytes(rnd.randint(1, 8))
    elif kind == "truncate":
        del data[rnd.randrange(len(data)) :]
    elif kind == "extend":
        data += rnd.randbytes(rnd.randint(1, 64))
    elif kind == "splice":
        cut = rnd.randrange(len(data))
        data = data[:cut] + other[rnd.randrange(len(other)) :]
    elif kind == "field":  # a header-ish byte set to an extreme value
        at = rnd.randrange(min(len(data), 80))
        data[at] = rnd.choice([0x00, 0x01, 0x0F, 0x10, 0x7F, 0x80, 0xFE, 0xFF])
    elif kind == "varint":  # a header-ish stretch replaced by a (huge, malformed) varint
        at = rnd.randrange(5, max(6, min(len(data) - 4, 120)))
        span = rnd.randint(1, 3)
        data[at : at + span] = _rand_varint(rnd)
    elif kind == "run":
        at = rnd.randrange(len(data))
        data[at : at + rnd.randint(1, 32)] = rnd.choice([b"\x00", b"\xff"]) * rnd.randint(1, 32)
    else:  # duplicate a chunk in place
        at = rnd.randrange(len(data))
        chunk = data[at : at + rnd.randint(1, 64)]
        data[at:at] = chunk
    if rnd.random() < 0.5 and len(data) >= 4:  # re-seal the checksum
        data = bytearray(_seal(data))
        kind += "+crc"
    return kind, bytes(data)


def mutant(seed: int, index: int, pool: list[tuple[bytes, dict[str, Any]]]) -> tuple:
    """Mutant ``index`` (deterministic in ``seed``, the pool and ``index``)."""
    rnd = random.Random(f"tenfold-fuzz/{seed}/{index}")
    blob, meta = pool[rnd.randrange(len(pool))]
    kind, data = mutate(rnd, blob, pool[rnd.randrange(len(pool))][0])
    return kind, data, meta


# ---- running the decoders ------------------------------------------------------------------


def run_one(data: bytes, meta: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """Feed one mutant to each entry point: ``(function, outcome, seconds, error)`` each."""
    from tenfold.codec import (
        CorruptPacketError,
        PacketMismatchError,
        accumulate,
        decompress,
        inspect,
    )

    def acc() -> object:
        out = {
            k: np.zeros(s, np.float64 if d == np.float64 else np.float32)
            for k, (s, d) in meta.items()
        }
        return accumulate(data, out, max_output_bytes=MAX_OUTPUT)

    def dec() -> object:
        arrays = decompress(data, max_output_bytes=MAX_OUTPUT)
        # what decodes must be usable: finite values (a NaN would poison every rank's mean)
        for k, v in arrays.items():
            if v.size and not np.isfinite(v).all():
                raise AssertionError(f"decompress returned non-finite values in {k!r}")
        return arrays

    def into() -> object:
        out = {k: np.empty(s, d) for k, (s, d) in meta.items()}
        return decompress(data, out=out, max_output_bytes=MAX_OUTPUT)

    results = []
    for name, call in (
        ("decompress", dec),
        ("inspect", lambda: inspect(data, max_output_bytes=MAX_OUTPUT)),
        ("accumulate", acc),
        ("decompress_into", into),
    ):
        t0 = time.perf_counter()
        error = ""
        try:
            call()
            outcome = "ok"
        except CorruptPacketError:
            outcome = "corrupt"
        except PacketMismatchError:
            if name in ("accumulate", "decompress_into"):
                outcome = "mismatch"
            else:
                outcome = "UNEXPECTED"
                error = "PacketMismatchError outside accumulate / decompress(out=)"
        except Exception as exc:  # the bug this script exists to find
            outcome = "UNEXPECTED"
            error = f"{exc!r}\n{traceback.format_exc()}"
        results.append((name, outcome, time.perf_counter() - t0, error))
    return results


def warm_up(pool: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Decode every valid packet once through every entry point, before anything is timed.

    numba compiles each kernel variant (dtype, add or store, the ANS refill variant) on its
    first call, or loads it from its on-disk cache: seconds on a fresh clone, which must not
    count as a slow decoder.
    """
    from tenfold.codec import ans, anspairs

    # Every ANS decoder variant, whether or not the pool happens to hold it: each output
    # dtype (uint16 = float16 bit patterns), store or add, branchy or branchless refill, a
    # read-only packet (bytes) or a writable copy (what a lane shorter than 4 bytes makes).
    sym = np.zeros(64, np.uint16)
    sym[::7] = 1
    freq = ans.quantize_frequencies(np.bincount(sym, minlength=2).astype(np.int64), 12)
    lanes = ans.encode(sym, freq, 12)
    sizes = np.array([lane.size for lane in lanes], dtype=np.int64)
    ends = np.cumsum(sizes)
    readonly = np.frombuffer(b"".join(lane.tobytes() for lane in lanes), np.uint8)
    for data in (readonly, readonly.copy()):
        for dtype in (np.float32, np.float64, np.uint16):
            table = ans.build_decode_table(freq, 12, np.zeros(2, dtype))
            for add in (False, True) if dtype != np.uint16 else (False,):
                for branchless in (False, True):
                    out = np.zeros(sym.size, dtype)
                    ans.decode(data, ends - sizes, ends, table, out, add=add, branchless=branchless)
    # the packed pair decoder's compact tables (from anspairs.COMPACT_MIN_SCALE_BITS), with
    # byte and 16-bit ranks: a mutated table may use more than 256 pairs
    for bits in (4, 5):
        k = 1 << bits
        x = np.linspace(-k / 2, k / 2 - 1, 4096)
        counts = np.ones(k * k, np.int64)
        freq = ans.quantize_frequencies(counts, anspairs.COMPACT_MIN_SCALE_BITS)
        lanes = anspairs.encode_level_pairs(
            x, 1.0, -k // 2, -k // 2, k // 2 - 1, bits, freq, anspairs.COMPACT_MIN_SCALE_BITS
        )
        sizes = np.array([lane.size for lane in lanes], dtype=np.int64)
        data = np.frombuffer(b"".join(lane.tobytes() for lane in lanes), np.uint8)
        lut = np.arange(k, dtype=np.float32)
        pairs = anspairs.build_pair_table(freq, anspairs.COMPACT_MIN_SCALE_BITS, lut, bits)
        out = np.zeros(x.size, np.float32)
        ends = np.cumsum(sizes)
        assert anspairs.decode_pairs(data, ends - sizes, ends, pairs, out, add=False) == 0
    for blob, meta in pool:
        run_one(blob, meta)


def worker(job: int, args: argparse.Namespace, index_of: Any, beat: Any, queue: Any) -> None:
    """Run mutants ``job, job + jobs, ...``; progress in shared memory, results at the end."""
    pool = build_pool(args.seed, args.pool)
    warm_up(pool)
    outcomes: Counter[str] = Counter()
    mutations: Counter[str] = Counter()
    slowest: dict[str, float] = {}
    failures: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_seconds
    done = 0
    for index in range(job, args.iterations, args.jobs):
        index_of[job] = index
        beat[job] = time.monotonic()
        kind, data, meta = mutant(args.seed, index, pool)
        mutations[kind] += 1
        for name, outcome, seconds, error in run_one(data, meta):
            outcomes[f"{name}:{outcome}"] += 1
            slowest[name] = max(slowest.get(name, 0.0), seconds)
            if outcome == "UNEXPECTED" or seconds > args.call_timeout:
                what = "exception" if outcome == "UNEXPECTED" else f"slow call ({seconds:.2f} s)"
                failures.append(
                    {"index": index, "function": name, "mutation": kind, "failure": what}
                    | {"error": error, "packet_hex": data.hex()[:2000]}
                )
        done += 1
        if time.monotonic() > deadline or len(failures) >= 20:
            break
    index_of[job] = -1  # finished: the watchdog stops looking
    queue.put(
        {
            "job": job,
            "iterations": done,
            "outcomes": dict(outcomes),
            "mutations": dict(mutations),
            "slowest": slowest,
            "failures": failures,
        }
    )


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    """Run the workers under a watchdog; merge their results."""
    ctx = mp.get_context("spawn")
    index_of = ctx.Array("q", [0] * args.jobs, lock=False)
    beat = ctx.Array("d", [time.monotonic()] * args.jobs, lock=False)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(j, args, index_of, beat, queue), daemon=True)
        for j in range(args.jobs)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    pending = set(range(args.jobs))
    while pending:
        while not queue.empty():
            r = queue.get()
            results.append(r)
            pending.discard(r["job"])
        for j in sorted(pending):
            p = procs[j]
            stalled = time.monotonic() - beat[j] > args.hang_seconds and index_of[j] >= 0
            if stalled and p.is_alive():
                p.kill()
                p.join()
                dead.append({"job": j, "index": int(index_of[j]), "failure": "hang"})
                pending.discard(j)
            elif not p.is_alive() and p.exitcode != 0 and queue.empty():
                dead.append(
                    {"job": j, "index": int(index_of[j]), "failure": f"crash ({p.exitcode})"}
                )
                pending.discard(j)
        time.sleep(0.5)
    for p in procs:
        p.join(timeout=10)
    outcomes: Counter[str] = Counter()
    mutations: Counter[str] = Counter()
    slowest: dict[str, float] = {}
    failures: list[dict[str, Any]] = []
    for r in results:
        outcomes.update(r["outcomes"])
        mutations.update(r["mutations"])
        for k, v in r["slowest"].items():
            slowest[k] = max(slowest.get(k, 0.0), v)
        failures += r["failures"]
    unexpected = len(failures) + len(dead)
    return {
        "iterations": sum(r["iterations"] for r in results),
        "seed": args.seed,
        "pool": args.pool,
        "jobs": args.jobs,
        "seconds": round(time.monotonic() - t0, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "mutations": dict(sorted(mutations.items())),
        "slowest_call_seconds": {k: round(v, 4) for k, v in sorted(slowest.items())},
        "call_timeout": args.call_timeout,
        "unexpected": unexpected,
        "hangs_or_crashes": dead,
        "failures": failures[:5],
    }


def reproduce(args: argparse.Namespace) -> int:
    """Replay mutant ``--reproduce`` in this process, printing every outcome."""
    pool = build_pool(args.seed, args.pool)
    warm_up(pool)
    kind, data, meta = mutant(args.seed, args.reproduce, pool)
    print(f"mutant {args.reproduce}: {kind}, {len(data)} bytes\n{data.hex()}")
    bad = 0
    for name, outcome, seconds, error in run_one(data, meta):
        print(f"{name}: {outcome} in {seconds:.4f} s {error}")
        bad += outcome == "UNEXPECTED" or seconds > args.call_timeout
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the campaign (or one reproducer), print JSON; 1 on any failure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100_000, help="mutants in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--max-seconds", type=float, default=1200.0, help="stop each worker after")
    p.add_argument("--pool", type=int, default=300, help="valid packets to mutate")
    p.add_argument("--call-timeout", type=float, default=2.0, help="a slower call is a failure (s)")
    p.add_argument(
        "--hang-seconds", type=float, default=60.0, help="a worker silent this long is hung"
    )
    p.add_argument("--reproduce", type=int, default=None, metavar="INDEX")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.iterations < 0:
        p.error("--jobs must be >= 1 and --iterations >= 0")
    if args.reproduce is not None:
        return reproduce(args)
    summary = campaign(args)
    print(json.dumps(summary, indent=2))
    if summary["unexpected"]:
        print(f"FUZZ FAILURE: {summary['unexpected']} unexpected outcome(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
