"""Hypothesis properties: round trip + half-bin bound, determinism, mutated packets.

Profiles (tests/conftest.py): ``ci`` by default; ``HYPOTHESIS_PROFILE=long`` for a soak.
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tenfold.codec import (
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    Lossless,
    PacketMismatchError,
    RelativeStep,
    TargetRate,
    accumulate,
    compress,
    decompress,
    inspect,
)

from .conftest import half_bin_bound, rounding_slack

DTYPES: st.SearchStrategy[np.dtype] = st.sampled_from(
    [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
)

POLICIES = st.one_of(
    st.builds(Fixed, st.integers(1, 24)),
    st.builds(
        EntropyAdaptive,
        F=st.floats(0.001, 1.0),
        M=st.integers(1, 10),
        c=st.integers(0, 12),
        seed=st.integers(0, 2**64 - 1),
    ),
    st.just(Lossless()),
    st.builds(RelativeStep, alpha=st.floats(0.05, 8.0), coder=st.sampled_from(["auto", "huffman"])),
    st.builds(
        TargetRate,
        bits_per_param=st.floats(0.05, 8.0),
        coder=st.sampled_from(["auto", "huffman"]),
        seed=st.integers(0, 2**64 - 1),
    ),
)


@st.composite
def arrays(draw: st.DrawFn, max_side: int = 40) -> np.ndarray:
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side))
    # either any finite floats (extremes, subnormals) or a weight-like narrow range
    wide = draw(st.booleans())
    elements = (
        st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
        if wide
        else st.floats(-1.0, 1.0, width=8 * dtype.itemsize)
    )
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=0, max_size=8), min_size=0, max_size=4, unique=True))
    return {name: draw(arrays()) for name in names}


@given(tensors=tensor_dicts(), policy=POLICIES)
def test_round_trip_and_half_bin_bound(tensors: dict[str, np.ndarray], policy) -> None:
    blob = compress(tensors, policy)
    out = decompress(blob)
    info = inspect(blob)
    assert list(out) == list(tensors)
    assert info.nbytes == len(blob)
    for t in info.tensors:
        x, y = tensors[t.name], out[t.name]
        assert y.shape == x.shape and y.dtype == x.dtype
        if t.step is not None:  # mid-tread: half a step, unless clamped (and then counted)
            assert np.all(np.isfinite(y))
            err = np.abs(x.astype(np.float64) / 2 - y.astype(np.float64) / 2) * 2
            over = err > t.step / 2 * (1 + 1e-9) + rounding_slack(x)
            assert int(np.count_nonzero(over)) <= t.clamped
            continue
        if t.mode in ("raw", "constant") or x.size == 0:
            assert np.array_equal(x, y)  # exact (a constant keeps its value)
            continue
        assert np.all(np.isfinite(y))
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        assert yd.min() >= t.w_min and yd.max() <= t.w_max  # never outside the range
        err = np.max(np.abs(xd / 2 - yd / 2)) * 2  # halves: no overflow at +-1e308
        assert err <= half_bin_bound(t.w_min, t.w_max, t.bits) + rounding_slack(x)


@given(tensors=tensor_dicts(), policy=POLICIES, fill=st.integers(0, 255))
def test_decompress_into_out_is_a_fresh_decompress(
    tensors: dict[str, np.ndarray], policy, fill: int
) -> None:
    blob = compress(tensors, policy)
    fresh = decompress(blob)
    out = {}
    for k, v in fresh.items():  # every byte set to `fill`: NaNs, -0.0, whatever it makes
        raw = np.full(v.nbytes, fill, np.uint8)
        out[k] = raw.view(v.dtype).reshape(v.shape) if v.size else np.empty_like(v)
    got = decompress(blob, out=out)
    assert list(got) == list(fresh)
    for k, v in fresh.items():
        assert got[k] is out[k] and got[k].tobytes() == v.tobytes()


@given(tensors=tensor_dicts(), policy=POLICIES)
def test_determinism(tensors: dict[str, np.ndarray], policy) -> None:
    copy = {k: v.copy() for k, v in tensors.items()}
    assert compress(tensors, policy) == compress(copy, policy)


def _fix_crc(blob: bytes) -> bytes:
    body = blob[:-4] if len(blob) >= 4 else blob
    return body + struct.pack("<I", zlib.crc32(body))


@st.composite
def mutated_packets(draw: st.DrawFn) -> tuple[bytes, bytes]:
    tensors = draw(tensor_dicts())
    blob = compress(tensors, draw(POLICIES))
    data = bytearray(blob)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "overwrite", "field"]))
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, 8 * len(data) - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del data[draw(st.integers(0, max(0, len(data) - 1))) :]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "overwrite" and data:
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[at : at + len(chunk)] = chunk
    else:  # a header field: one of the first bytes of a record set to an extreme value
        at = draw(st.integers(0, min(len(data) - 1, 64)))
        data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    mutated = bytes(data)
    # half the time re-seal the checksum, so the structural checks behind it are exercised
    if draw(st.booleans()):
        mutated = _fix_crc(mutated)
    return blob, mutated


@given(case=mutated_packets())
def test_mutated_packets_only_raise_corrupt_packet_error(case: tuple[bytes, bytes]) -> None:
    original, mutated = case
    assume(mutated != original)
    try:
        out = decompress(mutated, max_output_bytes=1 << 22)
    except CorruptPacketError as exc:
        assert str(exc)  # says what is wrong
    else:
        # a (re-sealed) mutation that is still a valid packet decodes to valid arrays
        assert all(isinstance(v, np.ndarray) for v in out.values())
    with contextlib.suppress(CorruptPacketError):
        inspect(mutated, max_output_bytes=1 << 22)
    target = {
        k: np.zeros(v.shape, np.float64 if v.dtype == np.float64 else np.float32)
        for k, v in decompress(original).items()
    }
    with contextlib.suppress(CorruptPacketError, PacketMismatchError):
        accumulate(mutated, target, max_output_bytes=1 << 22)
    into = {k: np.empty_like(v) for k, v in decompress(original).items()}
    with contextlib.suppress(CorruptPacketError, PacketMismatchError):
        decompress(mutated, out=into, max_output_bytes=1 << 22)


@given(tensors=tensor_dicts(), policy=POLICIES, data=st.data())
def test_unsealed_mutations_are_always_detected(tensors, policy, data: st.DataObject) -> None:
    blob = bytearray(compress(tensors, policy))
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    try:
        decompress(bytes(blob))
    except CorruptPacketError:
        return
    raise AssertionError("a single-bit flip went unnoticed")


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(16, 20_000),
    rate=st.floats(0.05, 8.0),
    tails=st.sampled_from(["normal", "laplace", "student-t", "levels"]),
)
def test_skipping_the_huffman_candidate_never_changes_a_packet(
    seed: int, n: int, rate: float, tails: str
) -> None:
    # The exact step path builds Huffman only where ANS could lose to it; with the floor
    # disabled it builds every candidate (the order before the shortcut): same bytes.
    from unittest import mock

    from tenfold.codec import api

    rng = np.random.default_rng(seed)
    draw = {
        "normal": lambda: rng.standard_normal(n),
        "laplace": lambda: rng.laplace(size=n),
        "student-t": lambda: rng.standard_t(2, n),
        "levels": lambda: rng.integers(-2, 3, n) * 0.25,
    }[tails]
    x = {"w": draw().astype(np.float32), "b": draw()[: max(1, n // 7)].astype(np.float16)}
    policy = TargetRate(bits_per_param=rate)
    blob = compress(x, policy, threads=1)
    with mock.patch.object(api, "_huffman_floor", lambda n: -1):
        assert compress(x, policy, threads=1) == blob
