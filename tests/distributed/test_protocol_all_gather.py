"""The all-gather's coding thread (``protocol.all_gather._Coder``): chunks come back in
order, whatever the interleaving of the coder and the consumer."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import pytest

import tenfold
from tenfold.distributed.protocol.all_gather import Coded
from tenfold.distributed.protocol.chunks import chunk_plan
from tenfold.distributed.protocol.steps import Outgoing

# the module (the package exports a function of the same name)
all_gather = importlib.import_module("tenfold.distributed.protocol.all_gather")


def test_the_consumer_may_take_a_chunk_before_the_coder_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer asks for chunk i+1 right after chunk i, often before the coding thread
    woke up to code it (a race once killed the coder with an assertion and left the sync
    waiting forever: seen at 10 Gbit/s, where the wire is never the wait)."""

    def fake_encode(send: Any, chunk: Any, index: int, threads: Any) -> Coded:
        return Coded({}, bytes([index]), None, 0.0, 0.0)

    monkeypatch.setattr(all_gather, "encode_chunk", fake_encode)
    plan = chunk_plan([(f"t{i}", 10) for i in range(6)], 10)
    send = Outgoing(arrays={}, policy=tenfold.TargetRate(1.0))
    for _ in range(300):
        coder = all_gather._Coder(send, plan, 1)
        got: list[bytes] = []

        def consume(c: Any = coder, out: list[bytes] = got) -> None:
            out.extend(c.get(i).blob for i in range(len(plan)))

        consumer = threading.Thread(target=consume)
        consumer.start()
        consumer.join(timeout=10)
        assert not consumer.is_alive(), "the consumer waited forever for a chunk"
        coder.close()
        assert got == [bytes([i]) for i in range(len(plan))]


def test_a_failing_chunk_reaches_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while coding (e.g. NaN in a later chunk) is raised by ``get``, not lost
    in the thread."""

    def failing(send: Any, chunk: Any, index: int, threads: Any) -> Coded:
        if index == 1:
            raise ValueError("chunk 1 cannot be coded")
        return Coded({}, b"", None, 0.0, 0.0)

    monkeypatch.setattr(all_gather, "encode_chunk", failing)
    plan = chunk_plan([("a", 10), ("b", 10)], 10)
    coder = all_gather._Coder(Outgoing(arrays={}, policy=tenfold.Fixed(8)), plan, 1)
    coder.get(0)
    with pytest.raises(ValueError, match="chunk 1"):
        coder.get(1)
    coder.close()
