"""Policies: validation, configs, and the N they choose."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tenfold.codec import EntropyAdaptive, Fixed, GradientRMS, Lossless, Policy
from tenfold.codec.policy import clamp_bits
from tenfold.codec.quantize import Quantizer, entropy_bits, quantize

ALL = [
    Fixed(8),
    Fixed(bits=24),
    EntropyAdaptive(),
    EntropyAdaptive(F=1.0, M=6, c=5.5, seed=9),
    GradientRMS(6.0),
    GradientRMS(c1=2, c0=0.5),
    Lossless(),
]


@pytest.mark.parametrize("policy", ALL, ids=repr)
def test_config_round_trip(policy: Policy) -> None:
    config = policy.get_config()
    assert json.loads(json.dumps(config)) == config  # JSON-safe
    assert Policy.from_config(config) == policy
    assert type(policy).from_config(config) == policy
    assert hash(policy) == hash(Policy.from_config(config))  # frozen


def test_from_config_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="unknown policy id"):
        Policy.from_config({"id": "zip"})
    with pytest.raises(ValueError, match="not a Fixed"):
        Fixed.from_config({"id": "entropy"})
    with pytest.raises(ValueError, match="unknown Fixed config field"):
        Policy.from_config({"id": "fixed", "bits": 8, "extra": 1})
    with pytest.raises(ValueError):
        Policy.from_config({"bits": 8})


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: Fixed(0), "bits"),
        (lambda: Fixed(25), "bits"),
        (lambda: Fixed(8.0), "bits"),
        (lambda: Fixed(True), "bits"),
        (lambda: EntropyAdaptive(F=0.0), "F"),
        (lambda: EntropyAdaptive(F=1.5), "F"),
        (lambda: EntropyAdaptive(M=0), "M"),
        (lambda: EntropyAdaptive(M=17), "M"),
        (lambda: EntropyAdaptive(c=-1), "c"),
        (lambda: EntropyAdaptive(c=math.nan), "c"),
        (lambda: EntropyAdaptive(seed=-1), "seed"),
        (lambda: EntropyAdaptive(seed=1 << 64), "seed"),
        (lambda: GradientRMS(math.inf), "c1"),
        (lambda: GradientRMS(1.0, c0=0.0), "c0"),
    ],
)
def test_validation_names_the_field(factory, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        factory()


def test_entropy_adaptive_is_kw_only_and_fixed_positional() -> None:
    assert Fixed(8) == Fixed(bits=8)
    assert GradientRMS(3.0) == GradientRMS(c1=3.0)
    with pytest.raises(TypeError):
        EntropyAdaptive(0.03)  # type: ignore[misc]


def test_clamp_bits() -> None:
    assert clamp_bits(0.2) == 1
    assert clamp_bits(-5) == 1
    assert clamp_bits(7.0) == 7
    assert clamp_bits(7.0 + 1e-12) == 7  # float noise does not cost a bit
    assert clamp_bits(7.01) == 8
    assert clamp_bits(30) == 24
    assert clamp_bits(math.inf) == 24
    with pytest.raises(ValueError):
        clamp_bits(math.nan)


def _choose(policy: Policy, x: np.ndarray, **kw):
    return policy.choose_bits(
        x, float(x.min()), float(x.max()), name="w", position=0, grad_rms=kw.get("grad_rms")
    )


def test_entropy_adaptive_full_sample_is_exact(rng: np.random.Generator) -> None:
    x = rng.laplace(size=5000)
    q = Quantizer.for_range(float(x.min()), float(x.max()), 4)
    h = entropy_bits(np.bincount(quantize(x, q), minlength=16))
    bits, est = _choose(EntropyAdaptive(F=1.0, M=4, c=6), x)
    assert est == h
    assert bits == math.ceil(h + 6)


def test_entropy_adaptive_saturates_at_24() -> None:
    x = np.linspace(-1, 1, 1 << 16)  # uniform over 2^16 values: H = M exactly
    bits, h = _choose(EntropyAdaptive(F=1.0, M=16, c=20), x)
    assert h == pytest.approx(16.0)
    assert bits == 24


def test_gradient_rms() -> None:
    x = np.array([0.0, 1.0])
    assert _choose(GradientRMS(4.0), x, grad_rms={"w": 3.0}) == (6, None)  # log2(4) + 4
    assert _choose(GradientRMS(4.5, c0=1.0), x, grad_rms={"w": 0.0}) == (5, None)
    assert _choose(GradientRMS(-10.0), x, grad_rms={"w": 0.0})[0] == 1  # clamped up
    with pytest.raises(ValueError, match="'w'"):
        _choose(GradientRMS(4.0), x, grad_rms={"other": 1.0})
    with pytest.raises(ValueError, match="'w'"):
        _choose(GradientRMS(4.0), x)
    with pytest.raises(ValueError, match="finite"):
        _choose(GradientRMS(4.0), x, grad_rms={"w": math.nan})
    with pytest.raises(ValueError, match="finite"):
        _choose(GradientRMS(4.0), x, grad_rms={"w": -1.0})


def test_fixed_and_lossless() -> None:
    x = np.array([0.0, 1.0], dtype=np.float32)
    assert _choose(Fixed(5), x) == (5, None)
    assert _choose(Lossless(), x) == (32, None)
    assert Lossless.lossless and not Fixed.lossless


def test_compress_seed_replaces_the_policys_own_seed() -> None:
    """``compress(..., seed=s)`` gives the bytes of the policy built with ``seed=s``."""
    import numpy as np

    import tenfold
    from tenfold.codec import derive_seed

    rng = np.random.default_rng(1)
    arrays = {"w": rng.normal(size=(300, 200)).astype(np.float32)}
    s = derive_seed(7, 2, 5)
    for policy in (tenfold.TargetRate(1.0, seed=7), tenfold.EntropyAdaptive(seed=7)):
        rebuilt = type(policy).from_config({**policy.get_config(), "seed": s})
        assert tenfold.compress(arrays, policy, seed=s) == tenfold.compress(arrays, rebuilt)
    # a policy that draws no samples ignores it
    fixed = tenfold.Fixed(8)
    assert tenfold.compress(arrays, fixed, seed=s) == tenfold.compress(arrays, fixed)
    assert derive_seed(7, 2, 5) != derive_seed(7, 3, 5)
