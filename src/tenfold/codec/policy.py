"""Policies: how many bits N each tensor is quantized to.

The paper's policies (they write version-1 packets, byte for byte as they always did):

* :class:`Fixed` - the same N for every tensor (paper Fig. 1).
* :class:`EntropyAdaptive` - the paper's scheme, its Algorithm 1: ``N = ceil(H + c)`` where H is the
  entropy (bits) of an M-bit quantization of a seeded sample of a fraction F of the tensor.
* :class:`GradientRMS` - paper section 3.2: ``N = ceil(log2(G + c0) + c1)`` from the
  tensor's RMS gradient G, supplied by the caller (``compress(..., grad_rms={name: G})``).
* :class:`Lossless` - no quantization: values travel unchanged (the uncompressed baseline).

Step policies choose the step ``s`` of the zero-centred mid-tread quantizer
(``tenfold.codec.midtread``) instead of N; they are meant for deltas (pseudo-gradients):

* :class:`RelativeStep` - ``s = alpha * RMS``;
* :class:`TargetRate` - rate control, the library's default (``TargetRate(1.0)``): one
  multiplier for the whole packet, ``s = alpha * RMS`` per tensor, such that the packet
  costs the target bits per value, headers included.

N is always clamped to ``[1, 24]`` (:data:`MIN_BITS`, :data:`MAX_BITS`). In particular an
EntropyAdaptive with ``M + c > 24`` saturates at 24 bits for high-entropy tensors, and one
whose ``H + c`` is below 1 uses 1 bit. Above 16 bits the codec bit-packs instead of Huffman
coding (see ``tenfold.codec.packet``).

Policies are frozen, validated dataclasses with JSON-safe configs::

    >>> p = EntropyAdaptive(c=5)
    >>> p.get_config()
    {'id': 'entropy', 'F': 0.03, 'M': 4, 'c': 5, 'seed': 0}
    >>> Policy.from_config(p.get_config()) == p
    True
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from numba import njit

from tenfold.codec import huffman
from tenfold.codec.midtread import LEVEL_LIMIT, LevelCounter, sample_values
from tenfold.codec.quantize import sample_seed, sampled_entropy
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "CODERS",
    "GROUP_BYTES",
    "GROUP_MAX_VALUES",
    "SMALL_PACKET_ALPHA",
    "SMALL_TENSOR_ALPHA",
    "SMALL_TENSOR_SHARE",
    "SMALL_TENSOR_VALUES",
    "MAX_BITS",
    "MIN_BITS",
    "EntropyAdaptive",
    "Fixed",
    "GradientRMS",
    "Lossless",
    "Policy",
    "RelativeStep",
    "StepPolicy",
    "TargetRate",
    "clamp_bits",
]

MIN_BITS = 1
MAX_BITS = 24

#: ceil() tolerance: float rounding in H (e.g. 2.0000000000000004 for an exactly uniform
#: 4-bin histogram) must not cost a whole extra bit.
_CEIL_TOLERANCE = 1e-9


def clamp_bits(value: float) -> int:
    """``ceil(value)`` (with a 1e-9 tolerance for float noise) clamped to ``[1, 24]``.

    Example:
        >>> clamp_bits(7.5), clamp_bits(8.0000000000001), clamp_bits(-3.0), clamp_bits(99.0)
        (8, 8, 1, 24)
    """
    if math.isnan(value):
        raise ConfigError("bit count is NaN")
    if math.isinf(value):
        return MAX_BITS if value > 0 else MIN_BITS
    return int(min(MAX_BITS, max(MIN_BITS, math.ceil(value - _CEIL_TOLERANCE))))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def derive_seed(base_seed: int, rank: int, round: int) -> int:
    """The sampling seed rank ``rank`` uses in synchronisation ``round``: an int in [0, 2**32).

    ``SeedSequence([base_seed, rank, round])``'s first 32-bit word, so ranks and rounds draw
    independent samples, reproducibly; pass it as ``compress(..., seed=...)``.

    Example:
        >>> derive_seed(0, 0, 0) == derive_seed(0, 0, 0) != derive_seed(0, 1, 0)
        True
    """
    state = np.random.SeedSequence([int(base_seed), int(rank), int(round)]).generate_state(
        1, np.uint32
    )
    return int(state[0])


def with_seed(policy: Policy, seed: int | None) -> Policy:
    """``policy`` sampling with ``seed`` instead of its own (unchanged when ``seed`` is None
    or the policy draws no samples: it has no ``seed`` field)."""
    if seed is None or not dataclasses.is_dataclass(policy):
        return policy
    if "seed" not in {f.name for f in dataclasses.fields(policy)}:
        return policy
    return dataclasses.replace(policy, seed=int(seed))


class Policy(ABC):
    """Base class: decides N for one tensor; ``get_config``/``from_config`` round-trip.

    Subclasses set ``id`` (the config's ``"id"``) and implement :meth:`choose_bits`.
    """

    id: ClassVar[str]
    #: True only for :class:`Lossless`: values are sent unchanged, N is not used.
    lossless: ClassVar[bool] = False
    #: "range": the paper's min/max bins with N bits (:meth:`choose_bits`); "step": the
    #: mid-tread quantizer with a step (:meth:`StepPolicy.choose_step`).
    quantizer: ClassVar[str] = "range"
    _registry: ClassVar[dict[str, type[Policy]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "id" in cls.__dict__:  # a subclass without its own id must not replace its parent
            Policy._registry[cls.id] = cls

    @abstractmethod
    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """N for one tensor, and the entropy estimate that chose it (or None).

        Args:
            values: the tensor's values, 1-D float32/float64, all finite, ``w_min < w_max``.
            w_min, w_max: their range.
            name: the tensor's name (for error messages and ``grad_rms`` lookups).
            position: its index in the packet (decorrelates sampling between tensors).
            grad_rms: per-tensor RMS gradients, if the caller supplied them.

        Returns:
            ``(bits, entropy)`` with ``1 <= bits <= 24``.
        """

    def get_config(self) -> dict[str, Any]:
        """A JSON-safe dict ``{"id": ..., <fields>}`` that :meth:`from_config` accepts."""
        config: dict[str, Any] = {"id": self.id}
        for f in fields(self):  # type: ignore[arg-type]
            config[f.name] = getattr(self, f.name)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        """Rebuild a policy from :meth:`get_config` output.

        ``Policy.from_config`` dispatches on ``config["id"]``; ``Fixed.from_config`` etc.
        also check the id is theirs. Unknown ids or fields raise ``ValueError``.
        """
        if not isinstance(config, Mapping) or "id" not in config:
            raise ConfigError(f"policy config must be a mapping with an 'id', got {config!r}")
        target = Policy._registry.get(str(config["id"]))
        if target is None:
            raise ConfigError(
                f"unknown policy id {config['id']!r}; known: {sorted(Policy._registry)}"
            )
        if cls is not Policy and target is not cls:
            raise ConfigError(f"config id {config['id']!r} is not a {cls.__name__} config")
        params = {k: v for k, v in config.items() if k != "id"}
        names = {f.name for f in fields(target)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown {target.__name__} config field(s): {unknown}")
        return target(**params)


# Fixed and GradientRMS take their one essential parameter positionally (``Fixed(8)``,
# ``GradientRMS(4.0)``), the spelling used throughout the paper and the issue.
@dataclass(frozen=True)
class Fixed(Policy):
    """Quantize every tensor to ``bits`` bits (paper Fig. 1).

    Attributes:
        bits: N, 1..24. Above 16 the codec bit-packs (or sends raw) instead of Huffman coding.

    Example:
        >>> Fixed(8).get_config()
        {'id': 'fixed', 'bits': 8}
    """

    id: ClassVar[str] = "fixed"
    bits: int

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"Fixed.bits must be an integer in [1, 24], got {self.bits!r}")
        object.__setattr__(self, "bits", int(self.bits))

    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """Always ``(bits, None)``."""
        return self.bits, None


@dataclass(frozen=True, kw_only=True)
class EntropyAdaptive(Policy):
    """The paper's scheme, its Algorithm 1: ``N = ceil(H + c)``, clamped to [1, 24].

    H is the entropy (bits) of the M-bit quantization (over the tensor's own range) of a
    seeded random sample of ``round(F * n)`` values (at least 1; F = 1 uses the whole tensor).

    Attributes:
        F: sample fraction, 0 < F <= 1 (paper: 0.03).
        M: bits of the preliminary quantization, 1..16 (paper: 4). H <= M.
        c: the quantization floor in bits, 0 <= c <= 24 (paper: 6; 5 is the "sweet spot").
        seed: sampling seed, 0 <= seed < 2**64; same seed + same tensor -> same N.

    Example:
        >>> EntropyAdaptive(F=0.03, M=4, c=6, seed=0)
        EntropyAdaptive(F=0.03, M=4, c=6, seed=0)
    """

    id: ClassVar[str] = "entropy"
    F: float = 0.03
    M: int = 4
    c: float = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_real(self.F) or not 0.0 < float(self.F) <= 1.0:
            raise ConfigError(f"EntropyAdaptive.F must be in (0, 1], got {self.F!r}")
        if not _is_int(self.M) or not 1 <= self.M <= 16:
            raise ConfigError(f"EntropyAdaptive.M must be an integer in [1, 16], got {self.M!r}")
        if not _is_real(self.c) or not 0.0 <= float(self.c) <= MAX_BITS:
            raise ConfigError(f"EntropyAdaptive.c must be a number in [0, 24], got {self.c!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 1 << 64:
            raise ConfigError(
                f"EntropyAdaptive.seed must be an integer in [0, 2**64), got {self.seed!r}"
            )
        object.__setattr__(self, "F", float(self.F))
        object.__setattr__(self, "M", int(self.M))
        object.__setattr__(self, "seed", int(self.seed))
        # keep ints as ints so configs print as the user wrote them (c=6, not 6.0)
        object.__setattr__(self, "c", int(self.c) if _is_int(self.c) else float(self.c))

    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """``(ceil(H + c) clamped to [1, 24], H)``."""
        h = sampled_entropy(
            values, w_min, w_max, bits=self.M, fraction=self.F, seed=self.seed, position=position
        )
        return clamp_bits(h + self.c), h


@dataclass(frozen=True)
class GradientRMS(Policy):
    """Paper section 3.2: ``N = ceil(log2(G + c0) + c1)``, clamped to [1, 24].

    G is the tensor's RMS gradient, passed by the caller as
    ``compress(tensors, GradientRMS(c1), grad_rms={name: G, ...})``; a tensor without one
    is a ``ValueError`` naming it.

    Attributes:
        c1: additive bits, finite, -24 <= c1 <= 48.
        c0: offset inside the log, finite, > 0 (paper: 1), so ``G + c0 > 0`` for any G >= 0.

    Example:
        >>> GradientRMS(6.0).get_config()
        {'id': 'grad_rms', 'c1': 6.0, 'c0': 1.0}
    """

    id: ClassVar[str] = "grad_rms"
    c1: float
    c0: float = 1.0

    def __post_init__(self) -> None:
        if not _is_real(self.c1) or not -24.0 <= float(self.c1) <= 48.0:
            raise ConfigError(f"GradientRMS.c1 must be a number in [-24, 48], got {self.c1!r}")
        if not _is_real(self.c0) or not (math.isfinite(float(self.c0)) and float(self.c0) > 0):
            raise ConfigError(f"GradientRMS.c0 must be a finite number > 0, got {self.c0!r}")
        object.__setattr__(self, "c1", float(self.c1))
        object.__setattr__(self, "c0", float(self.c0))

    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """``(ceil(log2(G + c0) + c1) clamped to [1, 24], None)``."""
        if grad_rms is None or name not in grad_rms:
            raise ConfigError(f"GradientRMS needs grad_rms[{name!r}] (the tensor's RMS gradient)")
        g = grad_rms[name]
        if not _is_real(g) or not (math.isfinite(float(g)) and float(g) >= 0.0):
            raise ConfigError(f"grad_rms[{name!r}] must be a finite number >= 0, got {g!r}")
        return clamp_bits(math.log2(float(g) + self.c0) + self.c1), None


@dataclass(frozen=True)
class Lossless(Policy):
    """No quantization: every value is sent unchanged (raw), in the same packet format.

    The uncompressed baseline: 16/32/64 bits per value plus headers.

    Example:
        >>> Lossless().get_config()
        {'id': 'lossless'}
    """

    id: ClassVar[str] = "lossless"
    lossless: ClassVar[bool] = True

    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """The dtype's width (values are not quantized), no entropy."""
        return 8 * values.dtype.itemsize, None


# ---- step policies (the mid-tread quantizer) ----------------------------------------------

#: Entropy coders a step policy may use: "auto" picks the smallest of ANS, Huffman,
#: bit-packing and raw per tensor; "huffman" never uses ANS (the paper's coder, for
#: comparison: it cannot go below 1 bit per value).
CODERS = ("auto", "huffman")


def _check_coder(owner: str, coder: object) -> None:
    if coder not in CODERS:
        raise ConfigError(f"{owner}.coder must be one of {CODERS}, got {coder!r}")


@njit(cache=True, nogil=True)
def _rms_kernel(x: np.ndarray) -> float:
    # float64 sum of squares in four partial sums: deterministic, and 4 chains vectorise.
    s0 = s1 = s2 = s3 = 0.0
    n = x.size
    n4 = n - n % 4
    for j in range(0, n4, 4):
        a0 = np.float64(x[j])
        a1 = np.float64(x[j + 1])
        a2 = np.float64(x[j + 2])
        a3 = np.float64(x[j + 3])
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
    for j in range(n4, n):
        a = np.float64(x[j])
        s0 += a * a
    return math.sqrt(((s0 + s1) + (s2 + s3)) / n)


def rms(x: np.ndarray) -> float:
    """Root mean square of a non-empty 1-D float32/float64 array, accumulated in float64.

    Example:
        >>> rms(np.array([3.0, -4.0, 0.0, 0.0]))
        2.5
    """
    return float(_rms_kernel(x))


def _usable_step(step: float, w_min: float, w_max: float) -> float:
    """``step`` if it is a usable quantizer step, else the finest step the clamp allows."""
    finest = max(abs(w_min), abs(w_max)) / LEVEL_LIMIT
    if math.isfinite(step) and step >= finest and step > 0 and math.isfinite(1.0 / step):
        return float(step)
    return float(max(finest, 2.0**-1000))


class StepPolicy(Policy):
    """Base class of the policies that choose a mid-tread step instead of N bits.

    Subclasses implement :meth:`choose_step` and have a ``coder`` field (:data:`CODERS`).
    """

    quantizer: ClassVar[str] = "step"
    coder: str

    def choose_bits(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        grad_rms: Mapping[str, float] | None,
    ) -> tuple[int, float | None]:
        """Not used: step policies choose a step (:meth:`choose_step`)."""
        raise InputTypeError(f"{type(self).__name__} chooses a quantizer step, not a bit count")

    @abstractmethod
    def choose_step(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        scale: float | None,
    ) -> tuple[float, float | None]:
        """The step for one tensor, and the entropy estimate (bits/value) that chose it.

        Args:
            values: 1-D float32/float64, all finite, ``w_min < w_max``.
            w_min, w_max: their range.
            name: the tensor's name (for error messages).
            position: its index in the packet (decorrelates sampling between tensors).
            scale: the RMS to take the step from, when the caller knows a better one than
                the values' own: the averager passes the fresh delta's RMS, because the
                values it codes also hold the error-feedback residual (docs/DESIGN.md,
                "Why the default sends pseudo-gradients").

        Returns:
            ``(step, entropy)``; the step finite and > 0.
        """


@dataclass(frozen=True)
class RelativeStep(StepPolicy):
    """Mid-tread step ``alpha * RMS`` (the RMS of the tensor, or the caller's ``scale``).

    Error per value is at most ``alpha * RMS / 2``. On Laplace-like deltas, ``alpha = 1``
    costs about 2 bits per value with ANS, ``alpha = 2`` about 1.2, ``alpha = 4`` about 0.2.

    Attributes:
        alpha: the step in units of the RMS, finite, > 0.
        coder: ``"auto"`` (smallest of ANS, Huffman, bit-packing, raw) or ``"huffman"``.

    Example:
        >>> RelativeStep(alpha=2.0).get_config()
        {'id': 'relative_step', 'alpha': 2.0, 'coder': 'auto'}
    """

    id: ClassVar[str] = "relative_step"
    #: the averager passes the fresh delta's RMS as ``scale`` (it is the step's unit)
    uses_scale: ClassVar[bool] = True
    alpha: float = 1.0
    coder: str = "auto"

    def __post_init__(self) -> None:
        if not _is_real(self.alpha) or not (
            math.isfinite(float(self.alpha)) and float(self.alpha) > 0
        ):
            raise ConfigError(f"RelativeStep.alpha must be a finite number > 0, got {self.alpha!r}")
        _check_coder("RelativeStep", self.coder)
        object.__setattr__(self, "alpha", float(self.alpha))

    def choose_step(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        scale: float | None,
    ) -> tuple[float, float | None]:
        """``(alpha * RMS, None)``; RMS from ``scale`` when given and > 0, else the values'."""
        ref = float(scale) if scale is not None and scale > 0 else rms(values)
        return _usable_step(self.alpha * ref, w_min, w_max), None


#: rate control samples this many values of larger tensors (all values of smaller ones)
RATE_SAMPLE = 1 << 16
#: the step of small tensors under TargetRate, in units of the fresh delta's RMS
SMALL_TENSOR_ALPHA = 1.0
#: an unreachable target is replaced by this multiple of the coder's cheapest cost
FLOOR_MARGIN = 1.1
#: bisection steps on log(step) between the finest and the coarsest step (at most)
_RATE_ITERATIONS = 30
#: stop bisecting once the cost model is within this fraction below the target: at 1M
#: values, 30 full passes over the 65k-value sample were most of compress()'s time
_RATE_TOLERANCE = 0.01


#: TargetRate codes a tensor in the packet's shared group when its payload at the target
#: would be under this many bytes (and it has at most GROUP_MAX_VALUES values)
GROUP_BYTES = 1024
GROUP_MAX_VALUES = 1 << 16
#: tensors of at most this many values (biases, norms) are coded no coarser than
#: SMALL_TENSOR_ALPHA times their scale, when together they are at most
#: SMALL_TENSOR_SHARE of the packet's values
SMALL_TENSOR_VALUES = 1 << 13
SMALL_TENSOR_SHARE = 0.05
#: a packet whose headers take over half its budget is coded no coarser than this many
#: times each tensor's scale (about 0.6 bits per value on Laplace-like deltas)
SMALL_PACKET_ALPHA = 3.0


@dataclass(frozen=True)
class TargetRate(StepPolicy):
    """Rate control for the packet as a whole: it costs about ``bits_per_param`` per value.

    ``coder="auto"`` (the default, and the library's default policy at 1.0): **one step
    multiplier for the packet** (``tenfold.codec.ratecontrol``). Each tensor's step is
    ``alpha * scale``, its scale the caller's ``compress(..., scale=)`` hint (the fresh
    delta's RMS) or else the RMS of the values coded, so every tensor gets the same
    relative error. One pass per tensor gives its range, RMS and a 1/16-octave histogram
    of its values; from those histograms alone a bisection on ``alpha`` finds the finest
    steps whose modelled packet (the levels' empirical entropy, which ANS codes within a
    fraction of a percent, plus about 1.25 bytes per used level of table, plus every
    header) fits the budget ``bits_per_param * values / 8`` bytes. Its cost grows with the
    occupied histogram buckets, not with the values: no sample, no bisection per tensor.
    Tensors whose payload at the target would be under :data:`GROUP_BYTES` (biases, norms,
    a small model's layers) share one frequency table and one set of ANS lanes, the
    packet's group section (format version 3), and send only name, shape and step.

    **Small tensors** of a larger model (at most :data:`SMALL_TENSOR_VALUES` values each,
    together at most :data:`SMALL_TENSOR_SHARE` of the packet: biases, norms) are coded
    no coarser than :data:`SMALL_TENSOR_ALPHA` times their scale, a few bits per value and
    a fraction of a percent of the packet, so that they never freeze, as with the
    per-tensor rate control (frozen output biases cost 11 points of accuracy on the
    paper's task).

    **Small packets**: when the headers alone would take more than half the budget (a
    model of a few thousand values), the payload gets half the budget and ``alpha`` is at
    most :data:`SMALL_PACKET_ALPHA`: such a packet overshoots its target (a 1,478-value
    two-layer MLP costs 1.3-1.6 bits/param at a target of 1, by its names' lengths) rather
    than sending nothing round after round (a tensor that never moves cost 11 points of
    accuracy on the paper's task).

    ``coder="huffman"`` (a comparison with the paper's coder): per tensor, a seeded
    stratified sample of up to :data:`RATE_SAMPLE` values is quantized at trial steps and
    up to thirty bisection steps on ``log(step)`` keep the cost (header, table, Huffman
    code lengths) at or below the target; below 1 bit/value Huffman cannot meet it, and the
    tensor costs about :data:`FLOOR_MARGIN` times the coarsest step's cost instead. A
    tensor whose header would take over a quarter of its budget is coded at
    :data:`SMALL_TENSOR_ALPHA` times its scale.

    Attributes:
        bits_per_param: the target, bits per value, 0 < target <= 32.
        coder: ``"auto"`` or ``"huffman"`` (:data:`CODERS`).
        seed: sampling seed, 0 <= seed < 2**64.

    Example:
        >>> TargetRate(bits_per_param=1.0).get_config()
        {'id': 'target_rate', 'bits_per_param': 1.0, 'coder': 'auto', 'seed': 0}
    """

    id: ClassVar[str] = "target_rate"
    #: small tensors take their step from the fresh delta's RMS (see the class docstring)
    uses_scale: ClassVar[bool] = True
    bits_per_param: float = 1.0
    coder: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        b = self.bits_per_param
        if not _is_real(b) or not (math.isfinite(float(b)) and 0.0 < float(b) <= 32.0):
            raise ConfigError(f"TargetRate.bits_per_param must be in (0, 32], got {b!r}")
        _check_coder("TargetRate", self.coder)
        if not _is_int(self.seed) or not 0 <= self.seed < 1 << 64:
            raise ConfigError(
                f"TargetRate.seed must be an integer in [0, 2**64), got {self.seed!r}"
            )
        object.__setattr__(self, "bits_per_param", float(b))
        object.__setattr__(self, "seed", int(self.seed))

    def _payload_bits(self, counts: np.ndarray) -> float:
        """Coded bits of a sample with these level counts (>= 2 levels), under this coder."""
        if self.coder == "auto":  # ANS codes within a fraction of a percent of the entropy
            return float(-(counts * np.log2(counts / counts.sum())).sum())
        limit = huffman.length_limit(int(counts.size))
        if limit is None:  # too many symbols for Huffman: the tensor is bit-packed
            return float(counts.sum()) * math.ceil(math.log2(counts.size))
        return float((counts * huffman.code_lengths(counts, limit)).sum())

    def _cost_bytes(self, counter: LevelCounter, step: float, n: int, header: float) -> float:
        counts = counter.counts(step)
        if counts.size <= 1:
            return header  # a constant record
        table = 1.5 * counts.size + 4.0
        return header + table + self._payload_bits(counts) * n / counter.sample.size / 8.0

    def choose_step(
        self,
        values: np.ndarray,
        w_min: float,
        w_max: float,
        *,
        name: str,
        position: int,
        scale: float | None,
    ) -> tuple[float, float | None]:
        """The largest-cost step within the target (bisection on the sampled cost model)."""
        n = values.size
        amax = max(abs(w_min), abs(w_max))
        # record header: name, dtype/shape, mode, bits, entropy, range, step, qmin, clamp
        # count, lane sizes and states (ANS) or stream sizes (Huffman)
        header = len(name.encode("utf-8")) + 40.0 + 2 * values.dtype.itemsize
        target = self.bits_per_param * n / 8.0
        if header > target / 4:  # a small tensor: its header would eat its budget
            ref = float(scale) if scale is not None and scale > 0 else rms(values)
            return _usable_step(SMALL_TENSOR_ALPHA * ref, w_min, w_max), None
        sample = sample_values(values, min(n, RATE_SAMPLE), sample_seed(self.seed, position))
        counter = LevelCounter(sample)
        fine = _usable_step(amax / LEVEL_LIMIT, w_min, w_max)
        # the coarsest step that still sends something: the largest |x| rounds to +-1 (a
        # tensor that never moves is worse than one that overshoots its target)
        coarse = _usable_step(1.9 * amax, w_min, w_max)
        floor = self._cost_bytes(counter, coarse, n, header)
        if floor > target:
            # Unreachable (Huffman below ~1 bit/value): aim 10% above the coder's floor, not
            # at the floor itself, whose step (about the largest |x|) would turn the few
            # values it sends into steps of twice their size.
            target = FLOOR_MARGIN * floor
        if self._cost_bytes(counter, fine, n, header) <= target:
            step = fine
        else:
            lo, hi = math.log2(fine), math.log2(coarse)  # cost(lo) > target >= cost(hi)
            for _ in range(_RATE_ITERATIONS):
                mid = 0.5 * (lo + hi)
                cost = self._cost_bytes(counter, 2.0**mid, n, header)
                if cost > target:
                    lo = mid
                else:
                    hi = mid
                    if cost >= (1.0 - _RATE_TOLERANCE) * target:
                        break  # close enough: each step costs a pass over the sample
            step = _usable_step(2.0**hi, w_min, w_max)
        counts = counter.counts(step)
        entropy = float(-(counts * np.log2(counts / counts.sum())).sum() / counts.sum())
        return step, min(24.0, max(0.0, entropy))
