"""``threads=``: the packet bytes and the decoded/accumulated values never depend on it."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenfold.codec import (
    BFloat16Bits,
    CorruptPacketError,
    EntropyAdaptive,
    Fixed,
    GradientRMS,
    Lossless,
    RelativeStep,
    TargetRate,
    accumulate,
    compress,
    decompress,
    parallel,
)
from tenfold.codec.parallel import available_cores, resolve_threads, run_in_order

from .conftest import weight_like

THREADS = (1, 2, 3, 8)
#: the real minimum work per thread; the tests below lower it so that their small tensors
#: take the threaded (and chunked) paths too
REAL_MIN_CHUNK = parallel.MIN_CHUNK


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_CHUNK", 256)


POLICIES = [
    Fixed(8),
    Fixed(20),  # bit-packed
    EntropyAdaptive(),
    EntropyAdaptive(F=0.5, M=6, c=4, seed=7),
    TargetRate(bits_per_param=1.0),
    TargetRate(bits_per_param=0.5, coder="huffman", seed=3),
    TargetRate(bits_per_param=2.0, seed=11),
    RelativeStep(alpha=1.0),
    RelativeStep(alpha=2.0, coder="huffman"),
    Lossless(),
    GradientRMS(6.0),
]


def _model(rng: np.random.Generator) -> dict[str, object]:
    """A model-like mix: big and small layers, every dtype, 0-d, empty, constant tensors."""
    tensors: dict[str, object] = {
        "embed": weight_like(rng, (300, 250)),
        "fc1.weight": weight_like(rng, (200, 300)),
        "fc1.bias": weight_like(rng, (200,)),
        "ln.weight": np.ones(64, np.float32),  # constant
        "half": weight_like(rng, (50, 40), np.float16),
        "double": weight_like(rng, (70, 70), np.float64),
        "bf16": BFloat16Bits.from_float(weight_like(rng, (120, 90))),
        "bf16.small": BFloat16Bits.from_float(weight_like(rng, (5,))),
        "scalar": np.float32(0.25).reshape(()),
        "empty": np.zeros((0, 3), np.float32),
        "fc2.weight": weight_like(rng, (10, 200)),
    }
    return tensors


def _kwargs(policy: object, tensors: dict[str, object]) -> dict[str, object]:
    if isinstance(policy, GradientRMS):
        return {"grad_rms": {name: 0.01 * (i + 1) for i, name in enumerate(tensors)}}
    if isinstance(policy, (RelativeStep, TargetRate)):
        return {"scale": {name: 0.05 for name in tensors}}
    return {}


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p))
def test_bytes_and_values_do_not_depend_on_threads(policy: object) -> None:
    rng = np.random.default_rng(5)
    tensors = _model(rng)
    kwargs = _kwargs(policy, tensors)
    serial = compress(tensors, policy, threads=1, **kwargs)  # type: ignore[arg-type]
    decoded = decompress(serial, threads=1)
    acc_serial = {
        k: np.full(v.shape, 0.5, v.dtype) for k, v in decoded.items() if v.dtype.itemsize >= 4
    }
    only = {k: v for k, v in decoded.items() if k in acc_serial}
    subset = {k: tensors[k] for k in only}
    sub_blob = compress(subset, policy, threads=1, **kwargs)  # type: ignore[arg-type]
    accumulate(sub_blob, acc_serial, threads=1)
    for threads in THREADS[1:] + (None,):
        assert compress(tensors, policy, threads=threads, **kwargs) == serial  # type: ignore[arg-type]
        got = decompress(serial, threads=threads)
        assert list(got) == list(decoded)
        for name in decoded:
            assert got[name].dtype == decoded[name].dtype
            assert got[name].tobytes() == decoded[name].tobytes(), name
        acc = {k: np.full(v.shape, 0.5, v.dtype) for k, v in only.items()}
        assert compress(subset, policy, threads=threads, **kwargs) == sub_blob  # type: ignore[arg-type]
        accumulate(sub_blob, acc, threads=threads)
        for name in acc:
            assert acc[name].tobytes() == acc_serial[name].tobytes(), name


def test_torch_bfloat16_inputs_are_thread_independent() -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"layer{i}": torch.randn(100 + 37 * i, 50, generator=g).to(torch.bfloat16) for i in range(6)
    }
    for policy in (EntropyAdaptive(), TargetRate(bits_per_param=1.0), Lossless()):
        serial = compress(tensors, policy, threads=1)
        for threads in THREADS[1:]:
            assert compress(tensors, policy, threads=threads) == serial


def test_a_large_tensor_with_many_small_ones() -> None:
    """The largest tensor is scheduled first but still lands at its place in the packet."""
    rng = np.random.default_rng(9)
    tensors = {f"b{i}": weight_like(rng, (17 + i,)) for i in range(20)}
    tensors["big"] = weight_like(rng, (400_000,))
    tensors.update({f"c{i}": weight_like(rng, (3000 + i,)) for i in range(5)})
    for policy in (EntropyAdaptive(), TargetRate(bits_per_param=1.0)):
        serial = compress(tensors, policy, threads=1)
        assert compress(tensors, policy, threads=3) == serial
        assert list(decompress(serial, threads=3)) == list(tensors)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
    threads=st.integers(2, 8),
    policy=st.sampled_from(POLICIES[:-1]),  # GradientRMS needs grad_rms
)
def test_property_thread_count_never_changes_the_bytes(
    sizes: list[int], seed: int, threads: int, policy: object
) -> None:
    rng = np.random.default_rng(seed)
    tensors = {f"t{i}": weight_like(rng, (n,)) for i, n in enumerate(sizes)}
    serial = compress(tensors, policy, threads=1)  # type: ignore[arg-type]
    assert compress(tensors, policy, threads=threads) == serial  # type: ignore[arg-type]
    a = decompress(serial, threads=1)
    b = decompress(serial, threads=threads)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


# ---- validation and errors ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.0, 2.5, "2", True, False])
def test_threads_must_be_none_or_a_positive_int(bad: object) -> None:
    x = {"w": np.ones(10, np.float32)}
    blob = compress(x, Fixed(8))
    with pytest.raises(ValueError, match="threads must be None"):
        compress(x, Fixed(8), threads=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads must be None"):
        decompress(blob, threads=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads must be None"):
        accumulate(blob, {"w": np.zeros(10, np.float32)}, threads=bad)  # type: ignore[arg-type]


def test_small_packets_stay_in_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under MIN_CHUNK values of work per thread, no thread is started."""
    monkeypatch.setattr(parallel, "MIN_CHUNK", REAL_MIN_CHUNK)
    rng = np.random.default_rng(6)
    tensors = {f"t{i}": weight_like(rng, (1000,)) for i in range(8)}
    before = threading.active_count()
    started: list[int] = []
    real = parallel.ThreadPoolExecutor

    def spy(*args: object, **kwargs: object) -> object:
        started.append(1)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(parallel, "ThreadPoolExecutor", spy)
    blob = compress(tensors, TargetRate(bits_per_param=1.0), threads=8)
    decompress(blob, threads=8)
    accumulate(blob, {k: np.zeros(1000, np.float32) for k in tensors}, threads=8)
    assert not started and threading.active_count() == before


def test_none_means_the_cores_this_process_may_use() -> None:
    assert resolve_threads(None) == available_cores()
    if hasattr(os, "sched_getaffinity"):
        assert available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("threads", THREADS)
def test_errors_are_the_serial_paths(threads: int) -> None:
    """The first failing tensor in packet order raises, whatever the thread count."""
    rng = np.random.default_rng(2)
    good = weight_like(rng, (5000,))
    nan = good.copy()
    nan[7] = np.nan
    with pytest.raises(ValueError, match="'second' contains NaN"):
        compress({"first": good, "second": nan, "third": nan.copy()}, Fixed(8), threads=threads)
    # a bad name after a NaN tensor: the NaN tensor comes first, so its error wins ...
    with pytest.raises(ValueError, match="'first' contains NaN"):
        compress({"first": nan, 5: good}, Fixed(8), threads=threads)  # type: ignore[dict-item]
    # ... and a bad name before it wins over it
    with pytest.raises(TypeError, match="tensor names must be str"):
        compress({5: good, "x": nan}, Fixed(8), threads=threads)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="'b' has dtype int64"):
        compress({"a": good, "b": np.arange(9), "c": nan}, Fixed(8), threads=threads)


@pytest.mark.parametrize("threads", THREADS)
def test_corrupt_packets_still_raise_corrupt_packet_error(threads: int) -> None:
    rng = np.random.default_rng(3)
    blob = bytearray(compress({f"t{i}": weight_like(rng, (2000,)) for i in range(4)}, Fixed(8)))
    blob[len(blob) // 2] ^= 0x10
    with pytest.raises(CorruptPacketError):
        decompress(bytes(blob), threads=threads)
    acc = {f"t{i}": np.zeros(2000, np.float32) for i in range(4)}
    with pytest.raises(CorruptPacketError):
        accumulate(bytes(blob), acc, threads=threads)
    assert all(not a.any() for a in acc.values())  # validated before anything was added


def test_overlapping_accumulators_are_added_one_after_the_other() -> None:
    """Two names sharing one array: both packets' values land (no lost update)."""
    rng = np.random.default_rng(4)
    a, b = weight_like(rng, (50_000,)), weight_like(rng, (50_000,))
    blob = compress({"a": a, "b": b}, Fixed(8))
    dec = decompress(blob)
    shared = np.zeros(50_000, np.float32)
    accumulate(blob, {"a": shared, "b": shared}, threads=4)
    expected = np.zeros(50_000, np.float32)
    expected += dec["a"]
    expected += dec["b"]
    assert shared.tobytes() == expected.tobytes()
    # overlapping slices of one buffer, too
    buf = np.zeros(60_000, np.float32)
    blob2 = compress({"a": a, "b": b}, Fixed(8))
    accumulate(blob2, {"a": buf[:50_000], "b": buf[10_000:]}, threads=4)
    ref = np.zeros(60_000, np.float32)
    ref[:50_000] += dec["a"]
    ref[10_000:] += dec["b"]
    assert buf.tobytes() == ref.tobytes()


def test_run_in_order_keeps_order_and_uses_several_threads() -> None:
    seen: set[int] = set()
    barrier = threading.Barrier(3, timeout=10)

    def task(i: int) -> int:
        seen.add(threading.get_ident())
        if i < 3:
            barrier.wait()  # only passes if three tasks run at the same time
        return i * i

    tasks = [lambda i=i: task(i) for i in range(10)]
    assert run_in_order(tasks, 3, weights=[10 - i for i in range(10)]) == [i * i for i in range(10)]
    assert len(seen) == 3
    # threads=1: the calling thread, in order
    calls: list[int] = []

    def record(i: int) -> int:
        calls.append(i)
        return i

    assert run_in_order([lambda i=i: record(i) for i in range(5)], 1) == list(range(5))
    assert calls == list(range(5))


def test_threads_are_kept_between_calls() -> None:
    def name() -> str:
        time.sleep(0.01)  # long enough for both threads to take a task
        return threading.current_thread().name

    first = set(run_in_order([name] * 6, 2))
    count = threading.active_count()
    for _ in range(3):
        again = set(run_in_order([name] * 6, 2))
        assert threading.active_count() == count  # no thread started or left behind
    assert threading.current_thread().name in first  # the calling thread works too
    helpers = (first | again) - {threading.current_thread().name}
    assert helpers and all(n.startswith("tenfold-codec-0") for n in helpers)


def test_a_call_does_not_wait_for_threads_another_call_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two slow calls hold the pool's threads; a third, small call runs its tasks in its
    own thread instead of queueing behind them."""
    monkeypatch.setattr(parallel, "_POOLS", {})  # a pool of 2 threads, made by the first call
    gate = threading.Event()

    def slow() -> int:
        gate.wait(10)
        return 1

    holders = [threading.Thread(target=run_in_order, args=([slow] * 3, 3)) for _ in range(2)]
    for t in holders:
        t.start()
    try:
        start = time.monotonic()
        assert _finishes(lambda: run_in_order([lambda i=i: i for i in range(3)], 3)) == [0, 1, 2]
        assert time.monotonic() - start < 5  # it did not wait for the gate
    finally:
        gate.set()
        for t in holders:
            t.join(10)


def test_an_interrupt_stops_the_tasks_not_started() -> None:
    ran: list[int] = []

    def task(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt
        time.sleep(0.01)
        ran.append(i)

    with pytest.raises(KeyboardInterrupt):
        _finishes(lambda: run_in_order([lambda i=i: task(i) for i in range(60)], 2))
    assert len(ran) < 10  # the rest, earlier in order or not, were never started


def _finishes(fn: Callable[[], object], seconds: float = 30.0) -> object:
    """``fn()``'s result, failing (instead of hanging the suite) if it takes too long."""
    box: list[object] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)

    runner = threading.Thread(target=target, daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), "run_in_order hung"
    if failure:
        raise failure[0]
    return box[0]


def test_tasks_that_run_tasks_do_not_wait_for_their_own_threads() -> None:
    """Every outer task holds a thread of the pool while its inner tasks run: they must
    get threads of their own (a deeper pool), not queue behind their callers."""

    def outer(i: int) -> list[int]:
        return run_in_order([lambda j=j: 10 * i + j for j in range(3)], 2)

    got = _finishes(lambda: run_in_order([lambda i=i: outer(i) for i in range(4)], 2))
    assert got == [[10 * i + j for j in range(3)] for i in range(4)]


def test_tasks_after_the_first_failure_are_not_started() -> None:
    ran: list[int] = []

    def task(i: int) -> int:
        time.sleep(0.002)
        ran.append(i)
        if i in (3, 7):
            raise ValueError(f"task {i}")
        return i

    with pytest.raises(ValueError, match="task 3"):
        _finishes(lambda: run_in_order([lambda i=i: task(i) for i in range(40)], 2))
    assert set(range(4)) <= set(ran)  # everything before the failure ran
    assert max(ran) < 10  # and little after it: the rest were never started


def test_an_interrupt_wins_over_an_earlier_error() -> None:
    def fail() -> None:
        time.sleep(0.2)  # both tasks have started before either raises
        raise ValueError("ordinary")

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_order([fail, interrupt], 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_threads_of_its_own() -> None:
    run_in_order([lambda: 1, lambda: 2], 2)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_runs_tasks, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("run_in_order hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == [0, 1, 4, 9]


def _child_runs_tasks(queue: Any) -> None:
    queue.put(run_in_order([lambda i=i: i * i for i in range(4)], 2))


# ---- one large tensor: its element-wise passes are split into chunks ----------------------


@pytest.mark.parametrize("n", [4 * 1000 + 3, 5 * 1001, 12_345])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_chunked_passes_of_one_tensor_change_nothing(
    monkeypatch: pytest.MonkeyPatch, n: int, threads: int
) -> None:
    """Chunks of ~1000 values (odd sizes, boundaries at multiples of 4): same bytes."""
    rng = np.random.default_rng(n)
    x = {"w": weight_like(rng, (n,))}
    policies = [Fixed(8), Fixed(20), EntropyAdaptive(), TargetRate(bits_per_param=1.0)]
    policies += [RelativeStep(alpha=0.5), RelativeStep(alpha=1.0, coder="huffman")]
    serial = [compress(x, p, threads=1) for p in policies]
    monkeypatch.setattr(parallel, "MIN_CHUNK", 1000)
    assert len(parallel.chunk_bounds(n, threads)) > 1
    for p, blob in zip(policies, serial, strict=True):
        assert compress(x, p, threads=threads) == blob, p
    nan = x["w"].copy()
    nan[-1] = np.nan  # in the last chunk
    with pytest.raises(ValueError, match="NaN"):
        compress({"w": nan}, Fixed(8), threads=threads)


def test_a_tensor_above_the_real_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "MIN_CHUNK", REAL_MIN_CHUNK)
    rng = np.random.default_rng(8)
    x = {"w": weight_like(rng, (2 * REAL_MIN_CHUNK + 13,))}
    assert len(parallel.chunk_bounds(x["w"].size, 3)) == 2
    for p in (EntropyAdaptive(), TargetRate(bits_per_param=0.5), Fixed(20)):
        assert compress(x, p, threads=3) == compress(x, p, threads=1)


def test_chunk_bounds() -> None:
    for n in (0, 1, 3, 4, 17, 4000, 10_001):
        for threads in (1, 2, 3, 7):
            b = parallel.chunk_bounds(n, threads, min_chunk=4)
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(lo % 4 == 0 for lo, _ in b)
            assert all(hi == lo2 for (_, hi), (lo2, _) in zip(b, b[1:], strict=False))
            assert len(b) <= threads


def test_every_numba_kernel_releases_the_gil() -> None:
    """Threads only run kernels side by side if each kernel releases the GIL."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import tenfold.codec

    kernels = []
    for info in pkgutil.iter_modules(tenfold.codec.__path__):
        module = importlib.import_module(f"tenfold.codec.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
                kernels.append((f"{info.name}.{name}", obj))
    assert len(kernels) > 20
    held = [name for name, k in kernels if not k.targetoptions.get("nogil")]
    assert not held, f"kernels that hold the GIL: {held}"


def test_parallel_docstring_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest

    monkeypatch.setattr(parallel, "MIN_CHUNK", REAL_MIN_CHUNK)

    assert doctest.testmod(parallel).failed == 0
