"""The pipelined all-gather (``protocol.all_gather``) on 2 real gloo ranks: several chunks'
exchanges are in flight at once, shown by the order of events (never by timing), and a
failure found at a later chunk (NaN/Inf, a corrupt packet) is raised on every rank with
the group left usable: every posted exchange was drained alike on both ranks, so the next
sync reads no stale message.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_tensors

import tenfold
from tenfold.codec.errors import CorruptPacketError, PacketMismatchError
from tenfold.distributed import CompressedAverager
from tenfold.distributed import transport as transport_module
from tenfold.distributed.errors import NonFiniteWeightsError
from tenfold.distributed.protocol.chunks import chunk_plan

# the module (the package exports a function of the same name)
ag_module = importlib.import_module("tenfold.distributed.protocol.all_gather")

WORLD = 2
CHUNK = 1000  # values per chunk: the model below makes 10 chunks


def start(rank: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(40 + rank)
    return [
        ("a.weight", torch.randn(40, 100, generator=g) * 0.1),  # 4 chunks
        ("a.bias", torch.randn(40, generator=g) * 0.01),
        ("b.weight", torch.randn(30, 100, generator=g) * 0.2),
        ("c.weight", torch.randn(20, 100, generator=g) * 0.1),
    ]


def n_chunks() -> int:
    return len(chunk_plan([(n, t.numel()) for n, t in start(0)], CHUNK))


def averager(**kw: Any) -> CompressedAverager:
    return CompressedAverager(
        kw.pop("policy", tenfold.TargetRate(bits_per_param=1.0)), threads=1,
        collective="all-gather", chunk_values=CHUNK, **kw,
    )  # fmt: skip


#: how long chunk 0's decoding waits for the later chunks' exchanges (s); only a protocol
#: that exchanges one chunk after another waits this long
DEADLINE = 20.0


class _Events:
    """What one rank's sync sent, waited for and decoded, in order; chunk 0's decoding
    holds back (its steps only let the protocol send what is coded) until chunk AHEAD
    was sent."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.met: bool | None = None
        self._sent_ahead = threading.Event()

    def add(self, kind: str, who: int) -> None:
        self.log.append((kind, who))  # list.append is atomic under the GIL
        if kind == "sent" and who == ag_module.AHEAD:
            self._sent_ahead.set()

    def install(self) -> None:
        cs, tt = transport_module.ChunkStream, transport_module.TorchTransport
        feed = ag_module.RankOrderFeed
        real = (cs.send, cs.wait, tt.all_gather, feed.step, feed.finish)
        deadline = [0.0]

        def send(stream: Any, *args: Any, **kwargs: Any) -> None:
            real[0](stream, *args, **kwargs)
            self.add("sent", stream.sent)  # the stream carries chunks 1..n-1

        def wait(stream: Any, index: int) -> Any:
            self.add("waited", index + 1)
            return real[1](stream, index)

        def all_gather(t: Any, *args: Any, **kwargs: Any) -> Any:
            self.add("sent", 0)  # chunk 0: the all-gather collective
            return real[2](t, *args, **kwargs)

        def step(f: Any) -> bool:
            if self.met is None:  # chunk 0: let the protocol send, decode nothing yet
                if not deadline[0]:
                    deadline[0] = time.monotonic() + DEADLINE
                if not self._sent_ahead.is_set() and time.monotonic() < deadline[0]:
                    time.sleep(0.001)
                    return True
                self.met = self._sent_ahead.is_set()
            return bool(real[3](f))

        def finish(f: Any) -> Any:
            if self.met is None:
                self.met = self._sent_ahead.is_set()
            self.add("decoded", sum(1 for k, _ in self.log if k == "decoded"))
            return real[4](f)

        cs.send, cs.wait, tt.all_gather = send, wait, all_gather  # type: ignore[method-assign]
        feed.step, feed.finish = step, finish  # type: ignore[method-assign]
        self._restore = real

    def uninstall(self) -> None:
        cs, tt = transport_module.ChunkStream, transport_module.TorchTransport
        feed = ag_module.RankOrderFeed
        cs.send, cs.wait, tt.all_gather, feed.step, feed.finish = self._restore  # type: ignore[method-assign]


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=20)
    out_dir = Path(out)
    results: dict[str, Any] = {}
    try:
        # 1. one delta-mode sync of 10 chunks, instrumented
        avg = averager()
        named = start(rank)
        avg.initialize(named)
        with torch.no_grad():
            for _, t in named:
                t.add_(torch.randn(t.shape, generator=torch.Generator().manual_seed(rank)) * 0.01)
        events = _Events()
        events.install()
        try:
            stats = avg.average(named)
        finally:
            events.uninstall()
        save_tensors(out_dir, f"synced-r{rank}", named)
        results["log"] = events.log
        results["met"] = events.met
        results["chunks"] = stats.chunks

        # 2. NaN in a later chunk that only the codec finds (the up-front check is
        # skipped on rank 1): every rank raises at that chunk, the group survives
        nan = start(rank)
        if rank == 1:
            with torch.no_grad():
                dict(nan)["c.weight"].view(-1)[5] = float("nan")
            real_nonfinite = ag_module.nonfinite_arrays
            calls = [0]

            def late_check(arrays: Any) -> Any:
                calls[0] += 1
                return [] if calls[0] == 1 else real_nonfinite(arrays)

            ag_module.nonfinite_arrays = late_check
        try:
            averager(policy=tenfold.Fixed(8), transmit="weights").average(nan)
            results["nan"] = "no error"
        except NonFiniteWeightsError as exc:
            results["nan"] = f"{exc} ranks={sorted(exc.statuses)}"
        finally:
            if rank == 1:
                ag_module.nonfinite_arrays = real_nonfinite
        ok = start(rank)
        averager(policy=tenfold.Fixed(4), transmit="weights").average(ok)
        save_tensors(out_dir, f"after-nan-r{rank}", ok)

        # 3. rank 1's packet of chunk 5 is cut short: every rank fails to decode it
        real_encode = ag_module.encode_chunk

        def cut(send: Any, chunk: Any, index: int, threads: Any) -> Any:
            coded = real_encode(send, chunk, index, threads)
            if index == 5:
                coded.blob = coded.blob[: len(coded.blob) // 2]
            return coded

        if rank == 1:
            ag_module.encode_chunk = cut
        try:
            averager(policy=tenfold.Fixed(8), transmit="weights").average(start(rank))
            results["corrupt"] = "no error"
        except (CorruptPacketError, PacketMismatchError) as exc:
            results["corrupt"] = f"{type(exc).__name__}: {exc}"
        finally:
            ag_module.encode_chunk = real_encode
        ok = start(rank)
        averager(policy=tenfold.Fixed(4), transmit="weights").average(ok)
        save_tensors(out_dir, f"after-corrupt-r{rank}", ok)
    except BaseException:
        results["error"] = traceback.format_exc()  # for the assertion messages
    finally:
        (out_dir / f"r{rank}.json").write_text(json.dumps(results))
        os._exit(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ag_pipeline")
    ctx = mp.start_processes(
        _job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(timeout=120)
    assert [p.exitcode for p in ctx.processes] == [0] * WORLD
    return out


def _results(run: Path, rank: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((run / f"r{rank}.json").read_text())
    return out


def _at(log: list[list[Any]], kind: str, who: int) -> int:
    return next(i for i, (k, w) in enumerate(log) if k == kind and w == who)


def test_several_chunks_are_in_flight_before_the_first_is_decoded(run: Path) -> None:
    n = n_chunks()
    ahead = ag_module.AHEAD
    for rank in range(WORLD):
        got = _results(run, rank)
        assert got["chunks"] == n == 10
        log = got["log"]
        # while chunk 0 was decoded, chunks 1..AHEAD were coded and sent (a protocol that
        # exchanges one chunk after another never gets there: it waits out the deadline)
        assert got["met"] is True, (rank, log)
        first_decoded = _at(log, "decoded", 0)
        for c in range(ahead + 1):
            assert _at(log, "sent", c) < first_decoded, (rank, log)
        # ... and no further (memory): chunk c only once chunk c - AHEAD - 1 is done
        for c in range(ahead + 1, n):
            assert _at(log, "sent", c) > _at(log, "decoded", c - ahead - 1), (rank, log)
        # each chunk waited for (and decoded) in order, at its turn
        assert [w for k, w in log if k == "waited"] == list(range(1, n))
        assert [w for k, w in log if k == "decoded"] == list(range(n))


def test_the_ranks_send_the_chunks_in_the_same_order(run: Path) -> None:
    orders = [[w for k, w in _results(run, r)["log"] if k == "sent"] for r in range(WORLD)]
    assert orders[0] == orders[1] == list(range(n_chunks()))


def test_the_ranks_end_bit_identical(run: Path) -> None:
    a, b = (load_arrays(run, f"synced-r{r}") for r in range(WORLD))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("stage", ["after-nan", "after-corrupt"])
def test_a_failure_at_a_later_chunk_leaves_the_group_usable(run: Path, stage: str) -> None:
    a, b = (load_arrays(run, f"{stage}-r{r}") for r in range(WORLD))
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


def test_a_nan_only_the_codec_finds_fails_every_rank(run: Path) -> None:
    for rank in range(WORLD):
        got = _results(run, rank)["nan"]
        assert "ranks=[1]" in got, (rank, got)
    assert "c.weight" in _results(run, 1)["nan"]


def test_a_corrupt_packet_in_a_later_chunk_fails_every_rank(run: Path) -> None:
    for rank in range(WORLD):
        got = _results(run, rank)["corrupt"]
        assert got != "no error" and "rank 1" in got, (rank, got)
