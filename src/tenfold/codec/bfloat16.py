"""bfloat16 without a numpy bfloat16: carry the bits, convert exactly.

bfloat16 is the top half of IEEE binary32: 1 sign bit, the same 8 exponent bits, and 7 of
the 23 fraction bits. So

* **bfloat16 -> float32 is exact**: the float32 whose bit pattern is ``bits << 16``;
* **float32 -> bfloat16** rounds the 16 dropped bits to nearest, ties to even, on the bit
  pattern (what ``torch.Tensor.to(torch.bfloat16)`` does, subnormals and overflow to inf
  included); a float64 is first rounded to float32 (as torch does: float64 -> bfloat16 in
  torch goes through float32, so a value can be rounded twice).

numpy has no bfloat16 dtype, so inside the codec a bfloat16 tensor is a float32 array
holding bfloat16 values, and the packet's record says the dtype is bfloat16 (wire dtype
code 4, docs/FORMAT.md). Raw values travel as their 16-bit patterns. Quantized values are
decoded in float64 as for every dtype and then rounded with :func:`round_to_bfloat16`.

numpy users hand bfloat16 tensors to :func:`tenfold.codec.compress` as
:class:`BFloat16Bits` (the uint16 bit patterns, e.g. from ``ml_dtypes`` or a file); torch
users pass the ``torch.bfloat16`` tensor itself (torch is never imported here).
:func:`tenfold.codec.decompress` returns a bfloat16 record as float32 (exact values):
``torch.from_numpy(a).to(torch.bfloat16)`` or ``BFloat16Bits.from_float(a)`` recovers the
bfloat16 tensor exactly.

Why by hand and not ``ml_dtypes`` (the numpy bfloat16 dtype JAX uses): the codec depends on
numpy and numba only (docs/DESIGN.md), and what it needs is three integer operations on
the float32 bit pattern. Measured once on the 2-core build machine against ml_dtypes 0.7.0
(25M float32 values, N(0, 0.05^2) plus inf, -inf, overflow and a subnormal; median of 5):
the same bits as ``x.astype(ml_dtypes.bfloat16)`` and as torch (NaN payloads aside), in
0.120 s against 0.056 s; from float64, ml_dtypes rounds once where torch (and this module)
round through float32, so it differed from torch on 9 of 1M values. A bfloat16 tensor is
rounded once per sync, a small part of its coding time: not worth a compiled dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tenfold.errors import InputTypeError

__all__ = [
    "BFloat16Bits",
    "bfloat16_bits",
    "float32_from_bits",
    "is_bfloat16_exact",
    "round_to_bfloat16",
]

_LOW = np.uint32(0xFFFF)  # the 16 fraction bits bfloat16 drops
_HIGH = np.uint32(0xFFFF0000)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_QUIET = np.uint32(0x00400000)  # the quiet-NaN bit (top fraction bit)
_HALF_MINUS_ONE = np.uint32(0x7FFF)


def _float32(values: Any) -> np.ndarray:
    """``values`` as a C-contiguous float32 array of the same shape (0-d kept 0-d)."""
    x = np.asarray(values, dtype=np.float32)
    return x if x.flags.c_contiguous else x.copy()


def round_to_bfloat16(values: Any) -> np.ndarray:
    """``values`` rounded to bfloat16, as a float32 array of the same shape.

    Round to nearest, ties to even, on the float32 bit pattern (``torch``'s rule: add
    ``0x7FFF`` plus the lowest kept bit, then clear the 16 low bits), so subnormals round
    like any other value and anything at or above ``0x7F7F8000`` (halfway between the
    largest bfloat16, about 3.39e38, and 2**128) becomes inf. Non-float32 inputs are first
    converted to float32 (round to nearest even), as torch does for float64. NaN stays NaN
    (its sign and top fraction bits kept, the quiet bit set, so it cannot round to inf).

    Args:
        values: any float array-like (float16/32/64 or a Python float).

    Returns:
        float32 array, every value exactly representable in bfloat16.

    Example:
        >>> ties = [1 + 2**-8, 1 + 3 * 2**-8]  # halfway: to the even neighbour
        >>> round_to_bfloat16(np.array(ties)).tolist()
        [1.0, 1.015625]
        >>> big = np.finfo(np.float32).max  # above the largest bfloat16, 3.3895e38
        >>> round_to_bfloat16(np.array([3.3895e38, big], np.float32)).tolist()
        [3.3895313892515355e+38, inf]
    """
    # over: float64 beyond float32 becomes inf (as in torch); the uint32 sum below can wrap
    # around only for NaN patterns, which are replaced
    with np.errstate(over="ignore"):
        u = _float32(values).view(np.uint32)
        lsb = (u >> np.uint32(16)) & np.uint32(1)
        rounded = (u + _HALF_MINUS_ONE + lsb) & _HIGH
    nan = (u & _ABS) > _INF
    if nan.any():
        rounded = np.where(nan, (u | _QUIET) & _HIGH, rounded)
    return rounded.view(np.float32)


def is_bfloat16_exact(values: np.ndarray) -> bool:
    """Whether every value of a float32 array is a bfloat16 (its 16 low bits are zero)."""
    return not (_float32(values).view(np.uint32) & _LOW).any()


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The uint16 bit patterns of float32 values that are bfloat16 (the top 16 bits).

    Exact for values that are bfloat16 (:func:`is_bfloat16_exact`); others are truncated,
    so round them first (:func:`round_to_bfloat16`).

    Example:
        >>> bfloat16_bits(np.array([1.0, -2.0], np.float32)).tolist()  # 0x3F80, 0xC000
        [16256, 49152]
    """
    return (_float32(values).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def float32_from_bits(bits: np.ndarray) -> np.ndarray:
    """The float32 values (exact) of bfloat16 bit patterns (uint16, any shape).

    Example:
        >>> float32_from_bits(np.array([0x3F80, 0xC000, 0x7F80], np.uint16)).tolist()
        [1.0, -2.0, inf]
    """
    b = np.asarray(bits)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


class BFloat16Bits:
    """A bfloat16 tensor held as its uint16 bit patterns, for numpy users.

    ``tenfold.codec.compress({"w": BFloat16Bits(bits)})`` codes the tensor as bfloat16
    (raw values take 2 bytes each); a ``torch.bfloat16`` tensor can be passed directly.

    Attributes:
        bits: the bit patterns, native-endian uint16, any shape (C order). bfloat16 bit
            ``k`` is float32 bit ``k + 16``: sign, 8 exponent bits, 7 fraction bits.

    Example:
        >>> b = BFloat16Bits.from_float(np.array([0.1, 1.0, -3.0]))
        >>> b.bits.tolist(), b.to_float32().tolist()
        ([15821, 16256, 49216], [0.10009765625, 1.0, -3.0])
    """

    __slots__ = ("bits",)

    def __init__(self, bits: Any) -> None:
        arr = np.asarray(bits)
        if arr.dtype.kind not in "ui" or arr.dtype.itemsize != 2:
            raise InputTypeError(
                f"BFloat16Bits needs 16-bit integer bit patterns (uint16), got {arr.dtype}"
            )
        # int16 patterns (as torch's .view(torch.int16) gives) are the same bits
        self.bits: np.ndarray = arr.astype(np.uint16, copy=False)  # native-endian too

    @classmethod
    def from_float(cls, values: Any) -> BFloat16Bits:
        """``values`` rounded to bfloat16 (:func:`round_to_bfloat16`): exact for values that
        already are bfloat16, e.g. what ``decompress`` returns for a bfloat16 record."""
        return cls(bfloat16_bits(round_to_bfloat16(values)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(self.bits.shape)

    @property
    def dtype(self) -> str:
        """Always ``"bfloat16"`` (what ``tenfold.inspect`` reports)."""
        return "bfloat16"

    def to_float32(self) -> np.ndarray:
        """The values as float32 (exact: bfloat16 is the top half of float32)."""
        return float32_from_bits(self.bits)

    def __repr__(self) -> str:
        return f"BFloat16Bits(shape={self.shape})"
