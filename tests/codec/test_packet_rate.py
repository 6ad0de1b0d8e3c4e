"""TargetRate's packet-level rate control and the group section (format version 3)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import tenfold
from tenfold.codec import (
    BFloat16Bits,
    CorruptPacketError,
    TargetRate,
    accumulate,
    compress,
    decompress,
    inspect,
    parallel,
)
from tenfold.errors import ConfigError, InputTypeError


def _mlp(rng: np.random.Generator, sizes: list[int]) -> dict[str, np.ndarray]:
    out = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        scale = 10.0 ** rng.uniform(-4, -2)
        out[f"layers.{i}.weight"] = (scale * rng.laplace(size=(b, a))).astype(np.float32)
        out[f"layers.{i}.bias"] = (scale * rng.laplace(size=b)).astype(np.float32)
    return out


def _bits(tensors: dict[str, np.ndarray], rate: float) -> float:
    return inspect(compress(tensors, TargetRate(bits_per_param=rate))).bits_per_param


def test_the_default_policy_is_the_librarys() -> None:
    x = {"w": np.random.default_rng(0).laplace(size=5000).astype(np.float32)}
    assert compress(x) == compress(x, TargetRate(bits_per_param=1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_models_are_near_their_target(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tiny = _mlp(rng, [20, 60, 10])  # 1,870 values in 4 tensors (names like "layers.0.weight")
    assert sum(v.size for v in tiny.values()) < 2000
    assert _bits(tiny, 1.0) <= 2.0
    mid = _mlp(rng, [300, 300, 30])  # ~99k values
    assert _bits(mid, 1.0) <= 1.15
    big = _mlp(rng, [200, 256, 256, 10])  # ~120k values in 6 tensors
    for rate in (0.25, 1.0, 4.0):
        assert abs(_bits(big, rate) / rate - 1) <= 0.05, rate


def test_many_tensors_one_budget() -> None:
    rng = np.random.default_rng(3)
    tensors = _mlp(rng, [64] * 30)  # 29 layers, 58 tensors, ~120k values
    for rate in (0.5, 2.0):
        info = inspect(compress(tensors, TargetRate(rate)))
        assert abs(info.bits_per_param / rate - 1) <= 0.05
        assert info.version == 3 and {t.mode for t in info.tensors} >= {"group"}


def test_group_members_of_every_dtype_round_trip_and_accumulate() -> None:
    rng = np.random.default_rng(4)
    tensors = {
        "f32": (0.01 * rng.laplace(size=(7, 9))).astype(np.float32),
        "f16": (0.01 * rng.laplace(size=33)).astype(np.float16),
        "f64": 0.01 * rng.laplace(size=(2, 3, 4)),
        "bf16": BFloat16Bits.from_float(0.01 * rng.laplace(size=20)),
        "scalar": np.float32(0.3),
        "const": np.full(5, 0.25, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "big": (0.01 * rng.laplace(size=40_000)).astype(np.float32),
    }
    blob = compress(tensors, TargetRate(bits_per_param=2.0))
    info = inspect(blob)
    modes = {t.name: t.mode for t in info.tensors}
    assert info.version == 3 and modes["f16"] == modes["bf16"] == "group"
    assert modes["const"] == "constant" and modes["empty"] == "raw" and modes["big"] == "ans"
    assert sum(t.nbytes for t in info.tensors) + info.overhead_nbytes == len(blob)
    out = decompress(blob)
    for t in info.tensors:
        ref = tensors[t.name]
        ref = ref.to_float32() if isinstance(ref, BFloat16Bits) else np.asarray(ref)
        assert out[t.name].dtype == ref.dtype.newbyteorder("=") or t.dtype == "bfloat16"
        if t.step is not None:  # within half a step, plus the dtype's rounding
            err = np.abs(out[t.name].astype(np.float64) - ref.astype(np.float64))
            assert err.max() <= t.step / 2 * (1 + 1e-6) + 2.0**-8 * np.abs(ref).max() + 1e-12
    acc = {k: np.zeros(v.shape, np.float64 if v.dtype == np.float64 else np.float32)
           for k, v in out.items() if v.dtype != np.float16}  # fmt: skip
    f16 = {k for k, v in out.items() if v.dtype == np.float16}
    blob16 = compress({k: v for k, v in tensors.items() if k not in f16}, TargetRate(2.0))
    expect = decompress(blob16)
    accumulate(blob16, acc)
    for k, v in expect.items():
        assert np.array_equal(acc[k], v.astype(acc[k].dtype))


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_bytes_do_not_depend_on_threads(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    tensors = _mlp(rng, [100, 300, 200, 10])
    tensors["long"] = rng.laplace(size=50_003).astype(np.float32)
    serial = compress(tensors, TargetRate(1.0), threads=1)
    monkeypatch.setattr(parallel, "MIN_CHUNK", 1000)
    assert compress(tensors, TargetRate(1.0), threads=threads) == serial
    assert {k: v.tobytes() for k, v in decompress(serial, threads=threads).items()} == {
        k: v.tobytes() for k, v in decompress(serial, threads=1).items()
    }


def _seal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _member(name: bytes, n: int, step: float, dtype: int = 2) -> bytes:
    return bytes([len(name)]) + name + bytes([dtype, 1, n, 0x15]) + struct.pack("<d", step)


# a valid group section for 3 values: B = 1, qmin = 0, P = 12, f = [4096, 0] (one used
# symbol: every value is level 0), lanes of 4 bytes, each the state L = 2**16
_GROUP = bytes([1, 0, 12, 4]) + bytes([0x80, 0x20, 0, 0]) + b"\x04" * 4 + b"\x00\x00\x01\x00" * 4


def test_a_hand_made_group_decodes() -> None:
    blob = _seal(b"TFLD\x03\x01" + _member(b"z", 3, 0.5) + _GROUP)
    out = decompress(blob)
    assert out["z"].tolist() == [0.0, 0.0, 0.0]
    t = inspect(blob).tensors[0]
    assert (t.mode, t.bits, t.step, t.w_min, t.w_max) == ("group", 1, 0.5, 0.0, 0.5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"TFLD\x02\x01" + _member(b"z", 3, 0.5) + _GROUP, "needs format version 3"),
        (b"TFLD\x03\x01" + _member(b"z", 3, 0.5).replace(b"\x15", b"\x05") + _GROUP, "mode"),
        (b"TFLD\x03\x01" + _member(b"z", 3, 0.5), "truncated"),
        (b"TFLD\x03\x01" + _member(b"z", 3, -1.0) + _GROUP, "step"),
        (b"TFLD\x03\x01" + _member(b"z", 0, 0.5) + _GROUP, "at least one value"),
        (b"TFLD\x03\x01" + _member(b"z", 3, 1e300, dtype=1) + _GROUP, "overflow float16"),
        (b"TFLD\x03\x01" + _member(b"z", 3, 0.5) + _GROUP + b"\x00", "unexpected bytes"),
        (b"TFLD\x03\x01" + _member(b"z", 3, 0.5) + b"\x11" + _GROUP[1:], "group bits"),
    ],
)
def test_bad_groups_are_rejected(body: bytes, message: str) -> None:
    with pytest.raises(CorruptPacketError, match=message):
        decompress(_seal(body))


def test_bad_arguments_raise_the_library_errors() -> None:
    with pytest.raises(ConfigError):
        TargetRate(bits_per_param=0)
    with pytest.raises(ConfigError, match="NaN"):
        compress({"w": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(InputTypeError):
        compress({"w": np.arange(3)})
    with pytest.raises(ConfigError):
        compress({"w": np.zeros(3, np.float32)}, threads=0)
    assert issubclass(ConfigError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(ConfigError, tenfold.TenfoldError)


def test_a_1478_parameter_mlp_costs_under_two_bits_whatever_its_names() -> None:
    rng = np.random.default_rng(6)
    shapes = [(64, 16), (64,), (6, 64), (6,)]
    for names in (["0.weight", "0.bias", "2.weight", "2.bias"],
                  ["model.encoder.fc1.weight", "model.encoder.fc1.bias",
                   "model.encoder.fc2.weight", "model.encoder.fc2.bias"]):  # fmt: skip
        tensors = {
            n: (rng.laplace(size=s) * 10 ** rng.uniform(-4, -2)).astype(np.float32)
            for n, s in zip(names, shapes, strict=True)
        }
        assert sum(v.size for v in tensors.values()) == 1478
        assert _bits(tensors, 1.0) <= 2.0, names


def test_the_biases_of_a_larger_model_never_freeze() -> None:
    # at 0.1 bits/param the weights send almost nothing; biases and norms (a fraction of a
    # percent of the values) keep a step of at most 1 x their scale, as before
    rng = np.random.default_rng(7)
    tensors = _mlp(rng, [512, 512, 256])
    info = inspect(compress(tensors, TargetRate(bits_per_param=0.1)))
    assert abs(info.bits_per_param / 0.1 - 1) <= 0.05
    for t in info.tensors:
        scale = float(np.sqrt(np.mean(tensors[t.name].astype(np.float64) ** 2)))
        assert t.step is not None
        if t.name.endswith("bias"):
            assert t.step <= scale * (1 + 1e-9), t.name
        else:
            assert t.step > 3 * scale, t.name


def test_rate_control_with_no_usable_scale_still_codes() -> None:
    """Every tensor's scale is 0 (values whose RMS underflows to 0): the
    packet is still coded and decodes within the step (the fuzzer found this case, where
    the rate control once took the minimum of no ratios)."""
    import numpy as np

    import tenfold

    fi = np.finfo(np.float64)  # squares of these underflow to 0: the RMS is 0
    x = {"a": np.array([fi.smallest_subnormal, fi.tiny] * 3, np.float64)}
    blob = tenfold.compress(x, tenfold.TargetRate(1.0))
    out = tenfold.decompress(blob)
    step = tenfold.inspect(blob).tensors[0].step
    assert np.all(np.abs(out["a"] - x["a"]) <= step / 2 * (1 + 1e-9))


@pytest.mark.parametrize("rate", [0.1, 1.0, 8.0])
def test_values_far_below_binary32_are_planned_without_overflow(rate: float) -> None:
    # binary64 values of ~1e-58 fall in binary32's lowest buckets, billions of steps wide:
    # the size model's level index once wrapped there (an int64 floor) and wrote out of
    # bounds (a segfault Hypothesis found)
    rng = np.random.default_rng(0)
    x = {"tiny": rng.standard_normal(1760) * 1e-58, "w": rng.standard_normal(500)}
    blob = compress(x, TargetRate(bits_per_param=rate))
    out = decompress(blob)
    assert np.isfinite(out["tiny"]).all() and out["tiny"].shape == (1760,)


def test_huffman_is_not_built_where_ans_is_below_its_floor(monkeypatch) -> None:
    # below a bit per value ANS always beats Huffman's floor of a bit per value: the exact
    # path (a tensor under FUSED_MIN_VALUES) codes ANS first and skips Huffman; at 6 bits
    # it still builds Huffman to compare
    from tenfold.codec import api

    calls: list[int] = []
    real = api._huffman_candidate

    def counted(hist: np.ndarray) -> object:
        calls.append(1)
        return real(hist)

    monkeypatch.setattr(api, "_huffman_candidate", counted)
    x = {"w": np.random.default_rng(0).laplace(size=60_000).astype(np.float32)}
    assert inspect(compress(x, TargetRate(0.25), threads=1)).tensors[0].mode == "ans"
    assert calls == []
    compress(x, TargetRate(6.0), threads=1)
    assert calls == [1]
