"""The paper's network, initialisation, shards, and one worker's local SGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tenfold
from tenfold.train.config import TrainConfig
from tenfold.train.paper_mlp import PaperMLP, init_weights
from tenfold.train.paper_worker import EvalSet, PaperWorker, evaluate_paper_mlp
from tenfold.train.shards import one_hot, shard_indices, to_inputs


def test_network_shapes_and_tanh_output() -> None:
    model = PaperMLP()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (392, 784),
        "fc1.bias": (392,),
        "fc2.weight": (50, 392),
        "fc2.bias": (50,),
        "fc3.weight": (10, 50),
        "fc3.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 327_880
    out = model(torch.randn(7, 784) * 100)  # saturating input: still in [-1, 1]
    assert out.shape == (7, 10) and out.abs().max() <= 1


@pytest.mark.parametrize("scheme", ["glorot-uniform", "lecun-normal", "torch-default"])
def test_init_schemes(scheme: str) -> None:
    model = PaperMLP()
    init_weights(model, scheme, torch.Generator().manual_seed(0))
    w = model.fc1.weight
    if scheme == "glorot-uniform":
        bound = math.sqrt(6 / (784 + 392))
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert torch.count_nonzero(model.fc1.bias) == 0
    elif scheme == "lecun-normal":
        assert abs(float(w.detach().std()) - 1 / math.sqrt(784)) < 0.002
        assert torch.count_nonzero(model.fc2.bias) == 0
    else:
        assert w.abs().max() <= 1 / math.sqrt(784)
        assert torch.count_nonzero(model.fc1.bias) > 0
    again = PaperMLP()
    init_weights(again, scheme, torch.Generator().manual_seed(0))
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="scheme"):
        init_weights(again, "xavier", torch.Generator())


def test_shards_are_exclusive_equal_and_seeded() -> None:
    shards = shard_indices(1003, 5, seed=1)
    assert [len(s) for s in shards] == [200] * 5
    union = np.concatenate(shards)
    assert len(np.unique(union)) == 1000 and union.max() < 1003
    assert all(np.array_equal(a, b) for a, b in zip(shards, shard_indices(1003, 5, 1), strict=True))
    assert not np.array_equal(shards[0], shard_indices(1003, 5, seed=2)[0])
    with pytest.raises(ValueError, match="cannot feed"):
        shard_indices(3, 5, 0)


def test_inputs_and_targets() -> None:
    x = to_inputs(np.full((2, 28, 28), 255, np.uint8))
    assert x.shape == (2, 784) and x.dtype == torch.float32 and float(x.max()) == 1.0
    t = one_hot(np.array([3, 0]))
    assert t.tolist()[0] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0] and t.dtype == torch.float32


def _worker(rank: int = 0, **changes: object) -> PaperWorker:
    kwargs: dict = {"workers": 2, "batch_size": 8, "lr": 0.1, **changes}
    cfg = TrainConfig(policy=tenfold.Lossless().get_config(), **kwargs)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 10, (50,), generator=g).numpy()
    inputs = torch.rand(50, 784, generator=g) * 0.1
    inputs[torch.arange(50), torch.from_numpy(labels) * 10] = 1.0  # learnable
    return PaperWorker(cfg, rank, inputs, one_hot(labels))


def test_workers_start_equal_and_shuffle_differently() -> None:
    a, b = _worker(0), _worker(1)
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params, strict=True))
    a.train_steps(3)
    b.train_steps(3)
    assert not torch.equal(a.model.fc1.weight, b.model.fc1.weight)  # other batch order


def test_training_is_deterministic_and_learns() -> None:
    a, b = _worker(), _worker()
    first = a.train_steps(a.steps_per_epoch)
    b.train_steps(b.steps_per_epoch)
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params, strict=True))
    for _ in range(10):
        last = a.train_steps(a.steps_per_epoch)
    assert last < 0.5 * first


def test_epochs_steps_and_lr_decay() -> None:
    w = _worker(lr_decay=0.5)
    assert w.steps_per_epoch == 7  # ceil(50 / 8): the last batch has 2 examples
    w.train_steps(7)
    assert w.epoch == 1 and w.lr == pytest.approx(0.05)
    # epoch 1 really trains with 0.1 * 0.5: like a worker with lr 0.05 and no decay
    same = _worker(lr=0.05, lr_decay=1.0)
    undecayed = _worker(lr_decay=1.0)
    for other in (same, undecayed):
        other.load_state_dict(w.state_dict())
        other.train_steps(7)
    w.train_steps(7)
    assert w.epoch == 2 and w.lr == pytest.approx(0.025)
    assert all(torch.equal(p, q) for p, q in zip(w.params, same.params, strict=True))
    assert not torch.equal(w.model.fc1.weight, undecayed.model.fc1.weight)


def test_grad_rms_is_the_rms_of_the_data_gradient() -> None:
    w = _worker(l1=0.5)  # a huge L1 must not leak into the reported gradient
    ref = _worker(l1=0.5)
    w.train_steps(1)
    rms = w.take_grad_rms()
    assert list(rms) == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    # the same first batch by hand, without L1
    x = ref._epoch_inputs if ref._epoch_inputs is not None else None
    assert x is None
    ref._start_epoch()
    assert ref._epoch_inputs is not None and ref._epoch_targets is not None
    xb, tb = ref._epoch_inputs[:8], ref._epoch_targets[:8]
    loss = 0.5 * (ref.model(xb) - tb).square().sum() / 8
    loss.backward()
    for name, p in ref.model.named_parameters():
        assert p.grad is not None
        assert rms[name] == pytest.approx(float(p.grad.square().mean().sqrt()), rel=1e-5)
    assert w.take_grad_rms() == {}  # reset


def test_l1_shrinks_weights() -> None:
    plain, l1 = _worker(l1=0.0), _worker(l1=1e-2)
    plain.train_steps(20)
    l1.train_steps(20)
    assert float(l1.model.fc1.weight.detach().abs().sum()) < float(
        plain.model.fc1.weight.detach().abs().sum()
    )


def test_resume_continues_exactly() -> None:
    a = _worker()
    a.train_steps(10)  # mid-epoch (7 steps per epoch)
    state = a.state_dict()
    b = _worker()
    b.load_state_dict(state)
    a.train_steps(9)
    b.train_steps(9)
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params, strict=True))


def test_evaluate_counts_and_loss() -> None:
    model = PaperMLP()
    init_weights(model, "glorot-uniform", torch.Generator().manual_seed(0))
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28)).astype(np.uint8)
    labels = np.arange(30) % 10
    test = EvalSet.from_arrays(images, labels)
    acc, loss = evaluate_paper_mlp(model, test, batch_size=7)
    with torch.no_grad():
        out = model(test.inputs)
    assert acc == pytest.approx(float((out.argmax(1) == test.labels).float().mean()))
    assert loss == pytest.approx(float(0.5 * (out - test.targets).square().sum() / 30), rel=1e-5)
