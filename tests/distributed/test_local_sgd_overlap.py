"""Overlapped LocalSGD / DiLoCo (``overlap=True``) across real gloo ranks and simulated.

One spawned job of 3 ranks runs the multi-rank checks (bit-identity, resume with a sync in
flight, NaN surfacing at the next step); a job of 2 ranks checks a dead peer. The tests
read the files they write.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from gloo_group import join_gloo, load_arrays, save_arrays
from test_local_sgd import _nesterov, _sgd, batch, make_net, snap
from torch import nn

import tenfold
from tenfold.distributed import LocalSGD, SimulatedAverager
from tenfold.distributed.local_sgd import SimulatedLocalSGD
from tenfold.errors import ConfigError

WORLD = 3


def _train(net: nn.Module, inner: Any, sync: Any, rank: int, steps: range) -> list[bool]:
    """Inner SGD steps with ``sync.step()`` after each; which steps returned stats."""
    got = []
    for step in steps:
        x, idx, y = batch(rank, step, torch.float32)
        inner.zero_grad()
        nn.functional.cross_entropy(net(x, idx), y).backward()
        inner.step()
        got.append(sync.step() is not None)
    return got


def _through_bytes(obj: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


def _raises_at_next_steps(sync: Any, net: nn.Module, inner: Any, rank: int) -> str:
    """Step until the background sync's error surfaces (bounded); its class and message."""
    deadline = time.monotonic() + 60
    step = 100
    while time.monotonic() < deadline:
        try:
            _train(net, inner, sync, rank, range(step, step + 1))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        step += 1
        time.sleep(0.01)
    return "no error"


def _job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, WORLD, rdzv, timeout_s=60)
    o = Path(out)
    info: dict[str, Any] = {}
    try:
        # 1. overlapped Local SGD and DiLoCo: identical at every boundary and after wait()
        for key, outer in (("local", None), ("diloco", _nesterov)):
            net = make_net(rank)
            sync = LocalSGD(net, sync_every=3, overlap=True, outer_optimizer=outer and outer(net))
            returned = []
            for start in range(0, 9, 3):
                returned += _train(net, _sgd(net, lr=0.1), sync, rank, range(start, start + 3))
                save_arrays(o, f"{key}-r{rank}-b{start}", snap(net))
            info[f"{key}_returned"] = returned
            info[f"{key}_wait"] = sync.wait() is not None
            info[f"{key}_wait_again"] = sync.wait() is None
            save_arrays(o, f"{key}-r{rank}-end", snap(net))
            sync.close()

        # 2. resume mid-round with a sync in flight == straight through, bit for bit
        for key, outer in (("local", None), ("diloco", _nesterov)):

            def build(
                outer: Any = outer,
            ) -> tuple[nn.Module, torch.optim.Optimizer, LocalSGD]:
                net = make_net(rank)
                inner = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
                sync = LocalSGD(
                    net, sync_every=2, overlap=True, outer_optimizer=outer and outer(net)
                )
                return net, inner, sync

            net, inner, sync = build()
            _train(net, inner, sync, rank, range(8))
            sync.wait()
            save_arrays(o, f"straight-{key}-r{rank}", snap(net))
            net, inner, sync = build()
            _train(net, inner, sync, rank, range(5))  # boundary at 4 launched a sync
            info[f"{key}_in_flight_at_save"] = sync.in_flight
            ckpt = _through_bytes(
                {"model": net.state_dict(), "inner": inner.state_dict(), "sync": sync.state_dict()}
            )
            net, inner, sync = build()
            net.load_state_dict(ckpt["model"])
            inner.load_state_dict(ckpt["inner"])
            sync.load_state_dict(ckpt["sync"])
            _train(net, inner, sync, rank, range(5, 8))
            sync.wait()
            save_arrays(o, f"resumed-{key}-r{rank}", snap(net))

        # 3. NaN on one rank: every rank raises the same error at a step() after it
        net = make_net(rank)
        inner = _sgd(net, lr=0.1)
        sync = LocalSGD(net, sync_every=2, overlap=True)
        _train(net, inner, sync, rank, range(1))
        if rank == 1:
            with torch.no_grad():
                net.fc2.bias[0] = float("nan")
        _train(net, inner, sync, rank, range(1, 2))  # the boundary: launched in background
        info["nan"] = _raises_at_next_steps(sync, net, inner, rank)
        try:
            sync.wait()
            info["nan_again"] = "no error"
        except Exception as exc:
            info["nan_again"] = type(exc).__name__
        (o / f"info-r{rank}.json").write_text(json.dumps(info))
    finally:
        tenfold.distributed.destroy_process_group()


def _dead_peer_job(rank: int, rdzv: str, out: str) -> None:
    join_gloo(rank, 2, rdzv, timeout_s=10)
    net = make_net(rank)
    inner = _sgd(net, lr=0.1)
    sync = LocalSGD(net, sync_every=2, overlap=True)
    _train(net, inner, sync, rank, range(4))  # one sync done, the second in flight
    if rank == 1:
        os._exit(0)  # dies with the sync in flight
    message = _raises_at_next_steps(sync, net, inner, rank)
    Path(out, "dead-peer.txt").write_text(message)
    os._exit(0)  # the group cannot be torn down cleanly without its peer


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local_sgd_overlap")
    mp.spawn(_job, args=(str(out / "rdzv"), str(out)), nprocs=WORLD, join=True)
    return out


def _info(run: Path, rank: int) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((run / f"info-r{rank}.json").read_text())
    return info


def _identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[n].tobytes() == b[n].tobytes() for n in a)


def _ranks_identical(run: Path, key: str) -> dict[str, np.ndarray]:
    r0 = load_arrays(run, key.format(rank=0))
    for rank in range(1, WORLD):
        assert _identical(r0, load_arrays(run, key.format(rank=rank))), (key, rank)
    return r0


@pytest.mark.parametrize("key", ["local", "diloco"])
def test_ranks_are_bit_identical_at_every_boundary_and_after_wait(run: Path, key: str) -> None:
    for start in (0, 3, 6):
        _ranks_identical(run, f"{key}-r{{rank}}-b{start}")
    end = _ranks_identical(run, f"{key}-r{{rank}}-end")
    assert not _identical(end, load_arrays(run, f"{key}-r0-b6"))  # wait() applied something
    for rank in range(WORLD):
        info = _info(run, rank)
        # the first boundary applies nothing (nothing was in flight), the later ones do
        assert info[f"{key}_returned"] == [False, False, False, False, False, True] + [
            False,
            False,
            True,
        ]
        assert info[f"{key}_wait"] and info[f"{key}_wait_again"]


@pytest.mark.parametrize("key", ["local", "diloco"])
def test_resume_with_a_sync_in_flight_continues_bit_for_bit(run: Path, key: str) -> None:
    for rank in range(WORLD):
        assert _info(run, rank)[f"{key}_in_flight_at_save"]
        assert _identical(
            load_arrays(run, f"straight-{key}-r{rank}"), load_arrays(run, f"resumed-{key}-r{rank}")
        )
    _ranks_identical(run, f"resumed-{key}-r{{rank}}")


def test_nan_in_the_background_sync_surfaces_on_every_rank(run: Path) -> None:
    # the averager's own errors, as a blocking sync raises them (rank 1 also names its
    # tensors); on every rank, at a step() after the boundary that launched the sync
    for rank in range(WORLD):
        message = _info(run, rank)["nan"]
        assert message.startswith("NonFiniteWeightsError"), message
        assert "rank 1" in message, message
    assert all(_info(run, rank)["nan_again"] == "NonFiniteWeightsError" for rank in range(WORLD))


def test_simulated_overlap_is_the_ranks_bit_for_bit(run: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (the thread count can change the matmuls' sums)
    try:
        _simulate_overlap(run)
    finally:
        torch.set_num_threads(threads)


def _simulate_overlap(run: Path) -> None:
    nets = [make_net(r) for r in range(WORLD)]
    inners = [_sgd(n, lr=0.1) for n in nets]
    sim = SimulatedLocalSGD(
        nets, sync_every=3, averager=SimulatedAverager(tenfold.TargetRate(1.0)), overlap=True
    )
    for step in range(9):
        for rank, (net, inner) in enumerate(zip(nets, inners, strict=True)):
            _train(net, inner, _NoSync(), rank, range(step, step + 1))
        sim.step()
        if (step + 1) % 3 == 0:
            want = load_arrays(run, f"local-r0-b{step + 1 - 3}")
            for net in nets:
                assert _identical(snap(net), want), step
    sim.wait()
    for net in nets:
        assert _identical(snap(net), load_arrays(run, "local-r0-end"))


def test_a_dead_peer_surfaces_at_the_next_step(tmp_path: Path) -> None:
    mp.spawn(_dead_peer_job, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2, join=True)
    message = (tmp_path / "dead-peer.txt").read_text()
    assert message.startswith("CommunicationError"), message


class _NoSync:
    def step(self) -> None:
        return None


def _lossless_sim(k: int, overlap: bool, steps: int, every: int) -> list[nn.Module]:
    nets = [make_net(r) for r in range(k)]
    inners = [_sgd(n, lr=0.1) for n in nets]
    sim = SimulatedLocalSGD(
        nets, sync_every=every, averager=SimulatedAverager(tenfold.Lossless()), overlap=overlap
    )
    for step in range(steps):
        for rank, (net, inner) in enumerate(zip(nets, inners, strict=True)):
            _train(net, inner, _NoSync(), rank, range(step, step + 1))
        sim.step()
    sim.wait()
    return nets


def test_overlap_is_the_one_round_delayed_update() -> None:
    """Lossless: the model after R rounds and wait() is w0 + the sum of every round's mean
    pseudo-gradient, each taken against the shared model its round started from, which
    lags one round behind (checked against the same recursion written out)."""
    k, every, rounds = 2, 2, 3
    nets = _lossless_sim(k, True, every * rounds, every)
    # the recursion, by hand, on fresh copies
    ref = [make_net(r) for r in range(k)]
    inners = [_sgd(n, lr=0.1) for n in ref]
    with torch.no_grad():
        for n in ref[1:]:
            for p, q in zip(n.parameters(), ref[0].parameters(), strict=True):
                p.copy_(q)
    trainable = [n for n, p in ref[0].named_parameters() if p.requires_grad]
    shared = {n: p.detach().clone() for n, p in ref[0].named_parameters() if n in trainable}
    pending: dict[str, torch.Tensor] | None = None
    step = 0
    for _ in range(rounds):
        for _ in range(every):
            for rank, (net, inner) in enumerate(zip(ref, inners, strict=True)):
                _train(net, inner, _NoSync(), rank, range(step, step + 1))
            step += 1
        deltas = [
            {n: p.detach() - shared[n] for n, p in net.named_parameters() if n in trainable}
            for net in ref
        ]
        new = {n: shared[n] + pending[n] if pending is not None else shared[n] for n in shared}
        pending = {n: sum(d[n] for d in deltas) / k for n in shared}
        shared = new
        _set(ref, shared)
        _average_buffers(ref)
    assert pending is not None
    _set(ref, {n: shared[n] + pending[n] for n in shared})
    for net in nets:
        for (name, p), q in zip(net.named_parameters(), ref[0].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)


def _set(nets: list[nn.Module], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for net in nets:
            for n, p in net.named_parameters():
                if n in values:
                    p.copy_(values[n])


def _average_buffers(nets: list[nn.Module]) -> None:
    with torch.no_grad():
        bufs = [dict(n.named_buffers()) for n in nets]
        for name, b in bufs[0].items():
            if b.is_floating_point():
                mean = sum(d[name] for d in bufs) / len(bufs)
                for d in bufs:
                    d[name].copy_(mean)


def test_blocking_wait_join_and_close_are_no_ops() -> None:
    net = make_net(0)
    sync = LocalSGD(net, sync_every=2, allow_single_process=True)
    assert not sync.in_flight
    assert sync.wait() is None
    sync.join()
    sync.close()
    assert sync.state_dict()["overlap"] is None


def test_an_overlapped_state_does_not_load_into_a_blocking_run() -> None:
    net = make_net(0)
    state = LocalSGD(net, sync_every=2, overlap=True, allow_single_process=True).state_dict()
    with pytest.raises(ConfigError, match="overlap"):
        LocalSGD(make_net(0), sync_every=2, allow_single_process=True).load_state_dict(state)


def test_overlap_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="overlap"):
        LocalSGD(make_net(0), sync_every=2, overlap=1, allow_single_process=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_restart_from_parameters_needs_a_stateless_outer_step(momentum: float) -> None:
    """tenfold train resumes an overlapped run from the parameters and the averager's state:
    enough for an outer SGD without momentum, not for one whose momentum is lost."""
    nets = [make_net(r) for r in range(WORLD)]
    inners = [_sgd(n, lr=0.1) for n in nets]
    outers = [_sgd(n, lr=0.2, momentum=momentum) for n in nets]
    averager = SimulatedAverager(tenfold.TargetRate(1.0))
    sim = SimulatedLocalSGD(
        nets, sync_every=2, averager=averager, outer_optimizers=outers, overlap=True
    )
    for step in range(4):
        for rank, (net, inner) in enumerate(zip(nets, inners, strict=True)):
            _train(net, inner, _NoSync(), rank, range(step, step + 1))
        sim.step()
    if momentum:
        with pytest.raises(ConfigError, match="outer SGD without momentum"):
            sim.restart_from_parameters()
    else:
        sim.restart_from_parameters()
        sim.wait()  # applies the restored sync's result: every worker the same model
        first = snap(nets[0])
        assert all(_identical(snap(n), first) for n in nets[1:])
