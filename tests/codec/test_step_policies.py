"""RelativeStep and TargetRate: configs, validation, the step they choose, rate control."""

from __future__ import annotations

import numpy as np
import pytest

import tenfold
from tenfold.codec.policy import Policy, RelativeStep, TargetRate, rms


def _laplace(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).laplace(0.0, 0.01, n).astype(np.float32)


def _gauss(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.01, n).astype(np.float32)


def test_configs_round_trip() -> None:
    for p in (
        RelativeStep(alpha=2.0),
        RelativeStep(alpha=0.5, coder="huffman"),
        TargetRate(bits_per_param=0.25, seed=3),
        TargetRate(bits_per_param=2, coder="huffman"),
    ):
        assert Policy.from_config(p.get_config()) == p
    assert TargetRate().get_config() == {
        "id": "target_rate",
        "bits_per_param": 1.0,
        "coder": "auto",
        "seed": 0,
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: RelativeStep(alpha=0.0),
        lambda: RelativeStep(alpha=float("inf")),
        lambda: RelativeStep(alpha=1.0, coder="zstd"),
        lambda: TargetRate(bits_per_param=0.0),
        lambda: TargetRate(bits_per_param=33.0),
        lambda: TargetRate(bits_per_param=1.0, seed=-1),
        lambda: TargetRate(bits_per_param=True),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_relative_step_is_alpha_times_rms_of_the_values_or_the_hint() -> None:
    x = _laplace(10_000)
    step, entropy = RelativeStep(alpha=2.0).choose_step(
        x, float(x.min()), float(x.max()), name="w", position=0, scale=None
    )
    assert step == pytest.approx(2.0 * float(np.sqrt(np.mean(x.astype(np.float64) ** 2))))
    assert entropy is None
    hinted, _ = RelativeStep(alpha=2.0).choose_step(
        x, float(x.min()), float(x.max()), name="w", position=0, scale=0.5
    )
    assert hinted == 1.0
    info = tenfold.inspect(tenfold.compress({"w": x}, RelativeStep(alpha=2.0), scale={"w": 0.5}))
    assert info.tensors[0].step == 1.0


def test_rms_kernel() -> None:
    assert rms(np.array([3.0, -4.0, 0.0, 0.0])) == 2.5
    x = _gauss(1001)
    assert rms(x) == pytest.approx(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), rel=1e-12)


@pytest.mark.parametrize("make", [_laplace, _gauss], ids=["laplace", "gauss"])
@pytest.mark.parametrize("rate", [4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
def test_rate_control_hits_its_target_within_10_percent(make: object, rate: float) -> None:
    x = make(200_000)  # type: ignore[operator]
    info = tenfold.inspect(tenfold.compress({"w": x}, TargetRate(bits_per_param=rate)))
    assert info.tensors[0].step is not None
    # the tensor's record, headers and tables included
    assert info.tensors[0].bits_per_param == pytest.approx(rate, rel=0.10)


def test_rate_control_is_deterministic_and_seeded() -> None:
    x = _laplace(300_000)
    a = tenfold.compress({"w": x}, TargetRate(bits_per_param=0.5, seed=1))
    assert a == tenfold.compress({"w": x}, TargetRate(bits_per_param=0.5, seed=1))


def test_huffman_only_cannot_go_below_one_bit() -> None:
    x = _laplace(200_000)
    two = tenfold.inspect(
        tenfold.compress({"w": x}, TargetRate(bits_per_param=2.0, coder="huffman"))
    )
    assert two.tensors[0].mode == "huffman"
    assert two.tensors[0].bits_per_param == pytest.approx(2.0, rel=0.10)
    low = tenfold.inspect(
        tenfold.compress({"w": x}, TargetRate(bits_per_param=0.5, coder="huffman"))
    )
    t = low.tensors[0]
    # unreachable: 10% above Huffman's floor of about one bit per value, not nothing
    assert t.mode == "huffman"
    assert 1.0 <= t.bits_per_param < 1.25


def test_a_small_packet_is_coded_at_three_rms_at_most_instead_of_starving() -> None:
    # 50 values x 0.5 bits = 3 bytes: less than the headers. Rate control would send
    # nothing, forever; TargetRate codes such a packet at a step of at most 3 x the scale
    # (the caller's hint when given, else the RMS) instead.
    x = _laplace(50)
    info = tenfold.inspect(tenfold.compress({"b": x}, TargetRate(bits_per_param=0.5)))
    assert info.tensors[0].step == pytest.approx(3 * rms(x))
    hinted = tenfold.compress({"b": x}, TargetRate(0.5), scale={"b": 0.002})
    assert tenfold.inspect(hinted).tensors[0].step == pytest.approx(0.006)
    assert np.any(tenfold.decompress(hinted)["b"] != 0.0)


def test_steps_are_one_multiplier_of_the_scales() -> None:
    # packet-level rate control: every step is alpha x the tensor's scale, one alpha
    xs = {f"w{i}": _laplace(20_000 + 1000 * i) * (i + 1) for i in range(4)}
    scale = {"w1": 0.5, "w3": 7.0}
    info = tenfold.inspect(tenfold.compress(xs, TargetRate(1.0), scale=scale))
    ref = {k: scale.get(k, rms(v)) for k, v in xs.items()}
    alphas = [t.step / ref[t.name] for t in info.tensors]
    assert alphas == pytest.approx([alphas[0]] * 4, rel=1e-12)
    assert abs(info.bits_per_param - 1.0) < 0.03


def test_step_records_decode_within_half_a_step() -> None:
    x = _laplace(100_000)
    for policy in (RelativeStep(alpha=1.0), TargetRate(bits_per_param=1.0), TargetRate(0.2)):
        blob = tenfold.compress({"w": x, "v": x[:1000].astype(np.float16)}, policy)
        info = tenfold.inspect(blob)
        assert info.version in (2, 3)  # 3: TargetRate groups the 1000 float16 values
        out = tenfold.decompress(blob)
        for t in info.tensors:
            assert t.step is not None and t.clamped == 0
            ref = x if t.name == "w" else x[:1000].astype(np.float16)
            err = np.abs(out[t.name].astype(np.float64) - ref.astype(np.float64))
            rounding = 2.0**-10 * np.abs(ref.astype(np.float64)) if t.name == "v" else 0
            assert np.all(err <= t.step / 2 * (1 + 1e-6) + rounding + 1e-12), policy


def test_paper_policies_still_write_version_1() -> None:
    x = _laplace(10_000)
    for policy in (tenfold.EntropyAdaptive(), tenfold.Fixed(8), tenfold.Lossless()):
        assert tenfold.inspect(tenfold.compress({"w": x}, policy)).version == 1


def test_known_answer_version_2() -> None:
    """The docs/FORMAT.md section 7 example, byte for byte."""
    j = np.arange(1024)
    x = np.where(j % 32 == 5, 1.0, np.where(j % 32 == 21, -1.0, 0.0)).astype(np.float32)
    blob = tenfold.compress({"d": x}, RelativeStep(alpha=4.0))
    assert len(blob) == 118
    header = bytes.fromhex(
        "54464C440201 016402018008 14020000C07F 000080BF0000803F 000000000000F03F0100"
        " 0C0880018" "01E80010000 062E0606 C04CE60080F3"
    )  # fmt: skip
    assert blob.startswith(header)
    assert blob[-4:] == bytes.fromhex("598F8C65")
    t = tenfold.inspect(blob).tensors[0]
    assert (t.mode, t.bits, t.step, t.clamped, t.w_min, t.w_max) == ("ans", 2, 1.0, 0, -1.0, 1.0)
    assert np.array_equal(tenfold.decompress(blob)["d"], x)
