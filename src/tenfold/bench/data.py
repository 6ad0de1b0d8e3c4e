"""The tensor sets the codec benchmark measures: a model's pseudo-gradient, a synthetic
transformer-shaped set, or the caller's own arrays from an ``.npz`` file."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from tenfold.errors import ConfigError

__all__ = ["Arrays", "char_gpt_delta", "load_tensors", "synthetic_delta"]

Arrays = dict[str, np.ndarray]

#: the built-in data sources (anything else is read as an ``.npz`` file)
SOURCES = ("char-gpt", "synthetic", "synthetic-one-scale")


def char_gpt_delta(n_layer: int, n_embd: int, steps: int, seed: int = 0) -> Arrays:
    """The pseudo-gradient (``before - after``, float32) of a :class:`CharGPT` after
    ``steps`` AdamW steps (lr 1e-3) on random tokens: what an averager hands the codec.

    Needs torch. ``n_layer=6, n_embd=384, steps=8`` gives 76 tensors, ~10.7M values.
    """
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "the char-gpt data needs torch: pip install 'tenfold[bench]', or use --data synthetic"
        ) from None
    from tenfold.train.models import CharGPT, CharGPTConfig

    torch.manual_seed(seed)
    cfg = CharGPTConfig(vocab_size=88, context=128, n_layer=n_layer, n_head=6, n_embd=n_embd)
    model = CharGPT(cfg)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 88, (8, 129), generator=gen)
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        k: (before[k] - v.detach()).numpy().astype(np.float32) for k, v in model.named_parameters()
    }


def synthetic_delta(n_layer: int, n_embd: int, seed: int = 0, one_scale: bool = False) -> Arrays:
    """Transformer-shaped tensors (CharGPT's names and shapes) of Student-t values (3 d.o.f.)
    with log-normal per-tensor scales (``one_scale``: all of scale 1e-3), float32; no torch
    needed. The error of a whole set is dominated by its largest-scale tensors, so the two
    compare an error-per-tensor allocation (tenfold's) with an error-per-value one (SZ3's)."""
    rng = np.random.default_rng(seed)
    c, v, t = n_embd, 88, 128
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (v, c), "pos_emb.weight": (t, c)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        shapes.update({
            p + "ln1.weight": (c,), p + "ln1.bias": (c,),
            p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
            p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
            p + "ln2.weight": (c,), p + "ln2.bias": (c,),
            p + "mlp.fc.weight": (4 * c, c), p + "mlp.fc.bias": (4 * c,),
            p + "mlp.proj.weight": (c, 4 * c), p + "mlp.proj.bias": (c,),
        })  # fmt: skip
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,), "head.weight": (v, c)})
    out = {}
    for name, shape in shapes.items():
        scale = 1e-3 * (1.0 if one_scale else math.exp(rng.normal(0.0, 1.0)))
        out[name] = (scale * rng.standard_t(3, size=shape)).astype(np.float32)
    return out


def _read_npz(path: Path) -> Arrays:
    """Every array of ``path`` (float16/32/64, finite), by name; a clear error otherwise."""
    if not path.is_file():
        raise ConfigError(
            f"--data {str(path)!r}: no such file; give 'char-gpt', 'synthetic', "
            "'synthetic-one-scale' or an .npz file of float arrays (numpy.savez)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"--data {str(path)!r} is not a readable .npz file: {exc}") from None
    if not arrays:
        raise ConfigError(f"--data {str(path)!r} holds no arrays")
    for name, arr in arrays.items():
        if arr.dtype.kind != "f":
            raise ConfigError(
                f"--data {str(path)!r}: array {name!r} is {arr.dtype}; the codec takes float "
                "arrays (cast it with .astype(np.float32))"
            )
        if not np.isfinite(arr).all():
            raise ConfigError(f"--data {str(path)!r}: array {name!r} holds NaN or Inf")
    return arrays


def load_tensors(source: str, quick: bool = False, cache: Path | None = None) -> tuple[Arrays, str]:
    """The tensor set ``source`` names and a one-line description of it.

    Args:
        source: ``"char-gpt"`` (6 layers, 384 wide, 8 AdamW steps; ``quick``: 2 x 192, 3
            steps), ``"synthetic"`` (the same shapes), ``"synthetic-one-scale"`` (the same,
            every tensor at one scale), or the path of an ``.npz`` file.
        cache: where the char-gpt data is kept between runs (None: not kept), so repeated
            runs measure the same values.

    Raises:
        ConfigError: a missing or unreadable file, a non-float or non-finite array, or
            char-gpt without torch.
    """
    if source not in SOURCES:
        file = Path(source).expanduser()
        return _read_npz(file), f"file {file.name}"
    n_layer, n_embd, steps = (2, 192, 3) if quick else (6, 384, 8)
    desc = f"{source} n_layer={n_layer} n_embd={n_embd}"
    if source.startswith("synthetic"):
        return synthetic_delta(n_layer, n_embd, one_scale=source == "synthetic-one-scale"), desc
    desc += f" AdamW lr=1e-3 steps={steps} (random tokens), delta = before - after"
    path = None if cache is None else cache / f"chargpt_{n_layer}x{n_embd}_{steps}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, desc
    arrays = char_gpt_delta(n_layer, n_embd, steps)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)  # type: ignore[arg-type]
    return arrays, desc
