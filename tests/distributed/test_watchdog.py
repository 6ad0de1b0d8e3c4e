"""A rank that has waited long for its peers says so, before the group's timeout."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo

import tenfold
from tenfold.distributed import CompressedAverager, WaitingForPeersWarning, watchdog


def _late_peer_job(rank: int, world: int, rdzv: str, out: str) -> None:
    join_gloo(rank, world, rdzv, timeout_s=30.0)
    watchdog.WARN_AFTER_S = 0.3
    res: dict[str, object] = {}
    try:
        model = torch.nn.Linear(64, 32)
        averager = CompressedAverager(tenfold.TargetRate(bits_per_param=1.0))
        averager.initialize(model.named_parameters())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if rank == 1:
                time.sleep(2.5)  # late, not dead: rank 0 waits, then both go on
            averager.average(model.named_parameters())
        res["warnings"] = [
            str(w.message) for w in caught if issubclass(w.category, WaitingForPeersWarning)
        ]
        res["ok"] = True
    finally:
        Path(out, f"late-r{rank}.json").write_text(json.dumps(res))
        with contextlib.suppress(Exception):
            tenfold.distributed.destroy_process_group()


def test_a_rank_left_waiting_says_what_for_and_what_to_check(tmp_path: Path) -> None:
    mp.spawn(_late_peer_job, args=(2, str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2)
    waited = json.loads((tmp_path / "late-r0.json").read_text())
    late = json.loads((tmp_path / "late-r1.json").read_text())
    assert waited["ok"] and late["ok"]
    assert len(waited["warnings"]) == 1, waited  # once per wait
    message = waited["warnings"][0]
    assert "waited" in message and "exchanging packet sizes" in message
    assert "called average()/step() fewer times" in message and "timeout" in message
    assert late["warnings"] == []  # it never waited
