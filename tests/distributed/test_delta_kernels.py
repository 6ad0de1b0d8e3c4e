"""The sender's fused passes equal the numpy expressions they replace, bit for bit."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tenfold.codec.policy import rms
from tenfold.distributed import delta_kernels
from tenfold.distributed.delta_kernels import (
    all_finite,
    apply_mean,
    delta_input,
    delta_input_rms,
    delta_rms,
    swap_difference,
)
from tenfold.errors import ConfigError

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
    wire = dtype != np.float16  # the sender's arrays are float32/float64 (wire dtypes)
    if wire:
        x0, r0 = delta_input_rms(w, ref, None)
        assert x0.tobytes() == want.tobytes() and r0 == rms(want.reshape(-1))
    np.add(want, e, out=want)
    got = delta_input(w, ref, e)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    if wire:
        x1, r1 = delta_input_rms(w, ref, e)
        assert x1.dtype == want.dtype and x1.tobytes() == want.tobytes() and r1 == r0


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty(shape: tuple[int, ...]) -> None:
    z = np.zeros(shape, np.float32)
    assert delta_rms(z, z) == 0.0
    assert delta_input(z, z, z).shape == shape
    x, r = delta_input_rms(z, z, z)
    assert x.shape == shape and r == 0.0


def test_large_2d_and_non_contiguous_views() -> None:
    rng = np.random.default_rng(0)
    w, ref, e = (rng.standard_normal((301, 257)).astype(np.float32) for _ in range(3))
    assert delta_input(w, ref, e).tobytes() == ((w - ref) + e).tobytes()
    assert delta_rms(w, ref) == rms((w - ref).reshape(-1))
    wt, rt, et = w.T, ref.T, e.T  # not C-contiguous: the numpy path
    assert delta_input(wt, rt, et).tobytes() == ((wt - rt) + et).tobytes()
    assert delta_rms(wt, rt) == rms(np.subtract(wt, rt).reshape(-1))
    for a, b, c in ((w, ref, e), (wt, rt, et)):  # fused and numpy paths
        x, r = delta_input_rms(a, b, c)
        assert x.tobytes() == delta_input(a, b, c).tobytes() and r == delta_rms(a, b)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
    k=st.integers(1, 7),
    advance=st.booleans(),
    feedback=st.booleans(),
    into_total=st.booleans(),
)
def test_apply_mean_equals_numpy(
    data: st.DataObject,
    n: int,
    dtype: type,
    k: int,
    advance: bool,
    feedback: bool,
    into_total: bool,
) -> None:
    total, ref, x, own = (
        data.draw(hnp.arrays(dtype, n, elements=st.floats(-1e4, 1e4, width=32))) for _ in range(4)
    )
    # the numpy expressions the sync used before: divide, subtract, add, copy
    mean = np.divide(total, dtype(k))
    want_ref = np.add(ref, mean)
    want_e = np.subtract(x, own)
    got_ref, got_total = ref.copy(), total.copy()
    e: np.ndarray = np.full(n, 7, dtype)
    out = got_total if into_total else np.empty(n, dtype)
    apply_mean(
        got_total, k, got_ref, out, advance=advance, residual=(x, own, e) if feedback else None
    )
    assert out.tobytes() == want_ref.tobytes()
    assert got_ref.tobytes() == (want_ref if advance else ref).tobytes()
    assert e.tobytes() == (want_e if feedback else np.full(n, 7, dtype)).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 70),
    dtype=st.sampled_from([np.float32, np.float64]),
    k=st.integers(1, 5),
    contiguous=st.booleans(),
)
def test_apply_mean_adds_a_pending_contribution_first(
    data: st.DataObject, n: int, dtype: type, k: int, contiguous: bool
) -> None:
    """``plus``: the sum's last addition, fused (``total + plus`` then divided), bit for
    bit the numpy expressions; signed zeros drawn on purpose."""
    elements = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([0.0, -0.0]))
    total, ref, x, own = (data.draw(hnp.arrays(dtype, n, elements=elements)) for _ in range(4))
    want_ref = np.add(ref, np.divide(np.add(total, own), dtype(k)))
    got_ref = ref.copy()
    e: np.ndarray = np.empty(n, dtype)
    out: np.ndarray = np.empty(n, dtype)
    if contiguous:
        apply_mean(total, k, got_ref, out, advance=True, residual=(x, own, e), plus=own)
    else:  # strided views take the numpy path
        wide: np.ndarray = np.zeros((n, 2), dtype)
        wide[:, 0] = total
        apply_mean(wide[:, 0], k, got_ref, out, advance=True, residual=(x, own, e), plus=own)
    assert out.tobytes() == want_ref.tobytes() and got_ref.tobytes() == want_ref.tobytes()
    assert e.tobytes() == np.subtract(x, own).tobytes()


def test_apply_mean_non_contiguous_takes_the_numpy_path() -> None:
    rng = np.random.default_rng(1)
    total, ref, x, own = (rng.standard_normal((9, 5)).astype(np.float32) for _ in range(4))
    want = ref.T + total.T / np.float32(3)
    ref_t, out, e = (
        ref.T.copy(order="F"),
        np.empty((5, 9), np.float32),
        np.empty((5, 9), np.float32),
    )
    apply_mean(total.T, 3, ref_t, out, advance=True, residual=(x.T, own.T, e))
    assert (
        out.tobytes() == want.tobytes() and ref_t.tobytes() == np.ascontiguousarray(want).tobytes()
    )
    assert e.tobytes() == (x.T - own.T).tobytes()


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    n=st.integers(0, 300),
)
def test_all_finite_is_numpys_isfinite_all(data: st.DataObject, dtype: type, n: int) -> None:
    a = data.draw(hnp.arrays(dtype, n, elements=st.floats(allow_nan=True, allow_infinity=True,
                                                           width=np.dtype(dtype).itemsize * 8)))  # fmt: skip
    assert all_finite(a) == bool(np.isfinite(a).all())
    assert all_finite(a[::2]) == bool(np.isfinite(a[::2]).all())  # strided: numpy's path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_anywhere(dtype: type, bad: float) -> None:
    a: np.ndarray = np.full((7, 1000), np.finfo(dtype).max, dtype)
    assert all_finite(a)
    a[6, 999] = bad
    assert not all_finite(a)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 70),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
    piece=st.sampled_from([1, 3, 64, 1 << 18]),
)
def test_swap_difference_equals_numpy(data: st.DataObject, n: int, dtype: type, piece: int) -> None:
    # float16 takes the piecewise numpy path (pieces of ``piece`` values), the others numba
    ref, w = (
        data.draw(hnp.arrays(dtype, n, elements=st.floats(-1e4, 1e4, width=16))) for _ in range(2)
    )
    want_ref, want_w = np.subtract(ref, w), ref.copy()
    saved = delta_kernels.SWAP_PIECE
    delta_kernels.SWAP_PIECE = piece
    try:
        swap_difference(ref, w)
    finally:
        delta_kernels.SWAP_PIECE = saved
    assert ref.tobytes() == want_ref.tobytes() and w.tobytes() == want_w.tobytes()


def test_swap_difference_non_contiguous_and_2d() -> None:
    rng = np.random.default_rng(1)
    for make in (
        lambda: rng.standard_normal((64, 33)).astype(np.float32)[:, ::2],
        lambda: rng.standard_normal((40, 7)).astype(np.float64),
    ):
        ref, w = make(), make()
        want_ref, want_w = ref - w, ref.copy()
        swap_difference(ref, w)
        assert np.array_equal(ref, want_ref) and np.array_equal(w, want_w)


def test_swap_difference_allocates_no_tensor_sized_temporary() -> None:
    for dtype in (np.float32, np.float16):  # numba, and the piecewise numpy path
        ref, w = np.ones(1 << 22, dtype), np.zeros(1 << 22, dtype)
        swap_difference(np.ones(8, dtype), np.ones(8, dtype))  # compiled before measuring
        tracemalloc.start()
        try:
            swap_difference(ref, w)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < ref.nbytes // 4, (dtype, peak)
        assert ref[0] == 1 and w[0] == 1


def test_swap_difference_refuses_mismatched_arrays() -> None:
    with pytest.raises(ConfigError, match="swap_difference"):
        swap_difference(np.ones(3, np.float32), np.ones(3, np.float64))
    with pytest.raises(ConfigError, match="swap_difference"):
        swap_difference(np.ones(3, np.float32), np.ones(4, np.float32))
