"""CharGPT and FashionCNN: shapes, causality, deterministic init, tying, optimizer groups,
learning on a tiny text, BatchNorm buffers. Tiny configs only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tenfold.train.models import (
    CharGPT,
    CharGPTConfig,
    FashionCNN,
    configure_adamw,
    count_parameters,
)
from tenfold.train.text import BatchSampler, Corpus, validation_loss

TINY = CharGPTConfig(vocab_size=11, context=16, n_layer=2, n_head=2, n_embd=16)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_loss() -> None:
    model = CharGPT(TINY, generator=gen())
    idx = torch.randint(0, 11, (3, 16), generator=gen(1))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 11) and loss is None
    targets = torch.randint(0, 11, (3, 5), generator=gen(2))
    logits, loss = model(idx[:, :5], targets=targets)
    assert logits.shape == (3, 5, 11)
    assert loss is not None and loss.shape == ()
    # small init: predictions near uniform, loss near ln V (targets unrelated to the input:
    # with tied weights a token's own logit starts a little higher)
    assert loss.item() == pytest.approx(math.log(11), abs=0.1)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_causal() -> None:
    model = CharGPT(TINY, generator=gen()).eval()
    idx = torch.randint(0, 11, (2, 12), generator=gen(2))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_deterministic_init() -> None:
    a = CharGPT(TINY, generator=gen(5)).state_dict()
    b = CharGPT(TINY, generator=gen(5)).state_dict()
    c = CharGPT(TINY, generator=gen(6)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["wte.weight"], c["wte.weight"])
    # the global RNG plays no part
    torch.manual_seed(123)
    d = CharGPT(TINY).state_dict()
    torch.manual_seed(456)
    e = CharGPT(TINY).state_dict()
    assert all(torch.equal(d[k], e[k]) for k in d)


def test_init_scales() -> None:
    cfg = CharGPTConfig(vocab_size=50, context=32, n_layer=8, n_head=4, n_embd=64)
    model = CharGPT(cfg, generator=gen())
    assert model.get_parameter("blocks.0.attn.qkv.weight").std().item() == pytest.approx(
        0.02, rel=0.05
    )
    residual = 0.02 / math.sqrt(16)
    assert model.get_parameter("blocks.0.mlp.proj.weight").std().item() == pytest.approx(
        residual, rel=0.05
    )
    assert model.get_parameter("blocks.3.attn.proj.weight").std().item() == pytest.approx(
        residual, rel=0.05
    )
    assert torch.equal(model.get_parameter("blocks.0.ln1.weight"), torch.ones(64))
    assert torch.equal(model.ln_f.bias, torch.zeros(64))
    assert torch.equal(model.get_parameter("blocks.1.mlp.fc.bias"), torch.zeros(256))


def test_weight_tying() -> None:
    model = CharGPT(TINY, generator=gen())
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted once
    c, v, t, n_layer = 16, 11, 16, 2
    per_block = 12 * c * c + 13 * c
    assert count_parameters(model) == v * c + t * c + n_layer * per_block + 2 * c


def test_default_config_parameter_count() -> None:
    cfg = CharGPTConfig(vocab_size=88)
    assert (cfg.context, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout) == (128, 4, 4, 128, 0.0)
    assert count_parameters(CharGPT(cfg)) == 820_992  # the docstring's number


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 5, "context": 0}, "context"),
        ({"vocab_size": 5, "n_head": 3}, "does not divide"),
        ({"vocab_size": 5, "dropout": 1.0}, "dropout"),
        ({"vocab_size": 5, "n_layer": 2.0}, "n_layer"),
        ({"vocab_size": True}, "vocab_size"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CharGPTConfig(**kwargs)


def test_adamw_groups() -> None:
    model = CharGPT(TINY, generator=gen())
    opt = configure_adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.99)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in decay["params"]}
    kept = {by_id[id(p)] for p in no_decay["params"]}
    assert decayed == {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "blocks.0.ln1.bias"} <= kept
    assert len(decayed) + len(kept) == len(by_id)  # each parameter exactly once


def test_learns_a_tiny_repeated_text() -> None:
    torch.manual_seed(0)
    corpus = Corpus.from_text("to be or not to be, that is the question. " * 40, "t")
    cfg = CharGPTConfig(vocab_size=corpus.vocab_size, context=16, n_layer=1, n_head=2, n_embd=32)
    model = CharGPT(cfg, generator=gen())
    opt = configure_adamw(model, lr=3e-3, weight_decay=0.0)
    sampler = BatchSampler(corpus.data, batch=8, context=16, seed=0)
    before = validation_loss(model, corpus.data, 16, batches=2, batch_size=8)
    for step in range(40):
        x, y = sampler.batch(step)
        _, loss = model(x, y)
        assert loss is not None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    after = validation_loss(model, corpus.data, 16, batches=2, batch_size=8)
    assert before == pytest.approx(math.log(corpus.vocab_size), abs=0.2)
    assert after < 0.6 * before


def test_dropout_only_in_training() -> None:
    cfg = CharGPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5)
    model = CharGPT(cfg, generator=gen()).eval()
    idx = torch.randint(0, 11, (2, 8), generator=gen(3))
    torch.testing.assert_close(model(idx)[0], model(idx)[0])


# ---- FashionCNN --------------------------------------------------------------------------


def test_cnn_shapes_and_buffers() -> None:
    model = FashionCNN(generator=gen())
    out = model(torch.rand(4, 1, 28, 28, generator=gen(1)))
    assert out.shape == (4, 10)
    assert model(torch.rand(3, 784, generator=gen(1))).shape == (3, 10)  # flat input
    buffers = dict(model.named_buffers())
    for bn, c in (("bn1", 16), ("bn2", 32)):
        assert buffers[f"{bn}.running_mean"].shape == (c,)
        assert buffers[f"{bn}.running_var"].shape == (c,)
        assert f"{bn}.num_batches_tracked" in buffers
    # train mode: both calls updated the statistics
    assert int(buffers["bn1.num_batches_tracked"]) == 2
    assert not torch.equal(buffers["bn1.running_mean"], torch.zeros(16))
    model.eval()
    model(torch.rand(2, 1, 28, 28, generator=gen(1)))
    assert int(buffers["bn1.num_batches_tracked"]) == 2
    assert count_parameters(model) == 20_538  # the docstring's number
    assert model.conv1.bias is None  # BatchNorm's shift does that job


def test_cnn_deterministic_init_and_train_step() -> None:
    a, b = FashionCNN(generator=gen(3)), FashionCNN(generator=gen(3))
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.conv1.weight, FashionCNN(generator=gen(4)).conv1.weight)
    std = FashionCNN(generator=gen(0)).conv2.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.1)
    opt = configure_adamw(a, lr=1e-3, weight_decay=0.1)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(a.conv1.weight),
        id(a.conv2.weight),
        id(a.fc.weight),
    }
    x = torch.rand(32, 1, 28, 28, generator=gen(5))
    y = torch.from_numpy(np.arange(32) % 10)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(a(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
