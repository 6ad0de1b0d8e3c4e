"""Peer group codecs (:mod:`paper.peers`): bytes, reconstructions, contract."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from paper.peers import (
    BFloat16Cast,
    BlockwiseInt8,
    Float16Cast,
    GroupCodec,
    GroupResult,
    PowerSGD,
    TopK,
    bfloat16_round,
    decode_positions,
    encode_positions,
    ideal_position_bits,
    peer_from_config,
    topk_decode,
    topk_encode,
)

ALL_PEERS: list[GroupCodec] = [
    Float16Cast(),
    BFloat16Cast(),
    BlockwiseInt8(),
    BlockwiseInt8(block=7),
    TopK(),
    TopK(fraction=0.3, value_bits=5),
    TopK(fraction=1.0, value_bits=1),
    PowerSGD(rank=1),
    PowerSGD(rank=4, seed=3, min_compression_rate=2.0),
]


def _ranks(
    shapes: dict[str, tuple[int, ...]], k: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``k`` ranks of standard-normal float32 tensors of the given shapes."""
    rng = np.random.default_rng(seed)
    return [
        {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(k)
    ]


SHAPES = {"w": (20, 30), "b": (30,), "conv": (8, 3, 3, 3), "s": ()}


def _assert_same(a: GroupResult, b: GroupResult) -> None:
    assert a.bytes_per_rank == b.bytes_per_rank
    assert list(a.mean) == list(b.mean)
    for name in a.mean:
        np.testing.assert_array_equal(a.mean[name], b.mean[name])
    for ra, rb in zip(a.reconstructions, b.reconstructions, strict=True):
        for name in ra:
            np.testing.assert_array_equal(ra[name], rb[name])


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("peer", ALL_PEERS, ids=repr)
def test_result_shapes_dtypes_and_determinism(peer: GroupCodec) -> None:
    inputs = _ranks(SHAPES, 3)
    res = peer.round(inputs, round=0)
    assert len(res.reconstructions) == len(res.bytes_per_rank) == 3
    assert list(res.mean) == list(SHAPES)
    for name, shape in SHAPES.items():
        assert res.mean[name].shape == shape and res.mean[name].dtype == np.float32
        for recon in res.reconstructions:
            assert recon[name].shape == shape and recon[name].dtype == np.float32
    assert all(isinstance(b, int) and b > 0 for b in res.bytes_per_rank)
    # A fresh codec of the same config gives bit-identical results.
    again = peer_from_config(peer.get_config()).round(inputs, round=0)
    _assert_same(res, again)


@pytest.mark.parametrize("peer", ALL_PEERS[:7], ids=repr)
def test_per_rank_mean_is_the_rank_ordered_float32_average(peer: GroupCodec) -> None:
    inputs = _ranks({"w": (50,)}, 4, seed=1)
    res = peer.round(inputs, round=0)
    acc = res.reconstructions[0]["w"].copy()
    for recon in res.reconstructions[1:]:
        acc += recon["w"]
    np.testing.assert_array_equal(res.mean["w"], acc / np.float32(4))


@pytest.mark.parametrize("peer", ALL_PEERS, ids=repr)
def test_config_round_trip_is_json_safe(peer: GroupCodec) -> None:
    config = peer.get_config()
    assert config["id"] == peer.id
    rebuilt = peer_from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(peer)
    assert rebuilt.get_config() == config


def test_inputs_are_not_modified() -> None:
    inputs = _ranks(SHAPES, 2)
    before = [{n: a.copy() for n, a in t.items()} for t in inputs]
    for peer in ALL_PEERS:
        res = peer.round(inputs, round=0)
        res.reconstructions[0]["b"][:] = 7.0  # results never alias the inputs
    for t, b in zip(inputs, before, strict=True):
        for name in t:
            np.testing.assert_array_equal(t[name], b[name])


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: TopK(fraction=0.0), "fraction"),
        (lambda: TopK(fraction=1.5), "fraction"),
        (lambda: TopK(fraction=float("nan")), "fraction"),
        (lambda: TopK(fraction=True), "fraction"),
        (lambda: TopK(value_bits=0), "value_bits"),
        (lambda: TopK(value_bits=9), "value_bits"),
        (lambda: TopK(value_bits=2.0), "value_bits"),
        (lambda: BlockwiseInt8(block=0), "block"),
        (lambda: PowerSGD(rank=0), "rank"),
        (lambda: PowerSGD(seed=-1), "seed"),
        (lambda: PowerSGD(min_compression_rate=0.0), "min_compression_rate"),
        (lambda: peer_from_config({"id": "qsgd"}), "unknown peer id"),
        (lambda: peer_from_config({"block": 3}), "'id'"),
        (lambda: peer_from_config({"id": "fp16", "scale": 2}), "bad parameters"),
        (lambda: peer_from_config({"id": "topk", "fraction": 2.0}), "fraction"),
    ],
)
def test_bad_parameters_raise_value_error(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("peer", ALL_PEERS, ids=repr)
def test_bad_inputs_raise_value_errors_naming_rank_and_tensor(peer: GroupCodec) -> None:
    good = _ranks({"a": (4, 5), "b": (5,)}, 3)
    missing = [good[0], good[1], {"a": good[2]["a"]}]
    with pytest.raises(ValueError, match=r"rank 2.*missing \['b'\]"):
        peer.round(missing, round=0)
    reshaped = [good[0], {"a": good[1]["a"].reshape(5, 4), "b": good[1]["b"]}, good[2]]
    with pytest.raises(ValueError, match=r"rank 1, tensor 'a': shape \(5, 4\)"):
        peer.round(reshaped, round=0)
    nan = {"a": good[2]["a"], "b": good[2]["b"].copy()}
    nan["b"][3] = np.nan
    with pytest.raises(ValueError, match=r"rank 2, tensor 'b': contains NaN"):
        peer.round([good[0], good[1], nan], round=0)
    wide = {"a": good[0]["a"].astype(np.float64), "b": good[0]["b"]}
    with pytest.raises(ValueError, match=r"rank 0, tensor 'a': expected float32"):
        peer.round([wide], round=0)
    with pytest.raises(ValueError, match="non-empty"):
        peer.round([], round=0)
    with pytest.raises(ValueError, match="round"):
        peer.round(good, round=-1)


def test_stateless_codecs_have_empty_state() -> None:
    for peer in ALL_PEERS[:7]:
        assert peer.state_dict() == {}
        peer.load_state_dict({})
        with pytest.raises(ValueError, match="stateless"):
            peer.load_state_dict({"q": np.zeros((2, 1), np.float32)})


# --------------------------------------------------------------------------- 16-bit casts


def test_float16_bytes_and_reconstruction() -> None:
    x = np.linspace(-3, 3, 1000, dtype=np.float32)
    res = Float16Cast().round([{"x": x}, {"x": -x}], round=0)
    assert res.bytes_per_rank == [2000, 2000]  # 2 bytes per value, nothing else
    np.testing.assert_array_equal(res.reconstructions[0]["x"], x.astype(np.float16))
    multi = Float16Cast().round([{"a": np.ones((3, 4), np.float32), "b": x}], round=0)
    assert multi.bytes_per_rank == [2 * 12 + 2000]


def test_float16_overflow_raises() -> None:
    x = np.array([1.0, 70000.0], np.float32)
    with pytest.raises(ValueError, match=r"rank 0, tensor 'x'.*float16"):
        Float16Cast().round([{"x": x}], round=0)


def test_bfloat16_matches_torch_and_error_bound() -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5000) * np.exp(rng.uniform(-30, 30, 5000))).astype(np.float32)
    res = BFloat16Cast().round([{"x": x}], round=0)
    recon = res.reconstructions[0]["x"]
    assert res.bytes_per_rank == [10000]
    assert not (recon.view(np.uint32) & np.uint32(0xFFFF)).any()  # a true bfloat16
    assert (np.abs(recon.astype(np.float64) - x) <= 2.0**-8 * np.abs(x.astype(np.float64))).all()
    # torch's own float32 -> bfloat16 cast is round-to-nearest-even too.
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(recon, expected)


def test_bfloat16_ties_round_to_even() -> None:
    # The bfloat16 ulp at 1 is 2**-7; 1 + 2**-8 is halfway between 1 (even) and 1 + 2**-7,
    # 1 + 3 * 2**-8 halfway between 1 + 2**-7 (odd) and 1 + 2**-6 (even).
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20], np.float32)
    assert bfloat16_round(x).tolist() == [1.0, 1 + 2**-6, -1.0, 1 + 2**-7]


# --------------------------------------------------------------------------- block int8


@pytest.mark.parametrize(
    ("n", "block", "expected"),
    [
        (256, 256, 256 + 4),  # exactly one block
        (257, 256, 257 + 8),  # one value spills into a second block
        (1, 256, 1 + 4),
        (600, 256, 600 + 12),  # 3 blocks, the last of 88 values
        (10, 1, 10 + 40),  # a scale per value
        (0, 256, 0),
    ],
)
def test_int8_bytes(n: int, block: int, expected: int) -> None:
    x = np.arange(n, dtype=np.float32)
    assert BlockwiseInt8(block).round([{"x": x}], round=0).bytes_per_rank == [expected]


def test_int8_error_bound_per_block() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((37, 29)) * rng.uniform(0.01, 100, (37, 1))).astype(np.float32)
    block = 50
    recon = BlockwiseInt8(block).round([{"x": x}], round=0).reconstructions[0]["x"]
    flat, rflat = x.reshape(-1).astype(np.float64), recon.reshape(-1).astype(np.float64)
    for start in range(0, flat.size, block):  # the last block has 37*29 % 50 = 23 values
        xs, rs = flat[start : start + block], rflat[start : start + block]
        scale = np.abs(xs).max()
        # Half a quantization step, plus the float32 rounding of the reconstruction.
        assert (np.abs(xs - rs) <= scale / 254 + scale * 2.0**-23).all()
        assert np.abs(rs).max() == pytest.approx(scale, rel=2**-23)  # absmax hits +-127


def test_int8_zero_block_and_symmetry() -> None:
    x = np.zeros(12, np.float32)
    x[6:] = [1.0, -1.0, 0.5, -0.5, 0.25, 0.0]
    recon = BlockwiseInt8(6).round([{"x": x}], round=0).reconstructions[0]["x"]
    np.testing.assert_array_equal(recon[:6], 0.0)  # an all-zero block: scale 0, zeros
    np.testing.assert_array_equal(recon[6:8], [1.0, -1.0])
    assert recon[8] == -recon[9]


# --------------------------------------------------------------------------- top-k


def test_position_code_on_a_hand_computed_set() -> None:
    # n = 16, positions {1, 4, 5, 11}: gaps g = 1, 2, 0, 5. Exact cost sum(g >> r) + 4 (1 + r):
    #   r=0: 8 + 4 = 12;  r=1: (0+1+0+2) + 8 = 11;  r=2: 1 + 12 = 13;  r=3: 0 + 16 = 16.
    # So r = 1: unary parts of 0,1,0,2 -> 0 | 10 | 0 | 110, then remainders 1,0,0,1.
    # The ideal is log2 C(16, 4) = log2 1820 = 10.83 bits.
    bits, r = encode_positions(np.array([1, 4, 5, 11]), 16)
    assert r == 1
    assert "".join(map(str, bits)) == "0100110" + "1001"
    assert len(bits) == 11 >= ideal_position_bits(16, 4) == pytest.approx(math.log2(1820))
    idx, used = decode_positions(bits, 4, r)
    assert idx.tolist() == [1, 4, 5, 11] and used == 11


def test_topk_message_on_a_hand_computed_tensor() -> None:
    x = np.zeros(16, np.float32)
    x[[1, 4, 5, 11]] = [3.0, -1.0, 2.0, 1.5]
    x[[0, 2]] = [0.5, -0.25]  # small values, dropped
    message = topk_encode(x, 4, 2)
    # Header: k=4 (uint32), r=1 (uint8), lo=1.0 and hi=3.0 (float32) = 13 bytes. Then 11 bits
    # of positions and 4 value codes of 2 bits (sign, level on {lo, hi}): 3 -> 01, -1 -> 10,
    # 2 -> 00 (0.5 of the way: half to even, level 0), 1.5 -> 00; 19 bits -> 3 bytes.
    assert struct.unpack_from("<IBff", message) == (4, 1, 1.0, 3.0)
    body = "".join(f"{b:08b}" for b in message[13:])
    assert body == "01001101001" + "01100000" + "00000"
    assert len(message) == 16
    res = TopK(fraction=4 / 16, value_bits=2).round([{"x": x}], round=0)
    assert res.bytes_per_rank == [16]
    expected = np.zeros(16, np.float32)
    expected[[1, 4, 5, 11]] = [3.0, -1.0, 1.0, 1.0]
    np.testing.assert_array_equal(res.reconstructions[0]["x"], expected)


def test_topk_keeps_exactly_the_top_k_positions() -> None:
    rng = np.random.default_rng(4)
    for n, fraction in [(1000, 0.01), (777, 0.05), (64, 0.5), (10, 0.01), (5, 1.0)]:
        x = rng.standard_normal(n).astype(np.float32)
        k = min(n, max(1, round(fraction * n)))
        recon = TopK(fraction, value_bits=8).round([{"x": x}], round=0).reconstructions[0]["x"]
        expected = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
        np.testing.assert_array_equal(np.flatnonzero(recon), expected)
        assert (np.sign(recon[expected]) == np.sign(x[expected])).all()


def test_topk_ties_go_to_lower_indices() -> None:
    x = np.array([1, -2, 2, 0, -2, 2, 1], np.float32)
    recon = TopK(fraction=3 / 7, value_bits=2).round([{"x": x}], round=0).reconstructions[0]["x"]
    assert np.flatnonzero(recon).tolist() == [1, 2, 4]  # four |x| = 2; the first three win
    const = np.full(10, -0.5, np.float32)
    recon = TopK(fraction=0.2).round([{"x": const}], round=0).reconstructions[0]["x"]
    assert recon.tolist() == [-0.5, -0.5] + [0.0] * 8


@pytest.mark.parametrize("value_bits", [1, 2, 3, 8])
def test_topk_value_error_bound_and_exact_byte_formula(value_bits: int) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 50)).astype(np.float32)
    res = TopK(fraction=0.03, value_bits=value_bits).round([{"x": x}], round=0)
    recon = res.reconstructions[0]["x"].reshape(-1)
    flat = x.reshape(-1)
    idx = np.flatnonzero(recon)
    k = idx.size
    assert k == 60
    mags = np.abs(flat[idx]).astype(np.float64)
    if value_bits == 1:  # sign and the mean magnitude
        np.testing.assert_allclose(np.abs(recon[idx]), mags.mean(), rtol=1e-6)
    else:
        levels = 2 ** (value_bits - 1)
        bound = (mags.max() - mags.min()) / (2 * (levels - 1))
        assert (np.abs(np.abs(recon[idx]) - mags) <= bound * (1 + 1e-6)).all()
    assert (np.sign(recon[idx]) == np.sign(flat[idx])).all()
    bits, r = encode_positions(idx, flat.size)
    gaps = np.diff(idx, prepend=-1) - 1
    assert len(bits) == int((gaps >> r).sum()) + k * (1 + r)
    scales = 1 if value_bits == 1 else 2
    assert res.bytes_per_rank == [5 + 4 * scales + math.ceil((len(bits) + k * value_bits) / 8)]


def test_position_code_is_near_the_ideal_and_round_trips() -> None:
    rng = np.random.default_rng(6)
    n = 100_000
    for k in (1, 100, 1000, 10_000, n):
        idx = np.sort(rng.choice(n, k, replace=False))
        bits, r = encode_positions(idx, n)
        back, used = decode_positions(np.concatenate([bits, np.ones(5, np.uint8)]), k, r)
        np.testing.assert_array_equal(back, idx)
        assert used == len(bits)
        if 100 <= k < n:  # uniform subsets: within 2% of log2 C(n, k)
            assert len(bits) <= 1.02 * ideal_position_bits(n, k)


def test_topk_decode_round_trip_of_random_messages() -> None:
    rng = np.random.default_rng(7)
    for value_bits in range(1, 9):
        x = rng.standard_normal((13, 11)).astype(np.float32)
        message = topk_encode(x, 9, value_bits)
        res = TopK(fraction=9 / 143, value_bits=value_bits).round([{"x": x}], round=0)
        np.testing.assert_array_equal(topk_decode(message, x.shape, value_bits), res.mean["x"])
        assert res.bytes_per_rank == [len(message)]


# --------------------------------------------------------------------------- PowerSGD


@pytest.mark.parametrize("rank", [1, 4])
def test_powersgd_recovers_a_shared_rank_one_matrix(rank: int) -> None:
    rng = np.random.default_rng(8)
    u, v = rng.standard_normal(20), rng.standard_normal(30)
    m = np.outer(u, v).astype(np.float32)
    res = PowerSGD(rank=rank).round([{"w": m}, {"w": m.copy()}, {"w": m.copy()}], round=0)
    np.testing.assert_allclose(res.mean["w"], m, rtol=1e-5, atol=1e-5 * np.abs(m).max())
    for recon in res.reconstructions:  # every rank ends up with the same array
        np.testing.assert_array_equal(recon["w"], res.mean["w"])
    assert res.bytes_per_rank == [4 * (20 + 30) * rank] * 3


def test_powersgd_averages_over_ranks() -> None:
    # M_k = c_k u v^T: the mean (mean c) u v^T is rank one, so it is recovered exactly.
    rng = np.random.default_rng(9)
    base = np.outer(rng.standard_normal(12), rng.standard_normal(16))
    inputs = [{"w": (c * base).astype(np.float32)} for c in (1.0, -0.5, 2.5)]
    res = PowerSGD(rank=1).round(inputs, round=0)
    np.testing.assert_allclose(res.mean["w"], base, rtol=1e-5, atol=1e-5 * np.abs(base).max())


def test_powersgd_byte_accounting_and_passthrough() -> None:
    shapes = {
        "w": (20, 30),  # (20 + 30) r floats
        "conv": (8, 3, 3, 3),  # viewed as 8 x 27
        "small": (3, 2),  # (3 + 2) * 1 = 5 < 6: compressed at rank 1, not at rank 4
        "square2": (2, 2),  # (2 + 2) * 1 = 4, not < 4: sent as is
        "b": (30,),
        "s": (),
    }
    inputs = _ranks(shapes, 2, seed=10)
    r1 = PowerSGD(rank=1).round(inputs, round=0)
    assert r1.bytes_per_rank == [4 * (50 + 35 + 5) + 4 * (4 + 30 + 1)] * 2
    codec4 = PowerSGD(rank=4)
    r4 = codec4.round(inputs, round=0)
    assert r4.bytes_per_rank == [4 * (50 + 35) * 4 + 4 * (6 + 4 + 30 + 1)] * 2
    rate2 = PowerSGD(rank=4, min_compression_rate=2.0).round(inputs, round=0)  # 340*2 > 216
    assert rate2.bytes_per_rank == [4 * 50 * 4 + 4 * (216 + 6 + 4 + 30 + 1)] * 2
    for name in ("small", "square2", "b", "s"):  # uncompressed: exact, plain mean
        for k in range(2):
            np.testing.assert_array_equal(r4.reconstructions[k][name], inputs[k][name])
        mean = (inputs[0][name] + inputs[1][name]) / np.float32(2)
        np.testing.assert_array_equal(r4.mean[name], mean)
    assert sorted(codec4.state_dict()) == ["conv", "w"]  # warm-start Q only where compressed


def test_powersgd_warm_start_state_round_trips() -> None:
    shapes = {"w": (20, 30), "conv": (8, 3, 3, 3), "b": (30,)}
    first, second = _ranks(shapes, 3, seed=11), _ranks(shapes, 3, seed=12)
    codec = PowerSGD(rank=2)
    codec.round(first, round=0)
    state = codec.state_dict()
    assert sorted(state) == ["conv", "w"]
    assert state["w"].shape == (30, 2) and state["w"].dtype == np.float32
    assert state["conv"].shape == (27, 2)
    resumed = PowerSGD(rank=2)
    resumed.load_state_dict({k: v.copy() for k, v in state.items()})
    warm = codec.round(second, round=1)
    _assert_same(warm, resumed.round(second, round=1))
    _assert_same(codec.round(first, round=2), resumed.round(first, round=2))
    # Without the state the next round differs: the warm start matters.
    cold = PowerSGD(rank=2).round(second, round=1)
    assert not np.array_equal(cold.mean["w"], warm.mean["w"])


def test_powersgd_warm_start_converges_to_the_best_rank_r_approximation() -> None:
    rng = np.random.default_rng(13)
    a, s, bt = np.linalg.svd(rng.standard_normal((24, 40)), full_matrices=False)
    s = np.geomspace(10, 0.1, s.size)  # a clear spectral gap
    m = ((a * s) @ bt).astype(np.float32)
    codec = PowerSGD(rank=2)
    errors = [np.linalg.norm(m - codec.round([{"w": m}], round=t).mean["w"]) for t in range(25)]
    best = np.sqrt((s[2:] ** 2).sum())  # Eckart-Young
    assert errors[-1] <= errors[0]
    assert errors[-1] == pytest.approx(best, rel=1e-3)


def test_powersgd_restarts_after_an_all_zero_round() -> None:
    codec = PowerSGD(rank=1)
    zero = codec.round([{"w": np.zeros((10, 12), np.float32)}], round=0)
    np.testing.assert_array_equal(zero.mean["w"], 0.0)
    m = np.outer(np.arange(1, 11), np.ones(12)).astype(np.float32)
    res = codec.round([{"w": m}], round=1)  # the zero warm-start Q is replaced, not kept
    np.testing.assert_allclose(res.mean["w"], m, rtol=1e-5)


def test_powersgd_rejects_bad_state() -> None:
    codec = PowerSGD(rank=1)
    codec.load_state_dict({"w": np.zeros((7, 1), np.float32)})
    with pytest.raises(ValueError, match=r"tensor 'w'.*\(30, 1\)"):
        codec.round([{"w": np.ones((20, 30), np.float32)}], round=0)
    with pytest.raises(ValueError, match="tensor 'w'"):
        codec.load_state_dict({"w": np.full((30, 1), np.nan, np.float32)})
