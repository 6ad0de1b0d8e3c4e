"""all_gather_bytes: variable-length payloads between 3 real ranks (spawn, gloo, file rendezvous)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tenfold.dist import PeerStatusError, all_gather_bytes
from tenfold.dist.exchange import STATUS_NONFINITE


def payload(rank: int) -> bytes:
    # sizes 0, 1000 and 3 bytes: empty, largest in the middle, and not a multiple of 8
    return [b"", bytes(range(250)) * 4, b"\x00\xffz"][rank]


def _job(rank: int, world: int, rdzv: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=Path(rdzv).as_uri(),
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    res: dict[str, object] = {}
    try:
        got = all_gather_bytes(payload(rank))
        res["payloads"] = [bytes(p).hex() for p in got.payloads]
        res["sizes"] = list(got.sizes)
        res["padded"] = got.padded_size
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
    finally:
        Path(out, f"r{rank}.json").write_text(json.dumps(res))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("exchange")
    mp.spawn(_job, args=(3, str(out / "rdzv"), str(out)), nprocs=3, join=True)
    return [json.loads((out / f"r{r}.json").read_text()) for r in range(3)]


def test_every_rank_gets_every_payload_in_rank_order(results: list[dict]) -> None:
    for res in results:
        assert res["payloads"] == [payload(r).hex() for r in range(3)]
        assert res["sizes"] == [0, 1000, 3]
        assert res["padded"] == 1000
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


def test_positive_status_is_rejected() -> None:
    with pytest.raises(ValueError, match="status"):
        all_gather_bytes(b"", status=1)
