"""bfloat16 as a codec dtype: exact conversions, torch's rounding, round trips, the wire.

numpy has no bfloat16: the codec holds bfloat16 values as float32 (exactly) and carries
their 16-bit patterns on the wire. torch is imported by the tests that compare with it (the
codec itself never imports torch: tests/codec/test_api.py checks that).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tenfold.codec import (
    BFloat16Bits,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    PacketMismatchError,
    RelativeStep,
    TargetRate,
    accumulate,
    compress,
    decompress,
    inspect,
)
from tenfold.codec.bfloat16 import (
    bfloat16_bits,
    float32_from_bits,
    is_bfloat16_exact,
    round_to_bfloat16,
)
from tenfold.codec.packet import (
    BFLOAT16,
    MODE_BITPACK,
    MODE_CONSTANT,
    MODE_RAW,
    QUANT_STEP,
    encode_record_header,
    finish_packet,
    packet_header,
)

from .conftest import half_bin_bound, weight_like

#: float32 bit pattern -> the bfloat16 bit pattern torch gives (round to nearest even)
KNOWN = [
    (0x00000000, 0x0000),  # +0
    (0x80000000, 0x8000),  # -0
    (0x3F800000, 0x3F80),  # 1.0, exact
    (0x3F807FFF, 0x3F80),  # just below half an ulp: down
    (0x3F808000, 0x3F80),  # tie, kept part even (0x3F80): down
    (0x3F818000, 0x3F82),  # tie, kept part odd (0x3F81): up to even
    (0x3F808001, 0x3F81),  # just above the tie: up
    (0xBF818000, 0xBF82),  # negative tie: same on the magnitude
    (0x00000001, 0x0000),  # smallest subnormal: to +0
    (0x00008000, 0x0000),  # subnormal tie, even: down
    (0x00018000, 0x0002),  # subnormal tie, odd: up
    (0x007FFFFF, 0x0080),  # largest subnormal rounds up to the smallest normal
    (0x7F7F0000, 0x7F7F),  # the largest bfloat16
    (0x7F7F7FFF, 0x7F7F),  # below the overflow threshold
    (0x7F7F8000, 0x7F80),  # the threshold (a tie, odd): inf
    (0x7F7FFFFF, 0x7F80),  # the largest float32: inf
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
    (0xFF7FFFFF, 0xFF80),  # -(largest float32): -inf
]


def _f32(bits: list[int] | np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _bf16(x: np.ndarray) -> np.ndarray:
    """Bit patterns (uint16) of float32 bfloat16 values."""
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


# ---- the conversions ----------------------------------------------------------------------


def test_known_answers() -> None:
    src = _f32([a for a, _ in KNOWN])
    got = _bf16(round_to_bfloat16(src)).tolist()
    assert got == [b for _, b in KNOWN]
    assert (round_to_bfloat16(src).view(np.uint32) & 0xFFFF).max() == 0


def test_nan_stays_nan_and_never_becomes_inf() -> None:
    # the payload of 0x7F800001 lies entirely in the dropped bits: truncating it would
    # give inf; rounding 0x7FFFFFFF up would carry into the sign
    nans = _f32([0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFF800001, 0xFFFFFFFF, 0x7F80FFFF])
    out = round_to_bfloat16(nans)
    assert np.isnan(out).all()
    assert np.signbit(out).tolist() == np.signbit(nans).tolist()


def test_every_bfloat16_survives_exactly() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = float32_from_bits(bits)
    assert x.dtype == np.float32 and is_bfloat16_exact(x)
    ok = ~np.isnan(x)
    assert np.array_equal(bfloat16_bits(x), bits)
    assert np.array_equal(_bf16(round_to_bfloat16(x))[ok], bits[ok])


def test_float64_rounds_through_float32_like_torch() -> None:
    # 1 + 2**-8 + 2**-40: float32 rounds it to the bfloat16 tie 1 + 2**-8, which goes to
    # the even 1.0 (one rounding would give 1 + 2**-7): torch does the same
    assert round_to_bfloat16(np.array([1 + 2**-8 + 2**-40])).tolist() == [1.0]
    with np.errstate(over="raise"):  # beyond float32: inf, without a warning
        assert round_to_bfloat16(np.array([1e39, -1e300])).tolist() == [np.inf, -np.inf]


def test_shapes_are_kept() -> None:
    assert round_to_bfloat16(np.float32(0.1)).shape == ()
    assert round_to_bfloat16(np.ones((3, 4))[:, ::2]).shape == (3, 2)
    assert bfloat16_bits(np.zeros((2, 0), np.float32)).shape == (2, 0)


def _torch_bf16(torch, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def test_rounding_matches_torch_on_many_values() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (random_bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    near = (random_bits & np.uint32(0xFFFF0000)) | rng.choice(
        np.array([0x7FFF, 0x8001, 0x0001, 0xFFFF], np.uint32), random_bits.size
    )
    subnormal = random_bits & np.uint32(0x807FFFFF)
    special = np.array([a for a, _ in KNOWN], dtype=np.uint32)
    for bits in (random_bits, ties, near, subnormal, special):
        x = bits.view(np.float32)
        ours, theirs = round_to_bfloat16(x), _torch_bf16(torch, x)
        nan = np.isnan(x)
        assert np.isnan(ours[nan]).all()
        assert np.array_equal(_bf16(ours)[~nan], theirs[~nan])
    # float64 inputs go through float32 in torch too
    wide = rng.standard_normal(50_000) * np.exp2(rng.integers(-140, 130, 50_000))
    with np.errstate(over="ignore"):
        assert np.array_equal(_bf16(round_to_bfloat16(wide)), _torch_bf16(torch, wide))


def test_bits_wrapper() -> None:
    b = BFloat16Bits(np.array([[0x3F80, 0xC000]], np.uint16))
    assert b.shape == (1, 2) and b.dtype == "bfloat16" and "1, 2" in repr(b)
    assert b.to_float32().tolist() == [[1.0, -2.0]]
    # int16 (torch's .view(torch.int16)) and big-endian patterns mean the same bits
    assert BFloat16Bits(np.array([-16384], np.int16)).to_float32().tolist() == [-2.0]
    assert BFloat16Bits(np.array([0x3F80], ">u2")).bits.dtype == np.dtype("=u2")
    assert BFloat16Bits.from_float([0.1]).bits.tolist() == [0x3DCD]
    with pytest.raises(TypeError, match="uint16"):
        BFloat16Bits(np.zeros(3, np.float32))


# ---- compress / decompress ----------------------------------------------------------------

POLICIES = [
    EntropyAdaptive(),
    EntropyAdaptive(c=5),
    Fixed(1),
    Fixed(8),
    Fixed(15),
    Fixed(16),
    Fixed(20),
    Lossless(),
    GradientRMS(4.0),
    RelativeStep(alpha=1.0),
    RelativeStep(alpha=0.01, coder="huffman"),
    TargetRate(bits_per_param=1.0),
    TargetRate(bits_per_param=4.0, coder="huffman"),
]
SHAPES = [(), (1,), (2,), (7,), (3, 5), (17, 33), (2, 3, 4, 5), (0,), (4, 0, 3), (200, 30)]


def _bf16_tensors(rng: np.random.Generator) -> dict[str, BFloat16Bits]:
    tensors = {
        f"t{i}": BFloat16Bits.from_float(weight_like(rng, shape)) for i, shape in enumerate(SHAPES)
    }
    tensors["const"] = BFloat16Bits.from_float(np.full((3, 3), -0.25))
    tensors["tiny"] = BFloat16Bits.from_float(weight_like(rng, (50,)) * 1e-38)  # subnormals
    return tensors


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_round_trip_every_policy(policy, rng: np.random.Generator) -> None:
    tensors = _bf16_tensors(rng)
    grad_rms = {name: 0.5 for name in tensors}
    blob = compress(tensors, policy, grad_rms=grad_rms)
    out = decompress(blob)
    info = inspect(blob)
    assert info.version in (2, 3) and list(out) == list(tensors)  # 3: TargetRate's group
    for t in info.tensors:
        x, y = tensors[t.name].to_float32(), out[t.name]
        assert t.dtype == "bfloat16" and y.dtype == np.float32 and y.shape == x.shape
        assert is_bfloat16_exact(y), t.name  # decoded values are bfloat16
        if x.size == 0 or (t.mode in ("raw", "constant") and t.step is None):
            assert np.array_equal(x, y), t.name  # exact
            assert t.mode != "raw" or t.bits == 16
            continue
        err = float(np.abs(x.astype(np.float64) - y).max())
        big = float(np.abs(x).max())
        rounding = big * 2.0**-8 + 2.0**-133  # half a bfloat16 ulp, generously
        if t.step is None:
            assert err <= half_bin_bound(t.w_min, t.w_max, t.bits) + rounding, t.name
        elif t.clamped == 0:
            assert err <= t.step / 2 + rounding, t.name


@pytest.mark.parametrize(
    "policy", [Fixed(3), Fixed(8), Fixed(12), RelativeStep(alpha=0.5), RelativeStep(4.0)], ids=repr
)
def test_decoded_values_are_the_float32_decode_rounded(policy, rng: np.random.Generator) -> None:
    # same values, same quantizer: a bfloat16 record decodes to its float32 twin's values
    # rounded to bfloat16 (the wire dtype changes the final rounding and nothing else)
    x = round_to_bfloat16(weight_like(rng, (64, 50)))
    as_bf16 = compress({"w": BFloat16Bits.from_float(x)}, policy)
    as_f32 = compress({"w": x}, policy)
    assert inspect(as_bf16).tensors[0].mode != "raw"
    assert inspect(as_f32).tensors[0].mode != "raw"
    want = round_to_bfloat16(decompress(as_f32)["w"])
    assert decompress(as_bf16)["w"].tobytes() == want.tobytes()


def test_torch_bfloat16_in_and_out() -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(40, 30, generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
    view = w.detach()[:, ::3]  # non-contiguous
    for policy in (Lossless(), Fixed(6), TargetRate(bits_per_param=2.0)):
        blob = compress({"w": w, "v": view}, policy)
        out = decompress(blob)
        assert [t.dtype for t in inspect(blob).tensors] == ["bfloat16"] * 2
        back = torch.from_numpy(out["w"]).to(torch.bfloat16)  # exact
        assert torch.equal(back.float(), torch.from_numpy(out["w"]))
        if policy.lossless:
            assert torch.equal(back, w.detach()) and torch.equal(
                torch.from_numpy(out["v"]).to(torch.bfloat16), view
            )
    # torch and BFloat16Bits inputs make the same packet
    bits = BFloat16Bits(w.detach().view(torch.int16).numpy())
    assert compress({"w": w}, Fixed(5)) == compress({"w": bits}, Fixed(5))


def test_raw_values_take_two_bytes_each() -> None:
    x = round_to_bfloat16(np.linspace(-3, 3, 1000))
    blob = compress({"w": BFloat16Bits.from_float(x)}, Lossless())
    t = inspect(blob).tensors[0]
    assert (t.mode, t.bits, t.dtype) == ("raw", 16, "bfloat16")
    # the payload is the bit patterns, little-endian, right before the CRC
    assert blob[-4 - 2000 : -4] == bfloat16_bits(x).astype("<u2").tobytes()
    # header: name (2), dtype, ndim, dims (2), mode, bits, entropy (4), w_min, w_max (2 + 2)
    assert t.nbytes == 2000 + 2 + 1 + 1 + 2 + 1 + 1 + 4 + 2 + 2
    # exactly the size of the float16 packet of as many values (different bytes)
    assert len(blob) == len(compress({"w": x.astype(np.float16)}, Lossless()))


def test_float_packets_keep_version_1() -> None:
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    assert inspect(compress({"w": x}, Fixed(8))).version == 1
    both = compress({"w": x, "b": BFloat16Bits.from_float(x)}, Fixed(8))
    assert inspect(both).version == 2
    assert [t.dtype for t in inspect(both).tensors] == ["float32", "bfloat16"]
    assert inspect(both).as_dict()["tensors"][1]["dtype"] == "bfloat16"  # type: ignore[index]


def test_levels_beyond_bfloat16_fall_back_to_raw() -> None:
    # The top level, 3 * step = 1.003 * M, is a finite float32 but above the bfloat16
    # overflow threshold (about 1.00195 * M): a bfloat16 step record could not hold it.
    m = float(float32_from_bits(np.array([0x7F7F], np.uint16))[0])  # largest bfloat16
    x = np.array([0.0, m], np.float32)  # levels 0 ... 3 (2 bits); RMS m / sqrt(2)
    policy = RelativeStep(alpha=1.003 * 2**0.5 / 3)  # step 1.003 m / 3
    assert inspect(compress({"w": x}, policy)).tensors[0].step is not None  # float32: fine
    blob = compress({"w": BFloat16Bits.from_float(x)}, policy)
    assert inspect(blob).tensors[0].mode == "raw"
    assert np.array_equal(decompress(blob)["w"], x)


def test_bad_bfloat16_inputs() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        compress({"w": BFloat16Bits(np.array([0x3F80, 0x7FC0], np.uint16))})
    with pytest.raises(ValueError, match="NaN or Inf"):
        compress({"w": BFloat16Bits(np.array([0xFF80], np.uint16))}, Lossless())
    with pytest.raises(TypeError, match="bfloat16"):
        compress({"w": np.zeros(3, np.int16)})


# ---- accumulate ---------------------------------------------------------------------------


def test_accumulate_into_float32(rng: np.random.Generator) -> None:
    tensors = [
        {"a": BFloat16Bits.from_float(weight_like(rng, (30, 20))), "b": np.ones(5, np.float32)}
        for _ in range(3)
    ]
    policies = [Fixed(7), TargetRate(bits_per_param=1.5), Lossless()]
    blobs = [compress(t, p) for t, p in zip(tensors, policies, strict=True)]
    acc = {"a": np.zeros((30, 20), np.float32), "b": np.zeros(5, np.float32)}
    want = {k: v.copy() for k, v in acc.items()}
    for blob in blobs:
        accumulate(blob, acc)
        for k, v in decompress(blob).items():
            want[k] += v
    assert all(acc[k].tobytes() == want[k].tobytes() for k in acc)
    # a bfloat16 tensor decodes to float32: only float32 accumulators match it
    with pytest.raises(PacketMismatchError, match="bfloat16 .decoded as float32"):
        accumulate(blobs[0], {"a": np.zeros((30, 20)), "b": np.zeros(5, np.float32)})


# ---- the wire: corrupt packets ------------------------------------------------------------


def _record(**kw) -> bytes:
    args = dict(
        name="w", dtype=BFLOAT16, shape=(4,), mode=MODE_RAW, bits=16, entropy=None,
        w_min=0.0, w_max=3.0,
    )  # fmt: skip
    args.update(kw)
    return encode_record_header(**args)  # type: ignore[arg-type]


RAW4 = bfloat16_bits(np.arange(4, dtype=np.float32)).astype("<u2").tobytes()


def _packet(*parts: bytes, version: int = 2) -> bytes:
    return finish_packet([packet_header(1, version), *parts])


def test_a_forged_bfloat16_packet_decodes() -> None:
    blob = _packet(_record(), RAW4)
    assert decompress(blob)["w"].tolist() == [0, 1, 2, 3]
    assert blob == compress({"w": BFloat16Bits.from_float(np.arange(4.0))}, Lossless())


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_packet(_record(), RAW4[:-2]), "truncated: payload"),  # raw length: 3 values, not 4
        (_packet(_record(), RAW4 + b"\x00\x00"), "unexpected bytes"),  # 5 values
        (_packet(_record(bits=32), RAW4), "raw bfloat16 tensor needs bits = 16"),
        (_packet(_record(), RAW4, version=1), "bfloat16 needs format version 2"),
        (_packet(_record(mode=MODE_BITPACK, bits=16), RAW4), "bitpack needs"),
        (_packet(_record()[:-2] + b"\x80\x7f", RAW4), "non-finite range"),  # w_max = inf
        (_packet(_record(shape=(1 << 31,))), "max_output_bytes"),  # 4 bytes per decoded value
    ],
)
def test_corrupt_bfloat16_headers(blob: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError, match=message):
        inspect(blob)
    with pytest.raises(CorruptPacketError, match=message):
        decompress(blob)


def test_corrupt_bfloat16_raw_values() -> None:
    for bad in (b"\xc0\x7f", b"\x80\x7f", b"\x80\x40"):  # NaN, inf, 4.0 (outside w_max)
        with pytest.raises(CorruptPacketError, match="raw values span"):
            decompress(_packet(_record(), RAW4[:-2] + bad))


def test_step_levels_must_be_finite_in_bfloat16() -> None:
    # level 1 at step 3.39e38 is a finite float32 (it is below 2**128) that rounds to inf
    # in bfloat16
    step = float(_f32([0x7F7F8000])[0])  # the bfloat16 overflow threshold
    header = _record(
        shape=(8,), mode=MODE_BITPACK, bits=1, quant=QUANT_STEP, step=step, qmin=0,
        w_min=0.0, w_max=0.0,
    )  # fmt: skip
    with pytest.raises(CorruptPacketError, match="overflow bfloat16"):
        inspect(_packet(header, b"\x00"))
    fine = header.replace(struct.pack("<d", step), struct.pack("<d", 1.0))
    assert decompress(_packet(fine, b"\xff"))["w"].tolist() == [1.0] * 8


def test_constant_and_empty_bfloat16_records() -> None:
    const = _record(mode=MODE_CONSTANT, bits=0, w_min=-0.5, w_max=-0.5)
    assert decompress(_packet(const))["w"].tolist() == [-0.5] * 4
    empty = _record(shape=(0, 3), w_max=0.0)
    assert decompress(_packet(empty))["w"].shape == (0, 3)
    blob = compress({"e": BFloat16Bits(np.zeros((0, 3), np.uint16))})
    assert inspect(blob).tensors[0].bits == 16 and inspect(blob).version == 2


def test_forging_a_header_needs_bfloat16_bounds() -> None:
    with pytest.raises(ValueError, match="exact bfloat16"):
        _record(w_max=0.1)


def test_mutated_bfloat16_packets_raise_only_corrupt_packet_errors(
    rng: np.random.Generator,
) -> None:
    x = {"w": BFloat16Bits.from_float(weight_like(rng, (40,))), "z": np.zeros(3, np.float32)}
    blobs = [compress(x, p) for p in (Lossless(), Fixed(4), TargetRate(bits_per_param=2.0))]
    for blob in blobs:
        for pos in range(len(blob) - 4):
            for flip in (0x01, 0x80):
                mutated = bytearray(blob)
                mutated[pos] ^= flip
                body = bytes(mutated[:-4])
                forged = finish_packet([body])  # valid CRC: the structure is what's tested
                try:
                    out = decompress(forged)
                except CorruptPacketError:
                    continue  # any other exception fails the test
                for t in inspect(forged).tensors:
                    assert out[t.name].dtype == np.float32
                    assert t.dtype != "bfloat16" or is_bfloat16_exact(out[t.name]), t.name
