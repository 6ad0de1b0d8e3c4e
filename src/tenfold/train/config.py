"""TrainConfig: every knob of the paper's experiment, with the reason for its default.

The paper (Øland & Raj, §2, §3) fixes the network (784-392-50-10, tanh), the loss (MSE),
the optimiser (mini-batch SGD, exponential learning-rate decay, light L1), 5 workers and
one synchronous weight average per epoch. It leaves open the batch size, the rates, the
initialisation and the target coding: those are fields here, each documented with the
choice we made, and validated in ``__post_init__`` (a ``ValueError`` names the field).

Example:
    >>> cfg = TrainConfig(epochs=3, policy={"id": "fixed", "bits": 8})
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DATASETS",
    "DEFAULT_RATE",
    "INITS",
    "LEGACY_DEFAULTS",
    "TRANSMITS",
    "TrainConfig",
    "make_policy",
    "with_legacy_defaults",
]

#: Dataset names ``--dataset`` accepts (a directory of IDX files can always be given by path).
DATASETS = ("fashion-mnist", "mnist")

#: Initialisation schemes (see :func:`tenfold.train.model.init_weights`).
INITS = ("glorot-uniform", "lecun-normal", "torch-default", "normal-0.01")


#: What a rank sends each sync (see tenfold.distributed.averaging).
TRANSMITS = ("delta", "weights")

#: The default policy's target, bits per parameter, every byte counted. Chosen from the
#: "beyond" sweep (results/REPORT.md): the lowest rate whose accuracy stayed within noise
#: of the uncompressed baseline on the paper's task.
DEFAULT_RATE = 1.0


def _default_policy() -> dict[str, Any]:
    from tenfold.codec import TargetRate

    return dict(TargetRate(bits_per_param=DEFAULT_RATE).get_config())


def make_policy(config: Mapping[str, Any]) -> Any:
    """Build a tenfold policy object from its JSON config (as ``policy.get_config()`` gives).

    Raises:
        ValueError: unknown policy id or bad parameters.
    """
    from tenfold.codec.policy import Policy

    try:
        return Policy.from_config(dict(config))
    except TypeError as exc:  # e.g. a missing required parameter
        raise ValueError(f"bad policy config {dict(config)!r}: {exc}") from exc


#: Fields added after configs were first saved, with the behaviour those configs had.
LEGACY_DEFAULTS: dict[str, Any] = {"transmit": "weights", "error_feedback": True}


def with_legacy_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with :data:`LEGACY_DEFAULTS` filled in for the fields it lacks."""
    return {**LEGACY_DEFAULTS, **dict(data)}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: K data-parallel workers with compressed weight averaging.

    Attributes are JSON-safe; :meth:`to_dict` / :meth:`from_dict` round-trip them and
    :meth:`digest` hashes them (every rank checks it agrees with the others at start).
    """

    # -- the distributed system ----------------------------------------------------------
    workers: int = 5
    """Number of data-parallel workers (ranks); the paper used 5 GPUs."""

    policy: Mapping[str, Any] = field(default_factory=_default_policy)
    """The codec policy as its JSON config (``policy.get_config()``); default
    TargetRate(DEFAULT_RATE): rate-controlled mid-tread quantization of the pseudo-gradient
    with ANS coding. The paper's recommended setting (§5.2) is EntropyAdaptive(F=0.03, M=4,
    c=6) with ``transmit="weights"`` (``tenfold train --scheme paper``)."""

    transmit: str = "delta"
    """What each rank sends: 'delta' (its pseudo-gradient against the shared model, with
    error feedback: several times fewer bits than weights at equal accuracy on the paper's
    task, results/REPORT.md) or 'weights' (the paper's scheme)."""

    error_feedback: bool = True
    """In delta mode, carry what each packet failed to send into the next one. Without it
    the quantization error of every sync is lost for good."""

    sync_every: int = 0
    """Synchronise every this many local mini-batch steps; 0 = once per local epoch,
    as in the paper ("after each epoch the workers exchange weights")."""

    timeout_s: float = 60.0
    """Process-group timeout (s): a dead or stuck peer ends the run with an error after at
    most this long instead of hanging. Must exceed the slowest rank's time between two
    synchronisations (one local epoch plus evaluation)."""

    threads: int = 1
    """torch intra-op threads per rank. 1: the ranks share the machine's cores, and
    oversubscription slows everyone. Also keeps CPU matmuls deterministic."""

    # -- the paper's training setup ------------------------------------------------------
    epochs: int = 20
    """Local epochs per worker (each over its own shard). The paper trained 100 epochs on
    GPUs; 20 keeps the default `tenfold train` run (5 ranks) to about two minutes on 2 CPU
    cores, where test accuracy has nearly levelled off."""

    batch_size: int = 32
    """Mini-batch size per worker (not given in the paper). 32 is a common SGD choice for
    this network size; it gives 375 steps per epoch on a 12,000-image shard."""

    lr: float = 0.05
    """Initial SGD learning rate (not given in the paper), for the loss below (half the
    summed squared error per example). A 4-epoch scan on Fashion-MNIST (batch 32, 5 workers)
    found 0.05-0.2 all fine and 0.4 and above unstable: averaging workers that each moved
    far from the common start loses most of the first epochs. Over 20 epochs 0.1 ended
    slightly better (by under a point of test accuracy)."""

    lr_decay: float = 0.95
    """Exponential decay per local epoch: lr_e = lr * lr_decay**e (paper: "exponential
    learning rate decay", rate not given)."""

    l1: float = 1e-6
    """L1 coefficient on weight matrices (not biases): the subgradient l1*sign(w) is added
    to each weight's gradient ("light l1 regularization"; strength not given). It sets how
    peaked the weights become, hence their entropy and the bits/param: 1e-4 lets the
    EntropyAdaptive rate fall steeply over training (paper Fig. 5) but costs test accuracy,
    with or without compression (about 2 points on Fashion-MNIST after 20 epochs)."""

    init: str = "glorot-uniform"
    """Weight initialisation (not given in the paper): 'glorot-uniform' (Glorot & Bengio
    2010, derived for tanh networks; biases 0), 'lecun-normal' (N(0, 1/fan_in), LeCun et al.
    1998; biases 0), 'torch-default' (nn.Linear's own: U(+-1/sqrt(fan_in)) for weights and
    biases) or 'normal-0.01' (N(0, 0.01^2) whatever the fan-in, biases 0: the practice of the
    paper's time). Note a uniform start is the maximum-entropy distribution on its range: the
    entropy-adaptive coder then starts at its ceiling N = M + c; 'lecun-normal' sent about
    2 bits/param less at similar accuracy (Fashion-MNIST, 20 epochs)."""

    seed: int = 0
    """Seeds the initial weights (equal on every worker), the shard split, each worker's
    shuffling and the codec's sampling (derived per rank and round)."""

    # -- data ------------------------------------------------------------------------------
    dataset: str = "fashion-mnist"
    """'fashion-mnist' (default; Debian's dataset-fashion-mnist, then the user cache, then a
    download) or 'mnist' (the paper's data: user cache, then a download)."""

    data_dir: str | None = None
    """A directory holding the four IDX files (.gz or raw); overrides ``dataset``'s search."""

    download: bool = True
    """May the dataset be downloaded (SHA-256 checked) into the user cache when missing."""

    # -- evaluation --------------------------------------------------------------------------
    eval_every: int = 1
    """Evaluate on the test set after every this many synchronisations (and always after the
    last one). Only rank 0 evaluates: all ranks hold the same weights after a sync."""

    eval_batch_size: int = 10_000
    """Test-set batch size for evaluation (memory only: results do not depend on it beyond
    float summation order)."""

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("workers", "epochs", "batch_size", "threads", "eval_every", "eval_batch_size"):
            positive(name)
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int):
            raise ValueError(f"sync_every must be an integer, got {self.sync_every!r}")
        if self.sync_every < 0:
            raise ValueError(f"sync_every must be >= 0 (0 = every epoch), got {self.sync_every}")
        for name in ("lr", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not isinstance(self.l1, (int, float)) or not math.isfinite(self.l1) or self.l1 < 0:
            raise ValueError(f"l1 must be a finite number >= 0, got {self.l1!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a path string or None, got {self.data_dir!r}")
        if self.transmit not in TRANSMITS:
            raise ValueError(
                f"transmit must be one of {', '.join(TRANSMITS)}, got {self.transmit!r}"
            )
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be true or false, got {self.error_feedback!r}")
        if not isinstance(self.policy, Mapping):
            raise ValueError(f"policy must be a policy config mapping, got {self.policy!r}")
        try:
            make_policy(self.policy)
        except ValueError as exc:
            raise ValueError(f"policy: {exc}") from exc
        # Freeze a private copy: a caller mutating its dict must not change the config.
        object.__setattr__(self, "policy", dict(self.policy))

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (``config.json`` holds it)."""
        out = dataclasses.asdict(self)
        out["policy"] = dict(self.policy)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        A config saved before a field existed gets the value that field's behaviour had
        then (:data:`LEGACY_DEFAULTS`: such runs sent weights), not today's default.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**with_legacy_defaults(data))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def digest(self) -> bytes:
        """8-byte SHA-256 prefix of the canonical JSON; ranks compare it at start."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:8]

    def make_policy(self) -> Any:
        """The policy object this config describes."""
        return make_policy(self.policy)

    def averager_options(self) -> dict[str, Any]:
        """Keyword arguments for the averagers: ``transmit`` and ``error_feedback``."""
        return {"transmit": self.transmit, "error_feedback": self.error_feedback}
