"""The launcher's failure handling: a dead rank, a hung rank, ranks with other configs.

Never a hang: every case ends with a RankFailure that says which rank did what.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import tenfold
from tenfold.distributed import CompressedAverager
from tenfold.train import ConfigMismatchError, RankFailure, TrainConfig, launch
from tenfold.train.loop import check_same_config


def _dies_job() -> None:
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(5):  # the survivors keep synchronising until gloo notices
        CompressedAverager(tenfold.Fixed(8), transmit="weights").average(
            [torch.ones(10) * dist.get_rank()]
        )
        time.sleep(0.2)


def test_a_dead_rank_is_named_and_the_survivors_fail() -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch(_dies_job, 3, timeout_s=30)
    assert time.monotonic() - t0 < 60  # bounded: no waiting for the survivors' timeouts
    failure = info.value
    assert failure.died == [1]
    message = str(failure)
    assert message.startswith("rank 1 died (killed by signal SIGKILL)")
    reports = {r.rank: r for r in failure.reports}
    assert set(reports) == {0, 1, 2}
    for rank in (0, 2):  # gloo raised in the survivors: connection closed/reset by rank 1
        assert reports[rank].exitcode == 1 and reports[rank].error is not None
        assert f"rank {rank} failed:" in message


def _hangs_job() -> None:
    # a short-timeout group for the collectives (the rendezvous keeps the long one: spawned
    # ranks can take seconds to start on a busy machine)
    group = dist.new_group(timeout=timedelta(seconds=2))
    if dist.get_rank() == 1:
        time.sleep(600)  # stuck: never reaches the synchronisation
    CompressedAverager(tenfold.Fixed(8), process_group=group, transmit="weights").average(
        [torch.ones(4)]
    )


def test_a_hung_rank_times_out_and_is_stopped() -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch(_hangs_job, 2, timeout_s=60, grace_s=1)
    assert time.monotonic() - t0 < 60
    reports = {r.rank: r for r in info.value.reports}
    assert reports[0].error is not None and reports[0].exitcode == 1
    assert reports[1].exitcode is None and reports[1].error is None  # stopped by us
    assert "rank 1 was stopped by the launcher" in str(info.value)
    assert info.value.died == []


def _mismatch_job() -> None:
    rank = dist.get_rank()
    check_same_config(TrainConfig(workers=3, seed=7 if rank == 2 else 0))


def test_ranks_with_different_configs_all_fail_clearly() -> None:
    with pytest.raises(RankFailure) as info:
        launch(_mismatch_job, 3, timeout_s=60)
    reports = {r.rank: r for r in info.value.reports}
    assert set(reports) == {0, 1, 2}
    for r in reports.values():
        assert r.error is not None
        assert r.error.startswith(ConfigMismatchError.__name__)
        assert "different configurations: rank(s) [2] differ from rank 0" in r.error
