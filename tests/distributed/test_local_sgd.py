"""LocalSGD and DiLoCo across real gloo ranks: bit-identical models, known answers, resume.

One spawned job (2 ranks) runs every multi-rank check, since launches are the slow part
(each rank imports torch); the test functions read the files it writes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_arrays
from torch import nn

import tenfold
from tenfold.distributed import (
    AllReduceAverager,
    BufferMismatchError,
    CompressedAverager,
    LocalSGD,
    ProcessGroupError,
    ReferenceMismatchError,
    SimulatedAverager,
    SyncStats,
)
from tenfold.distributed.local_sgd import SimulatedLocalSGD

WORLD = 2


class Net(nn.Module):
    """Linear -> BatchNorm1d -> Linear, with a frozen embedding concatenated to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.emb.weight.requires_grad_(False)
        self.fc1 = nn.Linear(8 + 4, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.emb(idx).to(x.dtype)], dim=1)
        return self.fc2(torch.relu(self.bn(self.fc1(h))))


def make_net(rank: int, dtype: torch.dtype = torch.float32) -> Net:
    """The same frozen embedding everywhere; trainable weights that differ per rank
    (LocalSGD's construction must align them on rank 0's)."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        g = torch.Generator().manual_seed(77 + rank)
        for p in (net.fc1.weight, net.fc2.weight):
            p.add_(torch.randn(p.shape, generator=g) * 0.01 * rank)
    return net.to(dtype)


def batch(rank: int, step: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Different data on every rank (so BatchNorm statistics differ before a sync)."""
    g = torch.Generator().manual_seed(10_000 * rank + step)
    x = (torch.randn(16, 8, generator=g) + rank).to(dtype)
    return x, torch.randint(0, 6, (16,), generator=g), torch.randint(0, 3, (16,), generator=g)


def train(
    net: Net,
    inner: torch.optim.Optimizer,
    sync: LocalSGD,
    rank: int,
    steps: range,
    on_sync: Callable[[int, SyncStats], None] | None = None,
) -> list[bool]:
    """Inner SGD steps, ``sync.step()`` after each; returns which steps synchronised."""
    synced = []
    dtype = next(net.parameters()).dtype
    for step in steps:
        x, idx, y = batch(rank, step, dtype)
        inner.zero_grad()
        nn.functional.cross_entropy(net(x, idx).float(), y).backward()
        inner.step()
        stats = sync.step()
        synced.append(stats is not None)
        if stats is not None and on_sync is not None:
            on_sync(step, stats)
    return synced


def snap(net: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer, exactly (half dtypes widened to float32, exact)."""
    out = {}
    for name, t in net.state_dict().items():
        t = t.detach()
        out[name] = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().copy()
    return out


def _sgd(net: nn.Module, **kw: Any) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in net.parameters() if p.requires_grad], **kw)


def _nesterov(net: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=0.7, momentum=0.9, nesterov=True)


def _checkpoint(obj: dict[str, Any]) -> dict[str, Any]:
    """Through bytes, as a real checkpoint would (no tensor shared with the live objects)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


def odd_module(rank: int) -> nn.Module:
    """A Linear with buffers of every awkward kind, their values depending on the rank."""
    m = nn.Linear(3, 2)
    m.register_buffer("flag", torch.tensor([True, False, rank == 1]))
    m.register_buffer("h16", torch.arange(5, dtype=torch.float16) * (rank + 1))
    m.register_buffer("count", torch.tensor(7 + rank, dtype=torch.int32))
    m.register_buffer("bf", torch.full((2, 2), 0.5 + rank, dtype=torch.bfloat16))
    m.register_buffer("none", torch.zeros(0))
    return m


def _exact(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().copy()


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=60)
    o = Path(out)
    info: dict[str, Any] = {}
    try:
        # 1. Local SGD at the default policy: schedule, bit-identical params + buffers
        net = make_net(rank)
        emb_start = net.emb.weight.detach().clone()
        sync = LocalSGD(net, sync_every=3)
        save_arrays(o, f"start-r{rank}", snap(net))
        stats_seen: list[dict[str, Any]] = []

        def keep(step: int, stats: SyncStats) -> None:
            stats_seen.append(stats.as_dict())
            save_arrays(o, f"local-r{rank}-s{step}", snap(net))

        info["synced"] = train(net, _sgd(net, lr=0.1), sync, rank, range(7), keep)
        info["stats"] = stats_seen
        info["emb_untouched"] = bool(torch.equal(net.emb.weight, emb_start))
        info["policy"] = type(sync.averager).__name__
        # the buffers' sync in isolation: rank-specific BatchNorm statistics, then a sync
        net(*batch(rank, 50, torch.float32)[:2])
        save_arrays(o, f"bn-before-r{rank}", {n: b.numpy().copy() for n, b in net.named_buffers()})
        sync.sync()
        save_arrays(o, f"bn-after-r{rank}", {n: b.numpy().copy() for n, b in net.named_buffers()})

        # 2. Lossless LocalSGD == LocalSGD over the plain fp32 all_reduce
        for key, kw in (
            ("lossless", {"policy": tenfold.Lossless()}),
            ("allreduce", {"averager": AllReduceAverager()}),
        ):
            net = make_net(rank)
            sync = LocalSGD(net, sync_every=2, **kw)
            train(net, _sgd(net, lr=0.1), sync, rank, range(6))
            save_arrays(o, f"{key}-r{rank}", snap(net))

        # 3. DiLoCo with outer SGD(lr=1, momentum=0) == Local SGD (the sign convention)
        for key, outer in (("plain", None), ("diloco1", lambda n: _sgd(n, lr=1.0))):
            net = make_net(rank)
            sync = LocalSGD(net, sync_every=2, outer_optimizer=outer and outer(net))
            train(net, _sgd(net, lr=0.1), sync, rank, range(4))
            save_arrays(o, f"{key}-r{rank}", snap(net))

        # 4. DiLoCo (Nesterov outer): bit-identical; the averager's reference follows
        net = make_net(rank)
        sync = LocalSGD(net, sync_every=2, outer_optimizer=_nesterov(net))
        ref_ok = []

        def check_ref(step: int, stats: SyncStats) -> None:
            save_arrays(o, f"diloco-r{rank}-s{step}", snap(net))
            ref = sync.averager.state_dict()["reference"]
            ref_ok.append(all(torch.equal(ref[n], p.detach()) for n, p in sync._params))

        train(net, _sgd(net, lr=0.1), sync, rank, range(6), check_ref)
        info["ref_follows"] = ref_ok
        info["diloco_tag"] = sync.averager.state_dict()["tag"]

        # 5. resume: 2 syncs, checkpoint, new objects, 2 more == 4 syncs straight
        net = make_net(rank)
        inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sync = LocalSGD(net, sync_every=2, outer_optimizer=_nesterov(net))
        train(net, inner, sync, rank, range(8))
        save_arrays(o, f"straight-r{rank}", snap(net))
        net = make_net(rank)
        inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sync = LocalSGD(net, sync_every=2, outer_optimizer=_nesterov(net))
        train(net, inner, sync, rank, range(4))
        ckpt = _checkpoint(
            {"model": net.state_dict(), "inner": inner.state_dict(), "sync": sync.state_dict()}
        )
        del net, inner, sync
        net = make_net(rank)  # other weights: the checkpoint must bring everything back
        inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sync = LocalSGD(net, sync_every=2, outer_optimizer=_nesterov(net))
        net.load_state_dict(ckpt["model"])
        inner.load_state_dict(ckpt["inner"])
        sync.load_state_dict(ckpt["sync"])
        info["resumed_steps"] = sync.num_steps
        train(net, inner, sync, rank, range(4, 8))
        save_arrays(o, f"resumed-r{rank}", snap(net))

        # 6. half precision: bfloat16 Local SGD and float16 DiLoCo end bit-identical
        for key, dtype, outer in (
            ("bf16", torch.bfloat16, None),
            ("fp16", torch.float16, _nesterov),
        ):
            net = make_net(rank, dtype)
            sync = LocalSGD(net, sync_every=2, outer_optimizer=outer and outer(net))
            train(net, _sgd(net, lr=0.1), sync, rank, range(4))
            save_arrays(o, f"{key}-r{rank}", snap(net))
            info[f"{key}_dtype"] = str(net.fc1.weight.dtype)

        # 7. a rank whose outer optimizer differs is named at the next sync
        net = make_net(rank)
        outer = torch.optim.SGD(net.parameters(), lr=0.7 if rank == 0 else 0.5, momentum=0.9)
        sync = LocalSGD(net, sync_every=1, outer_optimizer=outer)
        try:
            train(net, _sgd(net, lr=0.1), sync, rank, range(2))
            info["outer_mismatch"] = "no error"
        except ReferenceMismatchError as exc:
            info["outer_mismatch"] = f"{exc} ranks={list(exc.ranks)}"

        # 8. integer buffers that differ: a clear error on every rank; "broadcast" fixes it
        net = make_net(rank)
        sync = LocalSGD(net, sync_every=1)
        if rank == 1:
            net(*batch(rank, 99, torch.float32)[:2])  # one more BatchNorm update
        try:
            train(net, _sgd(net, lr=0.1), sync, rank, range(1))
            info["buffer_error"] = "no error"
        except BufferMismatchError as exc:
            info["buffer_error"] = f"{exc} buffers={exc.buffers}"
        sync = LocalSGD(net, sync_every=1, buffers="broadcast")  # aligns at construction
        if rank == 1:
            net(*batch(rank, 98, torch.float32)[:2])
        before0 = {n: b.clone() for n, b in net.named_buffers()}
        sync.sync()
        save_arrays(o, f"broadcast-r{rank}", snap(net))
        save_arrays(o, f"broadcast-before-r{rank}", {n: b.numpy() for n, b in before0.items()})

        # 9. buffers of odd dtypes and sizes (packed at odd byte offsets) broadcast exactly
        odd = odd_module(rank)
        LocalSGD(odd, sync_every=1, buffers="broadcast")
        save_arrays(o, f"odd-r{rank}", {n: _exact(b) for n, b in odd.named_buffers()})
        (o / f"info-r{rank}.json").write_text(json.dumps(info))
    finally:
        tenfold.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local_sgd")
    mp.spawn(_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return out


def _info(run: Path, rank: int) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((run / f"info-r{rank}.json").read_text())
    return info


def _identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[n].tobytes() == b[n].tobytes() for n in a)


def _assert_ranks_identical(run: Path, key: str) -> dict[str, np.ndarray]:
    r0 = load_arrays(run, key.format(rank=0))
    for rank in range(1, WORLD):
        assert _identical(r0, load_arrays(run, key.format(rank=rank))), (key, rank)
    return r0


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float) -> None:
    assert a.keys() == b.keys()
    for n in a:
        np.testing.assert_allclose(a[n], b[n], rtol=tol, atol=tol, err_msg=n)


def test_construction_aligns_the_ranks_on_rank_0s_model(run: Path) -> None:
    want = {n: v for n, v in snap(make_net(0)).items()}
    for rank in range(WORLD):
        assert _identical(load_arrays(run, f"start-r{rank}"), want)


def test_step_returns_stats_only_when_it_synchronised(run: Path) -> None:
    info = _info(run, 0)
    assert info["synced"] == [False, False, True, False, False, True, False]
    assert info["policy"] == "CompressedAverager"
    assert [s["round"] for s in info["stats"]] == [0, 1]
    for s in info["stats"]:  # the default policy: TargetRate(bits_per_param=1.0)
        big = [t for t in s["tensors"] if t["num_values"] >= 100]
        assert big and all(t["step"] is not None for t in big)
        assert s["world_size"] == WORLD and s["bytes_sent"] > 0


def test_params_and_buffers_are_bit_identical_after_every_sync(run: Path) -> None:
    for step in (2, 5):
        model = _assert_ranks_identical(run, f"local-r{{rank}}-s{step}")
        assert "bn.running_mean" in model and "bn.num_batches_tracked" in model
    for step in (1, 3, 5):
        _assert_ranks_identical(run, f"diloco-r{{rank}}-s{step}")


def test_floating_buffers_are_the_exact_float32_mean(run: Path) -> None:
    before = [load_arrays(run, f"bn-before-r{rank}") for rank in range(WORLD)]
    after = _assert_ranks_identical(run, "bn-after-r{rank}")
    for n in ("bn.running_mean", "bn.running_var"):
        assert before[0][n].tobytes() != before[1][n].tobytes()  # different data per rank
        # two ranks: one float32 addition, then a float32 division, as numpy does it here
        want = (before[0][n] + before[1][n]) / np.float32(WORLD)
        assert after[n].dtype == np.float32 and after[n].tobytes() == want.tobytes(), n
    assert after["bn.num_batches_tracked"] == before[0]["bn.num_batches_tracked"] == 8


def test_frozen_parameters_are_never_touched(run: Path) -> None:
    start = snap(make_net(0))["emb.weight"]
    for rank in range(WORLD):
        assert _info(run, rank)["emb_untouched"]
        for key in ("local-r{rank}-s5", "diloco-r{rank}-s5", "resumed-r{rank}"):
            assert (
                load_arrays(run, key.format(rank=rank))["emb.weight"].tobytes() == start.tobytes()
            )


def test_lossless_local_sgd_equals_plain_averaging(run: Path) -> None:
    for rank in range(WORLD):
        _assert_close(
            load_arrays(run, f"lossless-r{rank}"), load_arrays(run, f"allreduce-r{rank}"), 1e-6
        )
    _assert_ranks_identical(run, "allreduce-r{rank}")


def test_diloco_with_unit_outer_sgd_is_local_sgd(run: Path) -> None:
    plain, diloco = load_arrays(run, "plain-r0"), load_arrays(run, "diloco1-r0")
    _assert_close(plain, diloco, 1e-5)
    # not trivially: the runs did move away from the start
    assert not np.allclose(plain["fc1.weight"], snap(make_net(0))["fc1.weight"], atol=1e-3)


def test_diloco_keeps_the_averagers_reference_on_the_outer_steps_result(run: Path) -> None:
    for rank in range(WORLD):
        assert _info(run, rank)["ref_follows"] == [True, True, True]
    assert _info(run, 0)["diloco_tag"] == _info(run, 1)["diloco_tag"]


def test_a_checkpoint_resumes_bit_for_bit(run: Path) -> None:
    for rank in range(WORLD):
        assert _info(run, rank)["resumed_steps"] == 4
        assert _identical(
            load_arrays(run, f"straight-r{rank}"), load_arrays(run, f"resumed-r{rank}")
        )


def test_half_precision_models_end_bit_identical(run: Path) -> None:
    for key, dtype in (("bf16", "torch.bfloat16"), ("fp16", "torch.float16")):
        assert _info(run, 0)[f"{key}_dtype"] == dtype
        model = _assert_ranks_identical(run, key + "-r{rank}")
        assert np.isfinite(model["fc1.weight"]).all()


def test_a_rank_with_another_outer_optimizer_is_named(run: Path) -> None:
    for rank in range(WORLD):
        text = _info(run, rank)["outer_mismatch"]
        assert "rank(s) 1 hold a different shared model" in text and "ranks=[1]" in text


def test_an_integer_buffer_mismatch_names_the_buffer_and_the_rank(run: Path) -> None:
    for rank in range(WORLD):
        text = _info(run, rank)["buffer_error"]
        assert "'bn.num_batches_tracked' on rank(s) 1" in text, text
        assert "buffers='broadcast'" in text


def test_broadcast_buffers_take_rank_0s(run: Path) -> None:
    before0 = load_arrays(run, "broadcast-before-r0")
    model = _assert_ranks_identical(run, "broadcast-r{rank}")
    for n, v in before0.items():
        assert model[n].tobytes() == v.tobytes(), n


def test_buffers_of_any_dtype_are_broadcast_exactly(run: Path) -> None:
    want = {n: _exact(b) for n, b in odd_module(0).named_buffers()}
    for rank in range(WORLD):
        got = load_arrays(run, f"odd-r{rank}")
        assert _identical(got, want), rank
    assert _exact(odd_module(1).flag).tobytes() != want["flag"].tobytes()  # they did differ


# ---- in one process ------------------------------------------------------------------------


def test_simulated_local_sgd_is_the_ranks_bit_for_bit(run: Path) -> None:
    """K models in one process through SimulatedLocalSGD: after every sync, every model
    holds exactly what rank r held in the gloo job's part 1 (parameters, BatchNorm
    statistics, num_batches_tracked), and the buffers-only sync too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (the thread count can change the matmuls' sums)
    try:
        _simulate_part_1(run)
    finally:
        torch.set_num_threads(threads)


def _simulate_part_1(run: Path) -> None:
    nets = [make_net(r) for r in range(WORLD)]
    sim = SimulatedLocalSGD(
        nets, sync_every=3, averager=SimulatedAverager(tenfold.TargetRate(bits_per_param=1.0))
    )
    inners = [_sgd(net, lr=0.1) for net in nets]
    synced, rounds = [], []
    for step in range(7):
        for rank, (net, inner) in enumerate(zip(nets, inners, strict=True)):
            x, idx, y = batch(rank, step, torch.float32)
            inner.zero_grad()
            nn.functional.cross_entropy(net(x, idx), y).backward()
            inner.step()
        stats = sim.step()
        synced.append(stats is not None)
        if stats is not None:
            rounds.append(stats.round)
            for rank, net in enumerate(nets):
                assert _identical(snap(net), load_arrays(run, f"local-r{rank}-s{step}")), rank
    assert synced == _info(run, 0)["synced"]
    assert rounds == [s["round"] for s in _info(run, 0)["stats"]]
    for rank, net in enumerate(nets):
        net(*batch(rank, 50, torch.float32)[:2])
    sim.sync()
    for rank, net in enumerate(nets):
        got = {n: b.numpy().copy() for n, b in net.named_buffers()}
        assert _identical(got, load_arrays(run, f"bn-after-r{rank}")), rank
    assert sim.buffer_bytes_sent == 2 * 16 * 4 * (WORLD - 1)  # mean and var, float32


def test_simulated_local_sgd_checks_integer_buffers_like_the_ranks() -> None:
    nets = [odd_module(r) for r in range(WORLD)]
    avg = SimulatedAverager(tenfold.Lossless())
    sim = SimulatedLocalSGD(nets, sync_every=1, averager=avg)  # aligns on worker 0's
    assert all(_exact(n.count) == 7 for n in nets)
    with torch.no_grad():
        nets[1].count.add_(1)
    with pytest.raises(BufferMismatchError, match="'count' on rank"):
        sim.sync()
    assert SimulatedLocalSGD(nets, sync_every=1, averager=avg, buffers="broadcast").step()
    assert all(_exact(n.count) == 7 for n in nets)


@pytest.mark.parametrize("sync_every", [0, -1, 1.5, True, "3", None])
def test_sync_every_must_be_a_positive_int(sync_every: Any) -> None:
    with pytest.raises(ValueError, match="sync_every must be an int >= 1"):
        LocalSGD(make_net(0), sync_every=sync_every)


def test_buffers_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="buffers must be one of"):
        LocalSGD(make_net(0), sync_every=1, buffers="sum")


def test_policy_and_averager_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        LocalSGD(make_net(0), sync_every=1, policy=tenfold.Lossless(), averager=AllReduceAverager())


def test_an_averager_must_follow_the_protocol() -> None:
    with pytest.raises(TypeError, match="Averager"):
        LocalSGD(make_net(0), sync_every=1, averager=object())  # type: ignore[arg-type]


def test_an_averager_on_another_group_is_refused() -> None:
    avg = CompressedAverager(tenfold.Lossless(), process_group=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="process_group"):
        LocalSGD(make_net(0), sync_every=1, averager=avg)


def test_the_outer_optimizer_must_hold_every_trainable_parameter() -> None:
    net = make_net(0)
    with pytest.raises(ValueError, match=r"fc2\.weight"):
        LocalSGD(net, sync_every=1, outer_optimizer=torch.optim.SGD(net.fc1.parameters(), lr=1))


def test_a_model_without_trainable_parameters_is_refused() -> None:
    net = make_net(0).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        LocalSGD(net, sync_every=1)


def _one_process() -> CompressedAverager:
    """An averager that accepts running without a process group (every sync a no-op)."""
    return CompressedAverager(tenfold.TargetRate(bits_per_param=1.0), allow_single_process=True)


def test_without_a_process_group_the_default_averager_refuses_to_start() -> None:
    with pytest.raises(ProcessGroupError, match="init_process_group"):
        LocalSGD(make_net(0), sync_every=1)


def test_a_diloco_state_does_not_load_into_local_sgd() -> None:
    net = make_net(0)
    state = LocalSGD(
        net, sync_every=1, outer_optimizer=_nesterov(net), averager=_one_process()
    ).state_dict()
    with pytest.raises(ValueError, match="DiLoCo"):
        LocalSGD(net, sync_every=1, averager=_one_process()).load_state_dict(state)


def test_one_process_diloco_applies_the_outer_step_to_local_progress() -> None:
    """Not distributed: averaging is a no-op, so with outer SGD(lr=1) the model ends where
    plain local training does (w_shared - 1 * (w_shared - w_local)), with lr=0 at the
    start."""
    plain = make_net(0)
    train(
        plain, _sgd(plain, lr=0.1), LocalSGD(plain, sync_every=2, averager=_one_process()), 0,
        range(2),
    )  # fmt: skip
    for lr in (1.0, 0.0):
        net = make_net(0)
        start = snap(net)
        sync = LocalSGD(
            net, sync_every=2, outer_optimizer=_sgd(net, lr=lr), averager=_one_process()
        )
        assert train(net, _sgd(net, lr=0.1), sync, 0, range(2)) == [False, True]
        end = snap(net)
        if lr:
            _assert_close(end, snap(plain), 1e-6)
            assert not np.allclose(end["fc1.weight"], start["fc1.weight"], atol=1e-4)
        else:
            np.testing.assert_array_equal(end["fc1.weight"], start["fc1.weight"])
        assert sync.num_steps == 2
        for _, p in sync._params:  # the inner gradients are put back, not the pseudo-gradient
            assert p.grad is not None
