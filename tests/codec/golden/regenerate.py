"""Regenerate the golden packets that freeze the wire format (run by hand, then commit).

    .venv/bin/python tests/codec/golden/regenerate.py [CASE ...]   # default: every case

For each case this writes ``<case>.bin`` (the packet), ``<case>.input.npz`` (the tensors
compressed; a bfloat16 tensor as its uint16 bit patterns, since npz has no bfloat16), ``<case>.decoded.npz`` (what the packet decodes to) and ``<case>.json`` (the
policy's config and ``inspect`` output). ``tests/codec/test_golden.py`` compares today's
codec against these committed bytes: an old packet must keep decoding to the same arrays,
and the encoder must keep producing the same bytes (change either only with a format
version bump or a deliberate, reviewed regeneration).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tenfold.codec import (
    BFloat16Bits,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    Policy,
    RelativeStep,
    TargetRate,
    compress,
    inspect,
)

HERE = Path(__file__).resolve().parent


def _weights(seed: int, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.laplace(0.0, 0.05, size=shape)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, max(1, flat.size // 100), replace=False)] *= 15.0
    return x.astype(dtype)


def _bf16(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> BFloat16Bits:
    return BFloat16Bits.from_float(_weights(seed, shape) * scale)


Tensors = dict[str, np.ndarray | BFloat16Bits]

#: case name -> (tensors, policy, grad_rms)
CASES: dict[str, Callable[[], tuple[Tensors, Policy, dict[str, float] | None]]] = {
    "entropy_mlp": lambda: (
        {
            "fc1.weight": _weights(1, (24, 40)),
            "fc1.bias": np.zeros(24, np.float32),
            "fc2.weight": _weights(2, (10, 24)),
            "fc2.bias": _weights(3, (10,)),
            "scale": np.array(0.5, np.float32),
        },
        EntropyAdaptive(F=0.03, M=4, c=6, seed=0),
        None,
    ),
    "fixed8_dtypes": lambda: (
        {
            "half": _weights(4, (33,), np.float16),
            "double": _weights(5, (5, 7), np.float64),
            "empty": np.zeros((0, 3), np.float32),
        },
        Fixed(8),
        None,
    ),
    "fixed3_bitpack": lambda: ({"w": _weights(6, (9,))}, Fixed(3), None),
    "fixed20_bitpack": lambda: ({"w": _weights(7, (50,), np.float64)}, Fixed(20), None),
    "grad_rms": lambda: (
        {"a": _weights(8, (64,)), "b": _weights(9, (64,))},
        GradientRMS(4.0),
        {"a": 0.0, "b": 7.0},
    ),
    "lossless": lambda: (
        {"w": _weights(10, (3, 4)), "d": np.array([1.0, -2.5], np.float64)},
        Lossless(),
        None,
    ),
    # version 2: the mid-tread quantizer (steps) and the ANS coder
    "v2_relative_step_huffman": lambda: (
        {"delta": _weights(14, (40, 25)) * 0.01, "zero": np.zeros(7, np.float32)},
        RelativeStep(alpha=1.0, coder="huffman"),
        None,
    ),
    # version 2: the bfloat16 dtype (raw values as 16-bit patterns; decoded values rounded
    # to bfloat16), beside a float32 tensor
    "v2_bfloat16_lossless": lambda: (
        {
            "w": _bf16(15, (3, 4)),
            "scalar": _bf16(16, ()),
            "empty": BFloat16Bits(np.zeros((2, 0), np.uint16)),
            "f": _weights(17, (3,)),
        },
        Lossless(),
        None,
    ),
    "v2_bfloat16_fixed": lambda: (
        {"w": _bf16(18, (20, 12)), "c": BFloat16Bits(np.full(4, 0x3F80, np.uint16))},
        Fixed(5),
        None,
    ),
    # version 3: TargetRate's packet-level rate control; small tensors in the group section
    "v3_target_rate_group": lambda: (
        {
            "fc1.weight": _weights(21, (24, 40)) * 0.01,
            "fc1.bias": _weights(22, (24,)) * 0.01,
            "big.weight": _weights(23, (96, 128)) * 0.003,
            "half": (_weights(24, (300,)) * 0.01).astype(np.float16),
            "double": _weights(25, (5, 7), np.float64) * 0.02,
            "zero": np.zeros(7, np.float32),
            "empty": np.zeros((0,), np.float32),
        },
        TargetRate(bits_per_param=1.0, seed=0),
        None,
    ),
    # version 3: ANS over pairs of values (tensors of 2**16 values and more, <= 16 levels)
    "v3_target_rate_pairs": lambda: (
        {"delta": np.random.default_rng(28).laplace(0, 0.01, (257, 257)).astype(np.float16)},
        TargetRate(bits_per_param=1.0, seed=0),
        None,
    ),
    # version 4: ANS over quads of values (tensors of 2**16 values and more, <= 4 levels):
    # Laplace values clipped at 2 scales (3 levels, N = 2; 257 * 257 values, so the last
    # quad is padded) and non-negative bfloat16 ones (2 levels, N = 1; 65537 values)
    "v4_target_rate_quads": lambda: (
        {
            "delta": np.clip(
                np.random.default_rng(29).laplace(0, 0.01, (257, 257)), -0.02, 0.02
            ).astype(np.float16),
            "mask": BFloat16Bits.from_float(
                np.clip(np.abs(np.random.default_rng(30).laplace(0, 0.01, 65537)), 0, 0.015)
            ),
        },
        TargetRate(bits_per_param=1.0, seed=0),
        None,
    ),
    "v3_bfloat16_target_rate_group": lambda: (
        {"delta": _bf16(26, (60, 40), 0.01), "bias": _bf16(27, (40,), 0.01)},
        TargetRate(bits_per_param=0.5, seed=0),
        None,
    ),
}

#: Frozen cases, not regenerated (an earlier encoder made them; test_golden.py only decodes
#: them): TargetRate's per-tensor rate control before version 3 (packet-level) replaced it.
FROZEN = {
    "v2_target_rate_ans": lambda: (
        {
            "delta.weight": _weights(11, (64, 40)) * 0.01,
            "delta.bias": _weights(12, (8,)) * 0.01,  # too small for its bits: one level
            "half": (_weights(13, (3000,)) * 0.01).astype(np.float16),
        },
        TargetRate(bits_per_param=0.5, seed=0),
        None,
    ),
    "v2_bfloat16_target_rate_ans": lambda: (
        {"delta": _bf16(19, (60, 40), 0.01), "f": _weights(20, (30,)) * 0.01},
        TargetRate(bits_per_param=1.0, seed=0),
        None,
    ),
}


def build(name: str) -> tuple[Tensors, Policy, dict[str, float] | None, bytes]:
    """The case's inputs, policy, grad_rms and the packet today's codec makes from them."""
    tensors, policy, grad_rms = CASES[name]()
    return tensors, policy, grad_rms, compress(tensors, policy, grad_rms=grad_rms)


def main() -> None:
    from tenfold.codec import decompress

    # Regenerate only what changed on purpose: e.g. the v2 cases alone leave the frozen
    # version-1 files untouched.

    for name in sys.argv[1:] or CASES:
        tensors, policy, grad_rms, blob = build(name)
        (HERE / f"{name}.bin").write_bytes(blob)
        arrays = {k: v.bits if isinstance(v, BFloat16Bits) else v for k, v in tensors.items()}
        np.savez(HERE / f"{name}.input.npz", **arrays)
        np.savez(HERE / f"{name}.decoded.npz", **decompress(blob))
        meta = {
            "policy": policy.get_config(),
            "grad_rms": grad_rms,
            "info": inspect(blob).as_dict(),
        }
        (HERE / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: {len(blob)} bytes")


if __name__ == "__main__":
    main()
