"""Step records of values far beyond the level clamp: the nearest extreme level, counted.

The built-in step policies never choose a step below ``max|x| / LEVEL_LIMIT``; a custom
:class:`~tenfold.codec.policy.StepPolicy` may. ``|x / step| >= 2**63`` once wrapped to
INT64_MIN in the level's float -> int64 conversion, so a huge positive value decoded to
the bottom level (silently), and a step so small that ``x / step`` overflows binary64
raised OverflowError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import tenfold
from tenfold.codec.grouped import Member
from tenfold.codec.midtread import LEVEL_LIMIT
from tenfold.codec.packet import wire_dtype
from tenfold.codec.policy import StepPolicy


@dataclass(frozen=True)
class _ConstantStep(StepPolicy):
    # no `id`: a test policy must not enter Policy's config registry
    step: float = 0.5
    coder: str = "auto"

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
        return self.step, None


def _outliers(dtype: type) -> np.ndarray:
    x: np.ndarray = np.zeros(1000, dtype=dtype)
    x[::7] = 1.0
    x[3] = 1e30  # x / step >= 2**63 at step 0.5
    x[10] = -1e30
    x[501] = 1e30  # in the vectorised body and in a different lane
    return x


@pytest.mark.parametrize("coder", ["auto", "huffman"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_outlier_decodes_to_the_top_level_and_is_counted(coder: str, dtype: type) -> None:
    x = _outliers(dtype)
    blob = tenfold.compress({"w": x}, _ConstantStep(0.5, coder))
    t = tenfold.inspect(blob).tensors[0]
    assert (t.step, t.clamped) == (0.5, 3)
    out = tenfold.decompress(blob)["w"]
    top = LEVEL_LIMIT * 0.5
    assert out[3] == top and out[501] == top and out[10] == -top
    rest = np.ones(x.size, dtype=bool)
    rest[[3, 10, 501]] = False
    assert np.array_equal(out[rest], x[rest])  # 0 and 1 are levels at step 0.5


def test_step_beyond_binary64_levels_clamps_instead_of_raising() -> None:
    # x / step overflows to inf for every nonzero value: math.floor(inf) raised
    # OverflowError (not a TenfoldError) from the quantizer's range
    x = _outliers(np.float64)  # float64: the extreme levels (3.3e-296) are not 0
    blob = tenfold.compress({"w": x}, _ConstantStep(1e-300))
    t = tenfold.inspect(blob).tensors[0]
    assert t.clamped == int(np.count_nonzero(x))
    out = tenfold.decompress(blob)["w"]
    top = LEVEL_LIMIT * 1e-300
    assert top > 0.0 and np.array_equal(out, np.sign(x) * top)


def test_group_member_levels_of_a_step_beyond_binary64() -> None:
    # the group's alphabet: the same clamp, no OverflowError (TargetRate's steps never
    # get there; the group codes its symbols with the mid-tread kernel tested above)
    m = Member(np.zeros(4, np.float32), wire_dtype(np.dtype(np.float32)), -1e30, 1e30, 1e-300)
    assert m.levels() == (-LEVEL_LIMIT, LEVEL_LIMIT)
    m = Member(np.zeros(4, np.float32), wire_dtype(np.dtype(np.float32)), -1.0, 3.0, 0.5)
    assert m.levels() == (-2, 6)
