"""Whether an outer step stays stable when it is applied a round late (overlapped LocalSGD).

The model (docs/OVERLAP.md, "Which outer steps survive the delay"): a quadratic that each
round fits fully, so the pseudo-gradient applied at a boundary is the shared model's error
``delay`` boundaries earlier. The outer SGD step (torch's update: momentum, dampening,
Nesterov) on that delayed error is a linear recurrence; it converges when its companion
matrix's spectral radius is below 1. Blocking (``delay=0``), Nesterov SGD with momentum
0.9 is stable up to lr ~1.36; one round late only up to ~0.25, which is why DiLoCo's usual
outer step (lr 0.7, momentum 0.9) diverges overlapped.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tenfold.errors import TenfoldWarning

__all__ = [
    "OuterStepWarning",
    "delayed_spectral_radius",
    "max_stable_lr",
    "overlap_outer_warning",
    "warn_if_unstable",
]


class OuterStepWarning(TenfoldWarning):
    """An overlapped LocalSGD's outer step that the one-round delay makes unstable."""


def delayed_spectral_radius(
    lr: float,
    momentum: float = 0.0,
    *,
    nesterov: bool = False,
    dampening: float = 0.0,
    delay: int = 1,
) -> float:
    """The spectral radius of outer SGD on the delayed error (below 1: it converges).

    State ``(e_t, ..., e_{t-delay}, v_t)``; the gradient at boundary t is ``e_{t-delay}``;
    ``v' = momentum v + (1 - dampening) g``; the step is ``g + momentum v'`` (Nesterov) or
    ``v'`` (``v' = g`` without momentum); ``e' = e - lr step``.

    Example:
        >>> round(delayed_spectral_radius(1.0), 6)  # plain Local SGD one round late
        1.0
        >>> delayed_spectral_radius(0.5) < 1 and delayed_spectral_radius(0.7, 0.9, nesterov=True) > 1
        True
    """
    d = int(delay)
    size = d + 2  # e_t .. e_{t-d}, then v
    m = np.zeros((size, size))
    b = 1.0 - dampening if momentum else 1.0  # torch applies dampening only with momentum
    # v' = momentum v + b g, with g = e_{t-d} (column d)
    vrow = np.zeros(size)
    vrow[d] += b
    vrow[d + 1] += momentum
    if momentum and nesterov:
        step = vrow * momentum
        step[d] += 1.0
    elif momentum:
        step = vrow
    else:
        step = np.zeros(size)
        step[d] = 1.0
    m[0] = -lr * step
    m[0, 0] += 1.0
    for i in range(1, d + 1):  # shift the error history
        m[i, i - 1] = 1.0
    m[d + 1] = vrow if momentum else 0.0
    return float(np.max(np.abs(np.linalg.eigvals(m))))


def max_stable_lr(
    momentum: float = 0.0, *, nesterov: bool = False, dampening: float = 0.0, delay: int = 1
) -> float:
    """The largest outer lr (to 0.001) with :func:`delayed_spectral_radius` below 1.

    Example:
        >>> max_stable_lr(0.9, nesterov=True), max_stable_lr(0.0)
        (0.253, 0.999)
    """
    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = (lo + hi) / 2
        radius = delayed_spectral_radius(
            mid, momentum, nesterov=nesterov, dampening=dampening, delay=delay
        )
        lo, hi = (mid, hi) if radius < 1.0 - 1e-12 else (lo, mid)
    return float(np.floor(lo * 1000) / 1000)


def overlap_outer_warning(optimizer: Any | None) -> str | None:
    """Why ``optimizer`` (an overlapped LocalSGD's outer optimizer; None: plain Local SGD,
    an outer step of 1) is unstable one round late, or None where the model says it
    converges (or cannot say: an outer optimizer other than SGD)."""
    if optimizer is None:
        groups: list[dict[str, Any]] = [{"lr": 1.0}]
        what = "plain Local SGD"
    else:
        if type(optimizer).__name__ != "SGD":  # the model covers torch's SGD update only
            return None
        groups = list(optimizer.param_groups)
        what = "this outer SGD"
    for group in groups:
        lr = float(group["lr"])
        momentum = float(group.get("momentum", 0.0))
        nesterov = bool(group.get("nesterov", False))
        dampening = float(group.get("dampening", 0.0))
        radius = delayed_spectral_radius(lr, momentum, nesterov=nesterov, dampening=dampening)
        if radius >= 1.0 - 1e-9:
            top = max_stable_lr(momentum, nesterov=nesterov, dampening=dampening)
            return (
                f"overlap=True applies each sync one round late, and {what} (lr {lr:g}, "
                f"momentum {momentum:g}{', Nesterov' if nesterov else ''}) is not stable with "
                f"that delay: on a quadratic each round fits, its error grows or oscillates "
                f"(spectral radius {radius:.3f}); it is stable for lr < {top:g} at this momentum. "
                "On char-gpt, outer SGD(lr=0.5) without momentum came within 0.04-0.06 nats "
                "of blocking Local SGD (docs/OVERLAP.md)"
            )
    return None


def warn_if_unstable(optimizer: Any | None, stacklevel: int = 2) -> None:
    """Issue an :class:`OuterStepWarning` where :func:`overlap_outer_warning` has a reason
    (``stacklevel`` as :func:`warnings.warn`'s, counted from the caller of this function)."""
    reason = overlap_outer_warning(optimizer)
    if reason is not None:
        warnings.warn(reason, OuterStepWarning, stacklevel=stacklevel + 1)
