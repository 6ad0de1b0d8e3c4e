"""exchange.py between 3 real ranks (spawn, gloo, file rendezvous): sizes, then P2P payloads."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from gloo_group import join_gloo

import tenfold.distributed
from tenfold.distributed import CommunicationError, PeerStatusError, all_gather_bytes
from tenfold.distributed.transport import (
    STATUS_NONFINITE,
    PacketTransfer,
    exchange_sizes,
    receive_order,
)


def payload(rank: int) -> bytes:
    # sizes 0, 1000 and 3 bytes: empty, largest in the middle, and not a multiple of 8
    return [b"", bytes(range(250)) * 4, b"\x00\xffz"][rank]


def _job(rank: int, world: int, rdzv: str, out: str) -> None:
    join_gloo(rank, world, rdzv)
    res: dict[str, object] = {}
    try:
        got = all_gather_bytes(payload(rank))
        res["payloads"] = [bytes(p).hex() for p in got.payloads]
        res["sizes"] = list(got.sizes)
        res["writable"] = any(p.flags.writeable for p in got.payloads)
        empty = all_gather_bytes(b"")
        res["empty"] = [len(p) for p in empty.payloads]
        try:
            all_gather_bytes(b"x", status=STATUS_NONFINITE if rank == 2 else 0)
            res["status"] = "no error"
        except PeerStatusError as exc:
            res["status"] = str(exc)
            res["statuses"] = {str(k): v for k, v in exc.statuses.items()}
        # and the group is still usable afterwards
        res["after"] = bytes(all_gather_bytes(b"ok%d" % rank).payloads[2]).decode()
        # PacketTransfer directly: arrival order, and a consumer that gives up early
        big = bytes([rank]) * (200_000 + rank)
        sizes = exchange_sizes(len(big))
        with PacketTransfer(big, sizes) as transfer:
            res["order"] = [peer for peer, _ in transfer]
        try:
            with PacketTransfer(big, exchange_sizes(len(big))) as transfer:
                peer, got = transfer.get()
                res["first"] = [peer, len(got), int(got[0])]
                raise KeyError("consumer failed")
        except KeyError as exc:
            res["consumer_error"] = str(exc)
        # the exit completed the exchange for everyone: the next one works
        res["after_consumer_error"] = [len(p) for p in all_gather_bytes(big).payloads]
    finally:
        Path(out, f"r{rank}.json").write_text(json.dumps(res))
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("exchange")
    mp.spawn(_job, args=(3, str(out / "rdzv"), str(out)), nprocs=3, join=True)
    return [json.loads((out / f"r{r}.json").read_text()) for r in range(3)]


def test_every_rank_gets_every_payload_in_rank_order(results: list[dict]) -> None:
    for res in results:
        assert res["payloads"] == [payload(r).hex() for r in range(3)]
        assert res["sizes"] == [0, 1000, 3]
        assert res["writable"] is False  # views into the received buffer are read-only


def test_all_empty_payloads(results: list[dict]) -> None:
    assert all(res["empty"] == [0, 0, 0] for res in results)


def test_a_failure_status_reaches_every_rank(results: list[dict]) -> None:
    for res in results:
        assert (
            res["status"] == "synchronisation aborted: rank 2 has non-finite weights (NaN or Inf)"
        )
        assert res["statuses"] == {"2": STATUS_NONFINITE}
        assert res["after"] == "ok2"


def test_payloads_arrive_in_ring_order(results: list[dict]) -> None:
    for rank, res in enumerate(results):
        assert res["order"] == list(receive_order(rank, 3)) == [(rank + 1) % 3, (rank + 2) % 3]
        src = (rank + 1) % 3
        assert res["first"] == [src, 200_000 + src, src]


def test_a_consumer_error_still_completes_the_exchange(results: list[dict]) -> None:
    for res in results:
        assert res["consumer_error"] == "'consumer failed'"
        assert res["after_consumer_error"] == [200_000, 200_001, 200_002]


def test_receive_order_is_a_ring() -> None:
    assert receive_order(0, 4) == (1, 2, 3)  # rank 0: exactly the order of the sum
    for k in (2, 3, 4, 5, 8):
        orders = [receive_order(r, k) for r in range(k)]
        for r, order in enumerate(orders):
            assert sorted(order) == [p for p in range(k) if p != r]
            # what rank r gets at step s, rank r+1 got at step s-1 (and forwarded)
            source = orders[(r + 1) % k]
            assert order[0] == (r + 1) % k and list(order[1:]) == list(source[:-1])
        for step in range(k - 1):
            # every rank relays a different payload at each step: one per link
            assert sorted(o[step] for o in orders) == list(range(k))


def test_positive_status_is_rejected() -> None:
    with pytest.raises(ValueError, match="status"):
        all_gather_bytes(b"", status=1)


# ---- a peer that never sends: bounded by the group's timeout, never a hang -----------------

TIMEOUT_S = 2.0


def _silent_peer_job(rank: int, world: int, rdzv: str, out: str) -> None:
    join_gloo(rank, world, rdzv, timeout_s=TIMEOUT_S)
    res: dict[str, object] = {}
    try:
        sizes = exchange_sizes(1000)
        if rank == 0:
            t0 = time.monotonic()
            try:
                with PacketTransfer(bytes(1000), sizes) as transfer:
                    transfer.get()
                res["error"] = "no error"
            except CommunicationError as exc:
                res["error"] = str(exc)
            res["seconds"] = time.monotonic() - t0
        else:
            time.sleep(TIMEOUT_S + 2)  # sizes agreed, but this rank never sends its packet
    finally:
        Path(out, f"silent-r{rank}.json").write_text(json.dumps(res))
        with contextlib.suppress(Exception):
            tenfold.distributed.destroy_process_group()


def test_a_silent_peer_fails_within_the_group_timeout(tmp_path: Path) -> None:
    mp.spawn(_silent_peer_job, args=(2, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2)
    res = json.loads((tmp_path / "silent-r0.json").read_text())
    assert res["error"].startswith("exchanging packets failed"), res
    assert TIMEOUT_S * 0.9 <= res["seconds"] < TIMEOUT_S + 3, res
