"""The sender's fused passes equal the numpy expressions they replace, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tenfold.codec.policy import rms
from tenfold.distributed.delta_kernels import delta_input, delta_rms

FLOATS = st.floats(-1e30, 1e30, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 70),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_equal_to_numpy(data: st.DataObject, n: int, dtype: type) -> None:
    w, ref, e = (
        data.draw(hnp.arrays(dtype, n, elements=st.floats(-1e4, 1e4, width=16))) for _ in range(3)
    )
    want = np.subtract(w, ref)
    if dtype != np.float16:  # the codec's RMS takes float32/float64 only
        assert delta_rms(w, ref) == rms(want.reshape(-1))
    assert delta_input(w, ref, None).tobytes() == want.tobytes()
    np.add(want, e, out=want)
    got = delta_input(w, ref, e)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty(shape: tuple[int, ...]) -> None:
    z = np.zeros(shape, np.float32)
    assert delta_rms(z, z) == 0.0
    assert delta_input(z, z, z).shape == shape


def test_large_2d_and_non_contiguous_views() -> None:
    rng = np.random.default_rng(0)
    w, ref, e = (rng.standard_normal((301, 257)).astype(np.float32) for _ in range(3))
    assert delta_input(w, ref, e).tobytes() == ((w - ref) + e).tobytes()
    assert delta_rms(w, ref) == rms((w - ref).reshape(-1))
    wt, rt, et = w.T, ref.T, e.T  # not C-contiguous: the numpy path
    assert delta_input(wt, rt, et).tobytes() == ((wt - rt) + et).tobytes()
    assert delta_rms(wt, rt) == rms(np.subtract(wt, rt).reshape(-1))
