"""The compressed DDP communication hook across real gloo ranks.

One spawned job runs most checks (process launch, each importing torch, is the slow part);
results go to files in a temporary directory and the tests below read them.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_arrays
from torch.nn.parallel import DistributedDataParallel as DDP

import tenfold
from tenfold.codec.policy import rms
from tenfold.distributed.errors import ProcessGroupError
from tenfold.distributed.hooks import (
    CompressionState,
    StepCost,
    _Residual,
    compressed_allreduce_hook,
)
from tenfold.distributed.sender import round_seed
from tenfold.errors import ConfigError, InputTypeError

WORLD = 3
STEPS = 3


def make_model() -> torch.nn.Module:
    """The same tiny MLP on every rank (8.9k parameters)."""
    torch.manual_seed(7)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )  # fmt: skip


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)


def train_step(ddp: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = batch(rank, step)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    opt.step()


def params_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def grads_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for n, p in model.named_parameters():
        assert p.grad is not None
        out[n] = p.grad.detach().numpy().copy()
    return out


def recorder(calls: list[list[Any]]) -> Any:
    """The hook, recording ``[step, bucket index, parameter sizes, input, output]`` per call
    (input/output: the bucket before and after, as lists, at step 0 only)."""

    # unannotated: DDP rejects string annotations (this file has future annotations)
    def recording_hook(s: CompressionState, bucket):  # type: ignore[no-untyped-def]
        step = s.step  # the hook advances it after the last bucket
        before = bucket.buffer().detach().clone()
        fut = compressed_allreduce_hook(s, bucket)
        io = [before.tolist(), fut.wait().tolist()] if step == 0 else [None, None]
        calls.append([step, bucket.index(), [p.numel() for p in bucket.parameters()], *io])
        return fut

    return recording_hook


def _hooked(state: CompressionState, calls: list[list[Any]] | None = None) -> tuple[DDP, Any]:
    ddp = DDP(make_model())
    hook = compressed_allreduce_hook if calls is None else recorder(calls)
    ddp.register_comm_hook(state, hook)
    return ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)


def _hook_job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv)
    out_dir = Path(out)
    report: dict[str, Any] = {}
    try:
        # 1. rate-controlled gradients: the ranks' parameters agree after every step
        policy = tenfold.TargetRate(bits_per_param=1.0)
        state = CompressionState(policy)
        calls: list[list[Any]] = []
        ddp, opt = _hooked(state, calls)
        for step in range(STEPS):
            train_step(ddp, opt, rank, step)
            save_arrays(out_dir, f"rate-r{rank}-s{step}", params_of(ddp.module))
        report["stats"] = state.stats.as_dict()
        report["first_call"] = calls[0]
        report["residual_buckets"] = sorted(state.state_dict()["residual"])

        # 2. resume: a fresh DDP + a state restored from a (torch.save'd) state_dict
        #    continues bit for bit; the same with the residuals zeroed does not
        buf = io.BytesIO()
        torch.save(state.state_dict(), buf)
        saved_model = copy.deepcopy(ddp.module.state_dict())
        saved_opt = copy.deepcopy(opt.state_dict())
        train_step(ddp, opt, rank, STEPS)
        save_arrays(out_dir, f"resume-continued-r{rank}", params_of(ddp.module))
        for variant in ("resumed", "zeroed"):
            buf.seek(0)
            hook_state = torch.load(buf, weights_only=True)
            if variant == "zeroed":
                hook_state["residual"] = {
                    k: torch.zeros_like(v) for k, v in hook_state["residual"].items()
                }
            fresh = CompressionState(policy)
            fresh.load_state_dict(hook_state)
            ddp2, opt2 = _hooked(fresh)
            ddp2.module.load_state_dict(saved_model)
            opt2.load_state_dict(saved_opt)
            train_step(ddp2, opt2, rank, STEPS)
            save_arrays(out_dir, f"resume-{variant}-r{rank}", params_of(ddp2.module))
        report["residual_norm"] = float(
            sum(float(v.norm()) for v in state.state_dict()["residual"].values())
        )

        # 3. Lossless: the hook's mean gradient is a plain fp32 allreduce-mean
        ddp3, _ = _hooked(CompressionState(tenfold.Lossless()))
        plain = make_model()
        x, y = batch(rank, 50)
        torch.nn.functional.cross_entropy(ddp3(x), y).backward()
        torch.nn.functional.cross_entropy(plain(x), y).backward()
        for p in plain.parameters():
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        save_arrays(out_dir, f"lossless-r{rank}", grads_of(ddp3.module))
        save_arrays(out_dir, f"allreduce-r{rank}", grads_of(plain))

        # 4. several buckets, rebuilt by DDP after the first step: residuals follow the
        #    parameters to their new buckets, and the ranks still agree
        rel = CompressionState(tenfold.RelativeStep(alpha=1.0))
        layouts: list[list[Any]] = []

        ddp4 = DDP(make_model(), bucket_cap_mb=0.008)
        ddp4.register_comm_hook(rel, recorder(layouts))
        opt4 = torch.optim.SGD(ddp4.parameters(), lr=0.1)
        for step in range(STEPS):
            train_step(ddp4, opt4, rank, step)
            save_arrays(out_dir, f"buckets-r{rank}-s{step}", params_of(ddp4.module))
        report["layouts"] = layouts
        report["loose_after"] = len(rel._loose)
        sd = rel.state_dict()
        report["bucket_residual_sizes"] = {k: list(v) for k, v in sd["sizes"].items()}
        report["relative_stats"] = rel.stats.as_dict()

        # 5. a rank whose step counter differs (resumed from another checkpoint): all raise
        odd = CompressionState(policy)
        odd.step = 5 if rank == 2 else 0
        ddp_odd, _ = _hooked(odd)
        x, y = batch(rank, 70)
        try:
            torch.nn.functional.cross_entropy(ddp_odd(x), y).backward()
            report["mismatch"] = "no error"
        except Exception as exc:
            report["mismatch"] = f"{type(exc).__name__}: {exc}"

        # 6. a NaN gradient on rank 1 only: every rank raises, none hangs
        ddp5, opt5 = _hooked(CompressionState(policy))
        x, y = batch(rank, 60)
        if rank == 1:
            x[0, 0] = float("nan")
        t0 = time.perf_counter()
        try:
            torch.nn.functional.cross_entropy(ddp5(x), y).backward()
            report["nan"] = "no error"
        except Exception as exc:
            report["nan"] = f"{type(exc).__name__}: {exc}"
        report["nan_seconds"] = time.perf_counter() - t0
    finally:
        (out_dir / f"report-r{rank}.json").write_text(json.dumps(report))
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def hook_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hooks")
    mp.spawn(_hook_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return out


def _report(run: Path, rank: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((run / f"report-r{rank}.json").read_text())
    return result


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_every_rank_holds_bit_identical_parameters_after_each_step(hook_run: Path) -> None:
    for prefix in ("rate", "buckets"):
        for step in range(STEPS):
            r0 = load_arrays(hook_run, f"{prefix}-r0-s{step}")
            for rank in range(1, WORLD):
                assert _same(r0, load_arrays(hook_run, f"{prefix}-r{rank}-s{step}")), (prefix, step)
    # and training moved them
    start = {n: p.detach().numpy() for n, p in make_model().named_parameters()}
    assert not _same(start, load_arrays(hook_run, "rate-r0-s0"))


def test_stats_are_populated_and_near_the_target_rate(hook_run: Path) -> None:
    for rank in range(WORLD):
        stats = _report(hook_run, rank)["stats"]
        assert stats["steps"] == STEPS and stats["calls"] == STEPS  # one bucket per step
        total, last = stats["total"], stats["last_step"]
        n = sum(p.numel() for p in make_model().parameters())
        assert total["num_values"] == STEPS * n and last["num_values"] == n
        assert last["bytes_sent"] > 0 and total["bytes_sent"] >= STEPS * 0.5 * last["bytes_sent"]
        assert total["bytes_received"] > 0
        assert all(total[k] > 0 for k in ("encode_seconds", "comm_seconds", "decode_seconds"))
        assert stats["current"]["calls"] == 0
        # a single 8.9k-value bucket: headers and tables weigh; still near 1 bit/param
        assert 0.6 < last["bits_per_param"] < 1.6, last
        assert 0.6 < total["bits_per_param"] < 1.6, total


def test_the_mean_is_the_rank_order_mean_of_the_decoded_packets(hook_run: Path) -> None:
    """Recomputed here from each rank's step-0 bucket: per-rank seeds, rank order, / K."""
    acc = np.zeros(0, np.float32)
    for rank in range(WORLD):
        step, index, _, before, _ = _report(hook_run, rank)["first_call"]
        assert (step, index) == (0, 0)
        g = np.asarray(before, np.float32)  # DDP's initial layout is the coding order
        policy = tenfold.TargetRate(bits_per_param=1.0)
        seed = round_seed(policy, rank=rank, round=0)
        blob = tenfold.compress({"g": g}, policy, scale={"g": rms(g)}, seed=seed)
        acc = (acc if acc.size else np.zeros_like(g)) + tenfold.decompress(blob)["g"]
    mean = np.divide(acc, np.float32(WORLD))
    for rank in range(WORLD):
        got = np.asarray(_report(hook_run, rank)["first_call"][4], np.float32)
        assert got.tobytes() == mean.tobytes(), rank


def test_state_dict_resumes_bit_for_bit_and_the_residual_matters(hook_run: Path) -> None:
    for rank in range(WORLD):
        report = _report(hook_run, rank)
        assert report["residual_buckets"] == ["0"] and report["residual_norm"] > 0
        continued = load_arrays(hook_run, f"resume-continued-r{rank}")
        assert _same(continued, load_arrays(hook_run, f"resume-resumed-r{rank}"))
        assert not _same(continued, load_arrays(hook_run, f"resume-zeroed-r{rank}"))


def test_lossless_equals_a_plain_allreduce_mean(hook_run: Path) -> None:
    r0 = load_arrays(hook_run, "lossless-r0")
    for rank in range(WORLD):
        ours = load_arrays(hook_run, f"lossless-r{rank}")
        assert _same(ours, r0)
        ref = load_arrays(hook_run, f"allreduce-r{rank}")
        for n in ours:
            np.testing.assert_allclose(ours[n], ref[n], rtol=1e-6, atol=1e-7)


def test_residuals_follow_parameters_when_ddp_rebuilds_buckets(hook_run: Path) -> None:
    report = _report(hook_run, 0)
    by_step: dict[int, list[list[int]]] = {}
    for step, index, sizes, *_ in report["layouts"]:
        by_step.setdefault(step, []).append(sizes)
        assert len(by_step[step]) == index + 1  # in index order
    assert len(by_step) == STEPS
    assert len(by_step[1]) > 1  # a small bucket cap: several buckets
    assert by_step[1] == by_step[2]
    assert report["loose_after"] == 0  # every dissolved residual was reassembled
    assert len(report["bucket_residual_sizes"]) == len(by_step[2])
    for i, sizes in enumerate(by_step[2]):  # stored in coding order, not bucket order
        assert sorted(report["bucket_residual_sizes"][str(i)]) == sorted(sizes)
    assert by_step[0] == [[6144, 96, 3072, 32, 320, 10]]  # DDP's initial layout: one bucket
    assert report["relative_stats"]["steps"] == STEPS


def test_a_nan_gradient_raises_on_every_rank(hook_run: Path) -> None:
    for rank in range(WORLD):
        report = _report(hook_run, rank)
        text = report["nan"]
        assert "non-finite gradients" in text and "rank(s) 1" in text, (rank, text)
        assert ("this rank included" in text) == (rank == 1)
        assert report["nan_seconds"] < 20


def test_ranks_out_of_step_raise_on_every_rank(hook_run: Path) -> None:
    for rank in range(WORLD):
        text = _report(hook_run, rank)["mismatch"]
        # asynchronous: DDP re-raises the worker's error as a RuntimeError naming it
        assert "BucketMismatchError" in text and "step counter" in text, text


# ---- a dead peer ------------------------------------------------------------------------------


def _dead_peer_job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, 2, rdzv)
    ddp, _ = _hooked(CompressionState(tenfold.TargetRate(bits_per_param=1.0)))
    dist.barrier()
    if rank == 1:
        os._exit(0)  # dies without a word, before the backward pass
    t0 = time.perf_counter()
    try:
        x, y = batch(rank, 0)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        text = "no error"
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
    Path(out, "dead.json").write_text(json.dumps([text, time.perf_counter() - t0]))
    os._exit(0)  # the group is broken: tearing it down could wait on the dead peer


@pytest.mark.slow
def test_a_dead_peer_is_a_communication_error(tmp_path: Path) -> None:
    mp.spawn(_dead_peer_job, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2, join=True)
    text, seconds = json.loads((tmp_path / "dead.json").read_text())
    assert "CommunicationError" in text or "another rank has died" in text, text
    assert seconds < 40


# ---- in-process pieces --------------------------------------------------------------------------


def test_step_cost_adds_up() -> None:
    a = StepCost(calls=1, bytes_sent=100, num_values=800, encode_seconds=0.5)
    b = a + a
    assert b.calls == 2 and b.bytes_sent == 200 and b.bits_per_param == 1.0
    assert StepCost().bits_per_param == 0.0
    assert b.as_dict()["encode_seconds"] == 1.0


def test_residuals_are_reassembled_by_parameter_after_a_layout_change() -> None:
    state = CompressionState(tenfold.RelativeStep(alpha=1.0), allow_single_process=True)
    f32 = np.dtype(np.float32)
    p = [torch.zeros(n) for n in (2, 3, 4, 5)]
    old0, old1 = state._layout(p[:2], 5), state._layout(p[2:3], 4)  # first sight: 0, 1 | 2
    assert old0.params == (0, 1) and old0.identity and state._residual_for(0, old0, f32) is None
    state._residuals = {
        0: _Residual((0, 1), (2, 3), np.array([1, 1, 2, 2, 2], f32)),
        1: _Residual((2,), (4,), np.full(4, 3.0, f32)),
    }
    assert old1.params == (2,)
    # rebuilt: bucket 0 = (p2, p1), bucket 1 = (p0, p3 new); coded by canonical index
    new0 = state._layout([p[2], p[1]], 7)
    assert new0.params == (1, 2) and new0.starts == (4, 0) and not new0.identity
    got0 = state._residual_for(0, new0, f32)
    assert got0 is not None and got0.tolist() == [2.0] * 3 + [3.0] * 4
    new1 = state._layout([p[0], p[3]], 7)
    got1 = state._residual_for(1, new1, f32)
    assert got1 is not None and got1.tolist() == [1.0] * 2 + [0.0] * 5
    assert not state._loose
    # gather/scatter are inverse
    g = np.arange(7, dtype=f32)
    out = np.empty_like(g)
    new0.scatter(new0.gather(g), out)
    assert out.tolist() == g.tolist() and new0.gather(g).tolist() == [4, 5, 6, 0, 1, 2, 3]


def test_load_state_dict_checks_sizes() -> None:
    state = CompressionState(tenfold.Lossless(), allow_single_process=True)
    with pytest.raises(ConfigError, match="residual has 3 values"):
        state.load_state_dict(
            {
                "step": 0,
                "residual": {"0": torch.zeros(3)},
                "params": {"0": [0]},
                "sizes": {"0": [2]},
            }
        )
    with pytest.raises(InputTypeError, match="error_feedback"):
        CompressionState(tenfold.Lossless(), error_feedback=1)  # type: ignore[arg-type]


class _Bucket:
    """What the hook reads of a ``dist.GradBucket``."""

    def __init__(self, values: list[float]) -> None:
        self._buffer = torch.tensor(values)
        self._params = [torch.zeros(len(values))]

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return 0

    def is_last(self) -> bool:
        return True

    def parameters(self) -> list[torch.Tensor]:
        return self._params


def test_without_a_process_group_the_hook_refuses_at_its_first_call() -> None:
    # built before the group exists (Lightning's DDPStrategy(ddp_comm_state=...) does)
    state = CompressionState(tenfold.Lossless())
    with pytest.raises(ProcessGroupError, match="init_process_group"):
        compressed_allreduce_hook(state, _Bucket([1.0, 2.0]))  # type: ignore[arg-type]
    state.close()


@pytest.mark.parametrize("asynchronous", [True, False])
def test_one_rank_returns_the_bucket_unchanged(asynchronous: bool) -> None:
    state = CompressionState(
        tenfold.TargetRate(bits_per_param=1.0), allow_single_process=True,
        asynchronous=asynchronous,
    )  # fmt: skip
    bucket = _Bucket([0.5, -1.25, 3.0])
    got = compressed_allreduce_hook(state, bucket).wait()  # type: ignore[arg-type]
    assert got.tolist() == [0.5, -1.25, 3.0]
    assert state.step == 1 and state.stats.last_step.calls == 1
    assert state.state_dict()["residual"] == {}
    state.close()
