"""Policies: how many bits N each tensor is quantized to.

* :class:`Fixed` - the same N for every tensor (paper Fig. 1).
* :class:`EntropyAdaptive` - the paper's Algorithm 1: ``N = ceil(H + c)`` where H is the
  entropy (bits) of an M-bit quantization of a seeded sample of a fraction F of the tensor.
* :class:`GradientRMS` - paper section 3.2: ``N = ceil(log2(G + c0) + c1)`` from the
  tensor's RMS gradient G, supplied by the caller (``compress(..., grad_rms={name: G})``).
* :class:`Lossless` - no quantization: values travel unchanged (the uncompressed baseline).

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

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from tenfold.codec.quantize import sampled_entropy

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "EntropyAdaptive",
    "Fixed",
    "GradientRMS",
    "Lossless",
    "Policy",
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
        raise ValueError("bit count is NaN")
    if math.isinf(value):
        return MAX_BITS if value > 0 else MIN_BITS
    return int(min(MAX_BITS, max(MIN_BITS, math.ceil(value - _CEIL_TOLERANCE))))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Policy(ABC):
    """Base class: decides N for one tensor; ``get_config``/``from_config`` round-trip.

    Subclasses set ``id`` (the config's ``"id"``) and implement :meth:`choose_bits`.
    """

    id: ClassVar[str]
    #: True only for :class:`Lossless`: values are sent unchanged, N is not used.
    lossless: ClassVar[bool] = False
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
            raise ValueError(f"policy config must be a mapping with an 'id', got {config!r}")
        target = Policy._registry.get(str(config["id"]))
        if target is None:
            raise ValueError(
                f"unknown policy id {config['id']!r}; known: {sorted(Policy._registry)}"
            )
        if cls is not Policy and target is not cls:
            raise ValueError(f"config id {config['id']!r} is not a {cls.__name__} config")
        params = {k: v for k, v in config.items() if k != "id"}
        names = {f.name for f in fields(target)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown {target.__name__} config field(s): {unknown}")
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
            raise ValueError(f"Fixed.bits must be an integer in [1, 24], got {self.bits!r}")
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
    """The paper's Algorithm 1: ``N = ceil(H + c)``, clamped to [1, 24].

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
            raise ValueError(f"EntropyAdaptive.F must be in (0, 1], got {self.F!r}")
        if not _is_int(self.M) or not 1 <= self.M <= 16:
            raise ValueError(f"EntropyAdaptive.M must be an integer in [1, 16], got {self.M!r}")
        if not _is_real(self.c) or not 0.0 <= float(self.c) <= MAX_BITS:
            raise ValueError(f"EntropyAdaptive.c must be a number in [0, 24], got {self.c!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 1 << 64:
            raise ValueError(
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
            raise ValueError(f"GradientRMS.c1 must be a number in [-24, 48], got {self.c1!r}")
        if not _is_real(self.c0) or not (math.isfinite(float(self.c0)) and float(self.c0) > 0):
            raise ValueError(f"GradientRMS.c0 must be a finite number > 0, got {self.c0!r}")
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
            raise ValueError(f"GradientRMS needs grad_rms[{name!r}] (the tensor's RMS gradient)")
        g = grad_rms[name]
        if not _is_real(g) or not (math.isfinite(float(g)) and float(g) >= 0.0):
            raise ValueError(f"grad_rms[{name!r}] must be a finite number >= 0, got {g!r}")
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
