"""Fuzz the codec's decoders with mutated packets (run by hand; prints a JSON summary).

    .venv/bin/python scripts/fuzz_codec.py --iterations 1000000 --seed 0 --max-seconds 3600

A pool of valid packets (many tensor kinds: dtypes, shapes incl. 0-d and empty, constant,
extreme ranges; every policy, hence every coding mode) is mutated - bit flips, byte
overwrites, truncation, extension, splices of two packets, header fields set to extreme
values - and, half of the time, the CRC is re-sealed so the checks behind the checksum are
exercised. Each mutant goes to ``decompress``, ``inspect`` and ``accumulate``. The only
acceptable outcomes are success or ``CorruptPacketError`` (``PacketMismatchError`` for
``accumulate``); anything else is printed with its reproducer and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from typing import Any

import numpy as np

from tenfold.codec import (
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    PacketMismatchError,
    accumulate,
    compress,
    decompress,
    inspect,
)

MAX_OUTPUT = 1 << 24  # keep every successful decode small


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


def build_pool(rng: np.random.Generator, size: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Valid packets with the shapes/dtypes of what they hold (for accumulate targets)."""
    policies = [
        EntropyAdaptive(),
        EntropyAdaptive(F=1.0, M=6, c=2),
        Fixed(1),
        Fixed(4),
        Fixed(8),
        Fixed(12),
        Fixed(16),
        Fixed(20),
        Fixed(24),
        Lossless(),
        GradientRMS(3.0),
    ]
    pool = []
    for i in range(size):
        tensors = {}
        for j in range(int(rng.integers(0, 4))):
            kind = str(rng.choice(["normal", "normal", "big", "constant", "extreme"]))
            dtype = [np.float16, np.float32, np.float64][int(rng.integers(0, 3))]
            tensors[f"t{i}.{j}"] = _tensor(rng, kind, dtype)
        policy = policies[i % len(policies)]
        grad = {k: float(rng.uniform(0, 10)) for k in tensors}
        blob = compress(tensors, policy, grad_rms=grad)
        pool.append((blob, {k: (v.shape, v.dtype) for k, v in tensors.items()}))
    return pool


def mutate(rnd: random.Random, blob: bytes, other: bytes) -> tuple[str, bytes]:
    data = bytearray(blob)
    kind = rnd.choice(["flip", "flips", "overwrite", "truncate", "extend", "splice", "field"])
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
    else:  # a header-ish byte set to an extreme value
        at = rnd.randrange(min(len(data), 80))
        data[at] = rnd.choice([0x00, 0x01, 0x0F, 0x10, 0x7F, 0x80, 0xFE, 0xFF])
    if rnd.random() < 0.5 and len(data) >= 4:  # re-seal the checksum
        body = bytes(data[:-4])
        data = bytearray(body + struct.pack("<I", zlib.crc32(body)))
        kind += "+crc"
    return kind, bytes(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--pool", type=int, default=200, help="valid packets to mutate")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    rnd = random.Random(args.seed)
    t0 = time.perf_counter()
    pool = build_pool(rng, args.pool)
    outcomes: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    done = 0
    for done in range(1, args.iterations + 1):  # noqa: B007 - `done` is reported
        blob, meta = pool[rnd.randrange(len(pool))]
        kind, mutant = mutate(rnd, blob, pool[rnd.randrange(len(pool))][0])
        by_mutation[kind] += 1
        for name, call in (
            ("decompress", lambda m=mutant: decompress(m, max_output_bytes=MAX_OUTPUT)),
            ("inspect", lambda m=mutant: inspect(m, max_output_bytes=MAX_OUTPUT)),
            (
                "accumulate",
                lambda m=mutant, meta=meta: accumulate(
                    m,
                    {
                        k: np.zeros(s, np.float64 if d == np.float64 else np.float32)
                        for k, (s, d) in meta.items()
                    },
                    max_output_bytes=MAX_OUTPUT,
                ),
            ),
        ):
            try:
                call()
                outcomes[f"{name}:ok"] += 1
            except CorruptPacketError:
                outcomes[f"{name}:corrupt"] += 1
            except PacketMismatchError:
                outcomes[f"{name}:mismatch"] += 1
            except Exception as exc:  # the bug this script exists to find
                failures.append(
                    {
                        "function": name,
                        "mutation": kind,
                        "error": repr(exc),
                        "packet_hex": mutant.hex(),
                        "traceback": traceback.format_exc(),
                    }
                )
                outcomes[f"{name}:UNEXPECTED"] += 1
        if time.perf_counter() - t0 > args.max_seconds or len(failures) >= 20:
            break
    summary = {
        "iterations": done,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "pool": len(pool),
        "outcomes": dict(sorted(outcomes.items())),
        "mutations": dict(sorted(by_mutation.items())),
        "unexpected": len(failures),
        "failures": failures[:5],
    }
    print(json.dumps(summary, indent=2))
    if failures:
        print(f"FUZZ FAILURE: {len(failures)} unexpected exception(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
