"""A DDP communication hook that sends tenfold-coded gradients: every rank applies the same bits.

:func:`compressed_allreduce_hook` with a :class:`CompressionState` codes each gradient
bucket (one flat tensor, its parameters in a canonical order) plus its error-feedback
residual, and runs it through the same protocol as the averagers
(:mod:`tenfold.distributed.protocol`, all-gather or reduce-scatter per bucket); this module
only keeps the buckets' bookkeeping: coding order, residuals across DDP's bucket rebuilds,
the step counter, the stats. Coding order, rebuilds, resume and what was measured:
docs/PROTOCOL.md ("The DDP hook").

Example (each rank, after ``torch.distributed.init_process_group``)::

    import tenfold
    from tenfold.distributed.hooks import CompressionState, compressed_allreduce_hook

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = CompressionState(tenfold.TargetRate(bits_per_param=1.0))
    ddp.register_comm_hook(state, compressed_allreduce_hook)
    for x, y in data:
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()      # gradients: coded, exchanged, averaged
        opt.step()                          # the same step on every rank
    state.stats.last_step.bits_per_param, state.stats.total.bytes_sent
    torch.save({"model": ..., "hook": state.state_dict()}, path)
"""

# No ``from __future__ import annotations`` here: DDP's ``register_comm_hook`` compares the
# hook's annotations with ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]``
# themselves, and string annotations fail that check.
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tenfold.codec import Policy
from tenfold.codec.policy import rms
from tenfold.distributed.collective import (
    DEFAULT_COLLECTIVE,
    check_collective,
    resolve_collective,
)
from tenfold.distributed.errors import (
    BucketMismatchError,
    CommunicationError,
    NonFiniteGradientsError,
    NonFiniteWeightsError,
    ReferenceMismatchError,
)
from tenfold.distributed.params import uses_scale
from tenfold.distributed.process_group import is_distributed, require_process_group
from tenfold.distributed.protocol import Outgoing, all_gather, reduce_scatter
from tenfold.distributed.sender import round_seed
from tenfold.distributed.transport import TorchTransport
from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "CompressionState",
    "HookStats",
    "StepCost",
    "compressed_allreduce_hook",
]

#: The name of the one tensor in each bucket's packet (short: it is in every packet).
_NAME = "g"

#: The seed's round for step s and bucket b is ``s * _ROUND_STRIDE + b``, so every
#: (step, bucket) pair draws its own sampling seed.
_ROUND_STRIDE = 1 << 32


@dataclass(frozen=True)
class StepCost:
    """What a number of hook calls cost this rank.

    Attributes:
        calls: hook calls counted (one per bucket per backward pass).
        bytes_sent: bytes of this rank's packets (what it contributes; the transport's
            per-rank 16-byte size exchange and the ring's forwarding of others' packets
            are not counted).
        bytes_received: bytes of the other ranks' packets.
        num_values: gradient values coded (parameters, once per call).
        bits_per_param: ``8 * bytes_sent / num_values`` (0 when nothing was coded).
        encode_seconds: wall time adding the residual, coding, decoding the own packet
            for the new residual (s).
        comm_seconds: wall time blocked on the network: the size exchange and waiting for
            packets the decoding did not overlap (s).
        decode_seconds: the rest: decoding and summing the K packets, dividing, writing
            the bucket (s).
    """

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    num_values: int = 0
    encode_seconds: float = 0.0
    comm_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def bits_per_param(self) -> float:
        """Bytes sent as bits per gradient value (0 when nothing was coded)."""
        return 8.0 * self.bytes_sent / self.num_values if self.num_values else 0.0

    def __add__(self, other: "StepCost") -> "StepCost":
        return StepCost(
            calls=self.calls + other.calls,
            bytes_sent=self.bytes_sent + other.bytes_sent,
            bytes_received=self.bytes_received + other.bytes_received,
            num_values=self.num_values + other.num_values,
            encode_seconds=self.encode_seconds + other.encode_seconds,
            comm_seconds=self.comm_seconds + other.comm_seconds,
            decode_seconds=self.decode_seconds + other.decode_seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, ``bits_per_param`` included."""
        return {
            "calls": self.calls,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "num_values": self.num_values,
            "bits_per_param": self.bits_per_param,
            "encode_seconds": self.encode_seconds,
            "comm_seconds": self.comm_seconds,
            "decode_seconds": self.decode_seconds,
        }


@dataclass(frozen=True)
class HookStats:
    """The hook's costs on this rank.

    Attributes:
        steps: completed backward passes (the hook saw their last bucket).
        total: every hook call since the state was created (not restored by
            :meth:`CompressionState.load_state_dict`: costs are per process).
        last_step: the hook calls of the last completed backward pass (all its buckets).
        current: the calls of the backward pass in progress (empty between passes).
    """

    steps: int
    total: StepCost
    last_step: StepCost
    current: StepCost

    @property
    def calls(self) -> int:
        """Hook calls, cumulative (``total.calls``)."""
        return self.total.calls

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the step count and the three :class:`StepCost` totals."""
        return {
            "steps": self.steps,
            "calls": self.calls,
            "total": self.total.as_dict(),
            "last_step": self.last_step.as_dict(),
            "current": self.current.as_dict(),
        }


@dataclass
class _Residual:
    """One bucket's residual: flat, in the coding order, with the parameters it covers."""

    params: tuple[int, ...]  # canonical index of each parameter, in coding order
    sizes: tuple[int, ...]  # numel of each parameter, in the same order
    values: np.ndarray  # 1-D, sum(sizes) values, in the wire dtype


@dataclass(frozen=True)
class _Layout:
    """How one bucket's parameters are laid out in its buffer and in its packet.

    ``params``/``sizes``/``starts`` are in coding order (ascending canonical index);
    ``starts`` are the parameters' offsets in the bucket buffer. ``identity``: the buffer is
    already in coding order (no gather/scatter copies).
    """

    params: tuple[int, ...]
    sizes: tuple[int, ...]
    starts: tuple[int, ...]
    identity: bool

    def gather(self, g: np.ndarray) -> np.ndarray:
        """The bucket's values in coding order (``g`` itself when already in order)."""
        if self.identity:
            return g
        return np.concatenate([g[s : s + n] for s, n in zip(self.starts, self.sizes, strict=True)])

    def scatter(self, x: np.ndarray, out: np.ndarray) -> None:
        """Write ``x`` (coding order) into ``out`` (bucket order)."""
        if self.identity:
            out[...] = x
            return
        pos = 0
        for s, n in zip(self.starts, self.sizes, strict=True):
            out[s : s + n] = x[pos : pos + n]
            pos += n

    def copy_into(self, x: np.ndarray, buffer: torch.Tensor) -> None:
        """Write ``x`` (coding order) into the bucket's ``buffer`` tensor (bucket order)."""
        if not self.identity:
            scattered = np.empty_like(x)
            self.scatter(x, scattered)
            x = scattered
        with torch.no_grad():
            if buffer.is_cuda:  # on a side stream, waited for: complete before the Future
                side = torch.cuda.Stream(buffer.device)
                with torch.cuda.stream(side):
                    buffer.copy_(torch.from_numpy(x).pin_memory(), non_blocking=True)
                side.synchronize()
            else:
                buffer.copy_(torch.from_numpy(x))


def _layout_tag(layout: _Layout, dtype: np.dtype, step: int) -> int:
    """CRC-32 of a bucket's layout and the step counter: ranks must agree on both."""
    crc = zlib.crc32(f"{dtype.str}{layout.params}{layout.sizes}".encode())
    return zlib.crc32(struct.pack("<Q", step), crc)


class CompressionState:
    """State of :func:`compressed_allreduce_hook`: policy, residuals, step counter, stats.

    Args:
        policy: a tenfold policy, the same on every rank (``tenfold.TargetRate(1.0)``,
            ``tenfold.RelativeStep(2.0)``, ``tenfold.Lossless()``, ...).
        process_group: the group to average over (None: the default group; DDP's own
            ``process_group`` must be the same).
        error_feedback: keep what each packet failed to carry and add it to the next
            step's gradient of the same bucket (lossy policies; Lossless has none).
        collective: ``"auto"`` (per bucket), ``"reduce-scatter"`` or ``"all-gather"``, as for
            :class:`~tenfold.distributed.averaging.CompressedAverager` (the bucket is one
            flat tensor, cut into P shards; each reducer keeps a second-stage residual for
            its shard of each bucket, dropped when DDP moves parameters between buckets).
        allow_single_process: without an initialised process group the first hook call
            raises :class:`~tenfold.distributed.errors.ProcessGroupError` (DDP needs one
            anyway; the check waits for the first call because Lightning builds the state
            before it starts the group); True skips that check. A group of one rank (or
            none, when allowed) returns each bucket unchanged, with no exchange.
        asynchronous: True (the default): each bucket is coded and exchanged on this
            state's worker thread (one, FIFO: buckets are reduced in DDP's order on every
            rank) and the hook returns a Future that thread completes, so backward and
            the other buckets proceed meanwhile (the codec's kernels release the GIL).
            False: the bucket is reduced inside the hook call and the Future returned is
            already complete. Same bits either way.

    Attributes:
        step: index of the backward pass in progress (advanced after each pass's last
            bucket); with the rank, it derives the policy's sampling seed. Part of
            :meth:`state_dict`.
        stats: :class:`HookStats` (read-only snapshot).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        process_group: dist.ProcessGroup | None = None,
        error_feedback: bool = True,
        collective: str = DEFAULT_COLLECTIVE,
        allow_single_process: bool = False,
        asynchronous: bool = True,
    ) -> None:
        self.collective = check_collective(collective)
        if not isinstance(error_feedback, bool):
            raise InputTypeError(f"error_feedback must be a bool, got {error_feedback!r}")
        if not isinstance(asynchronous, bool):
            raise InputTypeError(f"asynchronous must be a bool, got {asynchronous!r}")
        if not hasattr(policy, "get_config"):
            raise InputTypeError(f"policy must be a tenfold policy, got {policy!r}")
        self.policy = policy
        self.allow_single_process = allow_single_process
        self.asynchronous = asynchronous
        self._worker: _FifoWorker | None = None
        # the first communication error: later buckets fail at once instead of each
        # waiting for the timeout on a broken group
        self._broken: BaseException | None = None
        self._checked = False
        self.process_group = process_group
        self.error_feedback = error_feedback
        self.step = 0
        self._residuals: dict[int, _Residual] = {}
        # reduce-scatter: bucket index -> ((params, sizes, world), this rank's second-stage
        # residual of its shard, piece key -> values)
        self._residuals2: dict[int, tuple[tuple[Any, ...], dict[str, np.ndarray]]] = {}
        # Per-parameter residuals of dissolved buckets (canonical index -> values), waiting
        # for the bucket that holds the parameter in the new layout.
        self._loose: dict[int, np.ndarray] = {}
        # id(parameter) -> canonical index: the order the hook first saw the parameters in
        # (module docstring, "Coding order").
        self._canonical: dict[int, int] = {}
        self._steps_done = 0
        self._total = StepCost()
        self._last = StepCost()
        self._current = StepCost()

    # -- stats ---------------------------------------------------------------------------

    @property
    def stats(self) -> HookStats:
        """What the hook has cost so far: totals, the last full step, the step in progress."""
        return HookStats(
            steps=self._steps_done, total=self._total, last_step=self._last, current=self._current
        )

    def _record(self, cost: StepCost, last: bool) -> None:
        self._total = self._total + cost
        self._current = self._current + cost
        if last:
            self._last, self._current = self._current, StepCost()
            self._steps_done += 1

    # -- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The step counter and the residuals, as plain types and CPU tensors.

        ``{"step": int, "error_feedback": bool, "residual": {str(bucket index): 1-D float
        tensor}, "params": {str(bucket index): [canonical parameter index, ...]},
        "sizes": {str(bucket index): [numel, ...]}, "loose": {str(canonical index): 1-D
        tensor}, "collective": str, "residual2": {str(bucket index): {piece key: 1-D
        tensor}}, "residual2_layout": {str(bucket index): [params, sizes, world]}}``
        (``loose``: residuals dissolved by a bucket rebuild whose new bucket has not run
        yet; empty between backward passes; ``residual2``: reduce-scatter's second-stage
        residuals of this rank's shards). Loadable with
        ``torch.load(..., weights_only=True)``. Waits for the buckets in flight first.
        """
        self.wait()
        return {
            "step": self.step,
            "error_feedback": self.error_feedback,
            "residual": {
                str(i): torch.from_numpy(r.values.copy()) for i, r in self._residuals.items()
            },
            "params": {str(i): list(r.params) for i, r in self._residuals.items()},
            "sizes": {str(i): list(r.sizes) for i, r in self._residuals.items()},
            "loose": {str(k): torch.from_numpy(v.copy()) for k, v in self._loose.items()},
            "collective": self.collective,
            "residual2": {
                str(i): {k: torch.from_numpy(v.copy()) for k, v in r.items()}
                for i, (_, r) in self._residuals2.items()
            },
            "residual2_layout": {
                str(i): [list(key[0]), list(key[1]), key[2]]
                for i, (key, _) in self._residuals2.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the stats are not part of it).

        Raises:
            tenfold.ConfigError: a residual's length does not match its layout.
        """
        self.wait()
        restored: dict[int, _Residual] = {}
        for key, tensor in (state.get("residual") or {}).items():
            values = _flat_array(tensor)
            params = tuple(int(p) for p in state["params"][key])
            sizes = tuple(int(n) for n in state["sizes"][key])
            if len(params) != len(sizes) or sum(sizes) != values.size:
                raise ConfigError(
                    f"hook state: bucket {key} residual has {values.size} values, its "
                    f"layout {sum(sizes)} in {len(sizes)} parameters ({len(params)} indices)"
                )
            restored[int(key)] = _Residual(params, sizes, values)
        second: dict[int, tuple[tuple[Any, ...], dict[str, np.ndarray]]] = {}
        layouts = state.get("residual2_layout") or {}
        for key, values in (state.get("residual2") or {}).items():
            params, sizes, world = layouts[key]
            second[int(key)] = (
                (tuple(int(p) for p in params), tuple(int(n) for n in sizes), int(world)),
                {k: _flat_array(v) for k, v in values.items()},
            )
        self.step = int(state["step"])
        self._residuals = restored
        self._residuals2 = second
        self._loose = {int(k): _flat_array(v) for k, v in (state.get("loose") or {}).items()}

    # -- the worker thread ---------------------------------------------------------------

    def wait(self) -> None:
        """Block until every bucket handed to the worker thread is done (no-op otherwise)."""
        if self._worker is not None:
            self._worker.drain()

    def close(self) -> None:
        """Finish the buckets in flight and stop the worker thread (it is a daemon thread:
        a process that exits without calling this does not hang). A later hook call
        starts a new one."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _submit(
        self, job: Callable[[], torch.Tensor], fut: "torch.futures.Future[torch.Tensor]"
    ) -> None:
        if self._worker is None:
            self._worker = _FifoWorker(f"tenfold-hook-{id(self):x}")
        self._worker.submit(job, fut)

    # -- coding order and error feedback ---------------------------------------------------

    def _layout(self, params: Sequence[torch.Tensor], total: int) -> _Layout:
        """The bucket's coding order: its parameters by canonical index."""
        for p in params:  # first sight: the next index (DDP runs buckets in index order)
            self._canonical.setdefault(id(p), len(self._canonical))
        sizes = [int(p.numel()) for p in params]
        if sum(sizes) != total:  # pragma: no cover - DDP's own invariant
            raise ConfigError(f"bucket holds {total} values, its parameters {sum(sizes)}")
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        canon = [self._canonical[id(p)] for p in params]
        order = sorted(range(len(params)), key=canon.__getitem__)
        return _Layout(
            params=tuple(canon[i] for i in order),
            sizes=tuple(sizes[i] for i in order),
            starts=tuple(int(starts[i]) for i in order),
            identity=order == list(range(len(params))),
        )

    def _residual_for(self, index: int, layout: _Layout, dtype: np.dtype) -> np.ndarray | None:
        """The residual for this bucket's layout, or None if there is none (zeros).

        A stored residual of another layout (DDP rebuilt its buckets) dissolves every
        stored bucket into per-parameter pieces; each bucket then reassembles its own
        from them, so each parameter's residual lives in exactly one place throughout.
        """
        entry = self._residuals.get(index)
        if entry is not None:
            same = (entry.params, entry.sizes) == (layout.params, layout.sizes)
            if same and entry.values.dtype == dtype:
                return entry.values
            self._dissolve()
        if not self._loose:
            return None
        pieces = [self._loose.pop(p, None) for p in layout.params]
        if all(p is None for p in pieces):
            return None
        return np.concatenate(
            [
                np.zeros(n, dtype) if p is None else p.astype(dtype, copy=False)
                for p, n in zip(pieces, layout.sizes, strict=True)
            ]
        )

    def _dissolve(self) -> None:
        for entry in self._residuals.values():
            offsets = np.cumsum((0, *entry.sizes)).tolist()
            for k, lo, hi in zip(entry.params, offsets[:-1], offsets[1:], strict=True):
                self._loose[k] = entry.values[lo:hi]
        self._residuals.clear()

    # -- one bucket --------------------------------------------------------------------------

    def _prepare(self, bucket: dist.GradBucket) -> Callable[[], torch.Tensor]:
        """In the hook's own thread: check the group, take what the bucket is (its buffer,
        index, coding order) and its step; returns the work that reduces it."""
        if not self._checked:
            require_process_group(self.process_group, self.allow_single_process, "CompressionState")
            self._checked = True
        buffer, index, last, step = bucket.buffer(), bucket.index(), bucket.is_last(), self.step
        layout = self._layout(bucket.parameters(), buffer.numel())
        if self.asynchronous and last:
            self.step += 1  # the next backward's buckets may be handed over before this runs
        return lambda: self._run(buffer, index, last, step, layout)

    def _run(
        self, buffer: torch.Tensor, index: int, last: bool, step: int, layout: "_Layout"
    ) -> torch.Tensor:
        """One bucket: its coded gradient through the protocol, the mean written back."""
        if self._broken is not None:
            raise CommunicationError(
                f"DDP bucket {index} not reduced: an earlier bucket failed ({self._broken})"
            )
        try:
            return self._reduce(buffer, index, last, step, layout)
        except CommunicationError as exc:
            self._broken = exc
            raise
        finally:
            if last and not self.asynchronous:
                self.step += 1

    def _reduce(
        self, buffer: torch.Tensor, index: int, last: bool, step: int, layout: "_Layout"
    ) -> torch.Tensor:
        wire = torch.float64 if buffer.dtype == torch.float64 else torch.float32
        feedback = self.error_feedback and not self.policy.lossless
        if not is_distributed(self.process_group):
            return self._alone(buffer, index, last, layout, feedback)
        transport = TorchTransport(self.process_group)
        rank, world = transport.rank, transport.world_size

        t0 = time.perf_counter()
        # A CPU view when possible (gloo, float32): no copy; CUDA/half buffers are copied.
        g = layout.gather(_to_host(buffer, wire))
        residual = self._residual_for(index, layout, g.dtype) if feedback else None
        x = g if residual is None else np.add(g, residual)
        # "auto" per bucket (the same bucket sizes on every rank: the same answer)
        collective = resolve_collective(self.collective, x.size, world)
        key = (layout.params, layout.sizes, world)
        second = self._residuals2.get(index)
        round_ = step * _ROUND_STRIDE + index
        send = Outgoing(
            {_NAME: x},
            self.policy,
            seed=round_seed(self.policy, rank=rank, round=round_),
            recode_seed=round_seed(self.policy, rank=world + rank, round=round_),
            # the step's unit is the fresh gradient's RMS, not that of g + e
            scale={_NAME: rms(g) if g.size else 0.0} if uses_scale(self.policy) else None,
            tag=_layout_tag(layout, g.dtype, step),
            keep_own=feedback,
            residual2=second[1] if feedback and second and second[0] == key else None,
            recode_feedback=feedback,
        )
        named = [(_NAME, torch.empty(x.shape, dtype=wire, device="meta"))]
        sync = all_gather if collective == "all-gather" else reduce_scatter
        t_prep = time.perf_counter() - t0
        try:
            result = sync(transport, send, named, round=round_)
        except NonFiniteWeightsError as exc:
            raise NonFiniteGradientsError(
                exc.statuses, index, local=bool(exc.local_tensors)
            ) from None
        except ReferenceMismatchError as exc:
            raise BucketMismatchError(
                f"DDP bucket {index} at step {step}: the ranks disagree on its layout or on "
                "the step counter (rank(s) "
                f"{', '.join(map(str, exc.ranks))} differ): every "
                "rank must resume from the same checkpoint and bucket the model the same way"
            ) from None
        assert result.mean is not None
        layout.copy_into(result.mean[_NAME].reshape(-1), buffer)
        # only once the step went through (not on an error above)
        if result.own is not None:
            kept = np.subtract(x, result.own[_NAME].reshape(-1))
            self._residuals[index] = _Residual(layout.params, layout.sizes, kept)
        if result.recoded is not None:
            y, decoded = result.recoded
            self._residuals2[index] = (key, {k: np.subtract(v, decoded[k]) for k, v in y.items()})
        stats = result.stats
        own = int(stats.packet_bytes[rank])
        ring = collective == "all-gather"  # counted as this rank's packet, not the ring's
        self._record(
            StepCost(
                calls=1,
                bytes_sent=own if ring else stats.bytes_sent,
                bytes_received=sum(stats.packet_bytes) - own if ring else stats.bytes_received,
                num_values=int(g.size),
                encode_seconds=t_prep + stats.encode_seconds,
                comm_seconds=stats.comm_seconds,
                decode_seconds=stats.decode_seconds,
            ),
            last,
        )
        return buffer

    def _alone(
        self, buffer: torch.Tensor, index: int, last: bool, layout: "_Layout", feedback: bool
    ) -> torch.Tensor:
        """A group of one rank: the bucket is the mean already. A residual carried over
        (restored from a run with more ranks) is added in and dropped: the exact sum
        carries everything the earlier packets failed to."""
        wire = torch.float64 if buffer.dtype == torch.float64 else torch.float32
        residual = None
        if feedback:
            residual = self._residual_for(index, layout, np.dtype(str(wire).split(".")[-1]))
        if residual is not None:
            g = layout.gather(_to_host(buffer, wire))
            layout.copy_into(np.add(g, residual), buffer)
            self._residuals.pop(index, None)
        self._residuals2.pop(index, None)
        self._record(StepCost(calls=1, num_values=int(buffer.numel())), last)
        return buffer


class _FifoWorker:
    """One daemon thread running jobs in the order they were submitted; each job's result
    (or exception) completes its Future."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, fut = item
            try:
                result = job()
            except BaseException as exc:  # handed to the waiting thread (DDP raises it)
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def submit(self, job: Callable[[], Any], fut: "torch.futures.Future[Any]") -> None:
        """Run ``job`` after every job submitted before it; ``fut`` gets its outcome."""
        self._queue.put((job, fut))

    def drain(self) -> None:
        """Block until every job submitted so far has run."""
        if threading.current_thread() is self._thread:
            return
        done = threading.Event()
        self._queue.put((lambda: done.set(), torch.futures.Future()))
        done.wait()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()


def _to_host(buffer: torch.Tensor, wire: torch.dtype) -> np.ndarray:
    """The bucket as a flat CPU array in the wire dtype: a view for a CPU float32 buffer.

    A CUDA buffer is copied on a side stream that first waits for the work queued so far
    on the current stream (the gradients), so the copy never blocks other streams; the
    host then waits for that copy only.
    """
    if buffer.is_cuda:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(buffer.device))
        side = torch.cuda.Stream(buffer.device)
        with torch.cuda.stream(side):
            side.wait_event(ready)
            host = buffer.detach().to("cpu", wire, non_blocking=True)
        side.synchronize()
        return host.contiguous().numpy().reshape(-1)
    return buffer.detach().to("cpu", wire).contiguous().numpy().reshape(-1)


def _flat_array(value: Any) -> np.ndarray:
    """A 1-D numpy copy of a tensor or array (from a state dict)."""
    arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return np.ascontiguousarray(arr).reshape(-1).copy()


def compressed_allreduce_hook(
    state: CompressionState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the rank-order mean of every rank's coded bucket gradient.

    Register with ``ddp_model.register_comm_hook(state, compressed_allreduce_hook)``.
    Returns a Future of ``bucket.buffer()``, which then holds the mean gradient (same
    shape and dtype as the bucket, bit-identical on every rank). With
    ``CompressionState(asynchronous=True)`` (the default) the state's worker thread
    completes it while backward goes on; otherwise it is complete on return.

    Raises (from ``loss.backward()``: DDP waits on the Future there):
        ProcessGroupError: the first call, without a process group (see
            ``allow_single_process``).
        NonFiniteGradientsError: on every rank, if any rank's bucket holds NaN/Inf.
        BucketMismatchError: on every rank, if the ranks disagree on the bucket's layout
            or the step counter.
        tenfold.distributed.CommunicationError: a peer died or the group's timeout expired.
    """
    job = state._prepare(bucket)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    if not state.asynchronous:
        fut.set_result(job())
        return fut
    state._submit(job, fut)  # the worker sets the result, or the exception
    # DDP reads a failed Python Future's exception as a value ("Unable to cast ... to
    # Tensor"); through a callback it raises "...: NonFiniteGradientsError: <message>"
    return fut.then(_bucket_value)


def _bucket_value(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
    return fut.value()  # re-raises the worker's exception, with its type and message


#: read by benchmark harnesses: the hook runs behind backward by default
compressed_allreduce_hook.asynchronous = True  # type: ignore[attr-defined]
