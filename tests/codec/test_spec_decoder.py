"""Conformance: the spec decoder (docs/FORMAT.md alone) and ``tenfold.decompress`` agree.

``spec_decoder.py`` was written from the format page without tenfold's source. Every packet
here (golden, freshly encoded across modes, versions, dtypes and policies, corrupted) must
decode to bit-identical arrays with both, or be refused by both: a change to the format
that the page does not describe, or a page edit the code does not follow, fails here.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tenfold.codec import (
    BFloat16Bits,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    Policy,
    RelativeStep,
    TargetRate,
    compress,
    decompress,
    inspect,
)

from .spec_decoder import DTYPES as WIRE_DTYPES
from .spec_decoder import Reader, SpecError, decode

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_CASES = sorted(p.stem for p in GOLDEN.glob("*.bin"))

Decoded = Mapping[str, np.ndarray]


def assert_identical(got: Decoded, want: Decoded) -> None:
    """Same names in the same order, dtypes, shapes and bytes (signed zeros, NaN bits)."""
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), name


def with_crc(body: bytes) -> bytes:
    """``body`` (a packet without its CRC) with its CRC-32 appended (section 2)."""
    return body + struct.pack("<I", zlib.crc32(body))


# ---- 1. golden packets and the spec's worked examples -----------------------------------


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_packets_decode_identically(case: str) -> None:
    blob = (GOLDEN / f"{case}.bin").read_bytes()
    mine = decode(blob)
    assert_identical(mine, decompress(blob))
    with np.load(GOLDEN / f"{case}.decoded.npz") as committed:
        assert_identical(mine, {name: committed[name] for name in mine})


#: FORMAT.md section 7's version-2 bfloat16 and hand-made version-4 (ans-quads) packets
WORKED_EXAMPLES = {
    "bfloat16": "54464C44020101760401030202 0000C07F 0000CD3D 38 577836DD",
    "ans_quads": "54464C44040101710201061702 0000C07F 000000BF 0000803F 000000000000E03F 0100"
    " 0C0B 000C801000 3A8010 00B501 04040404 00080200 00000200 00000100 00000100 EA9EA77C",
}


@pytest.mark.parametrize("example", sorted(WORKED_EXAMPLES))
def test_worked_examples_decode_identically(example: str) -> None:
    blob = bytes.fromhex(WORKED_EXAMPLES[example].replace(" ", ""))
    assert_identical(decode(blob), decompress(blob))


# ---- 2. encoded packets: every mode of every version ------------------------------------

DTYPES = ("float16", "float32", "float64", "bfloat16")
SIZES = (0, 1, 5, 1000)


def make_tensor(rng: np.random.Generator, kind: str, n: int, dtype: str) -> Any:
    """``n`` values of a kind of data, as ``dtype`` (bfloat16 as BFloat16Bits)."""
    if kind == "laplace":  # a trained layer's weights
        x = rng.laplace(0.0, 0.05, n)
    elif kind == "normal":
        x = rng.normal(0.0, 1.0, n)
    elif kind == "gradient":  # a small pseudo-gradient
        x = rng.uniform(-1e-3, 1e-3, n)
    elif kind == "sign":  # a pseudo-gradient of 3 levels
        x = rng.choice([-1e-3, 0.0, 1e-3], n, p=[0.25, 0.5, 0.25])
    elif kind == "sparse":
        x = rng.normal(0.0, 1.0, n) * (rng.random(n) < 0.05)
    elif kind == "constant":
        x = np.full(n, -0.0 if n % 2 else 1.5)
    else:
        raise AssertionError(kind)
    if dtype == "bfloat16":
        return BFloat16Bits.from_float(x.astype(np.float32))
    return x.astype(dtype)


#: the paper's policies (tenfold.__all__) and the library's, with the options that change modes
POLICIES: dict[str, Policy] = {
    "target_0.25": TargetRate(bits_per_param=0.25),
    "target_1": TargetRate(bits_per_param=1.0),
    "target_4": TargetRate(bits_per_param=4.0),
    "target_8": TargetRate(bits_per_param=8.0),
    "target_2_huffman": TargetRate(bits_per_param=2.0, coder="huffman"),
    "fixed_3": Fixed(3),
    "fixed_8": Fixed(8),
    "fixed_20": Fixed(20),
    "lossless": Lossless(),
    "entropy_small": EntropyAdaptive(F=1.0, M=2, c=0.25),
    "entropy_paper": EntropyAdaptive(F=0.03, M=4, c=6),
    "grad_rms": GradientRMS(4.0),
    "relative_step": RelativeStep(alpha=1.0),
    "relative_step_huffman": RelativeStep(alpha=2.0, coder="huffman"),
}


#: big enough for the encoder's 2^16-value modes (ans-pairs, ans-quads, modelled ANS tables)
BIG = 70_000


Cases = dict[str, tuple[dict[str, Any], Policy, dict[str, Any]]]


def policy_packets() -> Cases:
    """Per policy, a packet of float16/32/64 tensors (version 1 for the paper's policies) and
    one of bfloat16 tensors (version 2), each at every size and with a big tensor."""
    kinds = ("laplace", "normal", "sparse", "constant")
    cases: Cases = {}
    for p, (label, policy) in enumerate(POLICIES.items()):
        rng = np.random.default_rng(p)
        for group, dtypes in (("floats", DTYPES[:3]), ("bfloat16", DTYPES[3:])):
            tensors = {}
            for d, dtype in enumerate(dtypes):
                for s, n in enumerate(SIZES):
                    kind = kinds[(d + s + p) % len(kinds)]
                    tensors[f"{dtype}_{n}_{kind}"] = make_tensor(rng, kind, n, dtype)
            tensors["big"] = make_tensor(rng, "laplace", BIG, dtypes[p % len(dtypes)])
            kwargs: dict[str, Any] = {}
            if isinstance(policy, GradientRMS):
                kwargs["grad_rms"] = {name: 0.1 * (i + 1) for i, name in enumerate(tensors)}
            cases[f"{label}_{group}"] = (tensors, policy, kwargs)
    return cases


def special_packets() -> Cases:
    """What the policy packets may not reach: ans-quads, ans-pairs, the signed-zero clamp."""
    rng = np.random.default_rng(99)
    cases: Cases = {}
    for dtype in DTYPES:  # 2^16+ values of at most 4 levels at a low rate: ans-quads (v4)
        tensors = {"g": make_tensor(rng, "gradient", 65_537, dtype)}
        cases[f"quads_{dtype}"] = (tensors, TargetRate(bits_per_param=1.0), {})
    tensors = {
        "g": make_tensor(rng, "sign", 65_536, "float32"),
        "b": make_tensor(rng, "normal", 5, "float32"),
    }
    cases["quads_sign"] = (tensors, TargetRate(bits_per_param=1.5), {})
    for dtype in ("float32", "bfloat16"):  # 2^16+ values, up to 32 levels: ans-pairs (v3)
        tensors = {"w": make_tensor(rng, "gradient", BIG, dtype)}
        cases[f"pairs_{dtype}"] = (tensors, TargetRate(bits_per_param=2.0), {})
    # a step so big that every value rounds to level 0: a step constant record (0x10)
    tensors = {"g": make_tensor(rng, "sign", 65_536, "float16")}
    cases["step_constant"] = (tensors, TargetRate(bits_per_param=0.5), {})
    # FORMAT.md 4.1: w_min = -0.0 and bin 0 decoding to +0.0 (the signed-zero clamp)
    tiny = {"z": np.array([-0.0, 5e-324], np.float64)}
    cases["signed_zero_clamp"] = (tiny, Fixed(2), {})
    return cases


CASES = {**policy_packets(), **special_packets()}


@functools.cache
def packet(case: str) -> bytes:
    tensors, policy, kwargs = CASES[case]
    return compress(tensors, policy, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoded_packets_decode_identically(case: str) -> None:
    blob = packet(case)
    assert_identical(decode(blob), decompress(blob))


#: (version, mode, quantizer) that the cases above must reach. Range ANS (mode 0x04) is
#: not written by the encoder: test_range_ans_record_decodes_identically covers it.
RANGE_MODES = {("constant", "range"), ("huffman", "range"), ("bitpack", "range"), ("raw", "range")}
STEP_MODES = {("constant", "step"), ("huffman", "step"), ("bitpack", "step"), ("ans", "step")}
EXPECTED_MODES = {
    *((1, *mode) for mode in RANGE_MODES),
    *((2, *mode) for mode in RANGE_MODES | STEP_MODES),
    (3, "group", "step"),
    (3, "ans-pairs", "step"),
    (4, "ans-quads", "step"),
}


def test_cases_cover_every_mode_of_every_version() -> None:
    seen = set()
    for case in CASES:
        blob = packet(case)
        for t in inspect(blob).tensors:
            seen.add((blob[4], t.mode, "range" if t.step is None else "step"))
    assert seen >= EXPECTED_MODES, sorted(EXPECTED_MODES - seen)
    every_mode = {(mode, quant) for _, mode, quant in EXPECTED_MODES}
    assert {(mode, quant) for _, mode, quant in seen} == every_mode
    z = decompress(packet("signed_zero_clamp"))["z"]
    assert z.tobytes() == np.array([0.0, 5e-324]).tobytes()  # bin 0 is +0.0, not -0.0


def to_range_ans(blob: bytes) -> bytes:
    """A one-tensor step ANS (0x14) packet rewritten as a range ANS (0x04) record.

    The step fields go and the mode byte changes; the symbols now decode to bin centres of
    ``[w_min, w_max]`` (section 4.1). The encoder never writes mode 0x04 itself.
    """
    r = Reader(blob, 5, len(blob) - 4)
    assert r.varint() == 1
    r.take(r.varint())  # the name
    width = WIRE_DTYPES[r.u8()].width // 8
    for _ in range(r.u8()):
        r.varint()
    at = r.pos
    assert blob[at] == 0x14
    r.take(1 + 1 + 4 + 2 * width)  # mode, bits, entropy, w_min, w_max
    step_at = r.pos
    r.f64()
    r.zigzag()
    r.varint()
    return with_crc(blob[:at] + b"\x04" + blob[at + 1 : step_at] + blob[r.pos : -4])


def step_ans_packet(dtype: str) -> bytes:
    """A one-tensor step ANS packet (10^4 values: below that the encoder prefers Huffman)."""
    rng = np.random.default_rng(7)
    return compress({"w": make_tensor(rng, "laplace", 10_000, dtype)}, RelativeStep(alpha=1.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_range_ans_record_decodes_identically(dtype: str) -> None:
    step_blob = step_ans_packet(dtype)
    blob = to_range_ans(step_blob)
    assert [(t.mode, t.step) for t in inspect(blob).tensors] == [("ans", None)]
    mine = decode(blob)
    assert_identical(mine, decompress(blob))
    assert not np.array_equal(mine["w"], decode(step_blob)["w"])  # the range formula ran


# ---- 3. corrupted packets ---------------------------------------------------------------

#: small enough that a mutated size field cannot make either decoder allocate much
FUZZ_MAX_OUTPUT_BYTES = 1 << 24


@functools.cache
def fuzz_seeds() -> tuple[bytes, ...]:
    """Golden packets, the worked examples and a few small encoded packets of each version."""
    seeds = [(GOLDEN / f"{case}.bin").read_bytes() for case in GOLDEN_CASES]
    seeds += [bytes.fromhex(h.replace(" ", "")) for h in WORKED_EXAMPLES.values()]
    rng = np.random.default_rng(3)
    small = {"w": make_tensor(rng, "laplace", 300, "float32")}
    mixed = {
        "w": make_tensor(rng, "laplace", 300, "float32"),
        "b": make_tensor(rng, "normal", 5, "bfloat16"),
        "c": make_tensor(rng, "normal", 7, "float16"),
        "e": np.zeros((2, 0), np.float64),
        "s": np.ones((), np.float64),
    }
    seeds += [
        compress(small, TargetRate(bits_per_param=2.0)),
        compress(mixed, TargetRate(bits_per_param=1.0)),
        compress(small, EntropyAdaptive(F=1.0, M=2, c=0.25)),
        compress(mixed, Fixed(3)),
        compress(mixed, Lossless()),
        compress(small, RelativeStep(alpha=1.0)),
        compress(small, RelativeStep(alpha=1.0, coder="huffman")),
        to_range_ans(step_ans_packet("float16")),
    ]
    return tuple(seeds)


def mutate(rng: np.random.Generator, blob: bytes) -> bytes:
    """1 or 2 edits of one kind (flip, set, +-1, delete, insert) mostly in the first 120 bytes,
    never in the magic or the version; the CRC is recomputed so that the records are parsed."""
    body = bytearray(blob[:-4])
    kind = int(rng.integers(5))
    for _ in range(1 + int(rng.integers(2))):
        if len(body) < 6:
            break
        near = rng.random() < 0.7
        at = int(rng.integers(5, min(len(body), 120) if near else len(body)))
        if kind == 0:
            body[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            body[at] = int(rng.integers(256))
        elif kind == 2:
            body[at] = (body[at] + int(rng.choice([-1, 1]))) & 0xFF
        elif kind == 3:
            del body[at]
        else:
            body.insert(at, int(rng.integers(256)))
    return with_crc(bytes(body))


def outcome(
    decoder: Callable[..., Decoded], refusal: type[Exception], blob: bytes
) -> Decoded | None:
    """The decoded arrays, or None when the decoder refuses the packet with ``refusal``
    (any other exception is a bug, and fails the test)."""
    try:
        return decoder(blob, max_output_bytes=FUZZ_MAX_OUTPUT_BYTES)
    except refusal:
        return None


MUTATIONS_PER_CHUNK = 200


@pytest.mark.parametrize("chunk", range(5))
def test_corrupt_packets_are_refused_or_decoded_alike(chunk: int) -> None:
    seeds = fuzz_seeds()
    rng = np.random.default_rng(1000 + chunk)
    accepted = 0
    for _ in range(MUTATIONS_PER_CHUNK):
        blob = mutate(rng, seeds[int(rng.integers(len(seeds)))])
        mine = outcome(decode, SpecError, blob)
        theirs = outcome(decompress, CorruptPacketError, blob)
        assert (mine is None) == (theirs is None), blob.hex()
        if mine is not None and theirs is not None:
            assert_identical(mine, theirs)
            accepted += 1
    # both outcomes occur: mutated values and payload bits often stay valid, headers not
    assert 0 < accepted < MUTATIONS_PER_CHUNK


# ---- 4. property: random small float32 tensors at random rates --------------------------


@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=40),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    rate=st.floats(0.05, 16.0),
)
def test_random_float32_tensors_decode_identically(x: np.ndarray, rate: float) -> None:
    tensors = {"x": x, "y": x.reshape(-1)[::-1] * np.float32(0.5)}  # two, for the group
    blob = compress(tensors, TargetRate(bits_per_param=rate))
    assert_identical(decode(blob), decompress(blob))
