"""Peer compression methods for the Pareto comparison, applied to the same per-worker deltas.

tenfold's own mode sends pseudo-gradients (``delta = w_local - w_shared`` plus an
error-feedback residual) coded by :mod:`tenfold.codec`. To compare it honestly with the usual
alternatives - accuracy against bits/param on the same task - each peer here takes exactly
the tensors tenfold would have sent and reports every byte *it* would put on the wire.

The contract: a :class:`GroupCodec`
====================================

One synchronisation of ``K`` workers is one call of :meth:`GroupCodec.round`:

* **input** - ``inputs[k]`` is rank ``k``'s dict ``name -> float32 array`` (any shape; the
  same names, in any order, and the same shapes on every rank; finite values). The caller
  has already added its error-feedback residual.
* **output** - a :class:`GroupResult`:

  - ``mean[name]``: the averaged decoded update *every* rank applies (one array: the ranks
    compute it from the same wire data, so it is bit-identical for all of them);
  - ``reconstructions[k][name]``: what rank ``k``'s input became on the wire; the caller
    keeps ``e_k = inputs[k][name] - reconstructions[k][name]`` as its next residual;
  - ``bytes_per_rank[k]``: the exact size in bytes of the message rank ``k`` contributes
    this round - payload plus every index, scale, norm and header the receiver needs.

* **determinism** - the same inputs (and, for :class:`PowerSGD`, the same state) give
  bit-identical outputs. Tensors are processed in rank 0's key order.

What ``bytes_per_rank`` counts: the size of each rank's own contribution (what it would
``all_gather`` or feed into an all-reduce), not the transport's multiplier (a ring
all-reduce moves about ``2 (K-1) / K`` times that per rank, an all-gather ``K - 1`` times).
Every peer is counted the same way, and so is tenfold's own packet, so the ratios are fair.

The peers
=========

==================  =====================================  ==================================
id                  method                                 bytes per rank (tensor of n values)
==================  =====================================  ==================================
``fp16``            :class:`Float16Cast`                   ``2 n``
``bf16``            :class:`BFloat16Cast`                  ``2 n``
``int8-block``      :class:`BlockwiseInt8`                 ``n + 4 ceil(n / block)``
``topk``            :class:`TopK`                          ``5 + 4 s + ceil((G + k b) / 8)``
``powersgd``        :class:`PowerSGD`                      ``4 (n0 + m) r`` or ``4 n``
==================  =====================================  ==================================

(``TopK``: ``s`` scales, ``G`` bits of Golomb-Rice-coded positions, ``k`` kept values of
``b`` bits each; ``PowerSGD``: a matrix ``n0 x m`` of rank ``r`` when compressed, else
plain float32.) A rank's total is the sum over its tensors.

For the per-rank codecs (fp16, bf16, int8-block, top-k), ``mean`` is the sum of the
reconstructions in rank order ``0..K-1`` (float32, sequential adds) divided by ``K``.
:class:`PowerSGD` is a collective codec: its all-reduced low-rank product is both the mean
and every rank's reconstruction.

:func:`peer_from_config` is the inverse of :meth:`GroupCodec.get_config`.

Example:
    >>> import numpy as np
    >>> codec = peer_from_config({"id": "int8-block", "block": 256})
    >>> inputs = [{"w": np.full((10, 10), k + 1, np.float32)} for k in range(2)]
    >>> res = codec.round(inputs, round=0)
    >>> res.bytes_per_rank  # 100 int8 values + one float32 scale each
    [104, 104]
    >>> float(res.mean["w"][0, 0])
    1.5
"""

from __future__ import annotations

import math
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "BFloat16Cast",
    "BlockwiseInt8",
    "Float16Cast",
    "GroupCodec",
    "GroupResult",
    "PowerSGD",
    "TopK",
    "bfloat16_round",
    "decode_positions",
    "encode_positions",
    "ideal_position_bits",
    "peer_from_config",
    "topk_decode",
    "topk_encode",
]

Tensors = dict[str, np.ndarray]


# --------------------------------------------------------------------------- contract


@dataclass(frozen=True)
class GroupResult:
    """What one synchronisation of a :class:`GroupCodec` produced.

    Attributes:
        mean: ``name -> float32 array`` (the input's shape): the averaged decoded update
            every rank applies; identical on all ranks.
        reconstructions: one dict per rank, ``name -> float32 array``: what that rank's
            input became on the wire (the caller's error feedback is
            ``input - reconstruction``).
        bytes_per_rank: per rank, the exact bytes of its message this round (payload plus
            every index, scale, norm and header it needs).

    Example:
        >>> import numpy as np
        >>> res = Float16Cast().round([{"b": np.ones(3, np.float32)}], round=0)
        >>> res.bytes_per_rank, res.mean["b"].dtype
        ([6], dtype('float32'))
    """

    mean: dict[str, np.ndarray]
    reconstructions: list[dict[str, np.ndarray]]
    bytes_per_rank: list[int]


class GroupCodec(ABC):
    """Base class of the peers: one :meth:`round` per synchronisation of ``K`` ranks.

    Subclasses set :attr:`id`, implement :meth:`round` and :meth:`_params` (the constructor
    arguments), and register themselves in :data:`_REGISTRY` for :func:`peer_from_config`.

    Example:
        >>> peer_from_config(TopK(0.05).get_config()).get_config()["fraction"]
        0.05
    """

    id: ClassVar[str]

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """The constructor's keyword arguments, JSON-safe."""

    def get_config(self) -> dict[str, Any]:
        """A JSON-safe dict ``{"id": ..., <constructor arguments>}`` for :func:`peer_from_config`."""
        return {"id": self.id, **self._params()}

    @abstractmethod
    def round(self, inputs: Sequence[Mapping[str, np.ndarray]], *, round: int) -> GroupResult:
        """Code one synchronisation.

        Args:
            inputs: ``K >= 1`` dicts ``name -> float32 ndarray`` (any shape), one per rank,
                with the same names and shapes on every rank and finite values.
            round: the synchronisation's index (``>= 0``).

        Returns:
            A :class:`GroupResult`; deterministic in the inputs (and the codec's state).

        Raises:
            ValueError: mismatched names/shapes/dtypes across ranks, or non-finite values
                (the message names the rank and the tensor).
        """

    def state_dict(self) -> dict[str, Any]:
        """The codec's state across rounds (numpy arrays); ``{}`` for stateless codecs."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a stateless codec only accepts ``{}``."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; got state keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


def peer_from_config(config: Mapping[str, Any]) -> GroupCodec:
    """Rebuild a peer from :meth:`GroupCodec.get_config` output.

    Raises:
        ValueError: not a mapping with an ``id``, an unknown id, or bad/unknown parameters.

    Example:
        >>> peer_from_config({"id": "powersgd", "rank": 4}).get_config()
        {'id': 'powersgd', 'rank': 4, 'seed': 0, 'min_compression_rate': 1.0}
    """
    if not isinstance(config, Mapping) or "id" not in config:
        raise ValueError(f"peer config must be a mapping with an 'id', got {config!r}")
    cls = _REGISTRY.get(str(config["id"]))
    if cls is None:
        raise ValueError(f"unknown peer id {config['id']!r}; known: {sorted(_REGISTRY)}")
    params = {k: v for k, v in config.items() if k != "id"}
    try:
        return cls(**params)
    except TypeError as exc:  # unknown or missing keyword: say so as a config error
        raise ValueError(f"bad parameters for peer {cls.id!r}: {exc}") from None


# --------------------------------------------------------------------------- shared helpers


def _check_inputs(inputs: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """Validate one round's inputs; return the tensor names in rank 0's order.

    Every rank must hold the same names, each a float32 ndarray of the same shape, finite.
    """
    if isinstance(inputs, Mapping) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty list with one dict per rank")
    for k, tensors in enumerate(inputs):
        if not isinstance(tensors, Mapping):
            raise ValueError(f"rank {k}: expected a dict name -> array, got {type(tensors)}")
    names = list(inputs[0])
    ref = set(names)
    for k, tensors in enumerate(inputs):
        got = set(tensors)
        if got != ref:
            missing, extra = sorted(ref - got), sorted(got - ref)
            raise ValueError(
                f"rank {k}: tensor names differ from rank 0 (missing {missing}, extra {extra})"
            )
        for name in names:
            arr = tensors[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                kind = getattr(arr, "dtype", type(arr))
                raise ValueError(f"rank {k}, tensor {name!r}: expected float32 ndarray, got {kind}")
            if arr.shape != inputs[0][name].shape:
                raise ValueError(
                    f"rank {k}, tensor {name!r}: shape {arr.shape} differs from rank 0's "
                    f"{inputs[0][name].shape}"
                )
            if not np.isfinite(arr).all():
                bad = "NaN" if np.isnan(arr).any() else "inf"
                raise ValueError(f"rank {k}, tensor {name!r}: contains {bad}")
    return names


def _check_round(round_: int) -> None:
    if isinstance(round_, bool) or not isinstance(round_, (int, np.integer)) or round_ < 0:
        raise ValueError(f"round must be an int >= 0, got {round_!r}")


def _sequential_mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``(a_0 + a_1 + ... + a_{K-1}) / K`` in float32, adding in rank order.

    A fixed order (not a tree or a float64 sum) is what makes the mean reproducible and
    what a rank that receives the others' messages one by one would compute.
    """
    acc = np.array(arrays[0], dtype=np.float32, copy=True)
    for arr in arrays[1:]:
        acc += arr
    acc /= np.float32(len(arrays))
    return acc


def _int_param(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; ValueError otherwise (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


class _PerRankCodec(GroupCodec):
    """A codec that codes each rank's tensors independently (fp16, bf16, int8, top-k).

    Subclasses implement :meth:`_code`; the mean is the rank-ordered float32 average.
    """

    @abstractmethod
    def _code(self, x: np.ndarray, *, name: str, rank: int) -> tuple[np.ndarray, int]:
        """``(reconstruction, bytes)`` of one tensor (float32 array of ``x``'s shape)."""

    def round(self, inputs: Sequence[Mapping[str, np.ndarray]], *, round: int) -> GroupResult:
        _check_round(round)
        names = _check_inputs(inputs)
        recons: list[dict[str, np.ndarray]] = [{} for _ in inputs]
        nbytes = [0] * len(inputs)
        for k, tensors in enumerate(inputs):
            for name in names:
                recon, size = self._code(tensors[name], name=name, rank=k)
                recons[k][name] = recon
                nbytes[k] += size
        mean = {name: _sequential_mean([r[name] for r in recons]) for name in names}
        return GroupResult(mean=mean, reconstructions=recons, bytes_per_rank=nbytes)


# --------------------------------------------------------------------------- 16-bit casts


class Float16Cast(_PerRankCodec):
    """IEEE half precision: each value cast to float16 (round to nearest even).

    Follows torch's ``fp16_compress_hook`` (``torch/distributed/algorithms/ddp_comm_hooks/
    default_hooks.py``): cast, all-reduce, cast back. Reconstruction = the float16 value.

    Bytes: ``2 n`` per tensor of ``n`` values (no header: the shape is known to all ranks).

    A value beyond float16's range (``|x| >= 65520``) would become ``inf`` on the wire and
    poison the shared model; that raises ``ValueError`` instead.

    Example:
        >>> import numpy as np
        >>> Float16Cast().round([{"w": np.zeros(1000, np.float32)}], round=0).bytes_per_rank
        [2000]
    """

    id = "fp16"

    def _params(self) -> dict[str, Any]:
        return {}

    def _code(self, x: np.ndarray, *, name: str, rank: int) -> tuple[np.ndarray, int]:
        with np.errstate(over="ignore"):  # overflow is reported below, by name
            half = x.astype(np.float16)
        if np.isinf(half).any():
            raise ValueError(
                f"rank {rank}, tensor {name!r}: values overflow float16 (|x| >= 65520)"
            )
        return half.astype(np.float32), 2 * x.size


def bfloat16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest, ties to even), as float32.

    bfloat16 is the top 16 bits of a float32. Adding ``0x7FFF`` plus the lowest kept bit to
    the raw bits and truncating rounds to nearest with ties to even - the same bit trick as
    torch's ``c10::BFloat16`` (numpy has no bfloat16). Inputs must be finite (NaN payloads
    would need care); a carry out of the mantissa correctly bumps the exponent.

    Args:
        x: float32 array, any shape, finite.

    Returns:
        float32 array of ``x``'s shape whose low 16 bits are zero.

    Example:
        >>> import numpy as np
        >>> float(bfloat16_round(np.array([1 + 2**-8], np.float32))[0])  # a tie: to even
        1.0
        >>> float(bfloat16_round(np.array([1 + 3 * 2**-8], np.float32))[0])
        1.015625
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)  # same itemsize: any layout, 0-d too
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


class BFloat16Cast(_PerRankCodec):
    """bfloat16: each value rounded to nearest-even on its float32 bits (8-bit mantissa).

    Follows torch's ``bf16_compress_hook`` (``default_hooks.py``): cast to bfloat16,
    all-reduce, cast back. The rounding is done with uint32 bit operations
    (:func:`bfloat16_round`); reconstruction = the rounded value, relative error
    ``<= 2**-8`` for normal numbers.

    Bytes: ``2 n`` per tensor of ``n`` values.

    Example:
        >>> import numpy as np
        >>> BFloat16Cast().round([{"w": np.ones((4, 5), np.float32)}], round=0).bytes_per_rank
        [40]
    """

    id = "bf16"

    def _params(self) -> dict[str, Any]:
        return {}

    def _code(self, x: np.ndarray, *, name: str, rank: int) -> tuple[np.ndarray, int]:
        recon = bfloat16_round(x)
        if np.isinf(recon).any():
            raise ValueError(f"rank {rank}, tensor {name!r}: values overflow bfloat16")
        return recon, 2 * x.size


# --------------------------------------------------------------------------- block int8


class BlockwiseInt8(_PerRankCodec):
    """Symmetric int8 with one absmax scale per block of ``block`` consecutive values.

    Follows the block quantization of ZeRO++'s qwZ (Wang et al., arXiv 2306.10209, §3.1)
    and INTELLECT-1's int8 all-reduce (arXiv 2412.01152). The tensor is flattened (C order)
    and cut into blocks of ``block`` values (the last one may be shorter). Per block:
    ``s = max |x|`` (sent as float32), ``q = round(x / s * 127)`` clipped to ``[-127, 127]``
    (round half to even), reconstruction ``q * s / 127``; an all-zero block sends ``s = 0``
    and reconstructs zeros. The error is ``<= s / 254`` per value (half a step), plus float32
    rounding of the reconstruction.

    Bytes: ``n + 4 * ceil(n / block)`` per tensor of ``n`` values.

    Args:
        block: values per scale, ``>= 1``.

    Example:
        >>> import numpy as np
        >>> BlockwiseInt8(256).round([{"w": np.ones(600, np.float32)}], round=0).bytes_per_rank
        [612]
    """

    id = "int8-block"

    def __init__(self, block: int = 256) -> None:
        self.block = _int_param("block", block, 1)

    def _params(self) -> dict[str, Any]:
        return {"block": self.block}

    def _code(self, x: np.ndarray, *, name: str, rank: int) -> tuple[np.ndarray, int]:
        n = x.size
        nblocks = -(-n // self.block)
        padded = np.zeros(nblocks * self.block, dtype=np.float64)
        padded[:n] = x.reshape(-1)
        blocks = padded.reshape(nblocks, self.block)
        # The scale is what goes on the wire (float32); quantize against exactly that value
        # so the receiver's dequantization matches the sender's reconstruction.
        scale = np.abs(blocks).max(axis=1).astype(np.float32).astype(np.float64)
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        q = np.clip(np.rint(blocks / safe * 127.0), -127, 127).astype(np.int8)
        recon = (q.astype(np.float64) * (scale[:, None] / 127.0)).astype(np.float32)
        return recon.reshape(-1)[:n].reshape(x.shape), n + 4 * nblocks


# --------------------------------------------------------------------------- top-k


def ideal_position_bits(n: int, k: int) -> float:
    """``log2 C(n, k)``: the fewest bits that can name every k-subset of n positions.

    Example:
        >>> round(ideal_position_bits(16, 4), 2)  # log2(1820)
        10.83
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _bits_msb_first(values: np.ndarray, width: int) -> np.ndarray:
    """``width`` bits of each non-negative int, most significant first, as a flat uint8 array."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)


def _ints_from_bits(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`_bits_msb_first`: the first ``count * width`` bits as ``count`` ints."""
    if bits.size < count * width:
        raise ValueError("truncated bit stream")
    if width == 0:
        return np.zeros(count, dtype=np.int64)
    weights = np.left_shift(1, np.arange(width - 1, -1, -1, dtype=np.int64))
    return bits[: count * width].reshape(count, width).astype(np.int64) @ weights


def _rice_parameter(gaps: np.ndarray, n: int) -> int:
    """The Rice parameter ``r`` minimizing the exact code length ``sum(g >> r) + k (1 + r)``.

    Searched exhaustively (at most ~32 candidates), so it is optimal for the actual gaps,
    not only for the geometric model; for positions spread at density ``p = k / n`` it is
    the classic ``r ~ log2(ln 2 / p)``. Ties go to the smaller ``r``.
    """
    k = gaps.size
    best_r, best_bits = 0, None
    for r in range(max(1, int(n).bit_length())):
        bits = int((gaps >> r).sum()) + k * (1 + r)
        if best_bits is None or bits < best_bits:
            best_r, best_bits = r, bits
    return best_r


def encode_positions(indices: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Golomb-Rice code of sorted positions, as a bit array; returns ``(bits, r)``.

    The gaps ``g_i = idx_i - idx_{i-1} - 1`` (with ``idx_{-1} = -1``) are coded with the
    Rice parameter ``r`` of :func:`_rice_parameter`: the quotient ``g >> r`` in unary
    (that many 1s, then a 0) and the remainder in ``r`` plain bits. All ``k`` unary parts
    come first, then all ``k`` remainders - the same bits as interleaved Rice codewords,
    arranged so that both directions are vectorized (the unary section ends at its ``k``-th
    0). Exact length: ``sum(g >> r) + k (1 + r)`` bits.

    Args:
        indices: strictly increasing int positions in ``[0, n)``, ``k >= 1`` of them.
        n: the tensor's length.

    Returns:
        ``(bits, r)``: uint8 array of 0/1 (``len(bits)`` is the exact cost), the parameter.

    Example:
        >>> import numpy as np
        >>> bits, r = encode_positions(np.array([1, 4, 5, 11]), 16)
        >>> r, "".join(map(str, bits))  # gaps 1,2,0,5: unary 0|10|0|110, remainders 1,0,0,1
        (1, '01001101001')
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError("indices must be a non-empty 1-D array")
    if idx[0] < 0 or idx[-1] >= n or (idx.size > 1 and (np.diff(idx) <= 0).any()):
        raise ValueError(f"indices must be strictly increasing in [0, {n})")
    gaps = np.diff(idx, prepend=-1) - 1
    r = _rice_parameter(gaps, n)
    quotients = gaps >> r
    unary = np.ones(int(quotients.sum()) + idx.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # each unary part ends with its 0
    remainders = _bits_msb_first(gaps & ((1 << r) - 1), r)
    return np.concatenate([unary, remainders]), r


def decode_positions(bits: np.ndarray, k: int, r: int) -> tuple[np.ndarray, int]:
    """Inverse of :func:`encode_positions`; returns ``(indices, bits consumed)``.

    Trailing bits after the position code (value codes, padding) are left alone.

    Example:
        >>> import numpy as np
        >>> bits, r = encode_positions(np.array([0, 7, 8]), 10)
        >>> idx, used = decode_positions(np.concatenate([bits, [1, 0, 1]]), 3, r)
        >>> idx.tolist(), used == len(bits)
        ([0, 7, 8], True)
    """
    bits = np.asarray(bits, dtype=np.uint8)
    zeros = np.flatnonzero(bits == 0)[:k]  # the unary section holds exactly k zeros, first
    if zeros.size < k:
        raise ValueError("truncated position code")
    unary_end = int(zeros[-1]) + 1
    quotients = np.diff(zeros, prepend=-1) - 1
    gaps = (quotients << r) | _ints_from_bits(bits[unary_end:], r, k)
    return np.cumsum(gaps + 1) - 1, unary_end + k * r


def _topk_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest ``|x|``; ties at the threshold go to lower indices.

    O(n): ``np.partition`` finds the k-th largest magnitude ``t``; everything above ``t`` is
    kept, and the remaining slots go to the lowest-indexed values equal to ``t``.
    """
    n = flat.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    mag = np.abs(flat)
    t = np.partition(mag, n - k)[n - k]
    above = np.flatnonzero(mag > t)
    at = np.flatnonzero(mag == t)[: k - above.size]
    return np.sort(np.concatenate([above, at])).astype(np.int64)


def _topk_k(fraction: float, n: int) -> int:
    """``k = max(1, round(fraction * n))`` (half to even), at most ``n``; 0 for an empty tensor."""
    return min(n, max(1, int(round(fraction * n))))


def _quantize_magnitudes(
    mags: np.ndarray, value_bits: int
) -> tuple[np.ndarray, list[float], np.ndarray]:
    """Magnitude levels of the kept values: ``(level index, float32 scales, dequantized)``.

    * ``value_bits == 1`` (sign only): one scale, ``mean |x|`` of the kept values - the
      least-squares magnitude for a sign code (as in EF-signSGD, Karimireddy et al. 2019).
    * ``value_bits = b >= 2``: ``L = 2**(b-1)`` levels evenly spaced on ``[lo, hi]``, the
      min and max kept magnitude (two scales), round to nearest. Top-k magnitudes all lie
      at or above the selection threshold, so a ``[0, hi]`` grid would waste levels below
      it; ``[lo, hi]`` bounds the error by ``(hi - lo) / (2 (L - 1))`` and error feedback
      carries the rest to the next round. (For b = 2: sign + 1 magnitude bit, 4 levels
      ``+-lo, +-hi``.)
    """
    if value_bits == 1:
        scale = np.float32(mags.astype(np.float64).mean())
        return np.zeros(mags.size, np.int64), [float(scale)], np.full(mags.size, scale, np.float32)
    levels = 1 << (value_bits - 1)
    lo, hi = float(mags.min()), float(mags.max())  # exact float32 values: sent as is
    if hi > lo:
        pos = (mags.astype(np.float64) - lo) / (hi - lo) * (levels - 1)
        j = np.clip(np.rint(pos), 0, levels - 1).astype(np.int64)
    else:
        j = np.zeros(mags.size, np.int64)
    return j, [lo, hi], _dequantize_levels(j, lo, hi, levels)


def _dequantize_levels(j: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    step = (hi - lo) / (levels - 1)
    return (lo + j.astype(np.float64) * step).astype(np.float32)


_TOPK_HEADER = struct.Struct("<IB")  # k (uint32), Rice parameter r (uint8)


def topk_encode(x: np.ndarray, k: int, value_bits: int) -> bytes:
    """The wire message of one tensor under :class:`TopK`.

    Layout (little-endian header, then one bit stream padded to a whole byte)::

        k: uint32 | r: uint8 | scales: 1 (b = 1) or 2 (b >= 2) float32
        | Golomb-Rice positions (encode_positions) | k value codes of b bits
        | 0-7 zero bits of padding

    A value code is the sign bit (1 = negative) followed by ``b - 1`` bits of magnitude
    level (:func:`_quantize_magnitudes`), most significant first.

    Args:
        x: float32 array, any shape, finite, at least one value.
        k: values to keep, ``1 <= k <= x.size``.
        value_bits: ``b`` in 1..8.

    Returns:
        The message; ``len()`` of it is what :class:`TopK` counts.

    Example:
        >>> import numpy as np
        >>> x = np.zeros(16, np.float32)
        >>> x[[1, 4, 5, 11]] = [3.0, -1.0, 2.0, 1.5]
        >>> len(topk_encode(x, 4, 2))  # 13-byte header + ceil((11 + 4*2) / 8) = 3
        16
    """
    flat = x.reshape(-1)
    idx = _topk_indices(flat, k)
    vals = flat[idx]
    levels, scales, _ = _quantize_magnitudes(np.abs(vals), value_bits)
    pos_bits, r = encode_positions(idx, flat.size)
    codes = ((vals < 0).astype(np.int64) << (value_bits - 1)) | levels
    stream = np.concatenate([pos_bits, _bits_msb_first(codes, value_bits)])
    header = _TOPK_HEADER.pack(idx.size, r) + struct.pack(f"<{len(scales)}f", *scales)
    return header + np.packbits(stream).tobytes()


def topk_decode(message: bytes, shape: tuple[int, ...], value_bits: int) -> np.ndarray:
    """Inverse of :func:`topk_encode`: the float32 tensor (zeros off the kept positions).

    Example:
        >>> import numpy as np
        >>> x = np.array([0.0, -4.0, 1.0, 4.0], np.float32)
        >>> topk_decode(topk_encode(x, 2, 2), x.shape, 2).tolist()
        [0.0, -4.0, 0.0, 4.0]
    """
    n = math.prod(shape)
    k, r = _TOPK_HEADER.unpack_from(message, 0)
    nscales = 1 if value_bits == 1 else 2
    offset = _TOPK_HEADER.size + 4 * nscales
    scales = struct.unpack_from(f"<{nscales}f", message, _TOPK_HEADER.size)
    bits = np.unpackbits(np.frombuffer(message, dtype=np.uint8, offset=offset))
    idx, used = decode_positions(bits, k, r)
    codes = _ints_from_bits(bits[used:], value_bits, k)
    if (idx.size and idx[-1] >= n) or len(bits) - used - k * value_bits >= 8:
        raise ValueError("malformed top-k message")
    negative = (codes >> (value_bits - 1)) & 1
    if value_bits == 1:
        mags = np.full(k, scales[0], np.float32)
    else:
        j = codes & ((1 << (value_bits - 1)) - 1)
        mags = _dequantize_levels(j, scales[0], scales[1], 1 << (value_bits - 1))
    out = np.zeros(n, np.float32)
    out[idx] = np.where(negative == 1, -mags, mags)
    return out.reshape(shape)


class TopK(_PerRankCodec):
    """Top-k sparsification with quantized values and Golomb-Rice-coded positions.

    Per tensor of ``n`` values, keep the ``k = max(1, round(fraction * n))`` largest
    ``|x|`` (ties: lower index) - the classic sparsifier with error feedback of DGC (Lin et
    al., arXiv 1712.01887) - and quantize the kept values to ``value_bits`` bits, as
    SparseLoCo (arXiv 2508.15706) does with 2 bits: a sign bit plus ``value_bits - 1``
    magnitude bits on a per-tensor ``[lo, hi]`` grid (one ``mean |x|`` scale for 1 bit;
    see :func:`_quantize_magnitudes`). Reconstruction = the dequantized kept values at
    their positions, zeros elsewhere - decoded from the actual message
    (:func:`topk_encode` / :func:`topk_decode`), so what is counted is what is used.

    Bytes per tensor (its message, byte-aligned)::

        5 + 4 s + ceil((G + k * value_bits) / 8),   s = 1 if value_bits == 1 else 2,
        G = sum_i (g_i >> r) + k (1 + r)          (Golomb-Rice positions, see below)

    Positions: the sorted indices' gaps ``g_i`` are Golomb-Rice coded with the ``r`` that
    minimizes ``G`` (sent in the header's byte). Against the ideal ``log2 C(n, k)``, for
    ``k`` uniformly random positions out of ``n = 10**6`` (measured, ``default_rng(0)``):

    =====  ==  ===============  ================  ========  ======================
    k / n  r   Rice bits/index  ideal bits/index  overhead  Elias-gamma bits/index
    =====  ==  ===============  ================  ========  ======================
    0.001  9   11.49            11.40             0.7 %     18.25
    0.01   6   8.11             8.08              0.4 %     11.75
    0.1    3   4.76             4.69              1.4 %     5.71
    =====  ==  ===============  ================  ========  ======================

    (Elias-gamma of ``g + 1``, for reference: parameter-free but 1.2-1.6x the ideal.)
    Real top-k positions are not uniform (they cluster, e.g. in rows of large gradient);
    the search for ``r`` adapts to the actual gaps, and the count stays exact - it can then
    fall below ``log2 C(n, k)``, which bounds uniformly random subsets only. A tensor with
    ``n = 0`` sends nothing.

    Args:
        fraction: kept share of each tensor, in ``(0, 1]``.
        value_bits: bits per kept value, 1..8 (sign + ``value_bits - 1`` magnitude bits).

    Example:
        >>> import numpy as np
        >>> x = np.zeros(16, np.float32)
        >>> x[[1, 4, 5, 11]] = [3.0, -1.0, 2.0, 1.5]
        >>> res = TopK(fraction=0.25, value_bits=2).round([{"g": x}], round=0)
        >>> res.bytes_per_rank, np.flatnonzero(res.reconstructions[0]["g"]).tolist()
        ([16], [1, 4, 5, 11])
    """

    id = "topk"

    def __init__(self, fraction: float = 0.01, value_bits: int = 2) -> None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float, np.floating, np.integer))
            or not 0.0 < float(fraction) <= 1.0
        ):
            raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)
        self.value_bits = _int_param("value_bits", value_bits, 1, 8)

    def _params(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "value_bits": self.value_bits}

    def _code(self, x: np.ndarray, *, name: str, rank: int) -> tuple[np.ndarray, int]:
        if x.size == 0:
            return np.zeros(x.shape, np.float32), 0
        message = topk_encode(x, _topk_k(self.fraction, x.size), self.value_bits)
        return topk_decode(message, x.shape, self.value_bits), len(message)


# --------------------------------------------------------------------------- PowerSGD


def _orthonormalize(a: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Modified Gram-Schmidt on the columns of ``a`` (a float64 copy); deterministic.

    As the hook's ``_orthogonalize``: normalize column i, then remove it from the later
    ones. A column that vanishes (zero, or below ``1e-12`` of its norm before projection:
    it lay in the span of the earlier ones) becomes zero - or, if ``fallback`` is given, is
    replaced by ``fallback``'s column i, orthogonalized the same way. The hook instead adds
    an epsilon to the norm, which leaves a zero column zero; with warm start a Q that was
    once zero (a round with an all-zero matrix) would then stay zero forever. The fallback
    (the fixed-seed initial Q) restarts it.

    Args:
        a: ``(rows, r)`` array.
        fallback: optional ``(rows, r)`` array of replacement columns.

    Returns:
        float64 ``(rows, r)``: orthonormal columns, or zero columns where none was found.
    """
    out = np.array(a, dtype=np.float64, copy=True)
    for i in range(out.shape[1]):
        candidates = [out[:, i].copy()]
        if fallback is not None:
            candidates.append(np.array(fallback[:, i], dtype=np.float64))
        out[:, i] = 0.0
        for col in candidates:
            before = float(np.linalg.norm(col))
            for j in range(i):  # modified GS: one projection at a time, for stability
                col -= (out[:, j] @ col) * out[:, j]
            after = float(np.linalg.norm(col))
            if before > 0.0 and after > 1e-12 * before:
                out[:, i] = col / after
                break
    return out


def _allreduce_mean(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over ranks as the all-reduce would deliver it: float64 sum in rank order, float32."""
    acc = parts[0].astype(np.float64)
    for part in parts[1:]:
        acc += part
    return (acc / len(parts)).astype(np.float32)


class PowerSGD(GroupCodec):
    """PowerSGD low-rank compression: Vogels et al. 2019 (arXiv 1905.13727), Algorithm 1.

    Follows pytorch's ``torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py``
    (``powerSGD_hook``, warm start on). Each tensor of 2 or more dimensions is viewed as a
    matrix ``M`` of ``n x m`` with ``n = shape[0]``; with ``r = min(n, m, rank)`` it is
    compressed when ``(n + m) r * min_compression_rate < n m`` (the hook's
    ``_should_compress``). Per compressed matrix, with ``Q`` shared (``m x r``)::

        Q     <- orthonormalize(Q)                 Q warm-started from the last round;
                                                   round one: fixed-seed standard normal
        P_k   =  M_k Q                             sent: n r float32
        P     =  mean_k P_k                        (all-reduce)
        P^    =  orthonormalize(P)                 Gram-Schmidt, as the hook
        Q_k   =  M_k^T P^                          sent: m r float32
        Q     =  mean_k Q_k                        (all-reduce; kept for the next round)
        approximation = P^ Q^T                     identical on every rank

    The approximation is both ``mean`` and every rank's reconstruction (error feedback is
    ``M_k - P^ Q^T``, as in the hook). 1-D tensors and matrices too small to benefit are
    sent uncompressed in float32 (as the hook's all-reduce of them): mean = the
    rank-ordered float32 mean, reconstruction = the input.

    Precision: P and Q are rounded to float32 wherever they would be sent or kept (``P_k``,
    ``P``, ``P^``, ``Q_k``, ``Q``); products, sums over ranks and Gram-Schmidt run in
    float64, so the only rounding is the float32 the wire imposes (Gram-Schmidt in float32
    loses orthogonality when columns are nearly dependent).

    Bytes per rank: ``4 (n + m) r`` per compressed matrix, ``4 numel`` per other tensor.

    State: the warm-start ``Q`` of every compressed tensor (:meth:`state_dict`: ``name ->
    float32 array (m, r)``). The initial Q of a tensor is drawn from
    ``np.random.default_rng([seed, crc32(name)])``, the same on every rank and independent
    of the round and of the other tensors.

    Args:
        rank: approximation rank, ``>= 1`` (the paper uses 1, 2 and 4).
        seed: seed of the initial Q, ``>= 0``.
        min_compression_rate: compress only if it shrinks the matrix more than this
            (``1.0``: whenever it is smaller; the hook's default is 2).

    Example:
        >>> import numpy as np
        >>> u, v = np.arange(1, 5, dtype=np.float32), np.ones(6, np.float32)
        >>> inputs = [{"w": np.outer(u, v)}, {"w": np.outer(u, v)}]
        >>> res = PowerSGD(rank=1).round(inputs, round=0)
        >>> res.bytes_per_rank, bool(np.allclose(res.mean["w"], np.outer(u, v)))
        ([40, 40], True)
    """

    id = "powersgd"

    def __init__(self, rank: int = 1, seed: int = 0, min_compression_rate: float = 1.0) -> None:
        self.rank = _int_param("rank", rank, 1)
        self.seed = _int_param("seed", seed, 0)
        if (
            isinstance(min_compression_rate, bool)
            or not isinstance(min_compression_rate, (int, float, np.floating, np.integer))
            or not math.isfinite(min_compression_rate)
            or min_compression_rate <= 0
        ):
            raise ValueError(f"min_compression_rate must be > 0, got {min_compression_rate!r}")
        self.min_compression_rate = float(min_compression_rate)
        self._q: dict[str, np.ndarray] = {}

    def _params(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "seed": self.seed,
            "min_compression_rate": self.min_compression_rate,
        }

    def state_dict(self) -> dict[str, Any]:
        """``name -> float32 array (m, r)``: the warm-start Q of each compressed tensor (copies)."""
        return {name: q.copy() for name, q in self._q.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next round continues exactly as it would have."""
        loaded: dict[str, np.ndarray] = {}
        for name, q in state.items():
            arr = np.asarray(q)
            if (
                arr.ndim != 2
                or not np.issubdtype(arr.dtype, np.floating)
                or not np.isfinite(arr).all()
            ):
                raise ValueError(f"state for tensor {name!r}: expected a finite 2-D float array")
            loaded[str(name)] = arr.astype(np.float32, copy=True)
        self._q = loaded

    def _matrix_rank(self, shape: tuple[int, ...]) -> int:
        """The rank ``r`` a tensor of ``shape`` is compressed at, or 0 if it is sent as is."""
        if len(shape) < 2 or math.prod(shape) == 0:
            return 0
        n = shape[0]
        m = math.prod(shape) // n
        r = min(n, m, self.rank)
        return r if (n + m) * r * self.min_compression_rate < n * m else 0

    def _initial_q(self, name: str, m: int, r: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])
        return rng.standard_normal((m, r), dtype=np.float32)

    def round(self, inputs: Sequence[Mapping[str, np.ndarray]], *, round: int) -> GroupResult:
        _check_round(round)
        names = _check_inputs(inputs)
        K = len(inputs)
        mean: dict[str, np.ndarray] = {}
        recons: list[dict[str, np.ndarray]] = [{} for _ in inputs]
        nbytes = 0
        new_q: dict[str, np.ndarray] = {}
        for name in names:
            shape = inputs[0][name].shape
            r = self._matrix_rank(shape)
            if r == 0:
                mean[name] = _sequential_mean([t[name] for t in inputs])
                for k in range(K):
                    recons[k][name] = inputs[k][name].copy()
                nbytes += 4 * inputs[0][name].size
                continue
            n = shape[0]
            m = inputs[0][name].size // n
            approx, new_q[name] = self._compress(name, [t[name].reshape(n, m) for t in inputs], r)
            mean[name] = approx.reshape(shape)
            for k in range(K):
                recons[k][name] = mean[name].copy()
            nbytes += 4 * (n + m) * r
        self._q.update(new_q)  # only once every tensor succeeded
        return GroupResult(mean=mean, reconstructions=recons, bytes_per_rank=[nbytes] * K)

    def _compress(self, name: str, mats: list[np.ndarray], r: int) -> tuple[np.ndarray, np.ndarray]:
        """One power iteration over ranks' ``n x m`` matrices: ``(P^ Q^T, new Q)``, float32."""
        n, m = mats[0].shape
        init = self._initial_q(name, m, r)
        q_prev = self._q.get(name, init)
        if q_prev.shape != (m, r):
            raise ValueError(
                f"tensor {name!r}: warm-start Q has shape {q_prev.shape}, expected {(m, r)}"
            )
        q = _orthonormalize(q_prev, fallback=init).astype(np.float32).astype(np.float64)
        # Each P_k / Q_k is rounded to float32 as it would be sent; the all-reduce sums in
        # float64 (rank order) and the result is rounded once more, as it is kept.
        p_k = [(mat @ q).astype(np.float32) for mat in mats]
        p = _allreduce_mean(p_k)
        p_hat = _orthonormalize(p).astype(np.float32).astype(np.float64)
        q_k = [(mat.T @ p_hat).astype(np.float32) for mat in mats]
        q_new = _allreduce_mean(q_k)
        approx = (p_hat @ q_new.astype(np.float64).T).astype(np.float32)
        return approx, q_new


_REGISTRY: dict[str, type[GroupCodec]] = {
    cls.id: cls for cls in (Float16Cast, BFloat16Cast, BlockwiseInt8, TopK, PowerSGD)
}
