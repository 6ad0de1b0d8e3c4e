"""Threads for the codec: the ``threads=`` setting and an ordered, deterministic map.

The codec parallelises over *records* (one per tensor): each tensor's policy decision,
quantization and entropy coding (or its decoding) is independent of every other tensor's,
and its numba kernels release the GIL (``nogil=True``), so threads run them on several
cores at once. Results are assembled in packet order, so the bytes (and the decoded or
accumulated values) never depend on the thread count:

* a tensor's sampling seed depends on its position in the packet only
  (:func:`tenfold.codec.quantize.sample_seed`), never on how many tensors were coded
  before it, so no random state is shared between tensors;
* nothing else is shared: policies are frozen, kernels write only their own outputs.

Threads the tensors leave idle (fewer tensors than threads) split each tensor's
element-wise passes - its range, quantization and per-stream histograms - into chunks
(:func:`chunk_bounds`; exact: min/max and integer counts do not depend on the split). The
rest of a tensor runs in one thread: the policy's decision (a sample, small), and the
entropy coder and decoder, whose four Huffman streams / ANS lanes are interleaved in one
kernel for instruction-level parallelism. So one huge tensor gains only on its
element-wise share (about half of ``compress``; nothing on ``decompress`` and
``accumulate``); coding its four streams or lanes on four threads would need per-stream
kernels (the format allows it: the streams are independent), not a format change.

The threads are kept between calls: starting and joining them for every pass cost a tenth
of a 2-thread ``compress``'s speed-up. A call runs tasks in the calling thread and in up to
``threads - 1`` helper jobs on a kept pool, one per nesting depth (a task running on a
pool thread that itself runs tasks uses the next depth's pool, so a pool thread never
waits on its own pool), as large as the most helpers any call there asked for. The
calling thread takes tasks too and, once none are left, withdraws its helpers that have
not started (another call may be holding the pool's threads): a call never waits for a
thread to free up. A forked child starts pools of its own.

``threads=1`` runs the tasks one after the other in the calling thread, exactly as before
threads existed. Errors are those of the serial path: the first failing task *in packet
order* raises, as it would have serially (a later task's failure is only seen when every
earlier one succeeded).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from tenfold.errors import ConfigError

__all__ = [
    "MIN_CHUNK",
    "available_cores",
    "chunk_bounds",
    "resolve_threads",
    "run_in_order",
    "useful_threads",
]

#: the work one thread is given at least (values): a tensor's element-wise passes are split
#: into chunks of about this many or more, and a packet uses one thread per this many
#: values at most. Below it, starting and waking threads (tens of microseconds on an idle
#: machine, milliseconds on a loaded one) costs more than it saves: the paper's model
#: (318k values) is accumulated in about 2 ms, and took twice that with two threads on a
#: loaded 2-core machine.
MIN_CHUNK = 1 << 18

T = TypeVar("T")


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (what ``taskset``, cgroups'
    cpusets and torchrun's ``--local-ranks-filter``-style pinning leave it), else
    ``os.cpu_count()``, else 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """``threads`` checked: None means :func:`available_cores`; otherwise an int >= 1.

    Raises:
        ValueError: anything else (bools, floats, 0, negatives), saying what is allowed.

    Example:
        >>> resolve_threads(3)
        3
        >>> resolve_threads(None) >= 1
        True
    """
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"threads must be None (all available cores) or an int >= 1, got {threads!r}"
        )
    return threads


def useful_threads(threads: int, values: int) -> int:
    """``threads``, but at most one per :data:`MIN_CHUNK` values of work (at least 1).

    Example:
        >>> useful_threads(8, 10_000_000), useful_threads(8, 300_000), useful_threads(8, 10)
        (8, 1, 1)
    """
    return max(1, min(threads, values // MIN_CHUNK))


def run_in_order(
    tasks: Sequence[Callable[[], T]],
    threads: int,
    weights: Sequence[int] | None = None,
) -> list[T]:
    """Run ``tasks`` on up to ``threads`` threads; their results, in the tasks' order.

    Args:
        tasks: zero-argument callables, independent of each other.
        threads: the most threads to use (already resolved, >= 1). With 1, or a single
            task, the tasks run in the calling thread, in order.
        weights: an estimate of each task's cost (e.g. its value count). The heaviest are
            started first (longest processing time first), so one big tensor submitted last
            does not leave the other threads idle at the end; results keep the tasks' order.

    Raises:
        The exception of the first task, in the tasks' order, that raised (an interrupt,
        such as ``KeyboardInterrupt``, before any other). Tasks after it in that order
        are then not started; running ones are waited for.
    """
    workers = min(threads, len(tasks))
    if workers <= 1:
        return [task() for task in tasks]
    order = list(range(len(tasks)))
    if weights is not None:
        order = sorted(order, key=lambda i: -weights[i])  # stable: ties keep packet order
    results: list[Any] = [None] * len(tasks)
    errors: dict[int, BaseException] = {}
    feed = iter(order)
    lock = threading.Lock()
    # the lowest index that failed: tasks after it are not started (serially they never
    # would be), tasks before it all run, so the error raised is the serial path's. An
    # interrupt (KeyboardInterrupt, SystemExit) sets it to -1: nothing more starts.
    first_failure = [len(tasks)]

    def work() -> None:
        while True:
            with lock:
                i = next(feed, None)
                if i is None:
                    return
                if i > first_failure[0]:
                    continue
            try:
                results[i] = tasks[i]()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                with lock:
                    errors[i] = exc
                    stop = i if isinstance(exc, Exception) else -1
                    first_failure[0] = min(first_failure[0], stop)

    # One job per extra thread, each taking the next task as it frees up (longest first),
    # and the calling thread works too: a submission per task cost more than the
    # GIL-bound share of a small tensor's work.
    pool = _pool(workers - 1)
    helpers = [pool.submit(work) for _ in range(workers - 1)]
    try:
        work()
    except BaseException:  # an interrupt outside a task: stop the helpers too
        with lock:
            first_failure[0] = -1
        raise
    finally:
        # a helper not started yet (the pool's threads are busy elsewhere) is withdrawn;
        # only running ones are waited for (a withdrawn future counts as done only once
        # a pool thread dequeues it, so it is left out of the wait)
        wait([helper for helper in helpers if not helper.cancel()])
    if errors:
        interrupts = [i for i, exc in errors.items() if not isinstance(exc, Exception)]
        raise errors[min(interrupts or errors)]
    return results


#: the kept pools by nesting depth (see the module docstring)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_DEPTH = threading.local()


def _enter_depth(depth: int) -> None:
    _DEPTH.value = depth


def _pool(helpers: int) -> ThreadPoolExecutor:
    """The kept pool of this thread's depth, with room for ``helpers`` jobs at once: a
    pool too small is replaced by one of that size (the old one's threads end when their
    jobs do), so a depth holds at most as many threads as the largest call asked for."""
    depth = getattr(_DEPTH, "value", 0)
    with _POOLS_LOCK:
        pool = _POOLS.get(depth)
        if pool is None or pool._max_workers < helpers:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(
                max_workers=helpers,
                thread_name_prefix=f"tenfold-codec-{depth}",
                initializer=_enter_depth,
                initargs=(depth + 1,),
            )
            _POOLS[depth] = pool
    return pool


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist here (their pools would
    take tasks no thread runs), and the lock may have been held at the fork."""
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()
    _POOLS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools)


def chunk_bounds(n: int, threads: int, min_chunk: int | None = None) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``min(threads, n // min_chunk)`` contiguous chunks (at least
    one; ``min_chunk`` defaults to :data:`MIN_CHUNK`), every boundary a multiple of 4;
    the chunks are equal but for the last, which takes the remainder.

    Multiples of 4 because value ``j`` of a tensor belongs to Huffman stream / ANS lane
    ``j % 4``: a chunk starting at a multiple of 4 sees its values in the same rows of the
    per-stream histogram as the whole tensor would, so per-chunk histograms add up exactly.

    Example:
        >>> chunk_bounds(10, 3, min_chunk=4)
        [(0, 4), (4, 10)]
        >>> chunk_bounds(10, 1)
        [(0, 10)]
    """
    least = MIN_CHUNK if min_chunk is None else min_chunk  # read now: tests lower it
    count = max(1, min(threads, n // max(1, least)))
    step = max(4, (n // count) & ~3)  # a multiple of 4; the last chunk takes the rest
    count = min(count, max(1, n // step))
    bounds = [(c * step, (c + 1) * step) for c in range(count - 1)]
    bounds.append(((count - 1) * step, n))
    return bounds
