"""compress / decompress / inspect / accumulate: round trips, errors, known answers."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import tenfold
import tenfold.codec
from tenfold.codec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    BFloat16Bits,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    PacketMismatchError,
    TargetRate,
    accumulate,
    ans,
    compress,
    decompress,
    inspect,
)

from .conftest import half_bin_bound, rounding_slack, weight_like

POLICIES = [
    EntropyAdaptive(),
    EntropyAdaptive(c=5),
    Fixed(1),
    Fixed(8),
    Fixed(13),
    Fixed(16),
    Fixed(20),
    Fixed(24),
    Lossless(),
]
SHAPES = [(), (1,), (2,), (7,), (3, 5), (17, 33), (2, 3, 4, 5), (0,), (4, 0, 3)]


def _check_close(x: np.ndarray, y: np.ndarray, info: tenfold.TensorInfo) -> None:
    assert y.shape == x.shape and y.dtype == x.dtype
    if info.mode in ("raw", "constant") or x.size == 0:
        assert np.array_equal(x, y)
        return
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert err.max() <= half_bin_bound(info.w_min, info.w_max, info.bits) + rounding_slack(x)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_trip_shapes(policy, dtype, rng: np.random.Generator) -> None:
    tensors = {f"t{i}": weight_like(rng, shape, dtype) for i, shape in enumerate(SHAPES)}
    tensors["const"] = np.full((3, 3), -0.25, dtype=dtype)
    blob = compress(tensors, policy)
    out = decompress(blob)
    info = inspect(blob)
    assert list(out) == list(tensors)  # same names, same order
    for t in info.tensors:
        _check_close(tensors[t.name], out[t.name], t)
    assert info.nbytes == len(blob)
    assert sum(t.nbytes for t in info.tensors) + info.overhead_nbytes == len(blob)
    assert info.overhead_nbytes == 4 + 1 + 1 + 4  # magic, version, count, CRC
    assert info.tensors[-1].mode == "constant" if not policy.lossless else "raw"


def test_inspect_fields(rng: np.random.Generator) -> None:
    w = weight_like(rng, (100, 50))
    blob = compress({"w": w, "b": np.zeros(50, np.float32)}, EntropyAdaptive(seed=3))
    info = inspect(blob)
    tw, tb = info.tensors
    assert (tw.name, tw.shape, tw.dtype, tw.mode) == ("w", (100, 50), "float32", "huffman")
    assert tw.w_min == float(w.min()) and tw.w_max == float(w.max())
    assert tw.entropy is not None and 0 < tw.entropy <= 4
    assert 6 < tw.bits <= 10  # ceil(H + 6), H <= M = 4 (exactness: test_known_answer)
    assert (tb.mode, tb.bits, tb.w_min, tb.w_max, tb.entropy) == ("constant", 0, 0.0, 0.0, None)
    assert info.num_values == 5050
    assert info.bits_per_param == 8 * len(blob) / 5050
    assert tw.bits_per_param == 8 * tw.nbytes / 5000
    assert info.version == 1 and tenfold.codec.FORMAT_VERSION == 4  # v1 when v1 suffices
    assert info.as_dict()["tensors"][0]["name"] == "w"


def test_empty_packet_and_empty_tensors() -> None:
    blob = compress({})
    assert decompress(blob) == {}
    info = inspect(blob)
    assert info.num_values == 0 and info.bits_per_param == math.inf
    blob = compress({"e": np.zeros((0, 4), np.float32)})
    t = inspect(blob).tensors[0]
    assert (t.mode, t.bits, t.w_min, t.w_max, t.num_values) == ("raw", 32, 0.0, 0.0, 0)
    assert t.bits_per_param == math.inf
    assert decompress(blob)["e"].shape == (0, 4)


def test_known_answer() -> None:
    """A tensor small enough to code by hand (see the comments for each number)."""
    # 512 values, the 8-value pattern 0 0 0 0 1 1 2 3 repeated: w_min = 0, w_max = 3.
    x = np.tile(np.array([0, 0, 0, 0, 1, 1, 2, 3], dtype=np.float32), 64)
    # M = 2, F = 1: bins floor(4 w / 3) = 0, 1, 2, 3 (3 is clamped from 4), histogram
    # (256, 128, 64, 64) -> p = (1/2, 1/4, 1/8, 1/8) -> H = 1.75 bits. N = ceil(1.75 + 0.25) = 2.
    policy = EntropyAdaptive(F=1.0, M=2, c=0.25)
    blob = compress({"w": x}, policy)
    (t,) = inspect(blob).tensors
    assert t.entropy == 1.75 and t.bits == 2 and t.mode == "huffman"
    # Huffman over the same histogram: lengths (1, 2, 3, 3), canonical codes 0, 10, 110, 111.
    # Value j goes to stream j % 4: streams 0/1 hold 64 x "0" and 64 x "1" (64*1 + 64*2 =
    # 192 bits = 24 bytes), streams 2/3 hold 64 x "0" and 64 x "2" or "3" (64 + 192 = 256
    # bits = 32 bytes): payload 112 bytes (vs 128 bytes bit-packed at 2 bits).
    # Record: name len 1 + "w" 1 + dtype 1 + ndim 1 + dim varint(512) 2 + mode 1 + N 1 +
    # entropy 4 + w_min 4 + w_max 4 = 20; table len 1 + table 2 (nibbles 1 2 3 3);
    # 4 stream sizes x 1 byte; payload 112 -> 139 bytes.
    assert t.nbytes == 139
    # Packet: "TFLD" 4 + version 1 + count 1 + record 139 + CRC 4 = 149 bytes.
    assert len(blob) == 149
    record = blob[6:145]
    assert record[:20] == (
        b"\x01w\x02\x01\x80\x04\x01\x02"
        + np.float32(1.75).tobytes()
        + b"\x00" * 4
        + np.float32(3).tobytes()
    )
    assert record[20:27] == b"\x02\x21\x33\x18\x18\x20\x20"
    # stream 0: codes 0, 10, 0, 10, ... = bits 0 1 0 0 1 0 ... LSB first -> 92 24 49 (x 8)
    assert record[27:51] == bytes.fromhex("922449") * 8
    centres = np.array([0.375, 1.125, 1.875, 2.625], dtype=np.float32)
    assert np.array_equal(decompress(blob)["w"], centres[[0, 0, 0, 0, 1, 1, 2, 3] * 64])


def test_determinism(rng: np.random.Generator) -> None:
    tensors = {"a": weight_like(rng, (300, 40)), "b": weight_like(rng, (40,), np.float64)}
    assert compress(tensors) == compress(dict(tensors))
    assert compress(tensors, EntropyAdaptive(seed=1)) == compress(tensors, EntropyAdaptive(seed=1))


def test_torch_tensors_are_accepted(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    w = torch.from_numpy(weight_like(rng, (20, 30))).requires_grad_()
    h = torch.ones(3, dtype=torch.float16)
    out = decompress(compress({"w": w, "h": h}, Fixed(8)))
    assert out["w"].dtype == np.float32 and out["h"].dtype == np.float16
    # bfloat16 is coded as bfloat16 (tests/codec/test_bfloat16.py) and decodes to float32
    assert inspect(compress({"w": torch.zeros(3, dtype=torch.bfloat16)})).tensors[0].dtype == (
        "bfloat16"
    )
    packet = torch.from_numpy(np.frombuffer(compress({"h": h}), np.uint8).copy())
    assert decompress(packet)["h"].tolist() == [1.0, 1.0, 1.0]


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="int32"):
        compress({"w": np.arange(3, dtype=np.int32)})
    with pytest.raises(TypeError, match="complex"):
        compress({"w": np.zeros(3, np.complex64)})
    with pytest.raises(TypeError, match="names must be str"):
        compress({1: np.zeros(3)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping"):
        compress([("w", np.zeros(3))])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy"):
        compress({"w": np.zeros(3)}, "entropy")  # type: ignore[arg-type]
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="'fc2.bias'"):
            compress({"ok": np.zeros(2), "fc2.bias": np.array([0.0, bad, 1.0])})
    with pytest.raises(ValueError, match="'g'"):
        compress({"g": np.array([0.0, 1.0])}, GradientRMS(4.0), grad_rms={})
    with pytest.raises(TypeError):
        decompress("TFLD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decompress(np.zeros(10, np.float32))


def test_gradient_rms_policy_end_to_end(rng: np.random.Generator) -> None:
    tensors = {"a": weight_like(rng, (50,)), "b": weight_like(rng, (60,))}
    blob = compress(tensors, GradientRMS(3.0), grad_rms={"a": 0.0, "b": 15.0})
    assert [t.bits for t in inspect(blob).tensors] == [3, 7]


def test_unicode_names_and_non_native_dtypes() -> None:
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    out = decompress(compress({"Gewicht.ü.层": x}, Lossless()))
    assert np.array_equal(out["Gewicht.ü.层"], x) and out["Gewicht.ü.层"].dtype == np.float32


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "ndarray", "readonly"])
def test_blob_types(kind: str, rng: np.random.Generator) -> None:
    blob = compress({"w": weight_like(rng, (64,))})
    as_array = np.frombuffer(blob, np.uint8)
    given = {
        "bytes": blob,
        "bytearray": bytearray(blob),
        "memoryview": memoryview(blob),
        "ndarray": as_array.copy(),
        "readonly": as_array,
    }[kind]
    assert np.array_equal(decompress(given)["w"], decompress(blob)["w"])


def test_max_output_bytes_is_enforced_before_allocation() -> None:
    blob = compress({"w": np.ones((1000,), np.float32), "v": np.linspace(0, 1, 10)})
    decompress(blob, max_output_bytes=4080)
    with pytest.raises(CorruptPacketError, match="max_output_bytes"):
        decompress(blob, max_output_bytes=4079)
    with pytest.raises(CorruptPacketError, match="max_output_bytes"):
        inspect(blob, max_output_bytes=100)
    assert DEFAULT_MAX_OUTPUT_BYTES == 1 << 32


# ---- accumulate -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_accumulate_is_bit_equal_to_decompress_and_add(policy, rng: np.random.Generator) -> None:
    shapes = {"w": (37, 11), "b": (11,), "s": (), "e": (0, 2), "c": (5,)}
    acc = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    acc64 = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    ref = {k: v.copy() for k, v in acc.items()}
    ref64 = {k: v.copy() for k, v in acc64.items()}
    for rank in range(4):
        t32 = {k: weight_like(rng, s) for k, s in shapes.items()}
        t32["c"] = np.full(5, 0.1 * rank, np.float32)
        blob = compress(t32, policy)
        info = accumulate(blob, acc)
        assert info.nbytes == len(blob)
        for k, v in decompress(blob).items():
            ref[k] += v.astype(np.float32)
        blob64 = compress({k: v.astype(np.float64) for k, v in t32.items()}, policy)
        accumulate(blob64, acc64)
        for k, v in decompress(blob64).items():
            ref64[k] += v
    for k in shapes:
        assert acc[k].tobytes() == ref[k].tobytes()
        assert acc64[k].tobytes() == ref64[k].tobytes()


def test_accumulate_overwrite_clears_negative_zeros() -> None:
    # a raw record (Lossless), a constant and a paper-quantizer record holding -0.0: adding
    # into +0.0 gives +0.0, and so does overwrite (decompress keeps -0.0)
    x = np.array([-0.0, 1.0, -2.5, -0.0], np.float32)
    for policy in (Lossless(), Fixed(8)):
        blob = compress({"x": x, "z": np.full(3, -0.0, np.float32)}, policy)
        out = {"x": np.full(4, np.nan, np.float32), "z": np.full(3, np.nan, np.float32)}
        accumulate(blob, out, overwrite=True)
        zeros = {"x": np.zeros(4, np.float32), "z": np.zeros(3, np.float32)}
        accumulate(blob, zeros)
        assert out["x"].tobytes() == zeros["x"].tobytes()
        assert out["z"].tobytes() == zeros["z"].tobytes() == np.zeros(3, np.float32).tobytes()
    assert np.signbit(decompress(compress({"x": x}, Lossless()))["x"][0])


def test_accumulate_overwrite_refuses_overlapping_arrays() -> None:
    blob = compress({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    base = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        accumulate(blob, {"a": base[:4], "b": base[2:]}, overwrite=True)
    assert not base.any()
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        accumulate(blob, {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}, overwrite=1)  # type: ignore[arg-type]


def test_accumulate_mismatches_name_the_tensor() -> None:
    blob = compress({"a": np.ones(3, np.float32), "b": np.ones((2, 2), np.float32)})
    good = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)}
    accumulate(blob, good)
    cases = [
        ({"a": np.zeros(3, np.float32), "x": np.zeros((2, 2), np.float32)}, "'x'"),
        ({"b": np.zeros((2, 2), np.float32), "a": np.zeros(3, np.float32)}, "'a'"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros(4, np.float32)}, "'b'.*shape"),
        ({"a": np.zeros(3, np.float64), "b": np.zeros((2, 2), np.float32)}, "'a'.*dtype"),
        ({"a": np.zeros(3, np.float32)}, "'b'"),
        ({**good, "c": np.zeros(1, np.float32)}, "'c'.*missing"),
    ]
    for out, pattern in cases:
        before = {k: v.copy() for k, v in out.items()}
        with pytest.raises(PacketMismatchError, match=pattern):
            accumulate(blob, out)
        for k in out:  # nothing was added
            assert np.array_equal(out[k], before[k])


def test_accumulate_rejects_bad_outputs() -> None:
    blob = compress({"a": np.ones(4, np.float32)})
    with pytest.raises(TypeError):
        accumulate(blob, {"a": np.zeros(4, np.float16)})
    with pytest.raises(ValueError, match="contiguous"):
        accumulate(blob, {"a": np.zeros(8, np.float32)[::2]})
    with pytest.raises(TypeError):
        accumulate(blob, [np.zeros(4, np.float32)])  # type: ignore[arg-type]


def test_accumulate_rejects_corrupt_packets_before_adding() -> None:
    blob = bytearray(compress({"a": np.linspace(0, 1, 100, dtype=np.float32)}))
    blob[20] ^= 1
    out = {"a": np.zeros(100, np.float32)}
    with pytest.raises(CorruptPacketError):
        accumulate(bytes(blob), out)
    assert not out["a"].any()


# ---- decompress(out=) --------------------------------------------------------------------


def _garbage_like(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays of the same layout filled with random bits (NaNs and all): every value of
    them must be overwritten."""
    out = {}
    for k, v in arrays.items():
        raw = rng.integers(0, 256, size=v.nbytes, dtype=np.uint8)
        out[k] = raw.view(v.dtype).reshape(v.shape) if v.size else np.empty_like(v)
    return out


def _every_record_kind(rng: np.random.Generator, *, float16: bool) -> dict[str, object]:
    """Tensors that make every record kind: large (entropy / ANS), tiny (grouped), constant,
    empty, scalar, float32 and float64 (and float16 if asked), and bfloat16 (its bit
    patterns: decoded as float32, so an ``out`` holds float32 for it)."""
    tensors: dict[str, object] = {
        "w": weight_like(rng, (300, 257)),
        "w64": weight_like(rng, (40, 33)).astype(np.float64),
        "b": weight_like(rng, (11,)),
        "c": np.full(7, 0.25, np.float32),
        "s": np.float32(3.0).reshape(()),
        "e": np.zeros((0, 3), np.float32),
        "bf": BFloat16Bits.from_float(weight_like(rng, (3000,))),
    }
    if float16:
        tensors["h"] = weight_like(rng, (1000,)).astype(np.float16)
    return tensors


@pytest.mark.parametrize("policy", [*POLICIES, TargetRate(1.0), TargetRate(0.25)], ids=repr)
@pytest.mark.parametrize("threads", [1, 2])
def test_accumulate_overwrite_equals_adding_into_zeros(
    policy, threads: int, rng: np.random.Generator
) -> None:
    # every record kind the accumulators take (float32 and float64), written over garbage:
    # the bits of adding into +0.0
    blob = compress(_every_record_kind(rng, float16=False), policy)
    zeros = {k: np.zeros_like(v) for k, v in decompress(blob).items()}
    accumulate(blob, zeros)
    out = _garbage_like(zeros, rng)
    info = accumulate(blob, out, threads=threads, overwrite=True)
    assert info == inspect(blob)
    for k, v in zeros.items():
        assert out[k].tobytes() == v.tobytes(), k


@pytest.mark.parametrize("policy", [*POLICIES, TargetRate(1.0), TargetRate(0.25)], ids=repr)
@pytest.mark.parametrize("threads", [1, 2])
def test_decompress_into_out_equals_a_fresh_decompress(
    policy, threads: int, rng: np.random.Generator
) -> None:
    blob = compress(_every_record_kind(rng, float16=True), policy)
    fresh = decompress(blob)
    out = _garbage_like(fresh, rng)
    got = decompress(blob, out=out, threads=threads)
    assert list(got) == list(fresh)
    for k, v in fresh.items():
        assert got[k] is out[k]
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert got[k].tobytes() == v.tobytes()


def test_decompress_into_out_checks_the_arrays_first() -> None:
    blob = compress({"a": np.ones(3, np.float32), "b": np.ones((2, 2), np.float16)})
    good = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float16)}
    assert decompress(blob, out=good)["b"] is good["b"]
    mismatches = [
        ({"a": np.zeros(3, np.float32), "x": np.zeros((2, 2), np.float16)}, "'x'"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros(4, np.float16)}, "'b'.*shape"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)}, "'b'.*dtype"),
        ({"a": np.zeros(3, np.float32)}, "'b'"),
    ]
    for out, pattern in mismatches:
        before = {k: v.copy() for k, v in out.items()}
        with pytest.raises(PacketMismatchError, match=pattern):
            decompress(blob, out=out)
        for k in out:  # nothing was written
            assert np.array_equal(out[k], before[k])
    strided = {"a": np.zeros(6, np.float32)[::2], "b": good["b"]}
    with pytest.raises(ValueError, match="contiguous"):
        decompress(blob, out=strided)
    frozen = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float16)}
    frozen["a"].flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        decompress(blob, out=frozen)
    with pytest.raises(TypeError, match="mapping"):
        decompress(blob, out=[good["a"], good["b"]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="numpy array"):
        decompress(blob, out={"a": [0.0, 0.0, 0.0], "b": good["b"]})  # type: ignore[dict-item]


def test_decompress_into_overlapping_arrays_is_refused() -> None:
    blob = compress({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
    base = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        decompress(blob, out={"a": base[:4], "b": base[2:]})
    assert not base.any()


def test_decompress_into_out_rejects_a_corrupt_packet_before_writing() -> None:
    blob = bytearray(compress({"a": np.linspace(0, 1, 100, dtype=np.float32)}))
    blob[20] ^= 1
    out = {"a": np.zeros(100, np.float32)}
    with pytest.raises(CorruptPacketError):
        decompress(bytes(blob), out=out)
    assert not out["a"].any()


def test_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys, tenfold.codec, numpy as np; "
        "tenfold.codec.decompress(tenfold.codec.compress({'w': np.ones(3)})); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class _RepeatingMapping(dict):
    """A Mapping whose items() repeats a key (what a buggy custom mapping might do)."""

    def items(self):  # type: ignore[override]
        return [("w", np.zeros(2)), ("w", np.ones(2))]

    def __len__(self) -> int:
        return 2


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate tensor name 'w'"):
        compress(_RepeatingMapping())


def test_a_custom_policy_cannot_write_an_unreadable_packet() -> None:
    class Broken(Fixed):
        id = "broken-test"

        def choose_bits(self, values, w_min, w_max, *, name, position, grad_rms):
            return 30, None

    class Noisy(Fixed):
        id = "noisy-test"

        def choose_bits(self, values, w_min, w_max, *, name, position, grad_rms):
            return 8, float("nan")

    x = {"w": np.linspace(0, 1, 10)}
    with pytest.raises(ValueError, match="bits=30"):
        compress(x, Broken(8))
    with pytest.raises(ValueError, match="entropy nan"):
        compress(x, Noisy(8))


@pytest.mark.parametrize("rate", [0.25, 1.0, 4.0])
def test_decompress_into_large_arrays_streams_the_same_values(
    rate: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # above ans.STREAM_MIN_BYTES decompress(out=) writes with non-temporal stores
    rng = np.random.default_rng(5)
    x = {"a": rng.laplace(0, 1e-3, 200_003).astype(np.float32), "b": rng.standard_normal(70_001)}
    blob = compress(x, TargetRate(bits_per_param=rate))
    want = decompress(blob)
    monkeypatch.setattr(ans, "STREAM_MIN_BYTES", 0)
    out = {k: np.full_like(v, np.nan) for k, v in want.items()}
    got = decompress(blob, out=out)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
